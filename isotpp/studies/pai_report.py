"""Tables and figures of the PaI study, from its ``results.json``.

``results["lenet"]`` (and ``results["transfer"]`` when the transfer ran) is
``{"arch", "densities", "methods", "runs": {method: {density: cell}}}`` where a
cell holds per-seed lists: ``final_acc`` (test accuracy at the last epoch),
``val_selected_acc`` (test accuracy at the epoch of best validation accuracy),
``jsv_mean`` (mean JSV at initialisation), ``jsv_zero_fraction``, ``density``
(the mask's actual density), ``diverged``. ``dense`` is the unpruned run at
density 1. Cells are shown as mean ± population std over the seeds present.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from isotpp.errors import UserError
from isotpp.pai.registry import colour, display_name
from isotpp.reporting.figures import save_figures
from isotpp.reporting.tables import csv_text, markdown_table, mean_std, mean_std_fixed
from isotpp.storage.atomic import write_text

__all__ = ["draw_accuracy_figure", "draw_jsv_figure", "pai_rows", "pai_setting", "pai_tables", "write_report"]


def _vals(xs) -> list[float]:
    return [math.nan if x is None else float(x) for x in (xs or [])]


def _pct(d: float) -> str:
    return f"{100 * d:g} %"


def _part_table(part: Mapping[str, Any], key: str, *, jsv: bool = False) -> str:
    densities = part["densities"]
    headers = ["Method", *(_pct(d) for d in densities)]
    rows = []
    for method in part["methods"]:
        if method == "dense":
            continue
        by_d = part["runs"].get(method, {})
        row = [display_name(method)]
        for d in densities:
            vals = _vals(by_d.get(f"{d:g}", {}).get(key))
            row.append(mean_std(vals, 4) if jsv else mean_std_fixed(vals, 2))
        rows.append(row)
    return markdown_table(headers, rows)


def _dense_line(part: Mapping[str, Any], key: str = "final_acc") -> str:
    cell = part["runs"].get("dense", {}).get("1", {})
    acc = _vals(cell.get(key))
    jsv = _vals(cell.get("jsv_mean"))
    if not acc:
        return ""
    return f"Dense (unpruned, same schedule): {mean_std_fixed(acc, 2)} %, mean JSV at init {mean_std(jsv, 4)}."


def _seeds_note(part: Mapping[str, Any]) -> str:
    counts = [len(c.get("final_acc") or []) for by_d in part["runs"].values() for c in by_d.values()]
    if not counts:
        return "no finished runs"
    lo, hi = min(counts), max(counts)
    return f"{hi} seed{'s' if hi != 1 else ''}" if lo == hi else f"{lo} to {hi} seeds (incomplete cells)"


def _diverged_note(part: Mapping[str, Any]) -> str:
    bad = [(m, d) for m, by_d in part["runs"].items() for d, c in by_d.items() if any(c.get("diverged") or [])]
    return "" if not bad else "Diverged runs: " + ", ".join(f"{display_name(m)} at {d}" for m, d in bad) + "."


def _duration(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.2f} h"


def pai_tables(results: Mapping[str, Any]) -> str:
    """The study's tables as markdown (accuracy, JSV at init, transfer, AutoSparse validation)."""
    lenet = results["lenet"]
    parts = [f"### {lenet['arch']}: final test accuracy (%) by density of kept weights\n",
             _part_table(lenet, "final_acc"), "",
             (f"Mean ± population std over {_seeds_note(lenet)}, test accuracy at the last epoch. "
              + _dense_line(lenet) + " " + _diverged_note(lenet)), "",
             f"### {lenet['arch']}: test accuracy (%) at the epoch of best validation accuracy\n",
             _part_table(lenet, "val_selected_acc"), "",
             f"### {lenet['arch']}: mean Jacobian singular value at initialisation (after AI for +AI)\n",
             _part_table(lenet, "jsv_mean", jsv=True), ""]
    transfer = results.get("transfer")
    if transfer:
        parts += [f"### Transfer to {transfer['arch']}: final test accuracy (%)\n", _part_table(transfer, "final_acc"),
                  "", (f"Mean ± population std over {_seeds_note(transfer)}. " + _dense_line(transfer) + " "
                       + _diverged_note(transfer)), "",
                  f"### {transfer['arch']}: mean JSV at initialisation\n",
                  _part_table(transfer, "jsv_mean", jsv=True), ""]
    auto = results.get("autosparse")
    if auto:
        v = auto["validation"]
        s = auto.get("scorer", {})
        parts += ["### AutoSparse scorer, validated on a second IRP run (another seed)\n",
                  markdown_table(["metric", "value"], [
                      ["trained on", (f"{s.get('record_arch')} IRP, seed {s.get('record_seed')}, "
                                      f"{s.get('record_rounds')} rounds to "
                                      f"{_pct(s.get('record_density', math.nan))}")],
                      ["validated on", f"IRP seed {v.get('record_seed')} at {_pct(v.get('density', math.nan))}"],
                      ["MSE (constant predictor)", f"{v['mse']:.4f} ({v['mse_constant']:.4f})"],
                      ["Spearman ρ (prediction, survival)", f"{v['spearman']:.3f}"],
                      ["ticket overlap: scorer", f"{v['ticket_overlap']:.3f}"],
                      ["ticket overlap: abs(w0)", f"{v['ticket_overlap_magnitude']:.3f}"],
                      ["ticket overlap: abs(w0·g0)", f"{v['ticket_overlap_w0g0']:.3f}"],
                      ["ticket overlap: random", f"{v['ticket_overlap_random']:.3f}"],
                  ]), "",
                  ("Ticket overlap: the fraction of the validation run's final IRP mask found in the top-k of "
                   "each ranking (k = the mask's size)."), ""]
    wall = results.get("wall_s")
    if wall is not None:
        parts.append(f"Wall time of this invocation: {_duration(float(wall))} (work reused from an earlier "
                     "invocation in the same directory is not included).")
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------- figures

def _style(method: str) -> dict[str, Any]:
    ai = method.partition("+")[2]
    return {"color": colour(method), "linestyle": "--" if ai else "-",
            "marker": "s" if ai else "o", "markersize": 4}


def _plot_part(ax, part: Mapping[str, Any], key: str, *, log_y: bool = False) -> None:
    densities = np.asarray(part["densities"], dtype=float)
    for method in part["methods"]:
        if method == "dense":
            cell = part["runs"].get("dense", {}).get("1", {})
            v = np.asarray(_vals(cell.get(key)))
            if v.size and key != "jsv_mean":
                ax.axhline(np.nanmean(v), color="black", linewidth=0.8, linestyle=":", label="Dense")
            continue
        by_d = part["runs"].get(method, {})
        mean, std = [], []
        for d in densities:
            v = np.asarray(_vals(by_d.get(f"{d:g}", {}).get(key)))
            mean.append(np.nanmean(v) if v.size else np.nan)
            std.append(np.nanstd(v) if v.size else np.nan)
        ax.errorbar(100 * densities, mean, yerr=std, label=display_name(method), capsize=2, **_style(method))
    ax.set_xscale("log")
    ax.set_xticks(100 * densities, [f"{100 * d:g}" for d in densities])
    ax.minorticks_off()
    if densities.size == 1:
        ax.set_xlim(100 * densities[0] * 2, 100 * densities[0] / 2)
    else:
        ax.set_xlim(100 * densities.max() * 1.25, 100 * densities.min() / 1.25)  # sparser to the right
    ax.set_xlabel("density of kept weights (%)")
    if log_y:
        ax.set_yscale("symlog", linthresh=1e-4)
    ax.grid(True, which="both", alpha=0.3)


def _parts(results):
    return [p for p in (results.get("lenet"), results.get("transfer")) if p]


_ARCH_NAMES = {"lenet_300_100": "LeNet-300-100", "small_convnet": "small ConvNet", "lenet5": "LeNet-5"}


def _arch(part: Mapping[str, Any]) -> str:
    return _ARCH_NAMES.get(part["arch"], part["arch"])


def pai_setting(results: Mapping[str, Any]) -> str:
    """One line naming the study's setting: data, seeds, epochs, threshold, schedule."""
    config = results.get("config") or {}
    seeds = len(config.get("seeds") or [])
    parts = ["Pruning at initialisation on Fashion-MNIST"]
    if seeds:
        parts.append(f"{seeds}\u00a0seed{'s' if seeds != 1 else ''}")
    if config.get("scope"):
        parts.append(f"{config['scope']} threshold")
    if config.get("quick"):
        parts.append("quick schedule")
    return ", ".join(parts)


def _figure_axes(parts, ax):
    if ax is not None:
        axes = list(np.ravel(np.asarray(ax, dtype=object)))
        if len(axes) != len(parts):
            raise UserError(f"ax holds {len(axes)} axes but the results have {len(parts)} part(s) to draw: "
                            "pass one axes per part")
        return axes[0].figure, axes
    fig = Figure(figsize=(6.5 * len(parts), 4.8), layout="constrained")
    return fig, [fig.add_subplot(1, len(parts), i + 1) for i in range(len(parts))]


def draw_accuracy_figure(results: Mapping[str, Any], *, ax=None) -> Figure:
    """Final test accuracy against density, one panel per network (``ax``: one axes per panel)."""
    parts = _parts(results)
    fig, axes = _figure_axes(parts, ax)
    for ax, part in zip(axes, parts, strict=True):
        _plot_part(ax, part, "final_acc")
        ax.set_ylabel("final test accuracy (%)")
        epochs = (results.get("config") or {}).get("transfer_epochs" if part is results.get("transfer") else "epochs")
        ax.set_title(f"{_arch(part)}: final test accuracy" + (f" after {epochs} epochs" if epochs else ""))
        ax.legend(fontsize=7, ncol=2)
    fig.suptitle(pai_setting(results))
    return fig


def draw_jsv_figure(results: Mapping[str, Any], *, ax=None) -> Figure:
    """Mean JSV at initialisation against density, one panel per network (``ax``: one axes per panel)."""
    parts = _parts(results)
    fig, axes = _figure_axes(parts, ax)
    for ax, part in zip(axes, parts, strict=True):
        _plot_part(ax, part, "jsv_mean", log_y=True)
        dense = _vals(part["runs"].get("dense", {}).get("1", {}).get("jsv_mean"))
        if dense:
            ax.axhline(float(np.nanmean(dense)), color="black", linewidth=0.8, linestyle=":", label="Dense")
        ax.set_ylabel("mean JSV at initialisation (symlog)")
        ax.set_title(f"{_arch(part)}: spectrum before training")
        ax.legend(fontsize=7, ncol=2)
    fig.suptitle(pai_setting(results))
    return fig


_ROW_KEYS = ("final_acc", "val_selected_acc", "jsv_mean", "jsv_zero_fraction", "density", "diverged")


def pai_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per (part, method, target density, seed), for CSV or a DataFrame."""
    rows = []
    for name in ("lenet", "transfer"):
        part = results.get(name)
        if not part:
            continue
        for method, by_d in part["runs"].items():
            for d, cell in by_d.items():
                n = len(cell.get("final_acc") or [])
                seeds = cell.get("seeds") or list(range(n))
                for i in range(n):
                    row = {"part": name, "arch": part["arch"], "method": method, "target_density": float(d),
                           "seed": seeds[i]}
                    for k in _ROW_KEYS:
                        values = cell.get(k) or []
                        row[k] = values[i] if i < len(values) else None
                    rows.append(row)
    return rows


def write_report(results: Mapping[str, Any], out: str | Path, *, formats=("png",)) -> dict[str, Path]:
    """table.md, results.csv, accuracy.<format> and jsv.<format> (each of ``formats``) in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"table": write_text(out / "table.md", pai_tables(results)),
             "csv": write_text(out / "results.csv", csv_text(pai_rows(results)))}
    for key, draw, stem in (("accuracy_figure", draw_accuracy_figure, "accuracy"),
                            ("jsv_figure", draw_jsv_figure, "jsv")):
        figures = save_figures(draw(results), out / f"{stem}.png", formats)
        paths[key] = figures[0]
        paths.update({f"{key}_{p.suffix[1:]}": p for p in figures[1:]})
    return paths
