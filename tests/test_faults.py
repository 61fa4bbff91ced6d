"""Run directories under faults (docs/reliability.md): SIGKILL at several moments of `isotpp prune` and
of the studies (between the two files of one artefact too), SIGTERM at stage boundaries (exit 75, exact
resume), two runs into one directory, a full disk, other settings, failed calls that must leave nothing.

Kills are real (a subprocess told where to die through the test-only ISOTPP_FAULT hook, isotpp.faults);
the reruns, the SIGTERM runs and the references run in this process (tiny models, synthetic data)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from isotpp.errors import UserError
from isotpp.io import read_json, write_json
from isotpp.preemption import Preempted
from isotpp.pruning_run import PruneConfig, run_pruning
from isotpp.rundir import LOCK_NAME, Commit, locked, recover

ISOTPP = Path(sys.executable).parent / "isotpp"
PRUNE = {"model": "mlp", "dataset": "synthetic", "ratios": "*:0.5", "skip": ("net.12",), "method": "L1",
         "width_scale": 0.25, "batch_size": 64, "base_epochs": 1, "base_lr_schedule": "0:0.01", "epochs": 2,
         "lr_schedule": "0:0.002", "jsv_samples": 4, "train_limit": 128, "checkpoint_every": None,
         "progress": False}
PRUNE_ARGS = ["--model", "mlp", "--dataset", "synthetic", "--ratios", "*:0.5", "--skip", "net.12", "--method", "L1",
              "--width-scale", "0.25", "--batch-size", "64", "--base-epochs", "1", "--base-lr-schedule", "0:0.01",
              "--epochs", "2", "--lr-schedule", "0:0.002", "--jsv-samples", "4", "--train-limit", "128"]
QUIET = {"log": lambda s: None}


def _env(tmp_path, fault=None):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": str(tmp_path.parent / "jax-cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    env.pop("ISOTPP_FAULT", None)
    if fault:
        env["ISOTPP_FAULT"] = fault
    return env


def _isotpp(tmp_path, *args, fault=None):
    return subprocess.run([str(ISOTPP), *map(str, args)], env=_env(tmp_path, fault), capture_output=True, text=True,
                          timeout=600, check=False)


def _python(tmp_path, code, *args, fault=None):
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], env=_env(tmp_path, fault),
                          capture_output=True, text=True, timeout=600, check=False)


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def _snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _without_times(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k != "wall_s"}


def _same_arrays(a: Path, b: Path) -> None:
    x, y = np.load(a), np.load(b)
    assert sorted(x.files) == sorted(y.files)
    for k in x.files:
        if k != "__isotpp__":
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted tiny pruning run."""
    out = tmp_path_factory.mktemp("reference")
    return out, run_pruning(PruneConfig(out=str(out), **PRUNE), **QUIET)


# --------------------------------------------------------------------------
# isotpp prune
# --------------------------------------------------------------------------


def test_prune_killed_at_several_moments_finishes_with_the_uninterrupted_result(reference, tmp_path):
    ref_dir, ref = reference
    out = tmp_path / "run"
    dead = _isotpp(tmp_path, "prune", *PRUNE_ARGS, "--out", out, fault="kill:before:base/model.npz")
    assert dead.returncode == -signal.SIGKILL, dead.stderr[-3000:]
    assert not (out / "base" / "model.npz").exists() and (out / "base" / "checkpoints").is_dir()
    stopped = _isotpp(tmp_path, "prune", *PRUNE_ARGS, "--out", out, fault="term:after:pruned.npz")
    assert stopped.returncode == 75, stopped.stderr[-3000:]
    assert stopped.stderr.splitlines()[-1] == (f"isotpp prune: stopped by SIGTERM: finished stages are kept in {out}; "
                                               "run the same command again to continue")
    assert (out / "pruned.npz").exists() and not (out / "retrain").exists()
    dead = _isotpp(tmp_path, "prune", *PRUNE_ARGS, "--out", out, fault="kill:after:final.npz")  # before summary
    assert dead.returncode == -signal.SIGKILL, dead.stderr[-3000:]
    assert (out / "final.npz").exists() and not (out / "summary.json").exists()
    summary = run_pruning(PruneConfig(out=str(out), **PRUNE), **QUIET)
    assert _without_times(summary) == _without_times(ref)
    _same_arrays(out / "final.npz", ref_dir / "final.npz")
    assert not (out / LOCK_NAME).exists() and not list(out.rglob(".*.tmp"))


def test_sigterm_at_a_stage_boundary_then_a_full_disk_then_an_exact_finish(reference, tmp_path, monkeypatch):
    ref_dir, ref = reference
    out = tmp_path / "run"
    config = PruneConfig(out=str(out), **PRUNE)
    monkeypatch.setenv("ISOTPP_FAULT", "term:after:base/model.npz")
    with pytest.raises(Preempted) as stop:
        run_pruning(config, **QUIET)
    assert stop.value.exit_code == 75 and not (out / "plan.json").exists()
    assert str(stop.value) == (f"stopped by SIGTERM: finished stages are kept in {out}; run the same command again "
                               "to continue")
    monkeypatch.setenv("ISOTPP_FAULT", "enospc:before:pruned.npz")
    with pytest.raises(UserError) as full:
        run_pruning(config, **QUIET)
    assert str(full.value) == (f"cannot write {out / 'pruned.npz'}: No space left on device; free some space (or "
                               "choose another directory), then run the same command again: finished work is kept")
    assert (out / "base" / "model.npz").exists() and not list(out.glob(".pruned.npz.*"))
    monkeypatch.delenv("ISOTPP_FAULT")
    assert _without_times(run_pruning(config, **QUIET)) == _without_times(ref)
    _same_arrays(out / "final.npz", ref_dir / "final.npz")


def test_other_settings_in_a_finished_run_are_refused_and_nothing_changes(reference, tmp_path):
    ref_dir, _ = reference
    before = _snapshot(ref_dir)
    args = list(PRUNE_ARGS)
    args[args.index("--method") + 1], args[args.index("--ratios") + 1] = "TPP", "*:0.8"
    r = _isotpp(tmp_path, "prune", *args, "--out", ref_dir)
    assert r.returncode == 2
    line = _one_line(r.stderr)
    assert line.startswith(f"isotpp prune: error: {ref_dir} holds a pruning run with a different method ('L1' there, "
                           "'TPP' here); ratios ('*:0.5' there, '*:0.8' here)"), line
    assert _snapshot(ref_dir) == before


def test_a_second_run_into_a_locked_directory_is_refused(reference, tmp_path):
    ref_dir, _ = reference
    before = _snapshot(ref_dir)
    with locked(ref_dir):  # this process is the first run
        r = _isotpp(tmp_path, "prune", *PRUNE_ARGS, "--out", ref_dir)
        assert (ref_dir / LOCK_NAME).exists()
    assert r.returncode == 2
    line = _one_line(r.stderr)
    assert line.startswith(f"isotpp prune: error: {ref_dir} is in use by another isotpp run (process {os.getpid()} "), line
    assert line.endswith("wait for it to finish, stop it, or use another directory")
    assert _snapshot(ref_dir) == before  # the lock is gone with its owner


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path):
    d = tmp_path / "d"
    dead = _python(tmp_path, "import sys, os, signal\nfrom isotpp.rundir import locked\n"
                             "with locked(sys.argv[1]):\n    os.kill(os.getpid(), signal.SIGKILL)", d)
    assert dead.returncode == -signal.SIGKILL, dead.stderr
    assert '"pid"' in (d / LOCK_NAME).read_text()  # left behind by the dead owner
    with locked(d):
        assert json.loads((d / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (d / LOCK_NAME).exists()


def test_failed_calls_leave_no_directory_and_do_not_touch_another_run(tmp_path):
    from isotpp.studies import mlp_linear

    out = tmp_path / "new" / "run"
    with pytest.raises(UserError, match="matches no layer"):  # refused before the base is trained
        run_pruning(PruneConfig(out=str(out), **{**PRUNE, "ratios": "zzz:0.5"}), **QUIET)
    assert not (tmp_path / "new").exists()
    with pytest.raises(UserError):
        mlp_linear.run_study(mlp_linear.quick_config(data_dir=str(tmp_path / "nonexistent")), out, progress=False,
                             **QUIET)
    assert not (tmp_path / "new").exists()
    study = tmp_path / "study"
    write_json(study / "config.json", mlp_linear.quick_config().to_dict())
    before = _snapshot(study)
    with pytest.raises(UserError, match=f"{study} holds a pruning run with a different "):
        run_pruning(PruneConfig(out=str(study), **PRUNE), **QUIET)
    assert _snapshot(study) == before
    for empty in ("", "  "):
        with pytest.raises(UserError, match="the output directory is empty"):
            run_pruning(PruneConfig(out=empty, **PRUNE), **QUIET)
    from isotpp.commands.train import main as train

    with pytest.raises(SystemExit) as refused:  # the parser refuses it, before anything runs
        train(["--model", "mlp", "--dataset", "synthetic", "--workdir", ""])
    assert refused.value.code == 2


# --------------------------------------------------------------------------
# Multi-file commits
# --------------------------------------------------------------------------

COMMIT = """
import sys
from pathlib import Path
from isotpp.io import write_json
from isotpp.rundir import Commit
root = Path(sys.argv[1])
with Commit(root) as c:
    write_json(c.path(root / "seed0" / "a.json"), {"a": 1})
    write_json(c.path(root / "seed0" / "b.json"), {"b": 2})
"""


@pytest.mark.parametrize("fault,expected", [
    ("kill:before:seed0/b.json", set()),  # staged a, never b: nothing appears
    ("kill:after:seed0/a.json#2", {"a.json", "b.json"}),  # committed, a moved, b not yet: completed
])
def test_a_commit_killed_in_between_appears_whole_or_not_at_all(tmp_path, fault, expected):
    root = tmp_path / "root"
    dead = _python(tmp_path, COMMIT, root, fault=fault)
    assert dead.returncode == -signal.SIGKILL, dead.stderr
    recover(root)
    assert {p.name for p in (root / "seed0").glob("*")} == expected if expected else not (root / "seed0").exists()
    assert not (root / ".staging").exists()
    if expected:
        assert read_json(root / "seed0" / "b.json") == {"b": 2}


def test_results_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        assert (write_json(tmp_path / "a.json", {}).stat().st_mode & 0o777) == 0o644
        os.umask(0o077)
        assert (write_json(tmp_path / "b.json", {}).stat().st_mode & 0o777) == 0o600
        with Commit(tmp_path) as c:
            write_json(c.path(tmp_path / "c.json"), {})
        assert (tmp_path / "c.json").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


# --------------------------------------------------------------------------
# isotpp train as the README shows it
# --------------------------------------------------------------------------


def test_isotpp_train_as_documented_then_again_then_with_other_settings(tmp_path):
    work = tmp_path / "runs" / "r56"
    args = ["train", "--model", "mlp", "--width-scale", "0.1", "--dataset", "synthetic", "--limit", "64",
            "--epochs", "2", "--lr-schedule", "0:0.1,1:0.01", "--batch-size", "64", "--workdir", work]
    first = _isotpp(tmp_path, *args, "--resume", "--no-progress")
    assert first.returncode == 0, first.stderr[-3000:]
    assert _one_line(first.stderr) == "isotpp: no checkpoint to resume from: starting from scratch"
    config = read_json(work / "config.json")["args"]
    assert config["epochs"] == 2 and "func" not in config
    results = read_json(work / "results.json")
    resumed = _isotpp(tmp_path, *args, "--resume", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert _one_line(resumed.stderr) == "isotpp: resuming from step 2 (epoch 2, step 0 of it)"
    assert read_json(work / "results.json") == results
    before = _snapshot(work)
    other = _isotpp(tmp_path, *[a if a != "0:0.1,1:0.01" else "0:0.2" for a in args], "--resume")
    assert other.returncode == 2
    assert _one_line(other.stderr) == (f"isotpp train: error: {work} holds a training run with a different "
                                       "lr_schedule ('0:0.1,1:0.01' there, '0:0.2' here): use another directory, "
                                       "or delete it to start afresh")
    assert _snapshot(work) == before


# --------------------------------------------------------------------------
# The studies
# --------------------------------------------------------------------------

MLP = {"dataset": "synthetic", "seeds": (0,), "methods": ("TPP",), "train_limit": 200, "batch_size": 100,
       "base_epochs": 1, "base_lr_schedule": "0:0.01", "retrain_epochs": 1, "lr_schedules": (("0.01", "0:0.01"),),
       "tpp_reg_granularity": 0.25, "tpp_update_reg_interval": 1, "tpp_stabilize_iters": 4,
       "tpp_zero_out_interval": 2}
PAI = {"dataset": "synthetic", "seeds": (0,), "methods": ("random", "magnitude"), "densities": (0.1,), "epochs": 1,
       "lr_schedule": "0:0.1", "train_limit": 600, "val_size": 100, "batch_size": 100, "score_examples": 100,
       "transfer": False, "jsv_samples": 8}
STUDY = """
import json, sys
from isotpp.studies import {module} as study
settings = {{k: tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v
            for k, v in json.loads(sys.argv[1]).items()}}
study.run_study(study.{config}(**settings), sys.argv[2], progress=False, log=lambda s: None)
"""


def _study_results(results: dict) -> dict:
    return {k: v for k, v in results.items() if k not in ("wall_s", "invocation_s", "files", "timings")}


def _reference_then_killed(tmp_path, module: str, config_name: str, settings: dict, fault: str):
    """An uninterrupted study (this process) and one SIGKILLed at ``fault`` (a subprocess)."""
    import importlib

    study = importlib.import_module(f"isotpp.studies.{module}")
    config = getattr(study, config_name)(**settings)
    ref = study.run_study(config, tmp_path / "ref", progress=False, **QUIET)
    out = tmp_path / "run"
    dead = _python(tmp_path, STUDY.format(module=module, config=config_name), json.dumps(settings), out, fault=fault)
    assert dead.returncode == -signal.SIGKILL, dead.stderr[-3000:]
    return study, config, ref, out


def test_mlp_study_killed_between_the_two_files_of_its_base_and_stopped_in_retraining(tmp_path, monkeypatch):
    mlp_linear, config, ref, out = _reference_then_killed(tmp_path, "mlp_linear", "StudyConfig", MLP,
                                                          "kill:before:seed0/base.json")
    assert not (out / "seed0" / "base.npz").exists()  # staged beside its summary, never committed alone
    monkeypatch.setenv("ISOTPP_FAULT", "term:after:seed0/tpp_state.json#2")  # TPP committed; retraining stops
    with pytest.raises(Preempted, match="stopped by SIGTERM: finished pieces are kept; run the same command"):
        mlp_linear.run_study(config, out, progress=False, **QUIET)
    assert (out / "seed0" / "tpp.npz").exists() and not (out / "seed0" / "cells").exists()
    monkeypatch.delenv("ISOTPP_FAULT")
    again = mlp_linear.run_study(config, out, progress=False, **QUIET)
    assert _study_results(again) == _study_results(ref)


def test_pai_study_killed_between_two_cells_of_a_group_completes_them_without_training(tmp_path):
    pai, config, ref, out = _reference_then_killed(tmp_path, "pai", "PaIConfig", PAI,
                                                   "kill:after:lenet/seed0/dense__d1.json#2")
    cells = out / "lenet" / "seed0"
    assert [p.name for p in cells.glob("*.json")] == ["dense__d1.json"]  # one of three moved into place
    trained = (out / "metrics.jsonl").read_text().count('"phase": "train"')
    again = pai.run_study(config, out, progress=False, **QUIET)
    assert (out / "metrics.jsonl").read_text().count('"phase": "train"') == trained  # completed, not retrained
    assert _study_results(again) == _study_results(ref)
