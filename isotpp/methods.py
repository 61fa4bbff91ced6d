"""The pruning methods compared in the TPP paper, as data (REFERENCE §2–§4).

A method is a recipe over four hooks, each optional:

* ``pre``: a penalty phase on the *unpruned* trained model before removal —
  ``tpp`` (TPP's growing Gram + L2 penalties on the L1-chosen filters, then
  zero-out) or ``kernorth`` / ``orthconv`` ("X + L1": X for 50,000
  iterations, then L1 chooses the filters);
* the filters to remove: L1 on the weights at removal time;
* ``post``: a transformation of the pruned network before retraining —
  ``orthp`` (exact orthogonalisation) or ``ai`` (approximate isometry);
* ``retrain_penalty``: a penalty added to the loss while retraining
  (``kernorth`` / ``orthconv``, weight 0.1: "L1 + X");
* ``scratch``: retrain the pruned *architecture* from a fresh initialisation.

The studies and ``isotpp prune`` read these recipes; nothing here trains.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax

from isotpp import penalties
from isotpp.errors import UserError
from isotpp.groups import flat_arrays


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    pre: str | None = None  # "tpp" | "kernorth" | "orthconv"
    post: str | None = None  # "orthp" | "ai"
    retrain_penalty: str | None = None  # "kernorth" | "orthconv"
    scratch: bool = False
    summary: str = ""


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("Scratch", scratch=True, summary="train the pruned architecture from scratch"),
    Method("L1", summary="L1 filter pruning, then retrain"),
    Method("L1+OrthP", post="orthp", summary="L1, then exact orthogonalisation (OrthP), then retrain"),
    Method("L1+KernOrth", retrain_penalty="kernorth", summary="L1, retrain with KernOrth (weight 0.1)"),
    Method("L1+OrthConv", retrain_penalty="orthconv", summary="L1, retrain with OrthConv (weight 0.1)"),
    Method("KernOrth+L1", pre="kernorth", summary="KernOrth for 50k iterations, then L1, then retrain"),
    Method("OrthConv+L1", pre="orthconv", summary="OrthConv for 50k iterations, then L1, then retrain"),
    Method("TPP", pre="tpp", summary="TPP's penalty phases, removal, retrain"),
    Method("L1+AI", post="ai", summary="L1, then approximate isometry (data-free), then retrain"),
)}
ALIASES = {"kernorth": "L1+KernOrth", "orthconv": "L1+OrthConv", "ai": "L1+AI", "orthp": "L1+OrthP"}
TABLE1_METHODS = ("Scratch", "L1", "L1+OrthP", "L1+KernOrth", "L1+OrthConv", "KernOrth+L1", "OrthConv+L1", "TPP")


def get_method(name: str) -> Method:
    """The method called ``name`` (case-insensitive; aliases KernOrth, OrthConv, AI, OrthP)."""
    by_lower = {k.lower(): v for k, v in METHODS.items()} | {k: METHODS[v] for k, v in ALIASES.items()}
    try:
        return by_lower[str(name).strip().lower()]
    except KeyError:
        raise UserError(f"unknown method {name!r}: choose from {', '.join(METHODS)}") from None


# --------------------------------------------------------------------------
# Penalties by name, over whole parameter trees.
# --------------------------------------------------------------------------

PENALTY_WEIGHT = 0.1  # KernOrth and OrthConv, as in the reference


def penalty_fn(kind: str, kernel_names: Sequence[str]) -> Callable[[object], jax.Array]:
    """``params -> scalar``: KernOrth or OrthConv summed over the given kernels.

    OrthConv leaves out the first conv (as Wang et al.); KernOrth covers every
    kernel given.
    """
    names = list(kernel_names)
    if kind == "kernorth":
        fn = penalties.kernorth_penalty
    elif kind == "orthconv":
        fn = penalties.orthconv_penalty
        names = names[1:]
    else:
        raise UserError(f"unknown penalty {kind!r}: use 'kernorth' or 'orthconv'")

    def total(params):
        flat = flat_arrays(params)
        return sum(fn(flat[k]) for k in names)

    return total
