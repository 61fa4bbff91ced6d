"""The tanh network's phase diagram over (sigma_w, sigma_b), with measured Jacobian moments.

Left: chi = sigma_w^2 E[tanh'(h)^2] at the fixed point q* on a fine grid, with
the order-to-chaos line chi = 1 (Schoenholz et al. 2017; Pennington et al. 2017
Fig. 1). Middle and right: on a coarse grid of (sigma_w, sigma_b), the mean of
lambda = s^2 and Var(lambda) / E[lambda]^2 of depth-L networks of width N drawn
at the fixed point, Gaussian and orthogonal weights, measured (numpy, float64,
pooled over --nets draws) against the free-probability closed forms
E[lambda] = sigma_w^(2L) mu_1^(L-1), Var/E^2 = (L-1)(mu_2/mu_1^2 - 1) + L s.

    python analysis/phase_diagram.py --depth 8 --width 400 --nets 4 --out runs/phase_diagram

writes phase_diagram.json, phase_diagram.md and phase_diagram.png.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from _script import positive_int, script_main, write_outputs

SIGMA_W = (0.8, 1.0, 1.2, 1.5, 2.0)
SIGMA_B = (0.05, 0.2, 0.4)


def chi_map(sw_grid, sb_grid) -> np.ndarray:
    from isotpp import theory

    def chi(sw, sb):
        return sw**2 * theory.activation_derivative_moments("tanh", theory.fixed_point("tanh", sw, sb), 1)

    return np.array([[chi(sw, sb) for sw in sw_grid] for sb in sb_grid])


def run(depth: int, width: int, nets: int, seed: int = 0) -> dict:
    from isotpp import theory
    from isotpp.theory.simulate import jacobian_moments, sample_jacobian

    rng = np.random.default_rng(seed)
    rows = []
    for sb in SIGMA_B:
        for sw in SIGMA_W:
            mf = theory.mean_field("tanh", sw, sb)
            for init in ("gaussian", "orthogonal"):
                law = theory.chain_spectrum((width,) * (depth + 1), init, sw, "tanh", sb)
                m = np.array([jacobian_moments(sample_jacobian(rng, (width,) * (depth + 1), init, sw, "tanh", sb))
                              for _ in range(nets)])
                m1, m2 = m[:, 0].mean(), m[:, 1].mean()
                rows.append({"sigma_w": sw, "sigma_b": sb, "init": init, "q_star": mf.q_star, "chi": mf.chi,
                             "xi_c": None if mf.xi_c is None or np.isinf(mf.xi_c) else mf.xi_c,
                             "phase": mf.phase,
                             "theory": {"mean_lambda": law.mean_lambda, "var_over_mean_sq": law.var_over_mean_sq},
                             "measured": {"mean_lambda": float(m1), "var_over_mean_sq": float(m2 / m1**2 - 1)}})
    sb_line = np.linspace(0.0, 0.6, 31)
    line = [theory.chi_one_sigma_w("tanh", sb) for sb in sb_line]
    return {"depth": depth, "width": width, "nets": nets, "rows": rows,
            "critical_line": {"sigma_b": sb_line.tolist(), "sigma_w": line}}


def table(result: dict) -> str:
    from isotpp.reporting.tables import markdown_table

    body = [[f"{r['sigma_w']:.2f}", f"{r['sigma_b']:.2f}", r["init"], f"{r['q_star']:.4g}", f"{r['chi']:.3f}",
             r["phase"], f"{r['measured']['mean_lambda']:.4g}", f"{r['theory']['mean_lambda']:.4g}",
             f"{r['measured']['var_over_mean_sq']:.3f}", f"{r['theory']['var_over_mean_sq']:.3f}"]
            for r in result["rows"]]
    return (markdown_table(["σ_w", "σ_b", "weights", "q*", "χ", "phase", "mean λ", "theory", "Var λ / mean²",
                            "theory"], body)
            + f"\n\ntanh, depth {result['depth']}, width {result['width']}, {result['nets']} networks per cell, "
              "inputs at the fixed point, float64.\n")


def figure(result: dict, path: Path) -> Path:
    from matplotlib.figure import Figure

    from isotpp.reporting.figures import save_figure

    fig = Figure(figsize=(14, 4.3), layout="constrained")
    ax, bx, cx = fig.subplots(1, 3)
    sw_grid, sb_grid = np.linspace(0.5, 2.5, 61), np.linspace(0.0, 0.6, 31)
    chi = chi_map(sw_grid, sb_grid)
    im = ax.pcolormesh(sw_grid, sb_grid, chi, shading="auto", cmap="coolwarm", vmin=0, vmax=2)
    fig.colorbar(im, ax=ax, label="χ")
    line = result["critical_line"]
    ax.plot(line["sigma_w"], line["sigma_b"], "k-", lw=2, label="χ = 1 (order-to-chaos)")
    rows = result["rows"]
    ax.plot([r["sigma_w"] for r in rows], [r["sigma_b"] for r in rows], "k.", ms=5, label="measured cells")
    ax.set_xlabel("σ_w")
    ax.set_ylabel("σ_b")
    ax.set_title("tanh: ordered (χ < 1) vs chaotic (χ > 1)")
    ax.legend(fontsize="small", loc="upper left")
    for axis, key, log in ((bx, "mean_lambda", True), (cx, "var_over_mean_sq", False)):
        for init, marker in (("gaussian", "o"), ("orthogonal", "s")):
            sel = [r for r in rows if r["init"] == init]
            axis.scatter([r["theory"][key] for r in sel], [r["measured"][key] for r in sel], marker=marker,
                         c=[r["chi"] for r in sel], cmap="coolwarm", vmin=0, vmax=2, label=init, edgecolors="k")
        vals = [r["theory"][key] for r in rows] + [r["measured"][key] for r in rows]
        lo, hi = min(vals), max(vals)
        axis.plot([lo, hi], [lo, hi], "k--", lw=1, label="measured = theory")
        if log:
            axis.set_xscale("log")
            axis.set_yscale("log")
        axis.set_xlabel(f"theory: {'E[λ]' if key == 'mean_lambda' else 'Var λ / E[λ]²'}")
        axis.set_ylabel("measured")
        axis.legend(fontsize="small")
    bx.set_title(f"mean λ, depth {result['depth']}, width {result['width']}")
    cx.set_title("Var λ / E[λ]² (colour: χ)")
    return save_figure(fig, path)


def _write(result: dict, out: Path):
    return write_outputs(out, "phase_diagram", table(result), result, lambda path: figure(result, path))


def main(argv=None) -> int:
    return script_main("phase_diagram", __doc__, argv, [
        ("--depth", positive_int, 8, "number of layers L"),
        ("--width", positive_int, 400, "width N"),
        ("--nets", positive_int, 4, "networks per cell (pooled)"),
    ], lambda a: run(a.depth, a.width, a.nets), _write)


if __name__ == "__main__":
    sys.exit(main())
