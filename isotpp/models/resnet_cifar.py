"""CIFAR ResNets (He et al. 2016, section 4.2) in the layout of the reference
(model/resnet_cifar10.py, after akamaster/pytorch_resnet_cifar10), NHWC.

``conv1 -> bn1 -> relu -> layer1 -> layer2 -> layer3 -> global mean -> linear``,
three stages of ``n = (depth - 2) / 6`` basic blocks with 16, 32, 64 channels;
stages 2 and 3 start with stride 2. A block is
``relu(bn2(conv2(relu(bn1(conv1(x))))) + downsample(x))``; convs are 3x3, pad 1,
without bias. The shortcut of a block that changes stride or width is

- option A (the paper's, default): parameter-free, ``x[:, ::s, ::s, :]`` then
  zero channels padded, ``(out - in) // 2`` before and the rest after. It is
  held as a fixed 0/1 channel map ``downsample.proj`` (in, out) — a
  :class:`~isotpp.models.layers.Constant`, not a parameter — so pruning either
  residual stream it joins can drop rows or columns of the map and keep the
  remaining channels where they were;
- option B: ``downsample.0`` = 1x1 conv with the stride, ``downsample.1`` = BN.

Parameters of ResNet-20/32/44/56/110: option A 269,722 / 464,154 / 658,586 /
853,018 / 1,727,962; option B 2,752 more (272,474 / … / 855,770 / 1,730,714).

Residual streams: the stem ``conv1`` and every ``layer1.*.conv2`` are summed
into one stream, likewise ``layer{2,3}.*.conv2`` (plus ``downsample.0`` in
option B); a stream's members must share one width. The model lists them in
the static attribute ``streams``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from isotpp.errors import UserError
from isotpp.models.layers import (
    Constant,
    GlobalAvgPool,
    Identity,
    LayerFactory,
    ReLU,
    Sequential,
    WidthsPlan,
    check_image_input,
    finish_model,
    residual_stages,
    resolve_widths,
)

STAGE_WIDTHS = (16, 32, 64)
class ZeroPadShortcut(nnx.Module):
    """Option-A shortcut: subsample spatially by ``stride``, place the channels by a fixed map.

    Fresh, the map puts input channel i at output ``(out - in) // 2 + i`` (the
    reference's zero padding; a narrowing map keeps the first ``out``
    channels). After pruning it is whatever surgery left: a 0/1 matrix with at
    most one 1 per row and column, applied exactly (x·1 + 0).
    """

    def __init__(self, stride: int, cin: int, cout: int, param_dtype: Any = jnp.float32):
        self.stride = stride
        self.proj = Constant(self.canonical_map(cin, cout, param_dtype))

    @staticmethod
    def canonical_map(cin: int, cout: int, dtype: Any = jnp.float32) -> jax.Array:
        before = max(0, (cout - cin) // 2)
        n = min(cin, cout)
        return jnp.zeros((cin, cout), dtype).at[jnp.arange(n), before + jnp.arange(n)].set(1.0)

    def init_constants(self) -> None:
        """Fill the map of an abstractly built model (see ``create_model``)."""
        cin, cout = self.proj.shape
        self.proj = Constant(self.canonical_map(cin, cout, self.proj.dtype))

    def __call__(self, x):
        s = self.stride
        if s != 1:
            x = x[:, ::s, ::s, :]
        proj = self.proj[...].astype(x.dtype)
        return jnp.einsum("bhwc,cd->bhwd", x, proj, precision=jax.lax.Precision.HIGHEST)


class BasicBlock(nnx.Module):
    def __init__(self, make: LayerFactory, cin: int, mid: int, cout: int, stride: int,
                 shortcut: str, ds_width: int | None = None):
        self.conv1 = make.conv(cin, mid, 3, stride, 1)
        self.bn1 = make.bn(mid)
        self.conv2 = make.conv(mid, cout, 3, 1, 1)
        self.bn2 = make.bn(cout)
        if shortcut == "B":
            self.downsample = Sequential([make.conv(cin, ds_width, 1, stride, 0), make.bn(ds_width)])
        elif shortcut == "A":
            self.downsample = ZeroPadShortcut(stride, cin, cout, make.param_dtype)
        else:
            self.downsample = Identity()
        self.relu = ReLU()

    def __call__(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.downsample(x))


def cifar_plan(num_blocks: int, option: str, num_classes: int) -> tuple[WidthsPlan, list]:
    """Canonical widths, streams and the per-block layout (stride, shortcut kind)."""
    canonical = {"conv1": STAGE_WIDTHS[0]}
    streams: list[list[str]] = []
    current = ["conv1"]
    blocks = []  # (stage, index, stride, shortcut kind)
    in_planes = STAGE_WIDTHS[0]
    for s, planes in enumerate(STAGE_WIDTHS, start=1):
        for i in range(num_blocks):
            stride = 2 if (s > 1 and i == 0) else 1
            p = f"layer{s}.{i}"
            canonical[f"{p}.conv1"] = planes
            canonical[f"{p}.conv2"] = planes
            kind = "id"
            if stride != 1 or in_planes != planes:
                kind = option
                streams.append(current)
                if option == "B":
                    canonical[f"{p}.downsample.0"] = planes
                    current = [f"{p}.downsample.0", f"{p}.conv2"]
                else:
                    current = [f"{p}.conv2"]
            else:
                current.append(f"{p}.conv2")
            blocks.append((s, i, stride, kind))
            in_planes = planes
    streams.append(current)
    canonical["linear"] = num_classes
    return WidthsPlan(canonical, "linear", streams), blocks


class CifarResNet(nnx.Module):
    def __init__(
        self,
        depth: int = 56,
        num_classes: int = 10,
        option: str = "A",
        widths: Mapping[str, int] | None = None,
        *,
        input_shape: Sequence[int] = (32, 32, 3),
        arch: str | None = None,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        conv_fn=None,
        rngs: nnx.Rngs,
    ):
        arch = arch or f"resnet{depth}" + ("_B" if option == "B" else "")
        if depth < 8 or (depth - 2) % 6:
            raise UserError(f"{arch}: CIFAR ResNet depth must be 6n + 2 (8, 20, 32, 44, 56, 110), got {depth}")
        if option not in ("A", "B"):
            raise UserError(f"{arch}: shortcut option must be 'A' or 'B', got {option!r}")
        plan, blocks = cifar_plan((depth - 2) // 6, option, num_classes)
        w = resolve_widths(arch, plan, widths)

        make = LayerFactory(rngs, dtype, param_dtype, conv_fn)
        cin = input_shape[-1]
        self.conv1 = make.conv(cin, w["conv1"], 3, 1, 1)
        self.bn1 = make.bn(w["conv1"])
        self.relu = ReLU()

        def build(prefix, width, stride, kind):
            out = w[f"{prefix}.conv2"]
            return BasicBlock(make, width, w[f"{prefix}.conv1"], out, stride, kind,
                              w.get(f"{prefix}.downsample.0")), out

        (self.layer1, self.layer2, self.layer3), width = residual_stages(blocks, w["conv1"], build)
        self.avgpool = GlobalAvgPool()
        self.linear = make.dense(width, num_classes)
        self.option = option
        finish_model(self, arch, input_shape, num_classes, plan)

    def __call__(self, x):
        if x.ndim != 4 or x.shape[-1] != self.input_shape[-1]:
            check_image_input(self.arch, x, self.input_shape[-1])
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(self.avgpool(x))
