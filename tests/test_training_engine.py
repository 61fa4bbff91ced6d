"""The one training engine: each concept exists once and both regimes (RunGroup, Trainer) use it.

Evaluation, epoch order, divergence check, metrics writer and checkpoints are checked here across the
two drivers on one tiny model; the drivers' own behaviour is in test_train.py and test_trainer.py.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from isotpp import parallel
from isotpp.data import make_synthetic
from isotpp.data.pipeline import InMemoryData, InMemoryEval, epoch_batches
from isotpp.errors import UserError
from isotpp.models import create_model
from isotpp.training.checkpoint import TrainCheckpointer
from isotpp.training.engine import (
    LRSchedule,
    ModelFns,
    RunGroup,
    check_finite,
    init_state,
    reference_sgd,
    stack_runs,
    unstack_run,
)
from isotpp.training.metrics import MetricsWriter
from isotpp.training.sharded import TrainConfig, Trainer, evaluate_model


def _mlp(seed=0):
    return create_model("mlp", depth=3, width=16, input_dim=64, num_classes=4, act="relu", init="kaiming", seed=seed)


def _data(n, seed=0):
    return make_synthetic(n, (8, 8, 1), 4, seed)


def test_the_two_regimes_evaluate_with_one_step():
    """RunGroup's vmapped evaluation, the Trainer's sharded one and evaluate_model agree on the same
    parameters, counting the padded last batch nowhere (37 examples, batches of 16)."""
    x, y = _data(64)
    xt, yt = _data(37, seed=9)
    mesh = parallel.make_mesh()
    models = [_mlp(0), _mlp(1)]
    tx = reference_sgd()
    fns, _, _ = ModelFns.from_model(models[0])
    states = [init_state(*ModelFns.from_model(m)[1:], tx) for m in models]
    group = RunGroup(fns, tx, stack_runs(states), [LRSchedule.parse("0.05")] * 2)
    group.train_epoch(jnp.asarray(x), jnp.asarray(y), jax.random.key(0), 0, 16)
    acc = group.evaluate(jnp.asarray(xt), jnp.asarray(yt))
    assert len(set(acc.tolist())) == 2  # two different runs: the comparison below is per run
    for r in range(2):
        model = fns.merge(unstack_run(group.state.params, r), unstack_run(group.state.rest, r))
        expected = 100.0 * np.mean(np.asarray(model(jnp.asarray(xt))).argmax(1) == yt)
        source = InMemoryEval(xt, yt, mesh, batch_size=16)
        trainer = Trainer(model, reference_sgd(), InMemoryData(x, y, batch_size=16, mesh=mesh),
                          TrainConfig(epochs=1, progress=False), eval_data=source)
        by_trainer = trainer.evaluate()
        assert by_trainer == evaluate_model(model, source)
        assert by_trainer["test_acc"] == pytest.approx(expected, abs=1e-12)
        assert acc[r] == pytest.approx(expected, abs=1e-4)  # float32 in the vmapped regime


def test_the_sharded_source_draws_the_engines_epoch_order():
    x, y = _data(50)
    data = InMemoryData(x, y, batch_size=16, mesh=parallel.make_mesh(), seed=3)
    order_key = jax.random.split(jax.random.key(3))[0]
    for epoch in (0, 5):
        np.testing.assert_array_equal(np.asarray(data.epoch_order(epoch)),
                                      np.asarray(epoch_batches(order_key, 50, 16, epoch=epoch)))
    assert np.asarray(data.epoch_order(0)).shape == (4, 16)  # 50 examples topped up to 64


def test_divergence_reads_alike_in_both_regimes():
    with pytest.raises(UserError) as run_group:
        check_finite(np.array([0.5, np.nan]), where="in retraining L1 at LR 0.01, seed 0, epoch 3")
    with pytest.raises(UserError) as sharded:
        check_finite(np.array([1.0, 2.0, 3.0]), np.array([1.0, np.inf, 1.0]), where=lambda i: f"at step {10 + i}",
                     what="loss or parameters", kept_step=9)
    assert str(run_group.value) == ("training diverged in retraining L1 at LR 0.01, seed 0, epoch 3 (loss NaN/inf): "
                                    "lower the learning rate or check the data")
    assert str(sharded.value) == ("training diverged at step 11 (loss or parameters NaN/inf): lower the learning "
                                  "rate or check the data; the last good checkpoint (step 9) is kept")
    check_finite(np.ones(3), np.zeros(3), where="never")


def test_metrics_writer_is_strict_json_from_process_zero_only(tmp_path, monkeypatch):
    path = tmp_path / "run" / "metrics.jsonl"
    write = MetricsWriter(path, timestamps=True)
    write(step=1, loss=np.float32(0.5), acc=jnp.asarray(90.0))
    write.write({"step": 2, "loss": float("inf")})
    write(step=3, loss=0.1)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in lines] == [(1, 0.5), (2, None), (3, 0.1)]
    assert list(lines[0]) == ["time", "step", "loss", "acc"] and lines[0]["acc"] == 90.0
    with open(path, "a") as f:
        f.write('{"step": 4, "lo')  # a line cut by a kill
    write.trim(2)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]

    monkeypatch.setattr(jax, "process_index", lambda: 1)
    other = MetricsWriter(tmp_path / "elsewhere" / "metrics.jsonl", tensorboard=True)
    other(step=1, loss=0.5)
    other.trim(0)
    write(step=5, loss=0.0)
    assert not (tmp_path / "elsewhere").exists()
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]


def _read_scalars(directory) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the TensorBoard event files under ``directory``, read from the TFRecord framing
    (u64 length, u32 crc, payload, u32 crc) with tensorboardX's own Event message."""
    from tensorboardX.proto.event_pb2 import Event  # the optional dependency under test

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(directory.rglob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            n = int.from_bytes(data[pos:pos + 8], "little")
            event = Event.FromString(data[pos + 12:pos + 12 + n])
            pos += 16 + n
            for v in event.summary.value:
                scalars.setdefault(v.tag, []).append((event.step, v.simple_value))
    return scalars


def test_metrics_writer_offers_tensorboard_scalars(tmp_path):
    write = MetricsWriter(tmp_path / "metrics.jsonl", tensorboard=True)
    write(phase="retrain", method="L1", epoch=1, test_acc=80.0, diverged=False)
    write(phase="retrain", method="L1", epoch=2, test_acc=85.5)
    write.close()
    assert _read_scalars(tmp_path / "tensorboard") == {"retrain/L1/test_acc": [(1, 80.0), (2, 85.5)]}

    x, y = _data(32)  # the Trainer's records, through the same writer
    mesh = parallel.make_mesh()
    work = tmp_path / "work"
    trainer = Trainer(_mlp(), reference_sgd(), InMemoryData(x, y, batch_size=16, mesh=mesh),
                      TrainConfig(epochs=2, lr_schedule="0.05", progress=False, checkpoints=False, tensorboard=True),
                      work, eval_data=InMemoryEval(*_data(20, seed=9), mesh))
    history, _ = trainer.fit()
    scalars = _read_scalars(work / "tensorboard")
    assert [step for step, _ in scalars["test_acc"]] == [r["step"] for r in history] == [2, 4]
    np.testing.assert_allclose([v for _, v in scalars["test_acc"]], [r["test_acc"] for r in history], rtol=1e-6)
    assert [json.loads(line)["test_acc"] for line in (work / "metrics.jsonl").read_text().splitlines()] == [
        r["test_acc"] for r in history]


def test_run_group_saves_and_restores_through_the_trainers_checkpointer(tmp_path):
    x, y = _data(64)
    tx = reference_sgd()
    fns, params, rest = ModelFns.from_model(_mlp())
    group = RunGroup(fns, tx, stack_runs([init_state(params, rest, tx)] * 2), [LRSchedule.parse("0.05")] * 2)
    key = jax.random.key(0)
    group.train_epoch(jnp.asarray(x), jnp.asarray(y), key, 0, 16)
    saved = [np.asarray(a) for a in jax.tree.leaves(group.state)]
    with TrainCheckpointer(tmp_path / "ckpt", async_save=False) as ckpt:
        group.save(ckpt, 1, {"epoch": 1})
        assert ckpt.steps() == [1]
    group.train_epoch(jnp.asarray(x), jnp.asarray(y), key, 1, 16)
    with TrainCheckpointer(tmp_path / "ckpt") as ckpt:
        meta = group.restore(ckpt)
    assert meta["epoch"] == 1 and meta["runs"] == 2 and meta["regime"] == "run_group"
    for a, b in zip(saved, jax.tree.leaves(group.state)):
        np.testing.assert_array_equal(a, np.asarray(b))
    single = RunGroup(fns, tx, stack_runs([init_state(params, rest, tx)]), [LRSchedule.parse("0.05")])
    with TrainCheckpointer(tmp_path / "ckpt") as ckpt, pytest.raises(UserError, match="another group of runs"):
        single.restore(ckpt)
    with TrainCheckpointer(tmp_path / "empty") as ckpt:
        assert single.restore(ckpt) is None
