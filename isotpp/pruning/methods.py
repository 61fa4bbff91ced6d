"""Structured pruning methods as objects in one registry (REFERENCE §2–§4).

A method is a :class:`Method`: display metadata (name, help text, colour,
order, the studies that show it by default) and five hooks, each with a
default that does nothing special:

* :meth:`Method.select` — the filters to remove (:func:`isotpp.pruning.plan.l1_plan`:
  L1 on the weights at selection time);
* :meth:`Method.pre_phase` — a training phase on the *unpruned* model before
  removal, as a :class:`Phase` (an optax optimiser, penalties, a number of
  steps): TPP's growing Gram + L2 penalties on the selected filters, or
  "X + L1" (KernOrth / OrthConv at the constant weight lw_opp, then L1
  chooses); :meth:`Method.selects_first` says whether the plan is chosen
  before the phase (TPP) or after it;
* :meth:`Method.post` — a transformation of the pruned network before
  retraining: OrthP (exact orthogonalisation), approximate isometry, a fresh
  initialisation (Scratch);
* :meth:`Method.retrain_penalties` — penalties added to the loss while
  retraining ("L1 + KernOrth", "L1 + OrthConv", weight lw_orth_reg = 0.1).

:func:`pruned_start` turns (method, trained model) into the network to
retrain, with the caller's training engine running the phase; ``isotpp
prune`` (:mod:`isotpp.studies.pruning_run`) and the linear study
(:mod:`isotpp.studies.mlp_linear`) both call it. :func:`register_method` adds
a method from anywhere (see docs/extending.md; ``$ISOTPP_PLUGINS`` names modules
that register some for the command line, :func:`load_plugins`); the CLI,
the studies and the reports read :func:`method_names` / :func:`study_methods`
/ :func:`get_method`.

This module imports no JAX at import time, so that ``isotpp --help`` can list
the registry quickly: the hooks import the array modules when they run.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import entry_points
from typing import Any

from isotpp.errors import UserError

__all__ = [
    "LW_OPP",
    "LW_ORTH_REG",
    "PENALTY_KINDS",
    "Method",
    "MethodSettings",
    "Phase",
    "PhaseRunner",
    "get_method",
    "layer_penalty",
    "method_names",
    "penalty_fn",
    "pruned_start",
    "register_method",
    "study_methods",
    "unregister_method",
]

LW_ORTH_REG = 0.1  # "L1 + X": the reference's --lw_orth_reg default (from the OCNN code, 14de526)
LW_OPP = 1000.0  # "X + L1": the reference's --lw_opp default, the value of every published TPP script


@dataclasses.dataclass(frozen=True)
class MethodSettings:
    """The hyperparameters the hooks read; each caller fills them from its own configuration.

    ``ratios`` / ``skip``: what :meth:`Method.select` prunes (glob patterns over
    layer names); ``seed``: the run's seed (for selectors that draw);
    ``weight_decay`` / ``momentum``: the SGD of the pre-removal phases;
    ``tpp_*`` and ``lw_opp``: TPP's schedule (:class:`isotpp.pruning.tpp.TPPConfig`);
    ``pre_*`` and ``kernorth_rule``: "X + L1"; ``penalty_weight``: "L1 + X";
    ``ai_*``: approximate isometry; ``new_model``: widths → a freshly
    initialised model of the same architecture (Scratch).
    """

    ratios: Mapping[str, float] | str = "*:0.5"
    skip: Sequence[str] = ()
    seed: int = 0
    weight_decay: float = 0.0
    momentum: float = 0.9
    tpp_lr: float = 1e-3
    lw_opp: float = LW_OPP
    tpp_reg_granularity: float = 1e-4
    tpp_update_reg_interval: int = 10
    tpp_stabilize_iters: int = 10_000
    tpp_zero_out_interval: int = 100
    pre_iters: int = 50_000
    pre_lr: float = 1e-3
    pre_scheme: str = "penalty"
    kernorth_rule: str = "c_in"
    penalty_weight: float = LW_ORTH_REG
    ai_iters: int = 10_000
    ai_lr: float = 0.1
    new_model: Callable[[Mapping[str, int]], Any] | None = None


@dataclasses.dataclass(frozen=True)
class Phase:
    """A training phase before removal, run by the caller's training engine.

    ``tx``: the whole optimiser (its initial learning rate ``lr``, held
    constant); ``steps``: iterations; ``penalties`` (``params -> scalar``) with
    their ``weights`` are added to the loss; ``key``: a file-name-safe label
    (the linear study keeps the result as ``<key>.npz``); ``progress``: the
    optimiser state → numbers to log per epoch; ``summary``: the optimiser state
    at the end → a JSON-able record (it may raise if the phase did not finish).
    """

    name: str
    key: str
    tx: Any
    lr: float
    steps: int
    penalties: Mapping[str, Callable] = dataclasses.field(default_factory=dict)
    weights: Mapping[str, float] = dataclasses.field(default_factory=dict)
    progress: Callable[[Any], dict[str, Any]] | None = None
    summary: Callable[[Any], dict[str, Any]] | None = None
    description: str = ""


# (model, phase, plan or None) -> (trained model, the phase's summary record)
PhaseRunner = Callable[[Any, Phase, Any], tuple[Any, dict[str, Any]]]


def _kernel_names(model) -> list[str]:
    # imported on use: the registry loads without JAX (`isotpp --help` lists it)
    from isotpp.models import layer_names

    return [f"{n}.kernel" for n in layer_names(model)]


def file_key(name: str) -> str:
    """A method name as a file-name-safe key: ``"L1+OrthP"`` -> ``"l1_plus_orthp"``."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower().replace("+", "_plus_")).strip("_")


@dataclasses.dataclass(frozen=True, eq=False)
class Method:
    """A structured pruning method: metadata and hooks (subclass and override the hooks you need).

    ``name``: what the CLI and the results call it; ``help``: one line for
    ``--help`` and the docs; ``aliases``: other accepted spellings
    (case-insensitive); ``colour``: its matplotlib colour in every figure;
    ``order``: its place in listings (registration order when unset);
    ``studies``: ``{study: position}`` for the studies that include it by
    default (``"mlp-linear"``, ``"convnet"``, ``"table1"``).
    """

    name: str
    help: str = ""
    aliases: tuple[str, ...] = ()
    colour: str | None = None
    order: float | None = None
    studies: Mapping[str, int] = dataclasses.field(default_factory=dict)

    @property
    def key(self) -> str:
        return file_key(self.name)

    # ---- hooks -------------------------------------------------------------

    def select(self, model, settings: MethodSettings):
        """The :class:`~isotpp.pruning.plan.Plan` of filters to remove: L1 (smallest mean |w| per group)."""
        # imported on use: the registry loads without JAX (`isotpp --help` lists it)
        from isotpp.pruning.plan import l1_plan

        return l1_plan(model, settings.ratios, list(settings.skip))

    def selects_first(self, settings: MethodSettings) -> bool:
        """True when the plan is chosen on the trained model *before* :meth:`pre_phase` (it needs it)."""
        return False

    def pre_phase(self, model, plan, settings: MethodSettings) -> Phase | None:
        """The phase before removal (``plan``: the selection when :meth:`selects_first`, else None)."""
        return None

    def post(self, small, settings: MethodSettings):
        """The physically pruned network → the network to retrain (may change ``small`` in place)."""
        return small

    def retrain_penalties(self, kernel_names: Sequence[str], settings: MethodSettings
                          ) -> dict[str, tuple[Callable, float]]:
        """``{name: (params -> scalar, weight)}`` added to the loss while retraining."""
        return {}


# --------------------------------------------------------------------------
# The registry.
# --------------------------------------------------------------------------

_REGISTRY: dict[str, Method] = {}


def register_method(method: Method, *, replace: bool = False) -> Method:
    """Add ``method`` to the registry (``isotpp prune``, the studies, the reports and the CLI read it).

    A name or alias that is already taken is refused unless ``replace``.
    Returns the registered method (its ``order`` filled in when unset).
    """
    if not isinstance(method, Method):
        raise UserError(f"register_method takes an isotpp.pruning.methods.Method, got {type(method).__name__}")
    if not str(method.name).strip():
        raise UserError("a method needs a non-empty name")
    if method.order is None:
        order = max((m.order for m in _REGISTRY.values()), default=0.0) + 1.0
        method = dataclasses.replace(method, order=order)
    taken = _lookup_table()
    for spelling in (method.name, *method.aliases):
        other = taken.get(spelling.strip().lower())
        if other is not None and other.name != method.name and not replace:
            raise UserError(f"method name {spelling!r} is taken by {other.name}: choose another name")
    if method.name in _REGISTRY and not replace:
        raise UserError(f"a method called {method.name!r} is already registered: pass replace=True to redefine it")
    _REGISTRY[method.name] = method
    return method


def unregister_method(name: str) -> None:
    """Remove a method added with :func:`register_method` (tests, notebooks)."""
    _REGISTRY.pop(get_method(name).name)


def _lookup_table() -> dict[str, Method]:
    table = {}
    for m in _REGISTRY.values():
        table[m.name.lower()] = m
        for alias in m.aliases:
            table[alias.lower()] = m
    return table


def get_method(name: str | Method) -> Method:
    """The method called ``name`` (case-insensitive; or an alias, e.g. KernOrth, OrthConv, AI, OrthP)."""
    if isinstance(name, Method):
        return name
    try:
        return _lookup_table()[str(name).strip().lower()]
    except KeyError:
        raise UserError(f"unknown method {name!r}: choose from {', '.join(method_names())}") from None


def method_names() -> tuple[str, ...]:
    """Every registered method, in display order."""
    return tuple(m.name for m in sorted(_REGISTRY.values(), key=lambda m: m.order))


def method_aliases() -> dict[str, str]:
    """``{alias: method name}`` over the registry."""
    return {a: m.name for m in _REGISTRY.values() for a in m.aliases}


def study_methods(study: str) -> tuple[str, ...]:
    """The methods ``study`` includes by default, in its order (``Method.studies``)."""
    chosen = [m for m in _REGISTRY.values() if study in m.studies]
    return tuple(m.name for m in sorted(chosen, key=lambda m: (m.studies[study], m.order)))


def __getattr__(name: str):
    """``METHODS`` ({name: method}), ``ALIASES`` and ``TABLE1_METHODS``: live views of the registry."""
    views = {"METHODS": lambda: {n: get_method(n) for n in method_names()}, "ALIASES": method_aliases,
             "TABLE1_METHODS": lambda: study_methods("table1")}
    if name in views:
        return views[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


PLUGIN_GROUP = "isotpp.plugins"  # entry points: modules that register methods or scores when imported


def load_plugins(modules: str | None = None) -> list[str]:
    """Import the plugin modules: ``modules`` (comma-separated; default ``$ISOTPP_PLUGINS``) and the
    ``isotpp.plugins`` entry points of installed packages. Each registers its methods / scores when
    imported (the command line calls this before it builds its parsers). Returns the module names."""
    text = os.environ.get("ISOTPP_PLUGINS", "") if modules is None else modules
    names = [m.strip() for m in text.split(",") if m.strip()]
    names += [ep.value for ep in entry_points(group=PLUGIN_GROUP)]
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise UserError(f"plugin module {name!r} cannot be imported ({e}): check ISOTPP_PLUGINS and "
                            "that the module is on the Python path") from None
    return names


def method_colour(name: str) -> str | None:
    """The registered colour of ``name``, or None for a name the registry does not know."""
    m = _lookup_table().get(str(name).strip().lower())
    return m.colour if m is not None else None


# --------------------------------------------------------------------------
# Penalties by name, over whole parameter trees.
# --------------------------------------------------------------------------

PENALTY_KINDS = {
    "kernorth": "L1+KernOrth (orth_reg_method CVPR17): Σ orth_dist over every conv/dense layer",
    "orthconv": "L1+OrthConv (orth_reg_method CVPR20): first layer skipped; orth_dist on dense/1×1, "
                "deconv_orth_dist on the other convs",
    "kernorth_v2": "KernOrth+L1 (opp_scheme v2): Σ orth_regularization over every layer",
    "orthconv_v1": "OrthConv+L1 (opp_scheme v1): orth_regularization on dense/1×1, deconv_orth_dist on "
                   "the other convs, every layer",
}


def _orthconv_v1(kernel):
    # imported on use: the registry loads without JAX (`isotpp --help` lists it)
    from isotpp.pruning import penalties

    # the reference calls orth_regularization(w) here with its default transpose=True; dense and 1×1
    # kernels have c_in = fan_in, so the transpose rule does not matter
    if penalties.is_pointwise(kernel):
        return penalties.orth_regularization(kernel)
    return penalties.deconv_orth_dist(kernel)


def layer_penalty(kind: str, *, rule: str = "c_in") -> Callable:
    """The per-kernel penalty of ``kind`` (see :data:`PENALTY_KINDS`).

    ``rule``: KernOrth+L1's transpose rule, ``"c_in"`` (the reference's) or
    ``"fan_in"`` (its evident intent; :func:`isotpp.pruning.penalties.orth_regularization`).
    """
    # imported on use: the registry loads without JAX (`isotpp --help` lists it)
    from isotpp.pruning import penalties

    kinds = {"kernorth": penalties.orth_dist, "orthconv": penalties.orthconv_penalty,
             "kernorth_v2": lambda k: penalties.orth_regularization(k, rule=rule), "orthconv_v1": _orthconv_v1}
    if kind not in kinds:
        raise UserError(f"unknown penalty {kind!r}: use one of {', '.join(PENALTY_KINDS)}")
    return kinds[kind]


def penalty_fn(kind: str, kernel_names: Sequence[str], *, rule: str = "c_in") -> Callable:
    """``params -> scalar``: the penalty ``kind`` summed over the given kernels (in forward order).

    "orthconv" (L1+OrthConv, CVPR20) leaves out the first layer, as the
    reference does ("per the CVPR20 paper, do not reg the 1st conv"); the other
    three cover every kernel given. The weight (lw_orth_reg for the retraining
    penalties, lw_opp for the "X + L1" ones) is applied by the caller.
    """
    # imported on use: the registry loads without JAX (`isotpp --help` lists it)
    from isotpp.models.program import flat_arrays

    fn = layer_penalty(kind, rule=rule)
    names = list(kernel_names)
    if kind == "orthconv":
        names = names[1:]

    def total(params):
        flat = flat_arrays(params)
        return sum(fn(flat[k]) for k in names)

    return total


# --------------------------------------------------------------------------
# The methods of the TPP paper.
# --------------------------------------------------------------------------


def _tpp_phase(model, plan, settings: MethodSettings, *, name: str, key: str, penalty: str | None = None) -> Phase:
    """TPP's penalty phases (REFERENCE §3) on the filters of ``plan``; with ``penalty``, the reference's
    ``opp_scheme`` loop: the same L2 ramp, BatchNorm L2 and zero-out, TPP's Gram term replaced by
    ``lw_opp`` (constant) times ``penalty`` over every layer."""
    # imported on use: the registry loads without JAX (`isotpp --help` lists it)
    from isotpp.models import layer_names
    from isotpp.pruning.groups import channel_groups
    from isotpp.pruning.tpp import TPPConfig, describe, targets_for, tpp
    from isotpp.training.engine import reference_sgd

    cfg = TPPConfig(lw_opp=0.0 if penalty else settings.lw_opp, reg_granularity=settings.tpp_reg_granularity,
                    update_reg_interval=settings.tpp_update_reg_interval,
                    stabilize_iters=settings.tpp_stabilize_iters, zero_out_interval=settings.tpp_zero_out_interval)
    targets = targets_for(plan, channel_groups(model), layer_names(model), cfg)
    tx = tpp(reference_sgd(settings.tpp_lr, settings.weight_decay, settings.momentum), plan, targets, cfg)
    extra = {}
    if penalty is not None:
        extra = {"penalties": {penalty: penalty_fn(penalty, _kernel_names(model), rule=settings.kernorth_rule)},
                 "weights": {penalty: settings.lw_opp}}

    def progress(opt_state):
        st = describe(opt_state)
        return {"reg": st["reg"], "tpp_phase": st["phase"], "gram_penalty": st["gram_penalty"]}

    def summary(opt_state):
        st = describe(opt_state)
        if st["phase"] != "done":
            raise AssertionError(f"{name} ended in phase {st['phase']} after {st['iteration']} iterations")
        return st

    return Phase(name=name, key=key, tx=tx, lr=settings.tpp_lr, steps=cfg.total_iters, progress=progress,
                 summary=summary, description=f"{cfg.total_iters} iterations (reg to {cfg.reg_cap} by "
                                              f"{cfg.update_iters}, then {cfg.stabilize_iters} of stabilising)",
                 **extra)


@dataclasses.dataclass(frozen=True, eq=False)
class TPP(Method):
    """Trainability-preserving pruning: L1 chooses, TPP's penalty phases, removal."""

    def selects_first(self, settings):
        return True

    def pre_phase(self, model, plan, settings):
        return _tpp_phase(model, plan, settings, name="TPP", key="tpp")


@dataclasses.dataclass(frozen=True, eq=False)
class PenaltyThenL1(Method):
    """"X + L1": X at the constant weight lw_opp for ``pre_iters`` iterations, then L1 chooses; with
    ``pre_scheme="opp"``, X inside the reference's opp loop on the filters L1 chose first."""

    penalty: str = "kernorth_v2"

    def selects_first(self, settings):
        if settings.pre_scheme not in ("penalty", "opp"):
            raise UserError(f"pre_scheme must be 'penalty' or 'opp', got {settings.pre_scheme!r}")
        return settings.pre_scheme == "opp"

    def pre_phase(self, model, plan, settings):
        name = f"{self.penalty}+L1"
        if self.selects_first(settings):
            return _tpp_phase(model, plan, settings, name=name, key=file_key(name), penalty=self.penalty)
        # imported on use: the registry loads without JAX (`isotpp --help` lists it)
        from isotpp.training.engine import reference_sgd

        fn = penalty_fn(self.penalty, _kernel_names(model), rule=settings.kernorth_rule)
        return Phase(name=name, key=file_key(name), tx=reference_sgd(settings.pre_lr, settings.weight_decay,
                                                                     settings.momentum),
                     lr=settings.pre_lr, steps=settings.pre_iters, penalties={self.penalty: fn},
                     weights={self.penalty: settings.lw_opp},
                     description=f"{settings.pre_iters} iterations before pruning")


@dataclasses.dataclass(frozen=True, eq=False)
class RetrainPenalty(Method):
    """"L1 + X": L1, then retraining with penalty X at weight ``penalty_weight``."""

    penalty: str = "kernorth"

    def retrain_penalties(self, kernel_names, settings):
        return {self.penalty: (penalty_fn(self.penalty, kernel_names), settings.penalty_weight)}


@dataclasses.dataclass(frozen=True, eq=False)
class OrthP(Method):
    """L1, then exact orthogonalisation of every kernel (gain of the model's activation)."""

    def post(self, small, settings):
        # imported on use: the registry loads without JAX (`isotpp --help` lists it)
        from isotpp.pruning.orthp import orthp

        return orthp(small, act=getattr(small, "act", "relu"))


@dataclasses.dataclass(frozen=True, eq=False)
class ApproximateIsometry(Method):
    """L1, then ``ai_iters`` SGD steps (rate ``ai_lr``) towards isometric kernels, data-free."""

    def post(self, small, settings):
        # imported on use: the registry loads without JAX (`isotpp --help` lists it)
        from flax import nnx

        from isotpp.models.program import flat_arrays, map_named
        from isotpp.pruning.isometry import approximate_isometry

        names = set(_kernel_names(small))
        params = nnx.state(small, nnx.Param)
        new = approximate_isometry({k: v for k, v in flat_arrays(params).items() if k in names},
                                   iters=settings.ai_iters, lr=settings.ai_lr)
        nnx.update(small, map_named(lambda n, x: new.get(n, x), params))
        return small


@dataclasses.dataclass(frozen=True, eq=False)
class Scratch(Method):
    """The pruned architecture, freshly initialised (``settings.new_model``)."""

    def post(self, small, settings):
        # imported on use: the registry loads without JAX (`isotpp --help` lists it)
        from isotpp.models import widths_of

        if settings.new_model is None:
            raise UserError(f"{self.name} needs settings.new_model (widths -> a fresh model) to re-initialise")
        return settings.new_model(widths_of(small))


for _m in (
    Scratch("Scratch", "train the pruned architecture from scratch", colour="C7", studies={"table1": 0}),
    Method("L1", "L1 filter pruning, then retrain", colour="C0",
           studies={"mlp-linear": 0, "convnet": 0, "table1": 1}),
    OrthP("L1+OrthP", "L1, then exact orthogonalisation (OrthP), then retrain", aliases=("orthp",), colour="C1",
          studies={"mlp-linear": 1, "convnet": 1, "table1": 2}),
    RetrainPenalty("L1+KernOrth", "L1, retrain with KernOrth (Σ‖MᵀM−I‖_F over every layer, weight 0.1)",
                   aliases=("kernorth",), colour="C3", studies={"mlp-linear": 3, "table1": 3}, penalty="kernorth"),
    RetrainPenalty("L1+OrthConv", "L1, retrain with OrthConv (first layer skipped, weight 0.1)",
                   aliases=("orthconv",), colour="C5", studies={"table1": 4}, penalty="orthconv"),
    PenaltyThenL1("KernOrth+L1", "KernOrth (mean-of-squares, weight lw_opp) for 50k iterations, then L1, "
                  "then retrain", colour="C6", studies={"table1": 5}, penalty="kernorth_v2"),
    PenaltyThenL1("OrthConv+L1", "OrthConv (weight lw_opp, every layer) for 50k iterations, then L1, then retrain",
                  colour="C8", studies={"table1": 6}, penalty="orthconv_v1"),
    TPP("TPP", "TPP's penalty phases, removal, retrain", colour="C2",
        studies={"mlp-linear": 2, "convnet": 2, "table1": 7}),
    ApproximateIsometry("L1+AI", "L1, then approximate isometry (data-free), then retrain", aliases=("ai",),
                        colour="C4", studies={"mlp-linear": 4}),
):
    register_method(_m)
del _m


# --------------------------------------------------------------------------
# From a trained model to the network to retrain.
# --------------------------------------------------------------------------


def _same(x):
    return x


def _call(make):
    return make()


def removed_model(method: Method | str, base, settings: MethodSettings, *, run_phase: PhaseRunner,
                  on_plan: Callable = _same):
    """The method's pre-removal phase, its selection and the physical removal: the pruned network before
    :meth:`Method.post`. ``run_phase`` trains (the caller's engine); ``on_plan`` sees (and may replace, e.g.
    by a saved copy) the plan as soon as it is chosen."""
    # imported on use: the registry loads without JAX (`isotpp --help` lists it)
    from isotpp.pruning.plan import hard_prune

    method = get_method(method)
    if method.selects_first(settings):
        plan = on_plan(method.select(base, settings))
        phase = method.pre_phase(base, plan, settings)
        trained = run_phase(base, phase, plan)[0] if phase is not None else base
    else:
        phase = method.pre_phase(base, None, settings)
        trained = run_phase(base, phase, None)[0] if phase is not None else base
        plan = on_plan(method.select(trained, settings))
    return hard_prune(trained, plan)


def pruned_start(method: Method | str, base, settings: MethodSettings, *, run_phase: PhaseRunner,
                 on_plan: Callable = _same, removed: Callable = _call):
    """The network ``method`` retrains, from the trained ``base``: pre-removal phase, selection, removal,
    then :meth:`Method.post`.

    ``removed``: a wrapper around the removal (a zero-argument callable → the
    pruned network) that may return a saved copy instead of calling it.
    """
    method = get_method(method)
    small = removed(lambda: removed_model(method, base, settings, run_phase=run_phase, on_plan=on_plan))
    return method.post(small, settings)
