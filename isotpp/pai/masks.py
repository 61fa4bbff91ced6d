"""Unstructured keep-masks from scores: exact counts, ties broken by index.

A mask is a boolean array shaped like its kernel (``True`` = kept). Masks are
kept in a dict by the kernel's dotted name (``"net.0.kernel"``); only conv and
dense kernels are ever masked, never biases or normalisation parameters.

**The count.** A density d ∈ (0, 1] over n weights keeps exactly

    k = max(1, ⌊d·n + ½⌋)      (round half up)

with d taken as the exact decimal it prints as (``0.015`` is 15/1000, not the
binary float just below it), so ``keep_count(0.015, 1000) == 15`` and
``keep_count(0.005, 300) == 2``. At least one weight is kept (per layer in
layer-wise mode, in all in global mode).

**The tie rule.** Weights are ranked by score, highest first; among equal
scores the lower flat index wins, the flat index running over the kernels in
the dict's order (forward order), each flattened row-major. Exactly k weights
are kept whatever the ties: a threshold ``score >= t`` would keep every weight
tied at the k-th score and over-keep, ``score > t`` would under-keep; ranking by
index keeps the count exact. ``-0.0`` and ``0.0`` are one value.

``alive`` restricts the ranking to weights not yet pruned (iterative methods):
a pruned weight is never revived, even when its score ties the survivors'.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from fractions import Fraction
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from isotpp.errors import UserError
from isotpp.models.program import map_named

Scope = Literal["global", "layerwise"]
SCOPES = ("global", "layerwise")

__all__ = [
    "SCOPES",
    "apply_masks",
    "check_density",
    "keep_count",
    "layer_densities",
    "mask_density",
    "masks_from_scores",
    "parse_densities",
    "top_count_masks",
    "topk_mask",
]


def check_density(density) -> float:
    """``density`` as a float, or a one-line UserError when it is not in (0, 1]."""
    try:
        d = float(density)
    except (TypeError, ValueError):
        raise UserError(f"density {density!r} is not a number: pass a fraction in (0, 1] such as 0.01") from None
    if not (math.isfinite(d) and 0.0 < d <= 1.0):
        raise UserError(f"density {density} is outside (0, 1]: pass the kept fraction, e.g. 0.01 for 1 %")
    return d


def parse_densities(text: str | Iterable) -> tuple[float, ...]:
    """``"0.1,0.05,1%"`` (fractions or percentages) or an iterable -> checked densities."""
    items = [s.strip() for s in text.split(",")] if isinstance(text, str) else list(text)
    out = []
    for item in items:
        if isinstance(item, str):
            if not item:
                continue
            if item.endswith("%"):
                try:
                    item = float(item[:-1]) / 100.0
                except ValueError:
                    raise UserError(f"bad density {item!r}: write fractions (0.01) or percentages (1%)") from None
        out.append(check_density(item))
    if not out:
        raise UserError("no densities given: pass e.g. --densities 0.1,0.05,0.01")
    return tuple(out)


def keep_count(density, n: int) -> int:
    """Weights kept out of ``n`` at ``density``: max(1, round half up of d·n), d as printed."""
    d = check_density(density)
    if n < 1:
        raise ValueError(f"cannot keep a fraction of {n} weights")
    exact = Fraction(repr(d)) * n + Fraction(1, 2)
    return max(1, min(n, math.floor(exact)))


def topk_mask(scores: jax.Array, k, alive: jax.Array | None = None) -> jax.Array:
    """Boolean mask of the ``k`` highest entries of a 1-D ``scores``, ties to the lower index.

    ``k`` may be traced (one compiled program serves every count). With
    ``alive``, dead entries rank below every live one; ``k`` must not exceed
    the number of live entries (the caller's invariant). Scores must be finite.
    """
    s = jnp.asarray(scores)
    if s.ndim != 1:
        raise ValueError(f"topk_mask wants a 1-D score vector, got shape {s.shape}")
    if s.dtype != jnp.float64:
        s = s.astype(jnp.float32)
    s = jnp.where(s == 0, jnp.zeros_like(s), s)  # -0.0 -> 0.0: one value, so the index decides
    if alive is not None:
        s = jnp.where(alive, s, -jnp.inf)
    k = jnp.asarray(k, jnp.int32)
    t = jnp.sort(s)[::-1][jnp.maximum(k - 1, 0)]  # the k-th largest value
    above = s > t
    need = k - jnp.sum(above)
    tied = s == t
    keep = above | (tied & (jnp.cumsum(tied) <= need))
    return keep & (k > 0)


_topk = jax.jit(topk_mask)


def _check_scores(scores: Mapping[str, jax.Array]) -> None:
    if not scores:
        raise UserError("no scores given: nothing to prune")
    for name, s in scores.items():
        if not np.isfinite(np.asarray(s)).all():
            raise UserError(f"the scores of {name} contain NaN or inf: check the score function's input "
                            "(a diverged gradient?)")


def masks_from_scores(scores: Mapping[str, jax.Array], density, *, scope: Scope = "global",
                      alive: Mapping[str, jax.Array] | None = None) -> dict[str, jax.Array]:
    """Keep the top-scored weights: one global ranking, or per layer at the same density.

    Returns ``{name: bool mask}`` shaped like each score array. The count is
    :func:`keep_count` over all weights (global) or per layer (layer-wise);
    ``alive`` masks restrict the ranking to surviving weights (see
    :func:`topk_mask`), so the result is a subset of them.
    """
    d = check_density(density)
    if scope not in SCOPES:
        raise UserError(f"unknown mask scope {scope!r}: choose 'global' or 'layerwise'")
    _check_scores(scores)
    if scope == "layerwise":
        return {n: top_count_masks({n: s}, keep_count(d, int(np.prod(jnp.shape(s)))),
                                   alive=None if alive is None else {n: alive[n]})[n]
                for n, s in scores.items()}
    total = sum(int(np.prod(jnp.shape(s))) for s in scores.values())
    return top_count_masks(scores, keep_count(d, total), alive=alive)


def top_count_masks(scores: Mapping[str, jax.Array], count: int, *,
                    alive: Mapping[str, jax.Array] | None = None) -> dict[str, jax.Array]:
    """Keep exactly ``count`` weights over all the kernels: one global ranking (see the tie rule)."""
    _check_scores(scores)
    names = list(scores)
    if alive is not None:
        missing = [n for n in names if n not in alive]
        if missing:
            raise ValueError(f"no alive mask for {missing[0]}")
    total = sum(int(np.prod(jnp.shape(scores[n]))) for n in names)
    if not 1 <= count <= total:
        raise ValueError(f"cannot keep {count} of {total} weights")
    a = None if alive is None else tuple(jnp.asarray(alive[n], bool) for n in names)
    if a is not None and count > sum(int(x.sum()) for x in a):
        raise ValueError(f"cannot keep {count} weights, only {sum(int(x.sum()) for x in a)} are alive")
    keep = _ranked(tuple(jnp.asarray(scores[n]) for n in names), count, a)
    return dict(zip(names, keep))


@jax.jit
def _ranked(scores: tuple, count, alive: tuple | None):
    """One compiled ranking of all kernels together; masks back in the kernels' shapes."""
    flat = jnp.concatenate([jnp.ravel(s).astype(jnp.float32) for s in scores])
    a = None if alive is None else jnp.concatenate([jnp.ravel(x) for x in alive])
    keep = topk_mask(flat, count, a)
    out, start = [], 0
    for s in scores:
        out.append(keep[start:start + s.size].reshape(s.shape))
        start += s.size
    return tuple(out)


def apply_masks(params, masks: Mapping[str, jax.Array]):
    """``params`` (an nnx.State, or a flat dict by dotted name) with every masked entry set to exactly 0."""

    # a flat {dotted name: array} dict has the same leaf names as the nested state
    return map_named(lambda n, x: jnp.where(masks[n], x, jnp.zeros_like(x)) if n in masks else x, params)


def mask_density(masks: Mapping[str, jax.Array]) -> float:
    """Kept fraction over all masked weights."""
    kept = sum(int(np.asarray(m).sum()) for m in masks.values())
    total = sum(int(np.asarray(m).size) for m in masks.values())
    return kept / total


def layer_densities(masks: Mapping[str, jax.Array]) -> dict[str, float]:
    """Kept fraction per kernel (shows layer collapse under a global threshold)."""
    return {n: float(np.asarray(m).mean()) for n, m in masks.items()}
