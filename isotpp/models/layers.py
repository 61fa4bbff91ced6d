"""Building blocks shared by the model zoo.

Every architecture is a Flax NNX module whose *layer names* mirror the PyTorch
reference code: a layer's name is the dotted path of its module in the NNX
graph, e.g. ``("layer2", 3, "conv1")`` -> ``"layer2.3.conv1"``. To reproduce
``nn.Sequential`` indices (activations and pools take their own index, as in
``features.2`` = ReLU of VGG) we use :class:`Sequential`, an ``nnx.List`` that
calls its items in turn, and parameter-free modules for activations and pools.

Inputs are NHWC. Convolutions use explicit PyTorch-style padding
(``((p, p), (p, p))``), never ``"SAME"``: for a stride-2 convolution on an
even-sized input ``"SAME"`` pads (0, 1) where PyTorch pads (1, 1), and the
outputs of converted torch weights would be shifted by one pixel.

This module also holds the *widths* machinery (canonical widths, overrides,
residual-stream validation) and the definition-order bookkeeping: NNX rebuilds
module attributes in sorted order after ``split``/``merge``/``eval_shape``, so
each model records the definition order of its submodules once, at
construction, in the static attribute ``module_order``.
"""

from __future__ import annotations

import collections
import dataclasses
import difflib
import operator
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from isotpp.errors import UserError
from isotpp.models.ops import BatchNorm, conv_general_dilated

# --------------------------------------------------------------------------
# Containers and parameter-free layers
# --------------------------------------------------------------------------


class Sequential(nnx.List):
    """An ``nnx.List`` of callables applied in order (torch's ``nn.Sequential``).

    Items are addressed by integer index in the NNX graph, so the state path of
    the kernel of item 3 is ``(..., 3, "kernel")`` and its layer name ``"….3"``.
    """

    def __call__(self, x):
        for layer in self:
            x = layer(x)
        return x


class Constant(nnx.Variable):
    """A fixed array of the architecture (not trained, not a BatchNorm statistic).

    Part of the model's state, so checkpoints and surgery carry it, but not an
    ``nnx.Param``: optimisers and parameter counts never see it.
    """


class Identity(nnx.Module):
    def __call__(self, x):
        return x


class ReLU(nnx.Module):
    def __call__(self, x):
        return jax.nn.relu(x)


class Tanh(nnx.Module):
    def __call__(self, x):
        return jnp.tanh(x)


class HardTanh(nnx.Module):
    """clip(x, -1, 1) (torch's nn.Hardtanh)."""

    def __call__(self, x):
        return jnp.clip(x, -1.0, 1.0)


class Flatten(nnx.Module):
    """(B, ...) -> (B, prod(...)). With NHWC inputs the order is H, W, C
    (PyTorch flattens C, H, W): only relevant when importing torch weights of
    a dense layer that follows a conv with spatial size > 1."""

    def __call__(self, x):
        return x.reshape(x.shape[0], -1)


class MaxPool(nnx.Module):
    """2-D max pooling over NHWC, torch semantics (floor mode, -inf padding)."""

    def __init__(self, window: int, stride: int | None = None, padding: int = 0):
        self.window = (window, window)
        self.strides = (stride or window,) * 2
        self.padding = ((padding, padding), (padding, padding))

    def __call__(self, x):
        return nnx.max_pool(x, self.window, strides=self.strides, padding=self.padding)


class GlobalAvgPool(nnx.Module):
    """(B, H, W, C) -> (B, C): mean over the spatial axes."""

    def __call__(self, x):
        return jnp.mean(x, axis=(1, 2))


ACTIVATIONS: dict[str, type[nnx.Module]] = {
    "linear": Identity,
    "relu": ReLU,
    "tanh": Tanh,
    "hard_tanh": HardTanh,
}


def activation(name: str) -> nnx.Module:
    """A parameter-free activation module by name (``linear``, ``relu``, ``tanh``, ``hard_tanh``)."""
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise UserError(
            f"unknown activation {name!r}: use one of {', '.join(ACTIVATIONS)}"
        ) from None


# --------------------------------------------------------------------------
# Parametric layers
# --------------------------------------------------------------------------

# Layers whose kernels are "the" prunable weights: conv and dense.
LAYER_TYPES: tuple[type[nnx.Module], ...] = (nnx.Conv, nnx.Linear)


def is_layer(node: Any) -> bool:
    """True for conv / dense modules (the ones with names in a widths record)."""
    return isinstance(node, LAYER_TYPES)


def out_features(layer: nnx.Module) -> int:
    """Output channels (conv) or features (dense) of a layer."""
    return int(layer.out_features)


@dataclasses.dataclass
class LayerFactory:
    """Makes conv / dense / BN layers with the model-wide dtype and conv settings.

    ``conv_fn`` replaces ``lax.conv_general_dilated`` inside every ``nnx.Conv``
    (same signature), so a faster convolution formulation can be swapped in
    without touching the architectures.
    """

    rngs: nnx.Rngs
    dtype: Any = None
    param_dtype: Any = jnp.float32
    conv_fn: Callable[..., Any] | None = None

    def conv(self, cin: int, cout: int, kernel: int, stride: int = 1,
             padding: int = 0, *, bias: bool = False) -> nnx.Conv:
        extra = {"conv_general_dilated": self.conv_fn or conv_general_dilated}
        return nnx.Conv(
            cin, cout, (kernel, kernel), strides=(stride, stride),
            padding=((padding, padding), (padding, padding)), use_bias=bias,
            dtype=self.dtype, param_dtype=self.param_dtype, rngs=self.rngs, **extra,
        )

    def dense(self, fin: int, fout: int, *, bias: bool = True) -> nnx.Linear:
        return nnx.Linear(fin, fout, use_bias=bias, dtype=self.dtype,
                          param_dtype=self.param_dtype, rngs=self.rngs)

    def bn(self, features: int) -> nnx.BatchNorm:
        # momentum 0.9 here == momentum 0.1 in PyTorch (Flax keeps 0.9 of the old
        # running value, torch mixes in 0.1 of the batch). One known difference
        # remains: PyTorch updates running_var with the UNBIASED batch variance
        # (n / (n - 1) times larger), Flax with the biased one. Normalisation of
        # the batch itself uses the biased variance in both.
        bn = BatchNorm(features, momentum=0.9, epsilon=1e-5, dtype=self.dtype,
                       param_dtype=self.param_dtype, rngs=self.rngs)
        # Flax keeps the running statistics in float32 whatever param_dtype is: a float64 model would
        # normalise with float32 statistics (and warn on every train-mode update). Keep them at least float32
        # and as wide as the parameters.
        stat_dtype = jnp.promote_types(self.param_dtype, jnp.float32)
        if stat_dtype != jnp.float32:
            bn.mean = nnx.BatchStat(bn.mean[...].astype(stat_dtype))
            bn.var = nnx.BatchStat(bn.var[...].astype(stat_dtype))
        return bn


# --------------------------------------------------------------------------
# Traversal in definition order
# --------------------------------------------------------------------------


def _definition_walk(node: nnx.Module, prefix: tuple = ()) -> Iterator[tuple[tuple, nnx.Module]]:
    """Submodules in attribute-insertion order (valid only before any split/merge)."""
    if isinstance(node, nnx.List):
        children = list(enumerate(node))
    else:
        children = [(k, v) for k, v in vars(node).items() if not k.startswith("_")]
    for key, child in children:
        if isinstance(child, nnx.Module):
            path = (*prefix, key)
            yield path, child
            yield from _definition_walk(child, path)


def dotted(path: Sequence[Any]) -> str:
    """``("layer2", 3, "conv1")`` -> ``"layer2.3.conv1"``."""
    return ".".join(str(p) for p in path)


def record_module_order(model: nnx.Module) -> None:
    """Store the definition order of all submodules as a static tuple of names.

    Call at the end of a top-level model's ``__init__``. It survives
    ``nnx.split``/``merge``/``eval_shape``/``jit`` (static graph data), which
    otherwise rebuild attributes in sorted order (``fc`` before ``layer1``).
    """
    model.module_order = tuple(dotted(p) for p, _ in _definition_walk(model))


def iter_modules(model: nnx.Module) -> list[tuple[str, nnx.Module]]:
    """All submodules as (dotted name, module), in forward (definition) order.

    Uses ``model.module_order`` when present; otherwise (a block taken out of a
    model, a foreign module) falls back to NNX's graph order, which is sorted by
    attribute name.
    """
    found = {dotted(p): n for p, n in nnx.iter_graph(model)
             if p and isinstance(n, nnx.Module)}
    order = getattr(model, "module_order", None)
    if not order:
        return sorted(found.items(), key=lambda kv: _sort_key(kv[0]))
    pos = {name: i for i, name in enumerate(order)}
    big = len(order)
    return sorted(found.items(), key=lambda kv: (pos.get(kv[0], big), _sort_key(kv[0])))


def _sort_key(name: str):
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in name.split("."))


def iter_layers(model: nnx.Module) -> list[tuple[str, nnx.Module]]:
    """Conv / dense layers as (name, module), in forward (definition) order."""
    return [(n, m) for n, m in iter_modules(model) if is_layer(m)]


# --------------------------------------------------------------------------
# Widths: canonical widths, overrides and residual streams
# --------------------------------------------------------------------------


@dataclasses.dataclass
class WidthsPlan:
    """What an architecture declares before building: its canonical widths (in
    definition order), the classifier (fixed), and its residual streams: groups
    of layers whose outputs are summed and must therefore share one width.
    """

    canonical: dict[str, int]
    classifier: str
    streams: list[list[str]] = dataclasses.field(default_factory=list)


def _fmt(names: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", … ({len(names) - limit} more)" if len(names) > limit else "")


def resolve_widths(arch: str, plan: WidthsPlan, widths: Mapping[str, int] | None) -> dict[str, int]:
    """Canonical widths overridden by ``widths``, validated.

    Raises UserError for unknown names, non-positive widths, a changed
    classifier, disagreeing members of a residual stream.
    """
    out = dict(plan.canonical)
    if not widths:
        return out
    if not isinstance(widths, Mapping):
        raise UserError(f"{arch}: widths must be a mapping from layer name to int, "
                        f"got {type(widths).__name__}")
    unknown = [k for k in widths if k not in out]
    if unknown:
        hint = difflib.get_close_matches(str(unknown[0]), list(out), n=1)
        raise UserError(
            f"{arch} has no conv/dense layer named {_fmt([str(u) for u in unknown])}"
            + (f" (did you mean {hint[0]!r}?)" if hint else "")
            + f"; known layers: {_fmt(list(out), 8)}"
        )
    for name, w in widths.items():
        try:
            w = operator.index(w)  # ints and numpy integers; not floats or strings
        except TypeError:
            w = None
        if w is None or isinstance(widths[name], bool) or w < 1:
            raise UserError(f"{arch}: width of {name!r} must be a positive integer, "
                            f"got {widths[name]!r}")
        if name == plan.classifier and w != out[name]:
            raise UserError(
                f"{arch}: the classifier {name!r} has {out[name]} outputs and cannot be "
                f"re-sized through widths; pass num_classes instead"
            )
        out[name] = w

    for members in plan.streams:
        values = [out[m] for m in members]
        if len(set(values)) > 1:
            common = collections.Counter(values).most_common(1)[0][0]
            bad = [f"{m}={out[m]}" for m in members if out[m] != common]
            raise UserError(
                f"{arch}: layers whose outputs meet in a residual add must share one width, "
                f"but {_fmt(bad)} {'differs' if len(bad) == 1 else 'differ'} from the other "
                f"{values.count(common)} member(s) of the stream ({_fmt(members, 3)}) at {common}: "
                f"give every member the same width"
            )
    return out


# --------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------


def _shape_str(shape: Sequence[int]) -> str:
    return "(B, " + ", ".join(str(s) for s in shape) + ")"


def residual_stages(blocks, width: int, build) -> tuple[list[Sequential], int]:
    """The stages of a ResNet: ``build(prefix, in_width, *layout)`` makes the block ``layer{s}.{i}`` of
    each ``(s, i, *layout)`` in ``blocks`` and returns it with its output width; the blocks of a stage
    form one :class:`Sequential`, in order. Returns the stages and the width after the last."""
    stages: dict[int, list] = {}
    for s, i, *layout in blocks:
        block, width = build(f"layer{s}.{i}", width, *layout)
        stages.setdefault(s, []).append(block)
    return [Sequential(stages[s]) for s in sorted(stages)], width


def finish_model(model: nnx.Module, arch: str, input_shape: Sequence[int], num_classes: int,
                 plan: WidthsPlan) -> None:
    """The zoo's static attributes (arch, input shape, classes, residual streams) and the module order."""
    model.arch = arch
    model.input_shape = tuple(input_shape)
    model.num_classes = num_classes
    model.streams = tuple(tuple(m) for m in plan.streams)
    record_module_order(model)


def check_image_input(arch: str, x, channels: int, min_hw: int = 1) -> None:
    """NHWC rank-4 input with the right channel count (spatial size is free)."""
    if x.ndim != 4 or x.shape[-1] != channels:
        got = _shape_str(x.shape[1:]) if x.ndim >= 1 else str(x.shape)
        raise UserError(
            f"{arch} expects NHWC inputs of shape (B, H, W, {channels}), got {got}: "
            f"transpose NCHW data to NHWC, or pass input_shape for other channel counts"
        )
    if x.shape[1] < min_hw or x.shape[2] < min_hw:
        raise UserError(
            f"{arch} needs inputs of at least {min_hw}x{min_hw} pixels, got "
            f"{x.shape[1]}x{x.shape[2]}: resize the data"
        )


def check_exact_input(arch: str, x, expected: Sequence[int]) -> None:
    """The per-sample shape must equal ``expected`` (flattening models)."""
    if tuple(x.shape[1:]) != tuple(expected):
        raise UserError(
            f"{arch} expects inputs of shape {_shape_str(expected)}, got "
            f"{_shape_str(x.shape[1:])}: resize the data or pass input_shape"
        )
