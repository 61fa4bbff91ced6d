"""Per-sample Jacobian-spectrum throughput (a benchmark, not a test).

    python benchmarks/bench_spectrum.py [--repeats 5] [--torch]

Times, after compilation (reported separately):
* MLP-7-Linear, batch 100: the exact kernel product ("linear"), the Gram of
  batched VJPs ("gram") and the explicit Jacobian ("jacobian");
* ResNet56 (CIFAR shape), batch 128 in chunks: "gram" and "jacobian".
For ResNet56 it also prints the floor of the computation (one forward pass plus
ten input-only VJPs, from XLA's own FLOP count of the forward) and the fraction
of the machine's attainable FLOP rate (a large float32 matmul) reached.
With ``--torch`` (PyTorch installed) it times the reference's method beside it,
interleaved: one backward pass per class through weights and input, then SVD.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
from flax import nnx

from isotpp import spectrum as sp
from isotpp.models import create_model


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
            t = _median_time(lambda f=f, kernels=kernels: f(kernels), repeats)
        else:
            chunks = [x[i : i + chunk] for i in range(0, n, chunk)]

            def run(method=method, chunks=chunks):
                return [sp._chunk_sv(graphdef, state, c, method=method, bn=bn) for c in chunks]

            compile_s = _first_call(run)
            t = _median_time(run, repeats)
        rows.append((name, method if bn == "eval" else f"{method} (bn=batch)", compile_s, t / n * 1e3))
    return rows


# ---------------------------------------------------------------- reference (PyTorch)


def torch_reference(repeats):
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
        model.train()  # the reference measures in train mode (batch statistics)
        x = torch.randn(shape)
        jsv(model, x)
        ts = []
        for _ in range(max(2, repeats // 2 if name == "ResNet56" else repeats)):
            t = time.perf_counter()
            jsv(model, x)
            ts.append(time.perf_counter() - t)
        out.append((name, "reference (torch)", float("nan"), statistics.median(ts) / shape[0] * 1e3))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--torch", action="store_true", help="also time the PyTorch reference method")
    ap.add_argument("--chunk", type=int, default=64, help="ResNet56 samples per jitted chunk")
    args = ap.parse_args()

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"jax {jax.__version__} on {jax.devices()[0].device_kind}")
    peak = matmul_gflops()
    print(f"attainable float32 rate (2048^3 matmul): {peak:.0f} GFLOP/s")

    rows = []
    mlp = create_model("mlp_7_linear", init="torch", seed=0)
    mlp.eval()
    x_mlp = jax.random.normal(jax.random.key(1), (100, 32, 32, 1))
    rows += bench_model("MLP-7-Linear", mlp, x_mlp, ("linear", "gram", "jacobian"), 100, args.repeats)

    r56 = create_model("resnet56", init="kaiming", seed=0)
    r56.eval()
    x_r56 = jax.random.normal(jax.random.key(1), (128, 32, 32, 3))
    rows += bench_model("ResNet56", r56, x_r56, ("gram", "jacobian"), args.chunk, max(2, args.repeats // 2))
    # the reference measures with batch statistics: the like-for-like comparison
    rows += bench_model("ResNet56", r56, x_r56, ("gram",), 128, max(2, args.repeats // 2), bn="batch")
    if args.torch:
        rows += torch_reference(args.repeats)

    print(f"\n{'model':<14}{'method':<20}{'compile s':>10}{'ms/sample':>11}{'samples/s':>11}")
    for name, method, comp, ms in rows:
        print(f"{name:<14}{method:<20}{comp:>10.2f}{ms:>11.3f}{1e3 / ms:>11.0f}")

    fwd = forward_flops(r56, x_r56[:1])
    floor = 11 * fwd  # one forward + ten input-only VJPs (each ≈ one forward's FLOPs)
    best = min(ms for name, m, _, ms in rows if name == "ResNet56" and "torch" not in m)
    print(f"\nResNet56 floor: {floor / 1e9:.2f} GFLOP/sample (XLA forward {fwd / 1e9:.3f} GFLOP x 11); "
          f"best {best:.1f} ms/sample = {floor / best / 1e6:.0f} GFLOP/s = "
          f"{100 * floor / best / 1e6 / peak:.0f}% of the attainable rate "
          f"(floor time {floor / peak / 1e6:.1f} ms)")


if __name__ == "__main__":
    main()
