"""Each score against a case computed by hand, and the closures PrunableNet builds."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from isotpp.pai import scores as S
from isotpp.pai.masks import keep_count


def _quadratic_loss(kernels):
    """L(w) = ½ (w·x − t)², x = (1, 2), t = 0: ∇L = (w·x) x, H = x xᵀ."""
    x = jnp.array([1.0, 2.0])
    return 0.5 * jnp.dot(kernels["w"], x) ** 2


W = {"w": jnp.array([3.0, -1.0])}  # w·x = 1, g = (1, 2), Hg = x xᵀ g = 5 x = (5, 10)


def test_magnitude_by_hand():
    np.testing.assert_array_equal(S.magnitude_scores({"a": jnp.array([-2.0, 0.5, 0.0])})["a"], [2.0, 0.5, 0.0])


def test_random_scores_are_uniform_and_reproducible():
    k = {"a": jnp.zeros((100, 50)), "b": jnp.zeros(10)}
    s1, s2 = S.random_scores(jax.random.key(3), k), S.random_scores(jax.random.key(3), k)
    np.testing.assert_array_equal(s1["a"], s2["a"])
    a = np.asarray(s1["a"])
    assert a.shape == (100, 50) and a.min() >= 0 and a.max() < 1 and abs(a.mean() - 0.5) < 0.02
    assert not np.array_equal(np.asarray(s1["b"]), a[0, :10])  # different numbers in every kernel
    assert not np.array_equal(a, np.asarray(S.random_scores(jax.random.key(4), k)["a"]))


def test_snip_by_hand():
    # |w ⊙ g| = |(3, -1) ⊙ (1, 2)| = (3, 2)
    np.testing.assert_allclose(S.snip_scores(_quadratic_loss, W)["w"], [3.0, 2.0])


def test_grasp_by_hand():
    # S = −w ⊙ Hg = −(3, −1) ⊙ (5, 10) = (−15, 10); GraSP removes the largest S, so it keeps w_1
    np.testing.assert_allclose(S.grasp_scores(_quadratic_loss, W)["w"], [-15.0, 10.0])
    keep = S.keep_priority("grasp", S.grasp_scores(_quadratic_loss, W))
    np.testing.assert_allclose(keep["w"], [15.0, -10.0])
    assert S.keep_priority("snip", {"w": jnp.ones(1)})["w"][0] == 1.0


def test_grasp_hessian_on_a_non_quadratic_loss():
    """L = Σ w³/3 + w_0 w_1: g = (w0² + w1, w1² + w0), H = [[2w0, 1], [1, 2w1]]."""
    def loss(k):
        w = k["w"]
        return jnp.sum(w ** 3) / 3 + w[0] * w[1]

    w0, w1 = 1.0, -2.0
    g = np.array([w0 ** 2 + w1, w1 ** 2 + w0])
    hg = np.array([[2 * w0, 1.0], [1.0, 2 * w1]]) @ g
    np.testing.assert_allclose(S.grasp_scores(loss, {"w": jnp.array([w0, w1])})["w"], -np.array([w0, w1]) * hg,
                               rtol=1e-6)


def _two_layer_r(kernels):
    """R = 1ᵀ A1 A2 1 for a 2→2→1 linear chain (A1: (2, 2), A2: (2, 1)), all-ones input."""
    return jnp.sum(jnp.ones((1, 2)) @ kernels["a1"] @ kernels["a2"])


def test_synflow_scores_by_hand():
    # ∂R/∂A1[i,j] = A2[j], ∂R/∂A2[j] = Σ_i A1[i,j]; scores use |w| (signs do not matter)
    k = {"a1": jnp.array([[1.0, -2.0], [3.0, 4.0]]), "a2": jnp.array([[-1.0], [1.0]])}
    s = S.synflow_scores(_two_layer_r, k)
    np.testing.assert_allclose(s["a1"], [[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_allclose(s["a2"], [[4.0], [6.0]])
    # a pruned weight scores 0 and no longer feeds the others' paths
    s = S.synflow_scores(_two_layer_r, k, {"a1": jnp.array([[True, True], [False, True]]),
                                           "a2": jnp.array([[True], [True]])})
    np.testing.assert_allclose(s["a1"], [[1.0, 2.0], [0.0, 4.0]])
    np.testing.assert_allclose(s["a2"], [[1.0], [6.0]])


def test_iterative_synflow_by_hand():
    """6 weights, density 1/3 in 2 rounds: round 1 keeps round(6·(1/3)^½) = 3, round 2 keeps 2.

    Round 1 scores: a1 = [[1, 2], [3, 4]], a2 = [4, 6]: keep a2[1] (6) and the two 4s (a1[1,1]
    before a2[0] in flat order... both kept). Round 2 on the survivors: a1[1,1] = 1·4 = 4,
    a2[0] = 1·0 = 0 (its column lost every weight), a2[1] = 1·4 = 4: keep a1[1,1] and a2[1].
    """
    k = {"a1": jnp.array([[1.0, 2.0], [3.0, 4.0]]), "a2": jnp.array([[1.0], [1.0]])}
    assert keep_count((1 / 3) ** 0.5, 6) == 3 and keep_count(1 / 3, 6) == 2
    m = S.synflow_masks(_two_layer_r, k, 1 / 3, rounds=2)
    assert np.asarray(m["a1"]).tolist() == [[False, False], [False, True]]
    assert np.asarray(m["a2"]).tolist() == [[False], [True]]
    m1 = S.synflow_masks(_two_layer_r, k, (1 / 3) ** 0.5, rounds=1)
    assert np.asarray(m1["a1"]).tolist() == [[False, False], [False, True]]
    assert np.asarray(m1["a2"]).tolist() == [[True], [True]]


def test_prunable_net_closures_by_hand():
    """On a real NNX MLP: the kernels, SynFlow's R through |θ| (biases too), and g0."""
    from isotpp.models import create_model
    from isotpp.pai.net import PrunableNet

    model = create_model("mlp", depth=2, width=3, input_dim=2, num_classes=2, act="relu", init="torch", seed=1)
    net = PrunableNet.from_model(model)
    assert net.names == ("net.0.kernel", "net.2.kernel") and net.n_weights == 2 * 3 + 3 * 2
    k = {n: np.asarray(v) for n, v in net.kernels().items()}
    from isotpp.models.program import flat_arrays

    b = {n: np.asarray(v) for n, v in flat_arrays(net.params).items() if n.endswith("bias")}
    # R = Σ (|b2| + |W2|ᵀ relu(|W1|ᵀ 1 + |b1|)): everything positive, the ReLU is the identity
    h = np.abs(k["net.0.kernel"]).T @ np.ones(2) + np.abs(b["net.0.bias"])
    r_hand = np.sum(np.abs(k["net.2.kernel"]).T @ h + np.abs(b["net.2.bias"]))
    r = net.output_sum_fn()
    np.testing.assert_allclose(float(r({n: jnp.abs(v) for n, v in net.kernels().items()})), r_hand, rtol=1e-6)
    # g0 = (1/B) Σ_i ∇ℓ_i, from per-example gradients: with B = 3 dividing N = 6 it is the sum of the
    # two batch-mean gradients; with B = 4 the padded chunk adds nothing, no example counts twice
    x = jax.random.normal(jax.random.key(0), (6, 2))
    y = jnp.array([0, 1, 1, 0, 1, 0])
    per_example = jax.jit(jax.vmap(lambda xi, yi: jax.grad(net.loss_fn(xi[None], yi[None]))(net.kernels())))(x, y)
    for b in (3, 4):
        g0 = net.gradient_sum(x, y, b)
        for n in net.names:
            np.testing.assert_allclose(g0[n], per_example[n].sum(0) / b, rtol=1e-5, atol=1e-7)


def test_one_shot_masks_give_exact_densities():
    from isotpp.models import create_model
    from isotpp.pai.net import PrunableNet
    from isotpp.pai.registry import one_shot_masks

    net = PrunableNet.from_model(create_model("mlp", depth=3, width=10, input_dim=8, num_classes=3, act="relu",
                                              init="kaiming"))
    x = jax.random.normal(jax.random.key(0), (16, 8))
    y = jnp.arange(16) % 3
    for method in ("random", "magnitude", "snip", "grasp", "synflow"):
        by_d = one_shot_masks(method, net, (0.1,), key=jax.random.key(1), x=x, y=y, synflow_rounds=5)
        for d, m in by_d.items():
            assert sum(int(v.sum()) for v in m.values()) == keep_count(d, net.n_weights), (method, d)
    by_d = one_shot_masks("magnitude", net, (0.2,), key=jax.random.key(1), scope="layerwise")
    for n, s in net.shapes().items():
        assert int(by_d[0.2][n].sum()) == keep_count(0.2, int(np.prod(s)))


@pytest.mark.parametrize("name,expected", [("SNIP", ("snip", False)), ("grasp+AI", ("grasp", True)),
                                           (" AutoSparse + ai", ("autosparse", True))])
def test_method_names(name, expected):
    from isotpp.pai.registry import display_name, parse_method

    assert parse_method(name) == expected
    assert display_name("synflow+ai") == "SynFlow+AI"


@pytest.mark.parametrize("bad", ["magic", "snip+orthp", "+ai", ""])
def test_unknown_methods_are_user_errors(bad):
    from isotpp.errors import UserError
    from isotpp.pai.registry import parse_method

    with pytest.raises(UserError, match="unknown method"):
        parse_method(bad)
