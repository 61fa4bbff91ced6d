"""Approximate isometry (Lee et al., ICLR 2020): data-free orthogonalisation of (masked) kernels.

Minimises Σ_l ‖W̃_lᵀ W̃_l − I‖_F (Frobenius norm, not squared) over the
kernels with plain SGD (lr 0.1, 10,000 iterations in the paper), where
W̃ = W ⊙ mask and the mask is kept: pruned weights stay zero. With structured
pruning the pruned network is physically smaller and every mask is all ones.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from isotpp.errors import UserError
from isotpp.pruning.penalties import isometry_penalty


def isometry_loss(kernels: Mapping[str, jax.Array], masks: Mapping[str, jax.Array] | None = None) -> jax.Array:
    masks = masks or {}
    return sum(isometry_penalty(k * masks[n] if n in masks else k) for n, k in kernels.items())


@jax.jit
def _run(kernels, masks, iters, lr):
    grad = jax.grad(isometry_loss)

    def body(_, ks):
        g = grad(ks, masks)
        return {n: (k - lr * g[n]) * masks[n] if n in masks else k - lr * g[n] for n, k in ks.items()}

    return jax.lax.fori_loop(0, iters, body, kernels)


def approximate_isometry(kernels: Mapping[str, jax.Array], masks: Mapping[str, jax.Array] | None = None,
                         *, iters: int = 10_000, lr: float = 0.1) -> dict[str, jax.Array]:
    """The kernels after ``iters`` SGD steps on :func:`isometry_loss` (masked entries stay 0)."""
    unknown = sorted(set(masks or {}) - set(kernels))
    if unknown:
        raise UserError(f"masks given for {', '.join(unknown)}, which are not among the kernels: check the names")
    masks = {n: jnp.asarray(m, dtype=kernels[n].dtype) for n, m in (masks or {}).items()}
    kernels = {n: (jnp.asarray(k) * masks[n] if n in masks else jnp.asarray(k)) for n, k in kernels.items()}
    return _run(kernels, masks, jnp.asarray(iters, jnp.int32), jnp.asarray(lr, jnp.float32))
