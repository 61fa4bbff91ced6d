"""One pruning run, end to end: base model → method → removal → retraining.

``isotpp prune`` (without ``--dry-run``) is :func:`run_pruning` over a
:class:`PruneConfig`. The stages and what each leaves in the run directory:

1. **base** — a given model file (``--base``: an isotpp ``.npz`` or a
   PyTorch/torchvision ``.pth``) or one trained here with the base recipe
   (``base/``: trainer workdir, ``base/model.npz``);
2. **method phase** (``pre/``) — the method's pre-removal phase, if any: TPP's
   penalty phases on the L1-chosen filters, or KernOrth / OrthConv for
   ``pre_iters`` iterations before L1 chooses;
3. **removal** — the method's selection (L1 for the paper's methods;
   ``plan.json``), physical removal, then its post-removal step: OrthP or
   approximate isometry for the methods that use them, a fresh
   initialisation for Scratch (``pruned.npz``, with the mean JSV right after
   pruning);
4. **retraining** (``retrain/``) — with the method's penalty, the mean JSV
   and test accuracy every epoch (``final.npz``);
5. ``summary.json`` — accuracy, JSV, sparsity, speedup, wall time.

The data are an in-memory dataset (:func:`isotpp.data.load_dataset`: CIFAR,
(Fashion-)MNIST, synthetic) or, for ``dataset="imagenet"``, an ImageFolder tree
``data_dir/{train,val}/<class>/<image>`` read by Grain worker processes
(:mod:`isotpp.data.imagefolder`: random-resized crop and flip for training,
resize and centre crop for evaluation and the JSV probe).

Every stage is skipped when its output exists and resumes from its last
checkpoint otherwise, so rerunning the same command finishes an interrupted
run. The method is an :class:`isotpp.pruning.methods.Method` from the registry;
:func:`isotpp.pruning.methods.pruned_start` runs its hooks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from isotpp import parallel
from isotpp.data import DATASET_INFO, load_dataset
from isotpp.data.identity import data_identity
from isotpp.data.imagefolder import (
    EvalTransform,
    ImageFolder,
    imagefolder_eval_source,
    imagefolder_train_source,
    scan_imagefolder,
)
from isotpp.data.pipeline import InMemoryData, InMemoryEval, pad_fill
from isotpp.errors import UserError
from isotpp.models import BuildConfig, create_model, layer_names, widths_of
from isotpp.preemption import check, sigterm_stops
from isotpp.pruning.config import PruneConfig, is_imagenet
from isotpp.pruning.cost import widths_after, widths_cost
from isotpp.pruning.methods import (
    MethodSettings,
    Phase,
    PhaseRunner,
    get_method,
    pruned_start,
)
from isotpp.pruning.model_file import load_model, read_header, save_model
from isotpp.pruning.plan import Plan
from isotpp.pruning.torch_convert import load_torch_checkpoint
from isotpp.spectra.jacobian import model_singular_values
from isotpp.storage.atomic import read_json, write_json
from isotpp.studies.rundir import check_path, open_run
from isotpp.training.engine import LRSchedule, reference_sgd
from isotpp.training.sharded import TrainConfig, Trainer, evaluate_model, jsv_hook

logger = logging.getLogger(__name__)


def default_workers() -> int:
    """Grain decoding processes when none are given: min(16, CPUs)."""

    return min(16, os.cpu_count() or 1)


@dataclasses.dataclass
class _Data:
    """An in-memory dataset (:func:`isotpp.data.load_dataset`) on every device.

    The interface the stages use, shared with :class:`_FolderData`:
    ``num_train``, ``num_classes``, ``input_shape``, ``steps_per_epoch(batch)``,
    ``source(config, seed, augment)`` (training), ``evaluation()`` (eval
    source: what :func:`evaluate` measures) and ``probe(n)`` (JSV inputs).
    """

    train: Any  # isotpp.data.Dataset
    test: Any
    mesh: Any
    fill: Any

    @property
    def num_train(self) -> int:
        return int(self.train.images.shape[0])

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.train.input_shape

    def steps_per_epoch(self, batch_size: int) -> int:
        return -(-self.num_train // batch_size)  # InMemoryData tops the last batch up

    def splits(self) -> dict[str, Any]:
        return {"train": self.train, "test": self.test}

    def source(self, config: PruneConfig, seed: int, augment: bool):
        return InMemoryData(self.train.images, self.train.labels, batch_size=config.batch_size, mesh=self.mesh,
                            seed=seed, augment=augment, fill=self.fill)

    def evaluation(self):
        return InMemoryEval(self.test.images, self.test.labels, self.mesh, batch_size=1000)

    def probe(self, n: int) -> np.ndarray:
        """The first ``n`` training images: the JSV inputs (as the reference, from the train set)."""
        return np.asarray(self.train.images[:n])

@dataclasses.dataclass
class _FolderData:
    """An ImageFolder tree (``dataset="imagenet"``) read by Grain: :class:`_Data`'s interface.

    Training batches: random-resized crop + flip (``augment``) of ``image_size``,
    the last incomplete batch dropped; evaluation: every validation image once,
    resized (shorter side ``resize``) and centre-cropped; the JSV probe: the
    first validation images under the eval transform.
    """

    train: Any  # isotpp.data.imagefolder.ImageFolder
    val: Any
    mesh: Any
    workers: int
    image_size: int
    resize: int
    eval_batch_size: int
    _probe: np.ndarray | None = dataclasses.field(default=None, repr=False)

    @property
    def num_train(self) -> int:
        return len(self.train)

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.image_size, self.image_size, 3)

    def steps_per_epoch(self, batch_size: int) -> int:
        return self.num_train // batch_size  # the Grain loader drops the last incomplete batch

    def splits(self) -> dict[str, Any]:
        return {"train": self.train, "val": self.val}

    def source(self, config: PruneConfig, seed: int, augment: bool):
        return imagefolder_train_source(self.train, global_batch_size=config.batch_size, mesh=self.mesh, seed=seed,
                                        workers=self.workers, size=self.image_size, resize=self.resize,
                                        augment=augment)

    def evaluation(self):
        return imagefolder_eval_source(self.val, batch_size=self.eval_batch_size, mesh=self.mesh,
                                       workers=self.workers, size=self.image_size, resize=self.resize)

    def probe(self, n: int) -> np.ndarray:
        """The first ``n`` validation images under the eval transform: the JSV inputs, (n, size, size, 3)."""

        n = min(n, len(self.val))
        if self._probe is None or self._probe.shape[0] < n:
            transform = EvalTransform(self.image_size, self.resize)
            self._probe = np.stack([transform((*self.val[i], True))[0] for i in range(n)])
        return self._probe[:n]

RunData = _Data | _FolderData  # what the stages read their data from


def _load_folder(config: PruneConfig) -> _FolderData:
    """The ImageFolder tree of ``config.data_dir``; one-line UserErrors for a missing or empty tree."""

    if not config.data_dir:
        raise UserError(f"--dataset {config.dataset} needs --data-dir DIR: the ImageFolder tree holding "
                        "train/<class>/*.JPEG and val/<class>/*.JPEG")
    root = Path(config.data_dir)
    if not root.is_dir():
        raise UserError(f"--data-dir {root} does not exist: point it at the directory holding train/ and val/")
    train = scan_imagefolder(root / "train")
    val = scan_imagefolder(root / "val", classes=train.classes)
    if config.train_limit is not None and config.train_limit < len(train):
        keep = np.sort(np.random.default_rng(0).permutation(len(train))[: config.train_limit])
        train = ImageFolder(train.root, train.classes, tuple(train.files[i] for i in keep),
                            tuple(train.labels[i] for i in keep))
    if config.batch_size > len(train):
        raise UserError(f"batch size {config.batch_size} exceeds the {len(train)} training images under "
                        f"{root / 'train'}: lower --batch-size")
    workers = config.workers if config.workers is not None else default_workers()
    return _FolderData(train, val, parallel.make_mesh(), workers, config.image_size, config.resize,
                       config.batch_size)


def load_data(config: PruneConfig) -> RunData:
    """The run's data (train/test arrays, or ImageNet's Grain pipelines) as ``config`` names it."""

    if is_imagenet(config.dataset):
        return _load_folder(config)
    train = load_dataset(config.dataset, "train", data_dir=config.data_dir, limit=config.train_limit)
    test = load_dataset(config.dataset, "test", data_dir=config.data_dir)
    info = DATASET_INFO[train.name]
    return _Data(train, test, parallel.make_mesh(), pad_fill(info.mean, info.std))


def _augment(config: PruneConfig) -> bool:
    if config.augment is not None:
        return config.augment
    return config.dataset.startswith("cifar") or is_imagenet(config.dataset)


def _new_model(config: PruneConfig, num_classes: int, input_shape, widths=None, seed=None):
    if widths is None and config.width_scale != 1.0:

        canonical = widths_of(create_model(config.model, num_classes=num_classes, input_shape=input_shape)
                              .build_config.create(abstract=True))
        last = list(canonical)[-1]
        widths = {k: v if k == last else max(1, round(v * config.width_scale)) for k, v in canonical.items()}
    return create_model(config.model, num_classes=num_classes, input_shape=input_shape, widths=widths,
                        init=config.init, seed=config.seed if seed is None else seed,
                        dtype=jnp.bfloat16 if config.bf16 else None)


def _train(model, tx, data: RunData, config: PruneConfig, workdir: Path, *, epochs: int, lr_schedule: str | None,
           seed: int, max_steps: int | None = None, penalties=None, weights=None, hooks=(), plan=None,
           method: str | None = None):
    tc = TrainConfig(epochs=epochs, lr_schedule=lr_schedule, seed=seed, penalty_weights=weights or {},
                     checkpoint_every_steps=config.checkpoint_every, progress=config.progress, method=method,
                     max_steps=max_steps)
    trainer = Trainer(model, tx, data.source(config, seed, _augment(config)), tc, workdir,
                      eval_data=data.evaluation(), penalties=penalties, hooks=hooks, plan=plan,
                      extra_config={"prune_config": config.to_dict()})
    history, _ = trainer.fit(resume=True)
    return trainer, history


def mean_jsv(model, x, bn: str) -> float:
    """Mean Jacobian singular value of ``model`` over the samples ``x``; ``bn`` is "batch" (BatchNorm
    with the probe's batch statistics, the reference's measurement) or "eval" (running statistics)."""

    return float(np.mean(model_singular_values(model, x, method="auto", bn=bn)))


def _kernel_names(model) -> list[str]:
    return [f"{n}.kernel" for n in layer_names(model)]


# --------------------------------------------------------------------------
# Stages.
# --------------------------------------------------------------------------


def base_model(config: PruneConfig, data: RunData, out: Path, log):
    """The trained model the method starts from."""

    if config.base is not None:
        if str(config.base).endswith((".pth", ".pt")):

            return load_torch_checkpoint(config.base, config.model, num_classes=data.num_classes)
        model, _ = load_model(config.base)
        if model.build_config.name != config.model:
            raise UserError(f"--base holds a {model.build_config.name}, not a {config.model}: pass --model "
                            f"{model.build_config.name} or another --base")
        return model
    path = out / "base" / "model.npz"
    if path.exists():
        return load_model(path)[0]
    log(f"training the base {config.model} for {config.base_epochs} epochs ({config.base_lr_schedule})")
    model = _new_model(config, data.num_classes, data.input_shape)
    tx = reference_sgd(LRSchedule.parse(config.base_lr_schedule).initial, config.weight_decay, config.momentum)
    trainer, history = _train(model, tx, data, config, out / "base", epochs=config.base_epochs,
                              lr_schedule=config.base_lr_schedule, seed=config.seed, method="base")
    model = trainer.host_model()
    save_model(path, model, {"stage": "base", "test_acc": history[-1].get("test_acc") if history else None})
    return model


def method_settings(config: PruneConfig, data: RunData) -> MethodSettings:
    """What the method's hooks read, from the run's settings."""
    return MethodSettings(
        ratios=config.ratios, skip=tuple(config.skip), seed=config.seed, weight_decay=config.weight_decay,
        momentum=config.momentum, tpp_lr=config.tpp_lr, lw_opp=config.lw_opp,
        tpp_reg_granularity=config.reg_granularity, tpp_update_reg_interval=config.update_reg_interval,
        tpp_stabilize_iters=config.stabilize_iters, tpp_zero_out_interval=config.zero_out_interval,
        pre_iters=config.pre_iters, pre_lr=config.pre_lr, pre_scheme=config.pre_scheme,
        kernorth_rule=config.kernorth_rule, penalty_weight=config.penalty_weight, ai_iters=config.ai_iters,
        new_model=lambda widths: _new_model(config, data.num_classes, data.input_shape, widths=widths,
                                            seed=config.seed + 1000))


def phase_runner(config: PruneConfig, data: RunData, out: Path, log) -> PhaseRunner:
    """Runs a method's pre-removal :class:`~isotpp.pruning.methods.Phase` with the sharded trainer in ``out/pre``."""

    def run(model, phase: Phase, plan):
        steps = data.steps_per_epoch(config.batch_size)
        log(f"{phase.name}: {phase.description or f'{phase.steps} iterations'}")
        trainer, _ = _train(model, phase.tx, data, config, out / "pre", epochs=math.ceil(phase.steps / steps),
                            lr_schedule=None, seed=config.seed + 1, max_steps=phase.steps, plan=plan,
                            method=phase.name, penalties=dict(phase.penalties) or None,
                            weights=dict(phase.weights) or None)
        return trainer.host_model(), {}

    return run


def pruned_model(config: PruneConfig, data: RunData, base, out: Path, log):
    """The network to retrain, after the method's phase, removal and post-processing."""

    path = out / "pruned.npz"
    if path.exists():
        model, header = load_model(path)
        return model, header["meta"]
    method = get_method(config.method)
    plan_path = out / "plan.json"

    def on_plan(plan: Plan) -> Plan:  # a resumed phase keeps the plan it started with
        plan = Plan.load(plan_path) if plan_path.exists() else plan
        plan.save(plan_path)
        return plan

    small = pruned_start(method, base, method_settings(config, data), run_phase=phase_runner(config, data, out, log),
                         on_plan=on_plan)
    jsv = mean_jsv(small, data.probe(config.jsv_samples), config.jsv_bn)
    meta = {"stage": "pruned", "method": method.name, "jsv_after_prune": jsv}
    save_model(path, small, meta)
    log(f"{method.name}: pruned to {sum(widths_of(small).values())} channels; mean JSV right after pruning {jsv:.4g}")
    return small, meta


def retrain(config: PruneConfig, data: RunData, small, out: Path, log):
    method = get_method(config.method)
    terms = method.retrain_penalties(_kernel_names(small), method_settings(config, data))
    penalties = {k: fn for k, (fn, _) in terms.items()}
    weights = {k: w for k, (_, w) in terms.items()}
    tx = reference_sgd(LRSchedule.parse(config.lr_schedule).initial, config.weight_decay, config.momentum)
    hook = jsv_hook(data.probe(config.jsv_samples), bn=config.jsv_bn)
    return _train(small, tx, data, config, out / "retrain", epochs=config.epochs, lr_schedule=config.lr_schedule,
                  seed=config.seed + 2, penalties=penalties, weights=weights, hooks=[hook], method=method.name)


# Settings that may change between the calls that finish one run (they do not change its results).
REUSABLE = ("data_dir", "out", "shared", "progress", "workers", "checkpoint_every")
RENAMED = {"wd": "weight_decay", "stabilize_reg_interval": "stabilize_iters"}  # settings keys of isotpp 0.1
RETRAINING = ("epochs", "lr_schedule")  # what runs sharing their earlier stages (``shared``) may differ in
RESUME_HINT = "run the same command again to continue"


def check_inputs(config: PruneConfig, data: RunData) -> None:
    """Refuse ratio or skip patterns that match no layer of the model, and an isotpp base model file of
    another architecture, before anything is trained or written."""

    abstract = BuildConfig(config.model, data.num_classes, tuple(data.input_shape)).create(abstract=True)
    widths_after(abstract, config.ratios, config.skip)
    if config.base is not None and not str(config.base).endswith((".pth", ".pt")):
        arch = (read_header(config.base).get("build") or {}).get("arch")
        if arch != config.model:
            raise UserError(f"--base holds a {arch}, not a {config.model}: pass --model {arch} or another --base")


def run_pruning(config: PruneConfig, *, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run (or finish) one pruning run in ``config.out``; returns the summary (also summary.json).

    Everything is checked (settings, the run directory, the data, the
    patterns against the model) before anything is written; ``config.out``
    (and ``config.shared``) are locked for the run, and a directory that
    holds a run with other settings is refused. SIGTERM stops the run at the
    next step or stage boundary with :class:`~isotpp.preemption.Preempted`;
    calling again with the same config finishes it.
    """
    log = log or logger.info  # the command line passes print

    config = config.validate()
    out = check_path(config.out)
    shared = check_path(config.shared, "shared directory") if config.shared else out
    settings, defaults = config.to_dict(), PruneConfig().to_dict()
    with contextlib.ExitStack() as stack:
        stack.enter_context(sigterm_stops(RESUME_HINT))
        runs = [stack.enter_context(open_run(out, settings, kind="pruning run", reusable=REUSABLE,
                                             defaults=defaults, renamed=RENAMED))]
        if shared.absolute() != out.absolute():
            runs.append(stack.enter_context(open_run(
                shared, {k: v for k, v in settings.items() if k not in RETRAINING},
                kind="set of shared pruning stages", reusable=REUSABLE, defaults=defaults, renamed=RENAMED)))
        if (out / "summary.json").exists():  # finished: shown again, nothing computed (no data needed)
            return read_json(out / "summary.json")
        data = load_data(config)
        for run in runs:
            run.check_data(data_identity(config.dataset, **data.splits()))
        check_inputs(config, data)
        for run in runs:
            run.record()
        return _run_stages(config, data, out, shared, log)


def _run_stages(config: PruneConfig, data: RunData, out: Path, shared: Path, log) -> dict[str, Any]:
    t0 = time.time()
    main = parallel.is_main_process()
    kept = f"finished stages are kept in {shared}"
    base = base_model(config, data, shared, log)
    check(kept)
    base_acc = evaluate(base, data)
    small, meta = pruned_model(config, data, base, shared, log)
    check(kept)
    trainer, history = retrain(config, data, small, out, log)
    final = trainer.host_model()
    cost = widths_cost(base, widths_of(small))
    accs = [r["test_acc"] for r in history if "test_acc" in r]
    summary = {
        "model": config.model, "dataset": config.dataset, "method": meta["method"], "ratios": config.ratios,
        "skip": list(config.skip), "seed": config.seed, "lr_schedule": config.lr_schedule, "epochs": config.epochs,
        "base_acc": base_acc, "jsv_after_prune": meta["jsv_after_prune"],
        "best_acc": max(accs) if accs else None, "final_acc": accs[-1] if accs else None,
        "acc_per_epoch": accs, "jsv_per_epoch": [r.get("jsv_mean") for r in history],
        "params": cost.params, "params_pruned": cost.params_pruned, "sparsity": cost.sparsity,
        "flops": cost.flops, "flops_pruned": cost.flops_pruned, "speedup": cost.speedup,
        "wall_s": time.time() - t0,
    }
    if main:  # summary.json last: it marks the run finished
        save_model(out / "final.npz", final, {"stage": "final", **{k: summary[k] for k in ("method", "best_acc")}})
        write_json(out / "summary.json", summary)
    return summary


def evaluate(model, data: RunData) -> float:
    """Test (ImageNet: validation) accuracy (%) of a model in eval mode: the trainer's evaluation
    (:func:`isotpp.training.sharded.evaluate_model`) over the run's evaluation source."""
    return evaluate_model(model, data.evaluation(), data.mesh)["test_acc"]
