"""Channel groups traced from the forward program: equal to the zoo's hand declarations for every
model and published pattern, hand-checked on user models, and refusals that name the operation."""

import jax
import numpy as np
import pytest
from declared_groups import declared_groups
from user_models import (
    INPUTS,
    MLP,
    Concat,
    ConvBN,
    LayerNormed,
    Residual,
    Separable,
    Sliced,
)

from isotpp.errors import UserError
from isotpp.models import (
    MODEL_NAMES,
    BuildConfig,
    layer_names,
    model_spec,
    residual_streams,
)
from isotpp.pruning.groups import Slot, channel_groups, program_layers, resolve_ratios
from isotpp.pruning.plan import Plan, hard_prune
from isotpp.studies.paper_tables import load_spec


def _abstract(name):
    return BuildConfig(name, model_spec(name).num_classes, None).create(abstract=True)


def _key(g):
    return (g.name, tuple(sorted(g.layers)), g.size, frozenset(g.slots), g.prunable, "" if g.prunable else g.why_not)


def _assert_streams_are_traced(model, traced):
    """The residual streams the model declares (its WidthsPlan, checked before it is built) are exactly the
    traced groups of more than one producer, member for member; a declared singleton is a traced group too."""
    declared = {frozenset(s) for s in residual_streams(model)}
    groups = {frozenset(g.layers) for g in traced}
    assert {d for d in declared if len(d) > 1} == {g for g in groups if len(g) > 1}
    assert declared <= groups


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_traced_groups_equal_the_declared_ones(name):
    model = _abstract(name)
    traced, declared = channel_groups(model), declared_groups(model)
    assert [_key(g) for g in traced] == [_key(g) for g in declared]
    _assert_streams_are_traced(model, traced)


# deeper ResNets repeat the blocks of resnet20 / resnet18 (the same declaration code): checked at full width above
TINY = [n for n in MODEL_NAMES if not n.startswith(("resnet32", "resnet34", "resnet44", "resnet56", "resnet110"))]


@pytest.mark.parametrize("name", TINY)
def test_declared_streams_equal_the_traced_groups_at_tiny_widths(name):
    """Every layer 2 wide: sets of equal size, so a tracer that tied two streams together (or a declaration
    that split one) would show; at canonical widths stages of different widths could never merge."""
    names = layer_names(_abstract(name))
    model = BuildConfig(name, model_spec(name).num_classes, None).create(widths=dict.fromkeys(names[:-1], 2),
                                                                         abstract=True)
    _assert_streams_are_traced(model, channel_groups(model))
    assert bool(residual_streams(model)) == name.startswith("resnet")


def test_every_published_pattern_resolves_the_same():
    cases = []
    for table in ("table1_resnet56", "vgg19_cifar100", "table2_resnet50", "table2_resnet34"):
        spec = load_spec(table)
        cases += [(spec.model, pattern, tuple(spec.skip)) for _, pattern in spec.ratios]
    assert len(cases) >= 14
    for model_name, pattern, skip in cases:
        model = _abstract(model_name)
        traced = resolve_ratios(channel_groups(model), pattern, skip)
        assert traced == resolve_ratios(declared_groups(model), pattern, skip), (model_name, pattern)
        assert any(r > 0 for r in traced.values())


def _groups(cls, **kw):
    model = cls(**kw)
    x = jax.ShapeDtypeStruct((2, *INPUTS[cls]), np.float32)
    return model, {g.name: g for g in channel_groups(model, x)}, x


def test_mlp_and_conv_chain_by_hand():
    _, g, _ = _groups(MLP)
    assert list(g) == ["hidden.0", "hidden.1", "head"]
    assert g["hidden.0"].slots == (Slot("hidden.0.kernel", -1, "out"), Slot("hidden.0.bias", 0, "bias"),
                                   Slot("hidden.1.kernel", -2, "in"))
    assert not g["head"].prunable and "classifier" in g["head"].why_not
    model, g, x = _groups(ConvBN)
    assert set(g["c1"].slots) == {Slot("c1.kernel", -1, "out"), Slot("b1.scale", 0, "bn"), Slot("b1.bias", 0, "bn"),
                                  Slot("b1.mean", 0, "bn_stat"), Slot("b1.var", 0, "bn_stat"),
                                  Slot("c2.kernel", -2, "in")}
    # the flatten of a 4x4x5 map into fc: channel fastest, 16 positions
    assert Slot("fc.kernel", -2, "in", interleave=16) in g["c2"].slots
    assert Slot("c2.bias", 0, "bias") in g["c2"].slots
    assert program_layers(model, x) == ["c1", "c2", "fc"]


def test_residual_shortcuts_by_hand():
    _, g, _ = _groups(Residual, shortcut="id")
    assert g["stream:stem+b"].layers == ("stem", "b") and g["stream:stem+b"].size == 6
    assert {s.param for s in g["stream:stem+b"].slots_with("in")} == {"a.kernel", "fc.kernel"}
    _, g, _ = _groups(Residual, shortcut="A")
    assert g["stem"].layers == ("stem",) and Slot("short.proj", -2, "in") in g["stem"].slots
    assert g["stream:b"].layers == ("b",) and Slot("short.proj", -1, "out_fixed") in g["stream:b"].slots
    _, g, _ = _groups(Residual, shortcut="B")
    assert g["stream:b+proj"].layers == ("b", "proj")
    assert {s.param for s in g["stream:b+proj"].slots_with("bn")} == {"bb.scale", "bb.bias", "bp.scale", "bp.bias"}
    assert Slot("proj.kernel", -2, "in") in g["stem"].slots


def test_concatenation_and_depthwise_by_hand():
    _, g, _ = _groups(Concat, p=4, q=5)
    assert Slot("bn.scale", 0, "bn") in g["p"].slots and Slot("r.kernel", -2, "in") in g["p"].slots
    assert Slot("bn.scale", 0, "bn", offset=4) in g["q"].slots and Slot("r.kernel", -2, "in", offset=4) in g["q"].slots
    _, g, _ = _groups(Separable, c=6, mult=2)
    grp = g["pw1"]
    assert grp.layers == ("pw1", "dw")  # the depthwise conv carries pw1's channels
    assert Slot("dw.kernel", -1, "out", inner=2) in grp.slots and Slot("b2.scale", 0, "bn", inner=2) in grp.slots
    assert Slot("pw2.kernel", -2, "in", inner=2) in grp.slots
    np.testing.assert_array_equal(Slot("x", 0, "in", inner=2).positions([1, 3], 6), [2, 3, 6, 7])


def test_what_cannot_be_followed_is_refused_with_the_operation_and_place():
    _, g, _ = _groups(LayerNormed)
    assert not g["fc1"].prunable and g["fc2"].prunable
    assert "reduce_sum over channels" in g["fc1"].why_not and "user_models.py" in g["fc1"].why_not
    with pytest.raises(UserError, match=r"would prune fc1, but .*reduce_sum over channels at .*user_models.py:\d+"):
        resolve_ratios(list(g.values()), "fc1:0.5")
    _, g, _ = _groups(Sliced)
    assert not g["fc1"].prunable and "a slice of channels at" in g["fc1"].why_not
    assert g["fc2"].prunable


def test_a_model_without_input_shape_needs_an_example_input():
    with pytest.raises(UserError, match="pass an example input"):
        channel_groups(MLP())
    with pytest.raises(UserError, match=r"tracing MLP on an input of shape \(2, 5\) failed"):
        channel_groups(MLP(), np.zeros((2, 5), np.float32))


def test_a_stream_pruned_to_one_channel_is_still_one_group():
    """Two one-channel maps added together are one stream, not two broadcasts (found by the surgery property)."""
    model = Residual("id", 2, 2, 2, seed=0)
    x = jax.random.normal(jax.random.key(0), (2, *INPUTS[Residual]))
    groups = {g.name: g for g in channel_groups(model, x)}
    assert groups["stream:stem+b"].size == 2
    small = hard_prune(model, Plan({"stream:stem+b": 2, "a": 2}, {"stream:stem+b": (0,), "a": (1,)}), list(groups.values()))
    after = {g.name: g.size for g in channel_groups(small, x)}
    assert after == {"stream:stem+b": 1, "a": 1, "fc": 3}
