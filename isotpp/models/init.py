"""Weight initialisation schemes for conv / dense layers, applied in place.

A kernel is viewed as the matrix ``W`` of shape (fan_in, fan_out): a dense
kernel as it is, a conv kernel (kh, kw, cin, cout) reshaped to
(kh * kw * cin, cout). ``fan_in = kh * kw * cin`` as in PyTorch.

==================  ======================================================
``default``         leave the layers as Flax made them (LeCun normal kernel,
                    zero bias); nothing is touched
``torch``           PyTorch's default: kernel and bias U(-1/sqrt(fan_in),
                    +1/sqrt(fan_in)) (= kaiming_uniform_(a=sqrt(5)))
``kaiming``         kernel N(0, 2 / fan_in), zero bias (torch
                    kaiming_normal_, mode fan_in, ReLU gain)
``gaussian``        kernel N(0, sigma_w^2 / fan_in), zero bias
``orthogonal``      sigma_w x a (semi-)orthogonal W: orthonormal columns if
                    fan_in >= fan_out, else orthonormal rows; zero bias
``delta-orthogonal`` convs: zero kernel except the centre tap
                    ``[kh // 2, kw // 2]`` = sigma_w x orthogonal (cin, cout)
                    (Xiao et al. 2018); dense layers as ``orthogonal``
==================  ======================================================

``sigma_w`` is used by ``gaussian``, ``orthogonal`` and ``delta-orthogonal``
only; :data:`ACT_GAIN` gives the usual choice per activation. Every scheme
other than ``default`` also resets BatchNorm layers (scale 1, bias 0, running
mean 0, running variance 1).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from isotpp.errors import UserError
from isotpp.models.layers import iter_modules

ACT_GAIN: dict[str, float] = {"linear": 1.0, "tanh": 1.0, "hard_tanh": 1.0, "relu": math.sqrt(2.0)}

SCHEMES = ("default", "torch", "kaiming", "gaussian", "orthogonal", "delta-orthogonal")
INIT_SCHEMES = SCHEMES


def _orthogonalise(a: jax.Array, rows: int, cols: int) -> jax.Array:
    """Haar-random (rows, cols) (semi-)orthogonal matrix from a Gaussian
    (max, min) matrix ``a``: orthonormal columns if rows >= cols, else rows."""
    q, r = jnp.linalg.qr(a)  # q: (max, min), orthonormal columns
    # Sign fix so the distribution is Haar (QR alone is biased by R's signs).
    q = q * jnp.where(jnp.diagonal(r) < 0, -1.0, 1.0)
    return q if rows >= cols else q.T


def orthogonal_matrix(key, rows: int, cols: int, dtype=jnp.float32) -> jax.Array:
    """A Haar-random (rows, cols) matrix with orthonormal columns (rows >= cols)
    or orthonormal rows (rows < cols)."""
    a = jax.random.normal(key, (max(rows, cols), min(rows, cols)), jnp.float32)
    return _orthogonalise(a, rows, cols).astype(dtype)


def _noise_count(scheme: str, shape: tuple[int, ...], is_conv: bool, bshape) -> int:
    n = shape[2] * shape[3] if scheme == "delta-orthogonal" and is_conv else math.prod(shape)
    if scheme == "torch" and bshape is not None:
        n += math.prod(bshape)
    return n


def _new_kernel(noise, scheme: str, shape: tuple[int, ...], is_conv: bool, sigma_w):
    """A kernel from flat noise (standard normal; uniform in [-1, 1) for torch)."""
    fan_in, fan_out = math.prod(shape[:-1]), shape[-1]
    if scheme == "torch":
        return noise.reshape(shape) / math.sqrt(fan_in)
    if scheme == "kaiming":
        return noise.reshape(shape) * math.sqrt(2.0 / fan_in)
    if scheme == "gaussian":
        return noise.reshape(shape) * (sigma_w / math.sqrt(fan_in))
    if scheme == "delta-orthogonal" and is_conv:
        kh, kw, cin, cout = shape
        a = noise.reshape(max(cin, cout), min(cin, cout))
        return jnp.zeros(shape, jnp.float32).at[kh // 2, kw // 2].set(
            sigma_w * _orthogonalise(a, cin, cout))
    # orthogonal, and delta-orthogonal for dense layers
    a = noise.reshape(max(fan_in, fan_out), min(fan_in, fan_out))
    return (sigma_w * _orthogonalise(a, fan_in, fan_out)).reshape(shape)


@functools.partial(jax.jit, static_argnames=("scheme", "specs"))
def _draw_all(key, sigma_w, *, scheme: str, specs: tuple):
    """New (kernel, bias) for every layer in one compiled program, from one
    flat draw of noise (per-layer draws compile one random-bits kernel per
    distinct shape, which dominates the cost on CPU)."""
    counts = [_noise_count(scheme, shape, conv, bshape) for shape, conv, _, bshape, _ in specs]
    total = max(sum(counts), 1)
    if scheme == "torch":
        flat = jax.random.uniform(key, (total,), jnp.float32, -1.0, 1.0)
    else:
        flat = jax.random.normal(key, (total,), jnp.float32)
    out, offset = [], 0
    for n, (shape, is_conv, kdtype, bshape, bdtype) in zip(counts, specs):
        noise, offset = flat[offset:offset + n], offset + n
        kernel_noise = noise[:math.prod(shape)] if scheme == "torch" else noise
        kernel = _new_kernel(kernel_noise, scheme, shape, is_conv, sigma_w).astype(kdtype)
        bias = None
        if bshape is not None:
            if scheme == "torch":  # torch's Conv/Linear bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
                bias = noise[math.prod(shape):].reshape(bshape) / math.sqrt(math.prod(shape[:-1]))
            else:
                bias = jnp.zeros(bshape)
            bias = bias.astype(bdtype)
        out.append((kernel, bias))
    return out


def apply_init(model: nnx.Module, scheme: str = "default", *, sigma_w: float = 1.0,
               key: jax.Array | int = 0) -> nnx.Module:
    """Re-initialise every conv / dense kernel (and bias) of ``model`` in place.

    ``key`` is a JAX PRNG key or an int seed. All layers are drawn from one
    flat stream of noise, in forward order, so the values of a layer depend on
    the key and the shapes of the layers before it. Returns the model.
    """
    if scheme not in SCHEMES:
        raise UserError(f"unknown init scheme {scheme!r}: use one of {', '.join(SCHEMES)}")
    if scheme == "default":
        return model
    if isinstance(key, int):
        key = jax.random.key(key)
    layers = []
    for _, m in iter_modules(model):
        if isinstance(m, nnx.BatchNorm):
            for attr, fill in (("scale", 1.0), ("bias", 0.0), ("mean", 0.0), ("var", 1.0)):
                v = getattr(m, attr, None)
                if v is not None:
                    v.set_value(jnp.full(v.shape, fill, v.dtype))
        elif isinstance(m, nnx.Conv | nnx.Linear):
            layers.append(m)
        elif hasattr(m, "init_constants"):  # fixed arrays of the architecture (option-A channel maps)
            m.init_constants()
    specs = tuple(
        (tuple(m.kernel.shape), isinstance(m, nnx.Conv), jnp.dtype(m.kernel.dtype),
         None if m.bias is None else tuple(m.bias.shape),
         None if m.bias is None else jnp.dtype(m.bias.dtype))
        for m in layers
    )
    for m, (kernel, bias) in zip(layers, _draw_all(key, sigma_w, scheme=scheme, specs=specs)):
        m.kernel.set_value(kernel)  # a full replacement: also fills abstract models
        if bias is not None:
            m.bias.set_value(bias)
    return model
