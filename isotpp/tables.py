"""The papers' tables as grids of pruning runs: enumerate, run (skipping finished cells), tabulate.

A :class:`TableSpec` (written in a config file under ``experiments/configs``)
names a base recipe and the axes of a table: ratio settings × retraining
learning rates × methods × seeds. Every cell is one ``isotpp prune`` run in
``OUT/cells/<cell>``; a cell is finished when its ``summary.json`` exists, so
the runner can be stopped and restarted, or its command lines handed to a
cluster scheduler (``--list``). Base models are trained once per seed into
``OUT/base_seed<s>`` (or given, e.g. converted torchvision weights for
ImageNet). The table reports mean (population std) over seeds, the papers'
convention.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from isotpp.errors import UserError

logger = logging.getLogger(__name__)


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
    ratios: tuple[tuple[str, str], ...]  # (label, '--ratios' patterns)
    lr_schedules: tuple[tuple[str, str], ...]  # (label, schedule)
    methods: tuple[str, ...]
    seeds: tuple[int, ...] = (0, 1, 2)
    skip: tuple[str, ...] = ()
    epochs: int = 120
    batch_size: int = 128
    wd: float = 5e-4
    base: BaseRecipe = BaseRecipe()
    prune_args: tuple[tuple[str, str], ...] = ()  # extra '--flag value' pairs for every cell (TPP settings)
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
            raise UserError(f"--only {only!r} matches no cell of {spec.name}: cell names look like {cells(spec)[0].name}")
    return out


def base_path(spec: TableSpec, out: Path, seed: int) -> Path:
    if spec.base.path:
        return Path(spec.base.path.format(seed=seed))
    return out / f"base_seed{seed}" / "model.npz"


def base_command(spec: TableSpec, out: Path, seed: int) -> list[str] | None:
    """The command that trains the base model of ``seed`` (None when it is given)."""
    if spec.base.path:
        return None
    return [sys.executable, "-m", "isotpp.cli", "train", "--model", spec.model, "--dataset", spec.dataset,
            "--epochs", str(spec.base.epochs), "--lr-schedule", spec.base.lr_schedule,
            "--batch-size", str(spec.batch_size), "--wd", str(spec.wd), "--seed", str(seed),
            "--workdir", str(out / f"base_seed{seed}"), "--resume"]


def _skip(spec: TableSpec) -> list[str]:
    return ["--skip", ",".join(spec.skip)] if spec.skip else []


def cell_command(spec: TableSpec, cell: Cell, out: Path, data_dir: str | None = None) -> list[str]:
    ratios = dict(spec.ratios)[cell.ratio]
    schedule = dict(spec.lr_schedules)[cell.lr]
    cmd = [sys.executable, "-m", "isotpp.cli", "prune", "--model", spec.model, "--dataset", spec.dataset,
           "--ratios", ratios, *_skip(spec), "--method", cell.method, "--base", str(base_path(spec, out, cell.seed)),
           "--epochs", str(spec.epochs), "--lr-schedule", schedule, "--batch-size", str(spec.batch_size),
           "--wd", str(spec.wd), "--seed", str(cell.seed), "--out", str(out / "cells" / cell.name)]
    for flag, value in spec.prune_args:
        cmd += [flag, value]
    if data_dir:
        cmd += ["--data-dir", data_dir]
    return cmd


def run_table(spec: TableSpec, out: str | Path, *, only: str | None = None, data_dir: str | None = None,
              run: Callable[[list[str]], int] | None = None, log: Callable[[str], None] | None = None) -> dict[str, list[str]]:
    """Run the unfinished cells (and their base models) one after the other; returns the status lists.

    SIGTERM (to this process, or to a cell, which then exits 75 with its work
    saved) stops the table after the cell in flight with
    :class:`~isotpp.preemption.Preempted`; running it again continues.
    """
    log = log or logger.info  # the command line passes print
    from isotpp.preemption import sigterm_stops

    with sigterm_stops("run the same command again to continue"):
        return _run_table(spec, Path(out), only, data_dir, run or _subprocess, log)


def _subprocess(cmd: list[str]) -> int:
    return subprocess.run(cmd, check=False).returncode


def _ran(code: int, out: Path) -> bool:
    """Whether a command succeeded; a stopped one (exit 75) or a SIGTERM here stops the table."""
    from isotpp.preemption import PREEMPTED_EXIT_CODE, Preempted, check

    kept = f"finished cells are kept in {out}"
    if code == PREEMPTED_EXIT_CODE:
        raise Preempted(f"stopped by SIGTERM: {kept}; run the same command again to continue")
    check(kept)
    return code == 0


def _run_table(spec: TableSpec, out: Path, only, data_dir, run, log) -> dict[str, list[str]]:
    todo = cells(spec, only)
    status: dict[str, list[str]] = {"done": [], "ran": [], "failed": []}
    for seed in sorted({c.seed for c in todo}):
        path = base_path(spec, out, seed)
        if path.exists():
            continue
        cmd = base_command(spec, out, seed)
        if cmd is None:
            raise UserError(f"the base model {path} for seed {seed} is missing: {spec.notes or 'provide it'}")
        log(f"base model, seed {seed}: {shlex.join(cmd)}")
        if not _ran(run(cmd + (["--data-dir", data_dir] if data_dir else [])), out) or not path.exists():
            raise UserError(f"training the base model of seed {seed} failed: see the log above, then rerun")
    for i, cell in enumerate(todo):
        if (out / "cells" / cell.name / "summary.json").exists():
            status["done"].append(cell.name)
            continue
        cmd = cell_command(spec, cell, out, data_dir)
        log(f"[{i + 1}/{len(todo)}] {cell.name}: {shlex.join(cmd)}")
        (status["ran"] if _ran(run(cmd), out) else status["failed"]).append(cell.name)
    return status


def commands(spec: TableSpec, out: str | Path, *, only: str | None = None, data_dir: str | None = None) -> list[str]:
    """Shell lines for every unfinished cell (base models first): for a cluster scheduler."""
    out = Path(out)
    todo = [c for c in cells(spec, only) if not (out / "cells" / c.name / "summary.json").exists()]
    lines = []
    for seed in sorted({c.seed for c in todo}):
        cmd = base_command(spec, out, seed)
        if cmd is not None and not base_path(spec, out, seed).exists():
            lines.append(shlex.join(cmd + (["--data-dir", data_dir] if data_dir else [])))
    return lines + [shlex.join(cell_command(spec, c, out, data_dir)) for c in todo]


def collect(spec: TableSpec, out: str | Path) -> dict[Cell, dict[str, Any]]:
    from isotpp.io import read_json

    out = Path(out)
    found = {}
    for cell in cells(spec):
        path = out / "cells" / cell.name / "summary.json"
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
    from isotpp.report import markdown_table

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
    from isotpp.cost import as_published

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


def load_spec(name_or_path: str) -> TableSpec:
    """A table config by name (``experiments/configs/<name>.py``) or path; the file defines get_config()."""
    import importlib.util

    path = Path(name_or_path)
    if not path.suffix:
        path = Path(__file__).resolve().parent.parent / "experiments" / "configs" / f"{name_or_path}.py"
    if not path.exists():
        raise UserError(f"no table config {name_or_path!r} ({path} does not exist): see experiments/configs/")
    module_spec = importlib.util.spec_from_file_location(f"isotpp_table_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    spec = module.get_config()
    if not isinstance(spec, TableSpec):
        raise UserError(f"{path}: get_config() must return an isotpp.tables.TableSpec")
    return spec
