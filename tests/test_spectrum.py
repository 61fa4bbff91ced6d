"""Jacobian spectra: the implementations agree with each other, with forward-mode
AD, with hand-computed cases and with deep-linear theory."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from isotpp.errors import UserError
from isotpp.spectra import jacobian as sp


class TinyConvNet(nnx.Module):
    """Conv → BN → ReLU → Dense: small, nonlinear, with BatchNorm."""

    def __init__(self, num_classes=5, rngs=None):
        rngs = rngs or nnx.Rngs(0)
        self.conv = nnx.Conv(2, 4, (3, 3), padding=1, rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.fc = nnx.Linear(6 * 6 * 4, num_classes, rngs=rngs)

    def __call__(self, x):
        h = jax.nn.relu(self.bn(self.conv(x)))
        return self.fc(h.reshape(h.shape[0], -1))


def _tiny_convnet(num_classes=5):
    m = TinyConvNet(num_classes)
    # Non-trivial running statistics so eval mode differs from batch mode.
    m.bn.mean[...] = jnp.linspace(-0.2, 0.3, 4)
    m.bn.var[...] = jnp.linspace(0.5, 2.0, 4)
    m.eval()
    return m


def _inputs(n=6, seed=1):
    return jax.random.normal(jax.random.key(seed), (n, 6, 6, 2))


def _jacfwd_singular_values(model, x):
    """Independent check: forward-mode per-sample Jacobian, SVD in float64 numpy."""
    model.eval()

    def single(xi):
        return model(xi[None])[0]

    jac = np.asarray(jax.vmap(jax.jacfwd(single))(x), dtype=np.float64)
    jac = jac.reshape(jac.shape[0], jac.shape[1], -1)
    return np.linalg.svd(jac, compute_uv=False)


@pytest.mark.parametrize("method", ["gram", "jacobian"])
def test_methods_match_forward_mode(method):
    model, x = _tiny_convnet(), _inputs()
    expected = _jacfwd_singular_values(model, x)
    got = sp.model_singular_values(model, x, method=method)
    assert got.shape == expected.shape == (6, 5)
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=1e-5 * expected.max())


def test_gram_and_jacobian_agree_and_chunking_is_invisible():
    model, x = _tiny_convnet(), _inputs(7)
    a = sp.model_singular_values(model, x, method="gram", chunk_size=3)
    b = sp.model_singular_values(model, x, method="jacobian")
    c = sp.model_singular_values(model, x, method="gram")
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-5 * b.max())
    np.testing.assert_allclose(a, c, rtol=1e-6, atol=1e-7 * c.max())


def test_many_classes_take_the_chunked_path():
    # 40 classes > the unroll limit: rows come from lax.map over class chunks.
    model = TinyConvNet(num_classes=40)
    model.eval()
    x = _inputs(3)
    expected = _jacfwd_singular_values(model, x)
    got = sp.model_singular_values(model, x, method="gram")
    assert got.shape == (3, 40)
    np.testing.assert_allclose(got, expected, rtol=5e-4, atol=1e-4 * expected.max())


def test_batch_statistics_mode_matches_the_reference_definition():
    """bn='batch': row k of sample i is d(sum_j logits_jk)/dx_i with batch stats."""
    model, x = _tiny_convnet(), _inputs(4)
    model.train()
    graphdef, state = nnx.split(model)

    def batch_fn(st, xb):
        m = nnx.merge(graphdef, st, copy=True)
        m.train()
        return m(xb).sum(0)

    jac = np.asarray(jax.jit(jax.jacrev(batch_fn, argnums=1))(state, x), dtype=np.float64)  # (C, B, H, W, C_in)
    jac = np.moveaxis(jac, 0, 1).reshape(4, 5, -1)
    expected = np.linalg.svd(jac, compute_uv=False)
    got = sp.model_singular_values(model, x, method="gram", bn="batch")
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=1e-5 * expected.max())
    # ... and it really differs from the eval-mode spectrum.
    ev = sp.model_singular_values(model, x, method="gram", bn="eval")
    assert np.abs(ev - got).max() > 1e-3 * got.max()
    with pytest.raises(UserError, match="gram"):
        sp.model_singular_values(model, x, method="jacobian", bn="batch")


def test_kernel_product_is_the_jacobian_of_a_linear_chain():
    rng = np.random.default_rng(0)
    ks = [rng.standard_normal((8, 6)), rng.standard_normal((6, 6)), rng.standard_normal((6, 3))]
    bs = [rng.standard_normal(6), rng.standard_normal(6), rng.standard_normal(3)]

    def f(x):
        for k, b in zip(ks, bs):
            x = x @ k + b
        return x

    jac = np.asarray(jax.jacfwd(f)(jnp.ones(8, dtype=jnp.float32)))
    expected = np.linalg.svd(jac, compute_uv=False)
    got = np.asarray(sp.kernel_product_singular_values([jnp.asarray(k, jnp.float32) for k in ks]))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # by hand: the product in float64
    np.testing.assert_allclose(got, np.linalg.svd((ks[0] @ ks[1] @ ks[2]).T, compute_uv=False), rtol=1e-5)


def test_summary_by_hand():
    s = sp.summarize(np.array([[2.0, 1.0], [4.0, 1.0]]))
    assert s.mean == 2.0
    assert s.std == pytest.approx(np.sqrt(1.5))
    assert (s.max, s.min) == (4.0, 1.0)
    assert s.cond_mean == pytest.approx(3.0)  # (2/1 + 4/1) / 2
    assert s.diff_mean == pytest.approx(2.5)  # (1 + 0 + 9 + 0) / 4
    assert s.n_samples == 2
    assert set(s.as_dict()) == {"mean", "std", "max", "min", "cond_mean", "diff_mean", "n_samples"}


def test_bad_arguments():
    model, x = _tiny_convnet(), _inputs(2)
    with pytest.raises(UserError, match="unknown spectrum method"):
        sp.model_singular_values(model, x, method="svd")
    with pytest.raises(UserError, match="linear"):
        sp.model_singular_values(model, x, method="linear")
    with pytest.raises(UserError, match="needs input samples"):
        sp.model_singular_values(model, None, method="gram")
    with pytest.raises(UserError, match="shape"):
        sp.summarize(np.zeros((0, 3)))
