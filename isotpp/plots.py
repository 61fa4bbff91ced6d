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

__all__ = ["save_figure", "spectrum_histogram"]

# a positive spectrum whose 99th/1st percentile ratio exceeds this is drawn on log-x
_LOG_X_SPREAD = 100.0


def save_figure(fig: Figure, path) -> Path:
    """Write ``fig`` to ``path`` as PNG, atomically; returns the path."""
    path = Path(path)
    parent = path.parent
    if not parent.is_dir():
        raise UserError(f"cannot write figure {path}: directory {parent} does not exist; create it first")
    FigureCanvasAgg(fig)  # attach an Agg canvas whatever the global backend
    tmp = parent / f".{path.name}.{uuid.uuid4().hex}.tmp"  # same dir: os.replace is atomic
    try:
        with open(tmp, "xb") as fh:  # default permissions, unlike mkstemp's 0600
            fig.savefig(fh, format="png")
        os.replace(tmp, path)
    except OSError as exc:
        raise UserError(f"cannot write figure {path}: {exc.strerror or exc}; check the path and free space") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return path


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
    path,
    *,
    theory: Theory | None = None,
    title: str | None = None,
    log_x: bool | None = None,
) -> Path:
    """Density histogram of singular values, with the theory's law overlaid; saved as PNG.

    ``log_x=None`` picks a log axis when the spectrum spans more than two decades
    (deep Gaussian nets). On a log axis the bars and the theory curve are both the
    density of log10 s (rho_s(s) * s * ln 10), so areas stay probabilities; zero
    singular values cannot be placed there and are counted in the legend instead.
    A point-mass theory is drawn as a vertical line. Returns ``path``.
    """
    s = _as_singular_values(singular_values)
    if log_x is None:
        log_x = _auto_log_x(s)
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.add_subplot()
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
    return save_figure(fig, path)


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

