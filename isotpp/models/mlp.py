"""Fully connected networks, laid out like the reference ``FCNet`` (model/mlp.py).

``net`` is a :class:`Sequential` of dense layers with an activation module after
every hidden one: ``net.0`` dense, ``net.1`` activation, ``net.2`` dense, …,
``net.{2(L-1)}`` the output layer, for L = ``depth`` dense layers. The input is
flattened, whatever its shape, so MNIST at 32x32x1 feeds a 1024-input MLP.

MLP-7-Linear of the TPP paper = ``MLP(1024, 100, 7, 10, "linear")``
(1024 -> 100 x 5 -> 10 with biases, 154,010 parameters).

Activations: ``linear``, ``relu``, ``tanh``, ``hard_tanh`` (clip to [-1, 1]).
:func:`draw_biases` gives every dense bias N(0, sigma_b^2) entries, the bias
convention of mean-field theory (:mod:`isotpp.theory.meanfield`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from isotpp.errors import UserError, nonnegative
from isotpp.models.layers import (
    ACTIVATIONS,
    LayerFactory,
    Sequential,
    WidthsPlan,
    activation,
    check_exact_input,
    record_module_order,
    resolve_widths,
)


class MLP(nnx.Module):
    """``depth`` dense layers of ``width`` units (the last has ``num_classes``).

    ``widths`` overrides the output features of hidden layers by name
    (``{"net.0": 20, "net.2": 20}``); the output layer is fixed.
    ``input_shape`` (per sample) only sets the message of the input check;
    the layer itself needs ``input_dim`` = prod(input_shape).
    """

    def __init__(
        self,
        input_dim: int,
        width: int,
        depth: int,
        num_classes: int,
        act: str = "relu",
        use_bias: bool = True,
        widths: Mapping[str, int] | None = None,
        *,
        input_shape: Sequence[int] | None = None,
        arch: str = "mlp",
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if depth < 1 or width < 1 or input_dim < 1 or num_classes < 1:
            raise UserError(
                f"{arch}: depth, width, input_dim and num_classes must be >= 1, got "
                f"depth={depth}, width={width}, input_dim={input_dim}, num_classes={num_classes}"
            )
        if act not in ACTIVATIONS:
            raise UserError(f"{arch}: unknown activation {act!r}: use one of {', '.join(ACTIVATIONS)}")
        if input_shape is not None and math.prod(input_shape) != input_dim:
            raise UserError(
                f"{arch}: input_shape {tuple(input_shape)} has {math.prod(input_shape)} "
                f"features but input_dim is {input_dim}: pass only one of them"
            )
        names = [f"net.{2 * i}" for i in range(depth)]
        canonical = {n: width for n in names[:-1]} | {names[-1]: num_classes}
        w = resolve_widths(arch, WidthsPlan(canonical, classifier=names[-1]), widths)

        make = LayerFactory(rngs, dtype, param_dtype)
        layers: list[nnx.Module] = []
        fin = input_dim
        for i, name in enumerate(names):
            layers.append(make.dense(fin, w[name], bias=use_bias))
            fin = w[name]
            if i < depth - 1:
                layers.append(activation(act))
        self.net = Sequential(layers)

        self.arch = arch
        self.act = act
        self.input_dim = input_dim
        self.input_shape = tuple(input_shape) if input_shape is not None else (input_dim,)
        self.num_classes = num_classes
        record_module_order(self)

    def dense_kernels(self) -> list:
        """Kernels (in, out) of the dense layers in forward order. With
        ``act="linear"`` the Jacobian d logits / d x is their product's
        transpose, whatever x."""
        return [layer.kernel[...] for layer in self.net if isinstance(layer, nnx.Linear)]

    def __call__(self, x):
        if x.ndim < 2:
            raise UserError(f"{self.arch} expects a batch of shape (B, ...), got {x.shape}: "
                            f"add a leading batch axis (x[None])")
        if math.prod(x.shape[1:]) != self.input_dim:
            check_exact_input(self.arch, x, self.input_shape)
        return self.net(x.reshape(x.shape[0], -1))


def draw_biases(model: MLP, sigma_b: float, seed: int = 0) -> MLP:
    """Set every dense bias of ``model`` to independent N(0, sigma_b^2) entries, in place.

    ``sigma_b = 0`` zeroes them. The draw uses its own stream (key ``seed``, folded
    with 2), so the kernels of an init with the same seed are unchanged. Returns the model.
    """
    sigma_b = nonnegative("sigma_b", sigma_b)
    dense = [layer for layer in model.net if isinstance(layer, nnx.Linear)]
    if any(layer.bias is None for layer in dense):
        raise UserError("the model has no biases (use_bias=False): build it with biases to draw them")
    key = jax.random.fold_in(jax.random.key(seed), 2)
    for i, layer in enumerate(dense):
        b = layer.bias[...]
        layer.bias.set_value((sigma_b * jax.random.normal(jax.random.fold_in(key, i), b.shape)).astype(b.dtype))
    return model
