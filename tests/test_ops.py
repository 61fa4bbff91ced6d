"""isotpp.models.ops.BatchNorm: nnx.BatchNorm's values, updates and gradients, with its sums in blocks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from isotpp.models import create_model
from isotpp.models.ops import BatchNorm, reduction_block


def _pair(features, **kw):
    a = nnx.BatchNorm(features, momentum=0.9, rngs=nnx.Rngs(0), **kw)
    b = BatchNorm(features, momentum=0.9, rngs=nnx.Rngs(0), **kw)
    for m in (a, b):
        if m.scale is not None:
            m.scale[...] = jnp.linspace(0.5, 2.0, features)
            m.bias[...] = jnp.linspace(-1.0, 1.0, features)
    return a, b


def _train_fn(features):
    """``x ↦ BatchNorm(x)`` with batch statistics as a pure function (the module made inside each trace,
    so that its running-statistics update stays at that trace's level)."""
    return lambda x: BatchNorm(features, momentum=0.9, rngs=nnx.Rngs(0))(x, use_running_average=False)


def _loss(m, x):
    return jnp.sum(jnp.sin(m(x, use_running_average=False)) * jnp.arange(x.shape[-1]))


@pytest.mark.parametrize("shape, kw", [
    ((8, 6, 6, 16), {}),
    ((4, 5, 5, 3), {}),  # 25 positions: no power-of-two block divides them, the plain sums
    ((6, 10), {}),  # a dense layer's BatchNorm: no positions
    ((8, 4, 4, 16), {"use_fast_variance": False}),
    ((8, 4, 4, 16), {"use_scale": False, "use_bias": False}),
])
def test_batchnorm_equals_flax_forward_statistics_and_gradients(shape, kw):
    a, b = _pair(shape[-1], **kw)
    x = jax.random.normal(jax.random.key(1), shape) * 3 + 1
    ga, gxa = nnx.grad(_loss, argnums=(0, 1))(a, x)
    gb, gxb = nnx.grad(_loss, argnums=(0, 1))(b, x)
    np.testing.assert_allclose(b(x, use_running_average=False), a(x, use_running_average=False), atol=3e-6)
    np.testing.assert_allclose(b.mean[...], a.mean[...], rtol=1e-6, atol=1e-7)  # the running statistics updated alike
    np.testing.assert_allclose(b.var[...], a.var[...], rtol=1e-6)
    assert not np.allclose(b.mean[...], 0)  # (they did move)
    np.testing.assert_allclose(gxb, gxa, atol=1e-5 * float(jnp.max(jnp.abs(gxa))))
    for u, v in zip(jax.tree.leaves(nnx.state(gb, nnx.Param)), jax.tree.leaves(nnx.state(ga, nnx.Param))):
        np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-4)
    # running statistics: nnx.BatchNorm's own path, bit for bit
    b.mean[...], b.var[...] = a.mean[...], a.var[...]
    np.testing.assert_array_equal(b(x, use_running_average=True), a(x, use_running_average=True))


def test_batchnorm_keeps_dtype_and_works_under_jit_vmap_and_jvp():
    a, b = _pair(8, dtype=jnp.bfloat16)
    x = jax.random.normal(jax.random.key(2), (8, 4, 4, 8))
    yb, ya = b(x, use_running_average=False), a(x, use_running_average=False)
    assert yb.dtype == ya.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.float32(yb), np.float32(ya), atol=2e-2)
    f = nnx.jit(lambda m, x: m(x, use_running_average=False))
    np.testing.assert_allclose(f(b, x), yb, atol=2e-2)
    # forward mode through the batch statistics (no custom rule stands in the way)
    g = _train_fn(8)
    t = jax.random.normal(jax.random.key(3), x.shape)
    jvp = jax.jvp(g, (x,), (t,))[1]
    _, vjp = jax.vjp(g, x)
    assert abs(float(jnp.vdot(jvp, t)) - float(jnp.vdot(vjp(t)[0], t))) < 1e-3 * float(jnp.vdot(t, t))


def test_reduction_block_divides_the_positions_and_fills_a_row_of_1024():
    assert reduction_block(1024, 16) == 64
    assert reduction_block(256, 32) == 32
    assert reduction_block(64, 64) == 16
    assert reduction_block(49, 64) == 1  # 7×7: no power of two divides it
    assert reduction_block(12, 16) == 4
    assert reduction_block(1, 16) == 1  # a row never spans two samples
    assert reduction_block(1024, 2048) == 1


def test_batchnorm_gradient_matches_the_float64_formula():
    """The input gradient over 64×32×32×16 (65,536 positions summed in blocks of 64) against the
    textbook BatchNorm backward in float64: float32 rounding only (nnx.BatchNorm: 1.0e-7, this: 1.1e-7)."""
    shape = (64, 32, 32, 16)
    k = jax.random.split(jax.random.key(0), 2)
    x = jax.random.normal(k[0], shape) * 2 + 0.5
    dy = jax.random.normal(k[1], shape)
    g = _train_fn(16)
    gx = jax.jit(lambda x, dy: jax.vjp(g, x)[1](dy)[0])(x, dy)
    x64, dy64 = np.float64(x).reshape(-1, 16), np.float64(dy).reshape(-1, 16)
    inv = 1 / np.sqrt(x64.var(0) + 1e-5)
    xhat = (x64 - x64.mean(0)) * inv
    want = inv * (dy64 - dy64.mean(0) - xhat * (dy64 * xhat).mean(0))
    err = np.max(np.abs(np.float64(gx).reshape(-1, 16) - want)) / np.max(np.abs(want))
    assert err < 1e-6, err


def test_zoo_models_use_it_and_train_mode_matches_flax():
    model = create_model("resnet8", init="kaiming", seed=0)
    bns = [m for _, m in nnx.iter_graph(model) if isinstance(m, nnx.BatchNorm)]
    assert bns and all(type(m) is BatchNorm for m in bns)
    x = jax.random.normal(jax.random.key(4), (4, 32, 32, 3))
    y = model(x)  # train mode: every BatchNorm on the block sums
    flax_model = create_model("resnet8", init="kaiming", seed=0)
    for _, m in list(nnx.iter_graph(flax_model)):
        if isinstance(m, BatchNorm):
            m.__class__ = nnx.BatchNorm  # the same variables, Flax's own arithmetic
    np.testing.assert_allclose(y, flax_model(x), rtol=1e-4, atol=1e-4)
