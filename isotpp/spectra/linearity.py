"""Is a model's output affine in its input? Decided from its forward program (jaxpr).

Every value of ``model(x)`` (eval mode) is classed as constant (independent
of x), affine in x, or not affine. Sums, structural moves (reshape,
transpose, slice, concatenate, padding with a constant), sums over axes and
products with a constant factor (dense and conv kernels, BatchNorm in eval
mode) keep a value affine; anything else applied to an x-dependent value —
an activation, a product of two x-dependent values, a branch chosen by x —
does not. Then the input-output Jacobian is one matrix for every x, and its
spectrum is exact and input-free (:func:`isotpp.spectra.jacobian.model_singular_values`).
"""

from __future__ import annotations

from flax import nnx
from jax.extend.core import Literal

from isotpp.models.program import example_input, forward_jaxpr

CONST, AFFINE, OTHER = 0, 1, 2

_ADDITIVE = frozenset((
    "add", "sub", "neg", "add_any", "convert_element_type", "reshape", "broadcast_in_dim", "transpose",
    "squeeze", "expand_dims", "slice", "concatenate", "reduce_sum", "copy", "copy_p", "reduce_window_sum",
    "rev", "real", "imag", "cumsum", "reduce_precision",
))
_PRODUCTS = frozenset(["mul", "dot_general", "conv_general_dilated"])
_CALL_KEYS = ("jaxpr", "call_jaxpr", "fun_jaxpr")


def _run(jaxpr, ins: list[int]) -> list[int]:
    env: dict = {}

    def read(v) -> int:
        return CONST if isinstance(v, Literal) else env.get(v, CONST)

    for v, s in zip(jaxpr.invars, ins):
        env[v] = s
    for eqn in jaxpr.eqns:
        s = [read(v) for v in eqn.invars]
        outs = _eqn(eqn, s)
        for v, o in zip(eqn.outvars, outs):
            env[v] = o
    return [read(v) for v in jaxpr.outvars]


def _eqn(eqn, s: list[int]) -> list[int]:
    name = eqn.primitive.name
    n_out = len(eqn.outvars)
    top = max(s, default=CONST)
    if top == CONST:
        return [CONST] * n_out
    if name == "cond":
        if s[0] != CONST:
            return [OTHER] * n_out
        results = [_run(br.jaxpr, s[1:]) for br in eqn.params["branches"]]
        return [max(r) for r in zip(*results)]
    for key in _CALL_KEYS:
        sub = eqn.params.get(key)
        if sub is not None and name != "cond":
            return _run(getattr(sub, "jaxpr", sub), s[: len(getattr(sub, "jaxpr", sub).invars)])
    if top == OTHER:
        return [OTHER] * n_out
    if name in _ADDITIVE:
        return [AFFINE] * n_out
    if name == "pad":
        return [AFFINE if s[1] == CONST else OTHER]
    if name in _PRODUCTS:
        return [AFFINE if sum(x != CONST for x in s) <= 1 else OTHER]
    if name == "div":
        return [AFFINE if s[1] == CONST else OTHER]
    if name == "select_n":
        return [AFFINE if s[0] == CONST else OTHER]
    if name in ("dynamic_slice", "gather"):
        return [AFFINE if all(x == CONST for x in s[1:]) else OTHER] * n_out
    return [OTHER] * n_out


def is_affine(model: nnx.Module, x=None) -> bool:
    """True when ``model(x)`` (eval mode) is affine in ``x`` (see the module docstring).

    ``x``: an example batch (or ``jax.ShapeDtypeStruct``); models with
    ``input_shape`` need none.
    """

    closed, _, leaves = forward_jaxpr(model, example_input(model, x))
    ins = [CONST] * len(leaves) + [AFFINE]
    return all(o != OTHER for o in _run(closed.jaxpr, ins))
