"""Pruning in one call (isotpp.prune_optax): a fitted, validated schedule; the state found anywhere in an
optimiser; done with every pruned entry exactly 0, kept at 0, and equal to the hard-pruned network; the
other structured methods; saving and reloading a user model."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from user_models import INPUTS, MLP, ConvBN, make_convbn

import isotpp
from isotpp.errors import UserError
from isotpp.models.program import flat_arrays
from isotpp.pruning.groups import channel_groups
from isotpp.pruning.model_file import load_model, save_model
from isotpp.pruning.optax_prune import fit_schedule, minimum_steps, plan_of
from isotpp.pruning.plan import Plan, hard_prune
from isotpp.pruning.tpp import DONE, TPPConfig, describe, targets_for, tpp, tpp_state


@pytest.mark.parametrize("steps,last", [(12, 2), (300, 2), (2000, 7), (5000, 56), (110_001, 6)])
def test_fitted_schedule_fits_and_zeroes_every_layer(steps, last):
    cfg = fit_schedule(steps, last)
    assert cfg.total_iters <= steps
    assert (last + 1) * cfg.zero_out_interval <= cfg.stabilize_iters
    assert 1 <= cfg.zero_out_interval <= 100 and cfg.update_iters >= 1
    if steps == 110_001:  # the paper's budget gives the paper's proportions
        assert (cfg.update_iters, cfg.stabilize_iters, cfg.zero_out_interval) == (100_000, 10_000, 100)
        assert cfg.update_reg_interval == 10 and cfg.reg_granularity == pytest.approx(1e-4)


def test_too_short_or_mis_specified_schedules_are_refused():
    assert minimum_steps(2) == 5
    with pytest.raises(UserError, match="needs at least 5 iterations"):
        fit_schedule(4, 2)
    model = MLP((8, 7, 6))
    x = np.zeros((2, 6), np.float32)
    bad = TPPConfig(reg_granularity=0.1, update_reg_interval=1, stabilize_iters=20, zero_out_interval=10)
    with pytest.raises(UserError, match=r"zeroed only after 30: use stabilize_iters >= 30 or zero_out_interval <= 6"):
        isotpp.prune_optax(optax.sgd(0.1), model, "hidden.*:0.5", schedule=bad, x=x)
    with pytest.raises(UserError, match="needs 31 iterations to reach done, more than steps=20"):
        isotpp.prune_optax(optax.sgd(0.1), model, "hidden.*:0.5", x=x, steps=20,
                           schedule=TPPConfig(reg_granularity=0.1, update_reg_interval=1, stabilize_iters=20,
                                              zero_out_interval=5))
    with pytest.raises(UserError, match="no one-call optimiser form"):
        isotpp.prune_optax(optax.sgd(0.1), model, "hidden.*:0.5", method="L1+OrthP", x=x)
    with pytest.raises(UserError, match="would prune head, but it is the classifier"):
        isotpp.prune_optax(optax.sgd(0.1), model, "*:0.5", x=x)
    groups = channel_groups(model, x)
    plan = Plan({"hidden.0": 8, "hidden.2": 6}, {"hidden.0": (0,), "hidden.2": (1,)})
    with pytest.raises(UserError, match="layer_order lacks 'hidden.2'"):
        targets_for(plan, groups, ["hidden.0"], bad)


def test_the_low_level_wrapper_never_reports_done_with_unzeroed_filters():
    """Issue 10's case: three pruned layers, interval 10, 20 stabilising iterations: the third layer is not
    due before done, so it is zeroed on the last iteration, together with done."""
    model = MLP((8, 7, 6))
    x = np.zeros((2, 6), np.float32)
    groups = channel_groups(model, x)
    plan = Plan({"hidden.0": 8, "hidden.1": 7, "hidden.2": 6}, {"hidden.0": (0,), "hidden.1": (2,), "hidden.2": (1,)})
    cfg = TPPConfig(reg_granularity=0.1, update_reg_interval=1, stabilize_iters=20, zero_out_interval=10)
    tx = tpp(optax.sgd(0.01), plan, targets_for(plan, groups, ["hidden.0", "hidden.1", "hidden.2", "head"], cfg), cfg)
    params = nnx.state(model, nnx.Param)
    state = tx.init(params)
    update = jax.jit(tx.update)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.01), params)
    for i in range(cfg.total_iters):
        u, state = update(grads, state, params)
        params = optax.apply_updates(params, u)
        flat = flat_arrays(params)
        third = float(np.abs(np.asarray(flat["hidden.2.kernel"])[:, 1]).max())
        if i == cfg.total_iters - 2:
            assert int(state.phase) != DONE and third > 0
    assert int(state.phase) == DONE and third == 0.0
    assert float(np.abs(np.asarray(flat["hidden.1.kernel"])[:, 2]).max()) == 0.0


def test_tpp_state_is_found_inside_chains_hyperparams_and_multisteps():
    model = MLP((8, 7))
    x = np.zeros((2, 6), np.float32)
    params = nnx.state(model, nnx.Param)
    inner = optax.sgd(0.01, momentum=0.9)
    for tx in (
        isotpp.prune_optax(inner, model, "hidden.*:0.5", steps=50, x=x),
        optax.chain(optax.clip_by_global_norm(1.0), isotpp.prune_optax(inner, model, "hidden.*:0.5", steps=50, x=x)),
        optax.MultiSteps(optax.chain(isotpp.prune_optax(inner, model, "hidden.*:0.5", steps=50, x=x)), 2),
        optax.inject_hyperparams(lambda learning_rate: optax.chain(
            optax.scale(learning_rate), isotpp.prune_optax(inner, model, "hidden.*:0.5", steps=50, x=x)))(0.5),
    ):
        state = tx.init(params)
        grads = jax.tree.map(jnp.ones_like, params)
        _, state = tx.update(grads, state, params)
        st = tpp_state(state)
        assert int(st.iteration) in (0, 1)  # MultiSteps runs the inner update every second call
        assert {k: len(v) for k, v in describe(state)["pruned"].items()} == {"hidden.0": 4, "hidden.1": 4}
    with pytest.raises(UserError, match="no TPP state"):
        tpp_state(optax.sgd(0.1).init(params))


@nnx.jit
def _step(model, opt, x, y):
    g = nnx.grad(lambda m: optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean())(model)
    opt.update(model, g)


def test_tpp_in_one_call_reaches_done_with_pruned_filters_exactly_zero():
    """A user ConvNet, TPP fitted into 260 steps in an nnx.jit loop: done, the pruned filters (and biases,
    BN scale/bias) exactly 0 and still 0 after more training, the hard-pruned network equal to the soft one."""
    model = ConvBN(c1=6, c2=5)
    x = jax.random.normal(jax.random.key(0), (8, *INPUTS[ConvBN]))
    y = jnp.arange(8) % 4
    tx = isotpp.prune_optax(optax.sgd(1e-2, momentum=0.9), model, "c*:0.5", steps=260, x=x)
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
    for _ in range(259):
        _step(model, opt, x, y)
    assert int(tpp_state(opt.opt_state).phase) != DONE
    _step(model, opt, x, y)
    st = tpp_state(opt.opt_state)
    assert int(st.phase) == DONE and int(st.iteration) == 260
    plan = plan_of(opt.opt_state)
    assert {k: len(v) for k, v in plan.pruned.items()} == {"c1": 3, "c2": 3}

    def pruned_entries():
        flat = flat_arrays(nnx.state(model))
        out = [np.asarray(flat["c1.kernel"])[..., list(plan.pruned["c1"])],
               np.asarray(flat["c2.kernel"])[..., list(plan.pruned["c2"])],
               np.asarray(flat["c2.bias"])[list(plan.pruned["c2"])]]
        out += [np.asarray(flat[f"{b}.{p}"])[list(plan.pruned[c])] for b, c in (("b1", "c1"), ("b2", "c2"))
                for p in ("scale", "bias")]
        return out

    assert all(np.all(a == 0) for a in pruned_entries())
    for _ in range(5):  # training on with the same optimiser: the penalties have stopped, the zeros stay
        _step(model, opt, x, y)
    assert all(np.all(a == 0) for a in pruned_entries())
    kept = np.asarray(flat_arrays(nnx.state(model))["c1.kernel"])[..., list(plan.kept("c1"))]
    assert np.all(np.abs(kept).max(axis=(0, 1, 2)) > 0)
    model.eval()
    small = isotpp.pruned_model(model, opt.opt_state, x=x)
    assert {g.name: g.size for g in channel_groups(small, x)} == {"c1": 3, "c2": 2, "fc": 4}
    np.testing.assert_allclose(np.asarray(small(x)), np.asarray(model(x)), rtol=1e-5, atol=1e-5)


def test_other_methods_in_one_call():
    model = MLP((8, 7))
    x = jax.random.normal(jax.random.key(1), (4, 6))
    params = nnx.state(model, nnx.Param)
    grads = jax.tree.map(jnp.zeros_like, params)
    # L1: zeroed at the first update and held there
    tx = isotpp.prune_optax(optax.sgd(0.1), model, "hidden.*:0.5", method="l1", x=x)
    state = tx.init(params)
    u, state = tx.update(grads, state, params)
    p = optax.apply_updates(params, u)
    plan = plan_of(state)
    k = np.asarray(flat_arrays(p)["hidden.0.kernel"])
    assert np.all(k[:, list(plan.pruned["hidden.0"])] == 0) and np.all(k[:, list(plan.kept("hidden.0"))] != 0)
    # L1+KernOrth: the penalty's gradient is the one the physically pruned network gets
    tx = isotpp.prune_optax(optax.sgd(1.0), model, "hidden.*:0.5", method="L1+KernOrth", x=x)
    state = tx.init(params)
    u, state = tx.update(grads, state, params)
    small = hard_prune(model, plan, x=x)
    from isotpp.pruning.methods import LW_ORTH_REG, penalty_fn

    names = ["hidden.0.kernel", "hidden.1.kernel", "head.kernel"]
    g_small = flat_arrays(jax.grad(lambda q: LW_ORTH_REG * penalty_fn("kernorth", names)(q))(
        nnx.state(small, nnx.Param)))
    got = np.asarray(flat_arrays(u)["hidden.1.kernel"])  # rows: hidden.0's kept, columns: hidden.1's kept
    rows, cols = list(plan.kept("hidden.0")), list(plan.kept("hidden.1"))
    np.testing.assert_allclose(-got[np.ix_(rows, cols)], np.asarray(g_small["hidden.1.kernel"]), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("method", ["KernOrth+L1", "OrthConv+L1"])
def test_penalty_then_l1_in_one_call(method):
    """X for steps - 1 iterations, then the L1 filters of the weights reached are zeroed and held at 0."""
    model = ConvBN(c1=6, c2=5) if method == "OrthConv+L1" else MLP((8, 7))
    x = jax.random.normal(jax.random.key(3), (4, *INPUTS[type(model)]))
    pattern = "c*:0.5" if method == "OrthConv+L1" else "hidden.*:0.5"
    tx = isotpp.prune_optax(optax.sgd(1e-5), model, pattern, method=method, steps=6, x=x)  # lw_opp = 1000
    params = nnx.state(model, nnx.Param)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.01), params)
    state = tx.init(params)
    update = jax.jit(tx.update)
    for _ in range(5):
        u, state = update(grads, state, params)
        params = optax.apply_updates(params, u)
    assert int(tpp_state(state).phase) != DONE
    reached = nnx.merge(nnx.graphdef(model), params, nnx.state(model, nnx.Not(nnx.Param)))
    expected = isotpp.l1_plan(reached, pattern, x=x)
    u, state = update(grads, state, params)
    params = optax.apply_updates(params, u)
    assert int(tpp_state(state).phase) == DONE and plan_of(state).pruned == expected.pruned
    flat = flat_arrays(params)
    for name, idx in expected.pruned.items():
        assert np.all(np.asarray(flat[f"{name}.kernel"])[..., list(idx)] == 0)
    with pytest.raises(UserError, match="needs steps"):
        isotpp.prune_optax(optax.sgd(1e-2), model, pattern, method=method, x=x)


def test_user_model_saved_and_reloaded(tmp_path):
    model = make_convbn()
    x = jax.random.normal(jax.random.key(2), (3, *INPUTS[ConvBN]))
    plan = Plan({"c1": 6, "c2": 5}, {"c1": (1, 4), "c2": (0,)})
    small = hard_prune(model, plan, x=x)
    small.eval()
    path = save_model(tmp_path / "small.npz", small, {"note": "user"}, constructor=make_convbn, x=x)
    loaded, info = load_model(path)  # the constructor was recorded (an importable function)
    loaded.eval()
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(small(x)))
    assert info["arch"] == "ConvBN" and info["widths"] == {"c1": 4, "c2": 4, "fc": 4} and info["meta"]["note"] == "user"
    assert loaded.input_shape == (16, 16, 3)
    # a model from __main__ / a notebook: the file says how to load it
    path2 = save_model(tmp_path / "nb.npz", small, x=x)
    with pytest.raises(UserError, match=r"load_model\(path, constructor=\.\.\.\)"):
        load_model(path2)
    again, _ = load_model(path2, constructor=ConvBN)
    again.eval()
    np.testing.assert_array_equal(np.asarray(again(x)), np.asarray(small(x)))
    with pytest.raises(UserError, match="another architecture|MLP on an input of shape"):
        load_model(path2, constructor=MLP)


def test_cli_spectrum_reads_a_user_model_file(tmp_path, capsys):
    import json

    from isotpp.cli.app import main

    model = make_convbn()
    x = np.zeros((2, *INPUTS[ConvBN]), np.float32)
    small = hard_prune(model, Plan({"c1": 6}, {"c1": (2,)}), x=x)
    path = save_model(tmp_path / "m.npz", small, constructor=make_convbn, x=x)
    assert main(["spectrum", "--checkpoint", str(path), "--samples", "2", "--json", str(tmp_path / "s.json")]) == 0
    out = json.loads((tmp_path / "s.json").read_text())
    assert out["model"] == "ConvBN" and out["n_samples"] == 2 and out["method"] == "gram" and out["mean"] > 0
    capsys.readouterr()
    assert main(["spectrum", "--list-layers", "--checkpoint", str(path)]) == 0  # its layers, at the saved widths
    table = capsys.readouterr().out
    assert f"{path} (ConvBN): 3 layers" in table and re.search(r"\| c1 +\| 5 +\| yes", table), table
