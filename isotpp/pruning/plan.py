"""Pruning plans: which channels each group loses, and applying them.

A :class:`Plan` is plain data (JSON-able): per group, its size and the indices
of its pruned channels. It is made once by a selector (L1 here), then applied

* *softly*: the pruned filters, their biases and the following BatchNorm's
  scale/bias are zeroed, shapes kept (:func:`soft_prune`), or
* *hardly*: every slot of every group is sliced and the architecture is rebuilt
  at the new widths (:func:`hard_prune`).

In eval mode both give the same outputs (a zeroed channel contributes nothing
downstream); the tests demand it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from isotpp.errors import UserError
from isotpp.models import widths_of
from isotpp.models.program import flat_arrays, map_named
from isotpp.pruning.groups import Group, Slot, channel_groups, resolve_ratios
from isotpp.storage.atomic import read_json, write_json


@dataclasses.dataclass(frozen=True)
class Plan:
    """Pruned channel indices per group (sorted), with each group's size."""

    sizes: Mapping[str, int]
    pruned: Mapping[str, tuple[int, ...]]

    def __post_init__(self):
        def as_int(v, what):
            if isinstance(v, bool) or not float(v).is_integer():
                raise UserError(f"plan has a non-integer {what} {v!r}: regenerate the plan")
            return int(v)

        try:
            sizes = {str(k): as_int(v, "size") for k, v in self.sizes.items()}
            pruned = {str(k): tuple(as_int(i, "channel index") for i in v) for k, v in self.pruned.items()}
        except (TypeError, ValueError):
            raise UserError("plan sizes and indices must be integers: regenerate the plan") from None
        object.__setattr__(self, "sizes", sizes)
        object.__setattr__(self, "pruned", pruned)
        for name, n in sizes.items():
            if n < 1:
                raise UserError(f"plan gives group {name} size {n}: sizes must be positive")
        for name, idx in self.pruned.items():
            n = self.sizes.get(name)
            if n is None:
                raise UserError(f"plan prunes unknown group {name!r}")
            if len(set(idx)) != len(idx) or any(not (0 <= i < n) for i in idx):
                raise UserError(f"plan for {name} has invalid channel indices (size {n}): regenerate the plan")
            if len(idx) >= n:
                raise UserError(f"plan would remove all {n} channels of {name}: a layer must keep at least one")

    def kept(self, name: str) -> tuple[int, ...]:
        gone = set(self.pruned.get(name, ()))
        return tuple(i for i in range(self.sizes[name]) if i not in gone)

    def mask(self, name: str) -> np.ndarray:
        """(size,) float32 with 1 at pruned channels."""
        m = np.zeros(self.sizes[name], np.float32)
        m[list(self.pruned.get(name, ()))] = 1.0
        return m

    @property
    def pruned_groups(self) -> tuple[str, ...]:
        return tuple(n for n, idx in self.pruned.items() if idx)

    def to_dict(self) -> dict:
        return {"sizes": dict(self.sizes), "pruned": {k: list(v) for k, v in self.pruned.items()}}

    @classmethod
    def from_dict(cls, d: Mapping) -> Plan:
        try:
            return cls(dict(d["sizes"]), {k: tuple(v) for k, v in d["pruned"].items()})
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise UserError(f"not a pruning plan ({e}): expected {{'sizes': ..., 'pruned': ...}}") from None

    def save(self, path: str | Path) -> Path:
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        return cls.from_dict(read_json(path))


# --------------------------------------------------------------------------
# Selection.
# --------------------------------------------------------------------------


def n_pruned(ratio: float, n: int) -> int:
    """ceil(ratio · n), at most n − 1 (never a whole layer).

    A 1e-9 tolerance keeps float artefacts such as 0.07·100 = 7.000000000000001
    (in IEEE double arithmetic) from pruning one channel more than intended
    (the reference's plain ``math.ceil`` prunes 8 of 100 there, not 7).
    """
    if ratio <= 0:
        return 0
    return min(math.ceil(ratio * n - 1e-9), n - 1)


def l1_scores(params: Mapping[str, jax.Array], group: Group) -> np.ndarray:
    """Mean |w| of each output filter of the group's producers (averaged over producers)."""
    scores = []
    for slot in group.slots_with("out"):
        w = np.abs(np.asarray(params[slot.param], dtype=np.float64))
        w = np.moveaxis(w, slot.axis, -1).reshape(-1, w.shape[slot.axis])
        grid = slot.position_grid(group.size)  # (n, entries per channel)
        scores.append(w[:, grid].mean(axis=(0, 2)))
    return np.mean(scores, axis=0)


def select_lowest(scores: np.ndarray, ratio: float) -> tuple[int, ...]:
    """Indices of the ``n_pruned(ratio, n)`` lowest scores (stable: ties by index)."""
    k = n_pruned(ratio, len(scores))
    return tuple(sorted(int(i) for i in np.argsort(scores, kind="stable")[:k]))


def l1_plan(model: nnx.Module, ratios: Mapping[str, float] | str, skip: Sequence[str] = (),
            groups: Sequence[Group] | None = None, x=None) -> Plan:
    """The L1 plan: in each group the ceil(ratio·n) filters of smallest mean |w|.

    ``ratios``: ``{glob over layer names: ratio}`` (the last matching pattern
    wins), or the same as text ``"conv*:0.5,fc1:0.25"``; ``skip``: patterns
    left unpruned; ``x``: an example input for models without ``input_shape``.

    >>> from isotpp.models import create_model
    >>> net = create_model("lenet5", seed=0)
    >>> plan = l1_plan(net, {"conv*": 0.5})
    >>> {g: len(p) for g, p in plan.pruned.items() if p}  # ceil(0.5 * 6), ceil(0.5 * 16), ceil(0.5 * 120)
    {'conv1': 3, 'conv2': 8, 'conv3': 60}
    """
    groups = list(groups) if groups is not None else channel_groups(model, x)
    per_group = resolve_ratios(groups, ratios, skip)
    params = flat_arrays(nnx.state(model, nnx.Param))
    sizes, pruned = {}, {}
    for g in groups:
        if not g.prunable:
            continue
        sizes[g.name] = g.size
        pruned[g.name] = select_lowest(l1_scores(params, g), per_group[g.name])
    return Plan(sizes, pruned)


# --------------------------------------------------------------------------
# Applying a plan.
# --------------------------------------------------------------------------


def _groups_by_name(groups: Sequence[Group], plan: Plan) -> list[tuple[Group, tuple[int, ...]]]:
    by = {g.name: g for g in groups}
    out = []
    for name, idx in plan.pruned.items():
        if name not in by:
            raise UserError(f"plan names group {name!r}, which this model does not have: was it made for another model?")
        if by[name].size != plan.sizes[name]:
            raise UserError(f"plan expects {plan.sizes[name]} channels in {name}, the model has {by[name].size}")
        out.append((by[name], idx))
    return out


def _axis_mask(slot: Slot, shape: Sequence[int], channel_mask: np.ndarray) -> np.ndarray:
    """Broadcastable mask for ``slot`` of a variable of ``shape`` (1 at the group's marked channels)."""
    axis = slot.axis % len(shape)
    n = len(channel_mask)
    span = slot.positions(np.arange(n), n)
    if span[-1] >= shape[axis]:
        raise AssertionError(f"{slot.param}: axis {axis} has {shape[axis]} entries, the group {n}")
    m = np.zeros(shape[axis], channel_mask.dtype)
    m[slot.positions(np.flatnonzero(channel_mask), n)] = 1
    return m.reshape([-1 if a == axis else 1 for a in range(len(shape))])


def param_masks(state, plan: Plan, groups: Sequence[Group], roles: Sequence[str]) -> dict[str, np.ndarray]:
    """``{variable name: broadcastable 0/1 mask}`` marking the pruned entries in slots of ``roles``.

    Variables touched by several groups get the union of their masks.
    """
    shapes = {k: v.shape for k, v in flat_arrays(state).items()}
    masks: dict[str, np.ndarray] = {}
    for g, idx in _groups_by_name(groups, plan):
        if not idx:
            continue
        cm = plan.mask(g.name)
        for slot in g.slots_with(*roles):
            m = _axis_mask(slot, shapes[slot.param], cm)
            masks[slot.param] = np.maximum(masks[slot.param], m) if slot.param in masks else m
    return masks


def soft_prune(model: nnx.Module, plan: Plan, groups: Sequence[Group] | None = None, x=None) -> nnx.Module:
    """Zero the pruned filters, their biases, the following BN's scale/bias and fixed maps' outputs, in place."""
    groups = list(groups) if groups is not None else channel_groups(model, x)
    state = nnx.state(model)
    masks = param_masks(state, plan, groups, ("out", "bias", "bn", "out_fixed"))
    new = map_named(lambda name, x: x * (1 - masks[name]).astype(x.dtype) if name in masks else x, state)
    nnx.update(model, new)
    return model


def _removed(groups: Sequence[Group], plan: Plan, arrays: Mapping[str, np.ndarray]) -> dict[tuple[str, int], np.ndarray]:
    """{(variable, axis): indices to delete}: every slot of every pruned group, in the original coordinates."""
    out: dict[tuple[str, int], set] = {}
    for g, idx in _groups_by_name(groups, plan):
        if not idx:
            continue
        for slot in g.slots:
            key = (slot.param, slot.axis % arrays[slot.param].ndim)
            out.setdefault(key, set()).update(slot.positions(idx, g.size).tolist())
    return {k: np.asarray(sorted(v), np.int64) for k, v in out.items()}


def _sliced(arrays: Mapping[str, np.ndarray], removed: Mapping[tuple[str, int], np.ndarray]) -> dict[str, np.ndarray]:
    out = dict(arrays)
    for (name, axis), idx in removed.items():
        out[name] = np.delete(out[name], idx, axis=axis)
    return out


def hard_prune(model: nnx.Module, plan: Plan, groups: Sequence[Group] | None = None, x=None) -> nnx.Module:
    """A new, smaller model without the pruned channels (every slot sliced, BN statistics included).

    Zoo models are rebuilt at the new widths from ``model.build_config``; any
    other NNX module is copied and its variables sliced in place (NNX surgery),
    with the size attributes of Flax's layers (``in_features``,
    ``out_features``, ``num_features``, a depthwise conv's
    ``feature_group_count``) updated. ``x``: an example input, for modules
    without ``input_shape`` (see :func:`isotpp.pruning.groups.channel_groups`).

    >>> from isotpp.models import create_model, widths_of
    >>> net = create_model("lenet5", seed=0)
    >>> widths_of(hard_prune(net, l1_plan(net, {"conv1": 0.5})))["conv1"]
    3
    """
    groups = list(groups) if groups is not None else channel_groups(model, x)
    arrays = {k: np.asarray(v) for k, v in flat_arrays(nnx.state(model)).items()}
    arrays = _sliced(arrays, _removed(groups, plan, arrays))
    config = getattr(model, "build_config", None)
    if config is None:
        return _surgery(model, arrays)

    widths = widths_of(model)
    for g, idx in _groups_by_name(groups, plan):
        for layer in g.layers:
            if idx and layer in widths:
                widths[layer] = g.size - len(idx)
    small = config.create(widths=widths, abstract=True)
    state = nnx.state(small)
    target = flat_arrays(state)
    for name, spec in target.items():
        if tuple(arrays[name].shape) != tuple(spec.shape):
            raise AssertionError(f"surgery left {name} at {arrays[name].shape}, the new model needs {spec.shape}")
    new = map_named(lambda name, spec: jnp.asarray(arrays[name], dtype=spec.dtype), state)
    nnx.update(small, new)
    return small


def _surgery(model: nnx.Module, arrays: Mapping[str, np.ndarray]) -> nnx.Module:
    """A copy of ``model`` holding ``arrays`` (new shapes allowed), its layers' size attributes updated."""
    graphdef, state = nnx.split(model)
    small = nnx.merge(graphdef, map_named(lambda name, v: jnp.asarray(arrays[name], dtype=v.dtype), state))
    for _, m in nnx.iter_graph(small):
        resize_attributes(m)
    return small


def resize_attributes(m) -> None:
    """Make a Flax layer's static size attributes agree with its (resized) variables."""
    kernel = getattr(m, "kernel", None)
    if isinstance(m, nnx.Conv) and kernel is not None:
        shape = tuple(kernel.shape)
        groups = m.feature_group_count
        if groups > 1:  # depthwise: one input channel per group, the multiplier kept
            groups = m.in_features = shape[-1] // (m.out_features // m.feature_group_count)
            m.feature_group_count = groups
        else:
            m.in_features = shape[-2]
        m.out_features = shape[-1]
        m.kernel_shape = shape
    elif isinstance(m, nnx.Linear) and kernel is not None:
        m.in_features, m.out_features = int(kernel.shape[0]), int(kernel.shape[1])
    elif isinstance(m, (nnx.BatchNorm, nnx.LayerNorm, nnx.RMSNorm, nnx.GroupNorm)):
        ref = getattr(m, "scale", None) or getattr(m, "mean", None) or getattr(m, "bias", None)
        if ref is not None and hasattr(m, "num_features"):
            m.num_features = int(ref.shape[-1])
