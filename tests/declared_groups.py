"""The zoo's channel groups as they were declared by hand, per architecture.

isotpp traces groups from the forward program (isotpp.pruning.trace); these
hand declarations are the independent second implementation the tests hold
the tracer to (tests/test_group_trace.py): for every zoo model the two agree.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from flax import nnx

from isotpp.models import iter_layers, model_spec
from isotpp.models.program import flat_arrays
from isotpp.pruning.groups import Group, Slot


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
        slots += [Slot(m, -2, "in") for m in self.fixed_in]
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
    groups.append(_single(classifier, params[_kernel(classifier)].shape[-1], bias=_has(params, f"{classifier}.bias"),
                          bn=None, consumers=(), prunable=False,
                          why_not="it is the classifier (its outputs are the classes)"))
    return groups


def _layers(model):
    return iter_layers(model)


def declared_groups(model: nnx.Module) -> list[Group]:
    """The dependency groups of ``model``, in forward order of their producers."""
    params = flat_arrays(nnx.state(model))
    family = model_spec(model.build_config.name).family
    if family == "mlp":
        groups = _mlp_groups(model, params)
    elif family == "lenet":
        groups = _sequential_conv_groups(model, params, {})
    elif family == "vgg":
        groups = _sequential_conv_groups(model, params, _vgg_bn_after(model, params))
    elif family in ("resnet_cifar", "resnet_imagenet"):
        groups = _resnet_groups(model, params)
    else:
        raise AssertionError(f"no channel groups are declared for {family} models")
    for g in groups:
        for s in g.slots:
            if s.param not in params:
                raise AssertionError(f"group {g.name}: {s.param} is not a variable of the model")
    order = {n: i for i, (n, _) in enumerate(_layers(model))}
    return sorted(groups, key=lambda g: order.get(g.layers[0], len(order)))


