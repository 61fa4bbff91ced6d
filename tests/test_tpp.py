"""TPP as an optax wrapper: schedule, penalties (by hand), zero-out, saving."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from isotpp.models import create_model, layer_names
from isotpp.models.program import flat_arrays, map_named
from isotpp.pruning.groups import channel_groups
from isotpp.pruning.plan import Plan, hard_prune, soft_prune
from isotpp.pruning.tpp import (
    DONE,
    STABILIZE,
    UPDATE,
    TPPConfig,
    describe,
    targets_for,
    tpp,
)

# reg: 0.1 per tick, a tick every 2 iterations: the cap 1.0 is reached at iteration 20;
# zero-out every 2 iterations of stabilising; done 6 iterations later.
CFG = TPPConfig(lw_opp=1000.0, reg_granularity=0.1, update_reg_interval=2, reg_cap=1.0,
                stabilize_iters=6, zero_out_interval=2)
LR = 0.01


def _mlp():
    model = create_model("mlp", depth=3, width=6, input_dim=5, num_classes=3, act="linear", init="gaussian", seed=0)
    plan = Plan({"net.0": 6, "net.2": 6}, {"net.0": (1, 4), "net.2": (0,)})
    return model, plan


def _setup(model, plan, cfg=CFG, inner=None):
    params = nnx.state(model, nnx.Param)
    tx = tpp(inner or optax.sgd(LR), plan, targets_for(plan, channel_groups(model), layer_names(model), cfg), cfg)
    return params, tx


def _zero_grads(params):
    return jax.tree.map(jnp.zeros_like, params)


def test_total_iterations_match_the_reference():
    assert CFG.update_iters == 20 and CFG.total_iters == 27
    assert TPPConfig().update_iters == 100_000 and TPPConfig().total_iters == 110_001
    assert TPPConfig(update_reg_interval=5, stabilize_iters=40_000).total_iters == 90_001


def test_schedule_phases_and_reg():
    model, plan = _mlp()
    params, tx = _setup(model, plan)
    state = tx.init(params)
    update = jax.jit(tx.update)
    regs, phases = [], []
    for _ in range(CFG.total_iters):
        _, state = update(_zero_grads(params), state, params)
        regs.append(float(state.reg))
        phases.append(int(state.phase))
    # reg is updated at iterations 0, 2, 4, … to 0.1 · i / 2 and held in between
    expected = [0.1 * (i - i % 2) / 2 for i in range(21)] + [1.0] * 6
    np.testing.assert_allclose(regs, expected, atol=1e-6)
    assert phases[:20] == [UPDATE] * 20  # iterations 0..19
    assert phases[20:26] == [STABILIZE] * 6  # the cap is reached at iteration 20
    assert phases[26] == DONE  # 20 + 6 iterations later, after that update
    assert int(state.stabilize_start) == 20 and int(state.iteration) == 27


def _gram_grad_by_hand(kernel, pruned):
    """d/dK of mean((G - T)^2), T = stop_grad(G) with pruned rows/cols zeroed, G = W W^T, W = K^T."""
    w = np.asarray(kernel, np.float64).T
    n = w.shape[0]
    keep = 1.0 - np.asarray(pruned, np.float64)
    g = w @ w.T
    d = g - g * np.outer(keep, keep)
    return (4.0 / n**2 * d @ w).T, float(np.mean(d**2))


def test_one_update_by_hand():
    """Iteration 5 (reg = 0.2): data grads + lw·reg·∇Gram + reg·w on pruned entries, then SGD."""
    model, plan = _mlp()
    params, tx = _setup(model, plan)
    state = tx.init(params)
    rng = np.random.default_rng(0)
    grads = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)
    for _ in range(5):  # iterations 0..4 with zero gradients and no movement of params
        _, state = tx.update(_zero_grads(params), state, params)
    assert float(state.reg) == pytest.approx(0.2)
    updates, state = tx.update(grads, state, params)
    assert float(state.reg) == pytest.approx(0.2)  # iteration 5 is not a tick
    p, g, u = flat_arrays(params), flat_arrays(grads), flat_arrays(updates)
    reg = 0.2
    total_gram = 0.0
    for layer, pruned in (("net.0", (1, 4)), ("net.2", (0,))):
        mask = np.zeros(6)
        mask[list(pruned)] = 1
        gk, value = _gram_grad_by_hand(p[f"{layer}.kernel"], mask)
        total_gram += value
        exp_k = np.asarray(g[f"{layer}.kernel"]) + 1000 * reg * gk + reg * mask[None, :] * np.asarray(p[f"{layer}.kernel"])
        exp_b = np.asarray(g[f"{layer}.bias"]) + reg * mask * np.asarray(p[f"{layer}.bias"])
        np.testing.assert_allclose(np.asarray(u[f"{layer}.kernel"]), -LR * exp_k, rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(np.asarray(u[f"{layer}.bias"]), -LR * exp_b, rtol=1e-4, atol=1e-7)
    # the unpruned classifier gets only its data gradient
    np.testing.assert_allclose(np.asarray(u["net.4.kernel"]), -LR * np.asarray(g["net.4.kernel"]), rtol=1e-6)
    assert float(state.gram_penalty) == pytest.approx(total_gram, rel=1e-4)


@pytest.mark.parametrize("weight_reg", [True, False])
def test_weight_reg_false_drops_the_kernel_and_bias_l2_and_still_zeroes_them(weight_reg):
    """The reference's --no_weight_reg: no reg·w on the pruned kernels nor their biases (the Gram penalty
    stays); the zero-out still zeroes both at the end."""
    import dataclasses

    cfg = dataclasses.replace(CFG, weight_reg=weight_reg)
    model, plan = _mlp()
    params, tx = _setup(model, plan, cfg)
    state = tx.init(params)
    for _ in range(5):
        _, state = tx.update(_zero_grads(params), state, params)
    updates, state = tx.update(_zero_grads(params), state, params)
    p, u = flat_arrays(params), flat_arrays(updates)
    reg, l2 = 0.2, float(weight_reg)
    for layer, pruned in (("net.0", (1, 4)), ("net.2", (0,))):
        mask = np.zeros(6)
        mask[list(pruned)] = 1
        gk, _ = _gram_grad_by_hand(p[f"{layer}.kernel"], mask)
        exp_k = 1000 * reg * gk + l2 * reg * mask[None, :] * np.asarray(p[f"{layer}.kernel"])
        np.testing.assert_allclose(np.asarray(u[f"{layer}.kernel"]), -LR * exp_k, rtol=1e-4, atol=1e-8)
        np.testing.assert_allclose(np.asarray(u[f"{layer}.bias"]),
                                   -LR * l2 * reg * mask * np.asarray(p[f"{layer}.bias"]), rtol=1e-5, atol=1e-9)
    update = jax.jit(tx.update)
    for _ in range(cfg.total_iters - 6):
        updates, state = update(_zero_grads(params), state, params)
        params = optax.apply_updates(params, updates)
    assert int(state.phase) == DONE
    flat = flat_arrays(params)
    assert np.all(np.asarray(flat["net.0.kernel"])[:, [1, 4]] == 0) and np.all(np.asarray(flat["net.0.bias"])[[1, 4]] == 0)
    assert np.all(np.asarray(flat["net.2.kernel"])[:, [0]] == 0)


def test_batchnorm_scale_and_bias_of_pruned_channels_are_regularised():
    widths = {"features.0": 4, "features.4": 5}
    model = create_model("vgg11", widths={**{n: 4 for n in layer_names(create_model("vgg11"))[:-1]}, **widths},
                         num_classes=3, init="kaiming", seed=1)
    plan = Plan({"features.0": 4}, {"features.0": (2,)})
    params, tx = _setup(model, plan)
    # make the BN parameters non-trivial
    params = map_named(lambda n, x: x + 0.5 if n.endswith(".scale") or n.startswith("features.1.") else x, params)
    state = tx.init(params)
    for _ in range(5):
        _, state = tx.update(_zero_grads(params), state, params)
    updates, state = tx.update(_zero_grads(params), state, params)
    u, p = flat_arrays(updates), flat_arrays(params)
    reg = 0.2
    for name in ("features.1.scale", "features.1.bias"):
        expected = np.zeros(4)
        expected[2] = -LR * reg * float(p[name][2])
        np.testing.assert_allclose(np.asarray(u[name]), expected, rtol=1e-5, atol=1e-9)
    # the running statistics are not parameters: untouched
    assert "features.1.mean" not in u


def test_bn_reg_false_leaves_the_batchnorm_out_of_the_l2():
    import dataclasses

    widths = {n: 4 for n in layer_names(create_model("vgg11"))[:-1]}
    model = create_model("vgg11", widths=widths, num_classes=3, init="kaiming", seed=1)
    plan = Plan({"features.0": 4}, {"features.0": (2,)})
    cfg = dataclasses.replace(CFG, bn_reg=False)
    params, tx = _setup(model, plan, cfg)
    params = map_named(lambda n, x: x + 0.5 if n.startswith("features.1.") else x, params)
    state = tx.init(params)
    for _ in range(5):
        _, state = tx.update(_zero_grads(params), state, params)
    updates, _ = tx.update(_zero_grads(params), state, params)
    u = flat_arrays(updates)
    for name in ("features.1.scale", "features.1.bias"):
        np.testing.assert_array_equal(np.asarray(u[name]), 0.0)
    # the BN slots are still zeroed out (the reference's zero-out ignores --no_bn_reg)
    target = targets_for(plan, channel_groups(model), layer_names(model), cfg)[0]
    assert {s.param for s in target.slots} >= {"features.1.scale", "features.1.bias", "features.0.kernel"}
    assert {s.param for s in target.reg_slots} == {"features.0.kernel"}


def test_zero_out_one_more_layer_every_interval():
    """net.0 (layer 0) is zeroed from stabilising iteration 2, net.2 (layer 1) from 4."""
    model, plan = _mlp()
    params, tx = _setup(model, plan)
    state = tx.init(params)
    rng = np.random.default_rng(1)
    update = jax.jit(tx.update)
    zeroed = {}
    for i in range(CFG.total_iters):
        grads = jax.tree.map(lambda q: jnp.asarray(0.01 * rng.standard_normal(q.shape), q.dtype), params)
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
        flat = flat_arrays(params)
        zeroed[i] = (bool(np.all(np.asarray(flat["net.0.kernel"])[:, [1, 4]] == 0)
                          and np.all(np.asarray(flat["net.0.bias"])[[1, 4]] == 0)),
                     bool(np.all(np.asarray(flat["net.2.kernel"])[:, [0]] == 0)))
    assert zeroed[21] == (False, False)
    assert zeroed[22] == (True, False) and zeroed[23] == (True, False)
    assert zeroed[24] == (True, True) and zeroed[26] == (True, True)
    # kept filters were never zeroed
    assert np.all(np.asarray(flat_arrays(params)["net.0.kernel"])[:, [0, 2, 3, 5]] != 0)
    # at the end the soft-pruned network equals the physically pruned one
    model_end = nnx.merge(nnx.graphdef(model), params, nnx.state(model, nnx.Not(nnx.Param)))
    x = jnp.asarray(rng.standard_normal((4, 5)), jnp.float32)
    small = hard_prune(model_end, plan)
    np.testing.assert_allclose(np.asarray(small(x)), np.asarray(soft_prune(model_end, plan)(x)), rtol=1e-5, atol=1e-6)


def test_state_is_saveable_and_resumes_exactly(tmp_path):
    model, plan = _mlp()
    params, tx = _setup(model, plan, inner=optax.sgd(LR, momentum=0.9))
    update = jax.jit(tx.update)

    def run(params, state, start, stop):
        for i in range(start, stop):
            g = jax.tree.map(lambda q, i=i: jnp.full(q.shape, 0.01 * (i % 3 - 1), q.dtype), params)
            u, state = update(g, state, params)
            params = optax.apply_updates(params, u)
        return params, state

    p_full, s_full = run(params, tx.init(params), 0, 24)
    p_half, s_half = run(params, tx.init(params), 0, 11)
    leaves, treedef = jax.tree.flatten((p_half, s_half))
    np.savez(tmp_path / "ck.npz", *[np.asarray(x) for x in leaves])
    with np.load(tmp_path / "ck.npz") as f:
        restored = jax.tree.unflatten(treedef, [jnp.asarray(f[f"arr_{i}"]) for i in range(len(leaves))])
    p_res, s_res = run(*restored, 11, 24)
    for a, b in zip(jax.tree.leaves((p_full, s_full)), jax.tree.leaves((p_res, s_res))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    info = describe(s_res)
    assert info["phase"] == "stabilize_reg" and info["iteration"] == 24
    assert info["pruned"] == {"net.0": [1, 4], "net.2": [0]}


def test_two_runs_vmapped_equal_two_separate_runs():
    model, plan = _mlp()
    params, tx = _setup(model, plan, inner=optax.sgd(LR, momentum=0.9))
    p2 = jax.tree.map(lambda x: x * 1.1, params)
    stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), params, p2)
    grads = jax.tree.map(lambda x: jnp.ones_like(x) * 0.01, params)

    def steps(p, n=23):
        s = tx.init(p)
        for _ in range(n):
            u, s = tx.update(grads, s, p)
            p = optax.apply_updates(p, u)
        return p

    vm = jax.jit(jax.vmap(steps))(stacked)
    for i, p in enumerate((params, p2)):
        sep = jax.jit(steps)(p)
        for a, b in zip(jax.tree.leaves(sep), jax.tree.leaves(vm)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b)[i], rtol=1e-5, atol=1e-7)
