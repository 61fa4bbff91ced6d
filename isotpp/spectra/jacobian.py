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
``"stochastic"``
    For many classes: Hutchinson's trace and stochastic Lanczos quadrature on
    J·Jᵀ from a fixed budget of JVP/VJP products per sample
    (:mod:`isotpp.spectra.stochastic`, which defines what is estimated and its
    error); returns a representative spectrum (quantiles of the estimated
    density). ``"auto"`` picks it when C ≥ 4 × the budget (eval-mode BN).
``"linear"``
    For networks whose logits are affine in their input (an MLP with identity
    activations, any model of dense / conv layers, biases and eval-mode
    BatchNorm without activations; decided from the forward program,
    :mod:`isotpp.spectra.linearity`) J is the same for every x: the SVD of that one
    matrix, computed in float64, exact and input-free
    (:func:`linear_singular_values`; :func:`kernel_product_singular_values` is
    the pure, vmappable form for a chain of dense kernels).

``"gram"`` checks itself: where a sample's smallest singular value falls below
its float32 resolution (≈ 3·10⁻⁴·s_max) the chunk is recomputed with the
explicit Jacobian, and a warning says so (and asks for float64 where even that
cannot resolve it).

BatchNorm: ``bn="eval"`` (running statistics; each sample's Jacobian is its
own) or ``bn="batch"`` (batch statistics of each chunk, as the PyTorch reference
measures in train mode; then row k is d(Σ_j logits_jk)/dx_i, which includes
the coupling through the batch statistics). Only ``"gram"`` supports ``"batch"``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from isotpp import memory
from isotpp.errors import UserError
from isotpp.models.program import example_input
from isotpp.spectra import stochastic
from isotpp.spectra.linearity import is_affine

logger = logging.getLogger(__name__)

Method = Literal["gram", "jacobian", "linear", "stochastic", "auto"]
BNMode = Literal["eval", "batch"]
METHODS = ("gram", "jacobian", "linear", "stochastic", "auto")

# Classes beyond this many are processed in vmapped blocks of this many VJPs each (the blocks unrolled in
# one program): on CPU a block of 32-50 vmapped VJPs costs per class what the unrolled ones do, while a
# lax.map over the blocks (the former path) cost 2x per class and one vmap over all classes 4x
# (LeNet5, 100 classes: benchmarks/bench_spectrum_classes.py).
_UNROLL_CLASSES = 32
# Default bound on the bytes of Jacobian rows held at once per chunk.
_ROW_BYTES = 256 * 2**20
# Chunks of ~64 samples measured fastest on CPU (ResNet56: 22 ms/sample at 32-64,
# 25 ms at 128: the ten backward passes of a larger chunk spill out of cache).
_MAX_CHUNK = 64


def one_blas_thread():
    """A context in which BLAS/LAPACK (OpenBLAS, which XLA's CPU ``eigvalsh`` and ``svd`` call) runs one thread.

    OpenBLAS's own threads spin-wait for cores: on a busy 2-core machine (load
    average 12-15) ``eigvalsh`` of four 100 × 100 Gram matrices took 0.11-0.15 s
    with its default 2 threads and 0.002-0.006 s with one, 1000 × 1000 ones 14×
    longer; the Jacobian rows, XLA's own work, are unaffected.
    """
    # imported on use: threadpoolctl sets KMP_DUPLICATE_LIB_OK when imported, and `import isotpp` changes nothing
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


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
    block = _UNROLL_CLASSES

    def block_rows(ks: jax.Array) -> jax.Array:  # (k,) -> (k, B, D)
        return jax.vmap(lambda k: vjp(jnp.broadcast_to(eye[k], (b, c)))[0].reshape(b, -1))(ks)

    rows = [block_rows(jnp.arange(i, min(c, i + block))) for i in range(0, c, block)]
    return jnp.swapaxes(jnp.concatenate(rows, axis=0), 0, 1)


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


# Gram's relative resolution in float32 (√ε), and the explicit Jacobian's (a few ε).
GRAM_RESOLUTION = 3e-4
JACOBIAN_RESOLUTION = 1e-6


def is_input_linear(model: nnx.Module, x=None) -> bool:
    """True when the model's logits are affine in its input (J constant in x), decided from its
    forward program; ``x``: an example batch for models without ``input_shape``."""

    try:
        return is_affine(model, x)
    except UserError:
        return False


def linear_singular_values(model: nnx.Module, x=None) -> np.ndarray:
    """The singular values of the constant Jacobian of an input-affine model, in float64 (one row)."""

    spec = example_input(model, x)
    graphdef, state = nnx.split(model)
    with jax.enable_x64(True):
        state64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating)
                               else a, state)
        f = _apply_fn(graphdef, "eval")
        jac = jax.jacrev(lambda v: f(state64, v[None])[0])(jnp.zeros(spec.shape[1:], jnp.float64))
        jac = np.asarray(jac, np.float64).reshape(jac.shape[0], -1)
    return np.linalg.svd(jac, compute_uv=False)[None]


def _check_gram(sv: np.ndarray, dtype, redo: Callable[[], np.ndarray]) -> np.ndarray:
    """Recompute with the explicit Jacobian where gram's smallest values are below its resolution."""
    if jnp.dtype(dtype) != jnp.float32 or sv.size == 0:
        return sv
    smax = sv.max(axis=1, keepdims=True)
    if not np.any(sv < GRAM_RESOLUTION * smax):
        return sv
    warnings.warn(f"gram: singular values below its float32 resolution ({GRAM_RESOLUTION:g}·s_max); recomputed "
                  "with the explicit Jacobian", RuntimeWarning, stacklevel=3)
    sv = redo()
    if np.any(sv < JACOBIAN_RESOLUTION * sv.max(axis=1, keepdims=True)):
        warnings.warn(f"singular values below float32 resolution ({JACOBIAN_RESOLUTION:g}·s_max) remain: convert "
                      "the model with isotpp.spectra.jacobian.to_float64 (jax_enable_x64) for them", RuntimeWarning,
                      stacklevel=3)
    return sv


def model_singular_values(model: nnx.Module, x: jax.Array | np.ndarray | None = None, **options) -> np.ndarray:
    """Per-sample JSV of a Flax NNX model, shape (n_samples, min(C, D)); ``options`` are
    :func:`spectrum_estimate`'s (``method="auto"``, ``bn="eval"``, ``chunk_size``, ``progress``, ``matvecs``,
    ``memory_budget``).

    ``x``: inputs (N, ...) in the model's input layout; it may be None only for
    ``method="linear"``, which returns one row (the input-free spectrum).
    ``method="auto"`` picks ``"linear"`` for input-linear models, ``"stochastic"``
    for many classes (see ``matvecs``), else ``"gram"``.
    The computation runs in the dtype of the model's parameters: convert the
    model to float64 (with ``jax_enable_x64``) for badly conditioned spectra.
    Samples are processed in chunks of ``chunk_size`` (default: as many as keep
    the Jacobian rows under ~256 MiB, or, given ``memory_budget`` in bytes, as many
    as XLA's memory analysis of the compiled chunk fits in it);
    ``progress(done, total)`` is called after each chunk. ``matvecs``: the
    stochastic method's J·Jᵀ products per sample (default 64); ``"auto"`` uses
    that method when the classes number at least 4 × ``matvecs``.
    :func:`spectrum_estimate` returns the method used and its error as well.

    >>> from isotpp.models import create_model
    >>> model = create_model("mlp_7_linear", init="orthogonal", seed=0)
    >>> s = model_singular_values(model, None, method="linear")
    >>> s.shape, round(float(s.mean()), 4)  # an orthogonal linear network is an isometry
    ((1, 10), 1.0)
    """
    return spectrum_estimate(model, x, **options).values


@dataclasses.dataclass(frozen=True)
class SpectrumEstimate:
    """Singular values (N, k), the method that computed them and, for ``"stochastic"``, its estimate."""

    values: np.ndarray
    method: str
    stochastic: stochastic.StochasticSpectrum | None = None


def resolve_method(model: nnx.Module, x, method: Method, bn: BNMode, matvecs: int | None = None) -> str:
    """The method ``"auto"`` stands for (``"linear"``, ``"stochastic"`` or ``"gram"``); others unchanged."""
    if method not in METHODS:
        raise UserError(f"unknown spectrum method {method!r}: choose one of {', '.join(METHODS)}")
    if bn not in ("eval", "batch"):
        raise UserError(f"unknown BatchNorm mode {bn!r}: choose 'eval' or 'batch'")
    if matvecs is not None and (isinstance(matvecs, bool) or not isinstance(matvecs, int) or matvecs < 1):
        raise UserError(f"matvecs must be a positive integer, got {matvecs!r}")
    if method != "auto":
        return method
    example = None if x is None else jax.ShapeDtypeStruct((1, *np.shape(x)[1:]), jnp.asarray(x[:1]).dtype)
    if is_input_linear(model, example):
        return "linear"
    if bn == "eval" and x is not None and _many_outputs(model, x, matvecs):
        return "stochastic"
    return "gram"


def error_report(est: SpectrumEstimate) -> dict[str, float | int | str]:
    """What the error of ``est``'s figures is: the stochastic estimate's standard errors and quadrature bracket,
    or an exact method's resolution (relative to s_max) in its dtype."""
    if est.stochastic is not None:
        s = est.stochastic.summary()
        return {"kind": "stochastic", "mean_stderr": s["mean_stderr"], "mean_lower": s["mean_lower"],
                "mean_upper": s["mean_upper"], "lambda_mean_stderr": s["lambda_mean_stderr"],
                "max_ritz": s["max_ritz"], "min_ritz": s["min_ritz"], "matvecs": s["matvecs"],
                "probes": s["probes"], "steps": s["steps"]}
    eps = float(np.finfo(est.values.dtype).eps) if np.issubdtype(est.values.dtype, np.floating) else 0.0
    single = est.values.dtype == np.float32
    resolution = {"gram": GRAM_RESOLUTION if single else math.sqrt(eps),
                  "jacobian": JACOBIAN_RESOLUTION if single else 10 * eps}.get(est.method, 10 * eps)
    return {"kind": "exact", "resolution_relative_to_s_max": resolution}


def pooled_estimate(estimates: Sequence[SpectrumEstimate]) -> SpectrumEstimate:
    """One estimate over the samples of several (e.g. independent weight draws), computed by one method."""
    if not estimates or len({e.method for e in estimates}) != 1:
        raise UserError("pool estimates of one method: got " + ", ".join(e.method for e in estimates))
    values = np.concatenate([e.values for e in estimates])
    parts = [e.stochastic for e in estimates]
    pooled = None if any(p is None for p in parts) else stochastic.concatenate(parts)
    return SpectrumEstimate(values, estimates[0].method, pooled)


def spectrum_estimate(
    model: nnx.Module,
    x: jax.Array | np.ndarray | None = None,
    *,
    method: Method = "auto",
    bn: BNMode = "eval",
    chunk_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    matvecs: int | None = None,
    memory_budget: int | None = None,
) -> SpectrumEstimate:
    """:func:`model_singular_values` with the method ``"auto"`` chose and, for ``"stochastic"``, the estimate
    (its means, their standard errors, :func:`error_report`)."""
    if memory_budget is not None and (isinstance(memory_budget, bool) or not isinstance(memory_budget, int)
                                      or memory_budget <= 0):
        raise UserError(f"memory_budget must be a positive number of bytes, got {memory_budget!r}")
    method = resolve_method(model, x, method, bn, matvecs)
    with one_blas_thread():
        return _spectrum_estimate(model, x, method, bn, chunk_size, progress, matvecs, memory_budget)


def _spectrum_estimate(model, x, method, bn, chunk_size, progress, matvecs, memory_budget) -> SpectrumEstimate:
    if method == "linear":
        example = None if x is None else jax.ShapeDtypeStruct((1, *np.shape(x)[1:]), jnp.asarray(x[:1]).dtype)
        if not is_input_linear(model, example):
            raise UserError(
                "method 'linear' needs a network whose logits are affine in its input (no activations): "
                "use method 'gram' or 'jacobian'"
            )
        sv = linear_singular_values(model, example)
        if x is not None:
            sv = np.repeat(sv, len(x), axis=0)
        return SpectrumEstimate(sv, method)
    if x is None:
        raise UserError(f"method {method!r} needs input samples: pass x (or use a dataset / random inputs)")
    if bn == "batch" and method != "gram":
        raise UserError("per-sample Jacobians with batch statistics are coupled: use method 'gram' with bn='batch'")
    if method == "stochastic":
        est = stochastic.stochastic_spectrum(
            model, x, matvecs=matvecs or stochastic.DEFAULT_MATVECS, chunk_size=chunk_size,
            memory_budget=memory_budget, progress=progress,
        )
        logger.info("stochastic spectrum: %s", est.summary())
        return SpectrumEstimate(est.singular_values(), method, est)

    graphdef, state = nnx.split(model)
    x = jnp.asarray(x)
    n = x.shape[0]
    if chunk_size is None and memory_budget is None:
        c = _num_outputs(graphdef, state, x[:1])
        d = math.prod(x.shape[1:])
        chunk_size = max(1, min(n, _MAX_CHUNK, _ROW_BYTES // max(1, c * d * x.dtype.itemsize)))
        if method == "jacobian":
            chunk_size = max(1, chunk_size // 2)  # jacrev keeps an extra copy of the rows
    programs = {}
    if memory_budget is not None:
        cap = min(n, chunk_size or _MAX_CHUNK)
        chunk_size, prog = memory.chunk_for_budget(
            lambda k: _chunk_sv.lower(graphdef, state, x[:k], method=method, bn=bn).compile(), n, memory_budget, cap
        )
        programs[chunk_size] = prog
    out = []
    for start in range(0, n, chunk_size):
        xb = x[start : start + chunk_size]
        run = programs.get(len(xb)) or functools.partial(_chunk_sv, graphdef, method=method, bn=bn)
        sv = np.asarray(run(state, xb))
        if method == "gram" and bn == "eval":
            sv = _check_gram(sv, sv.dtype,
                             lambda xb=xb: np.asarray(_chunk_sv(graphdef, state, xb, method="jacobian", bn=bn)))
        out.append(sv)
        if progress is not None:
            progress(min(start + chunk_size, n), n)
    return SpectrumEstimate(np.concatenate(out, axis=0), method)


def _many_outputs(model: nnx.Module, x, matvecs: int | None) -> bool:
    graphdef, state = nnx.split(model)
    x = jnp.asarray(x)
    return stochastic.prefer_stochastic(_num_outputs(graphdef, state, x[:1]), math.prod(x.shape[1:]), matvecs)


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
