"""The sharded trainer on one device: files, the shared step, SIGTERM + resume, NaN, bf16, refusals."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from isotpp import parallel
from isotpp.data import make_synthetic
from isotpp.data.pipeline import InMemoryData, InMemoryEval
from isotpp.errors import UserError
from isotpp.models import create_model
from isotpp.training.engine import ModelFns, init_state, make_epoch_fn, reference_sgd
from isotpp.training.sharded import (
    PREEMPTED_EXIT_CODE,
    Preempted,
    TrainConfig,
    Trainer,
    jsv_hook,
    with_compute_dtype,
)

REPO = Path(__file__).resolve().parents[1]
N, BATCH = 64, 16  # 4 steps per epoch


def _mlp(seed=0, width=16, **kw):
    return create_model("mlp", depth=3, width=width, input_dim=64, num_classes=4, act="relu", init="kaiming",
                        seed=seed, **kw)  # fmt: skip


def _data(n=N, seed=0):
    images, labels = make_synthetic(n, (8, 8, 1), 4, seed)
    return images, labels


def _sources(augment=False, batch=BATCH, seed=0):
    mesh = parallel.make_mesh()
    x, y = _data()
    xt, yt = _data(40, seed=9)
    return (InMemoryData(x, y, batch_size=batch, mesh=mesh, seed=seed, augment=augment, padding=1),
            InMemoryEval(xt, yt, mesh, batch_size=16))  # fmt: skip


def _records(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _params(trainer) -> list[np.ndarray]:
    return [np.asarray(a) for a in jax.tree.leaves(trainer.state.params)]


def test_fit_writes_config_metrics_and_checkpoints_and_learns(tmp_path):
    data, evaluation = _sources()
    probe = _data(3, seed=5)[0]
    calls = []

    def hook(trainer, epoch):
        calls.append((epoch, trainer.step))
        return {"custom": epoch * 10}

    config = TrainConfig(epochs=3, lr_schedule="0:0.1,2:0.01", checkpoint_every_steps=3, log_every_steps=2,
                         progress=False, method="plain")  # fmt: skip
    trainer = Trainer(_mlp(), reference_sgd(0.1, 1e-4), data, config, tmp_path,
                      eval_data=evaluation, hooks=[hook, jsv_hook(probe)])  # fmt: skip
    history, model = trainer.fit()

    assert calls == [(0, 4), (1, 8), (2, 12)] and trainer.step == 12
    assert [r["lr"] for r in history] == [0.1, 0.1, 0.01]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["test_acc"] > 50.0  # the synthetic task is easy; chance is 25 %
    for r in history:
        assert r["custom"] == r["epoch"] * 10 and r["jsv_mean"] > 0 and r["jsv_n_samples"] == 3
    logits = model(jnp.asarray(_data(40, seed=9)[0]))
    acc = 100.0 * float(np.mean(np.argmax(np.asarray(logits), 1) == _data(40, seed=9)[1]))
    assert acc == pytest.approx(history[-1]["test_acc"])

    config_json = json.loads((tmp_path / "config.json").read_text())
    assert config_json["train"]["lr_schedule"] == "0:0.1,2:0.01" and config_json["train"]["method"] == "plain"
    assert config_json["devices"]["num_devices"] == 1 and config_json["data"]["steps_per_epoch"] == 4
    assert config_json["model"]["build"]["arch"] == "mlp" and config_json["model"]["param_dtype"] == "float32"
    records = _records(tmp_path)
    assert [r["step"] for r in records if "grad_norm" in r] == [2, 4, 6, 8, 10, 12]
    assert [{k: v for k, v in r.items()} for r in records if "train_loss" in r] == json.loads(json.dumps(history))
    # epoch ends (4, 8, 12) and every 3 steps (3, 6, 9); the newest two are kept
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [9, 12]


def test_the_trainer_step_is_the_engines_step(tmp_path):
    """One epoch of the trainer == make_epoch_fn's scanned epoch on the same batches (penalties too)."""
    data, _ = _sources()
    penalties = {"l2": lambda p: sum(jnp.sum(v ** 2) for v in jax.tree.leaves(p))}
    tx = reference_sgd(0.05, 1e-3)
    config = TrainConfig(epochs=1, lr_schedule="0.05", penalty_weights={"l2": 1e-3}, progress=False)
    trainer = Trainer(_mlp(), tx, data, config, penalties=penalties)
    trainer.fit()

    fns, params, rest = ModelFns.from_model(_mlp())
    epoch = jax.jit(make_epoch_fn(fns, tx, penalties=penalties))
    x, y = _data()
    state, metrics = epoch(init_state(params, rest, tx), jnp.asarray(x), jnp.asarray(y), data.epoch_order(0), 0.05,
                           {"l2": 1e-3})  # fmt: skip
    for a, b in zip(_params(trainer), jax.tree.leaves(state.params)):
        np.testing.assert_allclose(a, np.asarray(b), rtol=1e-6, atol=1e-7)
    assert trainer.history[0]["train_loss"] == pytest.approx(float(np.mean(metrics["loss"])), rel=1e-6)


def test_sigterm_saves_exits_and_resume_is_exact(tmp_path, capsys):
    data, evaluation = _sources(augment=True)
    config = TrainConfig(epochs=3, lr_schedule="0:0.1,1:0.03", log_every_steps=1, progress=False)

    def sigterm_after_first_epoch(trainer, epoch):
        if epoch == 0:
            os.kill(os.getpid(), signal.SIGTERM)  # handled between steps: the next step finishes first

    stopped = Trainer(_mlp(), reference_sgd(0.1), data, config, tmp_path / "a", eval_data=evaluation,
                      hooks=[sigterm_after_first_epoch])  # fmt: skip
    with pytest.raises(Preempted) as info:
        stopped.fit()
    assert info.value.step == 5 and info.value.exit_code == PREEMPTED_EXIT_CODE == 75
    err = capsys.readouterr().err
    assert "stopped by SIGTERM: checkpoint saved at step 5" in err and "--resume" in err
    assert signal.getsignal(signal.SIGTERM) is not None  # the handler was put back
    resumed = Trainer(_mlp(), reference_sgd(0.1), data, config, tmp_path / "a", eval_data=evaluation)
    resumed.fit(resume=True)
    assert "resuming from step 5 (epoch 1, step 1 of it)" in capsys.readouterr().err

    whole = Trainer(_mlp(), reference_sgd(0.1), data, config, tmp_path / "b", eval_data=evaluation)
    whole.fit()
    for a, b in zip(_params(resumed), _params(whole)):
        np.testing.assert_array_equal(a, b)
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in rs]
    assert strip(_records(tmp_path / "a")) == strip(_records(tmp_path / "b"))
    assert strip(resumed.history) == strip(whole.history)


def test_sigterm_in_the_last_epochs_evaluation_stops_after_its_checkpoint(tmp_path, capsys):
    """The end of a stage: no step follows to notice the flag, yet the run must not go on and exit 0."""
    data, evaluation = _sources()
    config = TrainConfig(epochs=2, lr_schedule="0.05", progress=False)

    def sigterm_in_last_epoch(trainer, epoch):
        if epoch == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    stopped = Trainer(_mlp(), reference_sgd(0.05), data, config, tmp_path / "a", eval_data=evaluation,
                      hooks=[sigterm_in_last_epoch])  # fmt: skip
    with pytest.raises(Preempted) as info:
        stopped.fit()
    assert info.value.step == 8 and info.value.reported  # every step done and saved
    assert "stopped by SIGTERM: checkpoint saved at step 8" in capsys.readouterr().err
    resumed = Trainer(_mlp(), reference_sgd(0.05), data, config, tmp_path / "a", eval_data=evaluation)
    resumed.fit(resume=True)
    assert resumed.step == 8 and len(resumed.history) == 2
    for a, b in zip(_params(resumed), _params(stopped)):
        np.testing.assert_array_equal(a, b)


def test_the_command_line_exits_75_on_sigterm(tmp_path, capsys):
    sys.path.insert(0, str(REPO / "experiments"))
    try:
        import train_cifar
    finally:
        sys.path.pop(0)

    def sigterm(trainer, epoch):
        os.kill(os.getpid(), signal.SIGTERM)

    args = ["--model", "mlp", "--width-scale", "0.1", "--dataset", "synthetic", "--limit", "64", "--batch-size",
            "32", "--epochs", "2", "--lr-schedule", "0.01", "--no-progress", "--workdir", str(tmp_path)]  # fmt: skip
    assert train_cifar.main(args, hooks=[sigterm]) == 75
    assert "checkpoint saved at step 3" in capsys.readouterr().err
    assert train_cifar.main([*args, "--resume"]) == 0
    assert "resuming from step 3 (epoch 1, step 1 of it)" in capsys.readouterr().err
    assert json.loads((tmp_path / "results.json").read_text())["steps"] == 4
    assert (tmp_path / "model.npz").is_file()
    assert train_cifar.main([*args, "--batch-size", "16", "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"train_cifar: error: {tmp_path} holds a training run with a different "
                          "batch_size (32 there, 16 here)")
    assert err.count("\n") == 1


def test_a_nan_loss_stops_with_a_user_error_and_the_last_good_checkpoint_stays(tmp_path):
    data, _ = _sources()
    config = TrainConfig(epochs=3, lr_schedule="0:0.05,1:1e30", checkpoint_every_steps=1, progress=False)
    trainer = Trainer(_mlp(), reference_sgd(0.05), data, config, tmp_path)
    with pytest.raises(UserError, match=r"diverged at step 5 .*last good checkpoint \(step 4\)"):
        trainer.fit()
    again = Trainer(_mlp(), reference_sgd(0.05), data, config, tmp_path)
    assert again.restore() and again.step == 4
    assert all(np.all(np.isfinite(a)) for a in _params(again))


def test_refusals_are_one_line_user_errors(tmp_path):
    data, _ = _sources()
    Trainer(_mlp(), reference_sgd(0.05), data, TrainConfig(epochs=1, progress=False), tmp_path).fit()
    with pytest.raises(UserError, match="already holds checkpoints .*--resume"):
        Trainer(_mlp(), reference_sgd(0.05), data, TrainConfig(epochs=2, progress=False), tmp_path).fit()
    other, _ = _sources(batch=32)
    with pytest.raises(UserError, match="global_batch_size=16, this run has 32"):
        Trainer(_mlp(), reference_sgd(0.05), other, TrainConfig(epochs=2, progress=False), tmp_path).fit(resume=True)
    with pytest.raises(UserError, match="another architecture"):
        Trainer(_mlp(width=8), reference_sgd(0.05), data, TrainConfig(epochs=2, progress=False),
                tmp_path).fit(resume=True)  # fmt: skip
    assert not list((tmp_path / "checkpoints").glob("corrupt-*")), "a user's mistake must not set checkpoints aside"
    with pytest.raises(UserError, match="no injected learning_rate"):
        Trainer(_mlp(), optax.sgd(0.1), data, TrainConfig(epochs=1, lr_schedule="0.1"))
    with pytest.raises(UserError, match="unknown penalties"):
        Trainer(_mlp(), reference_sgd(), data, TrainConfig(epochs=1, penalty_weights={"nope": 1.0}))
    with pytest.raises(UserError, match="exceeds the 64 training examples"):
        InMemoryData(*_data(), batch_size=128, mesh=parallel.make_mesh(), drop_last=True)
    with pytest.raises(UserError, match="epochs"):
        TrainConfig(epochs=0)


def test_bf16_compute_keeps_float32_parameters_and_optimiser_state():
    data, evaluation = _sources()
    model = with_compute_dtype(_mlp(), jnp.bfloat16)
    assert model.net[0].dtype == jnp.bfloat16
    assert model(jnp.ones((2, 8, 8, 1))).dtype == jnp.bfloat16
    config = TrainConfig(epochs=2, lr_schedule="0.1", progress=False)
    bf16 = Trainer(model, reference_sgd(0.1, 1e-4), data, config, eval_data=evaluation)
    f32 = Trainer(_mlp(), reference_sgd(0.1, 1e-4), data, config, eval_data=evaluation)
    hb, _ = bf16.fit()
    hf, _ = f32.fit()
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(bf16.state.params))
    assert all(a.dtype in (jnp.float32, jnp.int32) for a in jax.tree.leaves(bf16.state.opt_state))
    assert np.isfinite(hb[-1]["train_loss"]) and hb[-1]["train_loss"] == pytest.approx(hf[-1]["train_loss"], rel=0.1)
    assert abs(hb[-1]["test_acc"] - hf[-1]["test_acc"]) <= 10.0


def test_created_replicated_model_equals_the_host_built_one():
    mesh = parallel.make_mesh()
    placed = parallel.create_model_replicated(lambda: create_model("mlp", depth=2, width=4, input_dim=3,
                                                                   num_classes=2, seed=3), mesh)  # fmt: skip
    host = create_model("mlp", depth=2, width=4, input_dim=3, num_classes=2, seed=3)
    assert placed.build_config == host.build_config
    for a, b in zip(jax.tree.leaves(nnx.state(placed)), jax.tree.leaves(nnx.state(host))):
        assert a.sharding.is_fully_replicated
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_max_steps_stops_inside_an_epoch_and_resumes_to_the_same_end(tmp_path):
    """A fixed iteration budget (TPP's penalty phase): 6 steps = one epoch and a half."""
    data, evaluation = _sources()
    config = TrainConfig(epochs=5, lr_schedule="0.05", max_steps=6, checkpoint_every_steps=5, progress=False)
    trainer = Trainer(_mlp(), reference_sgd(0.05), data, config, tmp_path, eval_data=evaluation)
    history, _ = trainer.fit()
    assert trainer.step == 6 and [r["step"] for r in history] == [4, 6] and "test_acc" in history[-1]
    assert trainer.checkpointer.latest_step() == 6
    again = Trainer(_mlp(), reference_sgd(0.05), data, config, tmp_path, eval_data=evaluation)
    again.fit(resume=True)  # finished already: nothing more to do
    assert again.step == 6 and len(again.history) == 2
    for a, b in zip(_params(trainer), _params(again)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(UserError, match="max_steps"):
        TrainConfig(epochs=1, max_steps=0)
