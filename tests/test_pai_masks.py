"""Masks: the exact count (round half up), the tie rule, global vs layer-wise, and the
optax wrapper that keeps pruned weights at exactly zero through training."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from isotpp.errors import UserError
from isotpp.models.program import flat_arrays
from isotpp.pai.masked_optim import (
    MaskedState,
    get_masks,
    masked,
    masked_train_state,
    set_masks,
)
from isotpp.pai.masks import (
    apply_masks,
    check_density,
    keep_count,
    layer_densities,
    mask_density,
    masks_from_scores,
    parse_densities,
    top_count_masks,
    topk_mask,
)


def test_keep_count_rounds_half_up_on_the_printed_decimal():
    assert keep_count(0.015, 1000) == 15  # 0.015 * 1000 is 14.999999999999998 in binary floats
    assert keep_count(0.005, 300) == 2  # 1.5 -> 2 (half up)
    assert keep_count(0.0025, 200) == 1  # 0.5 -> 1
    assert keep_count(0.001, 100) == 1  # 0.1 -> 0, but at least one weight survives
    assert keep_count(1.0, 7) == 7
    assert keep_count(0.1, 266_200) == 26_620 and keep_count(0.005, 266_200) == 1331


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.0001, 2, float("nan"), float("inf"), "abc", None])
def test_density_outside_0_1_is_a_user_error(bad):
    with pytest.raises(UserError, match="density"):
        check_density(bad)
    with pytest.raises(UserError, match="density"):
        masks_from_scores({"a": jnp.ones(4)}, bad)


def test_parse_densities():
    assert parse_densities("0.1, 5%,0.5%") == (0.1, 0.05, 0.005)
    assert parse_densities([1, 0.2]) == (1.0, 0.2)
    for bad in ("", "0.1,1.5", "0,0.1", "x%", "-1%"):
        with pytest.raises(UserError):
            parse_densities(bad)


def test_topk_ties_go_to_the_lower_index_and_never_over_prune():
    s = jnp.array([1.0, 2.0, 2.0, 2.0, 0.0, -0.0])
    np.testing.assert_array_equal(topk_mask(s, 2), [False, True, True, False, False, False])
    np.testing.assert_array_equal(topk_mask(s, 4), [True, True, True, True, False, False])
    # -0.0 and 0.0 are one value: the index decides
    np.testing.assert_array_equal(topk_mask(jnp.array([0.0, -0.0, 0.0, 1.0]), 2), [True, False, False, True])
    # all equal: the first k
    for k in range(1, 6):
        assert np.asarray(topk_mask(jnp.zeros(5), k)).tolist() == [i < k for i in range(5)]


def test_alive_weights_only_even_when_dead_ones_tie():
    s = jnp.array([0.0, 0.0, 0.0, 1.0])
    alive = jnp.array([False, True, True, True])
    np.testing.assert_array_equal(topk_mask(s, 2, alive), [False, True, False, True])


def test_global_masks_have_the_exact_count_and_follow_the_flat_order():
    # every score tied: a threshold rule would keep all 10 or none; we keep exactly k, by flat index
    scores = {"a": jnp.ones((2, 3)), "b": jnp.ones((4,))}
    m = masks_from_scores(scores, 0.35)  # round(3.5) = 4 of 10
    np.testing.assert_array_equal(m["a"], [[True, True, True], [True, False, False]])
    np.testing.assert_array_equal(m["b"], [False] * 4)
    assert mask_density(m) == 0.4
    # hand case with distinct scores across layers: the 3 largest of all
    scores = {"a": jnp.array([[0.1, 0.9], [0.5, 0.2]]), "b": jnp.array([0.8, 0.3, 0.05])}
    m = masks_from_scores(scores, 3 / 7)
    assert np.asarray(m["a"]).tolist() == [[False, True], [True, False]]
    assert np.asarray(m["b"]).tolist() == [True, False, False]


def test_layerwise_masks_keep_the_density_in_every_layer():
    key = jax.random.key(0)
    scores = {"a": jnp.round(jax.random.uniform(key, (30, 20)), 1),  # many ties
              "b": jnp.zeros((7, 3)), "c": jax.random.uniform(jax.random.fold_in(key, 1), (5,))}
    for d in (1.0, 0.5, 0.1, 0.015, 0.001):
        m = masks_from_scores(scores, d, scope="layerwise")
        for n, s in scores.items():
            assert int(m[n].sum()) == keep_count(d, s.size), (n, d)
        g = masks_from_scores(scores, d)
        assert sum(int(v.sum()) for v in g.values()) == keep_count(d, 600 + 21 + 5)
    dens = layer_densities(masks_from_scores(scores, 0.5, scope="layerwise"))
    assert dens == {"a": 0.5, "b": 11 / 21, "c": 0.6}


def test_top_count_masks_refuses_impossible_counts():
    with pytest.raises(ValueError):
        top_count_masks({"a": jnp.ones(3)}, 4)
    with pytest.raises(ValueError):
        top_count_masks({"a": jnp.ones(3)}, 2, alive={"a": jnp.array([True, False, False])})
    with pytest.raises(UserError, match="NaN"):
        top_count_masks({"a": jnp.array([1.0, jnp.nan])}, 1)


def test_apply_masks_zeroes_masked_kernels_only():
    p = {"k": jnp.ones((2, 2)), "b": jnp.ones(2)}
    out = apply_masks(p, {"k": jnp.array([[True, False], [False, True]])})
    np.testing.assert_array_equal(out["k"], [[1, 0], [0, 1]])
    np.testing.assert_array_equal(out["b"], [1, 1])


# ------------------------------------------------------------------ the optax wrapper


def test_masked_sgd_step_by_hand():
    """PyTorch SGD (momentum 0.9, wd 0.1) on the kept weight, nothing at all on the pruned one."""
    from isotpp.training.engine import reference_sgd, set_learning_rate

    tx = masked(reference_sgd(0.5, weight_decay=0.1), ["w"])
    params = {"w": jnp.array([1.0, 2.0]), "b": jnp.array([3.0])}
    state = set_masks(tx.init(params), {"w": jnp.array([True, False])})
    params = apply_masks(params, get_masks(state))
    buf_w, w, b, buf_b = 0.0, 1.0, 3.0, 0.0
    for g in ([0.4, 7.0, 1.0], [-0.2, -3.0, 0.5]):
        grads = {"w": jnp.array(g[:2]), "b": jnp.array(g[2:])}
        state = set_learning_rate(state, 0.5)
        u, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, u)
        buf_w = 0.9 * buf_w + g[0] + 0.1 * w
        w = w - 0.5 * buf_w
        buf_b = 0.9 * buf_b + g[2] + 0.1 * b
        b = b - 0.5 * buf_b
        np.testing.assert_allclose(params["w"], [w, 0.0], rtol=1e-6)
        np.testing.assert_allclose(params["b"], [b], rtol=1e-6)
        assert float(params["w"][1]) == 0.0
    # the momentum buffer never saw the pruned weight's gradient
    trace = flat_arrays(state.inner)
    mom = [v for k, v in trace.items() if k.endswith("trace.w")]
    assert mom and float(mom[0][1]) == 0.0


def test_unmasked_parameters_become_exactly_zero_after_one_update():
    tx = masked(optax.sgd(0.1, momentum=0.9), ["w"])
    params = {"w": jnp.array([0.3, -0.7, 1.1])}
    state = set_masks(tx.init(params), {"w": jnp.array([True, False, False])})
    u, _ = tx.update({"w": jnp.array([1.0, 1.0, 1.0])}, state, params)
    out = optax.apply_updates(params, u)
    assert np.asarray(out["w"][1:]).tolist() == [0.0, 0.0]
    with pytest.raises(KeyError):
        set_masks(state, {"v": jnp.ones(3, bool)})
    with pytest.raises(ValueError):
        set_masks(state, {"w": jnp.ones(2, bool)})


def test_masked_weights_stay_exactly_zero_through_vmapped_training():
    """Two runs with different masks, momentum and weight decay, several epochs: pruned entries stay 0.0,
    their momentum stays 0.0, kept entries move, and each run keeps its own mask."""
    from isotpp.data.pipeline import epoch_batches
    from isotpp.models import create_model
    from isotpp.training.engine import (
        LRSchedule,
        ModelFns,
        RunGroup,
        reference_sgd,
        stack_runs,
        unstack_run,
    )

    model = create_model("mlp", depth=3, width=16, input_dim=8, num_classes=3, act="relu", init="kaiming")
    fns, params, rest = ModelFns.from_model(model)
    names = [n for n in flat_arrays(params) if n.endswith("kernel")]
    flat = flat_arrays(params)
    masks = [masks_from_scores({n: jax.random.uniform(jax.random.key(i + 10 * r), flat[n].shape)
                                for i, n in enumerate(names)}, d) for r, d in enumerate((0.3, 0.1))]
    tx = masked(reference_sgd(0.1, weight_decay=0.05), names)
    group = RunGroup(fns, tx, stack_runs([masked_train_state(params, rest, tx, m) for m in masks]),
                     [LRSchedule.parse("0.1")] * 2)
    x = jax.random.normal(jax.random.key(1), (64, 8))
    y = jax.random.randint(jax.random.key(2), (64,), 0, 3)
    for epoch in range(4):
        group.run_epoch(x, y, epoch_batches(jax.random.key(epoch), 64, 16), epoch)
    for r, m in enumerate(masks):
        p = flat_arrays(unstack_run(group.state.params, r))
        opt = unstack_run(group.state.opt_state, r)
        assert isinstance(opt, MaskedState)
        trace = {k.rsplit("trace.", 1)[-1]: v for k, v in flat_arrays(opt.inner).items() if "trace." in k}
        for n in names:
            pruned = ~np.asarray(m[n])
            assert np.all(np.asarray(p[n])[pruned] == 0.0)
            assert np.all(np.asarray(trace[n])[pruned] == 0.0)
            np.testing.assert_array_equal(np.asarray(opt.masks[n]), np.asarray(m[n]))
            kept = np.asarray(m[n])
            assert np.any(np.asarray(p[n])[kept] != np.asarray(flat[n])[kept])
