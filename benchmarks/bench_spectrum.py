"""Per-sample Jacobian-spectrum throughput and peak memory (a benchmark, not a test).

    python benchmarks/bench_spectrum.py [--repeats 5] [--rounds 2] [--torch]

Times, after compilation (reported separately):
* MLP-7-Linear, batch 100: the exact kernel product ("linear"), the Gram of
  batched VJPs ("gram") and the explicit Jacobian ("jacobian");
* ResNet56 (CIFAR shape), batch 128 in chunks: "gram" and "jacobian" with
  BatchNorm's running statistics, and "gram" with the statistics of the batch
  of 128 (what the reference measures).
For ResNet56 it also prints the floor of the computation (one forward pass plus
ten input-only VJPs, from XLA's own FLOP count of the forward) and the fraction
of the machine's attainable FLOP rate (a large float32 matmul) reached; the rows
``r56-floor`` and ``r56-floor-batch`` time that floor itself (the forward and
the ten VJPs in one program, without the Gram matrix and ``eigvalsh``), in each
BatchNorm mode, with the same chunks.
With ``--torch`` (PyTorch installed) it times the reference's method beside it:
one backward pass per class through weights and input, then SVD.

Every row runs in its own process (its own peak memory: device statistics
where the backend has them, the process's peak RSS on CPU), the rows
interleaved over ``--rounds`` rounds in alternating order so that the
machine's drift hits isotpp and the reference alike; each figure is the median
over rounds of the per-round medians.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp
from _bench import configure_xla, emit, loads, machine, mib, run_worker
from flax import nnx

from isotpp.models import create_model
from isotpp.spectra import jacobian as sp


def _median_time(fn, repeats):
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def _first_call(fn):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t


def matmul_gflops(n=2048, repeats=5):
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    return 2 * n**3 / _median_time(lambda: f(a), repeats) / 1e9


def forward_flops(model, x):
    graphdef, state = nnx.split(model)
    f = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
    cost = f.lower(state, x).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan")))


@functools.partial(jax.jit, static_argnames=("graphdef", "bn"))
def floor_program(graphdef, state, x, *, bn):
    """The floor of an exact spectrum: one forward pass and one input-only VJP per class (no Gram, no eigvalsh)."""
    logits, vjp = jax.vjp(functools.partial(sp._apply_fn(graphdef, bn), state), x)
    b, c = logits.shape
    eye = jnp.eye(c, dtype=logits.dtype)
    return [vjp(jnp.broadcast_to(eye[k], (b, c)))[0] for k in range(c)]


@functools.partial(jax.jit, static_argnames=("graphdef", "bn"))
def gram_vmapped(graphdef, state, x, *, bn):
    """The idea tried for the batch-statistics JSV: the ten VJPs vmapped into one wide backward pass (the
    default unrolls them), then the same Gram matrix and eigvalsh."""
    logits, vjp = jax.vjp(functools.partial(sp._apply_fn(graphdef, bn), state), x)
    b, c = logits.shape
    eye = jnp.eye(c, dtype=logits.dtype)
    rows = jax.vmap(lambda k: vjp(jnp.broadcast_to(eye[k], (b, c)))[0].reshape(b, -1))(jnp.arange(c))
    rows = jnp.swapaxes(rows, 0, 1)
    gram = jnp.einsum("bkd,bld->bkl", rows, rows, precision=jax.lax.Precision.HIGHEST)
    return jnp.sqrt(jnp.clip(jnp.linalg.eigvalsh(gram)[:, ::-1], 0.0, None))


def bench_model(name, model, x, methods, chunk, repeats, bn="eval"):
    graphdef, state = nnx.split(model)
    rows = []
    n = x.shape[0]
    for method in methods:
        if method == "linear":
            kernels = model.dense_kernels()
            f = jax.jit(sp.kernel_product_singular_values)
            compile_s = _first_call(lambda f=f, kernels=kernels: f(kernels))
            # one exact spectrum serves every sample of the batch
            # a fraction of a millisecond: enough repeats that a stall of the machine cannot be the median
            t = _median_time(lambda f=f, kernels=kernels: f(kernels), max(repeats, 200))
        else:
            chunks = [x[i : i + chunk] for i in range(0, n, chunk)]

            def run(method=method, chunks=chunks):
                if method == "floor":
                    return [floor_program(graphdef, state, c, bn=bn) for c in chunks]
                if method == "gram-vmap":
                    return [gram_vmapped(graphdef, state, c, bn=bn) for c in chunks]
                return [sp._chunk_sv(graphdef, state, c, method=method, bn=bn) for c in chunks]

            with sp.one_blas_thread():  # as model_singular_values runs them (eigvalsh's OpenBLAS in one thread)
                compile_s = _first_call(run)
                t = _median_time(run, repeats)
        rows.append((name, method if bn == "eval" else f"{method} (bn=batch)", compile_s, t / n * 1e3))
    return rows


# ---------------------------------------------------------------- reference (PyTorch)


def torch_reference(repeats, only=None):
    """The reference's JSV method in PyTorch: per class, backward of the summed
    logits through weights and input (requires_grad everywhere), then SVD."""
    import torch
    from torch_reference import ResNet56, mlp_7_linear

    def jsv(model, x):
        x = x.clone().requires_grad_(True)
        out = model(x)
        rows = []
        for k in range(out.shape[1]):
            model.zero_grad()
            if x.grad is not None:
                x.grad = None
            out[:, k].sum().backward(retain_graph=True)
            rows.append(x.grad.detach().reshape(x.shape[0], -1).clone())
        _u, s, _v = torch.svd(torch.stack(rows, 1))  # as the reference (full U and V)
        return s

    out = []
    for name, model, shape in (("MLP-7-Linear", mlp_7_linear(flatten=True), (100, 1, 32, 32)), ("ResNet56", ResNet56(), (128, 3, 32, 32))):
        if only is not None and name != only:
            continue
        model.train()  # the reference measures in train mode (batch statistics)
        x = torch.randn(shape)
        jsv(model, x)
        ts = []
        for _ in range(max(2, repeats // 2) if name == "ResNet56" else max(repeats, 200)):  # MLP: < 1 ms
            t = time.perf_counter()
            jsv(model, x)
            ts.append(time.perf_counter() - t)
        out.append((name, "reference (torch)", float("nan"), statistics.median(ts) / shape[0] * 1e3))
    return out


ROWS = {
    # worker name: (model, method, BN mode, chunk)
    "mlp-linear": ("MLP-7-Linear", "linear", "eval", 100),
    "mlp-gram": ("MLP-7-Linear", "gram", "eval", 100),
    "mlp-jacobian": ("MLP-7-Linear", "jacobian", "eval", 100),
    "r56-gram": ("ResNet56", "gram", "eval", 64),
    "r56-jacobian": ("ResNet56", "jacobian", "eval", 64),
    "r56-gram-batch": ("ResNet56", "gram", "batch", 128),
    # the measured floor: one forward + ten input-only VJPs, same chunks (not a method: the bound to compare with)
    "r56-floor": ("ResNet56", "floor", "eval", 64),
    "r56-floor-batch": ("ResNet56", "floor", "batch", 128),
    "r56-gram-batch-vmap": ("ResNet56", "gram-vmap", "batch", 128),
    # XLA flags other than isotpp.configure_cpu's (a 5th element): every YNNPACK fusion off, isotpp's default
    # before 2026-12-01 (the rows above ran with XLA's own defaults before then)
    "r56-gram-ynn-off": ("ResNet56", "gram", "eval", 64, "--xla_cpu_experimental_ynn_fusion_type="),
    "r56-gram-batch-ynn-off": ("ResNet56", "gram", "batch", 128, "--xla_cpu_experimental_ynn_fusion_type="),
}
TORCH_ROWS = {"torch-mlp": "MLP-7-Linear", "torch-r56": "ResNet56"}


def _inputs(name):
    if name == "MLP-7-Linear":
        m = create_model("mlp_7_linear", init="torch", seed=0)
        x = jax.random.normal(jax.random.key(1), (100, 32, 32, 1))
    else:
        m = create_model("resnet56", init="kaiming", seed=0)
        x = jax.random.normal(jax.random.key(1), (128, 32, 32, 3))
    m.eval()
    return m, x


def worker(name, repeats):
    if name in TORCH_ROWS:
        model = TORCH_ROWS[name]
        (_, _, _, ms), = [r for r in torch_reference(repeats, only=model)]
        emit({"ms": ms, "compile_s": float("nan")})
        return
    model_name, method, bn, chunk, *flags = ROWS[name]
    configure_xla(*flags)  # before the first computation: isotpp's flags (as the `isotpp` command runs) or the row's
    model, x = _inputs(model_name)
    (_, _, comp, ms), = bench_model(model_name, model, x, (method,), chunk, repeats, bn=bn)
    emit({"ms": ms, "compile_s": comp})


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--torch", action="store_true", help="also time the PyTorch reference method")
    ap.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows: " + ", ".join(ROWS))
    ap.add_argument("--json", default=None, help="also write every worker's result here")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.repeats)
        return

    configure_xla()  # the attainable rate under the flags the rows run with
    print(f"machine: {machine()}; jax {jax.__version__} on {jax.devices()[0].device_kind}")
    peak = matmul_gflops()
    print(f"attainable float32 rate (2048^3 matmul): {peak:.0f} GFLOP/s")
    names = [r for r in args.rows.split(",") if r] + (list(TORCH_ROWS) if args.torch else [])
    results = {n: [] for n in names}
    for r in range(args.rounds):
        for n in names if r % 2 == 0 else names[::-1]:
            results[n].append(run_worker(__file__, "--worker", n, "--repeats", str(args.repeats)))
            x = results[n][-1]
            print(f"round {r + 1}: {n:<16} {x['ms']:.3f} ms/sample, peak {mib(x['peak_bytes'])}, "
                  f"load {x['load_start']:.1f}–{x['load']:.1f}", flush=True)

    def med(n, key):
        return statistics.median(x[key] for x in results[n])

    ref = {TORCH_ROWS[n]: med(n, "ms") for n in names if n in TORCH_ROWS}
    print(f"\n{'model':<14}{'method':<22}{'compile s':>10}{'ms/sample':>11}{'samples/s':>11}{'vs torch':>10}"
          f"{'peak':>12}{'load':>10}  (median of {args.rounds} rounds)")
    for n in names:
        model_name, method = (TORCH_ROWS[n], "reference (torch)") if n in TORCH_ROWS else ROWS[n][:2]
        if n in ROWS and len(ROWS[n]) > 4:
            method += f" [{n.split('-', 2)[-1]}]"
        if n in ROWS and ROWS[n][2] == "batch":
            method += " (bn=batch)"
        ms = med(n, "ms")
        rel = f"{ref[model_name] / ms:.2f}x" if model_name in ref and n not in TORCH_ROWS else "-"
        print(f"{model_name:<14}{method:<22}{med(n, 'compile_s'):>10.2f}{ms:>11.3f}{1e3 / ms:>11.0f}{rel:>10}"
              f"{mib(med(n, 'peak_bytes')):>12}{loads(results[n]):>10}")

    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": machine(), "rounds": args.rounds, "repeats": args.repeats, "results": results}, fh,
                      indent=1)
    if not any(n in ROWS and ROWS[n][0] == "ResNet56" for n in names):
        return
    r56, x_r56 = _inputs("ResNet56")
    fwd = forward_flops(r56, x_r56[:1])
    floor = 11 * fwd  # one forward + ten input-only VJPs (each ≈ one forward's FLOPs)
    for n in names:
        if n in ROWS and ROWS[n][0] == "ResNet56":
            ms = med(n, "ms")
            print(f"ResNet56 {n}: {floor / ms / 1e6:.0f} GFLOP/s = {100 * floor / ms / 1e6 / peak:.0f}% of the "
                  f"attainable rate (floor {floor / 1e9:.2f} GFLOP/sample = {floor / peak / 1e6:.1f} ms)")


if __name__ == "__main__":
    sys.exit(main())
