"""A model as data: the dotted names of its state, an example input, its forward program (jaxpr).

The channel-group tracer (:mod:`isotpp.pruning.trace`), the linearity check
(:mod:`isotpp.spectra.linearity`), the spectra and the pruning code all name a
model's arrays the same way: the dotted path of the leaf in ``nnx.state(model)``
(``"layer1.0.conv1.kernel"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from isotpp.errors import UserError

__all__ = ["example_input", "flat_arrays", "forward_jaxpr", "leaf_name", "map_named"]


def leaf_name(path: Sequence[Any]) -> str:
    """Dotted name of a pytree path from ``jax.tree_util`` over an ``nnx.State``."""
    parts = []
    for k in path:
        key = getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))
        if key == "value" and isinstance(k, jax.tree_util.GetAttrKey):
            continue
        parts.append(str(key))
    return ".".join(parts)


def flat_arrays(state) -> dict[str, jax.Array]:
    """``{dotted name: array}`` for every leaf of an ``nnx.State``."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(state)
    return {leaf_name(p): x for p, x in leaves}


def map_named(fn, state):
    """``jax.tree.map`` that also passes each leaf's dotted name: ``fn(name, leaf)``."""
    return jax.tree_util.tree_map_with_path(lambda p, x: fn(leaf_name(p), x), state)


def example_input(model: nnx.Module, x=None, batch: int = 2):
    """``x`` as a shape/dtype, or one made from ``model.input_shape`` (the zoo's models carry it)."""
    if x is not None:
        return jax.ShapeDtypeStruct(np.shape(x), getattr(x, "dtype", jnp.float32))
    shape = getattr(model, "input_shape", None)
    if shape is None:
        raise UserError(f"{type(model).__name__} has no input_shape: pass an example input x (one batch) to trace "
                        "its channel groups")
    dtype = next((v.dtype for v in jax.tree.leaves(nnx.state(model, nnx.Param))), jnp.float32)
    return jax.ShapeDtypeStruct((batch, *tuple(shape)), dtype)


def forward_jaxpr(model: nnx.Module, spec: jax.ShapeDtypeStruct):
    """The jaxpr of ``model(x)`` in eval mode over (every state leaf, x): (closed jaxpr, leaf names, leaf shapes)."""

    graphdef, state = nnx.split(model)
    leaves_p, treedef = jax.tree_util.tree_flatten_with_path(state)
    names = [leaf_name(p) for p, _ in leaves_p]
    leaves = [jax.ShapeDtypeStruct(np.shape(v), v.dtype) for _, v in leaves_p]

    def forward(leaves, x):
        m = nnx.merge(graphdef, jax.tree_util.tree_unflatten(treedef, leaves))
        m.eval()
        return m(x)

    try:
        closed = jax.make_jaxpr(forward)(leaves, spec)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's forward pass failed on the example input
        raise UserError(f"tracing {type(model).__name__} on an input of shape {spec.shape} failed "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}): pass an example input "
                        "the model accepts") from None
    return closed, names, leaves
