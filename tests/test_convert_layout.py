"""isotpp.pruning.torch_convert without PyTorch: which dense layers read a flattened map, and in which order, comes from
the traced channel groups and equals the NCHW order computed by hand; numpy state dicts round-trip.
(tests/test_convert.py checks the same layouts against torch's own forward, when torch is installed.)"""

import numpy as np
import pytest

from isotpp.errors import UserError
from isotpp.models import BuildConfig
from isotpp.pruning.groups import Slot
from isotpp.pruning.torch_convert import (
    _flatten_orders,
    _plan,
    _torch_order,
    from_torch_state_dict,
    to_torch_state_dict,
)


def _nchw_order(channels: int, positions: int) -> list[int]:
    """isotpp row p·C + c (NHWC flatten) holds torch input c·P + p (NCHW flatten)."""
    return [c * positions + p for p in range(positions) for c in range(channels)]


def test_the_flatten_order_comes_from_the_traced_groups():
    lenet = BuildConfig("lenet5", 10, (40, 44, 1)).create(abstract=True)  # conv3 leaves 3x4x120
    orders, classifier = _flatten_orders(lenet, None)
    assert classifier == "fc2" and list(orders) == ["fc1"]
    assert orders["fc1"].tolist() == _nchw_order(120, 12)
    mlp = BuildConfig("mlp", 10, (4, 4, 3), (("depth", 3), ("width", 8))).create(abstract=True)
    orders, classifier = _flatten_orders(mlp, None)  # the first layer reads the image, flattened
    assert classifier == "net.4" and list(orders) == ["net.0"] and orders["net.0"].tolist() == _nchw_order(3, 16)
    for name in ("lenet5", "resnet20", "vgg11"):  # a 1x1 map, global pooling: the same order in both layouts
        model = BuildConfig(name, 10, None).create(abstract=True)
        assert _flatten_orders(model, None)[0] == {}


def test_a_block_of_a_concatenated_map():
    # channels 3, 4 of a 5-channel map at 2 positions: NHWC rows p*5 + 3 + c, NCHW inputs (3 + c)*2 + p
    here, there = _torch_order(Slot("fc.kernel", -2, "in", interleave=2, offset=3, period=5), 2)
    assert sorted(zip(here.tolist(), there.tolist())) == [(3, 6), (4, 8), (8, 7), (9, 9)]


def test_numpy_state_dicts_land_in_the_hand_computed_rows_and_round_trip():
    rng = np.random.default_rng(0)
    abstract = BuildConfig("lenet5", 10, (40, 44, 1)).create(abstract=True)
    sd = {e.key: rng.normal(size=e.torch_shape).astype(np.float32) for e in _plan(abstract)}
    model = from_torch_state_dict(abstract, sd)
    k, t = np.asarray(model.fc1.kernel[...]), sd["fc1.weight"]
    assert t.shape == (84, 1440) and k[5 * 120 + 7, 3] == t[3, 7 * 12 + 5]  # row p*C + c holds input c*P + p
    back = to_torch_state_dict(model)
    assert list(back) == list(sd)
    for n, v in sd.items():
        np.testing.assert_array_equal(back[n], v)
    # a dense layer sized by the input is explained as such; a globally pooled one as a matter of widths
    with pytest.raises(UserError, match=r"fc1\.weight has shape \(84, 1440\).*input_shape the checkpoint"):
        from_torch_state_dict(BuildConfig("lenet5", 10, None).create(abstract=True), sd)
    resnet = BuildConfig("resnet20", 10, None).create(abstract=True)
    with pytest.raises(UserError, match=r"linear\.weight has shape \(10, 128\).*infer_widths"):
        from_torch_state_dict(resnet, {"linear.weight": np.zeros((10, 128), np.float32)}, strict=False)
