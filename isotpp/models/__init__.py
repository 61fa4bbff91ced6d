"""The model zoo: architectures by name, layer names, widths and initialisers.

A model is an NNX module built from an architecture name and a *widths* record
(output channels per conv/dense layer, by layer name); the same name and widths
give the same structure, so ``create_model(name, widths=widths_of(m))``
rebuilds any pruned network. Layer names are dotted NNX graph paths that mirror
the PyTorch reference code (``layer2.3.conv1``, ``features.0``, ``net.12``),
so glob patterns and torchvision state-dict keys map 1:1. Inputs are NHWC.
"""

from __future__ import annotations

import math

import jax
from flax import nnx

from isotpp.errors import UserError
from isotpp.models.init import (
    ACT_GAIN,
    INIT_SCHEMES,
    SCHEMES,
    apply_init,
    orthogonal_matrix,
)
from isotpp.models.layers import (
    Sequential,
    is_layer,
    iter_layers,
    iter_modules,
    out_features,
)
from isotpp.models.ops import BatchNorm
from isotpp.models.zoo import (
    MODEL_NAMES,
    BuildConfig,
    ModelSpec,
    create_model,
    model_spec,
)

__all__ = [
    "ACT_GAIN",
    "BatchNorm",
    "INIT_SCHEMES",
    "MODEL_NAMES",
    "SCHEMES",
    "BuildConfig",
    "ModelSpec",
    "Sequential",
    "apply_init",
    "count_params",
    "create_model",
    "get_layer",
    "is_layer",
    "iter_layers",
    "iter_modules",
    "layer_names",
    "model_spec",
    "orthogonal_matrix",
    "param_count_by_layer",
    "residual_streams",
    "widths_of",
]


def layer_names(model: nnx.Module) -> list[str]:
    """Names of the conv / dense layers in forward (definition) order."""
    return [n for n, _ in iter_layers(model)]


def get_layer(model: nnx.Module, name: str) -> nnx.Module:
    """The submodule at dotted path ``name`` (``"layer2.3.conv1"``)."""
    node = model
    for part in name.split("."):
        try:
            node = node[int(part)] if isinstance(node, nnx.List) else getattr(node, part)
        except (AttributeError, IndexError, ValueError):
            node = None
        if not isinstance(node, nnx.Module):
            known = layer_names(model)
            arch = getattr(model, "arch", type(model).__name__)
            raise UserError(f"{arch} has no layer {name!r}; its conv/dense layers are "
                            f"{', '.join(known[:6])}{', …' if len(known) > 6 else ''}")
    return node


def _size(v) -> int:
    return math.prod(v.shape)


def count_params(model: nnx.Module) -> int:
    """Number of parameters (``nnx.Param`` only: BN running statistics excluded).
    Works on abstract models from ``nnx.eval_shape``."""
    return sum(_size(v) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))


def param_count_by_layer(model: nnx.Module) -> dict[str, int]:
    """Parameters held directly by each module that has any (conv, dense and
    BatchNorm layers), by name, in forward order; the values sum to
    :func:`count_params`."""
    out = {}
    for name, m in iter_modules(model):
        n = sum(_size(v) for v in vars(m).values() if isinstance(v, nnx.Param))
        if n:
            out[name] = n
    return out


def widths_of(model: nnx.Module) -> dict[str, int]:
    """Output channels / features of every conv and dense layer, by name, in
    forward order: ``create_model(name, widths=widths_of(m))`` rebuilds ``m``'s
    structure."""
    return {n: out_features(m) for n, m in iter_layers(model)}


def residual_streams(model: nnx.Module) -> tuple[tuple[str, ...], ...]:
    """Groups of layers whose outputs meet in residual adds and so must keep one
    channel set (ResNets); singletons are included, () for plain networks."""
    return tuple(getattr(model, "streams", ()))
