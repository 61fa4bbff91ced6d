"""Channel dependency groups, declared per architecture (not traced).

A *group* is a set of channels that must be removed together: the output
channels of its producing conv/dense layer(s), the entries of the BatchNorm that
follows (scale, bias, running mean and variance) and the matching input
channels of every consumer — through a flatten into a dense layer too, where
one channel owns every spatial position (NHWC flattening puts the channel
fastest, hence :attr:`Slot.interleave`).

Every parameter axis that moves with a group is a :class:`Slot`; pruning,
penalties and surgery only ever walk slots, so a new architecture needs only
its declaration here.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import jax
from flax import nnx

from isotpp.errors import UserError

Role = Literal["out", "bias", "bn", "bn_stat", "in", "out_fixed"]


@dataclasses.dataclass(frozen=True)
class Slot:
    """One axis of one parameter indexed by a group's channels.

    ``param`` is the dotted path of the variable (``"layer1.0.bn1.scale"``);
    ``axis`` the axis carrying the channels; along it the channels repeat
    ``interleave`` times with the channel index fastest (flatten of NHWC),
    i.e. index = position · n_channels + channel. ``role`` says what the axis
    is: a producer's kernel outputs (``out``) or bias (``bias``), a following
    BatchNorm's scale/bias (``bn``) or running statistics (``bn_stat``), a
    consumer's inputs (``in``), or the outputs of a fixed (untrained) channel
    map such as an option-A shortcut (``out_fixed``).
    """

    param: str
    axis: int
    role: Role
    interleave: int = 1


@dataclasses.dataclass(frozen=True)
class Group:
    """Channels that are pruned together; ``name`` is the (first) producer layer."""

    name: str
    layers: tuple[str, ...]  # producing conv/dense layers
    size: int
    slots: tuple[Slot, ...]
    prunable: bool = True
    why_not: str = ""  # for unprunable groups: the reason, shown in errors

    def slots_with(self, *roles: Role) -> tuple[Slot, ...]:
        return tuple(s for s in self.slots if s.role in roles)


# --------------------------------------------------------------------------
# Paths into NNX state.
# --------------------------------------------------------------------------


def split_path(name: str) -> tuple[Any, ...]:
    """``"layer1.0.conv1"`` -> ``("layer1", 0, "conv1")`` (list indices as ints)."""
    return tuple(int(p) if p.isdigit() else p for p in name.split("."))


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


# --------------------------------------------------------------------------
# Declarations.
# --------------------------------------------------------------------------


def _kernel(layer: str) -> str:
    return f"{layer}.kernel"


def _single(layer: str, size: int, *, bias: bool, bn: str | None, consumers: Iterable[tuple[str, int]],
            prunable: bool = True, why_not: str = "") -> Group:
    """A group produced by one layer. ``consumers``: (layer, interleave)."""
    slots = [Slot(_kernel(layer), -1, "out")]
    if bias:
        slots.append(Slot(f"{layer}.bias", 0, "bias"))
    if bn is not None:
        slots += [Slot(f"{bn}.scale", 0, "bn"), Slot(f"{bn}.bias", 0, "bn"),
                  Slot(f"{bn}.mean", 0, "bn_stat"), Slot(f"{bn}.var", 0, "bn_stat")]
    for consumer, interleave in consumers:
        # conv kernels (kh, kw, in, out) and dense kernels (in, out): inputs are axis -2
        slots.append(Slot(_kernel(consumer), -2, "in", interleave))
    return Group(layer, (layer,), size, tuple(slots), prunable, why_not)


def _has(params: Mapping[str, Any], name: str) -> bool:
    return name in params


def _mlp_groups(model, params) -> list[Group]:
    names = [n for n, _ in _layers(model)]
    groups = []
    for i, name in enumerate(names):
        last = i == len(names) - 1
        groups.append(_single(
            name, params[_kernel(name)].shape[-1], bias=_has(params, f"{name}.bias"), bn=None,
            consumers=() if last else [(names[i + 1], 1)],
            prunable=not last, why_not="it is the classifier (its outputs are the classes)",
        ))
    return groups


def _sequential_conv_groups(model, params, bn_after: Mapping[str, str | None]) -> list[Group]:
    """Plain chains (LeNet-5, VGG): each layer feeds the next one.

    The flatten before the first dense layer keeps one position per channel in
    these models (global pooling in VGG, a 1×1 map in LeNet-5 at 32×32), so the
    interleave is the spatial size there, computed from the kernel shapes.
    """
    names = [n for n, _ in _layers(model)]
    groups = []
    for i, name in enumerate(names):
        last = i == len(names) - 1
        consumers = []
        if not last:
            nxt = names[i + 1]
            n_out = params[_kernel(name)].shape[-1]
            fan_in = params[_kernel(nxt)].shape[-2]
            if fan_in % n_out:
                raise AssertionError(f"{nxt} has {fan_in} inputs, not a multiple of {name}'s {n_out} outputs")
            consumers = [(nxt, fan_in // n_out)]
        groups.append(_single(
            name, params[_kernel(name)].shape[-1], bias=_has(params, f"{name}.bias"), bn=bn_after.get(name),
            consumers=consumers, prunable=not last, why_not="it is the classifier (its outputs are the classes)",
        ))
    return groups


def _vgg_bn_after(model, params) -> dict[str, str | None]:
    out = {}
    for name, _ in _layers(model):
        head, _, idx = name.rpartition(".")
        bn = f"{head}.{int(idx) + 1}" if idx.isdigit() else None
        out[name] = bn if bn is not None and f"{bn}.scale" in params else None
    return out


def _bn_slots(bn: str) -> list[Slot]:
    return [Slot(f"{bn}.scale", 0, "bn"), Slot(f"{bn}.bias", 0, "bn"),
            Slot(f"{bn}.mean", 0, "bn_stat"), Slot(f"{bn}.var", 0, "bn_stat")]


@dataclasses.dataclass
class _Stream:
    """A residual stream being declared: producers (conv, following BN) and consumers."""

    stages: list[str]
    producers: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    consumers: list[str] = dataclasses.field(default_factory=list)
    fixed_in: list[str] = dataclasses.field(default_factory=list)  # option-A maps reading this stream
    fixed_out: list[str] = dataclasses.field(default_factory=list)  # option-A maps writing into it

    def group(self, params) -> Group:
        slots = []
        for conv, bn in self.producers:
            slots += [Slot(_kernel(conv), -1, "out")] + _bn_slots(bn)
        slots += [Slot(m, -1, "out_fixed") for m in self.fixed_out]
        slots += [Slot(_kernel(c), -2, "in") for c in self.consumers]
        slots += [Slot(m, 0, "in") for m in self.fixed_in]
        size = params[_kernel(self.producers[0][0])].shape[-1]
        name = "stream:" + "+".join(dict.fromkeys(self.stages))
        return Group(name, tuple(c for c, _ in self.producers), size, tuple(slots))


def _resnet_groups(model, params) -> list[Group]:
    """ResNets, both pruning conventions at once.

    *Inner* groups: a block's conv1 (and a bottleneck's conv2) feeds only the
    next conv of its block — the reference's convention (``*layer*.conv1``).
    *Stream* groups: the convs whose outputs meet in residual adds (the stem,
    every block's last conv, ``downsample.0``) share one channel set per stream;
    its consumers are every block's conv1 (and downsample) reading the stream
    and the classifier. An option-A shortcut is a fixed channel map read by one
    stream and written into the next, so each stream prunes on its own.
    """
    names = [n for n, _ in _layers(model)]
    classifier = names[-1]
    blocks = list(dict.fromkeys(n.rpartition(".")[0] for n in names
                                if n.startswith("layer") and n.split(".")[-1].startswith("conv")))
    groups: list[Group] = []
    current = _Stream(["stem"], [("conv1", "bn1")])
    streams = [current]
    for block in blocks:
        stage = block.split(".")[0]
        bottleneck = _kernel(f"{block}.conv3") in params
        last = "conv3" if bottleneck else "conv2"
        inner = [("conv1", "bn1", "conv2")] + ([("conv2", "bn2", "conv3")] if bottleneck else [])
        for conv, bn, consumer in inner:
            groups.append(_single(f"{block}.{conv}", params[_kernel(f"{block}.{conv}")].shape[-1], bias=False,
                                  bn=f"{block}.{bn}", consumers=[(f"{block}.{consumer}", 1)]))
        current.consumers.append(f"{block}.conv1")
        if _kernel(f"{block}.downsample.0") in params:  # option B / torchvision: a 1x1 conv + BN
            current.consumers.append(f"{block}.downsample.0")
            current = _Stream([stage], [(f"{block}.downsample.0", f"{block}.downsample.1")])
            streams.append(current)
        elif f"{block}.downsample.proj" in params:  # option A: a fixed channel map
            current.fixed_in.append(f"{block}.downsample.proj")
            current = _Stream([stage], fixed_out=[f"{block}.downsample.proj"])
            streams.append(current)
        elif stage not in current.stages:
            current.stages.append(stage)
        current.producers.append((f"{block}.{last}", f"{block}.bn{3 if bottleneck else 2}"))
    current.consumers.append(classifier)
    groups += [st.group(params) for st in streams]
    groups.append(Group(classifier, (classifier,), params[_kernel(classifier)].shape[-1], (), prunable=False,
                        why_not="it is the classifier (its outputs are the classes)"))
    return groups


def _layers(model):
    from isotpp.models import iter_layers

    return iter_layers(model)


def _family(model) -> str:
    from isotpp.models import model_spec

    config = getattr(model, "build_config", None)
    if config is None:
        raise UserError("channel groups need a model built by isotpp.models.create_model")
    return model_spec(config.name).family


def channel_groups(model: nnx.Module) -> list[Group]:
    """The dependency groups of ``model``, in forward order of their producers."""
    params = flat_arrays(nnx.state(model))
    family = _family(model)
    if family == "mlp":
        groups = _mlp_groups(model, params)
    elif family == "lenet":
        groups = _sequential_conv_groups(model, params, {})
    elif family == "vgg":
        groups = _sequential_conv_groups(model, params, _vgg_bn_after(model, params))
    elif family in ("resnet_cifar", "resnet_imagenet"):
        groups = _resnet_groups(model, params)
    else:  # pragma: no cover - every registered family is handled above
        raise UserError(f"no channel groups are declared for {family} models")
    for g in groups:
        for s in g.slots:
            if s.param not in params:
                raise AssertionError(f"group {g.name}: {s.param} is not a variable of the model")
    order = {n: i for i, (n, _) in enumerate(_layers(model))}
    return sorted(groups, key=lambda g: order.get(g.layers[0], len(order)))


# --------------------------------------------------------------------------
# Ratios from glob patterns (the reference's ``stage_pr``).
# --------------------------------------------------------------------------


def parse_ratios(text: str | Mapping[str, float]) -> dict[str, float]:
    """``"*layer*.conv1:0.5,*layer4*:0.1"`` (or a mapping) -> ``{pattern: ratio}``.

    The last ``:`` of each item separates the pattern from its ratio, so glob
    brackets such as ``*layer[1-3]*conv[1-2]:0.3`` work.
    """
    hint = "write patterns like '*layer*.conv1:0.5,*fc*:0.2' (glob:ratio, comma-separated)"
    if isinstance(text, Mapping):
        items = list(text.items())
    else:
        items = []
        for item in str(text).split(","):
            item = item.strip()
            if not item:
                continue
            pattern, sep, value = item.rpartition(":")
            if not sep or not pattern:
                raise UserError(f"bad ratio item {item!r}: {hint}")
            items.append((pattern.strip(), value.strip()))
    out = {}
    for pattern, value in items:
        try:
            ratio = float(value)
        except (TypeError, ValueError):
            raise UserError(f"bad ratio {value!r} for pattern {pattern!r}: {hint}") from None
        if not (0.0 <= ratio < 1.0):
            raise UserError(f"pruning ratio {ratio} for {pattern!r} is outside [0, 1): use a fraction such as 0.5")
        out[str(pattern)] = ratio
    if not out:
        raise UserError(f"no pruning ratios given: {hint}")
    return out


def closest_layers(pattern: str, groups: Sequence[Group], n: int = 5) -> list[str]:
    """The ``n`` layer names most similar to ``pattern`` (difflib on the pattern without its wildcards),
    each marked when it cannot be pruned alone."""
    marks = {layer: ("" if g.prunable and len(g.layers) == 1 else " (residual stream)" if g.prunable
                     else " (not prunable)") for g in groups for layer in g.layers}
    bare = "".join(c for c in pattern if c not in "*?[]")
    ranked = sorted(marks, key=lambda layer: (-round(difflib.SequenceMatcher(None, bare, layer).ratio(), 2),
                                              marks[layer] != ""))  # ties: layers prunable alone first
    return [layer + marks[layer] for layer in ranked[:n]]


def resolve_ratios(groups: Sequence[Group], patterns: Mapping[str, float] | str,
                   skip: Sequence[str] = ()) -> dict[str, float]:
    """Ratio per prunable group: the last matching pattern wins; ``skip`` patterns force 0.

    Refuses patterns that match no layer and patterns that would prune a group
    that cannot be pruned (the classifier, a residual-stream conv).
    """
    patterns = parse_ratios(patterns)
    all_layers = [layer for g in groups for layer in g.layers]
    for p in list(patterns) + list(skip):
        if not any(fnmatch.fnmatchcase(layer, p) for layer in all_layers):
            raise UserError(f"pattern {p!r} matches no layer (of {len(all_layers)}); the closest are "
                            f"{', '.join(closest_layers(p, groups))} (--list-layers shows them all)")
    ratios = {}
    for g in groups:
        ratio = 0.0
        for p, r in patterns.items():
            if any(fnmatch.fnmatchcase(layer, p) for layer in g.layers):
                ratio = r
        if any(fnmatch.fnmatchcase(layer, s) for s in skip for layer in g.layers):
            ratio = 0.0
        if ratio > 0 and not g.prunable:
            raise UserError(f"the ratios would prune {g.name}, but {g.why_not}: add it to the skip list")
        if ratio > 0 and len(g.layers) > 1:
            missed = [layer for layer in g.layers if not any(fnmatch.fnmatchcase(layer, p) for p in patterns)]
            if missed:
                shown = ", ".join(missed[:4]) + (", …" if len(missed) > 4 else "")
                raise UserError(
                    f"the patterns match only part of residual {g.name} (not {shown}); its {len(g.layers)} convs "
                    "share one channel set and are pruned together: match all of them, or none "
                    "(the reference prunes only convs outside streams, e.g. '*layer*.conv1')"
                )
        if g.prunable:
            ratios[g.name] = ratio
    if not any(r > 0 for r in ratios.values()):
        raise UserError("the patterns select nothing to prune (every ratio is 0): check the patterns and skip list")
    return ratios
