"""Channel groups, ratio patterns, L1 plans and applying them (REFERENCE §2):
hand-computed selections, refusals, and soft pruning = hard pruning in eval mode."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from isotpp.errors import UserError
from isotpp.models import BuildConfig, create_model, widths_of
from isotpp.models.program import flat_arrays, leaf_name, map_named
from isotpp.pruning.groups import Slot, channel_groups, parse_ratios, resolve_ratios
from isotpp.pruning.model_file import load_model, save_model
from isotpp.pruning.plan import (
    Plan,
    hard_prune,
    l1_plan,
    l1_scores,
    n_pruned,
    param_masks,
    select_lowest,
    soft_prune,
)


def _abstract(name, **kw):
    """Shapes only: enough for channel groups and ratio resolution."""
    return BuildConfig(name, kw.pop("num_classes", 10), kw.pop("input_shape", None),
                       tuple(sorted(kw.items()))).create(abstract=True)


# --------------------------------------------------------------------------
# Channel groups and state paths
# --------------------------------------------------------------------------


def test_channel_groups_of_mlp_7_linear():
    groups = channel_groups(_abstract("mlp_7_linear"))
    names = [f"net.{2 * i}" for i in range(7)]
    assert [g.name for g in groups] == names
    assert [g.layers for g in groups] == [(n,) for n in names]
    assert [g.size for g in groups] == [100] * 6 + [10]
    assert [g.prunable for g in groups] == [True] * 6 + [False]
    assert "classifier" in groups[-1].why_not
    for i, g in enumerate(groups[:-1]):
        assert g.slots == (Slot(f"net.{2 * i}.kernel", -1, "out"), Slot(f"net.{2 * i}.bias", 0, "bias"),
                           Slot(f"net.{2 * i + 2}.kernel", -2, "in"))
    assert groups[-1].slots_with("in") == ()
    assert groups[-1].slots_with("out") == (Slot("net.12.kernel", -1, "out"),)


def test_channel_groups_of_resnet20_inner_convs_and_streams():
    groups = {g.name: g for g in channel_groups(_abstract("resnet20"))}
    g = groups["layer2.1.conv1"]
    assert g.prunable and g.size == 32
    assert set(g.slots) == {
        Slot("layer2.1.conv1.kernel", -1, "out"),
        Slot("layer2.1.bn1.scale", 0, "bn"), Slot("layer2.1.bn1.bias", 0, "bn"),
        Slot("layer2.1.bn1.mean", 0, "bn_stat"), Slot("layer2.1.bn1.var", 0, "bn_stat"),
        Slot("layer2.1.conv2.kernel", -2, "in"),
    }  # fmt: skip
    inner = sorted(f"layer{s}.{b}.conv1" for s in (1, 2, 3) for b in range(3))
    streams = ["stream:layer2", "stream:layer3", "stream:stem+layer1"]
    assert sorted(n for n, g in groups.items() if g.prunable) == sorted(inner + streams)
    s1, s2 = groups["stream:stem+layer1"], groups["stream:layer2"]
    assert s1.layers == ("conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2") and s1.size == 16
    assert s2.layers == ("layer2.0.conv2", "layer2.1.conv2", "layer2.2.conv2") and s2.size == 32
    # stream 2 is written by the option-A map of layer2.0 and read by the next blocks, layer3.0 and its map
    assert Slot("layer2.0.downsample.proj", -1, "out_fixed") in s2.slots
    assert {s.param for s in s2.slots_with("in")} == {
        "layer2.1.conv1.kernel", "layer2.2.conv1.kernel", "layer3.0.conv1.kernel", "layer3.0.downsample.proj"}
    assert Slot("layer2.0.downsample.proj", -2, "in") in s1.slots  # axis 0 of the (in, out) map
    assert {s.param for s in groups["stream:layer3"].slots_with("in")} >= {"linear.kernel"}
    assert not groups["linear"].prunable


def test_channel_groups_of_option_b_and_torchvision_streams():
    b = {g.name: g for g in channel_groups(_abstract("resnet20_B"))}
    assert b["stream:layer2"].layers == ("layer2.0.conv2", "layer2.0.downsample.0", "layer2.1.conv2", "layer2.2.conv2")
    assert Slot("layer2.0.downsample.0.kernel", -2, "in") in b["stream:stem+layer1"].slots
    r50 = {g.name: g for g in channel_groups(_abstract("resnet50"))}
    assert r50["stream:stem"].layers == ("conv1",)
    assert {s.param for s in r50["stream:stem"].slots_with("in")} == {"layer1.0.conv1.kernel",
                                                                      "layer1.0.downsample.0.kernel"}
    assert r50["stream:layer4"].size == 2048 and "layer4.1.conv2" in r50
    r18 = {g.name: g for g in channel_groups(_abstract("resnet18"))}
    assert r18["stream:stem+layer1"].layers == ("conv1", "layer1.0.conv2", "layer1.1.conv2")


def test_leaf_names_flat_arrays_and_map_named():
    m = create_model("mlp", depth=2, width=3, input_dim=4, init="torch")
    state = nnx.state(m)
    flat = flat_arrays(state)
    assert sorted(flat) == ["net.0.bias", "net.0.kernel", "net.2.bias", "net.2.kernel"]
    assert flat["net.0.kernel"].shape == (4, 3) and flat["net.2.kernel"].shape == (3, 10)
    leaves, _ = jax.tree_util.tree_flatten_with_path(state)
    assert sorted(leaf_name(p) for p, _ in leaves) == sorted(flat)
    seen = []
    doubled = map_named(lambda n, x: (seen.append(n), 2 * x if n.endswith("kernel") else x)[1], state)
    assert sorted(seen) == sorted(flat)
    d = flat_arrays(doubled)
    np.testing.assert_array_equal(np.asarray(d["net.2.kernel"]), 2 * np.asarray(flat["net.2.kernel"]))
    np.testing.assert_array_equal(np.asarray(d["net.0.bias"]), np.asarray(flat["net.0.bias"]))


# --------------------------------------------------------------------------
# Ratio patterns
# --------------------------------------------------------------------------


def test_parse_ratios_string_with_glob_brackets():
    got = parse_ratios("*layer*.conv1:0.5,*layer[1-3]*conv[1-2]:0.3")
    assert got == {"*layer*.conv1": 0.5, "*layer[1-3]*conv[1-2]": 0.3}
    assert list(got) == ["*layer*.conv1", "*layer[1-3]*conv[1-2]"]  # order kept: last match wins
    assert parse_ratios(" *fc*: 0.2 , ,net.0:0 ") == {"*fc*": 0.2, "net.0": 0.0}


def test_parse_ratios_mapping():
    assert parse_ratios({"*": 0.8}) == {"*": 0.8}
    assert parse_ratios({"a": "0.25", "b": 0}) == {"a": 0.25, "b": 0.0}


@pytest.mark.parametrize("bad", [
    "*:1", "*:1.0", "*:-0.1", "*:1.5", "*:nan", "*:inf", {"*": 1.0}, {"*": -0.5},   # out of [0, 1)
    "conv1", ":0.5", "*:", "*:abc", "*:0.5,fc", {"*": "x"}, {"*": None},            # malformed
    "", " , ", {},                                                                  # empty
])  # fmt: skip
def test_parse_ratios_refuses(bad):
    with pytest.raises(UserError):
        parse_ratios(bad)


def test_resolve_ratios_last_match_wins_and_skip_forces_zero():
    groups = channel_groups(_abstract("resnet20"))
    r = resolve_ratios(groups, "*layer*.conv1:0.5,*layer2*conv1:0.3")
    assert set(r) == {g.name for g in groups if g.prunable}
    assert r["layer1.0.conv1"] == 0.5 and r["layer3.2.conv1"] == 0.5
    assert r["layer2.0.conv1"] == r["layer2.2.conv1"] == 0.3
    r = resolve_ratios(groups, "*layer2*conv1:0.3,*layer*.conv1:0.5")
    assert {v for k, v in r.items() if not k.startswith("stream:")} == {0.5}
    assert all(v == 0 for k, v in r.items() if k.startswith("stream:"))
    r = resolve_ratios(groups, {"*layer*.conv1": 0.5}, skip=["layer3.*", "layer1.1.conv1"])
    assert r["layer1.1.conv1"] == 0.0 and all(r[f"layer3.{b}.conv1"] == 0.0 for b in range(3))
    assert r["layer1.0.conv1"] == r["layer2.2.conv1"] == 0.5


def test_resolve_ratios_mlp_skip_classifier():
    groups = channel_groups(_abstract("mlp_7_linear"))
    assert resolve_ratios(groups, "*:0.8", ["net.12"]) == {f"net.{2 * i}": 0.8 for i in range(6)}


def test_resolve_ratios_refuses_a_pattern_that_matches_no_layer():
    groups = channel_groups(_abstract("resnet20"))
    with pytest.raises(UserError, match=r"\*features\*.*matches no layer.*layer1\.0\.conv1"):
        resolve_ratios(groups, "*features*:0.5")
    with pytest.raises(UserError, match="nothing_here"):
        resolve_ratios(groups, "*layer*.conv1:0.5", skip=["nothing_here"])


def test_resolve_ratios_refuses_to_prune_the_classifier():
    groups = channel_groups(_abstract("mlp_7_linear"))
    with pytest.raises(UserError, match=r"net\.12.*classifier.*skip"):
        resolve_ratios(groups, "*:0.5")


def test_resolve_ratios_prunes_streams_whole_or_not_at_all():
    groups = channel_groups(_abstract("resnet20"))
    with pytest.raises(UserError, match=r"only part of residual stream:stem\+layer1.*conv1"):
        resolve_ratios(groups, "*layer1.0.conv2:0.5")
    with pytest.raises(UserError, match=r"only part of residual stream:stem\+layer1"):
        resolve_ratios(groups, "*conv2:0.5")  # the stem conv1 is a member of stream 1
    ratios = resolve_ratios(groups, "*conv2:0.5,conv1:0.25")
    assert ratios["stream:stem+layer1"] == 0.25 and ratios["stream:layer2"] == 0.5
    assert ratios["layer1.0.conv1"] == 0.0


@pytest.mark.parametrize("ratios,skip", [("*:0", ["net.12"]), ("net.0:0.5", ["net.0"]), ({"net.2": 0.0}, [])])
def test_resolve_ratios_refuses_selecting_nothing(ratios, skip):
    groups = channel_groups(_abstract("mlp_7_linear"))
    with pytest.raises(UserError, match="nothing to prune"):
        resolve_ratios(groups, ratios, skip)


# --------------------------------------------------------------------------
# Selection
# --------------------------------------------------------------------------


@pytest.mark.parametrize("ratio,n,k", [
    (0.8, 100, 80), (0.7, 10, 7), (0.3, 10, 3), (0.1, 10, 1), (0.99, 5, 4), (0.0, 7, 0),
    (0.5, 3, 2), (0.01, 10, 1), (0.5, 1, 0), (0.9, 2, 1), (0.95, 16, 15), (0.9, 64, 58),
    (0.07, 100, 7),  # 0.07 · 100 = 7.000000000000001 in IEEE doubles: a plain ceil would give 8
])  # fmt: skip
def test_n_pruned(ratio, n, k):
    assert n_pruned(ratio, n) == k


@pytest.mark.parametrize("scores,ratio,expected", [
    ([3.0, 1.0, 2.0, 0.5], 0.5, (1, 3)),
    ([2.0, 2.0, 2.0, 2.0], 0.5, (0, 1)),           # all tied: lowest indices first
    ([3.0, 1.0, 1.0, 2.0, 1.0], 0.4, (1, 2)),      # tie across the cut: 4 stays
    ([1.0, 0.0, 0.0, 0.0, 1.0], 0.5, (1, 2, 3)),
    ([5.0, 4.0, 3.0], 0.0, ()),
    ([0.0, 0.0, 0.0], 0.99, (0, 1)),               # at most n - 1
])  # fmt: skip
def test_select_lowest_is_stable_on_ties(scores, ratio, expected):
    got = select_lowest(np.asarray(scores), ratio)
    assert got == expected
    assert all(type(i) is int for i in got)


def test_l1_scores_are_mean_abs_per_filter_by_hand():
    m = create_model("mlp", depth=2, width=3, input_dim=2, init="torch")
    kernel = np.array([[1.0, -2.0, 0.5],
                       [-3.0, 0.0, 0.5]], np.float32)  # fmt: skip  (fan_in 2, n 3)
    m.net[0].kernel[...] = jnp.asarray(kernel)
    g = channel_groups(m)[0]
    scores = l1_scores(flat_arrays(nnx.state(m, nnx.Param)), g)
    np.testing.assert_allclose(scores, [2.0, 1.0, 0.5])


def test_l1_scores_of_a_conv_layer_average_over_kh_kw_cin():
    m = create_model("lenet5", init="torch", seed=3)
    params = flat_arrays(nnx.state(m, nnx.Param))
    g = channel_groups(m)[1]  # conv2: (5, 5, 6, 16)
    assert g.name == "conv2"
    k = np.asarray(params["conv2.kernel"], np.float64)
    expected = [sum(abs(k[u, v, c, o]) for u in range(5) for v in range(5) for c in range(6)) / 150 for o in range(16)]
    np.testing.assert_allclose(l1_scores(params, g), expected, rtol=1e-12)


def test_l1_plan_on_mlp_7_linear_prunes_the_80_smallest_filters_per_hidden_layer():
    m = create_model("mlp_7_linear", init="torch", seed=2)
    plan = l1_plan(m, {"*": 0.8}, ["net.12"])
    hidden = [f"net.{2 * i}" for i in range(6)]
    assert dict(plan.sizes) == {n: 100 for n in hidden}
    assert set(plan.pruned) == set(hidden) and plan.pruned_groups == tuple(hidden)
    params = flat_arrays(nnx.state(m))
    for name in hidden:
        idx = plan.pruned[name]
        assert len(idx) == 80 and list(idx) == sorted(set(idx))
        score = np.abs(np.asarray(params[f"{name}.kernel"], np.float64)).mean(axis=0)
        kept = np.setdiff1d(np.arange(100), idx)
        assert len(kept) == 20 and score[list(idx)].max() < score[kept].min()
        assert set(idx) == set(np.argsort(score)[:80].tolist())


# --------------------------------------------------------------------------
# Plan objects
# --------------------------------------------------------------------------


def test_plan_kept_mask_and_json_round_trip(tmp_path):
    plan = Plan({"a": 5, "b": 3}, {"a": (1, 3), "b": ()})
    assert plan.kept("a") == (0, 2, 4) and plan.kept("b") == (0, 1, 2)
    np.testing.assert_array_equal(plan.mask("a"), [0, 1, 0, 1, 0])
    assert plan.mask("a").dtype == np.float32
    assert plan.pruned_groups == ("a",)
    d = plan.to_dict()
    assert d == {"sizes": {"a": 5, "b": 3}, "pruned": {"a": [1, 3], "b": []}}
    assert Plan.from_dict(json.loads(json.dumps(d))) == plan
    path = plan.save(tmp_path / "plan.json")
    assert json.loads(path.read_text()) == d
    assert Plan.load(path) == plan


@pytest.mark.parametrize("sizes,pruned,what", [
    ({"a": 4}, {"a": (4,)}, "invalid"),
    ({"a": 4}, {"a": (-1,)}, "invalid"),
    ({"a": 4}, {"a": (1, 1)}, "invalid"),
    ({"a": 4}, {"a": (0, 1, 2, 3)}, "at least one"),
    ({"a": 1}, {"a": (0,)}, "at least one"),
    ({"a": 4}, {"b": (0,)}, "unknown group"),
])  # fmt: skip
def test_plan_refuses_bad_indices(sizes, pruned, what):
    with pytest.raises(UserError, match=what):
        Plan(sizes, pruned)


@pytest.mark.parametrize("d", [
    {}, {"sizes": {"a": 4}}, {"sizes": {"a": "x"}, "pruned": {}}, [], {"sizes": 3, "pruned": {}},
])  # fmt: skip
def test_plan_from_dict_refuses_garbage(d):
    with pytest.raises(UserError):
        Plan.from_dict(d)


def test_plan_for_another_model_is_refused():
    m = _abstract("mlp_7_linear")
    with pytest.raises(UserError, match="does not have"):
        param_masks(nnx.state(m), Plan({"conv1": 6}, {"conv1": (0,)}), channel_groups(m), ("out",))
    with pytest.raises(UserError, match="expects 50"):
        param_masks(nnx.state(m), Plan({"net.0": 50}, {"net.0": (0,)}), channel_groups(m), ("out",))


def test_param_masks_mark_each_role_along_its_axis():
    m = create_model("mlp", depth=3, width=4, input_dim=3, init="torch")
    groups = channel_groups(m)
    plan = Plan({"net.0": 4, "net.2": 4}, {"net.0": (1, 3), "net.2": ()})
    state = nnx.state(m)
    out = param_masks(state, plan, groups, ("out", "bias"))
    assert sorted(out) == ["net.0.bias", "net.0.kernel"]
    np.testing.assert_array_equal(out["net.0.kernel"], [[0, 1, 0, 1]])  # (1, n): broadcasts over fan_in
    np.testing.assert_array_equal(out["net.0.bias"], [0, 1, 0, 1])
    inp = param_masks(state, plan, groups, ("in",))
    assert sorted(inp) == ["net.2.kernel"]
    np.testing.assert_array_equal(inp["net.2.kernel"], [[0], [1], [0], [1]])  # (n, 1): consumer inputs


# --------------------------------------------------------------------------
# Soft pruning = hard pruning (eval mode), surgery details, checkpoints
# --------------------------------------------------------------------------

CASES = {
    "mlp_7_linear": {"ratios": "*:0.8", "skip": ["net.12"], "shape": (32, 32, 1)},
    "lenet5": {"ratios": "*:0.5", "skip": ["fc2"], "shape": (32, 32, 1)},
    # 40×40: conv3 leaves a 3×3 map, so fc1 sees each conv3 channel at 9 positions (interleave 9)
    "lenet5_40": {"arch": "lenet5", "input_shape": (40, 40, 1), "ratios": "*:0.5", "skip": ["fc2"],
                  "shape": (40, 40, 1)},
    "vgg11": {"ratios": "*features*:0.5", "skip": ["*features.0"], "shape": (32, 32, 3)},
    "resnet20": {"ratios": "*layer*.conv1:0.5", "skip": [], "shape": (32, 32, 3)},
    "resnet20_B": {"ratios": "*layer*.conv1:0.5", "skip": [], "shape": (32, 32, 3)},
    "resnet50": {"ratios": "*layer[1-3]*conv[1-2]:0.3", "skip": [], "shape": (64, 64, 3)},
}


def _randomise_batchnorm(model, seed):
    """Random running mean/var and scale/bias in every BatchNorm, so BN is not the identity."""
    stats = flat_arrays(nnx.state(model, nnx.BatchStat))
    bns = {n.rsplit(".", 1)[0] for n in stats}
    assert bns or not stats
    rng = np.random.default_rng(seed)

    def new(name, x):
        module, _, leaf = name.rpartition(".")
        if module not in bns:
            return x
        draw = {"mean": lambda s: rng.normal(0.0, 0.3, s), "var": lambda s: rng.uniform(0.5, 2.0, s),
                "scale": lambda s: rng.uniform(0.5, 1.5, s), "bias": lambda s: rng.normal(0.0, 0.3, s)}[leaf]
        return jnp.asarray(draw(x.shape), x.dtype)

    nnx.update(model, map_named(new, nnx.state(model)))
    return bns


@nnx.jit
def _forward(model, x):
    return model(x)


def _outputs(model, x):
    model.eval()
    return np.asarray(_forward(model, x))


@pytest.fixture(scope="module", params=list(CASES))
def pruned(request):
    case = CASES[request.param]
    model = create_model(case.get("arch", request.param), init="torch", seed=1,
                         **({"input_shape": case["input_shape"]} if "input_shape" in case else {}))
    bns = _randomise_batchnorm(model, seed=2)
    original = {k: np.asarray(v) for k, v in flat_arrays(nnx.state(model)).items()}
    groups = channel_groups(model)
    plan = l1_plan(model, case["ratios"], case["skip"], groups=groups)
    small = hard_prune(model, plan)
    soft = soft_prune(nnx.clone(model), plan)
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, *case["shape"])), jnp.float32)
    return {"name": request.param, "model": model, "soft": soft, "small": small, "plan": plan, "groups": groups,
            "bns": bns, "original": original, "x": x, "y_soft": _outputs(soft, x), "y_hard": _outputs(small, x)}


def test_soft_and_hard_prune_give_the_same_eval_outputs(pruned):
    a, b = pruned["y_soft"], pruned["y_hard"]
    assert a.shape == b.shape == (2, 1000 if pruned["name"] == "resnet50" else 10)
    assert np.all(np.isfinite(a)) and np.abs(a).max() > 0
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * np.abs(a).max())
    # pruning changed something (the comparison is not vacuous)
    y_full = _outputs(pruned["model"], pruned["x"])
    assert np.abs(y_full - a).max() > 1e-3 * np.abs(a).max()


def test_batchnorm_was_randomised_so_it_is_not_the_identity(pruned):
    if pruned["name"].startswith(("mlp", "lenet")):
        assert not pruned["bns"]
        return
    stats = flat_arrays(nnx.state(pruned["model"], nnx.BatchStat))
    assert stats
    for k, v in stats.items():
        default = 1.0 if k.endswith("var") else 0.0
        assert np.abs(np.asarray(v) - default).min() > 0, k


def test_hard_prune_widths_match_the_plan(pruned):
    plan, model, small = pruned["plan"], pruned["model"], pruned["small"]
    expected = widths_of(model)
    groups = {g.name: g for g in channel_groups(model)}
    for name, idx in plan.pruned.items():
        for layer in groups[name].layers:
            expected[layer] = plan.sizes[name] - len(idx)
    assert widths_of(small) == expected
    assert any(len(idx) for idx in plan.pruned.values())
    assert small.build_config == model.build_config


def _expected_slice(x, slot, kept, size):
    """Hand-built slicing: along ``slot.axis``, position p of channel c sits at p·size + c."""
    axis = slot.axis % x.ndim
    index = [p * size + c for p in range(slot.interleave) for c in kept]
    return np.take(x, index, axis=axis)


def test_hard_prune_carries_kept_channels_and_bn_statistics_exactly(pruned):
    plan, groups, original = pruned["plan"], pruned["groups"], pruned["original"]
    small = {k: np.asarray(v) for k, v in flat_arrays(nnx.state(pruned["small"])).items()}
    assert set(small) == set(original)
    expected = dict(original)
    roles = set()
    for g in groups:  # a kernel is sliced by its own group (outputs) and its producer's (inputs)
        idx = plan.pruned.get(g.name, ())
        if not idx:
            continue
        kept = plan.kept(g.name)
        for slot in g.slots:
            expected[slot.param] = _expected_slice(expected[slot.param], slot, kept, g.size)
            roles.add(slot.role)
        if pruned["name"] == "lenet5_40" and g.name == "conv3":
            assert g.slots_with("in")[0].interleave == 9
    assert {"out", "in"} <= roles
    if pruned["name"] not in ("mlp_7_linear", "lenet5", "lenet5_40"):
        assert "bn_stat" in roles  # BN running statistics went through surgery
    for k in original:  # everything else is carried over untouched
        np.testing.assert_array_equal(small[k], expected[k], err_msg=k)


def test_soft_prune_zeroes_exactly_the_pruned_filters_biases_and_bn_affine(pruned):
    plan, groups, original = pruned["plan"], pruned["groups"], pruned["original"]
    soft = {k: np.asarray(v) for k, v in flat_arrays(nnx.state(pruned["soft"])).items()}
    expected = {k: v.copy() for k, v in original.items()}
    by_name = {g.name: g for g in groups}
    for name, idx in plan.pruned.items():
        for slot in by_name[name].slots_with("out", "bias", "bn"):
            x = np.moveaxis(expected[slot.param], slot.axis, 0)
            x[list(idx)] = 0.0  # a view: writes through
    for k in original:
        np.testing.assert_array_equal(soft[k], expected[k], err_msg=k)


def test_hard_pruned_model_saves_and_reloads(pruned, tmp_path):
    path = save_model(tmp_path / "small.npz", pruned["small"], meta={"plan": pruned["plan"].to_dict()})
    loaded, header = load_model(path)
    assert widths_of(loaded) == widths_of(pruned["small"])
    assert header["widths"] == widths_of(pruned["small"])
    assert Plan.from_dict(header["meta"]["plan"]) == pruned["plan"]
    a = flat_arrays(nnx.state(pruned["small"]))
    b = flat_arrays(nnx.state(loaded))
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(np.asarray(b[k]), np.asarray(a[k]), err_msg=k)
    np.testing.assert_allclose(_outputs(loaded, pruned["x"]), pruned["y_hard"], rtol=1e-6, atol=1e-7)
