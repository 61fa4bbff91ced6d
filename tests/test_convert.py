"""PyTorch state dicts <-> isotpp models (isotpp.pruning.torch_convert).

The torch side is written here independently of isotpp's models: key/shape
tables follow torchvision's ``resnet.py`` (``ResNet.__init__``, ``_make_layer``,
``BasicBlock``, ``Bottleneck``) and the TPP reference's CIFAR ResNet / VGG /
LeNet-5, and the forwards are plain ``torch.nn.functional`` calls on the state
dict, so a transposition or key mix-up in the converter cannot cancel out.
"""

from __future__ import annotations

import math
import sys

import jax
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
import torch.nn.functional as F

from isotpp.errors import UserError
from isotpp.models import create_model, widths_of
from isotpp.pruning.model_file import load_model
from isotpp.pruning.torch_convert import (
    convert_file,
    from_torch_state_dict,
    infer_widths,
    load_torch_checkpoint,
    to_torch_state_dict,
)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """torch's intra-op threads spin against XLA's on a small shared machine
    (a 64x64 ResNet-50 forward: 4 s with 2 threads, 0.1 s with 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------
# torch-side key/shape tables, written from the torch architecture definitions
# --------------------------------------------------------------------------


def _conv(shapes, name, cout, cin, k, bias=False):
    shapes[f"{name}.weight"] = (cout, cin, k, k)
    if bias:
        shapes[f"{name}.bias"] = (cout,)


def _bn(shapes, name, c):
    for attr in ("weight", "bias", "running_mean", "running_var"):
        shapes[f"{name}.{attr}"] = (c,)
    shapes[f"{name}.num_batches_tracked"] = ()


def _linear(shapes, name, cout, cin):
    shapes[f"{name}.weight"] = (cout, cin)
    shapes[f"{name}.bias"] = (cout,)


TV_RESNETS = {18: ("basic", (2, 2, 2, 2)), 50: ("bottleneck", (3, 4, 6, 3))}


def torchvision_resnet_shapes(depth, num_classes=1000, inner=None):
    """``torchvision.models.resnet{depth}().state_dict()`` as key -> shape, in
    torchvision's order; ``inner`` narrows the conv1 of blocks ({"layer1.0": 40})
    as a pruned checkpoint would."""
    block, layers = TV_RESNETS[depth]
    expansion = 4 if block == "bottleneck" else 1
    inner = inner or {}
    shapes = {}
    _conv(shapes, "conv1", 64, 3, 7)
    _bn(shapes, "bn1", 64)
    inplanes = 64
    for s, (planes, n) in enumerate(zip((64, 128, 256, 512), layers), start=1):
        for i in range(n):
            stride = 2 if s > 1 and i == 0 else 1
            p = f"layer{s}.{i}"
            mid = inner.get(p, planes)
            if block == "basic":
                _conv(shapes, f"{p}.conv1", mid, inplanes, 3)
                _bn(shapes, f"{p}.bn1", mid)
                _conv(shapes, f"{p}.conv2", planes, mid, 3)
                _bn(shapes, f"{p}.bn2", planes)
            else:
                _conv(shapes, f"{p}.conv1", mid, inplanes, 1)
                _bn(shapes, f"{p}.bn1", mid)
                _conv(shapes, f"{p}.conv2", planes, mid, 3)
                _bn(shapes, f"{p}.bn2", planes)
                _conv(shapes, f"{p}.conv3", planes * expansion, planes, 1)
                _bn(shapes, f"{p}.bn3", planes * expansion)
            if stride != 1 or inplanes != planes * expansion:
                _conv(shapes, f"{p}.downsample.0", planes * expansion, inplanes, 1)
                _bn(shapes, f"{p}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    _linear(shapes, "fc", num_classes, 512 * expansion)
    return shapes


def cifar_resnet_shapes(depth, option, num_classes=10):
    """The reference's model/resnet_cifar10.py (option A: parameter-free shortcut)."""
    n = (depth - 2) // 6
    shapes = {}
    _conv(shapes, "conv1", 16, 3, 3)
    _bn(shapes, "bn1", 16)
    in_planes = 16
    for s, planes in enumerate((16, 32, 64), start=1):
        for i in range(n):
            stride = 2 if s > 1 and i == 0 else 1
            p = f"layer{s}.{i}"
            _conv(shapes, f"{p}.conv1", planes, in_planes, 3)
            _bn(shapes, f"{p}.bn1", planes)
            _conv(shapes, f"{p}.conv2", planes, planes, 3)
            _bn(shapes, f"{p}.bn2", planes)
            if option == "B" and (stride != 1 or in_planes != planes):
                _conv(shapes, f"{p}.downsample.0", planes, in_planes, 1)
                _bn(shapes, f"{p}.downsample.1", planes)
            in_planes = planes
    _linear(shapes, "linear", num_classes, 64)
    return shapes


def vgg_shapes(cfg, num_classes=10, cin=3):
    """The reference's VGG (make_layers with batch norm): conv, bn, relu per number, pool per "M"."""
    shapes, idx = {}, 0
    for v in cfg:
        if v == "M":
            idx += 1
            continue
        _conv(shapes, f"features.{idx}", v, cin, 3)
        _bn(shapes, f"features.{idx + 1}", v)
        idx += 3
        cin = v
    _linear(shapes, "classifier", num_classes, cin)
    return shapes


def lenet5_shapes(flat=120, num_classes=10):
    shapes = {}
    _conv(shapes, "conv1", 6, 1, 5, bias=True)
    _conv(shapes, "conv2", 16, 6, 5, bias=True)
    _conv(shapes, "conv3", 120, 16, 5, bias=True)
    _linear(shapes, "fc1", 84, flat)
    _linear(shapes, "fc2", num_classes, 84)
    return shapes


def random_state_dict(shapes, seed=0, as_numpy=False):
    """Random values of plausible scale under every key (BN variances positive)."""
    rng = np.random.default_rng(seed)
    sd = {}
    for key, shape in shapes.items():
        attr = key.rsplit(".", 1)[1]
        if attr == "num_batches_tracked":
            sd[key] = np.array(int(rng.integers(1, 1000)), dtype=np.int64)
            continue
        if attr == "weight" and len(shape) > 1:
            v = rng.standard_normal(shape) * math.sqrt(1.5 / math.prod(shape[1:]))
        elif attr in ("weight", "running_var"):
            v = rng.uniform(0.5, 1.5, shape)
        else:  # biases, running means
            v = 0.1 * rng.standard_normal(shape)
        sd[key] = v.astype(np.float32)
    return sd if as_numpy else {k: torch.from_numpy(v) for k, v in sd.items()}


# --------------------------------------------------------------------------
# torch forwards (eval mode), functional on the state dict
# --------------------------------------------------------------------------


def t_bn(x, sd, name):
    return F.batch_norm(x, sd[f"{name}.running_mean"], sd[f"{name}.running_var"], sd[f"{name}.weight"],
                        sd[f"{name}.bias"], training=False, eps=1e-5)


def torch_resnet_imagenet(sd, x, depth):
    block, layers = TV_RESNETS[depth]
    out = F.relu(t_bn(F.conv2d(x, sd["conv1.weight"], stride=2, padding=3), sd, "bn1"))
    out = F.max_pool2d(out, 3, 2, 1)
    for s, n in enumerate(layers, start=1):
        for i in range(n):
            p, stride = f"layer{s}.{i}", (2 if s > 1 and i == 0 else 1)
            if block == "basic":
                y = F.relu(t_bn(F.conv2d(out, sd[f"{p}.conv1.weight"], stride=stride, padding=1), sd, f"{p}.bn1"))
                y = t_bn(F.conv2d(y, sd[f"{p}.conv2.weight"], padding=1), sd, f"{p}.bn2")
            else:
                y = F.relu(t_bn(F.conv2d(out, sd[f"{p}.conv1.weight"]), sd, f"{p}.bn1"))
                y = F.relu(t_bn(F.conv2d(y, sd[f"{p}.conv2.weight"], stride=stride, padding=1), sd, f"{p}.bn2"))
                y = t_bn(F.conv2d(y, sd[f"{p}.conv3.weight"]), sd, f"{p}.bn3")
            if f"{p}.downsample.0.weight" in sd:
                out = t_bn(F.conv2d(out, sd[f"{p}.downsample.0.weight"], stride=stride), sd, f"{p}.downsample.1")
            out = F.relu(y + out)
    return F.linear(F.adaptive_avg_pool2d(out, 1).flatten(1), sd["fc.weight"], sd["fc.bias"])


def torch_resnet_cifar(sd, x, depth, option):
    n = (depth - 2) // 6
    out = F.relu(t_bn(F.conv2d(x, sd["conv1.weight"], padding=1), sd, "bn1"))
    for s in (1, 2, 3):
        for i in range(n):
            p, stride = f"layer{s}.{i}", (2 if s > 1 and i == 0 else 1)
            y = F.relu(t_bn(F.conv2d(out, sd[f"{p}.conv1.weight"], stride=stride, padding=1), sd, f"{p}.bn1"))
            y = t_bn(F.conv2d(y, sd[f"{p}.conv2.weight"], padding=1), sd, f"{p}.bn2")
            if stride != 1 and option == "A":  # the reference's ZeroPaddingX2
                c = out.shape[1]
                out = F.pad(out[:, :, ::2, ::2], (0, 0, 0, 0, c // 2, c // 2), "constant", 0)
            elif stride != 1:
                out = t_bn(F.conv2d(out, sd[f"{p}.downsample.0.weight"], stride=stride), sd, f"{p}.downsample.1")
            out = F.relu(y + out)
    out = F.avg_pool2d(out, out.size(3)).flatten(1)
    return F.linear(out, sd["linear.weight"], sd["linear.bias"])


def torch_vgg(sd, x, cfg):
    idx = 0
    for v in cfg:
        if v == "M":
            x, idx = F.max_pool2d(x, 2, 2), idx + 1
        else:
            x = F.relu(t_bn(F.conv2d(x, sd[f"features.{idx}.weight"], padding=1), sd, f"features.{idx + 1}"))
            idx += 3
    x = F.avg_pool2d(x, x.size(3)).flatten(1)
    return F.linear(x, sd["classifier.weight"], sd["classifier.bias"])


def torch_lenet5(sd, x):
    for c in ("conv1", "conv2"):
        x = F.max_pool2d(F.relu(F.conv2d(x, sd[f"{c}.weight"], sd[f"{c}.bias"])), 2, 2)
    x = F.relu(F.conv2d(x, sd["conv3.weight"], sd["conv3.bias"]))
    x = F.relu(F.linear(x.view(x.size(0), -1), sd["fc1.weight"], sd["fc1.bias"]))
    return F.linear(x, sd["fc2.weight"], sd["fc2.bias"])


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def abstract(arch, **kw):
    return nnx.eval_shape(lambda: create_model(arch, **kw))


def images(shape_nchw, seed=1):
    x = np.random.default_rng(seed).standard_normal(shape_nchw).astype(np.float32)
    return torch.from_numpy(x), np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def isotpp_logits(model, x_nhwc):
    model.eval()
    return np.asarray(nnx.jit(lambda m, x: m(x))(model, x_nhwc))


def assert_logits_close(ours, ref):
    ref = ref.detach().numpy()
    assert ours.shape == ref.shape
    scale = float(np.abs(ref).max())
    assert scale > 1e-3  # not a degenerate all-zero comparison
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * scale)


def assert_round_trip(model, sd, shapes):
    """to_torch_state_dict gives torchvision's keys in torchvision's order, with the original values."""
    out = to_torch_state_dict(model)
    assert list(out) == list(shapes)
    for k, shape in shapes.items():
        assert out[k].shape == shape, k
        if k.endswith("num_batches_tracked"):
            assert out[k].dtype == np.int64
        else:
            np.testing.assert_array_equal(out[k], np.asarray(sd[k]), err_msg=k)


# --------------------------------------------------------------------------
# architectures
# --------------------------------------------------------------------------


def test_resnet50_torchvision_layout_values_forward_and_round_trip():
    shapes = torchvision_resnet_shapes(50)
    sd = random_state_dict(shapes, seed=0)
    widths = infer_widths("resnet50", sd)
    assert widths["layer1.0.conv3"] == 256 and "fc" not in widths
    model = from_torch_state_dict(abstract("resnet50", widths=widths), sd)  # abstract: every variable filled

    # every value in its place, with its transpose
    w = sd["layer1.0.conv2.weight"].numpy()
    k = np.asarray(model.layer1[0].conv2.kernel[...])
    assert k.shape == (3, 3, 64, 64) and k[1, 2, 5, 7] == w[7, 5, 1, 2]
    np.testing.assert_array_equal(np.asarray(model.conv1.kernel[...]), sd["conv1.weight"].numpy().transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(np.asarray(model.layer3[0].downsample[0].kernel[...]),
                                  sd["layer3.0.downsample.0.weight"].numpy().transpose(2, 3, 1, 0))
    bn = model.layer2[1].bn2
    for ours, theirs in (("scale", "weight"), ("bias", "bias"), ("mean", "running_mean"), ("var", "running_var")):
        np.testing.assert_array_equal(np.asarray(getattr(bn, ours)[...]), sd[f"layer2.1.bn2.{theirs}"].numpy())
    np.testing.assert_array_equal(np.asarray(model.layer4[0].downsample[1].mean[...]),
                                  sd["layer4.0.downsample.1.running_mean"].numpy())
    np.testing.assert_array_equal(np.asarray(model.fc.kernel[...]), sd["fc.weight"].numpy().T)
    np.testing.assert_array_equal(np.asarray(model.fc.bias[...]), sd["fc.bias"].numpy())

    x_t, x_j = images((2, 3, 64, 64))
    with torch.no_grad():
        ref = torch_resnet_imagenet(sd, x_t, 50)
    assert_logits_close(isotpp_logits(model, x_j), ref)
    assert_round_trip(model, sd, shapes)


def test_resnet18_pruned_checkpoint_via_infer_widths():
    inner = {"layer1.0": 40, "layer2.1": 100, "layer4.0": 300}
    shapes = torchvision_resnet_shapes(18, num_classes=10, inner=inner)
    sd = random_state_dict(shapes, seed=2)
    widths = infer_widths("resnet18", sd)
    assert widths["layer1.0.conv1"] == 40 and widths["layer2.1.conv1"] == 100 and widths["layer4.0.conv1"] == 300
    assert widths["layer1.1.conv1"] == 64 and widths["layer3.0.downsample.0"] == 256

    model = from_torch_state_dict(abstract("resnet18", widths=widths, num_classes=10), sd)
    for name, width in widths_of(model).items():
        assert shapes[f"{name}.weight"][0] == width, name
    x_t, x_j = images((2, 3, 64, 64), seed=3)
    with torch.no_grad():
        ref = torch_resnet_imagenet(sd, x_t, 18)
    assert_logits_close(isotpp_logits(model, x_j), ref)
    assert_round_trip(model, sd, shapes)

    with pytest.raises(UserError, match=r"layer1\.0\.conv1\.weight has shape \(40, 64, 3, 3\).*\(64, 64, 3, 3\).*infer_widths"):
        from_torch_state_dict(abstract("resnet18", num_classes=10), sd)


@pytest.mark.parametrize("option", ["A", "B"])
def test_cifar_resnet20(option):
    arch = "resnet20" if option == "A" else "resnet20_B"
    shapes = cifar_resnet_shapes(20, option)
    sd = random_state_dict(shapes, seed=4)
    model = from_torch_state_dict(abstract(arch), sd)
    if option == "A":  # the fixed channel map is the model's own (not in torch state dicts)
        proj = np.asarray(model.layer2[0].downsample.proj[...])
        assert proj.shape == (16, 32) and proj.sum() == 16 and proj[0, 8] == 1
    x_t, x_j = images((2, 3, 32, 32), seed=5)
    with torch.no_grad():
        ref = torch_resnet_cifar(sd, x_t, 20, option)
    assert_logits_close(isotpp_logits(model, x_j), ref)
    assert_round_trip(model, sd, shapes)


VGG11_NARROW = (8, "M", 16, "M", 32, 32, "M", 64, 64, "M", 64, 64)


def test_vgg11_narrow():
    shapes = vgg_shapes(VGG11_NARROW)
    sd = random_state_dict(shapes, seed=6)
    widths = infer_widths("vgg11", sd)
    assert widths == {"features.0": 8, "features.4": 16, "features.8": 32, "features.11": 32,
                      "features.15": 64, "features.18": 64, "features.22": 64, "features.25": 64}
    model = from_torch_state_dict(abstract("vgg11", widths=widths), sd)
    np.testing.assert_array_equal(np.asarray(model.features[5].var[...]), sd["features.5.running_var"].numpy())
    x_t, x_j = images((2, 3, 32, 32), seed=7)
    with torch.no_grad():
        ref = torch_vgg(sd, x_t, VGG11_NARROW)
    assert_logits_close(isotpp_logits(model, x_j), ref)
    assert_round_trip(model, sd, shapes)


@pytest.mark.parametrize("hw", [(32, 32), (40, 44)])
def test_lenet5_including_nchw_flatten_order(hw):
    h, w = hw
    # conv 5 (-4), pool /2, conv 5, pool /2, conv 5: 32x32 -> 1x1, 40x44 -> 3x4
    flat = 120 * (((h - 4) // 2 - 4) // 2 - 4) * (((w - 4) // 2 - 4) // 2 - 4)
    shapes = lenet5_shapes(flat)
    sd = random_state_dict(shapes, seed=8)
    model = from_torch_state_dict(abstract("lenet5", input_shape=(h, w, 1)), sd)
    x_t, x_j = images((3, 1, h, w), seed=9)
    with torch.no_grad():
        ref = torch_lenet5(sd, x_t)
    assert_logits_close(isotpp_logits(model, x_j), ref)
    assert_round_trip(model, sd, shapes)
    if flat == 120:  # a 1x1 map: plain transpose
        np.testing.assert_array_equal(np.asarray(model.fc1.kernel[...]), sd["fc1.weight"].numpy().T)
    else:  # C,H,W (torch) -> H,W,C (isotpp) rows: torch input c*12 + p is isotpp input p*120 + c
        k, t = np.asarray(model.fc1.kernel[...]), sd["fc1.weight"].numpy()
        assert k[5 * 120 + 7, 3] == t[3, 7 * 12 + 5]
        with pytest.raises(UserError, match=r"fc1\.weight has shape .*input_shape"):
            from_torch_state_dict(abstract("lenet5"), sd)


def test_mlp_on_multichannel_images_from_numpy_values():
    shapes = {}
    _linear(shapes, "net.0", 8, 4 * 4 * 3)
    _linear(shapes, "net.2", 8, 8)
    _linear(shapes, "net.4", 10, 8)
    sd = random_state_dict(shapes, seed=10, as_numpy=True)
    model = from_torch_state_dict(abstract("mlp", input_shape=(4, 4, 3), depth=3, width=8, act="relu"), sd)
    x_t, x_j = images((2, 3, 4, 4), seed=11)
    with torch.no_grad():
        t = {k: torch.from_numpy(v) for k, v in sd.items()}
        y = F.relu(F.linear(x_t.reshape(2, -1), t["net.0.weight"], t["net.0.bias"]))
        y = F.relu(F.linear(y, t["net.2.weight"], t["net.2.bias"]))
        ref = F.linear(y, t["net.4.weight"], t["net.4.bias"])
    assert_logits_close(isotpp_logits(model, x_j), ref)
    assert_round_trip(model, sd, shapes)


# --------------------------------------------------------------------------
# checkpoints, wrappers and errors (LeNet-5: small)
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lenet_sd():
    return random_state_dict(lenet5_shapes(), seed=12)


def test_wrappers_and_module_prefix(lenet_sd):
    ref = to_torch_state_dict(from_torch_state_dict(abstract("lenet5"), lenet_sd))
    wrapped = [
        {f"module.{k}": v for k, v in lenet_sd.items()},
        {"state_dict": {f"module.{k}": v for k, v in lenet_sd.items()}, "epoch": 3, "arch": "lenet5"},
        {"model": dict(lenet_sd)},
    ]
    for sd in wrapped:
        out = to_torch_state_dict(from_torch_state_dict(abstract("lenet5"), sd))
        for k in ref:
            np.testing.assert_array_equal(out[k], ref[k])


def test_missing_and_unexpected_keys(lenet_sd):
    sd = dict(lenet_sd)
    del sd["conv2.bias"]
    with pytest.raises(UserError, match=r"lacks 1 key.*conv2\.bias.*strict=False"):
        from_torch_state_dict(abstract("lenet5"), sd)
    model = from_torch_state_dict(abstract("lenet5"), random_state_dict(lenet5_shapes(), seed=16))
    before = np.asarray(model.conv2.bias[...])
    from_torch_state_dict(model, sd, strict=False)  # keeps the model's own conv2.bias
    np.testing.assert_array_equal(np.asarray(model.conv2.bias[...]), before)
    np.testing.assert_array_equal(np.asarray(model.conv2.kernel[...]), sd["conv2.weight"].numpy().transpose(2, 3, 1, 0))
    with pytest.raises(UserError, match=r"abstract.*conv2\.bias"):
        from_torch_state_dict(abstract("lenet5"), sd, strict=False)

    sd = dict(lenet_sd, **{"fc3.weight": torch.zeros(3, 3)})
    with pytest.raises(UserError, match=r"1 key\(s\) lenet5 does not use \(fc3\.weight\)"):
        from_torch_state_dict(abstract("lenet5"), sd)
    from_torch_state_dict(abstract("lenet5"), sd, strict=False)


def test_wrong_shapes(lenet_sd):
    sd = dict(lenet_sd, **{"conv2.weight": torch.zeros(16, 6, 3, 3)})
    with pytest.raises(UserError, match=r"conv2\.weight has shape \(16, 6, 3, 3\).*expects \(16, 6, 5, 5\)"):
        from_torch_state_dict(abstract("lenet5"), sd)
    sd = dict(lenet_sd, **{"fc2.weight": torch.zeros(7, 84), "fc2.bias": torch.zeros(7)})
    with pytest.raises(UserError, match=r"fc2\.weight .*num_classes=7"):
        from_torch_state_dict(abstract("lenet5"), sd)
    with pytest.raises(UserError, match=r"not a tensor"):
        from_torch_state_dict(abstract("lenet5"), dict(lenet_sd, **{"conv1.bias": "oops"}))
    with pytest.raises(UserError, match=r"no conv2\.weight.*not a lenet5 checkpoint"):
        infer_widths("lenet5", {k: v for k, v in lenet_sd.items() if k != "conv2.weight"})


def test_pth_file_to_isotpp_model_file(tmp_path):
    shapes = lenet5_shapes(num_classes=7)
    sd = random_state_dict(shapes, seed=13)
    src = tmp_path / "lenet.pth"
    # the reference's wrapper around a DataParallel state dict
    torch.save({"arch": "lenet5", "epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, src)
    model = load_torch_checkpoint(src, "lenet5")  # num_classes read from fc2
    assert model.num_classes == 7

    dst = convert_file(src, "lenet5", tmp_path / "lenet.npz")
    loaded, header = load_model(dst)
    assert header["num_classes"] == 7 and header["meta"]["converted_from"] == str(src)
    x_t, x_j = images((2, 1, 32, 32), seed=14)
    with torch.no_grad():
        ref = torch_lenet5(sd, x_t)
    assert_logits_close(isotpp_logits(loaded, x_j), ref)


def test_file_errors(tmp_path, monkeypatch):
    with pytest.raises(UserError, match=r"nope\.pth does not exist"):
        load_torch_checkpoint(tmp_path / "nope.pth", "lenet5")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(UserError, match=r"bad\.pth is not a readable PyTorch file"):
        load_torch_checkpoint(bad, "lenet5")
    pickled = tmp_path / "module.pth"
    torch.save(torch.nn.Linear(2, 2), pickled)  # a whole module, not a state dict
    with pytest.raises(UserError, match=r"module\.pth holds pickled Python objects.*state_dict"):
        load_torch_checkpoint(pickled, "lenet5")

    good = tmp_path / "good.pth"
    torch.save(random_state_dict(lenet5_shapes(), seed=15), good)
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    with pytest.raises(UserError, match=r"pip install isotpp\[torch\]"):
        load_torch_checkpoint(good, "lenet5")
    with pytest.raises(UserError, match=r"pip install isotpp\[torch\]"):
        convert_file(good, "lenet5", tmp_path / "out.npz")
    # numpy state dicts need no torch
    from_torch_state_dict(abstract("lenet5"), random_state_dict(lenet5_shapes(), seed=15, as_numpy=True))


def test_abstract_model_cannot_be_exported():
    with pytest.raises(UserError, match="abstract"):
        to_torch_state_dict(abstract("lenet5"))


def test_jax_values_accepted():
    sd = {k: jax.numpy.asarray(v.numpy()) for k, v in random_state_dict(lenet5_shapes(), seed=17).items()}
    out = to_torch_state_dict(from_torch_state_dict(abstract("lenet5"), sd))
    for k, v in sd.items():
        np.testing.assert_array_equal(out[k], np.asarray(v))
