"""Penalties on kernels: pure functions of arrays, used by TPP and the baselines.

Kernels are in Flax's layout, output channels (filters) last:
dense (fan_in, n), conv (kh, kw, c_in, n). :func:`filters` reshapes any kernel
to a 2-D view W (n_filters, fan_in) with the fan-in in Flax order (kh, kw, c_in);
:func:`torch_filters` gives the reference's view, fan-in in PyTorch order
(c_in, kh, kw). Every penalty here is a norm of a Gram matrix minus the
identity, which a permutation of the fan-in columns leaves unchanged, so they
use the cheaper Flax view; OrthP's QR does depend on the order and uses the
PyTorch one (:mod:`isotpp.pruning.orthp`).

The baselines of the TPP paper use these functions in four combinations
(:func:`isotpp.pruning.methods.penalty_fn`, REFERENCE §3):

========================  ====================================================
"L1+KernOrth" (CVPR17)    Σ :func:`orth_dist` over every conv/dense layer
"L1+OrthConv" (CVPR20)    first layer skipped; :func:`orth_dist` for dense and
                          1×1, :func:`deconv_orth_dist` for the other convs
"KernOrth+L1" (opp v2)    Σ :func:`orth_regularization` over every layer
"OrthConv+L1" (opp v1)    :func:`orth_regularization` for dense and 1×1,
                          :func:`deconv_orth_dist` for the others, every layer
========================  ====================================================
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_HI = jax.lax.Precision.HIGHEST


def filters(kernel: jax.Array) -> jax.Array:
    """Kernel as W (n_filters, fan_in): one row per output channel (fan-in in Flax order)."""
    return kernel.reshape(-1, kernel.shape[-1]).T


def _torch_axes(ndim: int) -> tuple[int, ...]:
    """Axes taking a Flax kernel (*spatial, c_in, n) to PyTorch's (n, c_in, *spatial)."""
    return (ndim - 1, ndim - 2, *range(ndim - 2))


def torch_filters(kernel):
    """Kernel as the reference's ``w.view(n, -1)``: (n_filters, fan_in), fan-in in PyTorch order (c_in, kh, kw).

    Works on numpy and JAX arrays; :func:`from_torch_filters` is the inverse.
    """
    return kernel.transpose(_torch_axes(kernel.ndim)).reshape(kernel.shape[-1], -1)


def from_torch_filters(w, shape: tuple[int, ...]):
    """Inverse of :func:`torch_filters`: (n, fan_in) in PyTorch order back to a Flax kernel of ``shape``."""
    axes = _torch_axes(len(shape))
    torch_shape = tuple(shape[a] for a in axes)
    inverse = tuple(sorted(range(len(shape)), key=axes.__getitem__))
    return w.reshape(torch_shape).transpose(inverse)


def gram(w: jax.Array) -> jax.Array:
    return jnp.matmul(w, w.T, precision=_HI)


def tpp_gram_penalty(kernel: jax.Array, pruned: jax.Array) -> jax.Array:
    """TPP's decorrelation term for one layer (REFERENCE §3, the reference's ``v5``).

    G = W Wᵀ; the target is G itself (no gradient) with the rows and columns of
    the pruned filters set to 0; the loss is the mean over all n×n entries of
    (G − T)². Its gradient pulls each pruned filter towards zero norm and
    orthogonality to every other filter, leaving kept–kept correlations free.
    ``pruned``: (n,) with 1 for pruned filters, 0 for kept ones.
    """
    g = gram(filters(kernel))
    keep = 1.0 - pruned.astype(g.dtype)
    target = jax.lax.stop_gradient(g) * keep[:, None] * keep[None, :]
    return jnp.mean((g - target) ** 2)


def _mean_sq_gram_minus_identity(a: jax.Array) -> jax.Array:
    """mean((A Aᵀ − I_m)²) for A (m, n), without forming the m×m Gram when m > n.

    With m > n, ‖AAᵀ − I_m‖²_F = ‖AᵀA‖²_F − 2‖A‖²_F + m, an n×n computation
    (same value and gradient as the explicit form, as the tests check).
    """
    m, n = a.shape
    if m <= n:
        return jnp.mean((gram(a) - jnp.eye(m, dtype=a.dtype)) ** 2)
    small = jnp.matmul(a.T, a, precision=_HI)  # n×n, same nonzero spectrum as the m×m Gram
    return (jnp.sum(small * small) - 2.0 * jnp.sum(a * a) + m) / (m * m)


def orth_regularization(kernel: jax.Array, transpose: bool = True, *, rule: str = "c_in") -> jax.Array:
    """The reference's ``orth_regularization``: mean((W Wᵀ − I)²), "KernOrth+L1" / "OrthConv+L1".

    W (n, fan_in) is transposed first (``transpose``, the reference's default)
    when n is smaller than the layer's *input channels* c_in (``rule="c_in"``,
    what the reference computes: it compares ``w_.size(0)`` with ``w.size(1)``
    of the 4-D weight), or than its fan-in (``rule="fan_in"``, the evident
    intent: always the n×n Gram when n < fan_in is not what it does). The two
    rules differ only for convs with c_in ≤ n < kh·kw·c_in, e.g. every 3×3 conv
    of ResNet-56 (n = c_in): the reference uses the n×n Gram (mean over n²
    entries), the fan-in rule the (9n)×(9n) one, whose mean is about 81×
    smaller. When transposed, the Gram is the larger, fan_in × fan_in one (the
    mean is over its fan_in² entries).
    """
    if rule not in ("c_in", "fan_in"):
        raise ValueError(f"rule must be 'c_in' (the reference) or 'fan_in', got {rule!r}")
    w = filters(kernel)
    cols = kernel.shape[-2] if rule == "c_in" else w.shape[1]  # dense: c_in is the fan-in
    if transpose and w.shape[0] < cols:
        w = w.T
    return _mean_sq_gram_minus_identity(w)


def kernorth_penalty(kernel: jax.Array) -> jax.Array:
    """mean((W Wᵀ − I)²) with W transposed when it has fewer rows than its fan-in.

    :func:`orth_regularization` with ``rule="fan_in"``: the intended form of the
    reference's "KernOrth+L1" penalty (which compares n with c_in instead).
    """
    return orth_regularization(kernel, rule="fan_in")


def _norm(d: jax.Array) -> jax.Array:
    """Frobenius norm with gradient 0 (PyTorch's choice), not NaN, at exactly 0."""
    sq = jnp.sum(d * d)
    return jnp.where(sq > 0, jnp.sqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)


def orth_dist(kernel: jax.Array) -> jax.Array:
    """The reference's ``orth_dist``: ‖MᵀM − I‖_F, Frobenius norm, not squared, not averaged.

    M = W (n, fan_in), transposed if it has fewer rows than columns, so MᵀM is
    the smaller Gram (min(n, fan_in) square). "L1+KernOrth" (CVPR17) sums it
    over every conv and dense layer; "L1+OrthConv" (CVPR20) uses it for dense
    and 1×1 layers.
    """
    m = filters(kernel)
    if m.shape[0] < m.shape[1]:
        m = m.T
    g = jnp.matmul(m.T, m, precision=_HI)
    return _norm(g - jnp.eye(g.shape[0], dtype=g.dtype))


def isometry_penalty(kernel: jax.Array) -> jax.Array:
    """Approximate isometry (Lee et al. ICLR 2020): ‖W̃ᵀW̃ − I‖_F, not squared.

    W̃ is the (masked) kernel in the TensorFlow/Flax layout (fan_in, n), so the
    Gram is n×n over the output channels, as in the authors' code.
    """
    w = kernel.reshape(-1, kernel.shape[-1])
    g = jnp.matmul(w.T, w, precision=_HI)
    return _norm(g - jnp.eye(g.shape[0], dtype=g.dtype))


def is_pointwise(kernel: jax.Array) -> bool:
    """Dense or 1×1: the reference's test ``len(shape) == 2 or shape[-1] == 1`` (kernel width 1)."""
    return kernel.ndim == 2 or kernel.shape[1] == 1


def deconv_orth_dist(kernel: jax.Array, *, stride: int = 2, padding: int = 1) -> jax.Array:
    """OrthConv (Wang et al. CVPR 2020), the reference's ``deconv_orth_dist``: ‖conv(K, K) − E‖_F.

    K (n, c_in, kh, kw) in PyTorch terms is convolved with itself (as a batch of
    n images, and as n filters), stride 2, padding 1: shape (n, n, h, w); the
    target E is the identity at the tap (h//2, w//2), zero elsewhere. Stride 2 /
    padding 1 are the TPP reference's choice; with them the "centre" tap of the
    2×2 output of a 3×3 kernel is a shifted correlation, not the filters'
    aligned inner product (stride 1, padding 2 would give that). We keep the
    reference's settings.
    """
    # NCHW view of the kernel: "input" = K as a batch of n images with c_in channels,
    # "weights" = K as n filters: out[i, j] = Σ_c K_i,c ⋆ K_j,c.
    k = jnp.transpose(kernel, (3, 2, 0, 1))  # (n, c_in, kh, kw)
    out = jax.lax.conv_general_dilated(
        k, k, window_strides=(stride, stride), padding=[(padding, padding)] * 2,
        dimension_numbers=("NCHW", "OIHW", "NCHW"), precision=_HI,
    )
    n, _, h, w = out.shape
    target = jnp.zeros_like(out).at[:, :, h // 2, w // 2].set(jnp.eye(n, dtype=out.dtype))
    return _norm(out - target)


def orthconv_penalty(kernel: jax.Array, *, stride: int = 2, padding: int = 1) -> jax.Array:
    """OrthConv of one layer as "L1+OrthConv" (CVPR20) computes it.

    Dense and 1×1 kernels: :func:`orth_dist`; other convs:
    :func:`deconv_orth_dist` (``stride``, ``padding``).
    """
    if is_pointwise(kernel):
        return orth_dist(kernel)
    return deconv_orth_dist(kernel, stride=stride, padding=padding)
