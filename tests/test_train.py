"""The training engine: schedules, the reference SGD by hand, epochs, vmapped runs."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from isotpp.data.pipeline import epoch_batches
from isotpp.errors import UserError
from isotpp.models import create_model
from isotpp.training.engine import (
    LRSchedule,
    ModelFns,
    RunGroup,
    check_finite,
    cross_entropy,
    init_state,
    make_epoch_fn,
    make_eval_fn,
    reference_sgd,
    set_learning_rate,
    stack_runs,
    unstack_run,
)


def test_lr_schedule_parsing():
    s = LRSchedule.parse("0:0.01,30:0.001,60:0.0001")
    assert [s(e) for e in (0, 29, 30, 59, 60, 89)] == [0.01, 0.01, 0.001, 0.001, 0.0001, 0.0001]
    assert str(s) == "0:0.01,30:0.001,60:0.0001" and s.initial == 0.01
    assert LRSchedule.parse("0.1")(50) == 0.1
    for bad in ("", "30:0.01", "0:0.01,0:0.1", "0:0.01,20:0.1,10:0.2", "0:abc", "0:-1", "0:0.1;30:0.01", "0:nan"):
        with pytest.raises(UserError, match="schedule"):
            LRSchedule.parse(bad)


def test_reference_sgd_is_pytorchs_by_hand():
    """g += wd·w; buf = 0.9·buf + g; w -= lr·buf, with the LR changed between steps."""
    tx = reference_sgd(0.1, weight_decay=0.01)
    w = {"w": jnp.asarray([1.0, -2.0])}
    state = tx.init(w)
    grads = [np.array([0.5, 0.5]), np.array([-1.0, 0.0]), np.array([0.2, 0.3])]
    lrs = [0.1, 0.1, 0.05]
    ww, buf = np.array([1.0, -2.0]), np.zeros(2)
    for g, lr in zip(grads, lrs):
        state = set_learning_rate(state, lr)
        u, state = tx.update({"w": jnp.asarray(g, jnp.float32)}, state, w)
        w = optax.apply_updates(w, u)
        d = g + 0.01 * ww
        buf = 0.9 * buf + d
        ww = ww - lr * buf
        np.testing.assert_allclose(np.asarray(w["w"]), ww, rtol=1e-6)


def test_epoch_batches_cover_every_example():
    b = np.asarray(epoch_batches(jax.random.key(0), 250, 100))
    assert b.shape == (3, 100)
    assert set(b.ravel()) == set(range(250))
    b2 = np.asarray(epoch_batches(jax.random.key(0), 250, 100, drop_last=True))
    assert b2.shape == (2, 100) and len(set(b2.ravel())) == 200
    assert not np.array_equal(b, np.asarray(epoch_batches(jax.random.key(1), 250, 100)))
    with pytest.raises(UserError, match="batch size"):
        epoch_batches(jax.random.key(0), 10, 100, drop_last=True)


def _data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 4, 4, 1)).astype(np.float32)
    y = (x.reshape(n, -1)[:, :3].argmax(1)).astype(np.int32)
    return jnp.asarray(x), jnp.asarray(y)


def _tiny(act="relu", seed=0):
    return create_model("mlp", depth=2, width=8, input_dim=16, num_classes=3, act=act, init="kaiming", seed=seed)


def test_one_epoch_equals_a_hand_written_loop():
    x, y = _data()
    model = _tiny()
    fns, params, rest = ModelFns.from_model(model)
    tx = reference_sgd(0.05, weight_decay=1e-3)
    epoch = jax.jit(make_epoch_fn(fns, tx))
    batches = epoch_batches(jax.random.key(3), 96, 32)
    state, metrics = epoch(init_state(params, rest, tx), x, y, batches, 0.05)

    # the same three steps by hand with optax
    p, opt = params, tx.init(params)
    opt = set_learning_rate(opt, 0.05)
    losses = []
    for idx in np.asarray(batches):
        def loss_fn(p, idx=idx):
            return cross_entropy(nnx.merge(fns.train_def, p, rest)(x[idx]), y[idx])

        loss, g = jax.value_and_grad(loss_fn)(p)
        u, opt = tx.update(g, opt, p)
        p = optax.apply_updates(p, u)
        losses.append(float(loss))
    np.testing.assert_allclose(np.asarray(metrics["loss"]), losses, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(state.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_batchnorm_statistics_move_during_training():
    model = create_model("resnet20", widths=None, num_classes=3, init="kaiming")
    fns, params, rest = ModelFns.from_model(model)
    tx = reference_sgd(0.01)
    x = jax.random.normal(jax.random.key(0), (8, 8, 8, 3)) * 2 + 1
    y = jnp.zeros(8, jnp.int32)
    epoch = jax.jit(make_epoch_fn(fns, tx))
    state, _ = epoch(init_state(params, rest, tx), x, y, jnp.arange(8).reshape(1, 8), 0.01)
    before = np.asarray(rest["bn1"]["mean"][...])
    after = np.asarray(state.rest["bn1"]["mean"][...])
    assert np.abs(after - before).max() > 1e-3


def test_penalty_weight_zero_is_no_penalty_and_nonzero_changes_training():
    x, y = _data()
    fns, params, rest = ModelFns.from_model(_tiny())
    tx = reference_sgd(0.05)
    pen = {"l2": lambda p: sum(jnp.sum(v ** 2) for v in jax.tree.leaves(p))}
    with_pen = jax.jit(make_epoch_fn(fns, tx, penalties=pen))
    without = jax.jit(make_epoch_fn(fns, tx))
    batches = epoch_batches(jax.random.key(0), 96, 32)
    s0 = init_state(params, rest, tx)
    a, _ = with_pen(s0, x, y, batches, 0.05, {"l2": 0.0})
    b, _ = without(s0, x, y, batches, 0.05)
    c, _ = with_pen(s0, x, y, batches, 0.05, {"l2": 0.1})
    for u, v, w in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), jax.tree.leaves(c.params)):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-6)
    norm = lambda s: sum(float(jnp.sum(v ** 2)) for v in jax.tree.leaves(s.params))
    assert norm(c) < norm(b)


def test_vmapped_runs_equal_separate_runs_and_evaluation_by_hand():
    x, y = _data(90)
    models = [_tiny(seed=s) for s in (0, 1)]
    tx = reference_sgd(weight_decay=1e-4)
    fns, _, _ = ModelFns.from_model(models[0])
    states = []
    for m in models:
        _, p, r = ModelFns.from_model(m)
        states.append(init_state(p, r, tx))
    lrs = [LRSchedule.parse("0:0.05,1:0.01"), LRSchedule.parse("0:0.02")]
    group = RunGroup(fns, tx, stack_runs(states), lrs)
    batches = epoch_batches(jax.random.key(5), 90, 30)
    for epoch in range(2):
        group.run_epoch(x, y, batches, epoch)
    acc = group.evaluate(x, y)
    epoch_fn = jax.jit(make_epoch_fn(fns, tx))
    for i, state in enumerate(states):
        for epoch in range(2):
            state, _ = epoch_fn(state, x, y, batches, lrs[i](epoch))
        for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(unstack_run(group.state.params, i))):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
        logits = fns.merge(state.params, state.rest)(x)
        assert acc[i] == pytest.approx(100.0 * float(np.mean(np.argmax(np.asarray(logits), 1) == np.asarray(y))))


def test_evaluation_pads_the_last_chunk():
    x, y = _data(95)
    fns, params, rest = ModelFns.from_model(_tiny())
    acc, loss = jax.jit(make_eval_fn(fns, batch_size=20))(params, rest, x, y)
    logits = np.asarray(fns.merge(params, rest)(x))
    assert float(acc) == pytest.approx(100.0 * np.mean(logits.argmax(1) == np.asarray(y)))
    lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
    assert float(loss) == pytest.approx(np.mean(lse - logits[np.arange(95), np.asarray(y)]), rel=1e-5)


def test_divergence_is_a_one_line_error():
    x, y = _data()
    fns, params, rest = ModelFns.from_model(_tiny("linear"))
    tx = reference_sgd()
    group = RunGroup(fns, tx, stack_runs([init_state(params, rest, tx)]), [LRSchedule.parse("1e6")])
    m = group.run_epoch(x * 1e3, y, epoch_batches(jax.random.key(0), 96, 32), 0)
    with pytest.raises(UserError, match="diverged"):
        check_finite(m["loss"], where="test")
