"""The linear-network study of the TPP paper, end to end (REFERENCE §5).

Train MLP-7-Linear (1024 → 100×5 → 10, identity activations) from scratch,
prune 80 % of every hidden layer with each method, record the mean JSV right
after pruning, retrain at two learning rates and record test accuracy and mean
JSV per epoch. The methods are :mod:`isotpp.methods`' registry (any
registered method runs here); by default the study's five,
``study_methods("mlp-linear")``: L1, L1+OrthP, TPP, L1+KernOrth (0.1 · Σ
‖MᵀM − I‖_F over every layer while retraining) and L1+AI. Each method's
pre-removal phase (TPP's, say) runs once per seed on the trained model.

All retraining cells of a seed (methods × learning rates) share one
architecture, so they train as one vmapped program over the same batches. Each
finished piece (base model, TPP model, retraining cells) is saved in the run
directory as it completes; a rerun reuses them and computes only what is
missing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from isotpp import preemption
from isotpp.errors import UserError
from isotpp.io import read_json, write_json
from isotpp.methods import (
    MethodSettings,
    Phase,
    get_method,
    pruned_start,
    study_methods,
)
from isotpp.progress import progress as progress_bar
from isotpp.train import (
    LRSchedule,
    ModelFns,
    RunGroup,
    check_finite,
    epoch_batches,
    init_state,
    reference_sgd,
    stack_runs,
    unstack_run,
)

logger = logging.getLogger(__name__)


ARCH = "mlp_7_linear"
METHODS = study_methods("mlp-linear")  # the default; any registered method is accepted
PAPER_LRS = {"0.01": "0:0.01,30:0.001,60:0.0001", "0.001": "0:0.001,45:0.0001"}


def canonical_method(name: str) -> str:
    """The registry's name for a method (aliases KernOrth, AI, OrthP accepted)."""
    return get_method(name).name


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """Everything that defines a study; the defaults are the paper's schedule."""

    dataset: str = "fashion_mnist"
    data_dir: str | None = None
    seeds: tuple[int, ...] = (0, 1, 2)
    methods: tuple[str, ...] = METHODS
    ratio: float = 0.8
    batch_size: int = 100
    weight_decay: float = 1e-4  # the reference's default --wd
    init: str = "torch"  # the reference trains from PyTorch's default init
    base_epochs: int = 90
    base_lr: str = "0:0.01,30:0.001,60:0.0001"
    retrain_epochs: int = 90
    lr_schedules: tuple[tuple[str, str], ...] = tuple(PAPER_LRS.items())
    tpp_lr: float = 1e-3
    tpp_reg_granularity: float = 1e-4
    tpp_update_reg_interval: int = 10
    tpp_stabilize_iters: int = 10_000
    tpp_zero_out_interval: int = 100
    kernorth_weight: float = 0.1  # the reference's --lw_orth_reg
    ai_iters: int = 10_000
    ai_lr: float = 0.1
    train_limit: int | None = None  # first n training examples (tests)
    quick: bool = False

    # fields that may differ between runs sharing one directory
    _REUSABLE = ("seeds", "methods", "data_dir")

    def validate(self) -> StudyConfig:
        if not (0.0 < self.ratio < 1.0):
            raise UserError(f"pruning ratio {self.ratio} is outside (0, 1): use e.g. 0.8")
        if not self.seeds:
            raise UserError("no seeds: pass --seeds N with N >= 1")
        for m in self.methods:
            canonical_method(m)
        for _, text in self.lr_schedules:
            LRSchedule.parse(text)
        LRSchedule.parse(self.base_lr)
        for name in ("batch_size", "base_epochs", "retrain_epochs", "tpp_update_reg_interval",
                     "tpp_stabilize_iters", "tpp_zero_out_interval"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")
        return self

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["lr_schedules"] = dict(self.lr_schedules)
        return d

    def tpp_config(self):
        from isotpp.tpp import TPPConfig

        return TPPConfig(reg_granularity=self.tpp_reg_granularity, update_reg_interval=self.tpp_update_reg_interval,
                         stabilize_iters=self.tpp_stabilize_iters, zero_out_interval=self.tpp_zero_out_interval)


def quick_config(**overrides) -> StudyConfig:
    """A reduced schedule that shows the mechanism in a few minutes on a 2-core CPU."""
    base = {
        "base_epochs": 10, "base_lr": "0:0.01,6:0.001",
        "retrain_epochs": 10, "lr_schedules": (("0.01", "0:0.01,5:0.001"), ("0.001", "0:0.001,7:0.0001")),
        "tpp_reg_granularity": 1e-3, "tpp_update_reg_interval": 1, "tpp_stabilize_iters": 700,
        "ai_iters": 2000, "quick": True,
    }
    return StudyConfig(**(base | overrides))


# --------------------------------------------------------------------------
# Pieces.
# --------------------------------------------------------------------------


@dataclasses.dataclass
class Data:
    train_x: jax.Array
    train_y: jax.Array
    test_x: jax.Array
    test_y: jax.Array

    @property
    def n_train(self) -> int:
        return int(self.train_x.shape[0])


def load_data(config: StudyConfig) -> Data:
    from isotpp.data import load_dataset

    train = load_dataset(config.dataset, "train", data_dir=config.data_dir, limit=config.train_limit)
    test = load_dataset(config.dataset, "test", data_dir=config.data_dir)
    if train.images.shape[1:] != (32, 32, 1):
        raise UserError(f"{config.dataset} gives images of shape {train.images.shape[1:]}, MLP-7-Linear needs 32x32x1")
    return Data(jnp.asarray(train.images), jnp.asarray(train.labels), jnp.asarray(test.images), jnp.asarray(test.labels))


def mean_jsv_fn(layer_kernels: Sequence[str]) -> Callable:
    """Params → mean JSV of the (linear) network, exact; vmappable over runs."""
    from isotpp.groups import flat_arrays
    from isotpp.spectrum import kernel_product_singular_values

    def f(params):
        flat = flat_arrays(params)
        return jnp.mean(kernel_product_singular_values([flat[k] for k in layer_kernels]))

    return f


def model_mean_jsv(model) -> float:
    from isotpp.spectrum import model_singular_values

    return float(np.mean(model_singular_values(model, None, method="linear")))


class Recorder:
    """Appends metrics as JSON lines to DIR/metrics.jsonl (one line per event)."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, **record):
        from isotpp.io import _jsonable

        record = {"time": round(time.time(), 3), **record}
        with open(self.path, "a") as f:
            f.write(json.dumps(_jsonable(record)) + "\n")


def _progress(total: int, desc: str, enabled: bool):
    return progress_bar(total, desc, unit="ep", enabled=enabled)


def _kernel_names(model) -> list[str]:
    from isotpp.models import layer_names

    return [f"{n}.kernel" for n in layer_names(model)]


def train_base(config: StudyConfig, data: Data, seed: int, record: Recorder, progress: bool):
    """MLP-7-Linear from scratch; returns (model, test accuracy, mean JSV)."""
    from isotpp.models import create_model

    model = create_model(ARCH, init=config.init, seed=seed)
    fns, params, rest = ModelFns.from_model(model)
    tx = reference_sgd(weight_decay=config.weight_decay)
    group = RunGroup(fns, tx, stack_runs([init_state(params, rest, tx)]), [LRSchedule.parse(config.base_lr)])
    jsv = jax.jit(jax.vmap(mean_jsv_fn(_kernel_names(model))))
    key = jax.random.fold_in(jax.random.key(seed), 1)
    bar = _progress(config.base_epochs, f"seed {seed}: base", progress)
    acc = np.zeros(1)
    for epoch in range(config.base_epochs):
        batches = epoch_batches(jax.random.fold_in(key, epoch), data.n_train, config.batch_size)
        m = group.run_epoch(data.train_x, data.train_y, batches, epoch)
        check_finite(m["loss"], where=f"base training, seed {seed}, epoch {epoch + 1}")
        acc = group.evaluate(data.test_x, data.test_y)
        j = np.asarray(jsv(group.state.params))
        preemption.check()
        record(phase="base", seed=seed, epoch=epoch + 1, loss=m["loss"][0], train_acc=m["train_acc"][0],
               test_acc=acc[0], mean_jsv=j[0])
        bar.set_postfix(loss=f"{m['loss'][0]:.3f}", acc=f"{acc[0]:.2f}")
        bar.update()
    bar.close()
    trained = fns.merge(unstack_run(group.state.params, 0), unstack_run(group.state.rest, 0))
    return trained, float(acc[0]), model_mean_jsv(trained)


def method_settings(config: StudyConfig, seed: int) -> MethodSettings:
    """What the methods' hooks read: 80 % of every hidden layer (the classifier kept), the study's schedules."""
    from isotpp.models import create_model

    return MethodSettings(
        ratios={"*": config.ratio}, skip=("net.12",), seed=seed, weight_decay=config.weight_decay,
        tpp_lr=config.tpp_lr, tpp_reg_granularity=config.tpp_reg_granularity,
        tpp_update_reg_interval=config.tpp_update_reg_interval, tpp_stabilize_iters=config.tpp_stabilize_iters,
        tpp_zero_out_interval=config.tpp_zero_out_interval, penalty_weight=config.kernorth_weight,
        ai_iters=config.ai_iters, ai_lr=config.ai_lr,
        new_model=lambda widths: create_model(ARCH, widths=widths, init=config.init, seed=seed + 1000))


def run_phase(config: StudyConfig, data: Data, base, phase: Phase, seed: int, record: Recorder, progress: bool):
    """A method's pre-removal phase (TPP's penalty phases, say) from the trained base, as a one-run group;
    returns the trained (unpruned) model and the phase's summary."""
    fns, params, rest = ModelFns.from_model(base)
    weights = {k: np.asarray([w]) for k, w in phase.weights.items()}
    group = RunGroup(fns, phase.tx, stack_runs([init_state(params, rest, phase.tx)]),
                     [LRSchedule.parse(str(phase.lr))], weights, dict(phase.penalties))
    key = jax.random.fold_in(jax.random.key(seed), 2)
    total = phase.steps
    steps = -(-data.n_train // config.batch_size)
    n_epochs = -(-total // steps)
    bar = _progress(n_epochs, f"seed {seed}: {phase.name}", progress)
    done = 0
    for epoch in range(n_epochs):
        batches = epoch_batches(jax.random.fold_in(key, epoch), data.n_train, config.batch_size)
        batches = batches[: total - done]
        m = group.run_epoch(data.train_x, data.train_y, batches, 0)
        done += int(batches.shape[0])
        check_finite(m["loss"], where=f"{phase.name}, seed {seed}, iteration {done}")
        preemption.check()
        info = phase.progress(unstack_run(group.state.opt_state, 0)) if phase.progress else {}
        record(phase=phase.key, seed=seed, iteration=done, loss=m["loss"][0], **info)
        bar.set_postfix(**{k: f"{v:.3g}" if isinstance(v, float) else v for k, v in info.items()})
        bar.update()
    bar.close()
    state = unstack_run(group.state.opt_state, 0)
    summary = phase.summary(state) if phase.summary else {"iteration": done}
    return fns.merge(unstack_run(group.state.params, 0), unstack_run(group.state.rest, 0)), summary


def start_piece(config: StudyConfig, data: Data, out: Path, base, method: str, seed: int, record: Recorder,
                progress: bool, clock, log):
    """The network ``method`` retrains at ``seed`` (:func:`isotpp.methods.pruned_start`). The pruned network
    after a pre-removal phase (the expensive part) is committed as ``seed<s>/<key>.npz`` (TPP: ``tpp.npz``,
    with ``tpp_state.json``) and reused by a rerun."""
    from isotpp.checkpoint import load_model, save_model
    from isotpp.rundir import Commit

    method = get_method(method)
    sdir = out / f"seed{seed}"
    path = sdir / f"{method.key}.npz"
    summaries = []

    def run(model, phase, plan):
        trained, summary = run_phase(config, data, model, phase, seed, record, progress)
        summaries.append(summary)
        return trained, summary

    def removed(make):
        if path.exists():
            return load_model(path)[0]
        small = make()
        if summaries:  # a phase ran: keep its result
            with Commit(out) as commit:
                save_model(commit.path(path), small, {"seed": seed})
                write_json(commit.path(sdir / f"{method.key}_state.json"), summaries[-1])
            clock.tick()
            log(f"seed {seed}: {method.name}'s pre-removal phase done after {summaries[-1].get('iteration')} "
                "iterations")
        return small

    return pruned_start(method, base, method_settings(config, seed), run_phase=run, removed=removed)


def retrain(config: StudyConfig, data: Data, cells: list[tuple[str, str]], starts: dict, seed: int,
            record: Recorder, progress: bool) -> dict[tuple[str, str], dict]:
    """Retrain every (method, LR) cell of a seed as one vmapped group, each with its method's retraining
    penalties (weight 0 in the other cells); per-cell results."""
    schedules = dict(config.lr_schedules)
    tx = reference_sgd(weight_decay=config.weight_decay)
    kernel_names = _kernel_names(starts[cells[0][0]])
    settings = method_settings(config, seed)
    terms = {m: get_method(m).retrain_penalties(kernel_names, settings) for m, _ in cells}
    penalties = {k: fn for t in terms.values() for k, (fn, _) in t.items()}
    weights = {k: np.asarray([terms[m][k][1] if k in terms[m] else 0.0 for m, _ in cells]) for k in penalties}
    states, lrs, jsv0 = [], [], []
    fns = None
    for method, lr in cells:
        model = starts[method]
        f, params, rest = ModelFns.from_model(model)
        fns = fns or f
        states.append(init_state(params, rest, tx))
        lrs.append(LRSchedule.parse(schedules[lr]))
        jsv0.append(model_mean_jsv(model))
    group = RunGroup(fns, tx, stack_runs(states), lrs, weights, penalties)
    jsv = jax.jit(jax.vmap(mean_jsv_fn(kernel_names)))
    key = jax.random.fold_in(jax.random.key(seed), 3)
    acc_hist, jsv_hist = [], []
    bar = _progress(config.retrain_epochs, f"seed {seed}: retrain {len(cells)} runs", progress)
    for epoch in range(config.retrain_epochs):
        batches = epoch_batches(jax.random.fold_in(key, epoch), data.n_train, config.batch_size)
        m = group.run_epoch(data.train_x, data.train_y, batches, epoch)
        for i, (method, lr) in enumerate(cells):
            check_finite(m["loss"][i], where=f"retraining {method} at LR {lr}, seed {seed}, epoch {epoch + 1}")
        preemption.check()
        acc = group.evaluate(data.test_x, data.test_y)
        j = np.asarray(jsv(group.state.params))
        acc_hist.append(acc)
        jsv_hist.append(j)
        for i, (method, lr) in enumerate(cells):
            record(phase="retrain", seed=seed, method=method, lr=lr, epoch=epoch + 1, loss=m["loss"][i],
                   train_acc=m["train_acc"][i], test_acc=acc[i], mean_jsv=j[i])
        bar.set_postfix(best=f"{np.max(acc):.2f}")
        bar.update()
    bar.close()
    acc_hist, jsv_hist = np.stack(acc_hist, 1), np.stack(jsv_hist, 1)  # (R, epochs)
    return {
        cell: {"best_acc": float(acc_hist[i].max()), "final_acc": float(acc_hist[i, -1]),
               "jsv_after_prune": jsv0[i], "acc_per_epoch": acc_hist[i].tolist(),
               "jsv_per_epoch": jsv_hist[i].tolist()}
        for i, cell in enumerate(cells)
    }


# --------------------------------------------------------------------------
# The study.
# --------------------------------------------------------------------------


def _cell_path(out: Path, seed: int, method: str, lr: str) -> Path:
    safe = method.replace("+", "_plus_").replace("/", "_")
    return out / f"seed{seed}" / "cells" / f"{safe}__lr{lr}.json"


RESUME_HINT = "run the same command again to continue"


def run_study(config: StudyConfig, out: str | Path, *, progress: bool = True,
              log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run (or complete) the study in ``out``; returns the results dict (also written as results.json).

    ``out`` is locked while the study runs and refused if it holds a study
    with other settings (``StudyConfig._REUSABLE`` may differ); the data are
    loaded before anything is written. Each piece (a base model, TPP, a
    group of retraining cells) is committed whole (:class:`isotpp.rundir.Commit`);
    SIGTERM stops at the next epoch with :class:`~isotpp.preemption.Preempted`
    and the same call finishes the study.
    """
    log = log or logger.info  # the command line passes print
    from isotpp.data.identity import data_identity
    from isotpp.preemption import sigterm_stops
    from isotpp.rundir import open_run

    config = config.validate()
    with sigterm_stops(RESUME_HINT), open_run(out, config.to_dict(), kind="study", reusable=StudyConfig._REUSABLE,
                                              defaults=StudyConfig().to_dict()) as run:
        data = load_data(config)
        run.check_data(data_identity(config.dataset, train=(data.train_x, data.train_y),
                                     test=(data.test_x, data.test_y)))
        run.record()
        return _run(config, data, run.path, progress, log)


def _base_piece(config: StudyConfig, data: Data, out: Path, seed: int, record: Recorder, progress: bool, clock, log):
    """The trained base model of ``seed`` and its {acc, jsv}: from ``seed<s>/base.npz`` or trained and committed."""
    from isotpp.checkpoint import load_model, save_model
    from isotpp.rundir import Commit

    sdir = out / f"seed{seed}"
    if (sdir / "base.npz").exists():
        base, header = load_model(sdir / "base.npz")
        if (sdir / "base.json").exists():
            return base, read_json(sdir / "base.json")
        return base, {k: header["meta"][k] for k in ("acc", "jsv")}  # a directory of an older isotpp
    base, acc, jsv = train_base(config, data, seed, record, progress)
    info = {"acc": acc, "jsv": jsv}
    with Commit(out) as commit:
        save_model(commit.path(sdir / "base.npz"), base, {"seed": seed, **info})
        write_json(commit.path(sdir / "base.json"), info)
    clock.tick()
    log(f"seed {seed}: base model {acc:.2f} % test accuracy, mean JSV {jsv:.4f}")
    return base, info


def _run(config: StudyConfig, data: Data, out: Path, progress: bool, log) -> dict[str, Any]:
    from isotpp.rundir import Commit
    from isotpp.studies.clock import StudyClock

    record = Recorder(out / "metrics.jsonl")
    clock = StudyClock(out)
    methods = [(m, canonical_method(m)) for m in config.methods]
    lr_keys = [k for k, _ in config.lr_schedules]
    log(f"{config.dataset}: {data.n_train} train / {int(data.test_x.shape[0])} test examples; "
        f"seeds {list(config.seeds)}; methods {[m for m, _ in methods]}; out {out}")
    base_info = {}
    for seed in config.seeds:
        todo = [(m, lr) for m, _ in methods for lr in lr_keys if not _cell_path(out, seed, m, lr).exists()]
        base, base_info[seed] = _base_piece(config, data, out, seed, record, progress, clock, log)
        if not todo:
            continue
        starts = {m: start_piece(config, data, out, base, m, seed, record, progress, clock, log)
                  for m, _ in methods if any(c == m for c, _ in todo)}
        results = retrain(config, data, todo, starts, seed, record, progress)
        with Commit(out) as commit:  # the cells of one vmapped group appear together
            for (m, lr), res in results.items():
                write_json(commit.path(_cell_path(out, seed, m, lr)), res)
        clock.tick()
        log(f"seed {seed}: retrained {len(todo)} cells")

    results = collect(out, config, base_info, wall_s=clock.tick())  # over every call that worked on it
    results["invocation_s"] = clock.invocation_s
    write_json(out / "results.json", results)
    from isotpp.study_report import write_report

    paths = write_report(results, out)
    results["files"] = {k: str(v) for k, v in paths.items()} | {"results": str(out / "results.json")}
    return results


def collect(out: Path, config: StudyConfig, base_info: dict, wall_s: float) -> dict[str, Any]:
    """results.json from the per-cell files of the configured seeds."""
    runs: dict[str, dict[str, dict[str, list]]] = {}
    keys = ("best_acc", "final_acc", "jsv_after_prune", "acc_per_epoch", "jsv_per_epoch")
    for m in config.methods:
        runs[m] = {}
        for lr, _ in config.lr_schedules:
            cell = {k: [] for k in keys}
            for seed in config.seeds:
                path = _cell_path(out, seed, m, lr)
                if path.exists():
                    res = read_json(path)
                    for k in keys:
                        cell[k].append(res[k])
            runs[m][lr] = cell
    seeds = [s for s in config.seeds if s in base_info]
    return {
        "config": config.to_dict(),
        "runs": runs,
        "base": {"acc": [base_info[s]["acc"] for s in seeds], "jsv": [base_info[s]["jsv"] for s in seeds]},
        "wall_s": wall_s,
    }
