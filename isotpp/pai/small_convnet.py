"""The small ConvNet that AutoSparse's scorer is transferred to, and a fast conv for it.

``SmallConvNet`` (28×28×1 inputs, Fashion-MNIST as LeNet-300-100 sees it)::

    conv1 3×3 stride 2 pad 1, 1→8   (14×14) -> ReLU
    conv2 3×3 stride 2 pad 1, 8→16  (7×7)   -> ReLU -> flatten (784)
    fc1 784→100 -> ReLU -> fc2 100→10

80,624 prunable weights (72 + 1,152 + 78,400 + 1,000), biases everywhere.
It is not LeNet-5 on purpose: on this 2-core CPU XLA's convolutions made
LeNet-5 about 50× slower per step than LeNet-300-100 (≈ 80 s per epoch at
batch 100), which no multi-seed study can afford; strided 3×3 convs with few
channels through :func:`im2col_conv` bring an epoch to a few seconds.

:func:`im2col_conv` replaces ``lax.conv_general_dilated`` (the ``conv_fn`` hook
of :class:`isotpp.models.layers.LayerFactory`): the k×k shifted slices of the
padded input are concatenated along channels and multiplied by the kernel
reshaped to (k·k·c_in, c_out): the same numbers, as a matmul whose gradients
are matmuls and slice-adds. It handles NHWC/HWIO, explicit padding, strides,
no dilation, one group; anything else goes to ``lax.conv_general_dilated``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from isotpp.models.init import apply_init
from isotpp.models.layers import Flatten, LayerFactory, ReLU, record_module_order

__all__ = ["SmallConvNet", "im2col_conv", "small_convnet"]


def im2col_conv(inputs, kernel, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
    """``lax.conv_general_dilated`` for NHWC inputs and HWIO kernels, as one matmul."""
    simple = (not isinstance(padding, str) and feature_group_count == 1 and kernel.ndim == 4
              and all(d in (None, 1) for d in (lhs_dilation or (None,))) and all(
                  d in (None, 1) for d in (rhs_dilation or (None,))))
    if not simple:
        return jax.lax.conv_general_dilated(inputs, kernel, window_strides, padding, lhs_dilation, rhs_dilation,
                                            dimension_numbers, feature_group_count, precision=precision, **kwargs)
    kh, kw, cin, cout = kernel.shape
    x = jnp.pad(inputs, ((0, 0), *[tuple(p) for p in padding], (0, 0)))
    sh, sw = window_strides
    h = (x.shape[1] - kh) // sh + 1
    w = (x.shape[2] - kw) // sw + 1
    cols = [x[:, i:i + sh * (h - 1) + 1:sh, j:j + sw * (w - 1) + 1:sw, :] for i in range(kh) for j in range(kw)]
    patches = jnp.concatenate(cols, axis=-1)  # (B, h, w, kh·kw·cin), (i, j, c) order as HWIO flattens
    return jnp.einsum("bhwk,ko->bhwo", patches, kernel.reshape(kh * kw * cin, cout), precision=precision)


class SmallConvNet(nnx.Module):
    """Two strided 3×3 convs and two dense layers; see the module docstring."""

    def __init__(self, num_classes: int = 10, *, channels: tuple[int, int] = (8, 16), hidden: int = 100,
                 input_shape: tuple[int, int, int] = (28, 28, 1), seed: int = 0):
        make = LayerFactory(nnx.Rngs(params=seed), conv_fn=im2col_conv)
        h, w, c = input_shape
        c1, c2 = channels
        self.conv1 = make.conv(c, c1, 3, 2, 1, bias=True)
        self.relu1 = ReLU()
        self.conv2 = make.conv(c1, c2, 3, 2, 1, bias=True)
        self.relu2 = ReLU()
        self.flatten = Flatten()
        hh, ww = math.ceil(math.ceil(h / 2) / 2), math.ceil(math.ceil(w / 2) / 2)  # two stride-2 pad-1 3×3 convs
        self.fc1 = make.dense(c2 * hh * ww, hidden)
        self.relu3 = ReLU()
        self.fc2 = make.dense(hidden, num_classes)
        self.arch = "small_convnet"
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        record_module_order(self)

    def __call__(self, x):
        x = self.relu1(self.conv1(x))
        x = self.flatten(self.relu2(self.conv2(x)))
        return self.fc2(self.relu3(self.fc1(x)))


def small_convnet(*, seed: int = 0, init: str = "kaiming", **kwargs) -> SmallConvNet:
    """A :class:`SmallConvNet` initialised by ``init`` (a scheme of :func:`isotpp.models.apply_init`).

    Built abstractly and filled in one compiled draw, as ``create_model`` does
    (Flax's per-layer initialisers compile one random kernel per shape: seconds).
    """

    if init == "default":
        return SmallConvNet(seed=seed, **kwargs)
    model = nnx.eval_shape(lambda: SmallConvNet(seed=seed, **kwargs))
    return apply_init(model, init, key=jax.random.fold_in(jax.random.key(seed), 1))
