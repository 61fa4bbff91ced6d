"""Penalties on kernels: pure functions of arrays, used by TPP and the baselines.

Kernels are in Flax's layout, output channels (filters) last:
dense (fan_in, n), conv (kh, kw, c_in, n). :func:`filters` reshapes any kernel
to the reference's 2-D view W (n_filters, fan_in); the order of the fan-in
columns differs from PyTorch's (c_in, kh, kw), which no penalty here depends on.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_HI = jax.lax.Precision.HIGHEST


def filters(kernel: jax.Array) -> jax.Array:
    """Kernel as W (n_filters, fan_in): one row per output channel."""
    return kernel.reshape(-1, kernel.shape[-1]).T


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


def kernorth_penalty(kernel: jax.Array) -> jax.Array:
    """Kernel orthogonality (Xie et al. 2017) as the reference's ``orth_regularization``.

    W (n, fan_in) is transposed first when it has fewer rows than columns; the
    loss is mean((W Wᵀ − I)²). (The reference code compares n with the conv's
    input channels instead of its fan-in, an evident slip; for c_in ≤ n < fan_in
    it would use the n×n Gram. We follow the stated rule.) For a wide layer
    this is the larger, m×m Gram (m = fan_in), whose minimisers are the same as
    the smaller one's (all singular values 1). It is never formed: with A the
    m×n matrix, ‖AAᵀ − I_m‖²_F = ‖AᵀA‖²_F − 2‖A‖²_F + m, an n×n computation.
    """
    w = filters(kernel)
    if w.shape[0] < w.shape[1]:
        w = w.T
    m, n = w.shape
    if m <= n:
        return jnp.mean((gram(w) - jnp.eye(m, dtype=w.dtype)) ** 2)
    small = jnp.matmul(w.T, w, precision=_HI)  # n×n, same nonzero spectrum as the m×m Gram
    return (jnp.sum(small * small) - 2.0 * jnp.sum(w * w) + m) / (m * m)


def isometry_penalty(kernel: jax.Array) -> jax.Array:
    """Approximate isometry (Lee et al. ICLR 2020): ‖W̃ᵀW̃ − I‖_F, not squared.

    W̃ is the (masked) kernel in the TensorFlow/Flax layout (fan_in, n), so the
    Gram is n×n over the output channels, as in the authors' code.
    """
    w = kernel.reshape(-1, kernel.shape[-1])
    g = jnp.matmul(w.T, w, precision=_HI)
    d = g - jnp.eye(g.shape[0], dtype=g.dtype)
    # sqrt of a sum of squares with a safe gradient at exactly 0
    sq = jnp.sum(d * d)
    return jnp.where(sq > 0, jnp.sqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)


def orthconv_penalty(kernel: jax.Array, *, stride: int = 2, padding: int = 1) -> jax.Array:
    """OrthConv (Wang et al. CVPR 2020): ‖conv(K, K, stride 2, pad 1) − E‖_F.

    For a 3×3 conv K (n, c_in, 3, 3) in PyTorch terms, the self-convolution of
    the kernel with itself has shape (n, n, h, w); its target E is the identity
    at the centre tap and zero elsewhere. Dense and 1×1 kernels use the plain
    row-orthogonality norm ‖WᵀW − I‖_F of the taller orientation (the
    reference's ``orth_dist``). Stride 2 / padding 1 are the TPP reference's
    choice (``deconv_orth_dist``); with them the "centre" tap of the 2×2 output
    is a shifted correlation, not the filters' aligned inner product (stride 1,
    padding 2 would give that). We keep the reference's settings.
    """
    if kernel.ndim == 2 or (kernel.ndim == 4 and kernel.shape[0] == kernel.shape[1] == 1):
        w = filters(kernel)  # (n, fan_in)
        if w.shape[0] < w.shape[1]:
            w = w.T
        g = jnp.matmul(w.T, w, precision=_HI)
        return jnp.linalg.norm(g - jnp.eye(g.shape[0], dtype=g.dtype))
    # NCHW view of the kernel: "input" = K as a batch of n images with c_in channels,
    # "weights" = K as n filters: out[i, j] = Σ_c K_i,c ⋆ K_j,c.
    k = jnp.transpose(kernel, (3, 2, 0, 1))  # (n, c_in, kh, kw)
    out = jax.lax.conv_general_dilated(
        k, k, window_strides=(stride, stride), padding=[(padding, padding)] * 2,
        dimension_numbers=("NCHW", "OIHW", "NCHW"), precision=_HI,
    )
    n, _, h, w = out.shape
    target = jnp.zeros_like(out).at[:, :, h // 2, w // 2].set(jnp.eye(n, dtype=out.dtype))
    return jnp.linalg.norm(out - target)
