"""Measured Jacobian spectra beside the free-probability law they should follow.

:func:`spectrum_theory_figure` draws two panels, the singular values s (as
Pennington et al. plot them) and lambda = s^2, each a density histogram of the
measured values with the predicted density overlaid. An axis is logarithmic when
the positive values span more than two decades (deep Gaussian networks); there
both the bars and the curve are densities of log10 of the variable, so areas
stay probabilities. Atoms of the law (the zeros that ranks or ReLU / hard-tanh
derivatives force, the isometric part of orthogonal networks) are drawn as
vertical lines and listed in the legend with the measured fraction beside the
predicted one. :func:`draw_law` draws one panel into a given axis, for the
analysis scripts.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from isotpp.errors import UserError
from isotpp.reporting.figures import auto_log_x, save_figure
from isotpp.theory.free import ChainSpectrum

__all__ = ["draw_law", "spectrum_theory_figure"]


def _law_curve(law: ChainSpectrum, var: str, x: np.ndarray, log_x: bool) -> np.ndarray:
    if var == "s":
        y = law.density_s(x)
    else:
        y = law.density_lambda(x)
    return y * x * math.log(10.0) if log_x else y


def draw_law(ax, law: ChainSpectrum | None, values, *, var: str = "s", log_x: bool | None = None,
             zero_tol: float | None = None, color: str = "C3", label: str | None = None, bins: int | None = None):
    """One panel: histogram of ``values`` (s or lambda, by ``var``) and ``law``'s density.

    Values at most ``zero_tol`` (default 1e-6 times the largest) count as zeros.
    Returns whether the x axis is logarithmic.
    """
    if var not in ("s", "lambda"):
        raise UserError(f"var must be 's' or 'lambda', got {var!r}")
    v = np.asarray(values, dtype=float).ravel()
    if v.size == 0 or not np.all(np.isfinite(v)) or np.any(v < 0):
        raise UserError("values must be a non-empty array of finite numbers >= 0")
    tol = (1e-6 if var == "s" else 1e-12) * float(v.max()) if zero_tol is None else zero_tol
    zeros = v <= tol
    pos = v[~zeros]
    if log_x is None:
        log_x = auto_log_x(pos)  # the same rule as the plain histogram's
    nb = bins or int(np.clip(np.sqrt(v.size), 10, 80))
    name = "s" if var == "s" else "λ"
    if pos.size:
        if log_x:
            t = np.log10(pos)
            lo, hi = float(t.min()), float(t.max())
            if hi - lo < 1e-9:
                lo, hi = lo - 0.05, hi + 0.05
            h, edges = np.histogram(t, bins=nb, range=(lo, hi))
            ax.stairs(h / (v.size * np.diff(edges)), 10.0**edges, fill=True, alpha=0.4,
                      label=f"measured (n={v.size})")
            ax.set_xscale("log")
            ax.set_ylabel(f"density of log10 {name}")
        else:
            lo, hi = float(pos.min()), float(pos.max())
            if hi - lo <= 1e-5 * max(hi, 1e-300):  # a point mass smeared by rounding: one bar
                half = max(0.02 * hi, 1e-3)
                lo, hi, nb = lo - half, hi + half, 21
            h, edges = np.histogram(pos, bins=nb, range=(lo, hi))
            ax.stairs(h / (v.size * np.diff(edges)), edges, fill=True, alpha=0.4, label=f"measured (n={v.size})")
            ax.set_ylabel(f"density of {name}")
    if zeros.any() or (law is not None and law.atom > 0):
        # the law's mass up to the same threshold: its atom at 0 plus what a deep product puts below
        predicted = ""
        if law is not None:
            predicted = f", theory {100 * float(law.cdf_lambda(tol * tol if var == 's' else tol)):.1f} %"
        where = "1e-6·max" if zero_tol is None and var == "s" else ("1e-12·max" if zero_tol is None else f"{tol:.2g}")
        ax.plot([], [], " ", label=f"zeros (≤ {where}): {100 * zeros.mean():.1f} %{predicted}")
    if law is not None:
        if law.top_atom > 0:
            top = law.top_value if var == "lambda" else math.sqrt(law.top_value)
            ax.axvline(top, color=color, lw=2, ls="--", label=f"atom {100 * law.top_atom:.1f} % at {name}={top:.4g}")
        if law.point_mass is None:
            lo_l, hi_l = law.support_lambda()
            lo_v, hi_v = (math.sqrt(lo_l), math.sqrt(hi_l)) if var == "s" else (lo_l, hi_l)
            if log_x:
                x_lo = max(lo_v, float(pos.min()) * 0.5 if pos.size else lo_v, hi_v * 1e-300)
                x = np.logspace(math.log10(x_lo), math.log10(hi_v), 800)
            else:
                x = np.linspace(lo_v, hi_v, 800)[1:]
            y = _law_curve(law, var, x, log_x)
            top_y = ax.get_ylim()[1]
            ax.plot(x, y, color=color, lw=1.6, label=label or "free probability")
            if not log_x and np.nanmax(y) > 1.6 * top_y:  # an integrable divergence: keep the bars readable
                ax.set_ylim(0.0, 1.6 * top_y)
    ax.set_xlabel(f"{'singular value s' if var == 's' else 'λ = s²'}")
    return log_x


def spectrum_theory_figure(singular_values, path=None, law: ChainSpectrum | None = None, *,
                           title: str | None = None, floor: float | None = None,
                           precision: str = "float32") -> Figure | Path:
    """The two-panel figure (s and lambda) of measured JSV against ``law``: saved to ``path`` (its
    extension names the format) and the path returned, or, without ``path``, the Figure.

    ``floor``: the singular value below which the measurement is rounding in
    ``precision``, drawn as a dotted line on both panels."""
    s = np.asarray(singular_values, dtype=float).ravel()
    if s.size == 0 or not np.all(np.isfinite(s)) or np.any(s < 0):
        raise UserError("singular values must be a non-empty array of finite numbers >= 0")
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax, bx = fig.subplots(1, 2)
    draw_law(ax, law, s, var="s")
    draw_law(bx, law, s * s, var="lambda")
    if floor:
        for a, v in ((ax, floor), (bx, floor**2)):
            a.axvline(v, color="k", ls=":", lw=1, label=f"{precision} resolves only above this")
    for a in (ax, bx):
        a.legend(fontsize="small")
    if title:
        fig.suptitle(title + ("" if law is None else f"\n{law.label}"), fontsize="medium")
    return fig if path is None else save_figure(fig, path)
