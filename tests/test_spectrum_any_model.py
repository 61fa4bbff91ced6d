"""Spectra of any model: the exact path chosen from the program (not a class attribute), in float64,
and gram's float32 resolution check."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from user_models import MLP, ConvBN

from isotpp.models import create_model
from isotpp.spectra.jacobian import is_input_linear, model_singular_values


class DeepLinear(nnx.Module):
    """A user's 7-layer linear Gaussian net whose last layer spreads the spectrum down to ~1e-8."""

    def __init__(self, width=32, classes=10, seed=0):
        rng = np.random.default_rng(seed)
        dims = [width] * 7 + [classes]
        self.layers = nnx.List([nnx.Linear(a, b, rngs=nnx.Rngs(seed)) for a, b in itertools.pairwise(dims)])
        for i, layer in enumerate(self.layers):
            k = rng.standard_normal(layer.kernel.shape) / np.sqrt(layer.kernel.shape[0])
            if i == 6:
                k = k * np.logspace(0, -8, classes)[None, :]
            layer.kernel = nnx.Param(jnp.asarray(k, jnp.float32))

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class LinearConv(ConvBN):
    """ConvBN without its activations and pooling: conv, BN, conv, BN, flatten, dense — affine in x."""

    def __call__(self, x):
        x = self.b2(self.c2(self.b1(self.c1(x))))
        return self.fc(x[:, ::2, ::2].reshape(x.shape[0], -1))


def _exact(model):
    ks = [np.asarray(layer.kernel[...], np.float64) for layer in model.layers]
    prod = ks[0]
    for k in ks[1:]:
        prod = prod @ k
    return np.linalg.svd(prod, compute_uv=False)


def test_auto_is_exact_for_a_users_linear_net_down_to_1e_8():
    model = DeepLinear()
    x = np.random.default_rng(1).standard_normal((3, 32)).astype(np.float32)
    assert is_input_linear(model, x)
    sv = model_singular_values(model, x, method="auto")
    exact = _exact(model)
    assert sv.shape == (3, 10) and exact.min() < 1e-7
    np.testing.assert_allclose(sv[0], exact, rtol=1e-9)
    np.testing.assert_array_equal(sv[0], sv[2])  # input-free
    # gram in float32 cannot resolve them: it says so, recomputes with the explicit Jacobian, and asks for float64
    with pytest.warns(RuntimeWarning, match="recomputed with the explicit Jacobian"), \
            pytest.warns(RuntimeWarning, match="to_float64"):
        g = model_singular_values(model, x, method="gram")
    np.testing.assert_allclose(g[:, :4], exact[None, :4].repeat(3, 0), rtol=1e-4)


def test_linearity_is_read_from_the_program():
    assert is_input_linear(create_model("mlp_7_linear"))
    assert not is_input_linear(create_model("mlp_7_relu"))
    assert not is_input_linear(MLP(), np.zeros((1, 6), np.float32))  # tanh
    model = LinearConv()
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
    assert is_input_linear(model, x)  # conv, eval-mode BN, strided slice, flatten, dense
    lin = model_singular_values(model, x, method="auto")
    jac = model_singular_values(model, x, method="jacobian")
    np.testing.assert_allclose(jac, lin, rtol=1e-4, atol=1e-5 * lin.max())
