"""Run directories under faults (docs/reliability.md): SIGKILL at several moments of `isotpp prune` and
of the studies (between the two files of one artefact too), SIGTERM at stage boundaries (exit 75, exact
resume), two runs into one directory, a full disk, other settings, failed calls that must leave nothing.

Kills are real (a subprocess told where to die through the test-only ISOTPP_FAULT hook, isotpp.storage.faults);
the reruns, the SIGTERM runs and the references run in this process (tiny models, synthetic data)."""

import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from isotpp.cli.app import main as cli_main
from isotpp.data.bundled import SUBSET_DIR
from isotpp.errors import UserError
from isotpp.preemption import Preempted
from isotpp.storage.atomic import read_json, write_json
from isotpp.studies.pruning_run import PruneConfig, run_pruning
from isotpp.studies.rundir import LOCK_NAME, Commit, locked, recover

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
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}  # the session's compilation cache is inherited (conftest.py)
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


PROGRESS = re.compile(r"isotpp: epoch 1/1: [12]/2 step \(\d+ %\), .*")  # progress lines (no terminal)


def _in_process(*argv) -> tuple[int, str]:
    """``isotpp ARGV`` through the entry point's target in this process (JAX already imported): (status, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            code = cli_main([str(a) for a in argv])
        except SystemExit as e:
            code = e.code
    return code, err.getvalue()


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
    code, err = _in_process("prune", *args, "--out", ref_dir)  # refused before any data or model (no subprocess)
    assert code == 2
    line = _one_line(err)
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
    dead = _python(tmp_path, "import sys, os, signal\nfrom isotpp.studies.rundir import locked\n"
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
    from isotpp.cli.train import main as train

    with pytest.raises(SystemExit) as refused:  # the parser refuses it, before anything runs
        train(["--model", "mlp", "--dataset", "synthetic", "--workdir", ""])
    assert refused.value.code == 2


# --------------------------------------------------------------------------
# Multi-file commits
# --------------------------------------------------------------------------

COMMIT = """
import sys
from pathlib import Path
from isotpp.storage.atomic import write_json
from isotpp.studies.rundir import Commit
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


def test_isotpp_train_as_documented_on_real_data_then_again_then_resumed_then_other_data(tmp_path,
                                                                                     fashion_mnist_dir):
    """docs/cli.md's `isotpp train` on the shipped Fashion-MNIST subset, small: orbax checkpoints on real data
    and a clean stderr in a real process (orbax's "cannot schedule new futures after shutdown" was the old end);
    the same command again is refused (one line, nothing changed); with --resume it continues; other data
    (the full set) or other settings are refused, the same data elsewhere accepted."""
    work = tmp_path / "runs" / "smoke"
    args = ["train", "--model", "resnet20", "--dataset", "fashion_mnist", "--data-dir", SUBSET_DIR, "--epochs", "1",
            "--train-limit", "128", "--batch-size", "64", "--width-scale", "0.25", "--out", work]
    first = _isotpp(tmp_path, *args)
    assert first.returncode == 0, first.stderr[-3000:]
    noise = [line for line in first.stderr.splitlines() if line.strip() and not PROGRESS.fullmatch(line)]
    assert not noise, first.stderr[-3000:]  # progress lines at most (time-based, without a terminal)
    assert first.stdout.startswith("final test accuracy ") and first.stdout.endswith(f"model: {work / 'model.npz'}\n")
    config = read_json(work / "config.json")["args"]
    assert config["epochs"] == 1 and "func" not in config and config["data"]["examples"] == {"train": 128, "test": 2000}
    results = read_json(work / "results.json")
    assert results["steps"] == 2 and sorted(p.name for p in (work / "checkpoints").iterdir()) == ["2"]
    before = _snapshot(work)
    code, err = _in_process(*args)
    assert code == 2 and _one_line(err) == (f"isotpp train: error: {work / 'checkpoints'} already holds checkpoints "
                                            "(step 2): pass --resume to continue or use another workdir")
    assert _snapshot(work) == before
    resumed = _isotpp(tmp_path, *args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _one_line(resumed.stderr) == "isotpp: resuming from step 2 (epoch 1, step 0 of it)"  # nothing else
    assert read_json(work / "results.json") == results
    before = _snapshot(work)
    full = [a if a != SUBSET_DIR else fashion_mnist_dir for a in args]
    code, err = _in_process(*full, "--resume")
    assert code == 2 and _one_line(err).startswith(
        f"isotpp train: error: {work} holds a training run started on other data (fashion_mnist: 128 train / "
        "2,000 test examples, fingerprint "), err
    assert "fashion_mnist: 128 train / 10,000 test examples" in err
    other = [a if a != "1" else "2" for a in args]
    code, err = _in_process(*other, "--resume")
    assert code == 2 and _one_line(err) == (f"isotpp train: error: {work} holds a training run with a different "
                                            "epochs (1 there, 2 here): use another directory, or delete it to "
                                            "start afresh")
    assert _snapshot(work) == before
    moved = shutil.copytree(SUBSET_DIR, tmp_path / "moved")
    code, err = _in_process(*[a if a != SUBSET_DIR else moved for a in args], "--resume")
    assert code == 0, err
    assert read_json(work / "results.json") == results and read_json(work / "config.json")["args"]["data_dir"] == str(
        moved)


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


CONVNET = {"model": "resnet8", "dataset": "synthetic", "train_limit": 64, "width_scale": 0.25, "base_epochs": 1, "base_lr": "0:0.05",
           "retrain_epochs": 1, "lr_schedules": (("0.01", "0:0.01"),), "batch_size": 64, "methods": ("L1",),
           "jsv_samples": 2, "ratio": 0.5}
# In place of the Jacobian spectrum (seconds of tracing per call on ResNet-20; checked in
# tests/test_study_convnet.py): a cheap deterministic function of the weights, so that the results still say
# which weights each piece was computed from. What is under test is which pieces are kept, completed or redone.
STAND_IN_DEF = """
import jax, numpy as np
from flax import nnx
import isotpp.spectra.jacobian
def _weights_as_spectrum(model, x, **kw):
    return np.array([float(np.abs(np.asarray(v)).sum()) for v in jax.tree.leaves(nnx.state(model, nnx.Param))])
"""
STAND_IN = STAND_IN_DEF + "isotpp.spectra.jacobian.model_singular_values = _weights_as_spectrum\n"
CONVNET_STUDY = STAND_IN + """
import json, sys
from isotpp.studies import convnet
settings = {k: tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v
            for k, v in json.loads(sys.argv[1]).items()}
convnet.run_convnet_study(convnet.quick_config(**settings), sys.argv[2], log=lambda s: None)
"""


def test_convnet_study_killed_between_the_files_of_its_pieces_and_stopped_by_sigterm(tmp_path, monkeypatch):
    """The ConvNet study (one method, one learning rate, ResNet-8 at a quarter width, one epoch each) killed
    between its base model and base.json, stopped by SIGTERM after base.json, killed before the pruned network
    is written: the rerun's results and final weights equal an uninterrupted study's."""
    import isotpp.spectra.jacobian
    from isotpp.studies import convnet

    stand_in = {}
    exec(STAND_IN_DEF, stand_in)  # noqa: S102 - the subprocesses' stand-in (only defined here: monkeypatch sets it)
    monkeypatch.setattr(isotpp.spectra.jacobian, "model_singular_values", stand_in["_weights_as_spectrum"])
    config = convnet.quick_config(**CONVNET)
    ref = convnet.run_convnet_study(config, tmp_path / "ref", **QUIET)
    out, cell = tmp_path / "run", Path("seed0", "L1", "lr0.01")

    dead = _python(tmp_path, CONVNET_STUDY, json.dumps(CONVNET), out, fault="kill:after:seed0/base/model.npz")
    assert dead.returncode == -signal.SIGKILL, dead.stderr[-3000:]
    assert (out / "seed0" / "base" / "model.npz").exists() and not (out / "seed0" / "base.json").exists()
    monkeypatch.setenv("ISOTPP_FAULT", "term:after:seed0/base.json")
    with pytest.raises(Preempted) as stop:
        convnet.run_convnet_study(config, out, **QUIET)
    assert stop.value.exit_code == 75 and str(stop.value) == (
        f"stopped by SIGTERM: finished stages are kept in {out / 'seed0' / 'L1'}; run the same command again to "
        "continue")
    assert (out / "seed0" / "base.json").exists() and not (out / "seed0" / "L1" / "plan.json").exists()
    monkeypatch.delenv("ISOTPP_FAULT")
    dead = _python(tmp_path, CONVNET_STUDY, json.dumps(CONVNET), out, fault="kill:before:seed0/L1/pruned.npz")
    assert dead.returncode == -signal.SIGKILL, dead.stderr[-3000:]
    assert (out / "seed0" / "L1" / "plan.json").exists() and not (out / "seed0" / "L1" / "pruned.npz").exists()
    again = convnet.run_convnet_study(config, out, **QUIET)
    assert _study_results(again) == _study_results(ref)
    _same_arrays(out / cell / "final.npz", tmp_path / "ref" / cell / "final.npz")
