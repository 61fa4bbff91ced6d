"""The training engine: one jitted epoch per call, data held on device.

An epoch is a ``lax.scan`` over its batches; the batch indices come from a
per-epoch permutation, so the data set never leaves the device. The state is a
plain pytree (:class:`TrainState`), which makes two things cheap:

* several runs that share an architecture (methods × learning rates × seeds of
  a study) train as one program with ``jax.vmap`` over their states, and
* checkpoints and sharding see ordinary arrays.

The optimiser is the reference's: SGD with momentum 0.9 and weight decay added
to the gradient (PyTorch's ``weight_decay``), with the learning rate a
hyper-parameter in the optimiser state that each epoch sets from a
piecewise-constant, epoch-indexed schedule (``"0:0.01,30:0.001,60:0.0001"``).
Extra penalties enter the loss with per-run weights; pruning methods such as
TPP wrap the optimiser (``isotpp.tpp``).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from isotpp.errors import UserError

# --------------------------------------------------------------------------
# Learning-rate schedules in the reference's string form.
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LRSchedule:
    """Piecewise-constant learning rate by epoch: ``((0, 0.01), (30, 0.001), ...)``."""

    points: tuple[tuple[int, float], ...]

    @classmethod
    def parse(cls, text: str) -> LRSchedule:
        """Parse ``"0:0.01,30:0.001"``; a bare number means a constant rate."""
        text = str(text).strip()
        hint = "write it like '0:0.01,30:0.001,60:0.0001' (epoch:lr, epochs increasing from 0)"
        try:
            if ":" not in text:
                points = [(0, float(text))]
            else:
                points = []
                for item in text.split(","):
                    epoch, lr = item.split(":")
                    points.append((int(epoch), float(lr)))
        except ValueError:
            raise UserError(f"bad learning-rate schedule {text!r}: {hint}") from None
        epochs = [e for e, _ in points]
        if not points or epochs[0] != 0 or any(b <= a for a, b in itertools.pairwise(epochs)):
            raise UserError(f"bad learning-rate schedule {text!r}: {hint}")
        if any(not (lr > 0 and np.isfinite(lr)) for _, lr in points):
            raise UserError(f"bad learning-rate schedule {text!r}: learning rates must be positive and finite")
        return cls(tuple(points))

    def __call__(self, epoch: int) -> float:
        lr = self.points[0][1]
        for start, value in self.points:
            if epoch >= start:
                lr = value
        return lr

    def __str__(self) -> str:
        return ",".join(f"{e}:{lr:g}" for e, lr in self.points)

    @property
    def initial(self) -> float:
        return self.points[0][1]


# --------------------------------------------------------------------------
# Optimiser.
# --------------------------------------------------------------------------


def _reference_sgd(learning_rate, weight_decay=0.0, momentum=0.9):
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(learning_rate, momentum=momentum))


def reference_sgd(learning_rate: float = 0.01, weight_decay: float = 0.0, momentum: float = 0.9):
    """PyTorch's ``SGD(momentum, weight_decay)``: g += wd·w; buf = m·buf + g; w -= lr·buf.

    The learning rate (and weight decay) live in the optimiser state, set with
    :func:`set_learning_rate`, so one compiled step serves every epoch and every
    run of a vmapped batch of runs.
    """
    return optax.inject_hyperparams(_reference_sgd, static_args=("momentum",))(
        learning_rate=learning_rate, weight_decay=weight_decay, momentum=momentum
    )


def set_learning_rate(opt_state, lr):
    """The optimiser state with its (injected) learning rate replaced, wherever it is nested."""
    return optax.tree_utils.tree_set(opt_state, learning_rate=jnp.asarray(lr, jnp.float32))


# --------------------------------------------------------------------------
# State and model plumbing.
# --------------------------------------------------------------------------


class TrainState(NamedTuple):
    """Everything that changes during training, as arrays."""

    params: Any  # nnx.State of nnx.Param
    rest: Any  # nnx.State of everything else (BatchNorm statistics)
    opt_state: Any


@dataclasses.dataclass(frozen=True)
class ModelFns:
    """A model split once into pure train/eval functions of (params, rest, x)."""

    train_def: Any
    eval_def: Any

    @classmethod
    def from_model(cls, model: nnx.Module) -> tuple[ModelFns, Any, Any]:
        model.train()
        train_def, params, rest = nnx.split(model, nnx.Param, ...)
        model.eval()
        eval_def = nnx.graphdef(model)
        model.train()
        return cls(train_def, eval_def), params, rest

    def train_apply(self, params, rest, x):
        """Logits in train mode and the updated non-parameter state (BN statistics)."""
        model = nnx.merge(self.train_def, params, rest, copy=True)
        logits = model(x)
        return logits, nnx.state(model, nnx.Not(nnx.Param))

    def eval_apply(self, params, rest, x):
        return nnx.merge(self.eval_def, params, rest, copy=True)(x)

    def merge(self, params, rest) -> nnx.Module:
        """A model (eval mode) holding these arrays."""
        return nnx.merge(self.eval_def, params, rest, copy=True)


def cross_entropy(logits, labels):
    """Mean cross-entropy, computed in at least float32 (bf16 logits are promoted, float64 kept)."""
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def init_state(params, rest, tx: optax.GradientTransformation) -> TrainState:
    return TrainState(params, rest, tx.init(params))


# --------------------------------------------------------------------------
# The epoch.
# --------------------------------------------------------------------------

Penalty = Callable[[Any], jax.Array]  # params -> scalar


def make_update_fn(
    fns: ModelFns,
    tx: optax.GradientTransformation,
    *,
    penalties: Mapping[str, Penalty] | None = None,
    health: bool = False,
) -> Callable:
    """``update(state, x, y, weights) -> (state, metrics)``: one optimiser step on one batch.

    The one training step of the project, shared by the scanned epoch
    (:func:`make_epoch_fn`) and the sharded trainer (:mod:`isotpp.trainer`):
    cross-entropy (float32) plus the weighted penalties, BatchNorm statistics
    of the batch it is given (the *global* batch when jitted over a sharded
    one), then ``tx`` (any optax transformation: TPP's state rides in the
    optimiser state). ``weights`` maps each penalty name to its weight.
    ``metrics`` holds ``loss`` (the data loss) and ``correct``; with ``health``
    also ``grad_norm`` and ``param_norm`` (global L2 norms).
    """
    penalties = dict(penalties or {})

    def loss_fn(params, rest, x, y, weights):
        logits, new_rest = fns.train_apply(params, rest, x)
        loss = cross_entropy(logits, y)
        total = loss
        for name, fn in penalties.items():
            total = total + weights[name] * fn(params)
        correct = jnp.sum(jnp.argmax(logits, -1) == y)
        return total, (loss, correct, new_rest)

    grad_fn = jax.grad(loss_fn, has_aux=True)

    def update(state: TrainState, x, y, weights):
        params, rest, opt_state = state
        grads, (loss, correct, rest) = grad_fn(params, rest, x, y, weights)
        updates, opt_state = tx.update(grads, opt_state, params)
        metrics = {"loss": loss, "correct": correct}
        if health:
            metrics["grad_norm"] = optax.tree.norm(grads)
        params = optax.apply_updates(params, updates)
        if health:
            metrics["param_norm"] = optax.tree.norm(params)
        return TrainState(params, rest, opt_state), metrics

    return update


def penalty_weights(penalties: Mapping[str, Penalty] | None, weights: Mapping[str, Any] | None) -> dict:
    """Float32 weight per penalty name (0 for those not given)."""
    return {k: jnp.asarray((weights or {}).get(k, 0.0), jnp.float32) for k in (penalties or {})}


def make_epoch_fn(
    fns: ModelFns,
    tx: optax.GradientTransformation,
    *,
    penalties: Mapping[str, Penalty] | None = None,
) -> Callable:
    """``epoch(state, images, labels, batches, lr, weights) -> (state, metrics)``.

    ``batches`` is an int array (steps, batch) of example indices; ``weights``
    maps each penalty name to its (per-run) weight in the loss. ``metrics``
    holds per-step ``loss`` (the data loss) and ``correct`` counts. Not jitted
    here: callers jit (and vmap) it as their runs need.
    """
    update = make_update_fn(fns, tx, penalties=penalties)

    def step(state, idx, images, labels, weights):
        return update(state, images[idx], labels[idx], weights)

    def epoch(state: TrainState, images, labels, batches, lr, weights=None):
        weights = penalty_weights(penalties, weights)
        state = state._replace(opt_state=set_learning_rate(state.opt_state, lr))
        body = functools.partial(step, images=images, labels=labels, weights=weights)
        return jax.lax.scan(body, state, batches)

    return epoch


def epoch_batches(key, n_examples: int, batch_size: int, *, drop_last: bool = False) -> jax.Array:
    """A shuffled (steps, batch) index array for one epoch.

    With ``drop_last=False`` the last partial batch is filled up with examples
    from the start of the permutation (every example is seen at least once and
    every batch has the same size, which ``lax.scan`` needs).
    """
    perm = jax.random.permutation(key, n_examples)
    steps = n_examples // batch_size if drop_last else -(-n_examples // batch_size)
    if steps == 0:
        raise UserError(f"batch size {batch_size} exceeds the {n_examples} training examples: lower it")
    total = steps * batch_size
    if total > n_examples:
        perm = jnp.concatenate([perm, perm[: total - n_examples]])
    return perm[:total].reshape(steps, batch_size)


def make_eval_fn(fns: ModelFns, *, batch_size: int = 1000) -> Callable:
    """``evaluate(params, rest, images, labels) -> (accuracy %, mean loss)`` in eval mode.

    Runs as a ``lax.map`` over fixed-size chunks (padded), so memory stays
    bounded and one compiled program serves any test-set size.
    """

    def evaluate(params, rest, images, labels):
        n = images.shape[0]
        bs = min(batch_size, n)
        chunks = -(-n // bs)
        pad = chunks * bs - n
        xs = jnp.concatenate([images, jnp.zeros((pad, *images.shape[1:]), images.dtype)]) if pad else images
        ys = jnp.concatenate([labels, jnp.zeros((pad,), labels.dtype)]) if pad else labels
        valid = jnp.arange(chunks * bs) < n
        xs = xs.reshape(chunks, bs, *images.shape[1:])

        def chunk(x):
            return fns.eval_apply(params, rest, x)

        logits = jax.lax.map(chunk, xs).reshape(chunks * bs, -1).astype(jnp.float32)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, ys)
        correct = (jnp.argmax(logits, -1) == ys) & valid
        return 100.0 * correct.sum() / n, jnp.where(valid, nll, 0.0).sum() / n

    return evaluate


def check_finite(loss: float | np.ndarray, *, where: str) -> None:
    """Raise a one-line UserError when training diverged."""
    arr = np.asarray(loss)
    if not np.all(np.isfinite(arr)):
        raise UserError(f"training diverged ({where}: loss is NaN/inf): lower the learning rate or check the data")


# --------------------------------------------------------------------------
# Several runs of one architecture, trained as one vmapped program.
# --------------------------------------------------------------------------


def stack_runs(trees: list) -> Any:
    """Stack per-run pytrees along a new leading axis (runs must share structure and shapes)."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack_run(tree, i: int) -> Any:
    return jax.tree.map(lambda x: x[i], tree)


@dataclasses.dataclass
class RunGroup:
    """R runs of one architecture: stacked state, per-run schedules and penalty weights.

    ``lrs[r]`` is run r's schedule; ``weights[name][r]`` the weight of penalty
    ``name`` in run r's loss. Every run sees the same batches (paired runs:
    differences between them come from the method, not the data order).
    """

    fns: ModelFns
    tx: optax.GradientTransformation
    state: TrainState
    lrs: list[LRSchedule]
    weights: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    penalties: dict[str, Penalty] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        epoch = make_epoch_fn(self.fns, self.tx, penalties=self.penalties)
        self._epoch = jax.jit(jax.vmap(epoch, in_axes=(0, None, None, None, 0, 0)), donate_argnums=0)
        self._eval = jax.jit(jax.vmap(make_eval_fn(self.fns), in_axes=(0, 0, None, None)))

    @property
    def n_runs(self) -> int:
        return len(self.lrs)

    def run_epoch(self, images, labels, batches, epoch: int) -> dict[str, np.ndarray]:
        """One epoch (or the first ``len(batches)`` steps of one) for every run."""
        lr = jnp.asarray([s(epoch) for s in self.lrs], jnp.float32)
        w = {k: jnp.asarray(self.weights.get(k, np.zeros(self.n_runs)), jnp.float32) for k in self.penalties}
        self.state, m = self._epoch(self.state, images, labels, batches, lr, w)
        loss = np.asarray(m["loss"])  # (R, steps)
        correct = np.asarray(m["correct"])
        return {"loss": loss.mean(axis=1), "train_acc": 100.0 * correct.sum(axis=1) / batches.size}

    def evaluate(self, images, labels) -> np.ndarray:
        acc, _ = self._eval(self.state.params, self.state.rest, images, labels)
        return np.asarray(acc)
