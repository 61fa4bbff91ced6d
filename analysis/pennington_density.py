"""Singular-value densities of deep networks at criticality, Gaussian vs orthogonal weights.

In the spirit of Pennington, Schoenholz & Ganguli (2017), Fig. 2: for tanh,
hard-tanh and ReLU networks on the order-to-chaos line (chi = 1; tanh and
hard-tanh with a small sigma_b, so q* is small), the density of the singular
values s of the input-output Jacobian as depth grows, measured on square
networks (numpy, float64, inputs at the fixed point) against the free-probability
prediction. Only orthogonal sigmoidal networks near q* -> 0 stay concentrated
around s = 1 (dynamical isometry); Gaussian weights, and ReLU with either
weights, spread over decades. Densities are of log10 s (areas are probabilities);
the zeros ReLU and hard-tanh force (an atom) are reported in the table, not drawn.

    python analysis/pennington_density.py --depths 2,8,32 --width 400 --nets 2 --out runs/pennington_density

writes pennington_density.json, pennington_density.md and pennington_density.png.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
from _script import depth_list, positive_int, public, script_main, write_outputs

ACTS = ("tanh", "hard_tanh", "relu")
# float64's SVD resolves s down to ~1e-15 s_max; deep Gaussian products put mass far below (L = 32: 14 % of
# lambda under 1e-32 lambda_max), which the KS distance lumps at this floor rather than count as data
FLOAT64_FLOOR = 1e-13
SIGMA_B = {"tanh": 0.05, "hard_tanh": 0.05, "relu": 0.0}


def critical_point(act: str) -> tuple[float, float]:
    from isotpp import theory

    sb = SIGMA_B[act]
    return theory.chi_one_sigma_w(act, sb), sb


def run(depths, width: int, nets: int, seed: int = 0) -> dict:
    from isotpp import theory
    from isotpp.theory.simulate import sample_jacobian

    rng = np.random.default_rng(seed)
    rows = []
    for act in ACTS:
        sw, sb = critical_point(act)
        mf = theory.mean_field(act, sw, sb)
        for init in ("gaussian", "orthogonal"):
            for L in depths:
                widths = (width,) * (L + 1)
                law = theory.chain_spectrum(widths, init, sw, act, sb)
                s = np.concatenate([np.linalg.svd(sample_jacobian(rng, widths, init, sw, act, sb), compute_uv=False)
                                    for _ in range(nets)])
                lam = s * s
                summ = law.summary()
                small = (1e-6 * s.max()) ** 2  # "zeros": s <= 1e-6 s_max, measured and predicted alike
                rows.append({"act": act, "init": init, "depth": L, "sigma_w": sw, "sigma_b": sb, "q_star": mf.q_star,
                             "chi": mf.chi,
                             "measured": {"mean_s": float(s.mean()), "mean_lambda": float(lam.mean()),
                                          "var_over_mean_sq": float(lam.var() / lam.mean() ** 2),
                                          "zero_fraction": float(np.mean(lam <= small)),
                                          "ks": theory.ks_distance(lam, law, floor=(FLOAT64_FLOOR * s.max()) ** 2)},
                             "theory": {"mean_s": summ["mean_s"], "mean_lambda": law.mean_lambda,
                                        "var_over_mean_sq": law.var_over_mean_sq,
                                        "zero_fraction": float(law.cdf_lambda(small)), "atom": law.atom},
                             "_s": s, "_law": law})
    return {"width": width, "nets": nets, "depths": list(depths), "rows": rows}


def table(result: dict) -> str:
    from isotpp.reporting.tables import markdown_table

    body = [[r["act"], r["init"], str(r["depth"]), f"{r['sigma_w']:.4f}", f"{r['sigma_b']:.2f}",
             f"{r['measured']['mean_s']:.4g}", f"{r['theory']['mean_s']:.4g}",
             f"{r['measured']['var_over_mean_sq']:.3f}", f"{r['theory']['var_over_mean_sq']:.3f}",
             f"{r['measured']['zero_fraction']:.3f}", f"{r['theory']['zero_fraction']:.3f}",
             f"{r['measured']['ks']:.3f}"] for r in result["rows"]]
    return (markdown_table(["φ", "weights", "L", "σ_w", "σ_b", "mean s", "theory", "Var λ / mean²", "theory",
                            "s ≤ 1e-6 s_max", "theory", "KS (λ)"], body)
            + f"\n\nAt criticality (χ = 1); width {result['width']}, {result['nets']} networks per row, "
              "inputs at the fixed point, float64. The fraction of s at most 1e-6 s_max is the atom at 0 (relu, "
              "hard-tanh) plus the continuous mass there (deep Gaussian networks); the KS distance lumps λ below "
              f"({FLOAT64_FLOOR:g} s_max)², under float64's resolution.\n")


def figure(result: dict, path: Path) -> Path:
    from matplotlib.figure import Figure

    from isotpp.reporting.figures import save_figure

    fig = Figure(figsize=(11, 10), layout="constrained")
    axes = fig.subplots(len(ACTS), 2)
    for i, act in enumerate(ACTS):
        for j, init in enumerate(("gaussian", "orthogonal")):
            ax = axes[i, j]
            for c, r in enumerate(rr for rr in result["rows"] if rr["act"] == act and rr["init"] == init):
                s, law = r["_s"], r["_law"]
                on_top = np.zeros(s.shape, bool)
                if law.top_atom > 0:  # the atom is drawn as a line, not as a bar of huge density
                    on_top = np.abs(s - math.sqrt(law.top_value)) <= 1e-5 * math.sqrt(law.top_value)
                pos = s[(s > 1e-6 * s.max()) & ~on_top]
                lo, hi = law.support_lambda()
                lo_t = math.log10(max(lo, 1e-300)) / 2
                if pos.size:  # nothing left besides the atoms (relu, hard-tanh at L = 2): lines only
                    t = np.log10(pos)
                    h, edges = np.histogram(t, bins=40, range=(float(t.min()), max(float(t.max()), t.min() + 0.04)))
                    ax.stairs(h / (s.size * np.diff(edges)), 10.0**edges, color=f"C{c}", alpha=0.6)
                    lo_t = max(lo_t, edges[0] - 0.5)
                if law.point_mass is None and law.continuous_mass > 1e-3:
                    x = np.logspace(lo_t, math.log10(hi) / 2, 600)
                    ax.plot(x, law.density_s(x) * x * math.log(10.0), color=f"C{c}", lw=1.5,
                            label=f"L = {r['depth']}")
                if law.top_atom > 0:
                    ax.axvline(math.sqrt(law.top_value), color=f"C{c}", ls="--",
                               label=f"L = {r['depth']}: atom {100 * law.top_atom:.0f} %")
            ax.set_xscale("log")
            ax.set_yscale("log")  # concentrated (orthogonal, shallow) and spread (deep) laws on one panel
            top = ax.get_ylim()[1]
            ax.set_ylim(1e-3 * top, 2 * top)
            ax.set_title(f"{act}, {init} (σ_w = {r['sigma_w']:.3f}, σ_b = {r['sigma_b']})", fontsize="medium")
            ax.set_xlabel("singular value s")
            ax.set_ylabel("density of log10 s")
            ax.legend(fontsize="small")
    fig.suptitle(f"Jacobian singular values at criticality: measured (steps, width {result['width']}) "
                 "vs free probability (lines)")
    return save_figure(fig, path)


def _write(result: dict, out: Path):
    return write_outputs(out, "pennington_density", table(result), public(result), lambda path: figure(result, path))


def main(argv=None) -> int:
    return script_main("pennington_density", __doc__, argv, [
        ("--depths", depth_list, [2, 8, 32], "depths, comma-separated"),
        ("--width", positive_int, 400, "width N"),
        ("--nets", positive_int, 2, "networks per row (pooled)"),
    ], lambda a: run(a.depths, a.width, a.nets), _write)


if __name__ == "__main__":
    sys.exit(main())
