"""Convolutions expressed the way XLA's CPU backend runs fastest (measured: benchmarks/bench_conv_step.py).

Two things cost a ResNet56 training step on CPU most (jax 0.10):

* XLA fuses each conv's elementwise producer chain (BatchNorm, residual add,
  ReLU) into the transposes that feed the weight-gradient convolutions, so
  the chain is recomputed there in slow, strided loops. ``lax.optimization_barrier``
  does not stop it on CPU, but a conditional does: :func:`materialize` routes
  a value through a ``lax.cond`` whose predicate XLA cannot fold, so the value
  is written once and read by the conv and its gradient.
* The YNNPACK "individual convolution" fusions run weight-gradient
  convolutions (a 32×32 "kernel" of output gradients) 2–5× slower than XLA's
  Eigen path: :func:`isotpp.configure_cpu` turns them off.

Both leave the values bit for bit the same. On other backends
:func:`conv_general_dilated` is plain ``lax.conv_general_dilated``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


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
