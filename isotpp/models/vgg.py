"""VGG with batch norm for CIFAR, laid out like the reference (model/vgg.py,
after EigenDamage), NHWC.

``features`` is a :class:`Sequential` with torch's indices: for every number
in the configuration a 3x3 conv (pad 1, no bias), a BatchNorm and a ReLU
(three indices), for every ``"M"`` a 2x2 max-pool (one index). VGG-19:
``features.0`` conv, ``features.1`` bn, ``features.2`` relu, ``features.3``
conv, …, ``features.6`` pool, … Then a global average pool (the reference's
``AvgPool2d(x.size(3))`` on the final 2x2 map) and one ``classifier``
Linear(512, num_classes). VGG-19 with 100 classes has 20,081,188 parameters
(BN scale and bias counted, running statistics not).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
from flax import nnx

from isotpp.errors import UserError
from isotpp.models.layers import (
    GlobalAvgPool,
    LayerFactory,
    MaxPool,
    ReLU,
    Sequential,
    WidthsPlan,
    check_image_input,
    record_module_order,
    resolve_widths,
)

CFG: dict[int, tuple] = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512),
    13: (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512),
    19: (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
         512, 512, 512, 512, "M", 512, 512, 512, 512),
}


def vgg_plan(cfg: Sequence, num_classes: int, use_bn: bool) -> WidthsPlan:
    canonical, idx = {}, 0
    for v in cfg:
        if v == "M":
            idx += 1
        else:
            canonical[f"features.{idx}"] = v
            idx += 3 if use_bn else 2
    canonical["classifier"] = num_classes
    return WidthsPlan(canonical, "classifier")


class VGG(nnx.Module):
    def __init__(
        self,
        depth: int = 19,
        num_classes: int = 100,
        widths: Mapping[str, int] | None = None,
        *,
        use_bn: bool = True,
        cfg: Sequence | None = None,
        input_shape: Sequence[int] = (32, 32, 3),
        arch: str | None = None,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        conv_fn=None,
        rngs: nnx.Rngs,
    ):
        arch = arch or f"vgg{depth}"
        if cfg is None:
            if depth not in CFG:
                raise UserError(f"{arch}: VGG depth must be one of {sorted(CFG)}, got {depth}")
            cfg = CFG[depth]
        w = resolve_widths(arch, vgg_plan(cfg, num_classes, use_bn), widths)

        make = LayerFactory(rngs, dtype, param_dtype, conv_fn)
        layers: list[nnx.Module] = []
        cin = input_shape[-1]
        for v in cfg:
            if v == "M":
                layers.append(MaxPool(2, 2))
                continue
            cout = w[f"features.{len(layers)}"]
            layers.append(make.conv(cin, cout, 3, 1, 1))
            if use_bn:
                layers.append(make.bn(cout))
            layers.append(ReLU())
            cin = cout
        self.features = Sequential(layers)
        self.avgpool = GlobalAvgPool()
        self.classifier = make.dense(cin, num_classes)

        self.arch = arch
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.min_hw = 2 ** sum(1 for v in cfg if v == "M")
        record_module_order(self)

    def __call__(self, x):
        if x.ndim != 4 or x.shape[-1] != self.input_shape[-1] or min(x.shape[1:3]) < self.min_hw:
            check_image_input(self.arch, x, self.input_shape[-1], self.min_hw)
        return self.classifier(self.avgpool(self.features(x)))
