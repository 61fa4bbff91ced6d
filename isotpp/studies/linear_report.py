"""The linear-network study's table and figure, from its ``results.json``.

``isotpp reproduce mlp-linear --out DIR`` writes ``DIR/results.json``::

    {"config": {...free-form...},
     "runs": {METHOD: {LR: {"best_acc": [per seed], "final_acc": [per seed],
                            "jsv_after_prune": [per seed],
                            "acc_per_epoch": [[per epoch] per seed],
                            "jsv_per_epoch": [[per epoch] per seed]}}},
     "base": {"acc": [per seed], "jsv": [per seed]},    # optional
     "wall_s": 123.4}                                    # optional

This module turns it into the paper's table (best test accuracy at each
learning rate and the mean Jacobian singular value right after pruning) and
the paper's figure (mean JSV and test accuracy per retraining epoch). Methods
keep the file's order; learning rates are ordered from the largest down. A
study that was interrupted may have fewer seeds in some cells: statistics use
the seeds present, and a cell without any seed shows "-".
"""

from __future__ import annotations

import json
import math
import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from isotpp.errors import UserError
from isotpp.pruning.methods import method_colour
from isotpp.reporting.figures import save_figure, save_figures
from isotpp.reporting.tables import csv_text, markdown_table, mean_std, mean_std_fixed
from isotpp.storage.atomic import write_text

__all__ = [
    "draw_results_figure",
    "find_results",
    "learning_rates",
    "load_results",
    "lr_label",
    "method_style",
    "results_figure",
    "results_rows",
    "results_table",
    "setting_title",
    "write_report",
]

Metric = Literal["best_acc", "final_acc"]
METRICS: tuple[str, ...] = ("best_acc", "final_acc")
_PER_SEED = ("best_acc", "final_acc", "jsv_after_prune", "jsv_after_prune_eval")
_PER_EPOCH = ("acc_per_epoch", "jsv_per_epoch")
_REGENERATE = "regenerate it with `isotpp reproduce mlp-linear --out DIR`"


# ---------------------------------------------------------------- loading


def load_results(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a study's ``results.json`` (or a directory holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise UserError(f"results file {path} does not exist: check the path, or run "
                        "`isotpp reproduce mlp-linear --out DIR` to create it") from e  # fmt: skip
    except OSError as e:
        raise UserError(f"cannot read results file {path}: {e.strerror or e}; check the path and permissions") from e
    except UnicodeDecodeError as e:
        raise UserError(f"results file {path} is not UTF-8 text: {_REGENERATE}") from e
    try:
        results = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"results file {path} is not valid JSON ({e}); it may be truncated: {_REGENERATE}") from e
    _validate(results, str(path))
    return results


def find_results(run_dir: str | os.PathLike | None = None, *, roots=("runs", "../runs")) -> Path:
    """The ``results.json`` to read: ``run_dir``'s, or else the newest study's under ``roots``.

    ``run_dir`` may be a run directory or a results file. Without it, every
    ``results.json`` of a linear-network or ConvNet study (``isotpp demo``,
    ``isotpp reproduce mlp-linear|convnet``) under the first existing root is a
    candidate, and the most recently written one wins; ``../runs`` finds a
    repository's runs from a notebook in ``analysis/``.

    Raises:
      UserError: ``run_dir`` holds no results, or no root holds any.
    """
    if run_dir is not None:
        path = Path(run_dir)
        path = path / "results.json" if path.is_dir() else path
        if not path.is_file():
            raise UserError(f"{path} does not exist: pass a run directory holding results.json, "
                            "or run `isotpp demo` first")  # fmt: skip
        return path
    looked = []
    for root in map(Path, roots):
        looked.append(str(root))
        if not root.is_dir():
            continue
        found = []
        # up to two levels deep (runs/NAME, runs/GROUP/NAME); unlike rglob, this follows symlinked run directories
        for path in (p for pattern in ("*/results.json", "*/*/results.json") for p in root.glob(pattern)):
            try:
                if "runs" in json.loads(path.read_text(encoding="utf-8")):
                    found.append(path)
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                continue  # a half-written or foreign file is not a candidate
        if found:
            return max(found, key=lambda p: p.stat().st_mtime_ns)
    raise UserError(f"no study's results.json under {' or '.join(looked)}: run `isotpp demo` first (a minute or two "
                    "on a CPU), or pass the run directory")


def _validate(results: Any, source: str = "results") -> None:
    """Raise UserError at the first thing the table and figure could not read."""

    def bad(where: str, what: str) -> UserError:
        return UserError(f"{source}: {where} {what}; {_REGENERATE}")

    if not isinstance(results, Mapping):
        raise bad("the top level", "must be a JSON object")
    runs = results.get("runs")
    if runs is None:
        raise bad('key "runs"', "is missing (is this a study's results.json?)")
    if not isinstance(runs, Mapping):
        raise bad('"runs"', "must be an object {method: {lr: cell}}")
    for method, by_lr in runs.items():
        if not isinstance(by_lr, Mapping):
            raise bad(f"runs[{method!r}]", "must be an object {lr: cell}")
        for lr, cell in by_lr.items():
            where = f"runs[{method!r}][{lr!r}]"
            if not _is_lr(lr):
                raise bad(f"the learning-rate key {lr!r} of runs[{method!r}]", "must be a positive number like '0.01'")
            if not isinstance(cell, Mapping):
                raise bad(where, "must be an object of per-seed lists")
            for key in _PER_SEED:
                if key in cell and not _is_numbers(cell[key]):
                    raise bad(f"{where}[{key!r}]", "must be a list of numbers, one per seed")
            for key in _PER_EPOCH:
                if key in cell and not (
                    isinstance(cell[key], list) and all(_is_numbers(c) for c in cell[key])
                ):
                    raise bad(f"{where}[{key!r}]", "must be a list of per-epoch number lists, one per seed")
    base = results.get("base")
    if base is not None:
        if not isinstance(base, Mapping):
            raise bad('"base"', 'must be an object {"acc": [...], "jsv": [...]}')
        for key in ("acc", "jsv", "jsv_eval"):
            if key in base and not _is_numbers(base[key]):
                raise bad(f'base[{key!r}]', "must be a list of numbers, one per seed")
    wall = results.get("wall_s")
    if wall is not None and not _is_number(wall):
        raise bad('"wall_s"', "must be a number of seconds")


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _is_numbers(xs: Any) -> bool:
    # None stands for nan (strict JSON has no nan)
    return isinstance(xs, list) and all(x is None or _is_number(x) for x in xs)


def _is_lr(key: Any) -> bool:
    try:
        v = float(key)
    except (TypeError, ValueError):
        return False
    return math.isfinite(v) and v > 0


def _values(xs: Sequence[float | None] | None) -> list[float]:
    return [math.nan if x is None else float(x) for x in (xs or [])]


# ---------------------------------------------------------------- table


def learning_rates(results: Mapping[str, Any]) -> list[str]:
    """Every learning-rate key of the study, the largest first (as in the paper)."""
    keys: dict[str, None] = {}
    for by_lr in results["runs"].values():
        keys.update(dict.fromkeys(by_lr))
    return sorted(keys, key=lambda k: (-float(k), k))


def lr_label(lr: str) -> str:
    """'0.01' -> '1e-2', '0.0015' -> '1.5e-3' (the paper's way of naming LRs)."""
    mantissa, exponent = f"{float(lr):.6e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def results_table(results: Mapping[str, Any], *, metric: Metric = "best_acc") -> str:
    """The paper's table as markdown, with a line on seeds and wall time below it.

    One row per method (the file's order), preceded by "Unpruned" when the file
    has a base model: accuracy (``metric``: best or final test accuracy, in %)
    per learning rate, and the mean JSV right after pruning over the method's
    seeds (it precedes retraining, so every LR cell of a seed holds the same
    value: the cell with the most seeds is used). Cells are mean ± population std.
    """
    if metric not in METRICS:
        raise UserError(f"unknown metric {metric!r}: use one of {', '.join(METRICS)}")
    _validate(results)
    runs = results["runs"]
    lrs = learning_rates(results)
    acc_name = "Acc." if metric == "best_acc" else "Final acc."
    # ConvNet studies also record the JSV with BatchNorm's running statistics ("eval") beside the
    # batch-statistics one (the reference's): a second JSV column
    jsv_keys = ["jsv_after_prune"]
    if any(isinstance(cell, Mapping) and "jsv_after_prune_eval" in cell
           for by_lr in runs.values() for cell in by_lr.values()):
        jsv_keys.append("jsv_after_prune_eval")
    jsv_headers = (["Mean JSV after pruning"] if len(jsv_keys) == 1
                   else ["Mean JSV after pruning (BN batch stats)", "(BN running stats)"])
    headers = ["Method", *(f"{acc_name} (LR {lr})" for lr in lrs), *jsv_headers]

    rows = []
    base = results.get("base")
    if base is not None:
        base_acc = mean_std_fixed(_values(base.get("acc")), 2)
        base_jsv = [mean_std(_values(base.get(k)), 4) for k in ("jsv", "jsv_eval")[: len(jsv_keys)]]
        rows.append(["Unpruned", *([base_acc] * len(lrs)), *base_jsv])
    seed_counts = []
    for method, by_lr in runs.items():
        row = [method]
        jsv: dict[str, list[float]] = {k: [] for k in jsv_keys}
        for lr in lrs:
            cell = by_lr.get(lr, {})
            accs = _values(cell.get(metric))
            seed_counts.append(len(accs))
            row.append(mean_std_fixed(accs, 2))
            for k in jsv_keys:
                values = _values(cell.get(k))
                if len(values) > len(jsv[k]):
                    jsv[k] = values
        row.extend(mean_std(jsv[k], 4) for k in jsv_keys)
        rows.append(row)
    return markdown_table(headers, rows) + "\n\n" + _footer(results, metric, seed_counts) + "\n"


def _footer(results: Mapping[str, Any], metric: str, seed_counts: list[int]) -> str:
    what = "Best" if metric == "best_acc" else "Final"
    parts = [f"{what} test accuracy (%) and mean Jacobian singular value right after pruning"]
    if seed_counts:
        lo, hi = min(seed_counts), max(seed_counts)
        seeds = f"{hi} seed{'s' if hi != 1 else ''}" if lo == hi else f"{lo} to {hi} seeds (incomplete cells)"
        parts.append(f"mean ± population std over {seeds}")
    config = results.get("config")
    if isinstance(config, Mapping) and isinstance(config.get("dataset"), str):
        parts.append(f"dataset {config['dataset']}")
    wall = results.get("wall_s")
    if wall is not None:
        parts.append(f"wall time {_duration(float(wall))}")
    return "; ".join(parts) + "."


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


# ---------------------------------------------------------------- figure


def _curves(cell: Mapping[str, Any], key: str) -> np.ndarray | None:
    """Per-seed curves cut to the shortest non-empty one, shape (seeds, epochs)."""
    seqs = [_values(c) for c in cell.get(key) or [] if c]  # an empty curve: a seed cut before epoch 1
    if not seqs:
        return None
    n = min(len(c) for c in seqs)
    return np.array([c[:n] for c in seqs], dtype=np.float64)


# Every method differs in colour, marker and line style, so lines that coincide (L1 and L1+KernOrth
# right after pruning, OrthP and AI near isometry) stay distinguishable, in greyscale too.
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
_LINESTYLES = ("-", "--", "-.", ":", (0, (5, 1, 1, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (8, 2)), (0, (1, 3)))
_DATASET_NAMES = {"fashion_mnist": "Fashion-MNIST", "mnist": "MNIST", "cifar10": "CIFAR-10",
                  "cifar100": "CIFAR-100"}  # fmt: skip
_MODEL_NAMES = {"mlp_7_linear": "MLP-7-Linear", "resnet20": "ResNet-20", "resnet56": "ResNet-56"}


def method_style(index: int, method: str | None = None) -> dict[str, Any]:
    """Colour, marker, line style and marker size of the ``index``-th method (the same in every panel).

    The colour is the method's in the registry (:func:`isotpp.pruning.methods.method_colour`: one colour per
    method in every figure), else the index's. Markers shrink with the index, and later methods are
    drawn on top: where two methods coincide (L1 and L1+KernOrth right after pruning) the earlier one's
    larger marker rings the later one's.
    """
    colour = method_colour(method) if method is not None else None
    return {"color": colour or f"C{index % 10}", "marker": _MARKERS[index % len(_MARKERS)],
            "linestyle": _LINESTYLES[index % len(_LINESTYLES)], "markersize": max(3.5, 8.5 - 1.2 * index)}


def setting_title(results: Mapping[str, Any]) -> str:
    """One line naming the study's setting: model, data, pruning ratio, seeds, schedule."""
    config = results.get("config") if isinstance(results.get("config"), Mapping) else {}
    model = str(config.get("model", "mlp_7_linear"))
    parts = [_MODEL_NAMES.get(model, model)]
    if config.get("width_scale") not in (None, 1, 1.0):
        parts[0] += f" (width ×{config['width_scale']:g})"
    dataset = config.get("dataset")
    if isinstance(dataset, str):
        parts[0] += f" on {_DATASET_NAMES.get(dataset, dataset)}"
        if str(config.get("data_dir") or "").rstrip("/").endswith("fashion_mnist_subset"):
            parts[0] += " (the 10,000-image subset shipped with isotpp)"
        elif config.get("train_limit"):
            parts[0] += f" ({config['train_limit']:,} training images)"
    if _is_number(config.get("ratio")):
        parts.append(f"pruning ratio\u00a0{config['ratio']:g}")  # no-break spaces: wrapping keeps these whole
    seeds = config.get("seeds")
    if isinstance(seeds, list | tuple):
        parts.append(f"{len(seeds)}\u00a0seed{'s' if len(seeds) != 1 else ''}")
    if config.get("quick"):
        parts.append("quick schedule")
    return ", ".join(parts)


def draw_results_figure(results: Mapping[str, Any], *, ax=None) -> Figure:
    """The paper's figure as a matplotlib Figure (no pyplot state, nothing saved).

    One column per learning rate (largest first); top row the mean JSV per
    retraining epoch (log scale; epoch 0 is right after pruning), bottom row
    the test accuracy per epoch, on one y-axis per row so panels compare. One
    line per method (mean over seeds) with its own colour, marker and line
    style in every panel, a band of ± population std when there are several
    seeds; the unpruned model, when present, is a grey dashed line. The title
    names the setting (:func:`setting_title`).

    ``ax``: draw into these axes (2 × number of learning rates, row-major, e.g.
    ``fig.subplots(2, 2)``) instead of a new figure; returns their figure.

    >>> from isotpp.studies.linear_report import draw_results_figure
    >>> cell = {"best_acc": [80.0], "acc_per_epoch": [[70.0, 80.0]], "jsv_after_prune": [0.01],
    ...         "jsv_per_epoch": [[0.5, 0.9]]}
    >>> fig = draw_results_figure({"runs": {"L1": {"0.01": cell}}, "config": {"dataset": "fashion_mnist"}})
    >>> fig.get_suptitle()
    'MLP-7-Linear on Fashion-MNIST'
    """
    _validate(results)
    runs = results["runs"]
    lrs = learning_rates(results)
    ncols = max(1, len(lrs))
    if ax is None:
        fig = Figure(figsize=(4.6 * ncols, 7.4), layout="constrained")
        axes = fig.subplots(2, ncols, squeeze=False, sharex="col", sharey="row")
    else:
        axes = np.asarray(ax, dtype=object).reshape(2, ncols)
        fig = axes[0][0].figure
    styles = {m: method_style(i, m) for i, m in enumerate(runs)}
    handles: dict[str, Any] = {}

    base = results.get("base") or {}
    base_vals = {"jsv_per_epoch": _values(base.get("jsv")), "acc_per_epoch": _values(base.get("acc"))}

    rows = (("jsv_per_epoch", "mean JSV", True), ("acc_per_epoch", "test accuracy", False))
    for col, lr in enumerate(lrs or [None]):
        for row, (key, name, log_y) in enumerate(rows):
            ax = axes[row][col]
            ax.set_title(f"LR {lr_label(lr)}: {name}" if lr is not None else name)
            drawn = False
            for i, (method, by_lr) in enumerate(runs.items()):
                cell = by_lr.get(lr, {}) if lr is not None else {}
                y = _curves(cell, key) if lr is not None else None
                if y is None or y.shape[1] == 0:
                    continue
                x = np.arange(1, y.shape[1] + 1)
                after = _values(cell.get("jsv_after_prune"))
                if log_y and len(after) == y.shape[0]:
                    # epoch 0: right after pruning, where the collapse (or its repair) shows
                    y = np.concatenate([np.asarray(after, dtype=np.float64)[:, None], y], axis=1)
                    x = np.arange(0, y.shape[1])
                mean = y.mean(axis=0)
                # about 8 markers per line, shifted per method so coinciding lines show each marker
                step = max(1, len(x) // 8)
                (line,) = ax.plot(x, mean, lw=1.5, markevery=(i % step, step), label=method, **styles[method])
                handles.setdefault(method, line)
                if y.shape[0] > 1:
                    std = y.std(axis=0)  # population std, as in the table
                    lo = mean - std
                    if log_y:  # a band below every seed's value is meaningless, and <= 0 cannot be drawn
                        lo = np.maximum(lo, y.min(axis=0))
                    ax.fill_between(x, lo, mean + std, color=styles[method]["color"], alpha=0.15, lw=0)
                drawn = True
            ref = [v for v in base_vals[key] if math.isfinite(v)]
            if drawn and ref:
                line = ax.axhline(float(np.mean(ref)), color="0.45", ls="--", lw=1.0, label="Unpruned")
                handles.setdefault("Unpruned", line)
            if not drawn:
                ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="0.5")
            elif log_y:
                ax.set_yscale("log")
            ax.grid(True, which="major", alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if row == 1:
                ax.set_xlabel("retraining epoch")
            if col == 0:
                ax.set_ylabel("mean JSV" if log_y else "test accuracy (%)")
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="outside lower center",
                   ncol=min(len(handles), 6), frameon=False)  # fmt: skip
    # a long setting (the shipped subset, a width factor) wraps instead of running off the page
    fig.suptitle(textwrap.fill(setting_title(results), width=int(11 * fig.get_figwidth())))
    return fig


def results_figure(results: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Draw the paper's figure (see :func:`draw_results_figure`) and write it atomically (format from the extension)."""
    return save_figure(draw_results_figure(results), path)


# ---------------------------------------------------------------- both


def results_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per (method, learning rate, seed): the per-seed numbers of the table, for CSV or a DataFrame.

    Columns: method, lr, seed, best_acc, final_acc, jsv_after_prune (and
    jsv_after_prune_eval, sparsity, speedup where the study records them).
    ``pandas.DataFrame(results_rows(results))`` gives the same as reading ``results.csv``.
    """
    _validate(results)
    config = results.get("config") if isinstance(results.get("config"), Mapping) else {}
    seeds = list(config.get("seeds") or [])
    extra = ("jsv_after_prune_eval", "sparsity", "speedup")
    present = [k for k in extra if any(k in c for by_lr in results["runs"].values() for c in by_lr.values())]
    rows = []
    for method, by_lr in results["runs"].items():
        for lr in sorted(by_lr, key=lambda k: (-float(k), k)):
            cell = by_lr[lr]
            n = len(cell.get("best_acc") or [])
            for i in range(n):
                row = {"method": method, "lr": float(lr), "seed": seeds[i] if len(seeds) >= n else i}
                for k in ("best_acc", "final_acc", "jsv_after_prune", *present):
                    values = _values(cell.get(k))
                    row[k] = values[i] if i < len(values) else None
                rows.append(row)
    return rows


def write_report(
    results: Mapping[str, Any], out_dir: str | os.PathLike, *, metric: Metric = "best_acc",
    formats: Sequence[str] = ("png",),
) -> dict[str, Path]:
    """Write ``table.md``, ``results.csv`` and ``figure.<format>`` for each of ``formats`` into ``out_dir``.

    The directory is created if needed; every file is written atomically.
    Returns ``{"table": path, "csv": path, "figure": path of the first format,
    "figure_<format>": path of each other format}``.
    """
    out_dir = Path(out_dir)
    table = results_table(results, metric=metric)  # validates before anything is written
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create directory {out_dir}: {e.strerror or e}; choose a writable path") from e
    try:
        table_path = write_text(out_dir / "table.md", table)
        csv_path = write_text(out_dir / "results.csv", csv_text(results_rows(results)))
    except OSError as e:
        raise UserError(f"cannot write into {out_dir}: {e.strerror or e}; check the path and free space") from e
    figures = save_figures(draw_results_figure(results), out_dir / "figure.png", formats)
    paths = {"table": table_path, "csv": csv_path, "figure": figures[0]}
    paths.update({f"figure_{p.suffix[1:]}": p for p in figures[1:]})
    return paths
