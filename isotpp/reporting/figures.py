"""Figures, drawn with matplotlib's Agg canvas (never a window, no pyplot state).

Every figure is written atomically: rendered into a temporary file in the target
directory, then moved over the target with :func:`os.replace`, so a crash or a
full disk never leaves a half-written PNG under the final name.
"""

from __future__ import annotations

import math
import os
import uuid
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from isotpp.errors import UserError
from isotpp.theory import Theory

__all__ = ["FORMATS", "PNG_DPI", "figure_format", "new_axes", "parse_formats", "save_figure", "save_figures",
           "spectrum_histogram"]

# a positive spectrum whose 99th/1st percentile ratio exceeds this is drawn on log-x
_LOG_X_SPREAD = 100.0

FORMATS = ("png", "pdf", "svg")
PNG_DPI = 200  # print quality; PDF and SVG are vector graphics


def figure_format(path) -> str:
    """The file format a figure path asks for, from its extension: 'png', 'pdf' or 'svg'.

    >>> figure_format("runs/demo/figure.pdf")
    'pdf'

    Raises:
      UserError: no extension, or one matplotlib is not asked to write here.
    """
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise UserError(f"cannot tell the figure format of {path}: end the file name in "
                        f"{', '.join('.' + f for f in FORMATS)}")
    return suffix


def parse_formats(text: str | None) -> tuple[str, ...]:
    """``'png,pdf'`` -> ``('png', 'pdf')``; None or empty -> ``()``.

    Raises:
      UserError: an unknown format.
    """
    formats = tuple(dict.fromkeys(f.strip().lower().lstrip(".") for f in (text or "").split(",") if f.strip()))
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise UserError(f"unknown figure format {bad[0]!r}: choose from {', '.join(FORMATS)}, e.g. 'png,pdf'")
    return formats


def new_axes(ax=None, figsize=(6.4, 4.4)):
    """``(figure, axes)``: ``ax`` and its figure when given, else a new Agg figure (no pyplot state)."""
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def save_figures(fig: Figure, path, formats=()) -> list[Path]:
    """Write ``fig`` once per format: ``path`` with each extension of ``formats`` (default: ``path`` as is)."""
    path = Path(path)
    targets = [path.with_suffix("." + f) for f in formats] if formats else [path]
    return [save_figure(fig, t) for t in targets]


def save_figure(fig: Figure, path) -> Path:
    """Write ``fig`` to ``path`` atomically, in the format its extension names; returns the path.

    PNG is rendered at :data:`PNG_DPI` dots per inch; PDF and SVG are vector
    files (fonts embedded as TrueType in PDF, text kept as text in SVG).
    """
    path = Path(path)
    fmt = figure_format(path)
    parent = path.parent
    if not parent.is_dir():
        raise UserError(f"cannot write figure {path}: directory {parent} does not exist; create it first")
    FigureCanvasAgg(fig)  # attach an Agg canvas whatever the global backend
    tmp = parent / f".{path.name}.{uuid.uuid4().hex}.tmp"  # same dir: os.replace is atomic
    try:
        with open(tmp, "xb") as fh:  # default permissions, unlike mkstemp's 0600
            fig.savefig(fh, format=fmt, dpi=PNG_DPI if fmt == "png" else "figure",
                        metadata=_METADATA[fmt])
        os.replace(tmp, path)
    except OSError as exc:
        raise UserError(f"cannot write figure {path}: {exc.strerror or exc}; check the path and free space") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return path


# no creation date in the files: the same figure gives the same bytes (diffable, cacheable)
_METADATA = {"png": {"Software": None}, "pdf": {"CreationDate": None}, "svg": {"Date": None}}


def _as_singular_values(singular_values) -> np.ndarray:
    s = np.asarray(singular_values, dtype=float).ravel()
    if s.size == 0:
        raise UserError("no singular values to plot; pass a non-empty array")
    if not np.all(np.isfinite(s)):
        raise UserError("singular values contain nan or inf; check the spectrum computation (try float64)")
    if np.any(s < 0):
        raise UserError("singular values must be >= 0; pass singular values, not eigenvalues of a non-PSD matrix")
    return s


def _auto_log_x(s: np.ndarray) -> bool:
    pos = s[s > 0]
    if pos.size < 2:
        return False
    lo, hi = np.percentile(pos, [1, 99])
    return hi / lo > _LOG_X_SPREAD


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
        log_x = _auto_log_x(s)
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

