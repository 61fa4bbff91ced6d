"""What a network costs, before and after structured pruning: parameters and FLOPs.

Counting convention, that of the TPP reference (MingSun-Tse/TPP) and of its
paper's tables:

* **parameters** = every trainable parameter (``nnx.Param``): conv and dense
  weights and biases plus BatchNorm scale and bias; BN running statistics are
  not parameters. This is the reference's ``get_n_params``
  (``smilelogging/utils.py`` lines 111-114: ``model.parameters()`` with
  ``requires_grad``), and it is the count that reproduces the sparsities in
  the header of the TPP paper's Table 1 (31.14 % and 49.82 % for ResNet56 at
  0.3 and 0.5; counting conv/fc only gives 31.21 % and 49.94 %). The newer
  ``get_n_params_`` (lines 117-126, logged by ``main.py`` line 336) counts
  conv/dense weights and biases only (no BN); :attr:`Cost.params_conv_fc`
  gives that number.
* **FLOPs** = multiply-adds (MACs) of the conv and dense layers for ONE
  sample at the model's input shape: a conv costs its kernel size times its
  output positions (kh·kw·cin/groups·cout·H_out·W_out), a dense layer its
  kernel size per output position. Biases, BatchNorm, activations, pooling
  and residual adds are not counted. This is ``get_n_flops_``
  (``smilelogging/utils.py`` lines 235-290, used by ``main.py`` lines
  336-415) except for its final ``count_adds`` doubling: the reference (and
  the paper's "FLOPs: 0.25G" for ResNet56) counts a multiply and an add per
  MAC, i.e. 2 × our 0.125 G; :attr:`Cost.flops_x2` gives that figure.
  Speedups are the same either way. (For grouped convs the reference divides
  the full kernel size by ``groups`` once more; isotpp's zoo has none.)
* **sparsity** = 1 − params_after / params_before and **speedup** =
  flops_before / flops_after (``main.py`` lines 409-415: ``ratio_param`` and
  ``speedup_ratio = 1 / (1 - ratio_flops)``).

Published numbers this reproduces (tests/test_cost.py). ResNet56 with
``*layer*.conv1`` (L1's ceil counts: 11/22/44, 8/16/32, 4/9/19, 1/3/6 and
1/1/3 filters kept per stage at 0.3 / 0.5 / 0.7 / 0.9 / 0.95): the exact
counts give 31.14 %/1.45× and 49.82 %/1.99×, the paper's Table 1 header at
0.3 and 0.5, then 70.58 %/3.59×, 90.45 %/11.58× and 95.18 %/19.85×. The
header's last three columns (70.57 %/3.59×, 90.39 %/11.41×, 95.19 %/19.31×)
were computed from the counts rounded to three decimals in M parameters and
G FLOPs (2 × MACs, as the reference logs them): 0.251 M / 0.070 G, 0.082 M /
0.022 G and 0.041 M / 0.013 G against 0.853 M / 0.251 G give exactly those
numbers, and the same rounding gives all five published speedups and four of
the five sparsities (0.3 would read 31.18 %). No choice of per-stage widths
gives them under exact counting. :func:`as_published` computes this
convention; ``isotpp prune --dry-run`` prints both, so every pair of the
header appears in its output. ResNet50 on ImageNet with the reference
README's four ``stage_pr`` settings gives 1.49× / 2.31× / 2.56× / 3.06×
(Table 2) both ways.

Costs are structural: they depend on layer widths only (pruned channels are
removed, not counted as zeros), so everything here runs on abstract models
(``nnx.eval_shape``) and never materialises a weight. Output sizes come from
tracing the forward pass abstractly with each layer's convolution /
dot-product function wrapped to record the shapes it sees. A pruned network
is rebuilt abstractly at its new widths and counted with the output
positions traced for the unpruned one (widths never change them), so a dry
run traces each architecture once.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from isotpp.errors import UserError
from isotpp.models import count_params, iter_layers, widths_of
from isotpp.pruning.groups import channel_groups, resolve_ratios
from isotpp.pruning.plan import n_pruned

# The TPP paper computes its tables' sparsity and speedup from counts rounded to this many
# decimals, in millions of parameters and GFLOPs (see the module docstring).
PUBLISHED_DECIMALS = 3


@dataclasses.dataclass(frozen=True)
class LayerCost:
    """One conv / dense layer: its parameters (weights + bias), MACs per sample,
    the shape of its output for one sample and its output positions (H_out·W_out
    for a conv, 1 for a dense layer on vectors; summed over calls), so that
    ``flops == kernel size × positions``."""

    kind: str  # "conv" or "dense"
    params: int
    flops: int
    out_shape: tuple[int, ...]
    positions: int


@dataclasses.dataclass(frozen=True)
class Cost:
    """Parameters and FLOPs (multiply-adds) of a model for one sample."""

    params: int  # every nnx.Param: conv/dense weights and biases, BatchNorm scale and bias
    flops: int  # conv/dense multiply-adds per sample
    params_conv_fc: int  # conv/dense weights and biases only (the reference's get_n_params_)
    input_shape: tuple[int, ...]
    layers: Mapping[str, LayerCost]

    @property
    def flops_x2(self) -> int:
        """The reference's FLOPs (``get_n_flops_`` with ``count_adds=True``): 2 × MACs."""
        return 2 * self.flops

    def as_dict(self) -> dict[str, Any]:
        return {"params": self.params, "flops": self.flops, "params_conv_fc": self.params_conv_fc,
                "input_shape": list(self.input_shape),
                "layers": {n: dataclasses.asdict(c) for n, c in self.layers.items()}}


@dataclasses.dataclass(frozen=True)
class PlanCost:
    """A model's cost before and after pruning to narrower widths.

    ``layers`` holds only the layers whose width changes: ``{name: (before, after)}``.
    """

    params: int
    params_pruned: int
    flops: int
    flops_pruned: int
    layers: Mapping[str, tuple[int, int]]
    before: Cost
    after: Cost

    @property
    def sparsity(self) -> float:
        return 1.0 - self.params_pruned / self.params

    @property
    def speedup(self) -> float:
        return self.flops / self.flops_pruned

    def as_published(self, decimals: int = PUBLISHED_DECIMALS) -> dict[str, Any]:
        """This plan's sparsity and speedup as the TPP paper's tables compute them: see
        :func:`as_published`."""
        return as_published(self.params, self.params_pruned, self.flops, self.flops_pruned, decimals)

    def as_dict(self) -> dict[str, Any]:
        """The JSON record of ``isotpp prune --dry-run`` (its stable contract): exact counts."""
        return {"params": self.params, "params_pruned": self.params_pruned, "sparsity": self.sparsity,
                "flops": self.flops, "flops_pruned": self.flops_pruned, "speedup": self.speedup,
                "layers": {n: [b, a] for n, (b, a) in self.layers.items()}}


def as_published(params: int, params_pruned: int, flops: int, flops_pruned: int,
                 decimals: int = PUBLISHED_DECIMALS) -> dict[str, Any]:
    """Sparsity and speedup computed, as the TPP paper's tables are, from counts rounded to
    ``decimals`` places in millions of parameters and in GFLOPs (the reference's 2 × MACs;
    ``flops`` are MACs here).

    This is what the paper's Table 1 header shows at 0.7, 0.9 and 0.95 (0.251 M / 0.070 G,
    0.082 M / 0.022 G and 0.041 M / 0.013 G against 0.853 M / 0.251 G); see the module
    docstring. ``sparsity`` / ``speedup`` are ``None`` when a rounded count is 0 (a model
    too small for this precision)."""
    params_m = round(params / 1e6, decimals)
    params_pruned_m = round(params_pruned / 1e6, decimals)
    flops_g = round(2 * flops / 1e9, decimals)
    flops_pruned_g = round(2 * flops_pruned / 1e9, decimals)
    return {"decimals": decimals, "params_m": params_m, "params_pruned_m": params_pruned_m,
            "flops_g": flops_g, "flops_pruned_g": flops_pruned_g,
            "sparsity": 1.0 - params_pruned_m / params_m if params_m else None,
            "speedup": flops_g / flops_pruned_g if flops_pruned_g else None}


# --------------------------------------------------------------------------
# Counting.
# --------------------------------------------------------------------------


def _size(v) -> int:
    return math.prod(v.shape)


def _own_params(layer: nnx.Module) -> int:
    return sum(_size(v) for v in vars(layer).values() if isinstance(v, nnx.Param))


def _recorder(name: str, fn, seen: dict[str, list[tuple[int, ...]]], rhs_arg: int):
    """Wrap a conv / dot_general function to record (kernel shape, output shape) per call."""

    def wrapped(*args, **kwargs):
        out = fn(*args, **kwargs)
        seen.setdefault(name, []).append((tuple(args[rhs_arg].shape), tuple(out.shape)))
        return out

    return wrapped


def _trace_layers(model: nnx.Module, input_shape: Sequence[int]) -> dict[str, list]:
    """Per conv/dense layer, the (kernel shape, output shape) of every call in
    one abstract forward pass of a batch of one."""

    graphdef, state = nnx.split(model)
    seen: dict[str, list] = {}

    def forward(state, x):
        # a fresh copy: the wrappers never touch the caller's model
        m = nnx.merge(graphdef, state)
        for name, layer in iter_layers(m):
            if isinstance(layer, nnx.Conv):
                layer.conv_general_dilated = _recorder(name, layer.conv_general_dilated, seen, 1)
            elif isinstance(layer, nnx.Linear):
                layer.dot_general = _recorder(name, layer.dot_general or jax.lax.dot_general, seen, 1)
        return m(x)

    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    try:
        jax.eval_shape(forward, state, x)
    except UserError:
        raise
    except (TypeError, ValueError) as e:
        arch = getattr(model, "arch", type(model).__name__)
        raise UserError(f"{arch} cannot run on inputs of shape {tuple(input_shape)} ({e}): "
                        "pass the model's per-sample input shape (H, W, C)") from None
    return seen


def count_cost(model: nnx.Module, input_shape: Sequence[int] | None = None) -> Cost:
    """Parameters and multiply-adds of ``model`` for one sample (see the module doc).

    ``input_shape`` is per sample (H, W, C), default ``model.input_shape``.
    Works on abstract models (``nnx.eval_shape``); nothing is computed on
    device. A layer called several times counts every call; one never called
    costs no FLOPs.
    """

    input_shape = _input_shape(model, input_shape)
    seen = _trace_layers(model, input_shape)
    layers = {}
    for name, layer in iter_layers(model):
        calls = seen.get(name, [])
        # a conv's kernel holds kh·kw·cin/groups·cout weights, each used once per
        # output position; a dense kernel likewise, once per leading (non-batch) position
        positions = sum(math.prod(out[1:-1]) for _, out in calls)
        out_shape = calls[-1][1][1:] if calls else ()
        if any(math.prod(k) != _size(layer.kernel) for k, _ in calls):
            raise AssertionError(f"{name}: the traced kernel is not the layer's kernel")
        layers[name] = _layer_cost(layer, positions, out_shape)
    return _total(model, input_shape, layers)


def _input_shape(model, input_shape) -> tuple[int, ...]:
    if input_shape is None:
        input_shape = getattr(model, "input_shape", None)
        if input_shape is None:
            raise UserError("the model has no input_shape: pass input_shape= (per sample, e.g. (32, 32, 3))")
    return tuple(int(d) for d in input_shape)


def _layer_cost(layer, positions: int, out_shape) -> LayerCost:
    return LayerCost("conv" if isinstance(layer, nnx.Conv) else "dense", _own_params(layer),
                     int(_size(layer.kernel) * positions), tuple(int(d) for d in out_shape), int(positions))


def _total(model, input_shape, layers) -> Cost:
    return Cost(
        params=count_params(model),
        flops=sum(c.flops for c in layers.values()),
        params_conv_fc=sum(c.params for c in layers.values()),
        input_shape=input_shape,
        layers=types.MappingProxyType(layers),
    )


def _narrowed_cost(model: nnx.Module, like: Cost) -> Cost:
    """Cost of ``model``, the architecture of ``like`` at other widths, without
    tracing it again: widths never change a layer's output positions (those
    depend on input size, kernel, stride and padding only), so each layer's
    FLOPs are its new kernel size times the positions traced for ``like``."""

    layers = {}
    for name, layer in iter_layers(model):
        ref = like.layers.get(name)
        if ref is None:
            raise AssertionError(f"{name} is not a layer of the unpruned architecture")
        out_shape = (*ref.out_shape[:-1], int(layer.out_features)) if ref.out_shape else ()
        layers[name] = _layer_cost(layer, ref.positions, out_shape)
    if set(layers) != set(like.layers):
        raise AssertionError("pruning changed the set of layers")
    return _total(model, like.input_shape, layers)


@functools.lru_cache(maxsize=32)
def _structure_cost(config, widths: tuple[tuple[str, int], ...], input_shape: tuple[int, ...]) -> Cost:
    # a build config and a widths record fix the structure, hence the cost
    return count_cost(config.create(widths=dict(widths), abstract=True), input_shape)


def _unpruned_cost(model, config, input_shape: tuple[int, ...]) -> Cost:
    try:
        hash(config)
    except TypeError:  # an unhashable arch kwarg: no caching
        return count_cost(model, input_shape)
    return _structure_cost(config, tuple(widths_of(model).items()), input_shape)


# --------------------------------------------------------------------------
# Pruned widths and their cost.
# --------------------------------------------------------------------------


def _groups(model, groups):
    return list(groups) if groups is not None else channel_groups(model)


def pruned_widths(model: nnx.Module, plan, groups=None) -> dict[str, int]:
    """Widths of every conv/dense layer after applying ``plan`` (its kept counts)."""

    by = {g.name: g for g in _groups(model, groups)}
    widths = widths_of(model)
    for name, size in plan.sizes.items():
        g = by.get(name)
        if g is None:
            raise UserError(f"plan names group {name!r}, which this model does not have: "
                            "was it made for another model?")
        if g.size != size:
            raise UserError(f"plan expects {size} channels in {name}, the model has {g.size}")
        for layer in g.layers:
            widths[layer] = len(plan.kept(name))
    return widths


def widths_after(model: nnx.Module, ratios: Mapping[str, float] | str, skip: Sequence[str] = (),
                 groups=None) -> dict[str, int]:
    """Widths after pruning by glob ``ratios`` (the reference's ``stage_pr``) with
    ``skip`` patterns, without choosing which channels go: each group keeps
    ``n − n_pruned(ratio, n)`` (the count any selector, L1 included, prunes).
    Raises UserError for patterns that match nothing or would prune the
    classifier or a residual-stream conv."""

    groups = _groups(model, groups)
    per_group = resolve_ratios(groups, ratios, skip)
    widths = widths_of(model)
    for g in groups:
        if g.prunable:
            for layer in g.layers:
                widths[layer] = g.size - n_pruned(per_group[g.name], g.size)
    return widths


def widths_cost(model: nnx.Module, widths: Mapping[str, int],
                input_shape: Sequence[int] | None = None) -> PlanCost:
    """Cost of ``model`` and of the same architecture at ``widths``, built abstractly."""

    config = getattr(model, "build_config", None)
    if config is None:
        raise UserError("costs after pruning need a model built by isotpp.models.create_model")
    input_shape = _input_shape(model, input_shape)
    old = widths_of(model)
    before = _unpruned_cost(model, config, input_shape)
    after = _narrowed_cost(config.create(widths=dict(widths), abstract=True), before)
    changed = {n: (old[n], int(widths[n])) for n in old if n in widths and int(widths[n]) != old[n]}
    return PlanCost(before.params, after.params, before.flops, after.flops,
                    types.MappingProxyType(changed), before, after)


def plan_cost(model: nnx.Module, plan, input_shape: Sequence[int] | None = None) -> PlanCost:
    """Cost before and after ``plan`` (a :class:`isotpp.pruning.plan.Plan`). Only the
    kept counts matter: which channels are pruned does not change the cost."""
    return widths_cost(model, pruned_widths(model, plan), input_shape)


def ratios_cost(model: nnx.Module, ratios: Mapping[str, float] | str, skip: Sequence[str] = (),
                input_shape: Sequence[int] | None = None) -> PlanCost:
    """Cost before and after pruning by glob ``ratios`` (see :func:`widths_after`).

    LeNet-5 without half of conv1's six 5x5 filters, counted by hand: conv1
    loses 3 x (25 weights + 1 bias) and 28·28 x 75 multiply-adds, conv2 loses
    3 of its 6 input channels (16 x 3 x 25 = 1200 weights, 10·10 x 1200
    multiply-adds):

    >>> from isotpp.models import create_model
    >>> cost = ratios_cost(create_model("lenet5"), "conv1:0.5")
    >>> cost.params - cost.params_pruned, cost.flops - cost.flops_pruned
    (1278, 178800)
    """
    return widths_cost(model, widths_after(model, ratios, skip), input_shape)
