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
METHODS = ("L1", "L1+OrthP", "TPP", "L1+KernOrth", "L1+AI")
MAIN_METHODS = ("L1", "L1+OrthP", "TPP")
PAPER_LRS = {"0.01": "0:0.01,30:0.001,60:0.0001", "0.001": "0:0.001,45:0.0001"}


def canonical_method(name: str) -> str:
    """The study's name for a method (aliases KernOrth, AI, OrthP accepted)."""
    from isotpp.methods import get_method

    method = get_method(name).name
    if method not in METHODS:
        raise UserError(f"method {method} is not part of the linear-network study: choose from {', '.join(METHODS)}")
    return method


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


def run_tpp(config: StudyConfig, data: Data, base, plan, seed: int, record: Recorder, progress: bool):
    """TPP's penalty phases from the trained base; returns the model after physical removal."""
    from isotpp.groups import channel_groups
    from isotpp.models import layer_names
    from isotpp.plan import hard_prune
    from isotpp.tpp import DONE, describe, targets_for, tpp

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
    import copy

    from isotpp.methods import get_method
    from isotpp.plan import hard_prune

    recipe = get_method(method)
    if recipe.pre == "tpp":
        return copy.deepcopy(tpp_model), 0.0
    small = hard_prune(base, plan)
    if recipe.post == "orthp":
        from isotpp.orthp import orthp

        orthp(small, act="linear")
    elif recipe.post == "ai":
        from flax import nnx

        from isotpp.groups import flat_arrays, map_named
        from isotpp.isometry import approximate_isometry

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
    from isotpp.methods import penalty_fn

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
    from isotpp.checkpoint import load_model, save_model
    from isotpp.plan import Plan, l1_plan
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
        sdir = out / f"seed{seed}"
        todo = [(m, lr) for m, _ in methods for lr in lr_keys if not _cell_path(out, seed, m, lr).exists()]
        base, base_info[seed] = _base_piece(config, data, out, seed, record, progress, clock, log)
        if not todo:
            continue
        plan_path = sdir / "plan.json"
        if plan_path.exists():
            plan = Plan.load(plan_path)
        else:
            plan = l1_plan(base, {"*": config.ratio}, skip=["net.12"])
            plan.save(plan_path)
        # TPP's penalty phases (the expensive part), once per seed
        tpp_model = None
        if any(canonical_method(m) == "TPP" for m, _ in todo):
            if (sdir / "tpp.npz").exists():
                tpp_model, _ = load_model(sdir / "tpp.npz")
            else:
                tpp_model, state = run_tpp(config, data, base, plan, seed, record, progress)
                with Commit(out) as commit:
                    save_model(commit.path(sdir / "tpp.npz"), tpp_model, {"seed": seed})
                    write_json(commit.path(sdir / "tpp_state.json"), state)
                clock.tick()
                log(f"seed {seed}: TPP done after {state['iteration']} iterations (reg {state['reg']:.3g})")
        starts = {}
        for m, canon in methods:
            if any(c == m for c, _ in todo):
                starts[m] = pruned_start(canon, config, base, plan, tpp_model)
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
