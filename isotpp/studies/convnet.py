"""A CPU-scale ConvNet study: the TPP paper's Table-1 question on a machine without a GPU.

A CIFAR-style ResNet (ResNet-20, option A; narrowed by ``width_scale``) is
trained on a slice of Fashion-MNIST (or CIFAR-10 when given), then ``*layer*.conv1``
— the first conv of every residual block, the reference's convention — is
pruned at a high ratio by each method (by default L1, L1+OrthP and TPP:
``study_methods("convnet")`` of :mod:`isotpp.pruning.methods`), and each pruned network is
retrained at two learning rates. Every run is an :mod:`isotpp.studies.pruning_run`
(``isotpp prune``) sharing one base model; the results file has the linear
study's format, so :mod:`isotpp.studies.linear_report` draws its table and figure
(accuracy and mean JSV per retraining epoch).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from isotpp.data.identity import data_identity
from isotpp.errors import UserError
from isotpp.preemption import check
from isotpp.pruning.methods import get_method, study_methods
from isotpp.pruning.model_file import load_model
from isotpp.studies import scaffold
from isotpp.studies.linear_report import write_report
from isotpp.studies.pruning_run import (
    PruneConfig,
    base_model,
    evaluate,
    load_data,
    mean_jsv,
    run_pruning,
)
from isotpp.studies.scaffold import Study, StudySettings, slug

logger = logging.getLogger(__name__)


METHODS = study_methods("convnet")  # the default; any registered method is accepted


@dataclasses.dataclass(frozen=True)
class ConvStudyConfig(StudySettings):
    dataset: str = "fashion_mnist"
    data_dir: str | None = None
    model: str = "resnet20"
    width_scale: float = 0.5
    train_limit: int | None = 10_000
    ratio: float = 0.9
    methods: tuple[str, ...] = METHODS
    seeds: tuple[int, ...] = (0,)
    batch_size: int = 128
    weight_decay: float = 5e-4
    base_epochs: int = 8
    base_lr_schedule: str = "0:0.1,4:0.01,7:0.001"
    retrain_epochs: int = 8
    lr_schedules: tuple[tuple[str, str], ...] = (("0.01", "0:0.01,4:0.001,6:0.0001"), ("0.001", "0:0.001,5:0.0001"))
    tpp_reg_granularity: float = 1e-3  # reg reaches 1 after 1000 iterations (the paper: 100,000)
    tpp_update_reg_interval: int = 1
    tpp_stabilize_iters: int = 1000
    tpp_zero_out_interval: int = 50
    jsv_samples: int = 64
    quick: bool = False

    # minutes, not a quarter of an hour: fewer examples, epochs and TPP iterations
    QUICK: ClassVar[Mapping[str, Any]] = {
        "train_limit": 3000, "base_epochs": 3, "base_lr_schedule": "0:0.1,2:0.01", "retrain_epochs": 3,
        "lr_schedules": (("0.01", "0:0.01"), ("0.001", "0:0.001")), "tpp_reg_granularity": 5e-3,
        "tpp_stabilize_iters": 400, "tpp_zero_out_interval": 20, "jsv_samples": 32}
    SCHEDULES: ClassVar[tuple[str, ...]] = ("lr_schedules", "base_lr_schedule")
    RENAMED: ClassVar[Mapping[str, str]] = {"base_lr": "base_lr_schedule", "wd": "weight_decay"}

    def check(self) -> None:
        if not (0.0 < self.ratio < 1.0):
            raise UserError(f"pruning ratio {self.ratio} is outside (0, 1): use e.g. 0.9")
        for m in self.methods:
            get_method(m)


quick_config = ConvStudyConfig.quick_config


def _prune_config(cfg: ConvStudyConfig, seed: int, **kw) -> PruneConfig:
    return PruneConfig(
        model=cfg.model, dataset=cfg.dataset, data_dir=cfg.data_dir, ratios=f"*layer*.conv1:{cfg.ratio}",
        base_epochs=cfg.base_epochs, base_lr_schedule=cfg.base_lr_schedule, batch_size=cfg.batch_size,
        weight_decay=cfg.weight_decay, seed=seed, reg_granularity=cfg.tpp_reg_granularity,
        update_reg_interval=cfg.tpp_update_reg_interval, stabilize_iters=cfg.tpp_stabilize_iters,
        zero_out_interval=cfg.tpp_zero_out_interval, jsv_samples=cfg.jsv_samples, jsv_bn="batch",
        train_limit=cfg.train_limit, width_scale=cfg.width_scale, epochs=cfg.retrain_epochs, checkpoint_every=None,
        **kw,
    )


def run_convnet_study(cfg: ConvStudyConfig, out: str | Path, *, log: Callable[[str], None] | None = None
                      ) -> dict[str, Any]:
    """Run (or finish) the study in ``out``; returns the results (also results.json, table.md, figure.png).

    ``out`` is locked while the study runs and refused if it holds a study
    with other settings; the data are loaded before anything is written. Every
    (method, LR) cell is an :func:`~isotpp.studies.pruning_run.run_pruning` run,
    finished when its ``summary.json`` exists; SIGTERM stops at the next step
    with :class:`~isotpp.preemption.Preempted` and the same call finishes the study.
    """
    return scaffold.run_study(cfg, out, load_data=lambda c: load_data(_prune_config(c, 0)),  # the same every seed
                              body=_run, log=log,
                              identity=lambda data: data_identity(cfg.dataset, **data.splits()))


def _run(study: Study, data) -> dict[str, Any]:
    cfg, out, log = study.config, study.out, study.log
    probe = data.probe(cfg.jsv_samples)
    base_info: dict[str, list] = {}  # "jsv": batch statistics, as the reference measures; "jsv_eval": running
    runs: dict[str, dict[str, dict[str, list]]] = {m: {lr: {} for lr, _ in cfg.lr_schedules} for m in cfg.methods}
    for seed in cfg.seeds:
        sdir = out / f"seed{seed}"
        pc = _prune_config(cfg, seed, method="L1", out=str(sdir))
        base = base_model(pc, data, sdir, log)
        check(f"finished pieces are kept in {out}")
        info = study.cached(sdir / "base.json", lambda: {"acc": evaluate(base, data),
                                                         "jsv": mean_jsv(base, probe, "batch")})
        if "jsv_eval" not in info:  # also with BatchNorm's running statistics (each sample its own Jacobian)
            info = info | {"jsv_eval": mean_jsv(base, probe, "eval")}
            study.save({sdir / "base.json": info})
        for key in ("acc", "jsv", "jsv_eval"):
            base_info.setdefault(key, []).append(info[key])
        for method in cfg.methods:
            for lr, schedule in cfg.lr_schedules:
                run_dir = sdir / slug(method) / f"lr{lr}"
                log(f"seed {seed}: {method} at LR {lr}")
                s = run_pruning(_prune_config(cfg, seed, method=method, base=str(sdir / "base" / "model.npz"),
                                              lr_schedule=schedule, out=str(run_dir),
                                              shared=str(run_dir.parent)), log=log)
                cell = runs[method][lr]
                for key in ("best_acc", "final_acc", "jsv_after_prune", "acc_per_epoch", "jsv_per_epoch"):
                    cell.setdefault(key, []).append(s[key])
                pruned = run_dir.parent  # the pruned model of both LRs, with BatchNorm's running statistics:
                cell.setdefault("jsv_after_prune_eval", []).append(study.cached(pruned / "jsv_eval.json", lambda: {
                    "jsv_after_prune_eval": mean_jsv(load_model(pruned / "pruned.npz")[0], probe, "eval")}
                )["jsv_after_prune_eval"])
                cell.setdefault("sparsity", []).append(s["sparsity"])
                cell.setdefault("speedup", []).append(s["speedup"])
                study.clock.tick()
                check(f"finished pieces are kept in {out}")
    return study.finish({"config": cfg.to_dict(), "runs": runs, "base": base_info}, write_report)
