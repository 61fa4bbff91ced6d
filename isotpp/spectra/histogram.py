"""The spectrum's figure: a histogram of singular values with the predicted law on top."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure

from isotpp.errors import UserError
from isotpp.reporting.figures import auto_log_x, figure_format, new_axes, save_figure
from isotpp.theory import Theory

__all__ = ["spectrum_histogram"]


def _as_singular_values(singular_values) -> np.ndarray:
    s = np.asarray(singular_values, dtype=float).ravel()
    if s.size == 0:
        raise UserError("no singular values to plot; pass a non-empty array")
    if not np.all(np.isfinite(s)):
        raise UserError("singular values contain nan or inf; check the spectrum computation (try float64)")
    if np.any(s < 0):
        raise UserError("singular values must be >= 0; pass singular values, not eigenvalues of a non-PSD matrix")
    return s


def spectrum_histogram(
    singular_values,
    path=None,
    *,
    ax=None,
    theory: Theory | None = None,
    title: str | None = None,
    log_x: bool | None = None,
) -> Figure:
    """Density histogram of singular values, with the theory's law overlaid; returns the Figure.

    Drawn on ``ax`` when given (a panel of your own figure), else on a new
    figure; written to ``path`` too when given (format from the extension:
    .png, .pdf, .svg). ``log_x=None`` picks a log axis when the spectrum spans
    more than two decades (deep Gaussian nets). On a log axis the bars and the
    theory curve are both the density of log10 s (rho_s(s) * s * ln 10), so
    areas stay probabilities; zero singular values cannot be placed there and
    are counted in the legend instead. A point-mass theory is drawn as a
    vertical line.

    Example (a notebook displays the returned Figure as it is):

    >>> import numpy as np
    >>> from isotpp.reporting.figures import spectrum_histogram
    >>> from isotpp.theory import theory_for
    >>> rng = np.random.default_rng(0)
    >>> w = rng.normal(size=(3, 200, 200)) / np.sqrt(200)
    >>> s = np.linalg.svd(w[0] @ w[1] @ w[2], compute_uv=False)
    >>> fig = spectrum_histogram(s, theory=theory_for("gaussian", 3, 1.0, "linear"))
    >>> fig.axes[0].get_xlabel()
    'singular value s'
    """
    s = _as_singular_values(singular_values)
    if path is not None:
        figure_format(path)  # refuse a bad extension before drawing
    if log_x is None:
        log_x = auto_log_x(s)
    fig, ax = new_axes(ax)
    bins = int(np.clip(np.sqrt(s.size), 10, 80))

    if log_x:
        pos = s[s > 0]
        if pos.size == 0:
            raise UserError("every singular value is 0, nothing to show on a log axis; pass log_x=False")
        t = np.log10(pos)
        t_lo, t_hi = float(t.min()), float(t.max())
        if t_hi - t_lo < 1e-9:
            t_lo, t_hi = t_lo - 0.05, t_hi + 0.05
        # the bars' areas are fractions of *all* values, zeros included
        heights, edges = np.histogram(t, bins=bins, range=(t_lo, t_hi))
        widths = np.diff(edges)
        ax.stairs(heights / (s.size * widths), 10.0**edges, fill=True, alpha=0.45, label=_sample_label(s))
        ax.set_xscale("log")
        ax.set_ylabel("density of log10 s")
        n_zero = s.size - pos.size
        if n_zero:
            ax.plot([], [], " ", label=f"{n_zero} zero value(s) not shown")
    else:
        lo, hi = float(s.min()), float(s.max())
        if hi - lo <= 1e-9 * max(abs(hi), 1.0):  # a point mass in the data: widen the range
            half = max(0.02 * abs(hi), 1e-3)
            lo, hi, bins = lo - half, hi + half, 21  # odd: the atom sits mid-bin
        ax.hist(s, bins=bins, range=(lo, hi), density=True, alpha=0.45, label=_sample_label(s))
        ax.set_ylabel("density of s")

    if theory is not None:
        _overlay_theory(ax, theory, s, log_x)
    ax.set_xlabel("singular value s")
    if title:
        ax.set_title(title)
    ax.legend(fontsize="small")
    if path is not None:
        save_figure(fig, path)
    return fig


def _sample_label(s: np.ndarray) -> str:
    return f"measured (n={s.size}, mean {s.mean():.3g})"


def _overlay_theory(ax, theory: Theory, s: np.ndarray, log_x: bool) -> None:
    if theory.is_point_mass:
        ax.axvline(theory.point_mass, color="C3", lw=2, label=theory.label)
        return
    edge = theory.support_s()[1]
    top = ax.get_ylim()[1]
    if log_x:
        x_lo = float(s[s > 0].min())
        x = np.logspace(math.log10(x_lo), math.log10(edge), 600)
        y = theory.density_s(x) * x * math.log(10.0)
    else:
        x = np.linspace(0.0, edge, 600)[1:]
        y = theory.density_s(x)
    ax.plot(x, y, color="C3", lw=1.8, label=theory.label)
    # rho_s diverges at s = 0 for L >= 2: keep the histogram readable
    if not log_x and np.nanmax(y) > 1.6 * top:
        ax.set_ylim(0.0, 1.6 * top)
