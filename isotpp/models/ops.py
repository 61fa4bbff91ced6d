"""Convolutions and BatchNorm expressed the way XLA's CPU backend runs fastest (measured: benchmarks/bench_conv_step.py).

Three things cost a ResNet56 training step on CPU most (jax 0.10):

* XLA fuses each conv's elementwise producer chain (BatchNorm, residual add,
  ReLU) into the transposes that feed the weight-gradient convolutions, so
  the chain is recomputed there in slow, strided loops. ``lax.optimization_barrier``
  does not stop it on CPU, but a conditional does: :func:`materialize` routes
  a value through a ``lax.cond`` whose predicate XLA cannot fold, so the value
  is written once and read by the conv and its gradient.
* The YNNPACK "individual convolution" fusions run weight-gradient
  convolutions (a 32×32 "kernel" of output gradients) 2–5× slower than XLA's
  Eigen path: :func:`isotpp.configure_cpu` sends only reductions to YNNPACK
  (they run the BatchNorm chains faster still).
* XLA's CPU backend sums over the batch and positions into a few channels
  (BatchNorm's statistics, and in the backward pass the sums of the output
  gradient) slowly: one narrow vector of C channels down 100,000+ rows.
  :class:`BatchNorm` sums the same values as rows of ``block`` positions × C
  (≈ 1,024 side by side), then the block: a BatchNorm + ReLU forward and
  backward at 128×32×32×16 went from 10.1 to 6.1 ms
  (benchmarks/bench_conv_formulations.py), the ResNet56 step from 1.224 to
  1.121 s (``bench_conv_step.py --paired "isotpp,isotpp nnx-bn"``, one process).

The first two leave the values bit for bit the same; :class:`BatchNorm`
changes them at float32 rounding (tests/test_ops.py). On other backends
:func:`conv_general_dilated` is plain ``lax.conv_general_dilated``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx


def materialize(x: jax.Array) -> jax.Array:
    """``x``, written to memory once: a fusion boundary XLA's CPU backend keeps.

    The predicate (x₀ == x₀) is true unless x₀ is NaN, in which case the
    result is all NaN, so a diverged value is never hidden.
    """
    flat0 = x.reshape(-1)[0]
    not_nan = flat0 == flat0  # noqa: PLR0124 - the deliberate NaN test described above
    return jax.lax.cond(not_nan, lambda v: v, lambda v: jnp.full_like(v, jnp.nan), x)


def _on_cpu() -> bool:
    return jax.default_backend() == "cpu"


def conv_general_dilated(lhs, rhs, *args, **kwargs):
    """``lax.conv_general_dilated``, with its input materialised on CPU (see the module docstring)."""
    if _on_cpu() and lhs.size > 0:
        lhs = materialize(lhs)
    return jax.lax.conv_general_dilated(lhs, rhs, *args, **kwargs)


def reduction_block(positions: int, features: int, width: int = 1024) -> int:
    """How many positions :class:`BatchNorm` sums side by side: the largest power of two
    ≤ ``width // features`` that divides ``positions`` (1 when none does: the plain sum)."""
    block = 1
    while block * 2 * features <= width and positions % (block * 2) == 0:
        block *= 2
    return block


class BatchNorm(nnx.BatchNorm):
    """``nnx.BatchNorm`` (same variables, options and running-statistics update) whose
    batch statistics, and the gradient sums autodiff derives from them, are reduced in
    blocks: see the module docstring.

    With batch statistics, features on the last axis, no ``mask`` and no ``axis_name``,
    the input is viewed as rows of ``block`` positions × C features (the block divides
    each sample's positions, so a row never spans two samples and a batch sharded over
    devices stays sharded along the rows); the sums run down the rows, then over the
    block. The output is ``x·a + c`` with ``a = scale/√(var + ε)`` and
    ``c = bias − mean·a``, which gives autodiff two full-size sums in the backward pass
    instead of three. Every other case (running statistics, masks, ``axis_name``, other
    feature axes) is ``nnx.BatchNorm`` itself.
    """

    def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
        running = self.use_running_average if use_running_average is None else use_running_average
        axes = self.axis if isinstance(self.axis, tuple | list) else (self.axis,)
        if (running is None or running or mask is not None or self.axis_name is not None
                or len(axes) != 1 or axes[0] % x.ndim != x.ndim - 1 or x.ndim < 2 or x.size == 0
                or jnp.iscomplexobj(x)):
            return super().__call__(x, use_running_average, mask=mask)
        feats = x.shape[-1]
        positions = math.prod(x.shape[1:-1])
        count = x.size // feats
        block = reduction_block(positions, feats)
        scale = self.scale[...] if self.scale is not None else None
        bias = self.bias[...] if self.bias is not None else None
        x, _mean, _var, scale, bias = self.promote_dtype(
            (x, self.mean[...], self.var[...], scale, bias), dtype=self.dtype)
        stat_dtype = jnp.promote_types(self.dtype if self.dtype is not None else x.dtype, jnp.float32)
        rows = x.astype(stat_dtype).reshape(count // block, block * feats)

        def mean_of(v):
            return v.sum(0).reshape(block, feats).sum(0) / count

        mean = mean_of(rows)
        if self.use_fast_variance:
            var = jnp.maximum(0.0, mean_of(rows * rows) - mean * mean)
        else:
            var = mean_of(jnp.square(rows - jnp.tile(mean, block)))
        stop = jax.lax.stop_gradient if (self.mean._can_update or self.var._can_update) else (lambda v: v)
        self.mean[...] = stop(self.momentum * self.mean[...] + (1 - self.momentum) * mean)
        self.var[...] = stop(self.momentum * self.var[...] + (1 - self.momentum) * var)
        a = jax.lax.rsqrt(var + self.epsilon)
        if scale is not None:
            a = a * scale
        c = -mean * a if bias is None else bias - mean * a
        y = rows * jnp.tile(a, block) + jnp.tile(c, block)
        return y.reshape(x.shape).astype(x.dtype)  # x, scale and bias share the promoted dtype
