"""Method names and the masks of the one-shot methods, for several densities at once.

A method is a base method, optionally followed by ``+ai`` (approximate
isometry of the masked kernels before training): ``snip``, ``snip+ai``, ….
``dense`` is the unpruned reference. The scores of a one-shot method are
computed once per network and thresholded at every density; SynFlow is
iterative, so it runs its schedule once per density. IRP needs training and
AutoSparse a trained scorer: :mod:`isotpp.studies.pai` provides both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp

from isotpp.errors import UserError
from isotpp.pai import scores as S
from isotpp.pai.masks import Scope, masks_from_scores
from isotpp.pai.net import PrunableNet

__all__ = ["BASE_METHODS", "DISPLAY", "ONE_SHOT", "all_methods", "display_name", "one_shot_masks", "parse_method"]

BASE_METHODS = ("random", "magnitude", "snip", "grasp", "synflow", "irp", "autosparse")
ONE_SHOT = ("random", "magnitude", "snip", "grasp", "synflow")
DISPLAY = {"dense": "Dense", "random": "Random", "magnitude": "Magnitude", "snip": "SNIP", "grasp": "GraSP",
           "synflow": "SynFlow", "irp": "IRP", "autosparse": "AutoSparse"}


def all_methods() -> tuple[str, ...]:
    """Every base method, then every base method + approximate isometry."""
    return BASE_METHODS + tuple(f"{m}+ai" for m in BASE_METHODS)


def parse_method(name: str) -> tuple[str, bool]:
    """``"SNIP+AI"`` -> ``("snip", True)``; a UserError for unknown names."""
    key = str(name).strip().lower().replace(" ", "")
    base, plus, suffix = key.partition("+")
    if base in BASE_METHODS and (not plus or suffix == "ai"):
        return base, bool(plus)
    raise UserError(f"unknown method {name!r}: choose from {', '.join(BASE_METHODS)}, each optionally with +ai")


def canonical(name: str) -> str:
    base, ai = parse_method(name)
    return f"{base}+ai" if ai else base


def display_name(method: str) -> str:
    if method == "dense":
        return DISPLAY["dense"]
    base, ai = parse_method(method)
    return DISPLAY[base] + ("+AI" if ai else "")


def one_shot_masks(method: str, net: PrunableNet, densities: Sequence[float], *, key: jax.Array,
                   x=None, y=None, grasp_temperature: float = 200.0, synflow_rounds: int = 100,
                   scope: Scope = "global", params=None) -> dict[float, dict[str, jax.Array]]:
    """``{density: masks}`` of a one-shot method at the net's initialisation.

    ``x, y``: the examples SNIP and GraSP differentiate the loss on (one batch).
    GraSP's loss uses logits / ``grasp_temperature`` as the GraSP code does (T = 200).
    """
    if method not in ONE_SHOT:
        raise UserError(f"{method!r} is not a one-shot method: choose from {', '.join(ONE_SHOT)}")
    kernels = net.kernels(params)
    if method == "synflow":
        r = net.output_sum_fn()
        return {d: S.synflow_masks(r, kernels, d, rounds=synflow_rounds, scope=scope) for d in densities}
    if method in ("snip", "grasp") and (x is None or y is None):
        raise UserError(f"{method} needs a batch of training examples (x, y)")
    if method == "random":
        scores = S.random_scores(key, kernels)
    elif method == "magnitude":
        scores = S.magnitude_scores(kernels)
    elif method == "snip":
        scores = jax.jit(S.snip_scores, static_argnums=0)(net.loss_fn(jnp.asarray(x), jnp.asarray(y)), kernels)
    else:
        loss = net.loss_fn(jnp.asarray(x), jnp.asarray(y), temperature=grasp_temperature)
        scores = S.keep_priority("grasp", jax.jit(S.grasp_scores, static_argnums=0)(loss, kernels))
    return {d: masks_from_scores(scores, d, scope=scope) for d in densities}


def scored_masks(scores: Mapping[str, jax.Array], densities: Sequence[float], *,
                 scope: Scope = "global") -> dict[float, dict[str, jax.Array]]:
    """``{density: masks}`` from keep-priority scores (AutoSparse's, say)."""
    return {d: masks_from_scores(scores, d, scope=scope) for d in densities}
