"""Pruning-at-initialisation scores as objects in one registry, and the masks they give at several densities.

A score is a :class:`Score`: metadata (name, display name, colour, help,
whether it needs a batch or AutoSparse's trained scorer, whether the study
transfers it to the small ConvNet) and two hooks: :meth:`Score.compute`
(net → per-weight keep-priority scores, higher = keep) and :meth:`Score.masks`
(``{density: masks}``; by default the scores thresholded at every density,
computed once per network). SynFlow is iterative, so it runs its schedule once
per density; IRP needs training and AutoSparse a trained scorer, which the
study (:mod:`isotpp.studies.pai`) hands over in the :class:`ScoreContext`.

A study method is a score name, optionally followed by ``+ai`` (approximate
isometry of the masked kernels before training): ``snip``, ``snip+ai``, ….
``dense`` is the unpruned reference. :func:`register_score` adds a score from
anywhere; the PaI study and its report read the registry.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from isotpp.errors import UserError
from isotpp.pai import scores as S
from isotpp.pai.masks import Scope, masks_from_scores
from isotpp.pai.net import PrunableNet

__all__ = ["Score", "ScoreContext", "all_methods", "display_name", "get_score", "one_shot_masks", "parse_method",
           "register_score", "score_names", "scored_masks", "unregister_score"]

Masks = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class ScoreContext:
    """What a score may read: ``key`` (its random draws), ``x, y`` (a batch of training examples),
    ``scope`` ("global" or "layerwise" thresholds), ``params`` (kernels other than the net's own),
    GraSP's ``grasp_temperature``, SynFlow's ``synflow_rounds``, and from the study ``data`` (the
    training split), AutoSparse's trained ``scorer`` and ``irp`` (densities → ``{density: masks}``)."""

    key: jax.Array
    x: Any = None
    y: Any = None
    scope: Scope = "global"
    params: Any = None
    grasp_temperature: float = 200.0
    synflow_rounds: int = 100
    data: Any = None
    scorer: Any = None
    irp: Callable[[Sequence[float]], dict[float, Masks]] | None = None


@dataclasses.dataclass(frozen=True, eq=False)
class Score:
    """A PaI score (subclass and override :meth:`compute`, or :meth:`masks` for an iterative one).

    ``name``: the lower-case key in configs and file names; ``display``: in tables and figures;
    ``needs_batch``: ``compute`` differentiates the loss on ``ctx.x, ctx.y``; ``one_shot``: computed at
    initialisation without training (IRP and AutoSparse are not); ``needs_scorer``: uses AutoSparse's
    trained scorer; ``transfer``: in the study's transfer to the small ConvNet by default.
    """

    name: str
    display: str = ""
    help: str = ""
    colour: str = "black"
    order: float | None = None
    needs_batch: bool = False
    one_shot: bool = True
    needs_scorer: bool = False
    transfer: bool = True

    def compute(self, net: PrunableNet, ctx: ScoreContext) -> dict[str, jax.Array]:
        """Per-weight keep priorities ``{kernel name: array of its shape}`` (higher = keep)."""
        raise UserError(f"score {self.name} defines neither compute() nor masks()")

    def masks(self, net: PrunableNet, densities: Sequence[float], ctx: ScoreContext) -> dict[float, Masks]:
        """``{density: masks}``: the scores, computed once, thresholded at every density."""
        scores = self.compute(net, ctx)
        return {d: masks_from_scores(scores, d, scope=ctx.scope) for d in densities}


class _Random(Score):
    def compute(self, net, ctx):
        return S.random_scores(ctx.key, net.kernels(ctx.params))


class _Magnitude(Score):
    def compute(self, net, ctx):
        return S.magnitude_scores(net.kernels(ctx.params))


class _Snip(Score):
    def compute(self, net, ctx):
        loss = net.loss_fn(jnp.asarray(ctx.x), jnp.asarray(ctx.y))
        return jax.jit(S.snip_scores, static_argnums=0)(loss, net.kernels(ctx.params))


class _Grasp(Score):
    def compute(self, net, ctx):
        loss = net.loss_fn(jnp.asarray(ctx.x), jnp.asarray(ctx.y), temperature=ctx.grasp_temperature)
        return S.keep_priority("grasp", jax.jit(S.grasp_scores, static_argnums=0)(loss, net.kernels(ctx.params)))


class _SynFlow(Score):
    def masks(self, net, densities, ctx):
        r, kernels = net.output_sum_fn(), net.kernels(ctx.params)
        return {d: S.synflow_masks(r, kernels, d, rounds=ctx.synflow_rounds, scope=ctx.scope) for d in densities}


class _IRP(Score):
    def masks(self, net, densities, ctx):
        if ctx.irp is None:
            raise UserError("irp trains its masks: run it through isotpp.studies.pai (ScoreContext.irp)")
        return ctx.irp(densities)


class _AutoSparse(Score):
    def compute(self, net, ctx):
        if ctx.scorer is None or ctx.data is None:
            raise UserError("autosparse needs a trained scorer and the training data (ScoreContext.scorer, .data)")
        g0 = net.gradient_sum(ctx.data.train.x, ctx.data.train.y, ctx.scorer.batch_size)
        return ctx.scorer(net.kernels(ctx.params), g0)


# --------------------------------------------------------------------------
# The registry.
# --------------------------------------------------------------------------

_REGISTRY: dict[str, Score] = {}


def register_score(score: Score, *, replace: bool = False) -> Score:
    """Add ``score`` to the registry (the PaI study and its report read it); a taken name is refused
    unless ``replace``. The name is lower-cased and may not contain "+" (that marks "+ai")."""
    if not isinstance(score, Score):
        raise UserError(f"register_score takes an isotpp.pai.registry.Score, got {type(score).__name__}")
    name = str(score.name).strip().lower()
    if not name or "+" in name or name == "dense" or " " in name:
        raise UserError(f"score name {score.name!r} must be a non-empty word without '+' or spaces, not 'dense'")
    if name in _REGISTRY and not replace:
        raise UserError(f"a score called {name!r} is already registered: pass replace=True to redefine it")
    order = score.order if score.order is not None else max((s.order for s in _REGISTRY.values()), default=0) + 1
    _REGISTRY[name] = dataclasses.replace(score, name=name, display=score.display or score.name, order=order)
    return _REGISTRY[name]


def unregister_score(name: str) -> None:
    """Remove a score added with :func:`register_score` (tests, notebooks)."""
    _REGISTRY.pop(get_score(name).name)


def get_score(name: str) -> Score:
    key = str(name).strip().lower()
    if key not in _REGISTRY:
        raise UserError(f"unknown score {name!r}: choose from {', '.join(score_names())}")
    return _REGISTRY[key]


def score_names(*, one_shot: bool | None = None, transfer: bool | None = None) -> tuple[str, ...]:
    """The registered scores in display order (optionally only the one-shot / transferred ones)."""
    chosen = [s for s in _REGISTRY.values() if (one_shot is None or s.one_shot == one_shot)
              and (transfer is None or s.transfer == transfer)]
    return tuple(s.name for s in sorted(chosen, key=lambda s: s.order))


for _s in (
    _Random("random", "Random", "a uniformly random subset (global ranking of i.i.d. scores)", "tab:gray"),
    _Magnitude("magnitude", "Magnitude", "the largest |w| at initialisation", "tab:brown"),
    _Snip("snip", "SNIP", "|w ⊙ ∂L/∂w| on a batch of training examples", "tab:blue", needs_batch=True),
    _Grasp("grasp", "GraSP", "keep the smallest −w ⊙ Hg (logits / temperature)", "tab:orange", needs_batch=True),
    _SynFlow("synflow", "SynFlow", "data-free, iterative: density^(k/rounds) over the rounds", "tab:green"),
    _IRP("irp", "IRP", "the ticket of iterative rewind pruning", "tab:purple", one_shot=False, transfer=False),
    _AutoSparse("autosparse", "AutoSparse", "a scoring MLP trained on an IRP record of another seed", "tab:red",
                one_shot=False, needs_scorer=True),
):
    register_score(_s)
del _s


def __getattr__(name: str):
    """``BASE_METHODS``, ``ONE_SHOT`` and ``DISPLAY``: live views of the registry."""
    views = {"BASE_METHODS": score_names, "ONE_SHOT": lambda: score_names(one_shot=True),
             "DISPLAY": lambda: {"dense": "Dense"} | {n: get_score(n).display for n in score_names()}}
    if name in views:
        return views[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------
# Study method names: a score, optionally "+ai".
# --------------------------------------------------------------------------


def all_methods() -> tuple[str, ...]:
    """Every registered score, then every score + approximate isometry."""
    names = score_names()
    return names + tuple(f"{m}+ai" for m in names)


def parse_method(name: str) -> tuple[str, bool]:
    """``"SNIP+AI"`` -> ``("snip", True)``; a UserError for unknown names."""
    key = str(name).strip().lower().replace(" ", "")
    base, plus, suffix = key.partition("+")
    if base in _REGISTRY and (not plus or suffix == "ai"):
        return base, bool(plus)
    raise UserError(f"unknown method {name!r}: choose from {', '.join(score_names())}, each optionally with +ai")


def canonical(name: str) -> str:
    base, ai = parse_method(name)
    return f"{base}+ai" if ai else base


def display_name(method: str) -> str:
    if method == "dense":
        return "Dense"
    base, ai = parse_method(method)
    return get_score(base).display + ("+AI" if ai else "")


def colour(method: str) -> str:
    """The figure colour of a study method (its score's; black for ``dense`` and unknown names)."""
    base = str(method).partition("+")[0]
    return _REGISTRY[base].colour if base in _REGISTRY else "black"


def one_shot_masks(method: str, net: PrunableNet, densities: Sequence[float], *, key: jax.Array,
                   x=None, y=None, grasp_temperature: float = 200.0, synflow_rounds: int = 100,
                   scope: Scope = "global", params=None) -> dict[float, dict[str, jax.Array]]:
    """``{density: masks}`` of a one-shot score at the net's initialisation.

    ``x, y``: the examples SNIP and GraSP differentiate the loss on (one batch).
    GraSP's loss uses logits / ``grasp_temperature`` as the GraSP code does (T = 200).
    """
    score = _REGISTRY.get(str(method).strip().lower())
    if score is None or not score.one_shot:
        raise UserError(f"{method!r} is not a one-shot method: choose from {', '.join(score_names(one_shot=True))}")
    if score.needs_batch and (x is None or y is None):
        raise UserError(f"{score.name} needs a batch of training examples (x, y)")
    ctx = ScoreContext(key=key, x=x, y=y, scope=scope, params=params, grasp_temperature=grasp_temperature,
                       synflow_rounds=synflow_rounds)
    return score.masks(net, densities, ctx)


def scored_masks(scores: Mapping[str, jax.Array], densities: Sequence[float], *,
                 scope: Scope = "global") -> dict[float, dict[str, jax.Array]]:
    """``{density: masks}`` from keep-priority scores (AutoSparse's, say)."""
    return {d: masks_from_scores(scores, d, scope=scope) for d in densities}
