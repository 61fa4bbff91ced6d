"""Architectures by name: :func:`create_model`, :func:`model_spec`, :data:`MODEL_NAMES`.

=====================  ===============  =======  ======================================
name                   input (H, W, C)  classes  notes
=====================  ===============  =======  ======================================
mlp                    (32, 32, 1)      10       arch_kwargs depth=7, width=100,
                                                 act="linear", input_dim, use_bias
mlp_7_linear           (32, 32, 1)      10       1024 -> 100 x 5 -> 10, identity act
mlp_7_relu             (32, 32, 1)      10       same, ReLU
lenet_300_100          (28, 28, 1)      10       784 -> 300 -> 100 -> 10, ReLU
lenet5                 (32, 32, 1)      10       LeNet-5 of the reference code
resnet8 … resnet110    (32, 32, 3)      10       CIFAR ResNets, option A shortcut
resnet8_B … _B         (32, 32, 3)      10       option B (1x1 conv + BN) shortcut
vgg11, vgg13, vgg16    (32, 32, 3)      10       CIFAR VGG-BN (reference default)
vgg19                  (32, 32, 3)      100      CIFAR-100: the TPP paper's VGG19 setting
resnet18/34/50         (224, 224, 3)    1000     torchvision layout, ImageNet
=====================  ===============  =======  ======================================

``input_shape`` overrides the default: for the MLPs it sets the input size
(prod(input_shape) features), for LeNet-5 the flatten size before ``fc1``, for
the ConvNets (global pooling) the input channels; spatial size is then free.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from isotpp.errors import UserError
from isotpp.models.init import SCHEMES, apply_init
from isotpp.models.lenet import LeNet5
from isotpp.models.mlp import MLP
from isotpp.models.resnet_cifar import CifarResNet
from isotpp.models.resnet_imagenet import ResNet
from isotpp.models.vgg import VGG


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Default data layout of an architecture: per-sample input (H, W, C) and
    number of classes; ``family`` is one of mlp, lenet, resnet_cifar, vgg,
    resnet_imagenet."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    family: str


@dataclasses.dataclass(frozen=True)
class _Entry:
    spec: ModelSpec
    # build(num_classes, input_shape | None, widths, common, **arch_kwargs); common
    # holds rngs, dtype, param_dtype, conv_fn.
    build: Callable[..., nnx.Module]
    kwargs: tuple[str, ...] = ()  # accepted arch_kwargs


_REGISTRY: dict[str, _Entry] = {}


def _register(name, input_shape, num_classes, family, build, kwargs=()):
    _REGISTRY[name] = _Entry(ModelSpec(name, input_shape, num_classes, family), build, tuple(kwargs))


def _mlp(name, default_shape, depth, width, act, hidden=None):
    def build(num_classes, input_shape, widths, common, *, depth=depth, width=width,
              act=act, input_dim=None, use_bias=True):
        common.pop("conv_fn")
        if input_dim is None:
            input_shape = input_shape or default_shape
            input_dim = math.prod(input_shape)
        elif input_shape is None:
            input_shape = (input_dim,)
        # the default hidden widths of a named MLP (lenet_300_100), then the user's
        w = dict(hidden or {}) | dict(widths or {})
        return MLP(input_dim, width, depth, num_classes, act, use_bias, w or None,
                   input_shape=input_shape, arch=name, **common)

    return build


def _lenet5(num_classes, input_shape, widths, common):
    return LeNet5(num_classes, widths, input_shape=input_shape or (32, 32, 1), arch="lenet5", **common)


def _cifar_resnet(depth, option, name):
    def build(num_classes, input_shape, widths, common):
        return CifarResNet(depth, num_classes, option, widths, input_shape=input_shape or (32, 32, 3),
                           arch=name, **common)

    return build


def _vgg(depth):
    def build(num_classes, input_shape, widths, common, *, use_bn=True):
        return VGG(depth, num_classes, widths, use_bn=use_bn, input_shape=input_shape or (32, 32, 3),
                   arch=f"vgg{depth}", **common)

    return build


def _imagenet_resnet(depth):
    def build(num_classes, input_shape, widths, common):
        return ResNet(depth, num_classes, widths, input_shape=input_shape or (224, 224, 3),
                      arch=f"resnet{depth}", **common)

    return build


for _name, _shape, _depth, _width, _act, _hidden in (
    ("mlp", (32, 32, 1), 7, 100, "linear", None),
    ("mlp_7_linear", (32, 32, 1), 7, 100, "linear", None),
    ("mlp_7_relu", (32, 32, 1), 7, 100, "relu", None),
    ("lenet_300_100", (28, 28, 1), 3, 300, "relu", {"net.2": 100}),
):
    _register(_name, _shape, 10, "mlp", _mlp(_name, _shape, _depth, _width, _act, _hidden),
              ("depth", "width", "act", "input_dim", "use_bias") if _name == "mlp" else ("use_bias",))
_register("lenet5", (32, 32, 1), 10, "lenet", _lenet5)
for _depth in (8, 20, 32, 44, 56, 110):
    _register(f"resnet{_depth}", (32, 32, 3), 10, "resnet_cifar", _cifar_resnet(_depth, "A", f"resnet{_depth}"))
for _depth in (8, 20, 32, 44, 56, 110):
    _register(f"resnet{_depth}_B", (32, 32, 3), 10, "resnet_cifar",
              _cifar_resnet(_depth, "B", f"resnet{_depth}_B"))
for _depth in (11, 13, 16, 19):
    # vgg19 defaults to CIFAR-100 (the TPP paper's VGG19 setting); the others to CIFAR-10.
    _register(f"vgg{_depth}", (32, 32, 3), 100 if _depth == 19 else 10, "vgg", _vgg(_depth), ("use_bn",))
for _depth in (18, 34, 50):
    _register(f"resnet{_depth}", (224, 224, 3), 1000, "resnet_imagenet", _imagenet_resnet(_depth))

MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def _entry(name: str) -> _Entry:
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise UserError(f"unknown model {name!r}: use one of {', '.join(MODEL_NAMES)}") from None


def _check_kwargs(name: str, entry: _Entry, arch_kwargs: Mapping[str, Any]) -> None:
    bad = sorted(set(arch_kwargs) - set(entry.kwargs))
    if bad:
        accepted = ", ".join(entry.kwargs) or "none"
        raise UserError(f"{name} does not take {', '.join(bad)} (accepted arch_kwargs: {accepted})")


def model_spec(name: str, **arch_kwargs: Any) -> ModelSpec:
    """The default input shape (H, W, C), class count and family of ``name``.

    ``arch_kwargs`` as for :func:`create_model`; only ``input_dim`` of ``mlp``
    changes the spec: an input_dim other than the default's 1024 gives
    ``input_shape == (input_dim,)``.
    """
    entry = _entry(name)
    _check_kwargs(name, entry, arch_kwargs)
    spec = entry.spec
    dim = arch_kwargs.get("input_dim")
    if dim is not None and dim != math.prod(spec.input_shape):
        spec = dataclasses.replace(spec, input_shape=(int(dim),))
    return spec


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    input_shape: Sequence[int] | None = None,
    widths: Mapping[str, int] | None = None,
    init: str = "default",
    sigma_w: float = 1.0,
    seed: int = 0,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    conv_fn: Callable[..., Any] | None = None,
    **arch_kwargs: Any,
) -> nnx.Module:
    """Build architecture ``name``.

    ``widths`` maps conv/dense layer names to output channels (see
    :func:`isotpp.models.widths_of`); ``init`` is a scheme of
    :func:`isotpp.models.apply_init` (``sigma_w`` for gaussian / orthogonal /
    delta-orthogonal); ``seed`` seeds both Flax's initialisers and ``init``.
    ``dtype`` (computation) and ``param_dtype`` go to every layer; ``conv_fn``
    replaces ``lax.conv_general_dilated`` in every conv. Works under
    ``nnx.eval_shape`` to get shapes without allocating parameters.

    >>> from isotpp.models import layer_names
    >>> net = create_model("mlp", depth=3, width=32, act="relu", input_dim=64, num_classes=10, init="kaiming")
    >>> layer_names(net), net.input_shape
    (['net.0', 'net.2', 'net.4'], (64,))
    """
    entry = _entry(name)
    spec = entry.spec
    _check_kwargs(name, entry, arch_kwargs)
    if init not in SCHEMES:
        raise UserError(f"unknown init scheme {init!r}: use one of {', '.join(SCHEMES)}")
    if num_classes is None:
        num_classes = spec.num_classes
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise UserError(f"{name}: num_classes must be a positive integer, got {num_classes!r}")
    if input_shape is not None:
        raw = input_shape
        try:
            input_shape = tuple(operator.index(d) for d in raw)
        except TypeError:
            input_shape = ()
        if not input_shape or min(input_shape) < 1:
            raise UserError(f"{name}: input_shape must be positive integers per sample, got {raw!r}")
        if spec.family != "mlp" and len(input_shape) != 3:
            raise UserError(f"{name}: input_shape must be (H, W, C) per sample, got {input_shape}")

    def build():
        common = {"rngs": nnx.Rngs(params=seed), "dtype": dtype, "param_dtype": param_dtype,
                  "conv_fn": conv_fn}
        return entry.build(num_classes, input_shape, widths, common, **arch_kwargs)

    config = BuildConfig(name, num_classes, tuple(input_shape) if input_shape is not None else None,
                         tuple(sorted(arch_kwargs.items())))
    if init == "default":
        model = build()
        model.build_config = config
        return model
    # Every parameter and statistic is overwritten by apply_init, so skip Flax's
    # per-layer draws (one compiled random kernel per distinct shape, seconds
    # on CPU): build the structure abstractly and fill it in one compiled draw.
    model = nnx.eval_shape(build)
    apply_init(model, init, sigma_w=sigma_w, key=jax.random.fold_in(jax.random.key(seed), 1))
    if any(isinstance(v, jax.ShapeDtypeStruct) for v in jax.tree.leaves(nnx.state(model))):
        raise AssertionError(f"{name}: init {init!r} left variables uninitialised")
    model.build_config = config
    return model


@dataclasses.dataclass(frozen=True)
class BuildConfig:
    """What :func:`create_model` needs to rebuild an architecture (widths aside).

    Stored on every model as ``model.build_config``; with the widths record it
    is all a checkpoint needs to recreate the structure of a pruned network.
    """

    name: str
    num_classes: int
    input_shape: tuple[int, ...] | None
    arch_kwargs: tuple[tuple[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"arch": self.name, "num_classes": self.num_classes,
                "input_shape": list(self.input_shape) if self.input_shape is not None else None,
                "arch_kwargs": dict(self.arch_kwargs)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BuildConfig:
        try:
            shape = d.get("input_shape")
            return cls(str(d["arch"]), int(d["num_classes"]), tuple(shape) if shape is not None else None,
                       tuple(sorted(dict(d.get("arch_kwargs") or {}).items())))
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"model description {dict(d)!r} is incomplete ({e}): regenerate the file") from None

    def create(self, *, widths: Mapping[str, int] | None = None, abstract: bool = False, **kwargs) -> nnx.Module:
        """The architecture with these widths; ``abstract`` builds shapes only (to be filled)."""
        def make():
            return create_model(self.name, num_classes=self.num_classes, input_shape=self.input_shape,
                                widths=widths, **dict(self.arch_kwargs), **kwargs)

        if not abstract:
            return make()
        model = nnx.eval_shape(make)
        model.build_config = self
        return model
