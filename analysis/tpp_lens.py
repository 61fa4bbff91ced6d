"""TPP through the theory lens: what free probability says about MLP-7-Linear before and after pruning.

MLP-7-Linear (1024 -> 100 x 6 -> 10, linear) is a product of rectangular random
matrices at initialisation, so its JSV law is a free multiplicative convolution
of Marchenko-Pastur (Gaussian) or projection (orthogonal) laws. Pruning 80 % of
every hidden layer at random multiplies by Bernoulli(0.2) masks. This script
puts the predictions beside measurements on the same initialisations and beside
the linear-network study's published-schedule numbers (README, 3 seeds: the
networks there are *trained* for 90 epochs before pruning):

* at initialisation, for the study's init (PyTorch's default: U(+-1/sqrt(fan_in)),
  variance 1/(3 fan_in), so sigma_w = 1/sqrt(3) by universality), Gaussian
  sigma_w = 1 and orthogonal sigma_w = 1;
* after random and L1 pruning at 0.8 (measured on 20 networks);
* OrthP: orthogonal kept kernels, the rectangular orthogonal chain
  1024 -> 20 x 6 -> 10, whose law is the point mass s = 1.

    python analysis/tpp_lens.py --nets 20 --out runs/tpp_lens

writes tpp_lens.json and tpp_lens.md.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from _script import choice_list, positive_int, script_main, write_outputs
from pruning_theory import _measure  # the same measurement as the pruning figure

WIDTHS = (1024, 100, 100, 100, 100, 100, 100, 10)
RATIO = 0.8
# the study's table (README, "The linear-network study"): mean JSV right after pruning, 3 seeds
STUDY = {"Unpruned (trained)": 2.9506, "L1": 0.0058, "L1+OrthP": 1.0000, "TPP": 4.1881, "L1+KernOrth": 0.0058,
         "L1+AI": 0.9858}


INITS = ("torch", "gaussian", "orthogonal")


def run(nets: int, inits=INITS) -> dict:
    from isotpp import theory
    from isotpp.pruning.plan import n_pruned

    keep = 1 - n_pruned(RATIO, WIDTHS[1]) / WIDTHS[1]
    rows = []
    for init in inits:
        weights, sw = theory.weight_law(init, 1.0)
        full = theory.chain_spectrum(WIDTHS, weights, sw)
        pruned = theory.chain_spectrum(WIDTHS, weights, sw, keep=keep)
        meas = _measure(init, (0.0, RATIO), nets, 8)
        init_meas, pruned_meas = meas[0.0]["random"], meas[RATIO]
        rows.append({
            "init": init, "weights": weights, "sigma_w": sw,
            "theory_init": full.summary()["mean_s"], "measured_init": init_meas["mean"],
            "theory_random_pruned": pruned.summary()["mean_s"],
            "measured_random_pruned": pruned_meas["random"]["mean"], "measured_l1_pruned": pruned_meas["l1"]["mean"],
            "theory_lambda_ratio": pruned.mean_lambda / full.mean_lambda,
        })
    orthp = theory.chain_spectrum((WIDTHS[0], *[round(keep * w) for w in WIDTHS[1:-1]], WIDTHS[-1]), "orthogonal", 1.0)
    return {"widths": list(WIDTHS), "ratio": RATIO, "keep": keep, "nets": nets, "rows": rows,
            "orthp_point_mass_s": math.sqrt(orthp.point_mass) if orthp.point_mass is not None else None,
            "study": STUDY}


def table(result: dict) -> str:
    from isotpp.reporting.tables import markdown_table

    body = [[r["init"], f"{r['weights']} σ_w={r['sigma_w']:.3g}", f"{r['theory_init']:.4g}",
             f"{r['measured_init']:.4g}", f"{r['theory_random_pruned']:.3g}", f"{r['measured_random_pruned']:.3g}",
             f"{r['measured_l1_pruned']:.3g}", f"{r['theory_random_pruned'] / r['theory_init']:.2e}"]
            for r in result["rows"]]
    t1 = markdown_table(["init", "law", "E[s] theory, init", "measured", "E[s] theory, 80 % random",
                         "measured random", "measured L1", "theory: pruned / init"], body)
    s = result["study"]
    first = result["rows"][0]  # the study's own init (torch) unless --inits leaves it out
    t2 = markdown_table(["study (trained 90 epochs, then pruned)", "mean JSV", "theory lens"], [
        ["Unpruned (trained)", f"{s['Unpruned (trained)']:.4g}", "training raised E[s] from the init's "
         f"{first['theory_init']:.3g} ({first['init']} init)"],
        ["L1", f"{s['L1']:.4g}", f"× {s['L1'] / s['Unpruned (trained)']:.1e} of the trained net; random pruning of a "
         f"random net predicts × {first['theory_random_pruned'] / first['theory_init']:.1e}"],
        ["L1+OrthP", f"{s['L1+OrthP']:.4g}", "orthogonal 1024 → 20 × 6 → 10: point mass at s = "
         f"{result['orthp_point_mass_s']:.4g} (exact isometry)"],
        ["TPP", f"{s['TPP']:.4g}", "above the trained net's 2.95: not a random-matrix regime (the penalty "
         "decorrelates kept from pruned filters)"],
        ["L1+AI", f"{s['L1+AI']:.4g}", "approximate isometry: close to the OrthP point mass"],
    ])
    return (t1 + f"\n\nMLP-7-Linear {' → '.join(map(str, result['widths']))} at initialisation, pruning ratio "
            f"{result['ratio']} of every hidden layer (keep {result['keep']:.2f}); measured: mean over "
            f"{result['nets']} networks.\n\n" + t2 + "\n")


def _write(result: dict, out: Path):
    return write_outputs(out, "tpp_lens", table(result), result)


def main(argv=None) -> int:
    return script_main("tpp_lens", __doc__, argv, [
        ("--nets", positive_int, 20, "networks per measurement"),
        ("--inits", choice_list(INITS, "inits"), list(INITS), "initialisations, comma-separated"),
    ], lambda a: run(a.nets, a.inits), _write)


if __name__ == "__main__":
    sys.exit(main())
