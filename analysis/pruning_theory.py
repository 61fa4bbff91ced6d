"""Mean JSV after filter pruning at initialisation: free-probability prediction vs measurement.

MLP-7-Linear's shape (1024 -> 100 x 6 -> 10, linear) with Gaussian or orthogonal
weights (sigma_w = 1). Every hidden layer loses a fraction p of its units, chosen
at random or by isotpp's L1 plan (smallest mean |w| of the unit's incoming
weights), on the same initialisations; the pruned network is built physically
smaller (isotpp.pruning.plan.hard_prune) and its exact, input-free JSV measured: the
singular values of the product of its kernels, in float64 (a linear MLP's
Jacobian; ``isotpp spectrum``'s linear method computes the same).

The prediction for random pruning: removing units multiplies by a 0/1 diagonal
mask, a Bernoulli(1 - p) factor in the free product (isotpp.theory.chain_spectrum
with keep = 1 - p), with the surviving weights at their original scale. L1 keeps
the units with the largest incoming weights, which random pruning does not, so
the measured L1 values show how far a norm-based choice moves the spectrum at
initialisation.

    python analysis/pruning_theory.py --ratios 0,0.2,0.4,0.6,0.8,0.9 --nets 20 --out runs/pruning_theory

writes pruning_theory.json, pruning_theory.md (table) and pruning_theory.png.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
from _script import choice_list, positive_int, ratio_list, script_main, write_outputs

WIDTHS = (1024, 100, 100, 100, 100, 100, 100, 10)


def _kernel_product_sv(model) -> np.ndarray:
    """The JSV of a linear MLP: singular values of K_1 K_2 ... K_L (x @ K per layer), float64."""
    J = None
    for K in model.dense_kernels():
        K = np.asarray(K, np.float64)
        J = K if J is None else J @ K
    return np.linalg.svd(J, compute_uv=False)


def _measure(init: str, ratios, nets: int, rng_seed: int) -> dict:
    """{ratio: {"random" | "l1": {"mean", "sem"}}}: mean JSV after pruning every hidden layer
    at each ratio, over ``nets`` networks (seeds 0 .. nets-1), each pruned at every ratio."""
    from isotpp.models import create_model
    from isotpp.pruning.plan import Plan, hard_prune, l1_plan, n_pruned

    rng = np.random.default_rng(rng_seed)
    hidden = [f"net.{2 * i}" for i in range(len(WIDTHS) - 2)]
    out = {ratio: {"random": [], "l1": []} for ratio in ratios}
    for seed in range(nets):
        model = create_model("mlp", depth=len(WIDTHS) - 1, width=WIDTHS[1], act="linear", input_dim=WIDTHS[0],
                             num_classes=WIDTHS[-1], init=init, seed=seed)
        for ratio in ratios:
            if ratio == 0:
                s = _kernel_product_sv(model)
                out[ratio]["random"].append(float(s.mean()))
                out[ratio]["l1"].append(float(s.mean()))
                continue
            l1 = l1_plan(model, {name: ratio for name in hidden})
            k = n_pruned(ratio, WIDTHS[1])
            rand = Plan(dict(l1.sizes), {g: tuple(sorted(int(i) for i in rng.choice(n, k, replace=False)))
                                         for g, n in l1.sizes.items()})
            for name, plan in (("l1", l1), ("random", rand)):
                s = _kernel_product_sv(hard_prune(model, plan))
                out[ratio][name].append(float(s.mean()))
    return {ratio: {name: {"mean": float(np.mean(v)), "sem": float(np.std(v) / math.sqrt(len(v)))}
                    for name, v in by.items()} for ratio, by in out.items()}


INITS = ("gaussian", "orthogonal")


def run(ratios, nets: int, inits=INITS) -> dict:
    from isotpp import theory
    from isotpp.pruning.plan import n_pruned

    rows = []
    for init in inits:
        meas = _measure(init, ratios, nets, 1000)
        for ratio in ratios:
            keep = 1 - n_pruned(ratio, WIDTHS[1]) / WIDTHS[1]
            law = theory.chain_spectrum(WIDTHS, init, 1.0, "linear", keep=keep)
            summ = law.summary()
            rows.append({"init": init, "ratio": ratio, "keep": keep,
                         "theory": {"mean_s": summ["mean_s"], "mean_lambda": law.mean_lambda,
                                    "var_over_mean_sq": law.var_over_mean_sq},
                         "random": meas[ratio]["random"], "l1": meas[ratio]["l1"]})
    return {"widths": list(WIDTHS), "nets": nets, "sigma_w": 1.0, "inits": list(inits), "rows": rows}


def table(result: dict) -> str:
    from isotpp.reporting.tables import markdown_table

    body = []
    for r in result["rows"]:
        body.append([r["init"], f"{r['ratio']:.2f}", f"{r['theory']['mean_s']:.4g}",
                     f"{r['random']['mean']:.4g} ± {r['random']['sem']:.2g}",
                     f"{r['l1']['mean']:.4g} ± {r['l1']['sem']:.2g}",
                     f"{r['random']['mean'] / r['theory']['mean_s']:.3f}"])
    return (markdown_table(["weights", "ratio p", "theory E[s] (random)", "random, measured", "L1, measured",
                            "random / theory"], body)
            + f"\n\nMLP-7-Linear's shape {' -> '.join(map(str, result['widths']))}, σ_w = 1, at initialisation; "
              f"every hidden layer pruned at ratio p; mean JSV over {result['nets']} networks (± standard error); "
              "the same initialisations for random and L1.\n")


def figure(result: dict, path: Path) -> Path:
    from matplotlib.figure import Figure

    from isotpp.reporting.figures import save_figure

    inits = result["inits"]
    fig = Figure(figsize=(5 * len(inits), 4.2), layout="constrained")
    axes = fig.subplots(1, len(inits), squeeze=False)[0]
    for ax, init in zip(axes, inits):
        rows = [r for r in result["rows"] if r["init"] == init]
        p = [r["ratio"] for r in rows]
        ax.plot(p, [r["theory"]["mean_s"] for r in rows], "-", color="C3", label="theory (random pruning)")
        ax.errorbar(p, [r["random"]["mean"] for r in rows], [r["random"]["sem"] for r in rows], fmt="o",
                    color="C0", label="random, measured")
        ax.errorbar(p, [r["l1"]["mean"] for r in rows], [r["l1"]["sem"] for r in rows], fmt="s", mfc="none",
                    color="C1", label="L1, measured")
        ax.set_yscale("log")
        ax.set_xlabel("pruning ratio p (every hidden layer)")
        ax.set_ylabel("mean JSV")
        ax.set_title(f"{init} weights, σ_w = 1")
        ax.legend(fontsize="small")
    return save_figure(fig, path)


def _write(result: dict, out: Path):
    return write_outputs(out, "pruning_theory", table(result), result, lambda path: figure(result, path))


def main(argv=None) -> int:
    return script_main("pruning_theory", __doc__, argv, [
        ("--ratios", ratio_list, [0.0, 0.2, 0.4, 0.6, 0.8, 0.9], "pruning ratios in [0, 1), comma-separated"),
        ("--nets", positive_int, 20, "networks per ratio"),
        ("--inits", choice_list(INITS, "inits"), list(INITS), "weights, comma-separated"),
    ], lambda a: run(a.ratios, a.nets, a.inits), _write)


if __name__ == "__main__":
    sys.exit(main())
