"""The linear-network study of the TPP paper, end to end (REFERENCE §5).

Train MLP-7-Linear (1024 → 100×5 → 10, identity activations) from scratch,
prune 80 % of every hidden layer with each method, record the mean JSV right
after pruning, retrain at two learning rates and record test accuracy and mean
JSV per epoch. Methods:

========== ==============================================================
L1         L1 filter pruning, retrain
L1+OrthP   L1, then OrthP (exact orthogonalisation) before retraining
TPP        TPP's penalty phases from the trained model, then removal
L1+KernOrth L1, retrain with KernOrth: 0.1 · Σ ‖MᵀM − I‖_F over every layer
            (the reference's orth_reg_method CVPR17, lw_orth_reg 0.1)
L1+AI      L1, then approximate isometry (data-free), then retrain
========== ==============================================================

All retraining cells of a seed (methods × learning rates) share one
architecture, so they train as one vmapped program over the same batches. Each
finished piece (base model, TPP model, retraining cells) is saved in the run
directory as it completes; a rerun reuses them and computes only what is
missing.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from isotpp import preemption
from isotpp.checkpoint import load_model, save_model
from isotpp.data import load_dataset
from isotpp.errors import UserError
from isotpp.groups import channel_groups, flat_arrays, map_named
from isotpp.io import write_json
from isotpp.isometry import approximate_isometry
from isotpp.methods import get_method, penalty_fn
from isotpp.models import create_model, layer_names
from isotpp.orthp import orthp
from isotpp.plan import Plan, hard_prune, l1_plan
from isotpp.progress import progress as progress_bar
from isotpp.spectrum import kernel_product_singular_values, model_singular_values
from isotpp.studies import scaffold
from isotpp.studies.scaffold import Recorder, Study, StudySettings, slug
from isotpp.study_report import write_report
from isotpp.tpp import DONE, TPPConfig, describe, targets_for, tpp
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
METHODS = ("L1", "L1+OrthP", "TPP", "L1+KernOrth", "L1+AI")
PAPER_LRS = {"0.01": "0:0.01,30:0.001,60:0.0001", "0.001": "0:0.001,45:0.0001"}


def canonical_method(name: str) -> str:
    """The study's name for a method (aliases KernOrth, AI, OrthP accepted)."""
    method = get_method(name).name
    if method not in METHODS:
        raise UserError(f"method {method} is not part of the linear-network study: choose from {', '.join(METHODS)}")
    return method


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


def _progress(total: int, desc: str, enabled: bool):
    return progress_bar(total, desc, unit="ep", enabled=enabled)


def _kernel_names(model) -> list[str]:
    return [f"{n}.kernel" for n in layer_names(model)]


def train_base(config: StudyConfig, data: Data, seed: int, record: Recorder, progress: bool):
    """MLP-7-Linear from scratch; returns (model, test accuracy, mean JSV)."""
    model = create_model(ARCH, init=config.init, seed=seed)
    fns, params, rest = ModelFns.from_model(model)
    tx = reference_sgd(weight_decay=config.weight_decay)
    group = RunGroup(fns, tx, stack_runs([init_state(params, rest, tx)]), [LRSchedule.parse(config.base_lr_schedule)])
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


def run_tpp(config: StudyConfig, data: Data, base, plan, seed: int, record: Recorder, progress: bool):
    """TPP's penalty phases from the trained base; returns the model after physical removal."""
    cfg = config.tpp_config()
    groups = channel_groups(base)
    targets = targets_for(plan, groups, layer_names(base), cfg)
    fns, params, rest = ModelFns.from_model(base)
    tx = tpp(reference_sgd(config.tpp_lr, weight_decay=config.weight_decay), plan, targets, cfg)
    group = RunGroup(fns, tx, stack_runs([init_state(params, rest, tx)]), [LRSchedule.parse(str(config.tpp_lr))])
    key = jax.random.fold_in(jax.random.key(seed), 2)
    total = cfg.total_iters
    steps = -(-data.n_train // config.batch_size)
    n_epochs = -(-total // steps)
    bar = _progress(n_epochs, f"seed {seed}: TPP", progress)
    done = 0
    for epoch in range(n_epochs):
        batches = epoch_batches(jax.random.fold_in(key, epoch), data.n_train, config.batch_size)
        batches = batches[: total - done]
        m = group.run_epoch(data.train_x, data.train_y, batches, 0)
        done += int(batches.shape[0])
        check_finite(m["loss"], where=f"TPP, seed {seed}, iteration {done}")
        preemption.check()
        st = describe(unstack_run(group.state.opt_state, 0))
        record(phase="tpp", seed=seed, iteration=done, loss=m["loss"][0], reg=st["reg"], tpp_phase=st["phase"],
               gram_penalty=st["gram_penalty"])
        bar.set_postfix(reg=f"{st['reg']:.3g}", phase=st["phase"])
        bar.update()
    bar.close()
    state = unstack_run(group.state.opt_state, 0)
    if int(state.phase) != DONE:
        raise AssertionError(f"TPP ended in phase {int(state.phase)} after {done} iterations")
    model = fns.merge(unstack_run(group.state.params, 0), unstack_run(group.state.rest, 0))
    return hard_prune(model, plan, groups), describe(state)


def pruned_start(method: str, config: StudyConfig, base, plan, tpp_model):
    """The network each method retrains, and its KernOrth weight."""


    recipe = get_method(method)
    if recipe.pre == "tpp":
        return copy.deepcopy(tpp_model), 0.0
    small = hard_prune(base, plan)
    if recipe.post == "orthp":

        orthp(small, act="linear")
    elif recipe.post == "ai":


        names = set(_kernel_names(small))
        params = nnx.state(small, nnx.Param)
        kernels = {k: v for k, v in flat_arrays(params).items() if k in names}
        new = approximate_isometry(kernels, iters=config.ai_iters, lr=config.ai_lr)
        nnx.update(small, map_named(lambda n, x: new.get(n, x), params))
    weight = config.kernorth_weight if recipe.retrain_penalty == "kernorth" else 0.0
    return small, weight


def retrain(config: StudyConfig, data: Data, cells: list[tuple[str, str]], starts: dict, seed: int,
            record: Recorder, progress: bool) -> dict[tuple[str, str], dict]:
    """Retrain every (method, LR) cell of a seed as one vmapped group; per-cell results."""
    schedules = dict(config.lr_schedules)
    tx = reference_sgd(weight_decay=config.weight_decay)
    states, lrs, kern_w, jsv0 = [], [], [], []
    fns = None
    for method, lr in cells:
        model, kw = starts[method]
        f, params, rest = ModelFns.from_model(model)
        fns = fns or f
        states.append(init_state(params, rest, tx))
        lrs.append(LRSchedule.parse(schedules[lr]))
        kern_w.append(kw)
        jsv0.append(model_mean_jsv(model))
    kernel_names = _kernel_names(starts[cells[0][0]][0])
    kernorth = penalty_fn("kernorth", kernel_names)
    group = RunGroup(fns, tx, stack_runs(states), lrs, {"kernorth": np.asarray(kern_w)}, {"kernorth": kernorth})
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
    return out / f"seed{seed}" / "cells" / f"{slug(method)}__lr{lr}.json"


def run_study(config: StudyConfig, out: str | Path, *, progress: bool = True,
              log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run (or complete) the study in ``out``; returns the results dict (also written as results.json).

    ``out`` is locked while the study runs and refused if it holds a study
    with other settings (``StudyConfig.REUSABLE`` may differ); the data are
    loaded before anything is written (:func:`isotpp.studies.scaffold.run_study`).
    Each piece (a base model, TPP, a group of retraining cells) is committed
    whole (:class:`isotpp.rundir.Commit`); SIGTERM stops at the next epoch with
    :class:`~isotpp.preemption.Preempted` and the same call finishes the study.
    """
    return scaffold.run_study(config, out, load_data=load_data, body=_run, progress=progress, log=log)


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


def _tpp_piece(study: Study, data: Data, base, plan, seed: int):
    """TPP's penalty phases (the expensive part), once per seed: from ``seed<s>/tpp.npz`` or run and committed."""
    sdir = study.out / f"seed{seed}"
    if (sdir / "tpp.npz").exists():
        return load_model(sdir / "tpp.npz")[0]
    tpp_model, state = run_tpp(study.config, data, base, plan, seed, study.record, study.progress)
    with study.commit() as commit:
        save_model(commit.path(sdir / "tpp.npz"), tpp_model, {"seed": seed})
        write_json(commit.path(sdir / "tpp_state.json"), state)
    study.log(f"seed {seed}: TPP done after {state['iteration']} iterations (reg {state['reg']:.3g})")
    return tpp_model


def _run(study: Study, data: Data) -> dict[str, Any]:
    config, out = study.config, study.out
    methods = [(m, canonical_method(m)) for m in config.methods]
    lr_keys = [k for k, _ in config.lr_schedules]
    study.log(f"{config.dataset}: {data.n_train} train / {int(data.test_x.shape[0])} test examples; "
              f"seeds {list(config.seeds)}; methods {[m for m, _ in methods]}; out {out}")
    base_info = {}
    for seed in config.seeds:
        sdir = out / f"seed{seed}"
        todo = [(m, lr) for m, _ in methods for lr in lr_keys if not _cell_path(out, seed, m, lr).exists()]
        base, base_info[seed] = _base_piece(study, data, seed)
        if not todo:
            continue
        plan_path = sdir / "plan.json"
        if plan_path.exists():
            plan = Plan.load(plan_path)
        else:
            plan = l1_plan(base, {"*": config.ratio}, skip=["net.12"])
            plan.save(plan_path)
        tpp_model = _tpp_piece(study, data, base, plan, seed) if any(
            canonical_method(m) == "TPP" for m, _ in todo) else None
        starts = {}
        for m, canon in methods:
            if any(c == m for c, _ in todo):
                starts[m] = pruned_start(canon, config, base, plan, tpp_model)
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
