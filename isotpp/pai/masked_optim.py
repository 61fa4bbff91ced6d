"""Sparse training as an optax wrapper, in jaxpruner's style (``BaseUpdater.wrap_optax``).

``masked(inner, names)`` returns a ``GradientTransformation`` whose state
(:class:`MaskedState`) holds the keep-masks next to the inner optimiser's
state, so the masks are checkpointed, vmapped over runs and sharded with the
optimiser. One update:

1. zeroes the gradient of every pruned weight, so the inner optimiser's
   momentum (and anything else it accumulates) never sees it;
2. runs the inner optimiser (weight decay included: it reads the parameter,
   which is 0 where pruned);
3. replaces the update of a pruned weight by ``-param``, so after
   ``optax.apply_updates`` every pruned weight is *exactly* 0 (x + (-x) = 0 in
   floating point), even if the parameters were not masked beforehand or the
   inner optimiser produced a non-zero update there.

The forward pass therefore always sees W ⊙ M. Start training from masked
parameters (:func:`masked_train_state` does it) so that the first forward pass
sees them too. Masks are bool arrays by dotted parameter name
(``"net.0.kernel"``); unnamed parameters (biases, norm parameters) pass through.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from isotpp.models.program import flat_arrays, leaf_name
from isotpp.pai.masks import apply_masks
from isotpp.training.engine import TrainState

__all__ = ["MaskedState", "get_masks", "masked", "masked_train_state", "set_masks"]


class MaskedState(NamedTuple):
    masks: dict[str, jax.Array]  # dotted name -> bool, True = kept
    inner: Any


def _map2(fn, a, b):
    """tree map over two trees of one structure, passing the leaf's dotted name."""
    return jax.tree_util.tree_map_with_path(lambda p, x, y: fn(leaf_name(p), x, y), a, b)


def masked(inner: optax.GradientTransformation, names: Sequence[str]) -> optax.GradientTransformation:
    """Wrap ``inner`` so the parameters named in ``names`` stay sparse.

    ``init`` starts with all-True masks; put the real ones in with
    :func:`set_masks` (or build the whole state with :func:`masked_train_state`).
    """
    names = tuple(names)

    def init(params):
        flat = flat_arrays(params)
        missing = [n for n in names if n not in flat]
        if missing:
            raise KeyError(f"masked(): no parameter named {missing[0]!r}")
        return MaskedState({n: jnp.ones(flat[n].shape, bool) for n in names}, inner.init(params))

    def update(updates, state: MaskedState, params=None):
        if params is None:
            raise ValueError("masked() needs the parameters in update(): call tx.update(grads, state, params)")
        m = state.masks
        grads = _map2(lambda n, g, _: jnp.where(m[n], g, jnp.zeros_like(g)) if n in m else g, updates, params)
        new, inner_state = inner.update(grads, state.inner, params)
        new = _map2(lambda n, u, p: jnp.where(m[n], u, -p) if n in m else u, new, params)
        return new, MaskedState(m, inner_state)

    return optax.GradientTransformation(init, update)


def set_masks(opt_state, masks: Mapping[str, jax.Array]):
    """The optimiser state with its masks replaced (same names and shapes required)."""
    if not isinstance(opt_state, MaskedState):
        raise TypeError("set_masks wants the state of masked(...) itself (masked must be the outer transformation)")
    old = opt_state.masks
    if set(masks) != set(old):
        raise KeyError(f"masks for {sorted(masks)} given, the optimiser masks {sorted(old)}")
    for n, m in masks.items():
        if jnp.shape(m) != old[n].shape:
            raise ValueError(f"mask {n} has shape {jnp.shape(m)}, its parameter {old[n].shape}")
    return opt_state._replace(masks={n: jnp.asarray(masks[n], bool) for n in old})


def get_masks(opt_state) -> dict[str, jax.Array]:
    if not isinstance(opt_state, MaskedState):
        raise TypeError("get_masks wants the state of masked(...) itself")
    return dict(opt_state.masks)


def masked_train_state(params, rest, tx: optax.GradientTransformation, masks: Mapping[str, jax.Array]):
    """A :class:`isotpp.training.engine.TrainState` with masked parameters and the masks in its optimiser state."""

    params = apply_masks(params, masks)
    return TrainState(params, rest, set_masks(tx.init(params), masks))
