"""A model at initialisation as pure functions of its prunable kernels.

Scores and masks speak of *kernels*: the conv and dense kernels of a model, by
dotted name, in forward order (``net.0.kernel``, ``conv1.kernel``, …). Biases
and normalisation parameters are never pruned. :class:`PrunableNet` binds a
model's split functions (:class:`isotpp.training.engine.ModelFns`) to its initial
arrays and builds the closures the scores differentiate: a data loss of the
kernels, SynFlow's linearised output sum, and the summed gradient g0 that
AutoSparse uses as a feature.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from isotpp.models import layer_names
from isotpp.models.program import flat_arrays, map_named
from isotpp.training.engine import ModelFns

__all__ = ["PrunableNet", "arch_of", "prunable_names"]


def prunable_names(model: nnx.Module) -> tuple[str, ...]:
    """Dotted names of the conv/dense kernels, in forward order."""

    return tuple(f"{n}.kernel" for n in layer_names(model))


def arch_of(model: nnx.Module) -> str:
    """The architecture's name (its registry name when built by ``create_model``)."""
    config = getattr(model, "build_config", None)
    return config.name if config is not None else str(getattr(model, "arch", type(model).__name__))


@dataclasses.dataclass(frozen=True, eq=False)
class PrunableNet:
    """A model's pure functions, its initial arrays and its prunable kernels."""

    fns: ModelFns
    params: Any  # nnx.State of nnx.Param
    rest: Any  # everything else (BatchNorm statistics)
    names: tuple[str, ...]
    arch: str
    input_shape: tuple[int, ...]

    @classmethod
    def from_model(cls, model: nnx.Module) -> PrunableNet:
        fns, params, rest = ModelFns.from_model(model)
        shape = tuple(getattr(model, "input_shape", ()))
        return cls(fns, params, rest, prunable_names(model), arch_of(model), shape)

    # ------------------------------------------------------------ arrays

    def kernels(self, params=None) -> dict[str, jax.Array]:
        flat = flat_arrays(self.params if params is None else params)
        return {n: flat[n] for n in self.names}

    def with_kernels(self, kernels: Mapping[str, jax.Array], params=None):
        """``params`` (default: the initial ones) with the named kernels replaced."""
        return map_named(lambda n, x: kernels.get(n, x), self.params if params is None else params)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: tuple(k.shape) for n, k in self.kernels().items()}

    @property
    def n_weights(self) -> int:
        return sum(math.prod(s) for s in self.shapes().values())

    def model(self, params=None, rest=None) -> nnx.Module:
        return self.fns.merge(self.params if params is None else params, self.rest if rest is None else rest)

    # ------------------------------------------------------------ closures

    def loss_fn(self, x, y, *, temperature: float = 1.0) -> Callable[[dict], jax.Array]:
        """kernels -> mean cross-entropy of logits / temperature on (x, y), train mode."""

        def loss(kernels):
            logits, _ = self.fns.train_apply(self.with_kernels(kernels), self.rest, x)
            return optax.softmax_cross_entropy_with_integer_labels(
                logits.astype(jnp.float32) / temperature, y).mean()

        return loss

    def output_sum_fn(self) -> Callable[[dict], jax.Array]:
        """SynFlow's R: kernels -> Σ of the logits of one all-ones input, every other
        parameter (and BN statistic) replaced by its absolute value, BN in eval mode.

        With non-negative kernels every pre-activation is non-negative, so ReLUs
        and max-pools act linearly and R = 1ᵀ(Π|W|)1 (+ bias paths).
        """
        abs_params = jax.tree.map(jnp.abs, self.params)
        abs_rest = jax.tree.map(lambda a: jnp.abs(a) if jnp.issubdtype(a.dtype, jnp.floating) else a, self.rest)
        ones = jnp.ones((1, *self.input_shape), jnp.float32)

        def r(kernels):
            return jnp.sum(self.fns.eval_apply(self.with_kernels(kernels, abs_params), abs_rest, ones))

        return r

    def gradient_sum(self, x, y, batch_size: int) -> dict[str, jax.Array]:
        """g0 = (1/B) Σ_i ∇ℓ_i over every example of (x, y), at the initial weights.

        ℓ_i is example i's cross-entropy; with B dividing N this is the sum over
        one pass of the batch-mean gradients (what PyTorch accumulates when
        ``loss.backward()`` runs on every batch without zeroing). Train mode;
        the last chunk is padded with weight-0 copies of the first examples.
        """
        x = jnp.asarray(x)
        y = jnp.asarray(y)
        n = int(x.shape[0])
        chunks = -(-n // batch_size)
        idx = np.arange(chunks * batch_size) % n
        weight = jnp.asarray((np.arange(chunks * batch_size) < n).astype(np.float32)).reshape(chunks, batch_size)
        idx = jnp.asarray(idx.reshape(chunks, batch_size))
        return _gradient_sum(self.fns, self.names, self.params, self.rest, x, y, idx, weight, float(batch_size))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _gradient_sum(fns: ModelFns, names, params, rest, x, y, idx, weight, batch_size):
    # the arrays are arguments (not constants of a net), so nets of one architecture share the program
    def loss(kernels, xb, yb, wb):
        p = map_named(lambda n, v: kernels.get(n, v), params)
        logits, _ = fns.train_apply(p, rest, xb)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), yb)
        return jnp.sum(ce * wb) / batch_size

    grad = jax.grad(loss)
    flat = flat_arrays(params)
    kernels = {n: flat[n] for n in names}

    def body(acc, chunk):
        i, w = chunk
        g = grad(kernels, x[i], y[i], w)
        return jax.tree.map(jnp.add, acc, g), None

    zero = jax.tree.map(jnp.zeros_like, kernels)
    total, _ = jax.lax.scan(body, zero, (idx, weight))
    return total
