"""Pruning at initialisation and AutoSparse on Fashion-MNIST, through the spectral lens.

For every seed, LeNet-300-100 (784→300→100→10, ReLU, Kaiming-normal init) is
pruned at initialisation by each method at each density, its mean JSV at
initialisation is measured, and every masked network of the seed trains as one
vmapped program (same batches for every run). Methods are the scores of
:mod:`isotpp.pai.registry`' registry (each also "+ai": approximate isometry of
the masked kernels before training); the built-in ones:

========== =================================================================
random     a uniformly random subset (global ranking of i.i.d. scores)
magnitude  the largest |w| at initialisation, one global threshold
snip       |w ⊙ ∂L/∂w| on ``score_examples`` training examples
grasp      keep the smallest −w ⊙ Hg (logits / 200), same examples
synflow    data-free, ``synflow_rounds`` rounds, density^(k/rounds)
irp        the ticket of iterative rewind pruning (``irp_rounds`` rounds of
           ``irp_epochs`` epochs, same count removed per round), rewound
autosparse a scoring MLP trained on one IRP record of *another* seed,
           validated on a second IRP record of a third seed
========== =================================================================

plus ``dense`` (the unpruned network, same schedule). The AutoSparse scorer is
then transferred to a small ConvNet (:mod:`isotpp.pai.small_convnet`), where it is
compared with the data-free and one-shot baselines.

Accuracy is reported at the **last epoch** (``final_acc``) and at the epoch of
best accuracy on a validation split held out from the training set
(``val_selected_acc``); never as a maximum over test epochs.

Every finished piece (IRP records, the scorer and its validation, each seed's
cells) is written to the run directory as it completes; a rerun reuses them.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from isotpp import preemption
from isotpp.data import load_dataset
from isotpp.data.identity import data_identity
from isotpp.errors import UserError
from isotpp.models import create_model
from isotpp.pai.autosparse import (
    G0_DEFINITION,
    load_scorer,
    train_scorer,
    validate_scorer,
)
from isotpp.pai.irp import load_irp_record, make_record, run_irp
from isotpp.pai.masks import (
    SCOPES,
    apply_masks,
    check_density,
    layer_densities,
    mask_density,
)
from isotpp.pai.net import PrunableNet
from isotpp.pai.registry import (
    ScoreContext,
    all_methods,
    canonical,
    get_score,
    parse_method,
    score_names,
)
from isotpp.pai.runs import (
    PaIData,
    Split,
    masked_group,
    selected_accuracy,
    train_runs,
)
from isotpp.pai.small_convnet import small_convnet
from isotpp.pai.spectral import isometrize, jsv_at_init
from isotpp.progress import progress as progress_bar
from isotpp.storage.atomic import write_json
from isotpp.studies import scaffold
from isotpp.studies.pai_report import write_report
from isotpp.studies.scaffold import Study, StudySettings, slug
from isotpp.training.engine import LRSchedule

logger = logging.getLogger(__name__)


ARCH = "lenet_300_100"
TRANSFER_ARCH = "small_convnet"
DEFAULT_DENSITIES = (0.1, 0.05, 0.02, 0.01, 0.005)
TRANSFER_METHODS = score_names(transfer=True)  # the default; any registered score is accepted


@dataclasses.dataclass(frozen=True)
class PaIConfig(StudySettings):
    """Everything that defines the study (defaults: the full run)."""

    dataset: str = "fashion_mnist"
    data_dir: str | None = None
    init: str = "kaiming"
    seeds: tuple[int, ...] = (0, 1, 2)
    densities: tuple[float, ...] = DEFAULT_DENSITIES
    methods: tuple[str, ...] = all_methods()
    scope: str = "global"
    val_size: int = 5000
    batch_size: int = 256
    weight_decay: float = 1e-4
    epochs: int = 10
    lr_schedule: str = "0:0.1,5:0.01,8:0.001"
    score_examples: int = 1000
    grasp_temperature: float = 200.0
    synflow_rounds: int = 100
    irp_rounds: int = 10
    irp_epochs: int = 2
    irp_lr_schedule: str = "0:0.1,1:0.01"
    irp_rewind: str = "kernels"
    autosparse_seeds: tuple[int, int] = (100, 101)  # (scorer's IRP record, validation IRP record)
    autosparse_density: float = 0.01
    scorer_hidden: tuple[int, ...] = (64, 64)
    scorer_epochs: int = 5
    scorer_lr: float = 1e-3
    ai_iters: int = 1000
    ai_lr: float = 0.1
    transfer: bool = True
    transfer_methods: tuple[str, ...] = TRANSFER_METHODS
    transfer_densities: tuple[float, ...] = (0.05, 0.01)
    transfer_epochs: int = 10
    jsv_samples: int = 100
    train_limit: int | None = None  # first n training examples (tests)
    scorer_path: str | None = None  # use this trained scorer instead of training one
    irp_record_path: str | None = None  # train the scorer from this IRP record instead of running IRP
    quick: bool = False

    REUSABLE: ClassVar[tuple[str, ...]] = ("seeds", "methods", "densities", "data_dir", "transfer",
                                           "transfer_methods", "transfer_densities", "scorer_path", "irp_record_path")
    # a reduced run that shows every piece in a few minutes on a 2-core CPU
    QUICK: ClassVar[Mapping[str, Any]] = {
        "seeds": (0,), "densities": (0.05, 0.01), "epochs": 3, "lr_schedule": "0:0.1,2:0.01", "synflow_rounds": 20,
        "irp_rounds": 3, "irp_epochs": 1, "irp_lr_schedule": "0:0.1", "scorer_epochs": 3, "ai_iters": 200,
        "transfer_densities": (0.05,), "transfer_epochs": 2}
    POSITIVE: ClassVar[tuple[str, ...]] = ("batch_size", "epochs", "score_examples", "synflow_rounds", "irp_rounds",
                                           "irp_epochs", "scorer_epochs", "transfer_epochs", "jsv_samples", "val_size")
    SCHEDULES: ClassVar[tuple[str, ...]] = ("lr_schedule", "irp_lr_schedule")
    RENAMED: ClassVar[Mapping[str, str]] = {"lr": "lr_schedule", "irp_lr": "irp_lr_schedule"}

    def check(self) -> None:
        for d in (*self.densities, *self.transfer_densities, self.autosparse_density):
            check_density(d)
        if not self.methods:
            raise UserError("no methods: name at least one, e.g. --methods snip,autosparse")
        for m in (*self.methods, *self.transfer_methods):
            parse_method(m)
        if self.scope not in SCOPES:
            raise UserError(f"unknown scope {self.scope!r}: choose 'global' or 'layerwise'")
        if self.irp_rewind not in ("kernels", "all"):
            raise UserError(f"unknown IRP rewind {self.irp_rewind!r}: choose 'kernels' or 'all'")
        if len(self.autosparse_seeds) != 2 or self.autosparse_seeds[0] == self.autosparse_seeds[1]:
            raise UserError("autosparse_seeds must be two different seeds: (scorer's IRP run, validation IRP run)")
        shared = sorted(set(self.autosparse_seeds) & set(self.seeds))
        if shared:
            raise UserError(f"seed {shared[0]} is both a study seed and an AutoSparse IRP seed: the pruned networks "
                            "must not share a seed with the IRP runs; use other autosparse_seeds")

    @property
    def methods_canonical(self) -> tuple[str, ...]:
        return tuple(canonical(m) for m in self.methods)

    @property
    def needs_scorer(self) -> bool:
        used = [*self.methods, *(self.transfer_methods if self.transfer else ())]
        return any(get_score(parse_method(m)[0]).needs_scorer for m in used)


quick_config = PaIConfig.quick_config


# --------------------------------------------------------------------------
# Data.
# --------------------------------------------------------------------------


def load_data(config: PaIConfig):
    """Fashion-MNIST at 28×28: training split minus a held-out validation split, and the test split."""
    train = load_dataset(config.dataset, "train", data_dir=config.data_dir, resize=None, limit=config.train_limit)
    test = load_dataset(config.dataset, "test", data_dir=config.data_dir, resize=None)
    if train.images.shape[1:] != (28, 28, 1):
        raise UserError(f"{config.dataset} gives images of shape {train.images.shape[1:]}; the study needs 28x28x1")
    n = len(train)
    if config.val_size >= n:
        raise UserError(f"val_size {config.val_size} leaves no training examples out of {n}: lower it")
    perm = np.random.default_rng(12345).permutation(n)  # fixed: every seed and method sees the same split
    val, tr = perm[: config.val_size], perm[config.val_size:]
    return PaIData(Split(jnp.asarray(train.images[tr]), jnp.asarray(train.labels[tr])),
                   Split(jnp.asarray(train.images[val]), jnp.asarray(train.labels[val])),
                   Split(jnp.asarray(test.images), jnp.asarray(test.labels)))


def make_net(arch: str, config: PaIConfig, seed: int):
    if arch == TRANSFER_ARCH:
        return PrunableNet.from_model(small_convnet(seed=seed, init=config.init))
    return PrunableNet.from_model(create_model(arch, init=config.init, seed=seed))


def _g0_spec(config: PaIConfig, data) -> dict[str, Any]:
    return {"definition": G0_DEFINITION, "batch_size": config.batch_size, "dataset": config.dataset,
            "examples": len(data.train)}


# --------------------------------------------------------------------------
# IRP and the AutoSparse scorer.
# --------------------------------------------------------------------------


def _irp(config: PaIConfig, data, nets, densities, key, desc: str, progress: bool):
    bar = progress_bar(config.irp_rounds * config.irp_epochs, desc, unit="ep", enabled=progress)

    def tick(j, e, m):
        preemption.check()
        bar.set_postfix(round=j + 1, loss=f"{np.nanmean(m['loss']):.3f}")
        bar.update()

    try:
        return run_irp(nets, densities, data, rounds=config.irp_rounds, epochs=config.irp_epochs,
                       lr=LRSchedule.parse(config.irp_lr_schedule), weight_decay=config.weight_decay,
                       batch_size=config.batch_size, key=key, rewind=config.irp_rewind, on_epoch=tick)
    finally:
        bar.close()


def autosparse_scorer(study: Study, data):
    """The scorer (trained on one IRP record, validated on another) and its validation metrics."""
    config, out = study.config, study.out
    adir = out / "autosparse"
    if config.scorer_path is not None:
        scorer = load_scorer(config.scorer_path)
        if scorer.meta.get("record_seed") in config.seeds:
            raise UserError(f"scorer {config.scorer_path} was trained on an IRP run of seed "
                            f"{scorer.meta.get('record_seed')}, a study seed: use other seeds or another scorer")
        return scorer, dict(scorer.meta.get("validation") or {})
    if (adir / "scorer.npz").exists() and (adir / "validation.json").exists():
        return load_scorer(adir / "scorer.npz"), study.cell(adir / "validation.json")

    train_seed, val_seed = config.autosparse_seeds
    paths = {s: adir / f"irp_{ARCH}_seed{s}.npz" for s in (train_seed, val_seed)}
    records = {}
    if config.irp_record_path is not None:
        rec = load_irp_record(config.irp_record_path, arch=ARCH)
        if rec.seed in config.seeds or rec.seed == val_seed:
            raise UserError(f"IRP record {config.irp_record_path} has seed {rec.seed}, which the study also uses: "
                            "pass a record of another seed")
        records[train_seed] = rec
    for s, p in paths.items():
        if s not in records and p.exists():
            records[s] = load_irp_record(p, arch=ARCH)
    todo = [s for s in paths if s not in records]
    if todo:
        nets = [make_net(ARCH, config, s) for s in todo]
        t0 = time.time()
        hist = _irp(config, data, nets, [config.autosparse_density] * len(todo), jax.random.key(7919),
                    f"AutoSparse IRP records (seeds {todo})", study.progress)
        with study.commit() as commit:  # the records of one vmapped group appear together
            for s, net, masks in zip(todo, nets, hist):
                g0 = net.gradient_sum(data.train.x, data.train.y, config.batch_size)
                records[s] = make_record(net, masks, seed=s, density=config.autosparse_density,
                                         rewind=config.irp_rewind, g0=g0, g0_spec=_g0_spec(config, data),
                                         meta={"epochs_per_round": config.irp_epochs, "lr": config.irp_lr_schedule})
                records[s].save(commit.path(paths[s]))
        study.log(f"AutoSparse: IRP records for seeds {todo} in {time.time() - t0:.0f} s")
        study.record(phase="autosparse_irp", seeds=todo, wall_s=time.time() - t0)
    scorer = train_scorer(records[train_seed], hidden=config.scorer_hidden, epochs=config.scorer_epochs,
                          lr=config.scorer_lr, seed=train_seed)
    validation = validate_scorer(scorer, records[val_seed])
    scorer = dataclasses.replace(scorer, meta=scorer.meta | {"validation": validation})
    with study.commit() as commit:
        scorer.save(commit.path(adir / "scorer.npz"))
        write_json(commit.path(adir / "validation.json"), validation)
    study.log(f"AutoSparse scorer: validation MSE {validation['mse']:.4f} (constant {validation['mse_constant']:.4f}), "
              f"Spearman {validation['spearman']:.3f}, ticket overlap {validation['ticket_overlap']:.3f} "
              f"(|w0| {validation['ticket_overlap_magnitude']:.3f}, random {validation['ticket_overlap_random']:.3f})")
    return scorer, validation


# --------------------------------------------------------------------------
# One seed of one architecture: masks, spectra, training.
# --------------------------------------------------------------------------


def _cells(methods, densities) -> list[tuple[str, float]]:
    return [("dense", 1.0)] + [(m, d) for m in methods for d in densities]


def _cell_path(out: Path, part: str, seed: int, method: str, density: float) -> Path:
    return out / part / f"seed{seed}" / f"{slug(method)}__d{density:g}.json"


def _score_batch(data, n: int, seed: int):
    idx = np.random.default_rng(seed + 7).choice(len(data.train), size=min(n, len(data.train)), replace=False)
    return data.train.x[jnp.asarray(idx)], data.train.y[jnp.asarray(idx)]


def masks_for_seed(study: Study, data, net, seed: int, methods, densities, *, scorer, part: str):
    """``{(score, density): masks}`` for every registered score needed at this seed (the score's
    :meth:`~isotpp.pai.registry.Score.masks`, IRP trained here and kept as ``irp_d<density>.npz``)."""
    config, out = study.config, study.out
    bases = sorted({parse_method(m)[0] for m in methods}, key=score_names().index)
    key = jax.random.fold_in(jax.random.key(seed), 11)
    x, y = _score_batch(data, config.score_examples, seed)

    def irp(densities):  # one record per density, all densities as one vmapped group
        paths = {d: out / part / f"seed{seed}" / f"irp_d{d:g}.npz" for d in densities}
        by_d = {d: load_irp_record(p, arch=net.arch).final_masks() for d, p in paths.items() if p.exists()}
        todo = [d for d in densities if d not in by_d]
        if todo:
            hist = _irp(config, data, [net] * len(todo), todo, jax.random.fold_in(key, 5),
                        f"seed {seed}: IRP at {len(todo)} densities", study.progress)
            with study.commit() as commit:  # the records of one vmapped group appear together
                for d, masks in zip(todo, hist):
                    rec = make_record(net, masks, seed=seed, density=d, rewind=config.irp_rewind,
                                      meta={"epochs_per_round": config.irp_epochs, "lr": config.irp_lr_schedule})
                    rec.save(commit.path(paths[d]))
                    by_d[d] = rec.final_masks()
        return by_d

    ctx = ScoreContext(key=key, x=x, y=y, scope=config.scope, grasp_temperature=config.grasp_temperature,
                       synflow_rounds=config.synflow_rounds, data=data, scorer=scorer, irp=irp)
    out_masks = {}
    for base in bases:
        t0 = time.time()
        by_d = get_score(base).masks(net, densities, ctx)
        for d in densities:
            out_masks[(base, d)] = {n: jnp.asarray(m) for n, m in by_d[d].items()}
        study.record(phase="masks", part=part, seed=seed, method=base, wall_s=time.time() - t0)
    return out_masks


def run_cells(study: Study, data, arch: str, seed: int, methods, densities, epochs: int, *, scorer,
              part: str) -> None:
    """Mask, measure and train every (method, density) cell of one seed; write one JSON per cell."""
    config, out, progress = study.config, study.out, study.progress
    cells = [c for c in _cells(methods, densities) if not _cell_path(out, part, seed, *c).exists()]
    if not cells:
        return
    net = make_net(arch, config, seed)
    sparse_methods = sorted({m for m, _ in cells if m != "dense"}, key=list(methods).index)
    masks = masks_for_seed(study, data, net, seed, sparse_methods, densities, scorer=scorer, part=part)
    jsv_x = data.train.x[: config.jsv_samples]
    params, cell_masks, info = [], [], []
    ones = {n: jnp.ones(s, bool) for n, s in net.shapes().items()}
    bar = progress_bar(len(cells), f"seed {seed}: masks, AI, JSV ({arch})", unit="cell", enabled=progress)
    for method, d in cells:
        t0 = time.time()
        m = ones if method == "dense" else masks[(parse_method(method)[0], d)]
        p = net.params
        if method != "dense" and parse_method(method)[1]:
            p = isometrize(net, m, iters=config.ai_iters, lr=config.ai_lr)
        p = apply_masks(p, m)
        jsv = jsv_at_init(net, p, jsv_x)
        params.append(p)
        cell_masks.append(m)
        info.append({"density": mask_density(m), "layer_density": layer_densities(m), "jsv_init": jsv,
                     "prep_s": time.time() - t0})
        bar.update()
    bar.close()
    group = masked_group([net] * len(cells), cell_masks, LRSchedule.parse(config.lr_schedule),
                         weight_decay=config.weight_decay, params=params)
    bar = progress_bar(epochs, f"seed {seed}: train {len(cells)} runs ({arch})", unit="ep", enabled=progress)
    t0 = time.time()

    def tick(e, mt):
        preemption.check()
        bar.set_postfix(test=f"{np.nanmax(mt['test_acc']):.1f}")
        bar.update()
        for i, (method, d) in enumerate(cells):
            study.record(phase="train", part=part, seed=seed, method=method, density=d, epoch=e + 1,
                   loss=mt["loss"][i], train_acc=mt["train_acc"][i], val_acc=mt["val_acc"][i],
                   test_acc=mt["test_acc"][i])

    hist = train_runs(group, data, epochs=epochs, batch_size=config.batch_size,
                      key=jax.random.fold_in(jax.random.key(seed), 3), on_epoch=tick)
    bar.close()
    wall = time.time() - t0
    selected = selected_accuracy(hist["val_acc"], hist["test_acc"])
    study.save({_cell_path(out, part, seed, method, d): _cell_record(info[i], method, d, seed, arch, i, hist,
                                                                      selected, wall)
                for i, (method, d) in enumerate(cells)})  # the cells of one vmapped group appear together
    study.log(f"seed {seed} ({arch}): trained {len(cells)} runs for {epochs} epochs in {wall:.0f} s")


def _cell_record(info, method, d, seed, arch, i, hist, selected, wall) -> dict[str, Any]:
    return info | {
            "method": method, "target_density": d, "seed": seed, "arch": arch,
            "final_acc": float(hist["test_acc"][i, -1]), "val_selected_acc": float(selected[i]),
            "final_val_acc": float(hist["val_acc"][i, -1]), "diverged": bool(hist["diverged"][i]),
            "test_acc_per_epoch": hist["test_acc"][i].tolist(), "val_acc_per_epoch": hist["val_acc"][i].tolist(),
            "loss_per_epoch": hist["loss"][i].tolist(), "train_wall_s_group": wall}


# --------------------------------------------------------------------------
# The study.
# --------------------------------------------------------------------------


def _check_files(config: PaIConfig) -> None:
    """Refuse a scorer for other features or an IRP record of another architecture before any work."""
    if config.scorer_path is not None:
        load_scorer(config.scorer_path)
    if config.irp_record_path is not None:
        load_irp_record(config.irp_record_path, arch=ARCH)


def run_study(config: PaIConfig, out: str | Path, *, progress: bool = True,
              log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run (or complete) the study in ``out``; returns the results (also written as results.json).

    ``out`` is locked while the study runs and refused if it holds a study
    with other settings; the given files and the data are checked before
    anything is written (:func:`isotpp.studies.scaffold.run_study`). Each piece
    (IRP records, the scorer, a seed's cells) is committed whole; SIGTERM stops
    at the next epoch with :class:`~isotpp.preemption.Preempted` and the same
    call finishes the study.
    """
    return scaffold.run_study(config, out, load_data=load_data, body=_run, check=_check_files, progress=progress,
                              log=log, identity=lambda data: data_identity(
                                  config.dataset, train=(data.train.x, data.train.y), val=(data.val.x, data.val.y),
                                  test=(data.test.x, data.test.y)))


def _run(study: Study, data) -> dict[str, Any]:
    config = study.config
    methods = config.methods_canonical
    study.log(f"{config.dataset}: {len(data.train)} train / {len(data.val)} validation / {len(data.test)} test; "
              f"seeds {list(config.seeds)}; densities {list(config.densities)}; {len(methods)} methods; "
              f"out {study.out}")
    timings: dict[str, float] = {}
    scorer, validation = None, None
    if config.needs_scorer:
        t0 = time.time()
        scorer, validation = autosparse_scorer(study, data)
        timings["autosparse_scorer_s"] = time.time() - t0
        study.clock.tick()
    t0 = time.time()
    for seed in config.seeds:
        run_cells(study, data, ARCH, seed, methods, config.densities, config.epochs, scorer=scorer, part="lenet")
        study.clock.tick()
    timings["lenet_s"] = time.time() - t0
    transfer_methods = tuple(canonical(m) for m in config.transfer_methods) if config.transfer else ()
    if transfer_methods:
        t0 = time.time()
        for seed in config.seeds:
            run_cells(study, data, TRANSFER_ARCH, seed, transfer_methods, config.transfer_densities,
                      config.transfer_epochs, scorer=scorer, part="transfer")
            study.clock.tick()
        timings["transfer_s"] = time.time() - t0
    results = collect(study, methods, transfer_methods, validation, scorer)
    results["timings"] = timings
    return study.finish(results, write_report)


_KEYS = ("final_acc", "val_selected_acc", "density", "diverged")


def _collect_part(study: Study, part: str, arch: str, methods, densities) -> dict[str, Any]:
    runs: dict[str, dict[str, Any]] = {}
    for method, d in _cells(methods, densities):
        cell: dict[str, list] = {k: [] for k in (*_KEYS, "jsv_mean", "jsv_zero_fraction", "seeds",
                                                 "test_acc_per_epoch", "layer_density")}
        for seed in study.config.seeds:
            r = study.cell(_cell_path(study.out, part, seed, method, d))
            if r is None:
                continue
            for k in _KEYS:
                cell[k].append(r[k])
            cell["jsv_mean"].append(r["jsv_init"]["mean"])
            cell["jsv_zero_fraction"].append(r["jsv_init"].get("zero_fraction"))
            cell["seeds"].append(seed)
            cell["test_acc_per_epoch"].append(r["test_acc_per_epoch"])
            cell["layer_density"].append(r["layer_density"])
        runs.setdefault(method, {})[f"{d:g}"] = cell
    return {"arch": arch, "densities": [float(d) for d in densities], "methods": ["dense", *methods], "runs": runs}


def collect(study: Study, methods, transfer_methods, validation, scorer) -> dict[str, Any]:
    config = study.config
    results = {"config": config.to_dict(),
               "lenet": _collect_part(study, "lenet", ARCH, methods, config.densities)}
    if transfer_methods:
        results["transfer"] = _collect_part(study, "transfer", TRANSFER_ARCH, transfer_methods,
                                            config.transfer_densities)
    if validation is not None:
        results["autosparse"] = {"validation": validation,
                                 "scorer": {k: v for k, v in (scorer.meta if scorer else {}).items()
                                            if k != "validation"}}
    return results
