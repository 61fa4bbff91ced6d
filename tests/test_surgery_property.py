"""Property: for random architectures and random plans, the soft-pruned (zeroed)
network and the hard-pruned (smaller) network give the same outputs in eval mode.

A random architecture is a built-in one whose every group (inner convs and
residual streams alike) was first hard-pruned by a random plan; a second random
plan is then applied both ways. BatchNorm statistics and affine parameters are
randomised so that no channel is trivially zero.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from isotpp.models import create_model, widths_of
from isotpp.models.program import map_named
from isotpp.pruning.groups import channel_groups
from isotpp.pruning.plan import Plan, hard_prune, soft_prune

RATIOS = (0.0, 0.1, 0.5, 0.9)


def _random_plan(model, data) -> Plan:
    sizes, pruned = {}, {}
    for g in channel_groups(model):
        if not g.prunable:
            continue
        ratio = data.draw(st.sampled_from(RATIOS), label=f"ratio {g.name}")
        seed = data.draw(st.integers(0, 2**31 - 1), label=f"seed {g.name}")
        k = min(round(ratio * g.size), g.size - 1)
        sizes[g.name] = g.size
        pruned[g.name] = tuple(sorted(np.random.default_rng(seed).choice(g.size, k, replace=False).tolist()))
    return Plan(sizes, pruned)


def _randomise_bn(model, seed):
    key = jax.random.key(seed)

    def f(name, x):
        k = jax.random.fold_in(key, hash(name) % 2**31)
        if name.endswith(".var"):
            return x * jax.random.uniform(k, x.shape, minval=0.5, maxval=2.0)
        if name.endswith(".mean") or (name.endswith(".bias") and ".bn" in f".{name}"):
            return x + 0.2 * jax.random.normal(k, x.shape)
        if name.endswith(".scale"):
            return x * jax.random.uniform(k, x.shape, minval=0.5, maxval=1.5)
        return x

    nnx.update(model, map_named(f, nnx.state(model)))
    return model


@nnx.jit
def _forward(model, x):
    """One compiled program per architecture: a third of the time of running it op by op (new widths every example)."""
    return model(x)


def _check(name, data, input_shape, narrow=1, **kw):
    """``narrow``: divide the canonical widths first (same topology, less compute)."""
    widths = None
    if narrow > 1:
        canonical = widths_of(nnx.eval_shape(lambda: create_model(name, **kw)))  # shapes only: no full-width init
        classifier = list(canonical)[-1]
        widths = {k: max(2, v // narrow) for k, v in canonical.items() if k != classifier}
    model = create_model(name, init="kaiming", seed=data.draw(st.integers(0, 99), label="init seed"),
                         widths=widths, **kw)
    model = hard_prune(model, _random_plan(model, data))  # a random architecture
    _randomise_bn(model, data.draw(st.integers(0, 99), label="bn seed"))
    plan = _random_plan(model, data)
    small = hard_prune(model, plan)
    soft = soft_prune(model, plan)
    x = jax.random.normal(jax.random.key(0), (2, *input_shape))
    soft.eval()
    small.eval()
    a, b = np.asarray(_forward(soft, x)), np.asarray(_forward(small, x))
    scale = max(1.0, float(np.abs(a).max()))
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=2e-5 * scale)
    # the smaller architecture is what its widths record says it is
    rebuilt = small.build_config.create(widths=widths_of(small), abstract=True)
    assert jax.tree.map(jnp.shape, nnx.state(rebuilt)) == jax.tree.map(jnp.shape, nnx.state(small))


_SETTINGS = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow], "derandomize": True}


@settings(max_examples=12, **_SETTINGS)
@given(data=st.data(), depth=st.integers(2, 5), width=st.integers(2, 12), act=st.sampled_from(["linear", "relu", "tanh"]))
def test_mlps(data, depth, width, act):
    _check("mlp", data, (6,), depth=depth, width=width, act=act, input_dim=6, num_classes=4)


@settings(max_examples=6, **_SETTINGS)
@given(data=st.data())
def test_lenet5(data):
    _check("lenet5", data, (32, 32, 1))


@settings(max_examples=6, **_SETTINGS)
@given(data=st.data(), name=st.sampled_from(["resnet20", "resnet8_B"]))
def test_cifar_resnets(data, name):
    _check(name, data, (16, 16, 3), narrow=2)


@settings(max_examples=3, **_SETTINGS)
@given(data=st.data())
def test_vgg11(data):
    _check("vgg11", data, (32, 32, 3), narrow=8)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
@settings(max_examples=2, **_SETTINGS)
@given(data=st.data())
def test_imagenet_resnets(data, name):
    _check(name, data, (32, 32, 3), narrow=16, num_classes=10)


# --------------------------------------------------------------------------
# User models (not from the zoo): groups traced, surgery on the module's own variables.
# --------------------------------------------------------------------------


def _user_model(data):
    from user_models import INPUTS, MLP, Concat, ConvBN, Residual, Separable

    w = st.integers(2, 7)
    kind = data.draw(st.sampled_from(["mlp", "convbn", "id", "A", "B", "concat", "separable"]), label="kind")
    seed = data.draw(st.integers(0, 99), label="seed")
    if kind == "mlp":
        depth = data.draw(st.integers(1, 3), label="depth")
        model = MLP(tuple(data.draw(w, label=f"w{i}") for i in range(depth)), seed=seed)
    elif kind == "convbn":
        model = ConvBN(data.draw(w, label="c1"), data.draw(w, label="c2"), seed=seed)
    elif kind in ("id", "A", "B"):
        model = Residual(kind, data.draw(w, label="stem"), data.draw(w, label="mid"), data.draw(w, label="out"),
                         seed=seed)
    elif kind == "concat":
        model = Concat(data.draw(w, label="p"), data.draw(w, label="q"), data.draw(w, label="r"), seed=seed)
    else:
        model = Separable(data.draw(w, label="c"), data.draw(st.integers(1, 2), label="mult"),
                          data.draw(w, label="out"), seed=seed)
    return model, jax.random.normal(jax.random.key(seed), (2, *INPUTS[type(model)]))


@settings(max_examples=10, **_SETTINGS)
@given(data=st.data())
def test_user_models_soft_equals_hard(data):
    """Random user architectures, a random plan on every traced group: zeroing == removing (eval mode),
    and the smaller module's own groups are the first one's minus the removed channels."""
    model, x = _user_model(data)
    _randomise_bn(model, data.draw(st.integers(0, 99), label="bn seed"))
    groups = channel_groups(model, x)
    sizes, pruned = {}, {}
    for g in groups:
        if g.prunable:
            sizes[g.name] = g.size
            k = min(round(data.draw(st.sampled_from(RATIOS), label=f"ratio {g.name}") * g.size), g.size - 1)
            pruned[g.name] = tuple(sorted(np.random.default_rng(len(pruned)).choice(g.size, k, replace=False).tolist()))
    plan = Plan(sizes, pruned)
    small = hard_prune(model, plan, groups)
    soft = soft_prune(model, plan, groups)
    soft.eval()
    small.eval()
    a, b = np.asarray(soft(x)), np.asarray(small(x))
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=2e-5 * max(1.0, float(np.abs(a).max())))
    after = {g.name: g.size for g in channel_groups(small, x)}
    assert after == {g.name: g.size - len(plan.pruned.get(g.name, ())) for g in groups}
