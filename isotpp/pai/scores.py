"""Saliency scores for pruning at initialisation: small pure functions of the kernels.

Every function takes the prunable kernels ``{name: array}`` (and, for the
data-dependent ones, a loss of the kernels) and returns scores of the same
shapes. **Higher = keep**, except :func:`grasp_scores`, which returns the
paper's S = −θ ⊙ Hg, of which GraSP removes the *largest*: its keep-priority is
−S (:func:`keep_priority`).

======== ====================================================================
random   i.i.d. U[0, 1) per weight (a uniformly random subset at any count)
magnitude |θ|
SNIP     |θ ⊙ ∂L/∂θ| (Lee et al. 2019; = |∂L/∂c| at the all-ones mask c)
GraSP    S = −θ ⊙ (H g), g = ∂L/∂θ, Hg the Hessian-gradient product, computed
         as the JVP of ∇L in the direction of g (no Hessian is formed)
SynFlow  |θ ⊙ ∂R/∂θ|, R = Σ outputs of the all-ones input through the network
         with every parameter replaced by its absolute value (data-free), made
         iterative by :func:`synflow_masks`: ``rounds`` rounds, the density of
         round k being d^(k / rounds), each round re-scoring the surviving
         weights (Tanaka et al. 2020)
======== ====================================================================
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from isotpp.pai.masks import (
    Scope,
    check_density,
    keep_count,
    masks_from_scores,
    top_count_masks,
)

__all__ = [
    "grasp_scores",
    "keep_priority",
    "magnitude_scores",
    "random_scores",
    "snip_scores",
    "synflow_masks",
    "synflow_scores",
]

Kernels = Mapping[str, jax.Array]


def random_scores(key: jax.Array, kernels: Kernels) -> dict[str, jax.Array]:
    """U[0, 1) per weight: one flat draw over all kernels (in the dict's order), split by kernel.

    (One draw compiles one random kernel; a draw per kernel shape would compile one each.)
    """
    sizes = [int(np.prod(jnp.shape(k))) for k in kernels.values()]
    flat = jax.random.uniform(key, (sum(sizes),))
    out, start = {}, 0
    for (n, k), size in zip(kernels.items(), sizes):
        out[n] = flat[start:start + size].reshape(jnp.shape(k))
        start += size
    return out


def magnitude_scores(kernels: Kernels) -> dict[str, jax.Array]:
    return {n: jnp.abs(k) for n, k in kernels.items()}


def snip_scores(loss_fn: Callable[[Kernels], jax.Array], kernels: Kernels) -> dict[str, jax.Array]:
    """|θ ⊙ ∂L/∂θ| with ``loss_fn(kernels) -> scalar``."""
    g = jax.grad(loss_fn)(dict(kernels))
    return {n: jnp.abs(k * g[n]) for n, k in kernels.items()}


def grasp_scores(loss_fn: Callable[[Kernels], jax.Array], kernels: Kernels) -> dict[str, jax.Array]:
    """The paper's S = −θ ⊙ (H g); GraSP prunes the largest S (see :func:`keep_priority`)."""
    kernels = dict(kernels)
    grad = jax.grad(loss_fn)
    g = jax.lax.stop_gradient(grad(kernels))
    _, hg = jax.jvp(grad, (kernels,), (g,))
    return {n: -k * hg[n] for n, k in kernels.items()}


def keep_priority(method: str, scores: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """Scores turned into "higher = keep": −S for GraSP, the scores themselves otherwise."""
    if method == "grasp":
        return {n: -s for n, s in scores.items()}
    return dict(scores)


def synflow_scores(r_fn: Callable[[Kernels], jax.Array], kernels: Kernels,
                   masks: Mapping[str, jax.Array] | None = None) -> dict[str, jax.Array]:
    """|θ| ⊙ m ⊙ ∂R/∂θ̃ at θ̃ = |θ| ⊙ m (= |θ ⊙ ∂R/∂θ| of the masked, linearised net).

    ``r_fn(kernels)`` is R of non-negative kernels (:meth:`PrunableNet.output_sum_fn`).
    Pruned weights score exactly 0.
    """
    a = _abs_masked(kernels, masks)
    g = jax.grad(r_fn)(a)
    return {n: a[n] * g[n] for n in a}


def _abs_masked(kernels, masks):
    return {n: jnp.abs(k) if masks is None else jnp.where(masks[n], jnp.abs(k), 0.0) for n, k in kernels.items()}


def synflow_masks(r_fn: Callable[[Kernels], jax.Array], kernels: Kernels, density, *,
                  rounds: int = 100, scope: Scope = "global") -> dict[str, jax.Array]:
    """Iterative SynFlow: round k keeps density^(k/rounds) of all weights, re-scored each round.

    Each round ranks only the survivors of the last (a pruned weight is never
    revived); the last round keeps exactly ``keep_count(density, n)``.
    """
    d = check_density(density)
    if rounds < 1:
        raise ValueError(f"SynFlow needs at least one round, got {rounds}")
    grad = jax.jit(jax.grad(r_fn))
    masks = {n: jnp.ones(jnp.shape(k), bool) for n, k in kernels.items()}
    total = sum(int(jnp.size(k)) for k in kernels.values())
    for k in range(1, rounds + 1):
        dk = d if k == rounds else d ** (k / rounds)
        a = _abs_masked(kernels, masks)
        g = grad(a)
        scores = {n: a[n] * g[n] for n in a}
        if scope == "global":
            masks = top_count_masks(scores, keep_count(dk, total), alive=masks)
        else:
            masks = masks_from_scores(scores, dk, scope=scope, alive=masks)
    return masks
