"""Structured pruning of any NNX model as one optax transformation.

``tx = isotpp.prune_optax(optax.sgd(1e-3, momentum=0.9), model, ratios="*:0.5", steps=2000)``
traces the model's channel groups, picks the L1 plan, derives TPP's targets,
fits TPP's schedule (reg ramp, stabilise, one layer zeroed per interval) into
``steps`` iterations and returns the wrapped optimiser; it works with
``nnx.Optimizer`` and ``nnx.jit`` unchanged. After ``done`` the penalties stop
and the pruned entries stay exactly 0; :func:`pruned_model` then removes them
physically. Without ``steps`` the paper's schedule (110,001 iterations) is used.

The other structured methods of the paper take the same form (``method=``):
``L1`` (the L1 filters zeroed at the first step and held at 0: retraining of
the pruned network, in place) and ``L1+KernOrth`` / ``L1+OrthConv`` (the same,
plus the retraining penalty of REFERENCE §3 on the kept part of every kernel,
exactly what the physically pruned network would see), and ``KernOrth+L1`` /
``OrthConv+L1`` (the penalty on the whole network for ``steps - 1``
iterations, then L1 chooses the filters from the weights reached, which are
zeroed and held at 0 from that last iteration on).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from isotpp.errors import UserError
from isotpp.models.program import flat_arrays
from isotpp.pruning.groups import Group, channel_groups, program_layers, resolve_ratios
from isotpp.pruning.methods import (
    LW_OPP,
    LW_ORTH_REG,
    TPP,
    Method,
    PenaltyThenL1,
    RetrainPenalty,
    get_method,
    method_names,
    penalty_fn,
)
from isotpp.pruning.plan import Plan, hard_prune, l1_plan, n_pruned
from isotpp.pruning.tpp import (
    DONE,
    PHASES,
    TPPConfig,
    check_schedule,
    targets_for,
    tpp,
    tpp_state,
)


def _one_call_form(name) -> type | None:
    """The kind of one-call form ``name`` has (TPP, "X + L1", "L1 + X", L1), None for the others (post-removal
    steps, a method with hooks of its own)."""
    try:
        method = get_method(name)
    except UserError:
        return None
    kinds = (TPP, PenaltyThenL1, RetrainPenalty, Method)
    return next((k for k in kinds if type(method) is k), None)


ONE_CALL_METHODS = tuple(n for n in method_names() if _one_call_form(n) is not None)  # the paper's, at import
_PAPER_RAMP, _PAPER_STABILIZE, _PAPER_INTERVAL = 100_000, 10_000, 100


def minimum_steps(last_order: int) -> int:
    """Fewest iterations a TPP schedule needs when its last pruned layer has forward index ``last_order``:
    one ramp iteration, one stabilising iteration per layer up to it, and the final one."""
    return last_order + 3


def fit_schedule(steps: int, last_order: int, *, lw_opp: float = 1000.0, reg_cap: float = 1.0) -> TPPConfig:
    """TPP's schedule scaled into ``steps`` iterations with the paper's proportions.

    The paper ramps reg to its cap over 100,000 iterations (a tick every 10)
    and stabilises for 10,000, zeroing one more layer every 100: here the
    stabilise phase takes 1/11 of the budget (at least one iteration per layer
    up to the last pruned one), the zero-out interval is the largest (≤ 100)
    that reaches layer ``last_order`` before ``done``, and the ramp takes the
    rest, with a tick every round(ramp / 10,000) iterations.
    """
    need = minimum_steps(last_order)
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < need:
        raise UserError(f"steps={steps!r} is too few for TPP here: zeroing layers up to forward index {last_order} "
                        f"one per interval needs at least {need} iterations")
    steps = int(steps)
    stabilize = max(last_order + 1, round((steps - 1) * _PAPER_STABILIZE / (_PAPER_RAMP + _PAPER_STABILIZE)))
    interval = min(_PAPER_INTERVAL, stabilize // (last_order + 1))
    ramp = steps - 1 - stabilize
    every = max(1, round(ramp / (_PAPER_RAMP // 10)))
    ticks = ramp // every
    cfg = TPPConfig(lw_opp=lw_opp, reg_granularity=reg_cap / ticks, update_reg_interval=every, reg_cap=reg_cap,
                    stabilize_iters=stabilize, zero_out_interval=interval)
    if cfg.total_iters > steps:  # pragma: no cover - guaranteed by the arithmetic above
        raise AssertionError(f"fitted schedule takes {cfg.total_iters} > {steps} iterations")
    return cfg


@dataclasses.dataclass(frozen=True)
class _Setup:
    groups: tuple[Group, ...]
    layers: tuple[str, ...]
    plan: Plan


def _setup(model, ratios, skip, x) -> _Setup:
    groups = channel_groups(model, x)
    layers = program_layers(model, x)
    return _Setup(tuple(groups), tuple(layers), l1_plan(model, ratios, skip, groups))


def prune_optax(inner: optax.GradientTransformation, model: nnx.Module, ratios: str | Mapping[str, float], *,
                method: str = "TPP", steps: int | None = None, schedule: TPPConfig | None = None,
                skip: Sequence[str] = (), x=None) -> optax.GradientTransformation:
    """``inner`` wrapped with a structured pruning method for ``model`` (see the module docstring).

    ``ratios``: glob patterns over the model's layer names (``"*:0.5"``,
    ``"conv*:0.3,fc1:0.5"``; the classifier is never pruned: ``skip`` it or
    leave it out); ``x``: an example input batch for models without
    ``input_shape``. TPP: ``steps`` fits the schedule into that many
    iterations (:func:`fit_schedule`), ``schedule`` gives one explicitly
    (validated against ``steps`` and the layers to zero), neither uses the
    paper's. The update needs ``params`` (``nnx.Optimizer`` passes them).
    """
    if _one_call_form(method) is None:
        raise UserError(f"method {method!r} has no one-call optimiser form: use one of {', '.join(ONE_CALL_METHODS)} "
                        "(OrthP and AI transform the pruned network: apply isotpp.pruning.orthp / isotpp.pruning.isometry to "
                        "pruned_model(...); Scratch re-initialises it)")
    method = get_method(method)
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1):
        raise UserError(f"steps must be a positive integer, got {steps!r}")
    if isinstance(method, PenaltyThenL1):
        if steps is None or schedule is not None:
            raise UserError(f"{method.name} needs steps (iterations of the penalty before L1 chooses) and no schedule")
        groups = channel_groups(model, x)
        return _penalty_then_l1(inner, groups, program_layers(model, x), resolve_ratios(groups, ratios, skip),
                                method.penalty, steps)  # the reference's opp_scheme v2 / v1
    setup = _setup(model, ratios, skip, x)
    if not isinstance(method, TPP):
        if schedule is not None:
            raise UserError(f"schedule is TPP's; method {method.name} prunes at the first step: leave it out")
        masked = _masked(inner, setup)
        if not isinstance(method, RetrainPenalty):  # L1
            return masked
        return optax.chain(kept_penalty(method.penalty, setup.groups, setup.plan, setup.layers), masked)
    cfg = schedule
    targets = targets_for(setup.plan, setup.groups, setup.layers, cfg or TPPConfig())
    last = max(t.order for t in targets)
    if cfg is None:
        cfg = fit_schedule(steps, last) if steps is not None else TPPConfig()
        targets = targets_for(setup.plan, setup.groups, setup.layers, cfg)
    elif steps is not None and cfg.total_iters > steps:
        raise UserError(f"the schedule needs {cfg.total_iters} iterations to reach done, more than steps={steps}: "
                        "pass a shorter schedule, more steps, or only steps (a fitted schedule)")
    check_schedule(targets, cfg)
    return tpp(inner, setup.plan, targets, cfg)


def _masked(inner, setup: _Setup) -> optax.GradientTransformation:
    """The plan's entries zeroed at the first update and held at 0 (TPP's wrapper, started in its done phase)."""
    cfg = TPPConfig()
    targets = targets_for(setup.plan, setup.groups, setup.layers, cfg)
    return tpp(inner, setup.plan, targets, cfg, start_phase=DONE)


def _penalty_then_l1(inner, groups: Sequence[Group], layers: Sequence[str], ratios: Mapping[str, float], kind: str,
                     steps: int, weight: float | None = None) -> optax.GradientTransformation:
    """"X + L1": ``weight`` (lw_opp) · X on every kernel for ``steps - 1`` iterations, then the L1 filters of
    the weights reached are chosen (inside the jitted update) and zeroed; TPP's wrapper, done, holds them."""
    weight = LW_OPP if weight is None else weight
    chosen = [g for g in groups if g.prunable and n_pruned(ratios.get(g.name, 0.0), g.size) > 0]
    counts = {g.name: n_pruned(ratios[g.name], g.size) for g in chosen}
    placeholder = Plan({g.name: g.size for g in chosen}, {g.name: tuple(range(counts[g.name])) for g in chosen})
    cfg = TPPConfig(reg_granularity=0.0)  # no TPP penalties: reg stays 0
    masked = tpp(inner, placeholder, targets_for(placeholder, groups, layers, cfg), cfg)
    penalty = penalty_fn(kind, [f"{layer}.kernel" for layer in layers])

    def l1_masks(flat):
        out = {}
        for g in chosen:
            scores = []
            for slot in g.slots_with("out"):
                w = jnp.abs(jnp.moveaxis(flat[slot.param], slot.axis, -1))
                w = w.reshape(-1, w.shape[-1])
                scores.append(w[:, slot.position_grid(g.size)].mean(axis=(0, 2)))
            idx = jnp.argsort(jnp.mean(jnp.stack(scores), axis=0), stable=True)[: counts[g.name]]
            out[g.name] = jnp.zeros((g.size,), jnp.float32).at[idx].set(1.0)
        return out

    def init(params):
        st = masked.init(params)
        return st._replace(pruned={k: jnp.zeros_like(v) for k, v in st.pruned.items()})

    def update(grads, state, params=None):
        if params is None:
            raise UserError(f"{kind}+L1 needs params in update(): use nnx.Optimizer or pass params")
        before = state.phase != DONE
        switch = before & (state.iteration >= steps - 1)
        g = jax.grad(lambda p: weight * penalty(p))(params)
        on = (before & ~switch).astype(jnp.float32)
        grads = jax.tree.map(lambda a, b: a + (on * b).astype(a.dtype), grads, g)
        new = l1_masks(flat_arrays(params))
        pruned = {k: jnp.where(switch, new[k], v) for k, v in state.pruned.items()}
        phase = jnp.where(switch, DONE, state.phase)
        return masked.update(grads, state._replace(pruned=pruned, phase=phase), params)

    return optax.GradientTransformation(init, update)


def removed_index(groups: Sequence[Group], plan: Plan) -> dict[tuple[str, int], np.ndarray]:
    """{(variable, axis): indices the plan removes} for every axis a pruned group touches."""
    shapes: dict[tuple[str, int], list] = {}
    for g in groups:
        gone = plan.pruned.get(g.name, ())
        if not gone:
            continue
        for slot in g.slots:
            shapes.setdefault((slot.param, slot.axis), []).append(slot.positions(gone, g.size))
    return {k: np.concatenate(v) for k, v in shapes.items()}


def kept_penalty(kind: str, groups: Sequence[Group], plan: Plan, layers: Sequence[str],
                 weight: float | None = None) -> optax.GradientTransformation:
    """Adds ∇ of ``weight`` (lw_orth_reg) · KernOrth / OrthConv (REFERENCE §3, "L1 + X") over the *kept*
    part of every conv / dense kernel: the penalty the physically pruned network would get while retraining."""
    weight = LW_ORTH_REG if weight is None else weight
    kernels = [f"{layer}.kernel" for layer in layers]
    removed = removed_index(groups, plan)
    total = penalty_fn(kind, kernels)

    def sliced(params):
        flat = flat_arrays(params)
        out = {}
        for k in kernels:
            w = flat[k]
            for axis in (-1, -2):
                gone = removed.get((k, axis))
                if gone is not None:
                    keep = np.setdiff1d(np.arange(w.shape[axis]), gone)
                    w = jnp.take(w, keep, axis=axis)
            out[k] = w
        return out

    def update(grads, state, params=None):
        if params is None:
            raise UserError("the pruning penalty needs params in update(): use nnx.Optimizer or pass params")
        g = jax.grad(lambda p: weight * total(sliced(p)))(params)
        return jax.tree.map(lambda a, b: a + b.astype(a.dtype), grads, g), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def plan_of(opt_state) -> Plan:
    """The plan held by the pruning state inside ``opt_state``."""
    st = tpp_state(opt_state)
    masks = {k: np.asarray(v) for k, v in st.pruned.items()}
    if any(m.ndim != 1 for m in masks.values()):
        raise UserError("this optimiser state holds several runs (vmapped): take one run's state first")
    return Plan({k: len(m) for k, m in masks.items()}, {k: tuple(np.flatnonzero(m).tolist()) for k, m in masks.items()})


def pruned_model(model: nnx.Module, opt_state, x=None) -> nnx.Module:
    """The physically smaller network once the pruning state in ``opt_state`` is done."""
    st = tpp_state(opt_state)
    phase = int(np.asarray(st.phase))
    if phase != DONE:
        raise UserError(f"pruning is at phase {PHASES[phase]} (iteration {int(np.asarray(st.iteration))}): "
                        "train until it reports done before removing the filters")
    return hard_prune(model, plan_of(opt_state), x=x)


__all__ = ["ONE_CALL_METHODS", "fit_schedule", "kept_penalty", "minimum_steps", "plan_of", "prune_optax",
           "pruned_model", "removed_index"]
