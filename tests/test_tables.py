"""Paper tables as grids of prune runs: the shipped configs (package data, also in the
wheel), the command lines they produce (accepted by the real CLI, the same runs as the
in-process runner's), the runner's skipping and failure handling, a real in-process
table, and the table builder's numbers."""

import dataclasses
import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from isotpp.cli.app import build_parser
from isotpp.cli.prune import config_from_args, run_prune
from isotpp.errors import UserError
from isotpp.models import widths_of
from isotpp.preemption import Preempted
from isotpp.pruning.methods import TABLE1_METHODS
from isotpp.pruning.model_file import load_model
from isotpp.studies.paper_tables import (
    BaseRecipe,
    Cell,
    TableSpec,
    base_command,
    base_path,
    build_table,
    cell_command,
    cell_config,
    cells,
    commands,
    config_names,
    load_spec,
    run_table,
)

CONFIGS = ("table1_resnet56", "vgg19_cifar100", "table2_resnet50", "table2_resnet34")


def _spec(**kw) -> TableSpec:
    return TableSpec(**{"name": "tiny", "title": "Tiny table", "model": "resnet20", "dataset": "synthetic",
                        "ratios": (("0.5", "*layer*.conv1:0.5"), ("0.9", "*layer*.conv1:0.9")),
                        "lr_schedules": (("0.01", "0:0.01"), ("0.001", "0:0.001")),
                        "methods": ("L1", "TPP"), "seeds": (0, 1), "epochs": 2,
                        "base": BaseRecipe(epochs=1, lr_schedule="0:0.1"), **kw})


def test_table1_is_the_papers_grid():
    spec = load_spec("table1_resnet56")
    assert spec.model == "resnet56" and spec.dataset == "cifar10"
    assert [r for r, _ in spec.ratios] == ["0.3", "0.5", "0.7", "0.9", "0.95"]
    assert spec.methods == TABLE1_METHODS and len(spec.methods) == 8
    assert len(cells(spec)) == 5 * 2 * 8 * 3  # ratios x LRs x methods x seeds
    assert spec.base.epochs == 200 and spec.epochs == 120


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_command_is_accepted_by_the_cli(name, tmp_path, monkeypatch):
    """Each cell's command parses with `isotpp prune`'s own parser into a valid PruneConfig, the very
    run the in-process runner makes, and its pattern set resolves on the real architecture (a dry
    run of the cost)."""
    spec = load_spec(name)
    parser = build_parser()
    base = tmp_path / "base.npz"
    base.write_bytes(b"")  # validate() only checks that the base model exists
    for ratio_label, ratios in spec.ratios:
        cost = run_prune(model=spec.model, ratios=ratios, skip=tuple(spec.skip),
                         num_classes=1000 if spec.dataset == "imagenet" else (100 if "100" in spec.dataset else 10),
                         dry_run=True)
        assert 0 < cost["sparsity"] < 1 and cost["speedup"] > 1, ratio_label
    for cell in cells(spec)[:: max(1, len(cells(spec)) // 17)]:
        cmd = cell_command(spec, cell, tmp_path)
        assert cmd[:2] == ["isotpp", "prune"]
        args = parser.parse_args(cmd[1:])
        args.base = str(base)
        config = config_from_args(args).validate()
        assert config.method == cell.method and config.model == spec.model and config.seed == cell.seed
        assert config.lr_schedule == dict(spec.lr_schedules)[cell.lr] and config.epochs == spec.epochs
        assert Path(config.out) == tmp_path / "cells" / cell.name
        assert config == dataclasses.replace(cell_config(spec, cell, tmp_path), base=str(base))
    bc = base_command(spec, tmp_path, 0)
    if spec.base.path:
        assert bc is None
    else:
        args = parser.parse_args(bc[1:])
        assert args.command == "train" and args.epochs == spec.base.epochs


RESNET56_COUNTS = {"0.5": (428_074, 62_964_352), "0.9": (81_502, 10_838_656)}


def _fake_runner(tmp_path, fail=()):
    """Stands in for the pruning runs: 'trains' base models and writes each cell's summary."""
    calls = []

    def run(step, config, log):
        calls.append((step, config))
        if step == "base":
            workdir = Path(config.out)
            workdir.mkdir(parents=True, exist_ok=True)
            (workdir / "model.npz").write_bytes(b"model")
            return
        out = Path(config.out)
        if out.name in fail:
            raise UserError("the run failed")
        method, ratio = config.method, config.ratios.rsplit(":", 1)[1]
        seed, lr = config.seed, config.lr_schedule.split(":")[1]
        # a recognisable accuracy: 90 - 10 * ratio + seed (+1 for TPP, +0.5 for LR 0.01)
        acc = 90 - 10 * float(ratio) + seed + (1 if method == "TPP" else 0) + (0.5 if lr == "0.01" else 0)
        out.mkdir(parents=True)
        # ResNet56's counts at this ratio of *layer*.conv1 (exact sparsity and speedup stand in)
        params_pruned, flops_pruned = RESNET56_COUNTS[ratio]
        (out / "summary.json").write_text(json.dumps({
            "best_acc": acc, "final_acc": acc - 1, "sparsity": float(ratio) / 2, "speedup": 1 + float(ratio),
            "params": 853_018, "params_pruned": params_pruned, "flops": 125_485_696, "flops_pruned": flops_pruned}))

    return run, calls


def test_runner_trains_bases_once_runs_every_cell_and_skips_finished_ones(tmp_path):
    spec = _spec()
    run, calls = _fake_runner(tmp_path)
    status = run_table(spec, tmp_path, run=run, log=lambda s: None)
    assert len(status["ran"]) == 16 and not status["done"] and not status["failed"]
    assert sum(step == "base" for step, _ in calls) == 2  # one base per seed
    for step, c in calls:
        if step == "cell":
            assert c.base == str(tmp_path / f"base_seed{c.seed}" / "model.npz")
    calls.clear()
    again = run_table(spec, tmp_path, run=run, log=lambda s: None)
    assert len(again["done"]) == 16 and not again["ran"] and not calls  # nothing rerun, no base retrained
    assert commands(spec, tmp_path) == []  # nothing left for a scheduler either


def test_runner_reports_failed_cells_and_retries_them(tmp_path):
    spec = _spec()
    bad = Cell("TPP", "0.9", "0.001", 1).name
    run, _ = _fake_runner(tmp_path, fail={bad})
    status = run_table(spec, tmp_path, run=run, log=lambda s: None)
    assert status["failed"] == [bad] and len(status["ran"]) == 15
    todo = commands(spec, tmp_path)
    assert len(todo) == 1 and shlex.split(todo[0])[-1] == str(tmp_path / "cells" / bad)
    run_ok, _ = _fake_runner(tmp_path)
    status = run_table(spec, tmp_path, run=run_ok, log=lambda s: None)
    assert status["ran"] == [bad] and len(status["done"]) == 15


def test_only_selects_cells_and_refuses_a_glob_that_matches_nothing(tmp_path):
    spec = _spec()
    assert {c.method for c in cells(spec, "TPP__*")} == {"TPP"} and len(cells(spec, "TPP__*")) == 8
    with pytest.raises(UserError, match="matches no cell"):
        cells(spec, "Magic__*")


def test_failed_base_model_stops_with_a_clear_error(tmp_path):
    def fail(step, config, log):
        raise FloatingPointError("loss is nan")

    with pytest.raises(UserError, match=r"base model of seed 0 failed \(loss is nan\)"):
        run_table(_spec(), tmp_path, run=fail, log=lambda s: None)
    with pytest.raises(UserError, match="base model of seed 0 failed .* was not written"):
        run_table(_spec(), tmp_path, run=lambda step, config, log: None, log=lambda s: None)
    assert not (tmp_path / "cells").exists()


def test_given_base_model_that_is_missing_is_refused(tmp_path):
    spec = _spec(base=BaseRecipe(path=str(tmp_path / "resnet_{seed}.npz")), notes="convert the weights first")
    with pytest.raises(UserError, match="resnet_0.npz for seed 0 is missing: convert the weights first"):
        run_table(spec, tmp_path, run=lambda step, config, log: None, log=lambda s: None)


def test_build_table_mean_and_population_std_over_seeds(tmp_path):
    spec = _spec()
    run, _ = _fake_runner(tmp_path)
    run_table(spec, tmp_path, run=run, log=lambda s: None)
    table = build_table(spec, tmp_path)
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in table.splitlines() if line.startswith("|")}
    # seeds 0 and 1 give acc and acc + 1: mean acc + 0.5, population std 0.5
    for method, bonus in (("L1", 0.0), ("TPP", 1.0)):
        expect = [f"{90 - 10 * r + 0.5 + bonus + lr:.2f} (0.50)" for r in (0.5, 0.9) for lr in (0.5, 0.0)]
        assert rows[method] == expect, (method, rows[method])
    assert rows["sparsity / speedup"] == ["25.00 % / 1.50×"] * 2 + ["45.00 % / 1.90×"] * 2
    # from rounded counts: 0.428 / 0.853 M and 0.251 / 0.126 G; 0.082 / 0.853 M and 0.251 / 0.022 G
    assert rows["… paper's rounding"] == ["49.82 % / 1.99×"] * 2 + ["90.39 % / 11.41×"] * 2
    assert "16/16 cells finished" in table
    final = build_table(spec, tmp_path, metric="final_acc")
    assert f"{90 - 5 + 0.5 - 1 + 0.5:.2f} (0.50)" in final
    v = np.array([85.5, 86.5])
    assert f"{v.mean():.2f} ({v.std():.2f})" == "86.00 (0.50)"  # the convention: population std (ddof 0)


def test_build_table_marks_missing_cells(tmp_path):
    spec = _spec(seeds=(0,))
    run, _ = _fake_runner(tmp_path)
    run_table(spec, tmp_path, only="L1__pr0.5*", run=run, log=lambda s: None)
    table = build_table(spec, tmp_path)
    tpp_row = next(line for line in table.splitlines() if line.startswith("| TPP"))
    assert {c.strip() for c in tpp_row.split("|")[2:-1]} == {"-"}
    assert "2/8 cells finished" in table


def test_unknown_config_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no table config 'table9': choose one of table1_resnet56, table2_resnet34"):
        load_spec("table9")
    with pytest.raises(UserError, match="no table config 'nowhere.py'"):
        load_spec("nowhere.py")
    bad = tmp_path / "bad.py"
    bad.write_text("def get_config():\n    return 42\n")
    with pytest.raises(UserError, match="must return an isotpp.studies.paper_tables.TableSpec"):
        load_spec(str(bad))


def test_scripts_list_commands_and_exit_2_on_a_bad_config(tmp_path):
    root = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, str(root / "experiments" / "run_table.py"), "table1_resnet56", "--out",
                        str(tmp_path), "--list", "--only", "TPP__pr0.5__*"], capture_output=True, text=True,
                       timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 3 + 6  # three base models, then TPP at ratio 0.5 x 2 LRs x 3 seeds
    assert all(" train " in line for line in lines[:3]) and all("--method TPP" in line for line in lines[3:])
    r = subprocess.run([sys.executable, str(root / "experiments" / "build_table.py"), "table9", "--out",
                        str(tmp_path)], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        ("build_table: error: no table config 'table9': choose one of table1_resnet56, table2_resnet34, "
         "table2_resnet50, vgg19_cifar100 or give the path of a .py file defining get_config()")]


def test_a_cell_stopped_by_sigterm_stops_the_table(tmp_path):
    """A cell stopped by SIGTERM kept its work; the runner stops there (exit 75) instead of going on."""
    spec = _spec()
    for seed in spec.seeds:
        base_path(spec, tmp_path, seed).parent.mkdir(parents=True, exist_ok=True)
        base_path(spec, tmp_path, seed).write_bytes(b"")
    ran = []

    def run(step, config, log):
        ran.append(config)
        raise Preempted(f"stopped by SIGTERM: finished stages are kept in {config.out}")

    with pytest.raises(Preempted, match=f"finished cells are kept in {tmp_path}; run the same command again"):
        run_table(spec, tmp_path, run=run, log=lambda s: None)
    assert len(ran) == 1


def test_a_real_table_runs_in_process_and_resumes(tmp_path):
    """A base model and a cell of a tiny MLP table, through the library (no subprocess): the
    summary the table reads is the pruning run's own, and a second call runs nothing."""
    spec = TableSpec(name="tiny", title="Tiny", model="mlp", dataset="synthetic", ratios=(("0.5", "net.[0-9]:0.5"),),
                     lr_schedules=(("0.001", "0:0.001"),), methods=("L1",), seeds=(0,), epochs=1, batch_size=64,
                     base=BaseRecipe(epochs=1, lr_schedule="0:0.001"),
                     prune_settings=(("train_limit", 128), ("jsv_samples", 4), ("checkpoint_every", None),
                                     ("progress", False)))
    (cell,) = cells(spec)
    assert run_table(spec, tmp_path, log=lambda s: None) == {"done": [], "ran": [cell.name], "failed": []}
    base, _ = load_model(base_path(spec, tmp_path, 0))
    assert widths_of(base)["net.0"] == 100
    summary = json.loads((tmp_path / "cells" / cell.name / "summary.json").read_text())
    assert summary["method"] == "L1" and summary["seed"] == 0 and summary["sparsity"] > 0.4
    row = next(line for line in build_table(spec, tmp_path).splitlines() if line.startswith("| L1 "))
    assert row.split("|")[2].strip() == f"{summary['best_acc']:.2f}"
    assert run_table(spec, tmp_path, log=lambda s: None) == {"done": [cell.name], "ran": [], "failed": []}


def test_the_configs_are_package_data():
    """load_spec finds the configs through importlib.resources, not a path relative to the sources
    (tests/test_toolkit.py checks that the wheel carries them)."""
    import importlib.resources

    assert config_names() == sorted(CONFIGS)
    for name in CONFIGS:
        assert importlib.resources.files("isotpp.studies.table_configs").joinpath(f"{name}.py").is_file()
        assert load_spec(name).name == name
