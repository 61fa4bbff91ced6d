"""`isotpp spectrum` at width N against the free-probability prediction: a table and one figure.

Runs the command line itself (``isotpp spectrum --model mlp --depth L --width N
--input-dim N --num-classes N --act ACT --init INIT --sigma-w S --sigma-b B
--samples K --nets M --float64 --json ...``) for every activation (linear, tanh,
relu, hard_tanh) x weights (Gaussian, orthogonal) x depth, each activation near
its order-to-chaos point, and lists the measured moments of lambda = s^2 beside
the predicted ones, with q*, chi and the Kolmogorov-Smirnov distance of the
measured lambda to the law. A linear network's Jacobian does not depend on its
input, so it gets K x M networks (one spectrum each) instead of K inputs x M
networks. float64 throughout: float32's Gram matrix leaves the zeros ReLU and
hard-tanh force at ~3e-4 s_max, which the KS distance would count as data.

    python analysis/spectrum_theory_table.py --depths 4,16 --width 400 --samples 4 --nets 2 \
        --out runs/spectrum_theory_table

writes spectrum_theory_table.json (one record per command: the command, the
measured and predicted numbers), spectrum_theory_table.md (the table and the
commands) and spectrum_theory_table.png (the density of s, measured histogram
and predicted curve, one panel per activation x weights at the largest depth).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
from _script import (
    choice_list,
    depth_list,
    positive_int,
    public,
    script_main,
    write_outputs,
)

ACTS = ("linear", "tanh", "relu", "hard_tanh")
INITS = ("gaussian", "orthogonal")
# (sigma_w, sigma_b): the tanh point, ReLU's critical point (chi = 1), linear at 1
POINT = {"linear": (1.0, 0.0), "tanh": (1.2, 0.1), "relu": (math.sqrt(2), 0.0), "hard_tanh": (1.2, 0.1)}


def command(act: str, init: str, depth: int, width: int, samples: int, nets: int) -> list[str]:
    """The ``isotpp spectrum`` arguments of one row (without --json / --values)."""
    sw, sb = POINT[act]
    if act == "linear":  # one input-free spectrum per network
        samples, nets = 1, samples * nets
    return ["spectrum", "--model", "mlp", "--depth", str(depth), "--width", str(width), "--input-dim", str(width),
            "--num-classes", str(width), "--act", act, "--init", init, "--sigma-w", f"{sw:.8g}",
            "--sigma-b", f"{sb:g}", "--samples", str(samples), "--nets", str(nets), "--float64"]


def run(depths, width: int, samples: int, nets: int, acts=ACTS) -> dict:
    from isotpp import theory
    from isotpp.cli.app import main as cli_main

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for act in acts:
            for init in INITS:
                for L in depths:
                    argv = command(act, init, L, width, samples, nets)
                    path = Path(tmp) / "s.json"
                    with contextlib.redirect_stdout(io.StringIO()):
                        rc = cli_main([*argv, "--values", "--json", str(path)])
                    if rc != 0:
                        raise RuntimeError(f"isotpp {' '.join(argv)} exited {rc}")
                    out = json.loads(path.read_text())
                    th = out["theory"]
                    sv = np.asarray(out["singular_values"], dtype=float).ravel()
                    sw, sb = out["sigma_w"], out["sigma_b"]  # as the command parsed them
                    law = theory.chain_spectrum((width,) * (L + 1), init, sw, act, sb, th["input_q"])
                    rows.append({
                        "command": "isotpp " + " ".join(argv) + " --json s.json",
                        "act": act, "init": init, "depth": L, "sigma_w": sw, "sigma_b": sb,
                        "n_values": int(sv.size), "dtype": out["dtype"], "seconds": out["seconds"],
                        "measured": {"lambda_mean": out["lambda_mean"],
                                     "lambda_var_over_mean_sq": out["lambda_var_over_mean_sq"],
                                     "mean_s": out["mean"], "zero_fraction": float(np.mean(sv <= 1e-6 * sv.max())),
                                     "ks_distance": out["ks_distance"]},
                        "theory": {k: th[k] for k in ("lambda_mean", "lambda_var_over_mean_sq", "q_star", "chi",
                                                      "mean_s", "zero_fraction", "input_q")},
                        "_s": sv, "_law": law,
                    })
    return {"width": width, "depths": list(depths), "samples": samples, "nets": nets, "acts": list(acts),
            "rows": rows}


def _num(x, fmt=".4g") -> str:
    return "—" if x is None else format(x, fmt)


def table(result: dict) -> str:
    from isotpp.reporting.tables import markdown_table

    body = []
    for r in result["rows"]:
        m, t = r["measured"], r["theory"]
        body.append([r["act"], r["init"], str(r["depth"]), f"{r['sigma_w']:.4g}, {r['sigma_b']:g}",
                     _num(m["lambda_mean"]), _num(t["lambda_mean"]),
                     _num(m["lambda_var_over_mean_sq"], ".3f"), _num(t["lambda_var_over_mean_sq"], ".3f"),
                     _num(t["q_star"]), _num(t["chi"]), _num(m["ks_distance"], ".3f"), str(r["n_values"])])
    head = ["φ", "weights", "L", "σ_w, σ_b", "mean λ", "theory", "Var λ / mean²", "theory", "q*", "χ", "KS (λ)",
            "values"]
    cmds = "\n".join(r["command"] for r in result["rows"])
    return (markdown_table(head, body)
            + f"\n\nWidth {result['width']} (input = hidden = output), float64, inputs at the mean-field fixed "
              f"point; nonlinear rows: {result['samples']} inputs x {result['nets']} networks, linear rows: "
              f"{result['samples'] * result['nets']} networks (the Jacobian does not depend on the input). "
              "q* and χ are — for linear networks (no fixed point) and for ReLU at σ_w = √2, σ_b = 0 "
              "(every q is a fixed point; χ = 1).\n\nThe commands:\n\n```bash\n" + cmds + "\n```\n")


def figure(result: dict, path: Path) -> Path:
    from matplotlib.figure import Figure

    from isotpp.reporting.figures import save_figure
    from isotpp.theory.plots import draw_law

    L = max(result["depths"])
    rows = {(r["act"], r["init"]): r for r in result["rows"] if r["depth"] == L}
    acts = result["acts"]
    fig = Figure(figsize=(11, 3 * len(acts)), layout="constrained")
    axes = fig.subplots(len(acts), len(INITS), squeeze=False)
    for i, act in enumerate(acts):
        for j, init in enumerate(INITS):
            r, ax = rows[(act, init)], axes[i, j]
            draw_law(ax, r["_law"], r["_s"], var="s")
            ax.set_title(f"{act}, {init}: σ_w = {r['sigma_w']:.4g}, σ_b = {r['sigma_b']:g}; "
                         f"KS(λ) = {r['measured']['ks_distance']:.3f}", fontsize="medium")
            ax.legend(fontsize="small")
    fig.suptitle(f"isotpp spectrum, depth {L}, width {result['width']}: measured singular values (bars) "
                 "vs free probability (line)")
    return save_figure(fig, path)


def _write(result: dict, out: Path):
    return write_outputs(out, "spectrum_theory_table", table(result), public(result),
                         lambda path: figure(result, path))


def main(argv=None) -> int:
    return script_main("spectrum_theory_table", __doc__, argv, [
        ("--depths", depth_list, [4, 16], "depths, comma-separated (the figure shows the largest)"),
        ("--width", positive_int, 400, "width N (input = hidden = output)"),
        ("--samples", positive_int, 4, "inputs per network (nonlinear networks)"),
        ("--nets", positive_int, 2, "networks per row (linear networks: samples x nets)"),
        ("--acts", choice_list(ACTS, "activations"), list(ACTS), "activations, comma-separated"),
    ], lambda a: run(a.depths, a.width, a.samples, a.nets, a.acts), _write)


if __name__ == "__main__":
    sys.exit(main())
