"""Per-sample singular values of the input-output Jacobian (JSV).

For one input x the Jacobian J(x) = d logits / d x is a (num_classes, input_dim)
matrix (the input flattened); its singular values are that sample's JSV. Three
implementations, which the tests require to agree:

``"gram"`` (default, fastest)
    One vector-Jacobian product per class of the *batch-summed* logits gives row
    k of every sample's Jacobian at once (samples do not interact in eval mode),
    the rows form J·Jᵀ (num_classes × num_classes) and ``eigvalsh`` gives
    λ = s². This is the reference's own recipe (one backward per class) without
    the weight gradients. It squares the condition number: in float32 singular
    values below ≈ 3e-4·s_max lose their relative accuracy. Use float64 or
    ``"jacobian"`` for badly conditioned (pruned) networks.
``"jacobian"``
    The explicit per-sample Jacobian (``jax.jacrev`` vmapped over samples) and
    its SVD: accurate to float precision relative to s_max, slower.
``"linear"``
    For networks that are linear in their input (e.g. an MLP with identity
    activations) J is the same for every x: the singular values of the kernel
    product W_L⋯W_1, exact and input-free (:func:`kernel_product_singular_values`).

BatchNorm: ``bn="eval"`` (running statistics; each sample's Jacobian is its
own) or ``bn="batch"`` (batch statistics of each chunk, as the PyTorch reference
measures in train mode; then row k is d(Σ_j logits_jk)/dx_i, which includes
the coupling through the batch statistics). Only ``"gram"`` supports ``"batch"``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from isotpp.errors import UserError

Method = Literal["gram", "jacobian", "linear", "auto"]
BNMode = Literal["eval", "batch"]
METHODS = ("gram", "jacobian", "linear", "auto")

# Classes beyond this many are processed in chunks inside a lax.map, so that
# ImageNet's 1000 classes do not unroll into 1000 VJPs in one program.
_UNROLL_CLASSES = 32
# Default bound on the bytes of Jacobian rows held at once per chunk.
_ROW_BYTES = 256 * 2**20
# Chunks of ~64 samples measured fastest on CPU (ResNet56: 22 ms/sample at 32-64,
# 25 ms at 128: the ten backward passes of a larger chunk spill out of cache).
_MAX_CHUNK = 64


# --------------------------------------------------------------------------
# Pure functions of an apply function ``f: (B, ...) -> (B, C)``.
# --------------------------------------------------------------------------


def jacobian_rows(f: Callable[[jax.Array], jax.Array], x: jax.Array) -> jax.Array:
    """Rows of every sample's Jacobian, shape (B, C, D), from C batched VJPs.

    Row k of sample i is d(Σ_j f(x)_jk)/dx_i: sample i's own Jacobian row when
    samples are independent (eval-mode BatchNorm).
    """
    logits, vjp = jax.vjp(f, x)
    b, c = logits.shape
    eye = jnp.eye(c, dtype=logits.dtype)

    def rows_for(classes: jax.Array) -> jax.Array:  # (k,) -> (B, k, D)
        def one(k):
            (g,) = vjp(jnp.broadcast_to(eye[k], (b, c)))
            return g.reshape(b, -1)

        return jnp.stack([one(k) for k in classes], axis=1)

    if c <= _UNROLL_CLASSES:
        # Unrolled: XLA schedules C independent backward passes in one program,
        # measurably faster on CPU than vmapping them into one wide batch.
        return rows_for(range(c))
    chunk = _UNROLL_CLASSES
    n_chunks = math.ceil(c / chunk)

    def chunk_rows(i):
        ks = jnp.minimum(i * chunk + jnp.arange(chunk), c - 1)
        g = jax.vmap(lambda k: vjp(jnp.broadcast_to(eye[k], (b, c)))[0])(ks)
        return g.reshape(chunk, b, -1)

    rows = jax.lax.map(chunk_rows, jnp.arange(n_chunks))  # (n, chunk, B, D)
    rows = rows.reshape(n_chunks * chunk, b, -1)[:c]
    return jnp.swapaxes(rows, 0, 1)


def gram_singular_values(f: Callable[[jax.Array], jax.Array], x: jax.Array) -> jax.Array:
    """Per-sample JSV via J·Jᵀ and ``eigvalsh``; shape (B, min(C, D)), descending."""
    rows = jacobian_rows(f, x)
    gram = jnp.einsum("bkd,bld->bkl", rows, rows, precision=jax.lax.Precision.HIGHEST)
    lam = jnp.linalg.eigvalsh(gram)[:, ::-1]
    k = min(rows.shape[1], rows.shape[2])
    return jnp.sqrt(jnp.clip(lam[:, :k], 0.0, None))


def explicit_singular_values(f: Callable[[jax.Array], jax.Array], x: jax.Array) -> jax.Array:
    """Per-sample JSV from the explicit Jacobian (jacrev per sample) and its SVD."""

    def single(xi):
        return f(xi[None])[0]

    jac = jax.vmap(jax.jacrev(single))(x)  # (B, C, *input_shape)
    jac = jac.reshape(jac.shape[0], jac.shape[1], -1)
    return jnp.linalg.svd(jac, compute_uv=False)


def kernel_product_singular_values(kernels: Sequence[jax.Array]) -> jax.Array:
    """Singular values of the product of dense kernels (Flax layout: (in, out)).

    The Jacobian of x ↦ x K_1 K_2 ⋯ K_L (plus biases) is (K_1⋯K_L)ᵀ. The chain
    is multiplied from the output side so every intermediate stays C columns
    wide. Pure and vmappable over stacked runs.
    """
    if not kernels:
        raise UserError("no dense kernels given: pass the model's kernels in forward order")
    prod = kernels[-1]
    for k in reversed(kernels[:-1]):
        prod = jnp.matmul(k, prod, precision=jax.lax.Precision.HIGHEST)
    return jnp.linalg.svd(prod, compute_uv=False)


# --------------------------------------------------------------------------
# Summaries (the reference's definitions).
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SpectrumSummary:
    """Summary of per-sample singular values, as the TPP reference reports them.

    mean/std/max/min over all singular values of all samples (std is the
    population std), cond_mean = mean over samples of s_max/s_min, diff_mean =
    mean of (s - 1)².
    """

    mean: float
    std: float
    max: float
    min: float
    cond_mean: float
    diff_mean: float
    n_samples: int

    def as_dict(self) -> dict[str, float | int]:
        return dataclasses.asdict(self)


def summarize(sv: np.ndarray | jax.Array) -> SpectrumSummary:
    """Summary of an (n_samples, k) array of singular values.

    >>> summarize([[1.0, 2.0], [1.0, 4.0]]).cond_mean  # (2/1 + 4/1) / 2
    3.0
    """
    s = np.asarray(sv, dtype=np.float64)
    if s.ndim == 1:
        s = s[None]
    if s.ndim != 2 or s.size == 0:
        raise UserError(f"expected singular values of shape (n_samples, k), got {s.shape}")
    with np.errstate(divide="ignore"):
        cond = s.max(axis=1) / s.min(axis=1)
    return SpectrumSummary(
        mean=float(s.mean()),
        std=float(s.std()),
        max=float(s.max()),
        min=float(s.min()),
        cond_mean=float(cond.mean()),
        diff_mean=float(((s - 1.0) ** 2).mean()),
        n_samples=int(s.shape[0]),
    )


# --------------------------------------------------------------------------
# Flax NNX models.
# --------------------------------------------------------------------------


def _apply_fn(graphdef, bn: BNMode):
    def f(state, x):
        # copy=True: fresh Variables at this trace level, so batch-mode BN may update them.
        model = nnx.merge(graphdef, state, copy=True)
        if bn == "eval":
            model.eval()
        else:
            model.train()
        return model(x)

    return f


@functools.partial(jax.jit, static_argnames=("graphdef", "method", "bn"))
def _chunk_sv(graphdef, state, x, *, method: str, bn: BNMode):
    f = functools.partial(_apply_fn(graphdef, bn), state)
    if method == "gram":
        return gram_singular_values(f, x)
    return explicit_singular_values(f, x)


def is_input_linear(model: nnx.Module) -> bool:
    """True when the model is an MLP with identity activations (J constant in x)."""
    return getattr(model, "act", None) == "linear" and hasattr(model, "dense_kernels")


def model_singular_values(
    model: nnx.Module,
    x: jax.Array | np.ndarray | None = None,
    *,
    method: Method = "auto",
    bn: BNMode = "eval",
    chunk_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Per-sample JSV of a Flax NNX model, shape (n_samples, min(C, D)).

    ``x``: inputs (N, ...) in the model's input layout; it may be None only for
    ``method="linear"``, which returns one row (the input-free spectrum).
    ``method="auto"`` picks ``"linear"`` for input-linear models, else ``"gram"``.
    The computation runs in the dtype of the model's parameters: convert the
    model to float64 (with ``jax_enable_x64``) for badly conditioned spectra.
    Samples are processed in chunks of ``chunk_size`` (default: as many as keep
    the Jacobian rows under ~256 MiB); ``progress(done, total)`` is called after
    each chunk.

    >>> from isotpp.models import create_model
    >>> model = create_model("mlp_7_linear", init="orthogonal", seed=0)
    >>> s = model_singular_values(model, None, method="linear")
    >>> s.shape, round(float(s.mean()), 4)  # an orthogonal linear network is an isometry
    ((1, 10), 1.0)
    """
    if method not in METHODS:
        raise UserError(f"unknown spectrum method {method!r}: choose one of {', '.join(METHODS)}")
    if bn not in ("eval", "batch"):
        raise UserError(f"unknown BatchNorm mode {bn!r}: choose 'eval' or 'batch'")
    if method == "auto":
        method = "linear" if is_input_linear(model) else "gram"
    if method == "linear":
        if not is_input_linear(model):
            raise UserError(
                "method 'linear' needs a network that is linear in its input (an MLP with act='linear'): "
                "use method 'gram' or 'jacobian'"
            )
        sv = np.asarray(kernel_product_singular_values(model.dense_kernels()))[None]
        if x is not None:
            sv = np.repeat(sv, len(x), axis=0)
        return sv
    if x is None:
        raise UserError(f"method {method!r} needs input samples: pass x (or use a dataset / random inputs)")
    if bn == "batch" and method != "gram":
        raise UserError("per-sample Jacobians with batch statistics are coupled: use method 'gram' with bn='batch'")

    graphdef, state = nnx.split(model)
    x = jnp.asarray(x)
    n = x.shape[0]
    if chunk_size is None:
        c = _num_outputs(graphdef, state, x[:1])
        d = math.prod(x.shape[1:])
        chunk_size = max(1, min(n, _MAX_CHUNK, _ROW_BYTES // max(1, c * d * x.dtype.itemsize)))
        if method == "jacobian":
            chunk_size = max(1, chunk_size // 2)  # jacrev keeps an extra copy of the rows
    out = []
    for start in range(0, n, chunk_size):
        xb = x[start : start + chunk_size]
        out.append(np.asarray(_chunk_sv(graphdef, state, xb, method=method, bn=bn)))
        if progress is not None:
            progress(min(start + chunk_size, n), n)
    return np.concatenate(out, axis=0)


def _num_outputs(graphdef, state, x1) -> int:
    shape = jax.eval_shape(_apply_fn(graphdef, "eval"), state, x1)
    return int(shape.shape[-1])


def to_float64(model: nnx.Module) -> nnx.Module:
    """A copy of ``model`` with every floating-point variable in float64.

    Requires ``jax.config.update("jax_enable_x64", True)`` beforehand.
    """
    if not jax.config.jax_enable_x64:
        raise UserError("float64 needs jax_enable_x64: call jax.config.update('jax_enable_x64', True) first")
    graphdef, state = nnx.split(model)
    state = jax.tree.map(
        lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a, state
    )
    return nnx.merge(graphdef, state)
