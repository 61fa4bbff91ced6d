"""The papers' tables as grids of pruning runs: enumerate, run (skipping finished cells), tabulate.

A :class:`TableSpec` (a config module in :mod:`isotpp.studies.table_configs`, or any
file defining ``get_config()``) names a base recipe and the axes of a table:
ratio settings × retraining learning rates × methods × seeds. Every cell is
one pruning run (:func:`isotpp.studies.pruning_run.run_pruning`, in this process) in
``OUT/cells/<cell>``; a cell is finished when its ``summary.json`` exists, so
the runner can be stopped and restarted, or the cells' command lines handed
to a cluster scheduler (:func:`commands`). Base models are trained once per
seed into ``OUT/base_seed<s>/model.npz`` (or given, e.g. converted
torchvision weights for ImageNet). The table reports mean (population std)
over seeds, the papers' convention.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib
import importlib.resources
import importlib.util
import logging
import re
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from isotpp.errors import UserError
from isotpp.preemption import Preempted, check, sigterm_stops
from isotpp.pruning.cost import as_published
from isotpp.pruning.model_file import save_model
from isotpp.reporting.tables import markdown_table
from isotpp.storage.atomic import read_json
from isotpp.studies.pruning_run import PruneConfig, base_model, load_data, run_pruning
from isotpp.studies.scaffold import RESUME_HINT

logger = logging.getLogger(__name__)

CONFIGS = "isotpp.studies.table_configs"  # the package holding the shipped table configs


@dataclasses.dataclass(frozen=True)
class BaseRecipe:
    """How the unpruned model of each seed is obtained."""

    epochs: int = 200
    lr_schedule: str = "0:0.1,100:0.01,150:0.001"
    path: str | None = None  # a given model file (e.g. converted torchvision weights); {seed} is substituted


@dataclasses.dataclass(frozen=True)
class TableSpec:
    name: str
    title: str
    model: str
    dataset: str
    ratios: tuple[tuple[str, str], ...]  # (label, ``ratios`` patterns of a pruning run)
    lr_schedules: tuple[tuple[str, str], ...]  # (label, schedule)
    methods: tuple[str, ...]
    seeds: tuple[int, ...] = (0, 1, 2)
    skip: tuple[str, ...] = ()
    epochs: int = 120
    batch_size: int = 128
    weight_decay: float = 5e-4
    base: BaseRecipe = BaseRecipe()
    prune_settings: tuple[tuple[str, Any], ...] = ()  # (PruneConfig field, value) for every cell (TPP settings)
    notes: str = ""


@dataclasses.dataclass(frozen=True)
class Cell:
    method: str
    ratio: str
    lr: str
    seed: int

    @property
    def name(self) -> str:
        safe = re.sub(r"[^A-Za-z0-9.]+", "_", self.method)
        return f"{safe}__pr{self.ratio}__lr{self.lr}__seed{self.seed}"


def cells(spec: TableSpec, only: str | None = None) -> list[Cell]:
    """Every cell of the table (``only``: a glob on cell names)."""
    out = [Cell(m, r, lr, s) for s in spec.seeds for r, _ in spec.ratios for lr, _ in spec.lr_schedules
           for m in spec.methods]
    if only:
        out = [c for c in out if fnmatch.fnmatch(c.name, only)]
        if not out:
            raise UserError(f"only={only!r} matches no cell of {spec.name}: cell names look like {cells(spec)[0].name}")
    return out


def base_path(spec: TableSpec, out: Path, seed: int) -> Path:
    if spec.base.path:
        return Path(spec.base.path.format(seed=seed))
    return out / f"base_seed{seed}" / "model.npz"


def cell_dir(out: Path, cell: Cell) -> Path:
    return out / "cells" / cell.name


def base_config(spec: TableSpec, out: Path, seed: int, data_dir: str | None = None) -> PruneConfig:
    """The pruning-run settings whose base stage trains the unpruned model of ``seed`` (in ``OUT/base_seed<s>``)."""
    return PruneConfig(model=spec.model, dataset=spec.dataset, data_dir=data_dir, base_epochs=spec.base.epochs,
                       base_lr_schedule=spec.base.lr_schedule, batch_size=spec.batch_size,
                       weight_decay=spec.weight_decay, seed=seed, out=str(out / f"base_seed{seed}"),
                       **dict(spec.prune_settings))


def cell_config(spec: TableSpec, cell: Cell, out: Path, data_dir: str | None = None) -> PruneConfig:
    """The pruning run of one cell."""
    return PruneConfig(model=spec.model, dataset=spec.dataset, data_dir=data_dir, ratios=dict(spec.ratios)[cell.ratio],
                       skip=tuple(spec.skip), method=cell.method, base=str(base_path(spec, out, cell.seed)),
                       epochs=spec.epochs, lr_schedule=dict(spec.lr_schedules)[cell.lr], batch_size=spec.batch_size,
                       weight_decay=spec.weight_decay, seed=cell.seed, out=str(cell_dir(out, cell)),
                       **dict(spec.prune_settings))


# ``isotpp prune`` flags whose name is not the PruneConfig field's
_FLAGS = {"penalty_weight": "--lw-orth-reg", "base": "--checkpoint"}


def _flag(field: str) -> str:
    return _FLAGS.get(field, "--" + field.replace("_", "-"))


def base_command(spec: TableSpec, out: Path, seed: int) -> list[str] | None:
    """``isotpp train`` arguments that train the base model of ``seed`` (None when it is given): for a scheduler."""
    if spec.base.path:
        return None
    return ["isotpp", "train", "--model", spec.model, "--dataset", spec.dataset,
            "--epochs", str(spec.base.epochs), "--lr-schedule", spec.base.lr_schedule,
            "--batch-size", str(spec.batch_size), "--wd", str(spec.weight_decay), "--seed", str(seed),
            "--workdir", str(out / f"base_seed{seed}"), "--resume"]


def cell_command(spec: TableSpec, cell: Cell, out: Path, data_dir: str | None = None) -> list[str]:
    """``isotpp prune`` arguments of one cell (the same run as :func:`cell_config`): for a scheduler."""
    c = cell_config(spec, cell, out, data_dir)
    cmd = ["isotpp", "prune", "--model", c.model, "--dataset", c.dataset, "--ratios", c.ratios]
    if c.skip:
        cmd += ["--skip", ",".join(c.skip)]
    cmd += ["--method", c.method, "--base", c.base, "--epochs", str(c.epochs), "--lr-schedule", c.lr_schedule,
            "--batch-size", str(c.batch_size), "--weight-decay", str(c.weight_decay), "--seed", str(c.seed),
            "--out", c.out]
    for field, value in spec.prune_settings:
        cmd += [_flag(field), str(value)]
    if data_dir:
        cmd += ["--data-dir", data_dir]
    return cmd


Step = Literal["base", "cell"]


def train_base(config: PruneConfig, path: Path, log: Callable[[str], None]) -> None:
    """Train the base model of a pruning run's base stage (resumable, in ``config.out``) and save it at ``path``."""
    model = base_model(config.validate(), load_data(config), Path(config.out), log)
    save_model(path, model, {"stage": "base", "seed": config.seed})


def run_in_process(step: Step, config: PruneConfig, log: Callable[[str], None]) -> None:
    """The default runner of :func:`run_table`: a base model or a cell, in this process."""
    if step == "base":
        train_base(config, Path(config.out) / "model.npz", log)
    else:
        run_pruning(config, log=log)


Runner = Callable[[Step, PruneConfig, Callable[[str], None]], None]


def run_table(spec: TableSpec, out: str | Path, *, only: str | None = None, data_dir: str | None = None,
              run: Runner | None = None, log: Callable[[str], None] | None = None) -> dict[str, list[str]]:
    """Run the unfinished cells (and their base models) one after the other; returns the status lists.

    ``run(step, config, log)`` runs one base model (``step="base"``) or cell
    (``"cell"``); the default, :func:`run_in_process`, calls the library. A
    cell that fails (:class:`~isotpp.errors.UserError` or any other error) is
    logged and listed under ``"failed"``; the next call retries it. SIGTERM
    stops the table at the next step of the cell in flight with
    :class:`~isotpp.preemption.Preempted`, its work kept; running it again continues.
    """
    log = log or logger.info  # the command line passes print
    with sigterm_stops(RESUME_HINT):
        return _run_table(spec, Path(out), only, data_dir, run or run_in_process, log)


def _run_table(spec: TableSpec, out: Path, only, data_dir, run: Runner, log) -> dict[str, list[str]]:
    todo = cells(spec, only)
    kept = f"finished cells are kept in {out}"
    status: dict[str, list[str]] = {"done": [], "ran": [], "failed": []}
    for seed in sorted({c.seed for c in todo}):
        path = base_path(spec, out, seed)
        if path.exists():
            continue
        if spec.base.path:
            raise UserError(f"the base model {path} for seed {seed} is missing: {spec.notes or 'provide it'}")
        log(f"base model, seed {seed}: {spec.base.epochs} epochs ({spec.base.lr_schedule}) into {path.parent}")
        try:
            run("base", base_config(spec, out, seed, data_dir), log)
        except Preempted as e:
            raise Preempted(f"stopped by SIGTERM: {kept}; {RESUME_HINT}") from e
        except Exception as e:
            raise UserError(f"training the base model of seed {seed} failed ({e}): fix it, then rerun") from e
        check(kept)
        if not path.exists():
            raise UserError(f"training the base model of seed {seed} failed ({path} was not written): rerun")
    for i, cell in enumerate(todo):
        if (cell_dir(out, cell) / "summary.json").exists():
            status["done"].append(cell.name)
            continue
        log(f"[{i + 1}/{len(todo)}] {cell.name}")
        try:
            run("cell", cell_config(spec, cell, out, data_dir), log)
        except Preempted as e:  # the cell kept its finished stages
            raise Preempted(f"stopped by SIGTERM: {kept}; {RESUME_HINT}") from e
        except Exception as e:  # noqa: BLE001 - one failed cell must not stop the grid: listed, retried next call
            log(f"{cell.name} failed: {e}")
            status["failed"].append(cell.name)
        else:
            status["ran"].append(cell.name)
        check(kept)
    return status


def commands(spec: TableSpec, out: str | Path, *, only: str | None = None, data_dir: str | None = None) -> list[str]:
    """Shell lines for every unfinished cell (base models first): for a cluster scheduler."""
    out = Path(out)
    todo = [c for c in cells(spec, only) if not (cell_dir(out, c) / "summary.json").exists()]
    lines = []
    for seed in sorted({c.seed for c in todo}):
        cmd = base_command(spec, out, seed)
        if cmd is not None and not base_path(spec, out, seed).exists():
            lines.append(shlex.join(cmd + (["--data-dir", data_dir] if data_dir else [])))
    return lines + [shlex.join(cell_command(spec, c, out, data_dir)) for c in todo]


def collect(spec: TableSpec, out: str | Path) -> dict[Cell, dict[str, Any]]:
    out = Path(out)
    found = {}
    for cell in cells(spec):
        path = cell_dir(out, cell) / "summary.json"
        if path.exists():
            found[cell] = read_json(path)
    return found


def _mean_std(values: Sequence[float]) -> str:
    if not values:
        return "-"
    v = np.asarray(values, dtype=np.float64)
    return f"{v.mean():.2f}" if v.size == 1 else f"{v.mean():.2f} ({v.std():.2f})"


def build_table(spec: TableSpec, out: str | Path, *, metric: str = "best_acc") -> str:
    """Markdown: a row per method, a column per (ratio, LR): mean (population std) over seeds."""
    found = collect(spec, out)
    headers = ["Method"] + [f"pr {r} / LR {lr}" for r, _ in spec.ratios for lr, _ in spec.lr_schedules]
    rows = []
    for m in spec.methods:
        row = [m]
        for r, _ in spec.ratios:
            for lr, _ in spec.lr_schedules:
                vals = [found[c][metric] for c in found if (c.method, c.ratio, c.lr) == (m, r, lr)
                        and found[c].get(metric) is not None]
                row.append(_mean_std(vals))
        rows.append(row)
    cost_row, published_row = ["sparsity / speedup"], ["… paper's rounding"]
    for r, _ in spec.ratios:
        hit = next((s for c, s in found.items() if c.ratio == r), None)
        label = f"{100 * hit['sparsity']:.2f} % / {hit['speedup']:.2f}×" if hit else "-"
        pub = (as_published(hit["params"], hit["params_pruned"], hit["flops"], hit["flops_pruned"])
               if hit and all(k in hit for k in ("params", "params_pruned", "flops", "flops_pruned")) else None)
        published = (f"{100 * pub['sparsity']:.2f} % / {pub['speedup']:.2f}×"
                     if pub and pub["sparsity"] is not None and pub["speedup"] is not None else "-")
        cost_row += [label] * len(spec.lr_schedules)
        published_row += [published] * len(spec.lr_schedules)
    n_done = len(found)
    n_all = len(cells(spec))
    return "\n".join([
        f"{spec.title}",
        "",
        markdown_table(headers, [cost_row, published_row] + rows),
        "",
        (f"{metric.replace('_', ' ')} (%), mean (population std) over seeds; {n_done}/{n_all} cells finished. "
         "Sparsity / speedup are exact; the paper's rounding computes them from counts rounded to "
         "0.001 M parameters and 0.001 GFLOPs (adds counted), as its tables do."),
    ])


def config_names() -> list[str]:
    """The shipped table configs (modules of :mod:`isotpp.studies.table_configs`)."""
    return sorted(p.name[:-3] for p in importlib.resources.files(CONFIGS).iterdir()
                  if p.name.endswith(".py") and not p.name.startswith("_"))


def load_spec(name_or_path: str) -> TableSpec:
    """A table config by name (a module of :mod:`isotpp.studies.table_configs`) or by the path of a ``.py`` file
    defining ``get_config()``."""
    path = Path(name_or_path)
    if not path.suffix:
        if name_or_path not in config_names():
            raise UserError(f"no table config {name_or_path!r}: choose one of {', '.join(config_names())} "
                            "or give the path of a .py file defining get_config()")
        module = importlib.import_module(f"{CONFIGS}.{name_or_path}")
    else:
        if not path.exists():
            raise UserError(f"no table config {name_or_path!r} ({path} does not exist): give the path of a .py file "
                            f"defining get_config(), or one of {', '.join(config_names())}")
        module_spec = importlib.util.spec_from_file_location(f"isotpp_table_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    spec = module.get_config()
    if not isinstance(spec, TableSpec):
        raise UserError(f"{name_or_path}: get_config() must return an isotpp.studies.paper_tables.TableSpec")
    return spec
