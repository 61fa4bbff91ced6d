"""Channel dependency groups: what they are, and ratio patterns over them.

A *group* is a set of channels that must be removed together: the output
channels of its producing conv/dense layer(s), the entries of the BatchNorm that
follows (scale, bias, running mean and variance) and the matching input
channels of every consumer — through a flatten into a dense layer too, where
one channel owns every spatial position (NHWC flattening puts the channel
fastest, hence :attr:`Slot.interleave`).

Every parameter axis that moves with a group is a :class:`Slot`; pruning,
penalties and surgery only ever walk slots. The groups of any NNX module are
traced from its forward program (:mod:`isotpp.pruning.trace`); nothing is
declared per architecture.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import jax
import numpy as np
from flax import nnx

from isotpp.errors import UserError
from isotpp.models.program import example_input, leaf_name

Role = Literal["out", "bias", "bn", "bn_stat", "in", "out_fixed"]


@dataclasses.dataclass(frozen=True)
class Slot:
    """One axis of one parameter indexed by a group's channels.

    ``param`` is the dotted path of the variable (``"layer1.0.bn1.scale"``);
    ``axis`` the axis carrying the channels; along it the channels repeat
    ``interleave`` times with the channel index fastest (flatten of NHWC),
    i.e. index = position · n_channels + channel; in general channel c of a
    group of n sits at p·period + offset + c·inner + q (:meth:`positions`).
    ``role`` says what the axis
    is: a producer's kernel outputs (``out``) or bias (``bias``), a following
    BatchNorm's scale/bias (``bn``) or running statistics (``bn_stat``), a
    consumer's inputs (``in``), or the outputs of a fixed (untrained) channel
    map such as an option-A shortcut (``out_fixed``).
    """

    param: str
    axis: int
    role: Role
    interleave: int = 1
    offset: int = 0  # where the group's block starts along the axis (a concatenation)
    period: int = 0  # distance between repeats; 0: the group's size
    inner: int = 1  # entries per channel, consecutive (a depthwise multiplier, a channel-major flatten)

    def positions(self, channels: Sequence[int] | np.ndarray, size: int) -> np.ndarray:
        """Indices along ``axis`` of the given channels of a group of ``size`` channels (sorted)."""
        return np.sort(self.position_grid(size, channels).reshape(-1))

    def position_grid(self, size: int, channels: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """(len(channels), entries per channel): the indices along ``axis`` of each channel."""
        c = np.arange(size) if channels is None else np.asarray(channels, dtype=np.int64).reshape(-1)
        period = self.period or size
        idx = (np.arange(self.interleave)[None, :, None] * period + self.offset
               + c[:, None, None] * self.inner + np.arange(self.inner)[None, None, :])
        return idx.reshape(len(c), -1)


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
# Groups of a model, traced from its forward program.
# --------------------------------------------------------------------------

_CACHE: dict[Any, Any] = {}
_CACHE_SIZE = 32


def _trace(model: nnx.Module, x=None):
    from isotpp.pruning.trace import (
        trace_groups,  # cycle: the tracer builds on Slot and Group
    )

    spec = example_input(model, x)
    graphdef, state = nnx.split(model)
    shapes = tuple((leaf_name(p), tuple(v.shape), str(v.dtype))
                   for p, v in jax.tree_util.tree_flatten_with_path(state)[0])
    try:
        key = (graphdef, shapes, spec.shape, str(spec.dtype))
        hit = _CACHE.get(key)
    except TypeError:  # unhashable static attributes: no caching
        key, hit = None, None
    if hit is not None:
        return hit
    traced = trace_groups(model, spec)
    if key is not None:
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = traced
    return traced


def channel_groups(model: nnx.Module, x=None) -> list[Group]:
    """The dependency groups of ``model``, traced from ``model(x)``, in forward order of their producers.

    ``x`` is one example batch (or a ``jax.ShapeDtypeStruct``); models with an
    ``input_shape`` attribute (the zoo's) need none. See :mod:`isotpp.pruning.trace`.
    """
    return list(_trace(model, x).groups)


def program_layers(model: nnx.Module, x=None) -> list[str]:
    """The model's producing conv / dense layers in the order its forward program uses them."""
    return list(_trace(model, x).layers)


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
