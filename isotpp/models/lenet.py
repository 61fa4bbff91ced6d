"""LeNet-5 as in the reference (model/lenet5.py), NHWC.

conv1 (5x5, 6) -> relu1 -> maxpool1 (2x2) -> conv2 (5x5, 16) -> relu2 ->
maxpool2 -> conv3 (5x5, 120) -> relu3 -> flatten -> fc1 (84) -> relu4 -> fc2.
All layers have biases and no padding; on 32x32x1 inputs conv3 leaves a 1x1
map, so fc1 sees 120 features (61,706 parameters in all). Other input sizes
make fc1 wider (120 * h * w features, flattened in H, W, C order).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
from flax import nnx

from isotpp.errors import UserError
from isotpp.models.layers import (
    Flatten,
    LayerFactory,
    MaxPool,
    ReLU,
    WidthsPlan,
    check_exact_input,
    record_module_order,
    resolve_widths,
)

CANONICAL = {"conv1": 6, "conv2": 16, "conv3": 120, "fc1": 84}


class LeNet5(nnx.Module):
    def __init__(
        self,
        num_classes: int = 10,
        widths: Mapping[str, int] | None = None,
        *,
        input_shape: Sequence[int] = (32, 32, 1),
        arch: str = "lenet5",
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        conv_fn=None,
        rngs: nnx.Rngs,
    ):
        h, w_, c = input_shape
        # conv 5x5 valid (-4), pool /2, conv (-4), pool /2, conv (-4)
        hh, ww = (((h - 4) // 2 - 4) // 2 - 4), (((w_ - 4) // 2 - 4) // 2 - 4)
        if hh < 1 or ww < 1:
            raise UserError(f"{arch} needs inputs of at least 32x32 pixels, input_shape is "
                            f"{tuple(input_shape)}: resize the data")
        w = resolve_widths(arch, WidthsPlan(CANONICAL | {"fc2": num_classes}, "fc2"), widths)
        make = LayerFactory(rngs, dtype, param_dtype, conv_fn)
        self.conv1 = make.conv(c, w["conv1"], 5, bias=True)
        self.relu1 = ReLU()
        self.maxpool1 = MaxPool(2, 2)
        self.conv2 = make.conv(w["conv1"], w["conv2"], 5, bias=True)
        self.relu2 = ReLU()
        self.maxpool2 = MaxPool(2, 2)
        self.conv3 = make.conv(w["conv2"], w["conv3"], 5, bias=True)
        self.relu3 = ReLU()
        self.flatten = Flatten()
        self.fc1 = make.dense(w["conv3"] * hh * ww, w["fc1"])
        self.relu4 = ReLU()
        self.fc2 = make.dense(w["fc1"], num_classes)

        self.arch = arch
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        record_module_order(self)

    def __call__(self, x):
        if x.shape[1:] != self.input_shape:
            check_exact_input(self.arch, x, self.input_shape)
        x = self.maxpool1(self.relu1(self.conv1(x)))
        x = self.maxpool2(self.relu2(self.conv2(x)))
        x = self.flatten(self.relu3(self.conv3(x)))
        return self.fc2(self.relu4(self.fc1(x)))
