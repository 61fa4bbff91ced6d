"""Training checkpoints (orbax): round trip with TPP's state, corrupt and unfinished steps, kill -9 + resume."""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from isotpp.errors import UserError
from isotpp.models import create_model, layer_names
from isotpp.pruning.groups import channel_groups
from isotpp.pruning.plan import Plan
from isotpp.pruning.tpp import TPPConfig, TPPState, targets_for, tpp
from isotpp.training.checkpoint import TrainCheckpointer
from isotpp.training.engine import ModelFns, TrainState, reference_sgd

REPO = Path(__file__).resolve().parents[1]


def _tpp_state(steps: int = 3):
    model = create_model("mlp", depth=3, width=6, input_dim=5, num_classes=3, act="relu", init="kaiming")
    plan = Plan({"net.0": 6, "net.2": 6}, {"net.0": (1, 4), "net.2": (0,)})
    cfg = TPPConfig(reg_granularity=0.1, update_reg_interval=1)
    tx = tpp(reference_sgd(0.1, 1e-3), plan, targets_for(plan, channel_groups(model), layer_names(model), cfg), cfg)
    _fns, params, rest = ModelFns.from_model(model)
    opt = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    for _ in range(steps):  # move every part of the state away from its initial value
        updates, opt = tx.update(grads, opt, params)
        params = jax.tree.map(lambda p, u: p + u, params, updates)
    return {"train": TrainState(params, rest, opt), "step": jnp.int32(steps)}, plan


def _leaves_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_keeps_the_optimiser_and_tpp_state(tmp_path):
    state, plan = _tpp_state()
    ckpt = TrainCheckpointer(tmp_path / "ck")
    meta = {"plan": plan.to_dict(), "method": "tpp", "model": {"widths": {"net.0": 6}}}
    ckpt.save(3, state, meta)
    ckpt.wait()
    assert ckpt.steps() == [3]
    zeros = jax.tree.map(jnp.zeros_like, state)
    step, restored, got = ckpt.restore(zeros)
    assert step == 3 and got["method"] == "tpp" and Plan.from_dict(got["plan"]) == plan
    assert isinstance(restored["train"].opt_state, TPPState)
    ckpt.close()
    assert int(restored["train"].opt_state.iteration) == 3 and float(restored["train"].opt_state.reg) > 0
    _leaves_equal(restored, state)
    assert jax.tree.structure(restored) == jax.tree.structure(state)


def test_max_to_keep_and_no_checkpoint(tmp_path):
    state, _ = _tpp_state(1)
    ckpt = TrainCheckpointer(tmp_path / "ck", max_to_keep=2)
    assert ckpt.restore(state) is None
    for s in (1, 2, 3):
        ckpt.save(s, state, {})
    ckpt.wait()
    assert ckpt.steps() == [2, 3]
    ckpt.close()
    with pytest.raises(UserError, match="at least 2"):
        TrainCheckpointer(tmp_path / "other", max_to_keep=1)


def _truncate_arrays(step_dir: Path) -> None:
    files = [f for f in (step_dir / "state").rglob("*") if f.is_file() and f.parent.name == "d"]
    assert files, "no array data files found to truncate"
    for f in files:
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


# A failed orbax read can leave an asyncio callback that fires after its event loop closed
# (orbax internals, harmless) when the garbage collector gets to it: pytest would report it as an
# unraisable-exception warning, in whichever test runs then. The tests that make reads fail collect
# their garbage before they end, under this filter.
_ORBAX_FAILED_READ = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@_ORBAX_FAILED_READ
def test_truncated_latest_checkpoint_falls_back_to_the_previous(tmp_path):
    state, _ = _tpp_state(1)
    later, _ = _tpp_state(2)
    ckpt = TrainCheckpointer(tmp_path / "ck")
    ckpt.save(1, state, {"n": 1})
    ckpt.save(2, later, {"n": 2})
    ckpt.close()
    _truncate_arrays(tmp_path / "ck" / "2")
    ckpt = TrainCheckpointer(tmp_path / "ck")
    with pytest.warns(UserWarning, match=r"checkpoint .*2 is unreadable .*falling back"):
        step, restored, meta = ckpt.restore(state)
    assert step == 1 and meta["n"] == 1
    _leaves_equal(restored, state)
    assert (tmp_path / "ck" / "corrupt-2").is_dir() and ckpt.steps() == [1]
    ckpt.save(2, later, {"n": 2})  # the step can be written again
    ckpt.wait()
    assert ckpt.restore(state)[0] == 2
    ckpt.close()
    gc.collect()


@_ORBAX_FAILED_READ
def test_every_checkpoint_unreadable_is_a_user_error(tmp_path):
    state, _ = _tpp_state(1)
    ckpt = TrainCheckpointer(tmp_path / "ck")
    ckpt.save(1, state, {})
    ckpt.close()
    _truncate_arrays(tmp_path / "ck" / "1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(UserError, match="no readable checkpoint"), TrainCheckpointer(tmp_path / "ck") as again:
            again.restore(state)
    gc.collect()


def test_an_unfinished_write_is_ignored(tmp_path):
    state, _ = _tpp_state(1)
    ckpt = TrainCheckpointer(tmp_path / "ck")
    ckpt.save(1, state, {"n": 1})
    ckpt.close()
    # what a process killed while writing step 2 leaves behind: orbax's temporary directory
    tmp = tmp_path / "ck" / "2.orbax-checkpoint-tmp-1234567"
    (tmp / "state").mkdir(parents=True)
    (tmp / "state" / "half").write_bytes(b"\0" * 10)
    ckpt = TrainCheckpointer(tmp_path / "ck")
    assert ckpt.steps() == [1]
    assert ckpt.restore(state)[0] == 1
    ckpt.close()


# --------------------------------------------------------------------------
# kill -9 in the middle of a run, a truncated checkpoint, --resume: the same final parameters.
# --------------------------------------------------------------------------

ARGS = ["--model", "resnet8", "--width-scale", "0.125", "--dataset", "synthetic", "--limit", "128",
        "--batch-size", "32", "--epochs", "3", "--lr-schedule", "0:0.05,1:0.02", "--checkpoint-every", "1",
        "--log-every", "2", "--no-progress"]  # fmt: skip
KILLER = """
import os, signal, sys
sys.path.insert(0, {experiments!r})
import train_cifar

def kill_at_second_epoch_end(trainer, epoch):  # after its evaluation, before its checkpoint
    if epoch == 1:
        os.kill(os.getpid(), signal.SIGKILL)

sys.exit(train_cifar.main(sys.argv[1:], hooks=[kill_at_second_epoch_end]))
"""


def _env(tmp_path):
    # The three runs compile the same programs: they share the session's persistent cache (conftest.py).
    return {**os.environ, "JAX_PLATFORMS": "cpu"}


def _cli(args, tmp_path, code=None):
    script = ["-c", code] if code else [str(REPO / "experiments" / "train_cifar.py")]
    cmd = [sys.executable, *script, *args]
    return subprocess.run(cmd, env=_env(tmp_path), capture_output=True, text=True, timeout=600, cwd=REPO,
                          check=False)


def _epoch_records(workdir: Path):
    out = []
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        out.append({k: v for k, v in r.items() if k not in ("seconds", "images_per_s")})
    return out


def test_kill_minus_9_then_resume_reaches_the_same_parameters(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    done = _cli([*ARGS, "--workdir", str(whole)], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]

    dead = _cli([*ARGS, "--workdir", str(killed)], tmp_path,
                code=KILLER.format(experiments=str(REPO / "experiments")))  # fmt: skip
    assert dead.returncode == -signal.SIGKILL, dead.stderr[-3000:]
    assert not (killed / "model.npz").exists()
    steps = sorted(int(p.name) for p in (killed / "checkpoints").iterdir() if p.name.isdigit())
    assert steps and steps[-1] < 8, steps  # epoch 1 ends at step 8: its own checkpoint was never written
    latest = steps[-1]
    _truncate_arrays(killed / "checkpoints" / str(latest))  # and the newest one is damaged

    resumed = _cli([*ARGS, "--workdir", str(killed), "--resume"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"checkpoint {killed / 'checkpoints' / str(latest)} is unreadable" in resumed.stderr
    assert f"resuming from step {steps[-2]} " in resumed.stderr

    a, b = np.load(whole / "model.npz"), np.load(killed / "model.npz")
    keys = [k for k in a.files if k != "__isotpp__"]
    assert keys and sorted(keys) == sorted(k for k in b.files if k != "__isotpp__")
    for k in keys:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert _epoch_records(whole) == _epoch_records(killed)
    results = json.loads((killed / "results.json").read_text())
    assert results["steps"] == 12 and len(results["history"]) == 3


def test_a_full_disk_during_a_checkpoint_is_one_line(tmp_path, monkeypatch):
    """orbax reports a full disk as RESOURCE_EXHAUSTED, in save() or from its background write (wait):
    one UserError line that says what is kept; other errors pass through unchanged."""
    state, _ = _tpp_state(1)
    ckpt = TrainCheckpointer(tmp_path / "ck")
    ckpt.save(1, state, {})
    ckpt.wait()
    full = ValueError('RESOURCE_EXHAUSTED: Error writing "rng/0" in OCDBT database: Failed writing: [OS error 28: '
                      "No space left on device]")

    def fail(*args, **kwargs):
        raise RuntimeError("Save Finalize thread failed") from full

    expected = (f"cannot write a checkpoint in {tmp_path / 'ck'}: no space left on device; the checkpoint of step 1 "
                "is kept; free some space, then run the same command again (with --resume) to continue")
    monkeypatch.setattr(ckpt._manager, "save", fail)
    with pytest.raises(UserError) as info:
        ckpt.save(2, state, {})
    assert str(info.value) == expected
    monkeypatch.setattr(ckpt._manager, "wait_until_finished", fail)
    with pytest.raises(UserError, match="no space left on device; the checkpoint of step 1 is kept"):
        ckpt.wait()

    def other(*args, **kwargs):
        raise ValueError("some other orbax failure")

    monkeypatch.setattr(ckpt._manager, "wait_until_finished", other)
    with pytest.raises(ValueError, match="some other orbax failure"):
        ckpt.wait()
    monkeypatch.undo()
    ckpt.close()
