"""The sharded regime of the training engine: one jitted, donated, data-parallel step per batch.

    trainer = Trainer(model, tx, train_data, TrainConfig(epochs=120, lr_schedule="0:0.01,60:0.001,90:0.0001"),
                      workdir="runs/r56", eval_data=test_data, hooks=[jsv_hook(x_probe)])
    history, model = trainer.fit(resume=True)

This is the engine's (:mod:`isotpp.training.engine`) driver for one model on a mesh
(``isotpp prune``, ``isotpp train``); :class:`isotpp.training.engine.RunGroup` is its
driver for a stack of small runs. Both use the engine's step
(:func:`~isotpp.training.engine.make_update_fn`), here jitted with the parameters and
optimiser state replicated and the batch split over the mesh's ``data`` axis,
so BatchNorm sees the global batch and any optax transformation (TPP's
wrapper with its state in ``opt_state``) trains unchanged on 1 or 512
devices; its evaluation step (:func:`~isotpp.training.engine.make_eval_step`, summed
over an evaluation source's padded batches: :func:`evaluate_model` for any
model); its epoch order (:func:`~isotpp.data.pipeline.epoch_batches`, inside
:class:`~isotpp.data.pipeline.InMemoryData`) and its divergence check
(:func:`~isotpp.training.engine.check_finite`). The learning rate of each epoch comes
from an :class:`~isotpp.training.engine.LRSchedule` and is set inside the step (one
compiled program for the whole run).

Per epoch: train over the source's batches (from any step: resumption is
exact), evaluate, run the hooks (e.g. the mean JSV), append a record to
``workdir/metrics.jsonl`` (:class:`~isotpp.training.metrics.MetricsWriter`),
save a checkpoint (:class:`~isotpp.training.checkpoint.TrainCheckpointer`, in
``workdir/checkpoints``). Checkpoints also every ``checkpoint_every_steps``
steps and on SIGTERM (then :class:`Preempted` is raised; the command line
exits with :data:`PREEMPTED_EXIT_CODE`). A NaN/inf loss stops the run with a
:class:`~isotpp.errors.UserError` before anything is saved, so the last
checkpoint stays good. Only process 0 writes files (orbax coordinates
checkpoint writes across processes). The Trainer owns ``workdir/config.json``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx

from isotpp import parallel, preemption
from isotpp.errors import UserError
from isotpp.models import widths_of
from isotpp.preemption import PREEMPTED_EXIT_CODE, Preempted  # noqa: F401 (re-exported)
from isotpp.progress import progress as progress_bar
from isotpp.spectra.jacobian import model_singular_values, summarize
from isotpp.storage.atomic import write_json
from isotpp.training.checkpoint import TrainCheckpointer
from isotpp.training.engine import (
    LRSchedule,
    ModelFns,
    Penalty,
    TrainState,
    check_finite,
    evaluate_batches,
    make_eval_step,
    make_update_fn,
    penalty_weights,
    set_learning_rate,
)
from isotpp.training.metrics import MetricsWriter

logger = logging.getLogger(__name__)

Hook = Callable[["Trainer", int], Mapping[str, Any] | None]


def _preempted_error(step: int, directory: Path | None) -> Preempted:
    where = f"checkpoint saved at step {step} in {directory}" if directory else "no workdir: nothing saved"
    return Preempted(f"stopped by SIGTERM: {where}; {preemption.hint()}", step=step, directory=directory)


@dataclasses.dataclass
class TrainConfig:
    """How to train (everything but the model, optimiser and data).

    ``lr_schedule``: epoch-indexed ``"0:0.01,60:0.001"`` set into the
    optimiser's injected ``learning_rate`` (``isotpp.training.engine.reference_sgd``);
    None keeps the optimiser's own. ``penalty_weights``: weight of each named
    penalty in the loss. ``checkpoint_every_steps``: also save every N steps
    (epoch ends always save when there is a workdir). ``log_every_steps``:
    a step record (loss, gradient and parameter norms) every N steps.
    ``checkpoints``: False writes no checkpoints (logs only; no resuming).
    ``max_steps``: stop after this many optimiser steps in all, inside an
    epoch if need be (a fixed iteration budget such as TPP's penalty phase);
    that last, partial epoch is evaluated, logged and checkpointed like any.
    ``tensorboard``: also write the metrics as TensorBoard scalars into
    ``workdir/tensorboard`` (needs ``pip install isotpp[tensorboard]``).
    """

    epochs: int
    lr_schedule: str | None = None
    seed: int = 0
    penalty_weights: dict[str, float] = dataclasses.field(default_factory=dict)
    checkpoint_every_steps: int | None = None
    max_to_keep: int = 2
    async_checkpoint: bool = True
    log_every_steps: int | None = None
    eval_every_epochs: int = 1
    progress: bool = True
    method: str | None = None
    checkpoints: bool = True
    max_steps: int | None = None
    tensorboard: bool = False

    def __post_init__(self):
        if self.epochs < 1:
            raise UserError(f"epochs must be at least 1, got {self.epochs}")
        for name in ("checkpoint_every_steps", "log_every_steps", "max_steps"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise UserError(f"{name} must be a positive integer or None, got {v}")
        if self.eval_every_epochs < 1:
            raise UserError(f"eval_every_epochs must be at least 1, got {self.eval_every_epochs}")
        if self.lr_schedule is not None:
            self.lr_schedule = str(LRSchedule.parse(self.lr_schedule))


def with_compute_dtype(model: nnx.Module, dtype: Any) -> nnx.Module:
    """The same network computing in ``dtype`` (e.g. ``jnp.bfloat16``), parameters kept as they are.

    Rebuilds the architecture from ``model.build_config`` and its widths with
    ``dtype=`` (every layer casts its inputs and parameters to it; the loss is
    taken in float32) and moves the variables over.
    """

    config = getattr(model, "build_config", None)
    if config is None:
        raise UserError("this model was not built by isotpp.models.create_model: build it with dtype= instead")
    new = config.create(widths=widths_of(model), abstract=True, dtype=dtype)
    nnx.update(new, nnx.state(model))
    return new


def jsv_hook(x: Any, *, bn: str = "eval", method: str = "auto", prefix: str = "jsv") -> Hook:
    """A per-epoch hook: the JSV summary (:mod:`isotpp.spectra.jacobian`) of the current model on inputs ``x``."""

    def hook(trainer: Trainer, epoch: int) -> dict[str, float]:
        sv = model_singular_values(trainer.host_model(), np.asarray(x), method=method, bn=bn)
        summary = dataclasses.asdict(summarize(sv))
        return {f"{prefix}_{k}": v for k, v in summary.items() if isinstance(v, (int, float))}

    return hook


def _sharded_eval_step(fns: ModelFns, mesh):
    """The engine's evaluation step (:func:`isotpp.training.engine.make_eval_step`) jitted over ``mesh``: the batch as its
    source shards it, the sums replicated."""
    return jax.jit(make_eval_step(fns), out_shardings=parallel.replicated(mesh))


def evaluate_model(model: nnx.Module, eval_data, mesh=None) -> dict[str, float]:
    """``{"test_acc": %, "test_loss": mean}`` of ``model`` (eval mode) over an evaluation source
    (``isotpp.data.pipeline.InMemoryEval``, ``HostEval``): what :meth:`Trainer.evaluate` computes."""
    mesh = mesh or getattr(eval_data, "mesh", None) or parallel.make_mesh()
    fns, params, rest = ModelFns.from_model(model)
    params, rest = parallel.put_replicated((params, rest), mesh)
    return evaluate_batches(_sharded_eval_step(fns, mesh), params, rest, eval_data.batches())


def _to_host(tree):
    """A process-local NumPy copy of (replicated) global arrays."""
    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(x.addressable_data(0))
        return np.asarray(x)

    return jax.tree.map(one, tree)


class Trainer:
    """Data-parallel training of one NNX model; see the module docstring.

    Args:
      model: an NNX model (``isotpp.models.create_model``; for bf16 compute
        build it with ``dtype=jnp.bfloat16`` or use :func:`with_compute_dtype`).
      tx: any optax transformation; for ``lr_schedule`` its learning rate must
        be injected (``isotpp.training.engine.reference_sgd``, ``optax.inject_hyperparams``),
        possibly inside a wrapper such as ``isotpp.pruning.tpp.tpp``.
      train_data: a training source (``isotpp.data.pipeline``: ``InMemoryData``,
        ``HostData``); ``eval_data``: an evaluation source or None.
      config: :class:`TrainConfig`. ``workdir``: where config.json,
        metrics.jsonl and ``checkpoints/`` go (None: nothing is written).
      penalties: named penalties ``params -> scalar`` added to the loss with
        ``config.penalty_weights``.
      hooks: called after each epoch's evaluation as ``hook(trainer, epoch)``;
        their dicts join the epoch's record (on every process; process 0 writes).
      mesh: defaults to the training source's, else every device.
      plan: the pruning plan (``isotpp.pruning.plan.Plan``) recorded with checkpoints.
      extra_config: more JSON-able facts for config.json (command-line arguments).
    """

    def __init__(self, model: nnx.Module, tx: optax.GradientTransformation, train_data, config: TrainConfig,
                 workdir: str | Path | None = None, *, eval_data=None, penalties: Mapping[str, Penalty] | None = None,
                 hooks: Sequence[Hook] = (), mesh=None, plan=None, extra_config: Mapping[str, Any] | None = None):
        self.config = config
        self.train_data, self.eval_data = train_data, eval_data
        self.mesh = mesh or getattr(train_data, "mesh", None) or parallel.make_mesh()
        self.workdir = Path(workdir) if workdir is not None else None
        self.hooks = list(hooks)
        self.plan = plan
        self.extra_config = dict(extra_config or {})
        self.penalties = dict(penalties or {})
        unknown = set(config.penalty_weights) - set(self.penalties)
        if unknown:
            raise UserError(f"penalty weights for unknown penalties {sorted(unknown)}: "
                            f"known are {sorted(self.penalties)}")
        self._schedule = LRSchedule.parse(config.lr_schedule) if config.lr_schedule else None
        self._build = model.build_config.to_dict() if hasattr(model, "build_config") else None
        self._build_config = getattr(model, "build_config", None)
        self._widths = widths_of(model) if self._build is not None else None

        self.fns, params, rest = ModelFns.from_model(model)
        rep = parallel.replicated(self.mesh)
        params, rest = parallel.put_replicated((params, rest), self.mesh)
        lr0 = self._schedule(0) if self._schedule is not None else None

        def init(p):  # with the learning rate as the step sets it (float32), so the step compiles once
            state = tx.init(p)
            return state if lr0 is None else set_learning_rate(state, lr0)

        try:
            opt_state = jax.jit(init, out_shardings=rep)(params)
        except (KeyError, ValueError, TypeError):
            if lr0 is None:
                raise
            raise UserError("the optimiser has no injected learning_rate for lr_schedule: build it with "
                            "isotpp.training.engine.reference_sgd or optax.inject_hyperparams") from None
        self.state = TrainState(params, rest, opt_state)
        self.step = 0  # optimiser steps done
        self.history: list[dict[str, Any]] = []
        self._epoch, self._step_in_epoch = 0, 0
        self._sums = {"loss": 0.0, "correct": 0.0, "steps": 0}  # of the epoch in progress
        self._weights = {k: np.float32(v) for k, v in penalty_weights(self.penalties, config.penalty_weights).items()}

        update = make_update_fn(self.fns, tx, penalties=self.penalties, health=True)
        use_schedule = self._schedule is not None

        def train_step(state, x, y, lr, weights):
            if use_schedule:
                state = state._replace(opt_state=set_learning_rate(state.opt_state, lr))
            return update(state, x, y, weights)

        self._train_step = jax.jit(train_step, out_shardings=(rep, rep), donate_argnums=0)
        self._eval_step = _sharded_eval_step(self.fns, self.mesh)
        self._checkpointer = None
        self._metrics = (MetricsWriter(self.workdir / "metrics.jsonl", tensorboard=config.tensorboard)
                         if self.workdir is not None else None)

    @property
    def checkpointer(self):
        """The workdir's :class:`~isotpp.training.checkpoint.TrainCheckpointer` (None without a workdir or checkpoints)."""
        if self._checkpointer is None and self.workdir is not None and self.config.checkpoints:

            self._checkpointer = TrainCheckpointer(self.workdir / "checkpoints", max_to_keep=self.config.max_to_keep,
                                                   async_save=self.config.async_checkpoint)  # fmt: skip
        return self._checkpointer

    def close(self) -> None:
        """Finish background checkpoint writes and release the checkpointer (fit does this at its end)."""
        if self._checkpointer is not None:
            self._checkpointer.close()
            self._checkpointer = None
        if self._metrics is not None:
            self._metrics.close()

    # ------------------------------------------------------------------
    # Views of the state.
    # ------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        """The epoch in progress (or the next one)."""
        return self._epoch

    def model(self) -> nnx.Module:
        """The current network (eval mode) on the mesh's devices."""
        model = self.fns.merge(self.state.params, self.state.rest)
        if self._build_config is not None:
            model.build_config = self._build_config
        return model

    def host_model(self) -> nnx.Module:
        """The current network (eval mode) as process-local arrays: for saving, spectra, surgery."""
        model = self.fns.merge(*_to_host((self.state.params, self.state.rest)))
        if self._build_config is not None:
            model.build_config = self._build_config
        return model

    def lr(self, epoch: int) -> float | None:
        return self._schedule(epoch) if self._schedule is not None else None

    def train_step(self, x, y, epoch: int = 0) -> dict[str, jax.Array]:
        """One optimiser step on the global batch (x, y) at ``epoch``'s learning rate; metrics stay on device.

        What :meth:`fit` runs per step; also for benchmarks and custom loops.
        """
        lr = self.lr(epoch)
        self.state, metrics = self._train_step(self.state, x, y, np.float32(lr if lr is not None else 0.0),
                                               self._weights)  # fmt: skip
        self.step += 1
        return metrics

    # ------------------------------------------------------------------
    # Evaluation.
    # ------------------------------------------------------------------

    def evaluate(self, eval_data=None) -> dict[str, float]:
        """Accuracy (%) and mean loss over every example of ``eval_data`` (default: the trainer's)."""
        data = eval_data if eval_data is not None else self.eval_data
        if data is None:
            raise UserError("no evaluation data given")
        return evaluate_batches(self._eval_step, self.state.params, self.state.rest, data.batches())

    # ------------------------------------------------------------------
    # Files.
    # ------------------------------------------------------------------

    def _resolved_config(self) -> dict[str, Any]:
        return {
            "train": dataclasses.asdict(self.config),
            "model": {"build": self._build, "widths": self._widths,
                      "param_dtype": str(jax.tree.leaves(self.state.params)[0].dtype)},
            "plan": self.plan.to_dict() if self.plan is not None else None,
            "data": self.train_data.describe() if hasattr(self.train_data, "describe") else None,
            "devices": parallel.describe(self.mesh),
            "jax": jax.__version__,
            **self.extra_config,
        }

    def _meta(self) -> dict[str, Any]:
        return {
            "epoch": self._epoch,
            "step_in_epoch": self._step_in_epoch,
            "steps_per_epoch": self.train_data.steps_per_epoch,
            "global_batch_size": self.train_data.global_batch_size,
            "seed": self.config.seed,
            "epoch_sums": dict(self._sums),
            "history": self.history,
            "model": {"build": self._build, "widths": self._widths},
            "plan": self.plan.to_dict() if self.plan is not None else None,
            "method": self.config.method,
            "data": self.train_data.describe() if hasattr(self.train_data, "describe") else None,
        }

    def _payload(self) -> dict[str, Any]:
        rng = np.asarray(jax.random.key_data(jax.random.key(self.config.seed)))
        counters = {"step": np.int32(self.step), "rng": rng}
        return {"train": self.state, **parallel.put_replicated(counters, self.mesh)}

    def _log(self, record: dict[str, Any]) -> None:
        if self._metrics is not None:
            self._metrics.write(record)

    def _trim_metrics(self, up_to_step: int) -> None:
        """Drop records written after the checkpoint we resume from (they will be written again)."""
        if self._metrics is not None:
            self._metrics.trim(up_to_step)

    def _save(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.save(self.step, self._payload(), self._meta())

    # ------------------------------------------------------------------
    # Resuming.
    # ------------------------------------------------------------------

    def restore(self) -> bool:
        """Load the newest readable checkpoint of the workdir; False when there is none."""
        try:
            return self._restore()
        finally:
            self.close()

    def _check_compatible(self, meta: dict[str, Any]) -> None:
        """Refuse a checkpoint of another architecture or data layout (before reading its arrays)."""
        if meta.get("model", {}).get("widths") != self._widths or meta.get("model", {}).get("build") != self._build:
            theirs = (meta.get("model") or {}).get("build")
            raise UserError(f"the checkpoint in {self.checkpointer.directory} is of another architecture "
                            f"({theirs}): use its model or another workdir")
        for key, have in (("global_batch_size", self.train_data.global_batch_size),
                          ("steps_per_epoch", self.train_data.steps_per_epoch), ("seed", self.config.seed)):
            if meta.get(key) != have:
                raise UserError(f"the checkpoint was made with {key}={meta.get(key)}, this run has {have}: "
                                "resume with the same data, batch size and seed")  # fmt: skip

    def _restore(self) -> bool:
        if self.checkpointer is None:
            raise UserError("resuming needs a workdir with checkpoints")
        found = self.checkpointer.restore(self._payload(), check=self._check_compatible)
        if found is None:
            return False
        _step, payload, meta = found
        self.state, self.step = payload["train"], int(payload["step"])
        self._epoch, self._step_in_epoch = int(meta["epoch"]), int(meta["step_in_epoch"])
        self._sums, self.history = dict(meta["epoch_sums"]), list(meta["history"])
        self._trim_metrics(self.step)
        return True

    # ------------------------------------------------------------------
    # The loop.
    # ------------------------------------------------------------------

    def _flush(self, pending: list) -> dict[str, float] | None:
        """Fetch the metrics of the steps since the last flush; stop on a NaN/inf loss."""
        if not pending:
            return None
        fetched = jax.device_get(pending)
        pending.clear()
        losses = np.asarray([m["loss"] for m in fetched], np.float64)
        norms = np.asarray([m["param_norm"] for m in fetched], np.float64)
        first = self.step - len(fetched) + 1
        if not (np.isfinite(losses) & np.isfinite(norms)).all():  # a finite loss can still leave inf parameters
            kept = self.checkpointer.latest_step() if self.checkpointer else None
            check_finite(losses, norms, where=lambda i: f"at step {first + i}", what="loss or parameters",
                         kept_step=kept)
        self._sums["loss"] += float(losses.sum())
        self._sums["correct"] += float(sum(float(m["correct"]) for m in fetched))
        self._sums["steps"] += len(fetched)
        last = fetched[-1]
        return {"loss": float(last["loss"]), "grad_norm": float(last["grad_norm"]),
                "param_norm": float(last["param_norm"])}

    def _preempted(self) -> bool:
        if jax.process_count() > 1 and self.checkpointer is not None:
            return self.checkpointer.reached_preemption(self.step)
        return preemption.requested()

    def _stop(self) -> None:
        """Everything is saved: report and raise :class:`Preempted`."""
        if self.checkpointer is not None:
            self.checkpointer.wait()
        err = _preempted_error(self.step, self.checkpointer.directory if self.checkpointer else None)
        if parallel.is_main_process():
            logger.warning("%s", err)
        err.reported = True
        raise err

    def fit(self, resume: bool = False) -> tuple[list[dict[str, Any]], nnx.Module]:
        """Train to ``config.epochs``; returns (per-epoch records, the final model on the devices).

        ``resume``: continue from the newest readable checkpoint in the workdir
        (a fresh start when there is none). Without it, a workdir that already
        holds checkpoints is refused rather than overwritten.
        """
        cfg = self.config
        with preemption.sigterm_stops():
            try:  # whatever happens, orbax's background threads are finished before we return
                self._start(resume)
                steps = self.train_data.steps_per_epoch
                while self._epoch < cfg.epochs and not self._budget_spent():
                    self._run_epoch(self._epoch, steps)
                if self._preempted():  # arrived during the last epoch's evaluation, hooks or save: all is saved
                    self._stop()
            finally:
                self.close()
        return self.history, self.model()

    def _start(self, resume: bool) -> None:
        """Restore (``resume``) or refuse a workdir that holds checkpoints; write config.json."""
        restored = False
        if resume:
            restored = self._restore()
            if restored:
                _note(f"resuming from step {self.step} (epoch {self._epoch}, step {self._step_in_epoch} of it)")
            else:
                _note("no checkpoint to resume from: starting from scratch")
        elif self.checkpointer is not None and self.checkpointer.latest_step() is not None:
            raise UserError(f"{self.checkpointer.directory} already holds checkpoints (step "
                            f"{self.checkpointer.latest_step()}): pass --resume to continue or use another workdir")
        if not restored and self.step == 0:
            self._trim_metrics(0)  # a fresh start: no records of an earlier attempt that left no checkpoint
        if self.workdir is not None and parallel.is_main_process():
            write_json(self.workdir / "config.json", self._resolved_config())

    def _budget_spent(self) -> bool:
        return self.config.max_steps is not None and self.step >= self.config.max_steps

    def _run_epoch(self, epoch: int, steps: int) -> None:
        cfg = self.config
        lr = self.lr(epoch)
        pending: list = []
        start = self._step_in_epoch
        ran = 0
        t0 = time.perf_counter()
        bar = progress_bar(steps, f"epoch {epoch + 1}/{cfg.epochs}", unit="step", initial=start,
                           enabled=cfg.progress and parallel.is_main_process())
        batches = self.train_data.epoch(epoch, start)
        closing = contextlib.closing(batches) if hasattr(batches, "close") else contextlib.nullcontext()
        with contextlib.closing(bar), closing:  # leaving early (max_steps, SIGTERM) stops a prefetch thread
            for x, y in batches:
                pending.append(self.train_step(x, y, epoch))
                self._step_in_epoch += 1
                ran += 1
                bar.update(1)
                last_of_epoch = self._step_in_epoch == steps or self._budget_spent()
                if cfg.log_every_steps and self.step % cfg.log_every_steps == 0:
                    health = self._flush(pending)
                    if health is not None:
                        bar.set_postfix(loss=f"{health['loss']:.4f}")
                        self._log({"step": self.step, "epoch": epoch, **health})
                if not last_of_epoch and cfg.checkpoint_every_steps and self.step % cfg.checkpoint_every_steps == 0:
                    self._flush(pending)
                    self._save()
                if self._preempted():
                    self._flush(pending)
                    self._save()
                    self._stop()
                if self._budget_spent():
                    break
            self._flush(pending)
        seconds = time.perf_counter() - t0
        done = self._sums["steps"]
        record = {
            "epoch": epoch,
            "step": self.step,
            "lr": lr,
            "train_loss": self._sums["loss"] / max(done, 1),
            "train_acc": 100.0 * self._sums["correct"] / max(done * self.train_data.global_batch_size, 1),
            "seconds": seconds,
            "images_per_s": ran * self.train_data.global_batch_size / max(seconds, 1e-9),
        }
        if self.eval_data is not None and ((epoch + 1) % cfg.eval_every_epochs == 0 or epoch + 1 == cfg.epochs):
            record.update(self.evaluate())
        for hook in self.hooks:
            record.update(hook(self, epoch) or {})
        self.history.append(record)
        self._epoch, self._step_in_epoch = epoch + 1, 0
        self._sums = {"loss": 0.0, "correct": 0.0, "steps": 0}
        self._log(record)  # before the save: a record is never newer than the checkpoint after it
        self._save()


def _note(message: str) -> None:
    if parallel.is_main_process():
        logger.warning("%s", message)
