"""A CPU-scale ConvNet study: the TPP paper's Table-1 question on a machine without a GPU.

A CIFAR-style ResNet (ResNet-20, option A; narrowed by ``width_scale``) is
trained on a slice of Fashion-MNIST (or CIFAR-10 when given), then ``*layer*.conv1``
— the first conv of every residual block, the reference's convention — is
pruned at a high ratio by each method (by default L1, L1+OrthP and TPP:
``study_methods("convnet")`` of :mod:`isotpp.methods`), and each pruned network is
retrained at two learning rates. Every run is an :mod:`isotpp.pruning_run`
(``isotpp prune``) sharing one base model; the results file has the linear
study's format, so :mod:`isotpp.study_report` draws its table and figure
(accuracy and mean JSV per retraining epoch).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from isotpp.errors import UserError
from isotpp.io import read_json, write_json
from isotpp.methods import get_method, study_methods

logger = logging.getLogger(__name__)


METHODS = study_methods("convnet")  # the default; any registered method is accepted


@dataclasses.dataclass(frozen=True)
class ConvStudyConfig:
    dataset: str = "fashion_mnist"
    data_dir: str | None = None
    model: str = "resnet20"
    width_scale: float = 0.5
    train_limit: int | None = 10_000
    ratio: float = 0.9
    methods: tuple[str, ...] = METHODS
    seeds: tuple[int, ...] = (0,)
    batch_size: int = 128
    wd: float = 5e-4
    base_epochs: int = 8
    base_lr: str = "0:0.1,4:0.01,7:0.001"
    retrain_epochs: int = 8
    lr_schedules: tuple[tuple[str, str], ...] = (("0.01", "0:0.01,4:0.001,6:0.0001"), ("0.001", "0:0.001,5:0.0001"))
    tpp_reg_granularity: float = 1e-3  # reg reaches 1 after 1000 iterations (the paper: 100,000)
    tpp_update_reg_interval: int = 1
    tpp_stabilize_iters: int = 1000
    tpp_zero_out_interval: int = 50
    jsv_samples: int = 64
    quick: bool = False

    def validate(self) -> ConvStudyConfig:
        if not (0.0 < self.ratio < 1.0):
            raise UserError(f"pruning ratio {self.ratio} is outside (0, 1): use e.g. 0.9")
        for m in self.methods:
            get_method(m)
        if not self.seeds:
            raise UserError("no seeds: pass --seeds N with N >= 1")
        return self

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["lr_schedules"] = dict(self.lr_schedules)
        return d


def quick_config(**overrides) -> ConvStudyConfig:
    """Minutes, not a quarter of an hour: fewer examples, epochs and TPP iterations."""
    base = {"train_limit": 3000, "base_epochs": 3, "base_lr": "0:0.1,2:0.01", "retrain_epochs": 3,
            "lr_schedules": (("0.01", "0:0.01"), ("0.001", "0:0.001")), "tpp_reg_granularity": 5e-3,
            "tpp_stabilize_iters": 400, "tpp_zero_out_interval": 20, "jsv_samples": 32, "quick": True}
    return ConvStudyConfig(**(base | overrides))


def _prune_config(cfg: ConvStudyConfig, seed: int, **kw):
    from isotpp.pruning_run import PruneConfig

    return PruneConfig(
        model=cfg.model, dataset=cfg.dataset, data_dir=cfg.data_dir, ratios=f"*layer*.conv1:{cfg.ratio}",
        base_epochs=cfg.base_epochs, base_lr_schedule=cfg.base_lr, batch_size=cfg.batch_size, wd=cfg.wd,
        seed=seed, reg_granularity=cfg.tpp_reg_granularity, update_reg_interval=cfg.tpp_update_reg_interval,
        stabilize_reg_interval=cfg.tpp_stabilize_iters, zero_out_interval=cfg.tpp_zero_out_interval,
        jsv_samples=cfg.jsv_samples, jsv_bn="batch", train_limit=cfg.train_limit, width_scale=cfg.width_scale,
        epochs=cfg.retrain_epochs, checkpoint_every=None, **kw,
    )


def _eval_jsv(shared: Path, probe) -> float:
    """Mean JSV of ``shared/pruned.npz`` with BatchNorm's running statistics (cached beside it)."""
    from isotpp.checkpoint import load_model
    from isotpp.pruning_run import mean_jsv

    path = shared / "jsv_eval.json"
    if not path.exists():
        model, _ = load_model(shared / "pruned.npz")
        write_json(path, {"jsv_after_prune_eval": mean_jsv(model, probe, "eval")})
    return read_json(path)["jsv_after_prune_eval"]


_REUSABLE = ("seeds", "methods", "data_dir")  # may differ between runs sharing one directory


def run_convnet_study(cfg: ConvStudyConfig, out: str | Path, *, log: Callable[[str], None] | None = None
                      ) -> dict[str, Any]:
    """Run (or finish) the study in ``out``; returns the results (also results.json, table.md, figure.png).

    ``out`` is locked while the study runs and refused if it holds a study
    with other settings; the data are loaded before anything is written. Every
    (method, LR) cell is an :func:`~isotpp.pruning_run.run_pruning` run,
    finished when its ``summary.json`` exists; SIGTERM stops at the next step
    with :class:`~isotpp.preemption.Preempted` and the same call finishes the study.
    """
    log = log or logger.info  # the command line passes print
    from isotpp.data.identity import data_identity
    from isotpp.preemption import sigterm_stops
    from isotpp.pruning_run import RESUME_HINT, load_data
    from isotpp.rundir import open_run

    cfg = cfg.validate()
    with sigterm_stops(RESUME_HINT), open_run(out, cfg.to_dict(), kind="study", reusable=_REUSABLE,
                                              defaults=ConvStudyConfig().to_dict()) as run:
        data = load_data(_prune_config(cfg, 0))  # the same for every seed
        run.check_data(data_identity(cfg.dataset, **data.splits()))
        run.record()
        return _run(cfg, data, run.path, log)


def _run(cfg: ConvStudyConfig, data, out: Path, log) -> dict[str, Any]:
    from isotpp.preemption import check
    from isotpp.pruning_run import base_model, evaluate, mean_jsv, run_pruning
    from isotpp.studies.clock import StudyClock
    from isotpp.study_report import write_report

    clock = StudyClock(out)
    base_info: dict[str, list] = {}  # "jsv": batch statistics, as the reference measures; "jsv_eval": running
    runs: dict[str, dict[str, dict[str, list]]] = {m: {lr: {} for lr, _ in cfg.lr_schedules} for m in cfg.methods}
    for seed in cfg.seeds:
        sdir = out / f"seed{seed}"
        pc = _prune_config(cfg, seed, method="L1", out=str(sdir))
        base = base_model(pc, data, sdir, log)
        check(f"finished pieces are kept in {out}")
        info_path = sdir / "base.json"
        if not info_path.exists():
            write_json(info_path, {"acc": evaluate(base, data),
                                   "jsv": mean_jsv(base, data.probe(cfg.jsv_samples), "batch")})
            clock.tick()
        info = read_json(info_path)
        if "jsv_eval" not in info:  # also with BatchNorm's running statistics (each sample its own Jacobian)
            info["jsv_eval"] = mean_jsv(base, data.probe(cfg.jsv_samples), "eval")
            write_json(info_path, info)
        for key in ("acc", "jsv", "jsv_eval"):
            base_info.setdefault(key, []).append(info[key])
        for method in cfg.methods:
            for lr, schedule in cfg.lr_schedules:
                run_dir = sdir / method.replace("+", "_plus_") / f"lr{lr}"
                log(f"seed {seed}: {method} at LR {lr}")
                s = run_pruning(_prune_config(cfg, seed, method=method, base=str(sdir / "base" / "model.npz"),
                                              lr_schedule=schedule, out=str(run_dir),
                                              shared=str(run_dir.parent)), log=log)
                cell = runs[method][lr]
                for key in ("best_acc", "final_acc", "jsv_after_prune", "acc_per_epoch", "jsv_per_epoch"):
                    cell.setdefault(key, []).append(s[key])
                cell.setdefault("jsv_after_prune_eval", []).append(
                    _eval_jsv(run_dir.parent, data.probe(cfg.jsv_samples)))
                clock.tick()
                cell.setdefault("sparsity", []).append(s["sparsity"])
                cell.setdefault("speedup", []).append(s["speedup"])
                check(f"finished pieces are kept in {out}")
    results = {"config": cfg.to_dict(), "runs": runs, "base": base_info, "wall_s": clock.tick(),
               "invocation_s": clock.invocation_s}  # wall_s: over every call that worked on the study
    write_json(out / "results.json", results)
    paths = write_report(results, out)
    results["files"] = {k: str(v) for k, v in paths.items()} | {"results": str(out / "results.json")}
    return results
