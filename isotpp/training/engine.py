"""The training engine: one step, one epoch order, one evaluation, one NaN check, two regimes.

Everything a training loop needs exists once, here, and both regimes use it:

* the step :func:`make_update_fn` (cross-entropy + weighted penalties, any
  optax transformation: TPP's state rides in the optimiser state);
* the epoch order :func:`epoch_batches` (a permutation drawn from
  ``fold_in(key, epoch)``, topped up from its start);
* the evaluation step :func:`make_eval_step` (sums over a padded, masked
  batch), mapped over chunks on device (:func:`make_eval_fn`) or summed over
  a source's batches (:func:`evaluate_batches`);
* the divergence check :func:`check_finite` (one one-line error,
  :func:`divergence`).

The two regimes (drivers) are

* :class:`RunGroup` (this module): R runs of one small architecture held on
  the device, trained as one program — ``jax.vmap`` over their stacked
  :class:`TrainState`, an epoch a ``lax.scan`` over its batches — for the
  linear study, PaI and IRP;
* :class:`isotpp.training.sharded.Trainer`: one model, one jitted, donated step per
  batch, data-parallel over a mesh, for ``isotpp prune`` and ``isotpp train``.

Progress goes through :func:`isotpp.progress.progress` (``enabled=`` a bool),
metrics through :class:`isotpp.training.metrics.MetricsWriter`, checkpoints
through :class:`isotpp.training.checkpoint.TrainCheckpointer` (:meth:`RunGroup.save`,
:meth:`RunGroup.restore`); see :mod:`isotpp.training` for which layer owns
which file.

The optimiser is the reference's: SGD with momentum 0.9 and weight decay added
to the gradient (PyTorch's ``weight_decay``), with the learning rate a
hyper-parameter in the optimiser state that each epoch sets from a
piecewise-constant, epoch-indexed schedule (``"0:0.01,30:0.001,60:0.0001"``).
Extra penalties enter the loss with per-run weights; pruning methods such as
TPP wrap the optimiser (``isotpp.pruning.tpp``).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from isotpp.data.pipeline import epoch_batches
from isotpp.errors import UserError

if TYPE_CHECKING:  # the checkpointer is passed in: importing orbax here would slow every study's import
    from isotpp.training.checkpoint import TrainCheckpointer

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
    (:func:`make_epoch_fn`) and the sharded trainer (:mod:`isotpp.training.sharded`):
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


# --------------------------------------------------------------------------
# Evaluation: one step, mapped over chunks on device or summed over a source's batches.
# --------------------------------------------------------------------------


def make_eval_step(fns: ModelFns) -> Callable:
    """``eval_step(params, rest, x, y, valid) -> {"correct", "nll", "count"}``: sums over one padded batch.

    The one evaluation step of the project: eval mode, logits in at least
    float32, the examples where ``valid`` is False (padding) counted nowhere.
    :func:`make_eval_fn` maps it over the chunks of a data set held on device
    (vmapped over runs by :class:`RunGroup`); the sharded trainer jits it over
    its mesh and sums it over an evaluation source's batches
    (:func:`evaluate_batches`).
    """

    def eval_step(params, rest, x, y, valid):
        logits = fns.eval_apply(params, rest, x)
        logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        correct = (jnp.argmax(logits, -1) == y) & valid
        return {"correct": correct.sum(), "nll": jnp.where(valid, nll, 0.0).sum(), "count": valid.sum()}

    return eval_step


def make_eval_fn(fns: ModelFns, *, batch_size: int = 1000) -> Callable:
    """``evaluate(params, rest, images, labels) -> (accuracy %, mean loss)`` in eval mode.

    :func:`make_eval_step` as a ``lax.map`` over fixed-size chunks (the last
    one padded and masked), so memory stays bounded and one compiled program
    serves any test-set size.
    """
    step = make_eval_step(fns)

    def evaluate(params, rest, images, labels):
        n = images.shape[0]
        bs = min(batch_size, n)
        chunks = -(-n // bs)
        pad = chunks * bs - n
        xs = jnp.concatenate([images, jnp.zeros((pad, *images.shape[1:]), images.dtype)]) if pad else images
        ys = jnp.concatenate([labels, jnp.zeros((pad,), labels.dtype)]) if pad else labels
        valid = jnp.arange(chunks * bs) < n
        sums = jax.lax.map(lambda c: step(params, rest, *c),
                           (xs.reshape(chunks, bs, *images.shape[1:]), ys.reshape(chunks, bs), valid.reshape(chunks, bs)))
        return 100.0 * sums["correct"].sum() / n, sums["nll"].sum() / n

    return evaluate


def evaluate_batches(eval_step: Callable, params, rest, batches) -> dict[str, float]:
    """``{"test_acc": %, "test_loss": mean}`` over every valid example of ``(x, y, valid)`` ``batches``.

    ``eval_step``: :func:`make_eval_step`'s, jitted as the caller's devices
    need (the sharded trainer: replicated output over its mesh).
    """
    totals = None
    for x, y, valid in batches:
        out = eval_step(params, rest, x, y, valid)
        totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
    if totals is None:
        raise UserError("the evaluation set is empty: check the data")
    totals = {k: float(v) for k, v in jax.device_get(totals).items()}
    n = max(totals["count"], 1.0)
    return {"test_acc": 100.0 * totals["correct"] / n, "test_loss": totals["nll"] / n}


# --------------------------------------------------------------------------
# Divergence.
# --------------------------------------------------------------------------


def divergence(where: str, *, what: str = "loss", kept_step: int | None = None) -> UserError:
    """The one-line error of a diverged run: ``training diverged <where> (<what> NaN/inf): lower the learning
    rate or check the data`` (and which checkpoint is kept, if any)."""
    kept = f"; the last good checkpoint (step {kept_step}) is kept" if kept_step is not None else ""
    return UserError(f"training diverged {where} ({what} NaN/inf): lower the learning rate or check the data{kept}")


def check_finite(*values, where: str | Callable[[int], str], what: str = "loss", kept_step: int | None = None) -> None:
    """Raise :func:`divergence` unless every entry of ``values`` (arrays of one shape) is finite.

    ``where``: ``"in base training, seed 0, epoch 3"``, or a function of the
    index of the first non-finite entry (the sharded trainer: the step).
    """
    finite = np.logical_and.reduce([np.isfinite(np.asarray(v, np.float64)) for v in values]).reshape(-1)
    if not finite.all():
        bad = int(np.argmin(finite))
        raise divergence(where(bad) if callable(where) else where, what=what, kept_step=kept_step)


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
        """One epoch (or the first ``len(batches)`` steps of one) for every run, over the given batches."""
        lr = jnp.asarray([s(epoch) for s in self.lrs], jnp.float32)
        w = {k: jnp.asarray(self.weights.get(k, np.zeros(self.n_runs)), jnp.float32) for k in self.penalties}
        self.state, m = self._epoch(self.state, images, labels, batches, lr, w)
        loss = np.asarray(m["loss"])  # (R, steps)
        correct = np.asarray(m["correct"])
        return {"loss": loss.mean(axis=1), "train_acc": 100.0 * correct.sum(axis=1) / batches.size}

    def train_epoch(self, images, labels, key, epoch: int, batch_size: int, *, steps: int | None = None,
                    lr_epoch: int | None = None) -> dict[str, np.ndarray]:
        """Epoch ``epoch`` in the engine's order (:func:`epoch_batches` of ``fold_in(key, epoch)``).

        ``steps``: only the first ``steps`` batches of it (an iteration budget);
        ``lr_epoch``: the epoch whose learning rate applies (default ``epoch``).
        Returns :meth:`run_epoch`'s per-run ``loss`` and ``train_acc`` and the
        number of ``steps`` run. The losses are not checked: a caller stops
        with :func:`check_finite` or marks the diverged runs.
        """
        batches = epoch_batches(key, int(labels.shape[0]), batch_size, epoch=epoch)
        if steps is not None:
            batches = batches[:steps]
        m = self.run_epoch(images, labels, batches, epoch if lr_epoch is None else lr_epoch)
        return {**m, "steps": int(batches.shape[0])}

    def evaluate(self, images, labels) -> np.ndarray:
        """Per-run test accuracy (%) with :func:`make_eval_step` (float32)."""
        acc, _ = self._eval(self.state.params, self.state.rest, images, labels)
        return np.asarray(acc)

    # Checkpoints: the sharded trainer's class (isotpp.training.checkpoint.TrainCheckpointer), one format.

    def _meta(self) -> dict[str, Any]:
        return {"regime": "run_group", "runs": self.n_runs, "lrs": [str(s) for s in self.lrs],
                "penalties": sorted(self.penalties)}

    def save(self, checkpointer: TrainCheckpointer, step: int, meta: Mapping[str, Any] | None = None) -> None:
        """Save the stacked state as checkpoint ``step`` of ``checkpointer`` (with ``meta``: JSON-able facts
        such as the epoch); call ``checkpointer.wait()`` (or close it) before relying on the files."""
        checkpointer.save(step, {"train": self.state}, {**self._meta(), **dict(meta or {})})

    def restore(self, checkpointer: TrainCheckpointer, step: int | None = None) -> dict[str, Any] | None:
        """Load the newest readable checkpoint (or ``step``) into :attr:`state`; its metadata, or None when
        there is none. A checkpoint of another number of runs, schedules or penalties is refused."""

        def check(meta: dict[str, Any]) -> None:
            theirs = {k: meta.get(k) for k in self._meta()}
            if theirs != self._meta():
                raise UserError(f"the checkpoint in {checkpointer.directory} is of another group of runs "
                                f"({theirs}, this one {self._meta()}): use another directory")

        found = checkpointer.restore({"train": self.state}, step=step, check=check)
        if found is None:
            return None
        _step, payload, meta = found
        self.state = payload["train"]
        return meta
