"""ImageNet ResNets in the torchvision layout (v1.5: the stride of a
bottleneck sits on its 3x3 conv), NHWC.

``conv1`` (7x7, stride 2, pad 3, no bias) -> ``bn1`` -> ``relu`` -> ``maxpool``
(3x3, stride 2, pad 1) -> ``layer1..4`` -> ``avgpool`` (global) -> ``fc``.
BasicBlock: ``conv1`` (3x3, stride), ``bn1``, ``conv2`` (3x3), ``bn2``.
Bottleneck: ``conv1`` (1x1), ``bn1``, ``conv2`` (3x3, stride), ``bn2``,
``conv3`` (1x1, 4x wider), ``bn3``. The first block of a stage that changes
stride or width gets ``downsample.0`` (1x1 conv with the stride) and
``downsample.1`` (BN). Names therefore match torchvision's state-dict keys
(``layer1.0.downsample.0.weight`` <-> ``layer1.0.downsample.0 / kernel``).

Parameters: ResNet-18 11,689,512; ResNet-34 21,797,672; ResNet-50 25,557,032.

Residual streams (static ``streams``): per stage, the last conv of every block
(``conv2`` basic, ``conv3`` bottleneck) and ``downsample.0``; in ResNet-18/34
stage 1 has no downsample, so the stem ``conv1`` joins the stage-1 stream.
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
    finish_model,
    residual_stages,
    resolve_widths,
)

STAGE_PLANES = (64, 128, 256, 512)
CONFIGS: dict[int, tuple[str, tuple[int, ...]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


def _downsample(make: LayerFactory, cin: int, cout: int, stride: int) -> Sequential:
    return Sequential([make.conv(cin, cout, 1, stride, 0), make.bn(cout)])


class BasicBlock(nnx.Module):
    convs = ("conv1", "conv2")

    def __init__(self, make: LayerFactory, cin: int, w: Mapping[str, int], stride: int,
                 ds_width: int | None):
        self.conv1 = make.conv(cin, w["conv1"], 3, stride, 1)
        self.bn1 = make.bn(w["conv1"])
        self.relu = ReLU()
        self.conv2 = make.conv(w["conv1"], w["conv2"], 3, 1, 1)
        self.bn2 = make.bn(w["conv2"])
        self.downsample = None if ds_width is None else _downsample(make, cin, ds_width, stride)

    def __call__(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nnx.Module):
    convs = ("conv1", "conv2", "conv3")

    def __init__(self, make: LayerFactory, cin: int, w: Mapping[str, int], stride: int,
                 ds_width: int | None):
        self.conv1 = make.conv(cin, w["conv1"], 1, 1, 0)
        self.bn1 = make.bn(w["conv1"])
        self.conv2 = make.conv(w["conv1"], w["conv2"], 3, stride, 1)
        self.bn2 = make.bn(w["conv2"])
        self.conv3 = make.conv(w["conv2"], w["conv3"], 1, 1, 0)
        self.bn3 = make.bn(w["conv3"])
        self.relu = ReLU()
        self.downsample = None if ds_width is None else _downsample(make, cin, ds_width, stride)

    def __call__(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


def imagenet_plan(block: str, layers: Sequence[int], num_classes: int) -> tuple[WidthsPlan, list]:
    """Canonical widths, streams and the per-block layout (stride, has downsample)."""
    expansion = 4 if block == "bottleneck" else 1
    inner = ("conv1", "conv2", "conv3") if block == "bottleneck" else ("conv1", "conv2")
    canonical = {"conv1": 64}
    streams: list[list[str]] = []
    current = ["conv1"]
    blocks = []
    in_planes = 64
    for s, (planes, n) in enumerate(zip(STAGE_PLANES, layers), start=1):
        for i in range(n):
            stride = 2 if (s > 1 and i == 0) else 1
            p = f"layer{s}.{i}"
            for c in inner[:-1]:
                canonical[f"{p}.{c}"] = planes
            last = f"{p}.{inner[-1]}"
            canonical[last] = planes * expansion
            has_ds = stride != 1 or in_planes != planes * expansion
            if has_ds:
                canonical[f"{p}.downsample.0"] = planes * expansion
                streams.append(current)
                current = [f"{p}.downsample.0", last]
            else:
                current.append(last)
            blocks.append((s, i, stride, has_ds))
            in_planes = planes * expansion
    streams.append(current)
    canonical["fc"] = num_classes
    return WidthsPlan(canonical, "fc", streams), blocks


class ResNet(nnx.Module):
    def __init__(
        self,
        depth: int = 50,
        num_classes: int = 1000,
        widths: Mapping[str, int] | None = None,
        *,
        input_shape: Sequence[int] = (224, 224, 3),
        arch: str | None = None,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        conv_fn=None,
        rngs: nnx.Rngs,
    ):
        arch = arch or f"resnet{depth}"
        if depth not in CONFIGS:
            raise UserError(f"{arch}: ImageNet ResNet depth must be one of {sorted(CONFIGS)}, got {depth}")
        block, layers = CONFIGS[depth]
        plan, blocks = imagenet_plan(block, layers, num_classes)
        w = resolve_widths(arch, plan, widths)
        Block = Bottleneck if block == "bottleneck" else BasicBlock

        make = LayerFactory(rngs, dtype, param_dtype, conv_fn)
        self.conv1 = make.conv(input_shape[-1], w["conv1"], 7, 2, 3)
        self.bn1 = make.bn(w["conv1"])
        self.relu = ReLU()
        self.maxpool = MaxPool(3, 2, 1)
        def build(prefix, width, stride, has_ds):
            bw = {c: w[f"{prefix}.{c}"] for c in Block.convs}
            ds = w[f"{prefix}.downsample.0"] if has_ds else None
            return Block(make, width, bw, stride, ds), bw[Block.convs[-1]]

        (self.layer1, self.layer2, self.layer3, self.layer4), width = residual_stages(blocks, w["conv1"], build)
        self.avgpool = GlobalAvgPool()
        self.fc = make.dense(width, num_classes)
        self.block = block
        finish_model(self, arch, input_shape, num_classes, plan)

    def __call__(self, x):
        if x.ndim != 4 or x.shape[-1] != self.input_shape[-1]:
            check_image_input(self.arch, x, self.input_shape[-1])
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x))
