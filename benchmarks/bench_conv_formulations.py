"""Ways to write ResNet56's convolution weight gradient and BatchNorm on XLA:CPU, timed side by side (a benchmark).

    python benchmarks/bench_conv_formulations.py [--repeats 11] [--batch 128]

For the three 3×3 convolution shapes of ResNet56 at batch 128 (32×32×16,
16×16×32, 8×8×64), in one process (``isotpp.configure_cpu``'s flags), medians
of ``--repeats``:

* the weight gradient as XLA writes it (the VJP of ``lax.conv_general_dilated``
  in the kernel) against hand-written forms: nine shifted-tap contractions, an
  im2col patch matrix contracted with the output gradient, and that
  contraction split over 8 batch blocks; each checked against XLA's to 1e-5;
* XLA's dot on the long, narrow contractions these forms need, in GFLOP/s,
  against a square 2048² matmul (the attainable rate);
* BatchNorm (batch statistics) + ReLU, forward and backward: Flax's formula
  (``x.mean`` over batch and positions) against ``isotpp.models.BatchNorm``
  (sums in blocks of positions), alternated over 5 rounds, medians.

Result on the quiet 2-vCPU machine (2026-12-01) in docs/speed.md's profile
section: every hand-written weight gradient is slower than XLA's own, the
block-summed BatchNorm 1.5–3× faster than Flax's formula.
"""

from __future__ import annotations

import argparse
import statistics
import time

import isotpp

isotpp.configure_cpu()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402
from jax import lax  # noqa: E402

from isotpp.models.ops import BatchNorm  # noqa: E402

DN = ("NHWC", "HWIO", "NHWC")


def _ms(fn, *args, repeats):
    jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3


def _conv(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN)


def dw_xla(x, w, dy):
    return jax.vjp(lambda w: _conv(x, w), w)[1](dy)[0]


def _taps(x):
    _, h, wd, _ = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return [xp[:, i:i + h, j:j + wd, :] for i in range(3) for j in range(3)]


def dw_shifted(x, w, dy):
    return jnp.stack([jnp.einsum("nhwc,nhwd->cd", t, dy) for t in _taps(x)]).reshape(w.shape)


def dw_im2col(x, w, dy):
    p = jnp.concatenate(_taps(x), axis=-1).reshape(-1, 9 * x.shape[-1])
    return (p.T @ dy.reshape(-1, dy.shape[-1])).reshape(w.shape)


def dw_im2col_split8(x, w, dy):
    p = jnp.concatenate(_taps(x), axis=-1).reshape(8, -1, 9 * x.shape[-1])
    return jnp.einsum("bkc,bkd->cd", p, dy.reshape(8, -1, dy.shape[-1])).reshape(w.shape)


def bn_flax_formula(x, scale, bias):
    mean = x.mean((0, 1, 2))
    var = jnp.maximum(0.0, (x * x).mean((0, 1, 2)) - mean * mean)
    return jax.nn.relu((x - mean) * (scale * lax.rsqrt(var + 1e-5)) + bias)


def bn_isotpp(x, scale, bias):
    bn = BatchNorm(x.shape[-1], momentum=0.9, epsilon=1e-5, rngs=nnx.Rngs(0))
    bn.scale[...], bn.bias[...] = scale, bias
    return jax.nn.relu(bn(x, use_running_average=False))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--batch", type=int, default=128)
    args = ap.parse_args(argv)
    n, r = args.batch, args.repeats
    print("weight gradient, ms (XLA's own first; hand-written forms after)")
    forms = {"xla": dw_xla, "shifted taps": dw_shifted, "im2col": dw_im2col, "im2col split 8": dw_im2col_split8}
    print(f"{'shape':<14}" + "".join(f"{k:>16}" for k in forms))
    for hw, c in ((32, 16), (16, 32), (8, 64)):
        k = jax.random.split(jax.random.key(0), 3)
        x, dy = jax.random.normal(k[0], (n, hw, hw, c)), jax.random.normal(k[1], (n, hw, hw, c))
        w = jax.random.normal(k[2], (3, 3, c, c))
        ref = jax.jit(dw_xla)(x, w, dy)
        row = []
        for f in forms.values():
            jf = jax.jit(f)
            err = float(jnp.max(jnp.abs(jf(x, w, dy) - ref)) / jnp.max(jnp.abs(ref)))
            if err > 1e-5:
                raise SystemExit(f"{f.__name__} differs from XLA's weight gradient by {err:.1e}")
            row.append(_ms(jf, x, w, dy, repeats=r))
        print(f"{f'{hw}x{hw}x{c}':<14}" + "".join(f"{t:>16.2f}" for t in row))
    print("\nXLA's dot, GFLOP/s (A is K x M, contracted over K)")
    sq = jax.random.normal(jax.random.key(0), (2048, 2048))
    print(f"  square 2048 x 2048 x 2048: {2 * 2048 ** 3 / _ms(jax.jit(lambda a: a @ a), sq, repeats=r) / 1e6:.0f}")
    for kk, m, nn in ((n * 1024, 144, 16), (n * 256, 288, 32), (n * 64, 576, 64)):
        a, b = jax.random.normal(jax.random.key(1), (kk, m)), jax.random.normal(jax.random.key(2), (kk, nn))
        gf = 2 * kk * m * nn / _ms(jax.jit(lambda a, b: a.T @ b), a, b, repeats=r) / 1e6
        print(f"  K={kk:,} M={m} N={nn} (im2col of {'32x32x16' if m == 144 else '16x16x32' if m == 288 else '8x8x64'}): {gf:.0f}")
    print("\nBatchNorm (batch statistics) + ReLU, forward and backward, ms")
    print(f"{'shape':<14}{'Flax formula':>16}{'isotpp BatchNorm':>18}")
    for hw, c in ((32, 16), (16, 32), (8, 64)):
        k = jax.random.split(jax.random.key(0), 4)
        x, dy = jax.random.normal(k[0], (n, hw, hw, c)), jax.random.normal(k[1], (n, hw, hw, c))
        scale, bias = jax.random.normal(k[2], (c,)), jax.random.normal(k[3], (c,))
        fns = [jax.jit(lambda x, s, b, g, f=f: jax.vjp(f, x, s, b)[1](g)) for f in (bn_flax_formula, bn_isotpp)]
        rounds = [[], []]
        for _ in range(5):  # the two alternated: single timings on this machine drift by ±30 %
            for k, both in enumerate(fns):
                rounds[k].append(_ms(both, x, scale, bias, dy, repeats=r))
        times = [statistics.median(v) for v in rounds]
        print(f"{f'{hw}x{hw}x{c}':<14}{times[0]:>16.2f}{times[1]:>18.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
