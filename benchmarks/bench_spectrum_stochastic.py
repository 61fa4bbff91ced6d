"""Stochastic Jacobian spectra at full size: error versus budget, and ResNet-50 at 1,000 classes (a benchmark, not a test).

    python benchmarks/bench_spectrum_stochastic.py [--budgets 8,16,32,64] [--samples 32] [--resnet50-samples 2]
                                                   [--resnet50-budgets 16,64] [--image-size 224]
                                                   [--memory-budget-gib 4] [--skip-resnet50] [--json out.json]

1. ResNet56 with a 100-class head (CIFAR shape, Kaiming init, BatchNorm running
   statistics), ``--samples`` Gaussian inputs: the exact spectrum (``gram``,
   100 VJPs per chunk) against the stochastic estimate (Hutchinson + SLQ,
   isotpp.spectra.stochastic) at each budget of J·Jᵀ products per sample:
   relative error of the mean λ and of the mean JSV (the midpoint of the
   Gauss–Radau and Gauss values, with the estimate's own standard error, and
   the errors of those two values, which bracket each probe's), W₁ between the pooled densities over the exact mean JSV,
   the largest Ritz value over the exact s_max, time per sample and peak memory.
2. ResNet-50 at 1,000 classes (``--image-size``², default 224×224×3): the
   stochastic estimate at each of ``--resnet50-budgets`` products on
   ``--resnet50-samples`` samples, its chunk planned for ``--memory-budget-gib``
   by XLA's memory analysis (the chunk chosen and its program's bytes printed
   beside the budget), timed with its peak memory; the exact method's time projected from the same backbone with a
   16-class head (its 16 unrolled VJPs × 1000/16: optimistic for the exact
   method, whose 1,000 classes run as vmapped chunks, measured ≈ 1.5× slower per
   VJP), and the memory one exact sample would need (XLA's analysis).

Every row runs in its own process, so its peak memory (device statistics where
the backend has them, peak RSS on CPU) is its own; each row gives the load
average at its start and end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
from _bench import emit, loads, machine, mib, run_worker


def _model(arch, classes, x):
    """Kaiming init; BatchNorm running statistics set to the statistics of ``x`` (one train-mode pass with
    momentum 0), so that eval mode normalises as a trained network does instead of letting activations grow."""
    from flax import nnx

    from isotpp.models import create_model

    m = create_model(arch, num_classes=classes, init="kaiming", seed=0)
    bns = [mod for _, mod in m.iter_modules() if isinstance(mod, nnx.BatchNorm)]
    for bn in bns:
        bn.momentum = 0.0
    m.train()
    m(x)
    for bn in bns:
        bn.momentum = 0.9
    m.eval()
    return m


def _inputs(n, shape):
    import jax

    return jax.random.normal(jax.random.key(1), (n, *shape))


def worker(args) -> None:
    import jax

    from isotpp import memory
    from isotpp.spectra import jacobian as sp
    from isotpp.spectra import stochastic as sps

    kind, arch, classes, n = args.worker, args.arch, args.classes, args.n
    shape = (32, 32, 3) if arch == "resnet56" else (args.image_size, args.image_size, 3)
    x = _inputs(n, shape)
    model = _model(arch, classes, x[: min(n, 16)])
    budget = int(args.memory_budget_gib * 2**30) if args.memory_budget_gib else None
    out: dict = {}
    if kind == "exact-plan":  # bytes one exact sample needs, compile only
        graphdef, state = sp.nnx.split(model)
        prog = sp._chunk_sv.lower(graphdef, state, x[:1], method="gram", bn="eval").compile()
        out["exact_bytes_per_sample"] = memory.compiled_bytes(prog)
        emit(out)
        return
    if kind == "exact":
        def run(xs):
            return sp.model_singular_values(model, xs, method="gram", chunk_size=n)
        k = n
    else:
        k = n
        if budget:  # plan the chunk (compile only), then run it through the jit cache
            graphdef, state = sp.nnx.split(model)
            _, steps = sps.split_budget(args.matvecs, classes)
            k, prog = memory.chunk_for_budget(
                lambda j: sps._lanczos_chunk.lower(graphdef, state, x[:j], jax.random.key(0), steps=steps).compile(),
                n, budget)
            out["chunk"], out["chunk_bytes"], out["budget_bytes"] = k, memory.compiled_bytes(prog), budget

        def run(xs):
            return sps.stochastic_spectrum(model, xs, matvecs=args.matvecs, chunk_size=k)
    t = time.perf_counter()
    run(x[:k])  # compiles
    first = time.perf_counter() - t
    t = time.perf_counter()
    res = run(x)
    if kind == "exact":
        np.save(args.out, res)
    else:
        out["summary"] = res.summary()
        np.savez(args.out, nodes=res.nodes, weights=res.weights, radau_nodes=res.radau_nodes,
                 radau_weights=res.radau_weights)
    elapsed = time.perf_counter() - t
    out.update(ms_per_sample=elapsed / n * 1e3, first_call_s=first, device=jax.devices()[0].device_kind)
    emit(out)


def _worker_args(script, kind, arch, classes, n, out, matvecs=0, mem=0.0, size=224):
    return run_worker(script, "--worker", kind, "--arch", arch, "--classes", str(classes), "--n", str(n),
                      "--out", out, "--matvecs", str(matvecs), "--memory-budget-gib", str(mem),
                      "--image-size", str(size))


def error_table(script, budgets, n, tmp):
    from isotpp.spectra import stochastic as sps

    exact_path = os.path.join(tmp, "exact.npy")
    ex = _worker_args(script, "exact", "resnet56", 100, n, exact_path)
    s = np.load(exact_path).astype(np.float64)
    print(f"\nResNet56, 100 classes, {n} samples, BN running statistics; exact (gram, 100 VJPs per chunk): "
          f"{ex['ms_per_sample']:.1f} ms/sample, peak {mib(ex['peak_bytes'])} ({ex['peak_source']}); "
          f"exact mean λ {(s**2).mean():.4g}, mean JSV {s.mean():.4g}, s_max {s.max():.4g}")
    print(f"{'budget':>7}{'probes×steps':>14}{'err mean λ':>12}{'(stderr)':>10}{'err mean s':>12}{'(stderr)':>10}"
          f"{'Radau':>9}{'Gauss':>9}{'W1/mean s':>11}{'ritz/s_max':>11}{'ms/sample':>11}{'vs exact':>9}{'peak':>11}{'load':>10}")
    rows = []
    for b in budgets:
        path = os.path.join(tmp, f"slq{b}.npz")
        r = _worker_args(script, "slq", "resnet56", 100, n, path, matvecs=b)
        z = np.load(path)
        est = sps.StochasticSpectrum(z["nodes"], z["weights"], 100, b, z["radau_nodes"], z["radau_weights"])
        (lam, lam_se), (mean, mean_se) = est.lambda_mean(), est.sv_mean()
        vals, wts = est.pooled()
        row = {
            "budget": b, "probes": est.probes, "steps": int(est.nodes.shape[2]),
            "lam_rel": lam / (s**2).mean() - 1, "lam_se_rel": lam_se / (s**2).mean(),
            "mean_rel": mean / s.mean() - 1, "mean_se_rel": mean_se / s.mean(),
            "lower_rel": est.sv_mean_lower() / s.mean() - 1, "upper_rel": est.sv_mean_upper() / s.mean() - 1,
            "w1_rel": sps.wasserstein1(s, vals, None, wts) / s.mean(), "ritz_max": est.extremes()[0] / s.max(),
            "ms": r["ms_per_sample"], "peak": r["peak_bytes"], "load": loads([r]),
        }
        rows.append(row)
        print(f"{b:>7}{row['probes']:>8}×{row['steps']:<5}{row['lam_rel']:>+12.2%}{row['lam_se_rel']:>10.2%}"
              f"{row['mean_rel']:>+12.2%}{row['mean_se_rel']:>10.2%}{row['lower_rel']:>+9.2%}{row['upper_rel']:>+9.2%}"
              f"{row['w1_rel']:>11.3f}{row['ritz_max']:>11.3f}"
              f"{row['ms']:>11.1f}{ex['ms_per_sample'] / row['ms']:>8.1f}x{mib(row['peak']):>11}{row['load']:>10}",
              flush=True)
    return ex, rows


def resnet50(script, n, mem_gib, tmp, budgets=(64,), size=224):
    """Each figure is printed as soon as its worker is done (a ResNet-50 worker takes minutes on a CPU)."""
    print(f"\nResNet-50, 1,000 classes, {size}×{size}×3, BN running statistics, {n} samples "
          f"(memory budget {mem_gib:g} GiB):", flush=True)
    out = {"image_size": size, "samples": n, "memory_budget_gib": mem_gib, "slq": {}}
    for b in budgets:
        slq = _worker_args(script, "slq", "resnet50", 1000, n, os.path.join(tmp, f"r50_{b}.npz"), matvecs=b,
                           mem=mem_gib, size=size)
        out["slq"][b] = slq
        s = slq["summary"]
        print(f"  stochastic, {b} products ({s['probes']} probes × {s['steps']} steps): "
              f"{slq['ms_per_sample'] / 1e3:.1f} s/sample (first call incl. compile {slq['first_call_s']:.0f} s); "
              f"chunk {slq.get('chunk')} of {n} samples planned: {mib(slq.get('chunk_bytes', 0))} by XLA's "
              f"analysis, within {mib(slq.get('budget_bytes', 0))}; process {slq['peak_source']} "
              f"{mib(slq['peak_bytes'])}; load {loads([slq])}", flush=True)
        print(f"    mean λ {s['lambda_mean']:.4g} ± {s['lambda_mean_stderr']:.2g}, mean JSV {s['mean']:.4g} "
              f"± {s['mean_stderr']:.2g} (Gauss–Radau / Gauss bracket {s['mean_lower']:.4g} – {s['mean_upper']:.4g}), "
              f"largest Ritz s {s['max_ritz']:.4g}", flush=True)
    head = _worker_args(script, "exact", "resnet50", 16, 1, os.path.join(tmp, "r50h.npy"), size=size)
    projected = head["ms_per_sample"] * 1000 / 16
    ratios = ", ".join(f"{projected / v['ms_per_sample']:.1f}x at {b}" for b, v in out["slq"].items())
    print(f"  exact (gram), projected from a 16-class head ({head['ms_per_sample'] / 1e3:.2f} s/sample × 1000/16): "
          f"{projected / 1e3:.0f} s/sample, i.e. the stochastic rows' time × ({ratios} products); "
          f"peak {mib(head['peak_bytes'])}; load {loads([head])}", flush=True)
    plan = _worker_args(script, "exact-plan", "resnet50", 1000, 1, os.path.join(tmp, "none"), size=size)
    print(f"  one exact 1,000-class sample needs {mib(plan['exact_bytes_per_sample'])} (XLA memory analysis)")
    out.update(exact_head16=head, exact_projected_ms=projected, exact_plan=plan)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budgets", default="8,16,32,64")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--resnet50-samples", type=int, default=2)
    ap.add_argument("--memory-budget-gib", type=float, default=4.0)
    ap.add_argument("--resnet50-budgets", default="64", help="comma-separated J·Jᵀ products per sample")
    ap.add_argument("--image-size", type=int, default=224, help="ResNet-50's input side (224: ImageNet)")
    ap.add_argument("--skip-resnet50", action="store_true")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--skip-table", action="store_true")
    for a in ("--worker", "--arch", "--out"):
        ap.add_argument(a, default=None, help=argparse.SUPPRESS)
    for a in ("--classes", "--n", "--matvecs"):  # --image-size above serves the workers too
        ap.add_argument(a, type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    print(f"machine: {machine()}")
    script = os.path.abspath(__file__)
    results = {"machine": machine()}
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_table:
            ex, rows = error_table(script, [int(b) for b in args.budgets.split(",")], args.samples, tmp)
            results["error_table"] = {"exact": ex, "rows": rows}
        if not args.skip_resnet50:
            results["resnet50"] = resnet50(script, args.resnet50_samples, args.memory_budget_gib, tmp,
                                           [int(b) for b in args.resnet50_budgets.split(",")], args.image_size)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1, default=str)


if __name__ == "__main__":
    sys.exit(main())
