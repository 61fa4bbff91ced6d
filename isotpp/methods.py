"""The pruning methods compared in the TPP paper, as data (REFERENCE §2–§4).

A method is a recipe over four hooks, each optional:

* ``pre``: a penalty phase on the *unpruned* trained model before removal —
  ``tpp`` (TPP's growing Gram + L2 penalties on the L1-chosen filters, then
  zero-out) or ``kernorth_v2`` / ``orthconv_v1`` ("X + L1": X for 50,000
  iterations at the constant weight lw_opp, then L1 chooses the filters; the
  reference's ``opp_scheme`` v2 / v1);
* the filters to remove: L1 on the weights at removal time;
* ``post``: a transformation of the pruned network before retraining —
  ``orthp`` (exact orthogonalisation) or ``ai`` (approximate isometry);
* ``retrain_penalty``: a penalty added to the loss while retraining
  (``kernorth`` / ``orthconv``, weight lw_orth_reg = 0.1: "L1 + X"; the
  reference's ``orth_reg_method`` CVPR17 / CVPR20);
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
    pre: str | None = None  # "tpp" | "kernorth_v2" | "orthconv_v1"
    post: str | None = None  # "orthp" | "ai"
    retrain_penalty: str | None = None  # "kernorth" | "orthconv"
    scratch: bool = False
    summary: str = ""


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("Scratch", scratch=True, summary="train the pruned architecture from scratch"),
    Method("L1", summary="L1 filter pruning, then retrain"),
    Method("L1+OrthP", post="orthp", summary="L1, then exact orthogonalisation (OrthP), then retrain"),
    Method("L1+KernOrth", retrain_penalty="kernorth",
           summary="L1, retrain with KernOrth (Σ‖MᵀM−I‖_F over every layer, weight 0.1)"),
    Method("L1+OrthConv", retrain_penalty="orthconv",
           summary="L1, retrain with OrthConv (first layer skipped, weight 0.1)"),
    Method("KernOrth+L1", pre="kernorth_v2",
           summary="KernOrth (mean-of-squares, weight lw_opp) for 50k iterations, then L1, then retrain"),
    Method("OrthConv+L1", pre="orthconv_v1",
           summary="OrthConv (weight lw_opp, every layer) for 50k iterations, then L1, then retrain"),
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

LW_ORTH_REG = 0.1  # "L1 + X": the reference's --lw_orth_reg default (from the OCNN code, 14de526)
LW_OPP = 1000.0  # "X + L1": the reference's --lw_opp default, the value of every published TPP script

PENALTY_KINDS = {
    "kernorth": "L1+KernOrth (orth_reg_method CVPR17): Σ orth_dist over every conv/dense layer",
    "orthconv": "L1+OrthConv (orth_reg_method CVPR20): first layer skipped; orth_dist on dense/1×1, "
                "deconv_orth_dist on the other convs",
    "kernorth_v2": "KernOrth+L1 (opp_scheme v2): Σ orth_regularization over every layer",
    "orthconv_v1": "OrthConv+L1 (opp_scheme v1): orth_regularization on dense/1×1, deconv_orth_dist on "
                   "the other convs, every layer",
}


def layer_penalty(kind: str, *, rule: str = "c_in") -> Callable[[jax.Array], jax.Array]:
    """The per-kernel penalty of ``kind`` (see :data:`PENALTY_KINDS`).

    ``rule``: KernOrth+L1's transpose rule, ``"c_in"`` (the reference's) or
    ``"fan_in"`` (its evident intent; :func:`isotpp.penalties.orth_regularization`).
    """
    if kind == "kernorth":
        return penalties.orth_dist
    if kind == "orthconv":
        return penalties.orthconv_penalty
    if kind == "kernorth_v2":
        return lambda k: penalties.orth_regularization(k, rule=rule)
    if kind == "orthconv_v1":
        # the reference calls orth_regularization(w) here with its default transpose=True; dense and 1×1
        # kernels have c_in = fan_in, so the transpose rule does not matter
        return lambda k: (penalties.orth_regularization(k) if penalties.is_pointwise(k)
                          else penalties.deconv_orth_dist(k))
    raise UserError(f"unknown penalty {kind!r}: use one of {', '.join(PENALTY_KINDS)}")


def penalty_fn(kind: str, kernel_names: Sequence[str], *, rule: str = "c_in") -> Callable[[object], jax.Array]:
    """``params -> scalar``: the penalty ``kind`` summed over the given kernels (in forward order).

    "orthconv" (L1+OrthConv, CVPR20) leaves out the first layer, as the
    reference does ("per the CVPR20 paper, do not reg the 1st conv"); the other
    three cover every kernel given. The weight (lw_orth_reg for the retraining
    penalties, lw_opp for the "X + L1" ones) is applied by the caller.
    """
    fn = layer_penalty(kind, rule=rule)
    names = list(kernel_names)
    if kind == "orthconv":
        names = names[1:]

    def total(params):
        flat = flat_arrays(params)
        return sum(fn(flat[k]) for k in names)

    return total
