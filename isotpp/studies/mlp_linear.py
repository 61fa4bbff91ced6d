"""The linear-network study of the TPP paper, end to end (REFERENCE §5).

Train MLP-7-Linear (1024 → 100×5 → 10, identity activations) from scratch,
prune 80 % of every hidden layer with each method, record the mean JSV right
after pruning, retrain at two learning rates and record test accuracy and mean
JSV per epoch. The methods are :mod:`isotpp.pruning.methods`' registry (any
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
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from isotpp import preemption
from isotpp.data import load_dataset
from isotpp.data.identity import data_identity
from isotpp.errors import UserError
from isotpp.models import create_model, layer_names
from isotpp.models.program import flat_arrays
from isotpp.progress import progress as progress_bar
from isotpp.pruning.methods import (
    MethodSettings,
    Phase,
    get_method,
    pruned_start,
    study_methods,
)
from isotpp.pruning.model_file import load_model, save_model
from isotpp.pruning.tpp import TPPConfig
from isotpp.spectra.jacobian import (
    kernel_product_singular_values,
    model_singular_values,
)
from isotpp.storage.atomic import write_json
from isotpp.studies import scaffold
from isotpp.studies.linear_report import write_report
from isotpp.studies.scaffold import Study, StudySettings, slug
from isotpp.training.engine import (
    LRSchedule,
    ModelFns,
    RunGroup,
    check_finite,
    init_state,
    reference_sgd,
    stack_runs,
    unstack_run,
)
from isotpp.training.metrics import MetricsWriter

logger = logging.getLogger(__name__)


ARCH = "mlp_7_linear"
METHODS = study_methods("mlp-linear")  # the default; any registered method is accepted
PAPER_LRS = {"0.01": "0:0.01,30:0.001,60:0.0001", "0.001": "0:0.001,45:0.0001"}


def canonical_method(name: str) -> str:
    """The registry's name for a method (aliases KernOrth, AI, OrthP accepted)."""
    return get_method(name).name


@dataclasses.dataclass(frozen=True)
class StudyConfig(StudySettings):
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
    base_lr_schedule: str = "0:0.01,30:0.001,60:0.0001"
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

    # a reduced schedule that shows the mechanism in a few minutes on a 2-core CPU
    QUICK: ClassVar[Mapping[str, Any]] = {
        "base_epochs": 10, "base_lr_schedule": "0:0.01,6:0.001",
        "retrain_epochs": 10, "lr_schedules": (("0.01", "0:0.01,5:0.001"), ("0.001", "0:0.001,7:0.0001")),
        "tpp_reg_granularity": 1e-3, "tpp_update_reg_interval": 1, "tpp_stabilize_iters": 700,
        "ai_iters": 2000,
    }
    POSITIVE: ClassVar[tuple[str, ...]] = ("batch_size", "base_epochs", "retrain_epochs", "tpp_update_reg_interval",
                                           "tpp_stabilize_iters", "tpp_zero_out_interval")
    SCHEDULES: ClassVar[tuple[str, ...]] = ("lr_schedules", "base_lr_schedule")
    RENAMED: ClassVar[Mapping[str, str]] = {"base_lr": "base_lr_schedule"}

    def check(self) -> None:
        if not (0.0 < self.ratio < 1.0):
            raise UserError(f"pruning ratio {self.ratio} is outside (0, 1): use e.g. 0.8")
        for m in self.methods:
            canonical_method(m)

    def tpp_config(self) -> TPPConfig:
        return TPPConfig(reg_granularity=self.tpp_reg_granularity, update_reg_interval=self.tpp_update_reg_interval,
                         stabilize_iters=self.tpp_stabilize_iters, zero_out_interval=self.tpp_zero_out_interval)


quick_config = StudyConfig.quick_config


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
    train = load_dataset(config.dataset, "train", data_dir=config.data_dir, limit=config.train_limit)
    test = load_dataset(config.dataset, "test", data_dir=config.data_dir)
    if train.images.shape[1:] != (32, 32, 1):
        raise UserError(f"{config.dataset} gives images of shape {train.images.shape[1:]}, MLP-7-Linear needs 32x32x1")
    return Data(jnp.asarray(train.images), jnp.asarray(train.labels), jnp.asarray(test.images), jnp.asarray(test.labels))


def mean_jsv_fn(layer_kernels: Sequence[str]) -> Callable:
    """Params → mean JSV of the (linear) network, exact; vmappable over runs."""
    def f(params):
        flat = flat_arrays(params)
        return jnp.mean(kernel_product_singular_values([flat[k] for k in layer_kernels]))

    return f


def model_mean_jsv(model) -> float:
    return float(np.mean(model_singular_values(model, None, method="linear")))


def _kernel_names(model) -> list[str]:
    return [f"{n}.kernel" for n in layer_names(model)]


def train_base(config: StudyConfig, data: Data, seed: int, record: MetricsWriter, progress: bool):
    """MLP-7-Linear from scratch; returns (model, test accuracy, mean JSV)."""
    model = create_model(ARCH, init=config.init, seed=seed)
    fns, params, rest = ModelFns.from_model(model)
    tx = reference_sgd(weight_decay=config.weight_decay)
    group = RunGroup(fns, tx, stack_runs([init_state(params, rest, tx)]), [LRSchedule.parse(config.base_lr_schedule)])
    jsv = jax.jit(jax.vmap(mean_jsv_fn(_kernel_names(model))))
    key = jax.random.fold_in(jax.random.key(seed), 1)
    bar = progress_bar(config.base_epochs, f"seed {seed}: base", unit="ep", enabled=progress)
    acc = np.zeros(1)
    for epoch in range(config.base_epochs):
        m = group.train_epoch(data.train_x, data.train_y, key, epoch, config.batch_size)
        check_finite(m["loss"], where=f"in base training, seed {seed}, epoch {epoch + 1}")
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
    return MethodSettings(
        ratios={"*": config.ratio}, skip=("net.12",), seed=seed, weight_decay=config.weight_decay,
        tpp_lr=config.tpp_lr, tpp_reg_granularity=config.tpp_reg_granularity,
        tpp_update_reg_interval=config.tpp_update_reg_interval, tpp_stabilize_iters=config.tpp_stabilize_iters,
        tpp_zero_out_interval=config.tpp_zero_out_interval, penalty_weight=config.kernorth_weight,
        ai_iters=config.ai_iters, ai_lr=config.ai_lr,
        new_model=lambda widths: create_model(ARCH, widths=widths, init=config.init, seed=seed + 1000))


def run_phase(config: StudyConfig, data: Data, base, phase: Phase, seed: int, record: MetricsWriter, progress: bool):
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
    bar = progress_bar(n_epochs, f"seed {seed}: {phase.name}", unit="ep", enabled=progress)
    done = 0
    for epoch in range(n_epochs):
        m = group.train_epoch(data.train_x, data.train_y, key, epoch, config.batch_size, steps=total - done,
                              lr_epoch=0)
        done += m["steps"]
        check_finite(m["loss"], where=f"in {phase.name}, seed {seed}, iteration {done}")
        preemption.check()
        info = phase.progress(unstack_run(group.state.opt_state, 0)) if phase.progress else {}
        record(phase=phase.key, seed=seed, iteration=done, loss=m["loss"][0], **info)
        bar.set_postfix(**{k: f"{v:.3g}" if isinstance(v, float) else v for k, v in info.items()})
        bar.update()
    bar.close()
    state = unstack_run(group.state.opt_state, 0)
    summary = phase.summary(state) if phase.summary else {"iteration": done}
    return fns.merge(unstack_run(group.state.params, 0), unstack_run(group.state.rest, 0)), summary


def start_piece(study: Study, data: Data, base, method: str, seed: int):
    """The network ``method`` retrains at ``seed`` (:func:`isotpp.pruning.methods.pruned_start`). The pruned network
    after a pre-removal phase (the expensive part) is committed as ``seed<s>/<key>.npz`` (TPP: ``tpp.npz``,
    with ``tpp_state.json``) and reused by a rerun."""
    config = study.config
    method = get_method(method)
    sdir = study.out / f"seed{seed}"
    path = sdir / f"{method.key}.npz"
    summaries = []

    def run(model, phase, plan):
        trained, summary = run_phase(config, data, model, phase, seed, study.record, study.progress)
        summaries.append(summary)
        return trained, summary

    def removed(make):
        if path.exists():
            return load_model(path)[0]
        small = make()
        if summaries:  # a phase ran: keep its result
            with study.commit() as commit:
                save_model(commit.path(path), small, {"seed": seed})
                write_json(commit.path(sdir / f"{method.key}_state.json"), summaries[-1])
            study.log(f"seed {seed}: {method.name}'s pre-removal phase done after "
                      f"{summaries[-1].get('iteration')} iterations")
        return small

    return pruned_start(method, base, method_settings(config, seed), run_phase=run, removed=removed)


def retrain(config: StudyConfig, data: Data, cells: list[tuple[str, str]], starts: dict, seed: int,
            record: MetricsWriter, progress: bool) -> dict[tuple[str, str], dict]:
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
    bar = progress_bar(config.retrain_epochs, f"seed {seed}: retrain {len(cells)} runs", unit="ep",
                       enabled=progress)
    for epoch in range(config.retrain_epochs):
        m = group.train_epoch(data.train_x, data.train_y, key, epoch, config.batch_size)
        for i, (method, lr) in enumerate(cells):
            check_finite(m["loss"][i], where=f"in retraining {method} at LR {lr}, seed {seed}, epoch {epoch + 1}")
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
    return out / f"seed{seed}" / "cells" / f"{slug(method)}__lr{lr}.json"


def run_study(config: StudyConfig, out: str | Path, *, progress: bool = True,
              log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run (or complete) the study in ``out``; returns the results dict (also written as results.json).

    ``out`` is locked while the study runs and refused if it holds a study
    with other settings (``StudyConfig.REUSABLE`` may differ); the data are
    loaded before anything is written (:func:`isotpp.studies.scaffold.run_study`).
    Each piece (a base model, TPP, a group of retraining cells) is committed
    whole (:class:`isotpp.studies.rundir.Commit`); SIGTERM stops at the next epoch with
    :class:`~isotpp.preemption.Preempted` and the same call finishes the study.
    """
    return scaffold.run_study(config, out, load_data=load_data, body=_run, progress=progress, log=log,
                              identity=lambda data: data_identity(config.dataset, train=(data.train_x, data.train_y),
                                                                  test=(data.test_x, data.test_y)))


def _base_piece(study: Study, data: Data, seed: int):
    """The trained base model of ``seed`` and its {acc, jsv}: from ``seed<s>/base.npz`` or trained and committed."""
    sdir = study.out / f"seed{seed}"
    if (sdir / "base.npz").exists():
        base, header = load_model(sdir / "base.npz")
        info = study.cell(sdir / "base.json")
        return base, info or {k: header["meta"][k] for k in ("acc", "jsv")}  # or a directory of an older isotpp
    base, acc, jsv = train_base(study.config, data, seed, study.record, study.progress)
    info = {"acc": acc, "jsv": jsv}
    with study.commit() as commit:
        save_model(commit.path(sdir / "base.npz"), base, {"seed": seed, **info})
        write_json(commit.path(sdir / "base.json"), info)
    study.log(f"seed {seed}: base model {acc:.2f} % test accuracy, mean JSV {jsv:.4f}")
    return base, info


def _run(study: Study, data: Data) -> dict[str, Any]:
    config, out = study.config, study.out
    methods = [(m, canonical_method(m)) for m in config.methods]
    lr_keys = [k for k, _ in config.lr_schedules]
    study.log(f"{config.dataset}: {data.n_train} train / {int(data.test_x.shape[0])} test examples; "
              f"seeds {list(config.seeds)}; methods {[m for m, _ in methods]}; out {out}")
    base_info = {}
    for seed in config.seeds:
        todo = [(m, lr) for m, _ in methods for lr in lr_keys if not _cell_path(out, seed, m, lr).exists()]
        base, base_info[seed] = _base_piece(study, data, seed)
        if not todo:
            continue
        starts = {m: start_piece(study, data, base, m, seed) for m, _ in methods if any(c == m for c, _ in todo)}
        results = retrain(config, data, todo, starts, seed, study.record, study.progress)
        study.save({_cell_path(out, seed, m, lr): res for (m, lr), res in results.items()})
        study.log(f"seed {seed}: retrained {len(todo)} cells")
    return study.finish(collect(study, base_info), write_report)


def collect(study: Study, base_info: dict) -> dict[str, Any]:
    """results.json from the per-cell files of the configured seeds."""
    config = study.config
    runs: dict[str, dict[str, dict[str, list]]] = {}
    keys = ("best_acc", "final_acc", "jsv_after_prune", "acc_per_epoch", "jsv_per_epoch")
    for m in config.methods:
        runs[m] = {}
        for lr, _ in config.lr_schedules:
            cell = {k: [] for k in keys}
            for seed in config.seeds:
                res = study.cell(_cell_path(study.out, seed, m, lr))
                if res is not None:
                    for k in keys:
                        cell[k].append(res[k])
            runs[m][lr] = cell
    seeds = [s for s in config.seeds if s in base_info]
    return {
        "config": config.to_dict(),
        "runs": runs,
        "base": {"acc": [base_info[s]["acc"] for s in seeds], "jsv": [base_info[s]["jsv"] for s in seeds]},
    }
