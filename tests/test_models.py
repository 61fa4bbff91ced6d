"""Model zoo: parameter counts, layer names, widths, initialisers, forward values.

Big models are only built abstractly (``nnx.eval_shape``); real forwards use
batch 1-2 and small networks.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from isotpp.errors import UserError
from isotpp.models import (
    ACT_GAIN,
    MODEL_NAMES,
    apply_init,
    count_params,
    create_model,
    get_layer,
    iter_modules,
    layer_names,
    model_spec,
    param_count_by_layer,
    residual_streams,
    widths_of,
)
from isotpp.models.layers import LayerFactory
from isotpp.models.resnet_cifar import CifarResNet
from isotpp.models.resnet_imagenet import Bottleneck


@functools.cache
def abstract(name: str):
    """Shapes only, cached: never mutate the result."""
    return nnx.eval_shape(lambda: create_model(name))


def abstract_with(name: str, **kw):
    return nnx.eval_shape(lambda: create_model(name, **kw))


def out_shape(model, x_shape, dtype=jnp.float32):
    graphdef, state = nnx.split(model)
    x = jax.ShapeDtypeStruct(x_shape, dtype)
    return jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state, x)


def param_shapes(model):
    return {k: tuple(v.shape) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


# --------------------------------------------------------------------------
# Sizes and names
# --------------------------------------------------------------------------

CANONICAL_PARAMS = {
    "mlp_7_linear": 154_010,
    "mlp": 154_010,
    "lenet5": 61_706,
    "lenet_300_100": 266_610,
    "resnet20": 269_722,  # option A; akamaster's "0.27M"
    "resnet20_B": 272_474,
    "resnet56": 853_018,
    "resnet110": 1_727_962,
    "vgg19": 20_081_188,
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
}


@pytest.mark.parametrize("name,count", sorted(CANONICAL_PARAMS.items()))
def test_param_counts(name, count):
    assert count_params(abstract(name)) == count


def test_param_count_by_layer_sums_to_total():
    m = abstract("resnet20_B")
    by_layer = param_count_by_layer(m)
    assert sum(by_layer.values()) == count_params(m)
    assert by_layer["layer2.0.downsample.0"] == 16 * 32
    assert by_layer["layer2.0.downsample.1"] == 2 * 32  # BN scale + bias
    assert list(by_layer)[-1] == "linear"


def test_option_a_vs_b_difference_is_the_downsample_layers():
    a, b = abstract("resnet56"), abstract("resnet56_B")
    ds = {n: c for n, c in param_count_by_layer(b).items() if "downsample" in n}
    assert set(ds) == {"layer2.0.downsample.0", "layer2.0.downsample.1",
                       "layer3.0.downsample.0", "layer3.0.downsample.1"}
    assert count_params(b) - count_params(a) == sum(ds.values()) == 16 * 32 + 64 + 32 * 64 + 128
    assert not [n for n, _ in iter_modules(a) if "downsample." in n]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_output_shapes(name):
    spec = model_spec(name)
    y = out_shape(abstract(name), (2, *spec.input_shape))
    assert y.shape == (2, spec.num_classes)
    assert model_spec(name).name == name


@pytest.mark.parametrize("name", ["mlp_7_linear", "lenet_300_100", "lenet5"])
def test_real_forward_small(name):
    spec = model_spec(name)
    m = create_model(name, seed=1)
    m.eval()
    y = m(jax.random.normal(jax.random.key(0), (2, *spec.input_shape)))
    assert y.shape == (2, spec.num_classes) and bool(jnp.all(jnp.isfinite(y)))


def test_layer_names():
    r56 = abstract("resnet56")
    names = layer_names(r56)
    assert names[0] == "conv1" and names[-1] == "linear"
    assert "layer2.3.conv1" in names and len(names) == 1 + 54 + 1
    assert names.index("layer1.8.conv2") < names.index("layer2.0.conv1")

    vgg = layer_names(abstract("vgg19"))
    assert vgg[0] == "features.0" and vgg[-1] == "classifier" and len(vgg) == 17
    assert vgg[:4] == ["features.0", "features.3", "features.7", "features.10"]

    mlp = layer_names(abstract("mlp_7_linear"))
    assert mlp == [f"net.{2 * i}" for i in range(7)]

    r50 = layer_names(abstract("resnet50"))
    assert r50[-2:] == ["layer4.2.conv3", "fc"]
    assert "layer1.0.downsample.0" in r50 and "layer1.1.downsample.0" not in r50
    assert r50.index("conv1") == 0 and r50.index("layer1.0.conv1") == 1

    r18 = layer_names(abstract("resnet18"))
    assert "layer1.0.downsample.0" not in r18 and "layer2.0.downsample.0" in r18

    assert layer_names(abstract("lenet5")) == ["conv1", "conv2", "conv3", "fc1", "fc2"]


def test_state_paths_mirror_torch_names():
    paths = {".".join(map(str, k)) for k, _ in nnx.to_flat_state(nnx.state(abstract("resnet50")))}
    # torchvision: layer1.0.downsample.0.weight, layer1.0.downsample.1.running_mean, fc.weight
    for p in ["layer1.0.downsample.0.kernel", "layer1.0.downsample.1.mean",
              "layer4.2.bn3.scale", "fc.kernel", "fc.bias", "bn1.var"]:
        assert p in paths
    vgg = {".".join(map(str, k)) for k, _ in nnx.to_flat_state(nnx.state(abstract("vgg19"), nnx.Param))}
    assert "features.1.scale" in vgg and "features.0.bias" not in vgg and "features.2.kernel" not in vgg


def test_definition_order_survives_split_merge_and_jit():
    m = create_model("lenet5")
    before = [n for n, _ in iter_modules(m)]
    assert before[:3] == ["conv1", "relu1", "maxpool1"]
    graphdef, state = nnx.split(m)
    assert [n for n, _ in iter_modules(nnx.merge(graphdef, state))] == before

    @nnx.jit
    def names_inside(model, x):
        assert layer_names(model) == ["conv1", "conv2", "conv3", "fc1", "fc2"]
        return model(x)

    names_inside(m, jnp.zeros((1, 32, 32, 1)))


def test_get_layer():
    m = abstract("resnet56")
    conv = get_layer(m, "layer2.3.conv1")
    assert isinstance(conv, nnx.Conv) and conv.kernel.shape == (3, 3, 32, 32)
    with pytest.raises(UserError, match="no layer"):
        get_layer(m, "layer4.0.conv1")
    with pytest.raises(UserError, match="no layer"):
        get_layer(m, "layer2.99.conv1")


# --------------------------------------------------------------------------
# Widths
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mlp_7_linear", "lenet5", "lenet_300_100", "resnet56",
                                  "resnet56_B", "vgg19", "resnet18", "resnet50"])
def test_widths_round_trip(name):
    m = abstract(name)
    w = widths_of(m)
    assert list(w) == layer_names(m)
    assert param_shapes(abstract_with(name, widths=w)) == param_shapes(m)


def test_pruned_resnet56_conv1_half():
    # the reference's "*layer*.conv1:0.5" on ResNet56
    w = {n: 8 * 2 ** (int(n[5]) - 1) for n in layer_names(abstract("resnet56")) if n.endswith(".conv1")
         and n.startswith("layer")}
    m = abstract_with("resnet56", widths=w)
    assert get_layer(m, "layer3.4.conv1").kernel.shape == (3, 3, 64, 32)
    assert get_layer(m, "layer3.4.conv2").kernel.shape == (3, 3, 32, 64)
    assert get_layer(m, "layer3.4.bn1").scale.shape == (32,)
    assert out_shape(m, (2, 32, 32, 3)).shape == (2, 10)
    assert param_shapes(abstract_with("resnet56", widths=widths_of(m))) == param_shapes(m)


def test_pruned_resnet20_streams_run():
    # change every stream consistently: stem + layer1 -> 12, layer2 -> 20, layer3 -> 40
    base = widths_of(abstract("resnet20"))
    w = {n: 4 for n in base if n.endswith("conv1") and n != "conv1"}
    w |= {n: 12 for n in residual_streams(abstract("resnet20"))[0]}
    w |= {n: 20 for n in base if n.startswith("layer2") and n.endswith("conv2")}
    w |= {n: 40 for n in base if n.startswith("layer3") and n.endswith("conv2")}
    m = create_model("resnet20", widths=w, init="torch")
    m.eval()
    proj = np.asarray(get_layer(m, "layer2.0.downsample").proj[...])
    np.testing.assert_array_equal(proj, np.eye(12, 20, k=4))  # (20 - 12) // 2 before, the rest after
    np.testing.assert_array_equal(np.asarray(get_layer(m, "layer3.0.downsample").proj[...]), np.eye(20, 40, k=10))
    assert get_layer(m, "linear").kernel.shape == (40, 10)
    y = m(jnp.ones((1, 32, 32, 3)))
    assert y.shape == (1, 10)
    # odd padding: 12 -> 21 puts 4 before and 5 after
    w2 = w | {n: 21 for n in base if n.startswith("layer2") and n.endswith("conv2")}
    proj2 = np.asarray(get_layer(create_model("resnet20", widths=w2, init="torch"), "layer2.0.downsample").proj[...])
    np.testing.assert_array_equal(proj2, np.eye(12, 21, k=4))


def test_pruned_mlp_and_vgg():
    m = create_model("mlp_7_linear", widths={f"net.{2 * i}": 20 for i in range(6)})
    assert count_params(m) == 1024 * 20 + 20 + 5 * (20 * 20 + 20) + 20 * 10 + 10
    assert m(jnp.ones((2, 32, 32, 1))).shape == (2, 10)
    vgg_w = {n: c // 2 for n, c in widths_of(abstract("vgg19")).items() if n != "features.0"
             and n != "classifier"}
    v = abstract_with("vgg19", widths=vgg_w)
    assert get_layer(v, "classifier").kernel.shape == (256, 100)
    assert get_layer(v, "features.3").kernel.shape == (3, 3, 64, 32)
    assert out_shape(v, (1, 32, 32, 3)).shape == (1, 100)


def test_widths_validation_errors():
    with pytest.raises(UserError, match="layer2.0.conv2=24 differs"):
        abstract_with("resnet20", widths={"layer2.0.conv2": 24})
    with pytest.raises(UserError, match="layer3.0.downsample.0=48"):
        abstract_with("resnet56_B", widths={"layer3.0.downsample.0": 48})
    with pytest.raises(UserError, match="residual add"):
        abstract_with("resnet50", widths={"layer2.0.conv3": 256})
    with pytest.raises(UserError, match=r"conv1=32"):  # the stem joins layer1's stream in resnet18
        abstract_with("resnet18", widths={"conv1": 32})
    # ... but not in resnet50, where layer1.0 has a downsample
    assert get_layer(abstract_with("resnet50", widths={"conv1": 32}), "layer1.0.conv1").kernel.shape \
        == (1, 1, 32, 64)
    # a stream may narrow across a shortcut: option A's fixed channel map keeps the first ones
    narrow = {f"layer2.{i}.conv2": 8 for i in range(3)}
    a = abstract_with("resnet20", widths=narrow)
    assert get_layer(a, "layer2.0.downsample").proj.shape == (16, 8)
    proj = np.asarray(get_layer(create_model("resnet20", widths=narrow), "layer2.0.downsample").proj[...])
    np.testing.assert_array_equal(proj, np.eye(16, 8))
    canonical = np.asarray(get_layer(create_model("resnet20"), "layer2.0.downsample").proj[...])
    np.testing.assert_array_equal(canonical, np.eye(16, 32, k=8))  # 8 zero channels before, 8 after
    narrow_b = narrow | {"layer2.0.downsample.0": 8}
    assert get_layer(abstract_with("resnet20_B", widths=narrow_b), "layer3.0.conv1").kernel.shape \
        == (3, 3, 8, 64)
    with pytest.raises(UserError, match="classifier"):
        abstract_with("vgg19", widths={"classifier": 10})
    with pytest.raises(UserError, match="did you mean 'layer2.0.conv2'"):
        abstract_with("resnet20", widths={"layer2.0.conv3": 8})
    with pytest.raises(UserError, match="positive integer"):
        abstract_with("lenet5", widths={"conv1": 0})
    with pytest.raises(UserError, match="positive integer"):
        abstract_with("lenet5", widths={"conv1": 2.5})
    # the classifier may be named with its unchanged width (widths_of round trip)
    assert count_params(abstract_with("vgg19", widths={"classifier": 100})) == 20_081_188


# --------------------------------------------------------------------------
# Registry and inputs
# --------------------------------------------------------------------------


def test_registry_errors_and_options():
    with pytest.raises(UserError, match="unknown model 'resnet57'.*resnet56"):
        create_model("resnet57")
    with pytest.raises(UserError, match="does not take depth"):
        create_model("resnet20", depth=3)
    with pytest.raises(UserError, match="unknown init"):
        create_model("lenet5", init="xavier")
    assert model_spec("vgg19").num_classes == 100 and model_spec("vgg16").num_classes == 10
    assert model_spec("resnet50").input_shape == (224, 224, 3)
    m = abstract_with("mlp", depth=3, width=64, act="relu", input_dim=784)
    assert layer_names(m) == ["net.0", "net.2", "net.4"]
    assert get_layer(m, "net.0").kernel.shape == (784, 64)
    assert get_layer(abstract_with("mlp", input_shape=(28, 28, 1)), "net.0").kernel.shape == (784, 100)
    assert out_shape(abstract_with("resnet20", num_classes=100, input_shape=(32, 32, 1)),
                     (1, 32, 32, 1)).shape == (1, 100)


def test_input_shape_errors():
    lenet = create_model("lenet5")
    with pytest.raises(UserError, match=r"lenet5 expects inputs of shape \(B, 32, 32, 1\), got \(B, 28, 28, 1\)"):
        lenet(jnp.zeros((1, 28, 28, 1)))
    with pytest.raises(UserError, match="NHWC"):
        out_shape(abstract("resnet20"), (1, 3, 32, 32))
    with pytest.raises(UserError, match="1024|32, 32, 1"):
        create_model("mlp_7_linear")(jnp.zeros((1, 28, 28, 1)))
    # the MLP flattens whatever it gets
    assert out_shape(abstract("mlp_7_linear"), (2, 1024)).shape == (2, 10)


def test_dtype_and_conv_fn_are_passed_to_layers():
    calls = []

    def conv_fn(*args, **kwargs):
        calls.append(1)
        return lax.conv_general_dilated(*args, **kwargs)

    m = create_model("lenet5", dtype=jnp.bfloat16, conv_fn=conv_fn)
    y = m(jnp.ones((1, 32, 32, 1)))
    assert y.dtype == jnp.bfloat16 and len(calls) == 3
    assert get_layer(m, "fc1").kernel.dtype == jnp.float32


# --------------------------------------------------------------------------
# Batch norm
# --------------------------------------------------------------------------


def test_batchnorm_train_vs_eval():
    m = create_model("resnet20_B", init="torch")
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    bn = get_layer(m, "bn1")
    assert bn.momentum == pytest.approx(0.9) and bn.epsilon == pytest.approx(1e-5)
    m.eval()
    y_eval = m(x)
    m.train()
    y_train = m(x)
    assert not np.allclose(y_eval, y_train, atol=1e-3)
    # running mean moved 10 % of the way towards the batch mean (torch momentum 0.1)
    feats = get_layer(m, "conv1")(x)
    np.testing.assert_allclose(bn.mean[...], 0.1 * feats.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------
# Initialisers
# --------------------------------------------------------------------------


def _kernel(model, name):
    return np.asarray(get_layer(model, name).kernel[...])


def test_gaussian_and_kaiming_std():
    m = create_model("mlp", depth=2, width=512, act="relu", init="gaussian", sigma_w=1.5, seed=3)
    k = _kernel(m, "net.0")
    assert k.std() == pytest.approx(1.5 / math.sqrt(1024), rel=0.02)
    assert abs(k.mean()) < 1e-3 and np.all(np.asarray(get_layer(m, "net.0").bias[...]) == 0)
    r = create_model("resnet20", init="gaussian", sigma_w=2.0, seed=3)
    kc = _kernel(r, "layer3.1.conv2")  # fan_in = 3 * 3 * 64
    assert kc.std() == pytest.approx(2.0 / math.sqrt(576), rel=0.03)
    r = create_model("resnet20", init="kaiming", seed=3)
    assert _kernel(r, "layer3.1.conv2").std() == pytest.approx(math.sqrt(2 / 576), rel=0.03)


def test_torch_default_bounds():
    m = create_model("lenet5", init="torch", seed=0)
    for name, fan_in in [("conv2", 5 * 5 * 6), ("conv3", 5 * 5 * 16), ("fc1", 120)]:
        bound = 1 / math.sqrt(fan_in)
        k, b = _kernel(m, name), np.asarray(get_layer(m, name).bias[...])
        assert np.abs(k).max() <= bound and np.abs(k).max() > 0.95 * bound
        assert np.abs(b).max() <= bound and np.any(b != 0)
        assert k.std() == pytest.approx(bound / math.sqrt(3), rel=0.05)  # U(-a, a): std a/sqrt(3)


@pytest.mark.parametrize("sigma_w", [1.0, ACT_GAIN["relu"]])
def test_orthogonal(sigma_w):
    widths = {"net.0": 32, "net.2": 128, "net.4": 128}  # tall, wide, square
    m = create_model("mlp", depth=4, input_dim=64, widths=widths, init="orthogonal", sigma_w=sigma_w)
    s2 = sigma_w**2
    tall, wide, square = _kernel(m, "net.0"), _kernel(m, "net.2"), _kernel(m, "net.4")
    np.testing.assert_allclose(tall.T @ tall, s2 * np.eye(32), atol=1e-5 * s2 * 4)
    np.testing.assert_allclose(wide @ wide.T, s2 * np.eye(32), atol=1e-5 * s2 * 4)
    np.testing.assert_allclose(square.T @ square, s2 * np.eye(128), atol=1e-5 * s2 * 4)
    np.testing.assert_allclose(square @ square.T, s2 * np.eye(128), atol=1e-5 * s2 * 4)
    r = create_model("resnet20", init="orthogonal", sigma_w=sigma_w)
    w = _kernel(r, "layer2.0.conv1").reshape(-1, 32)  # (144, 32): orthonormal columns
    np.testing.assert_allclose(w.T @ w, s2 * np.eye(32), atol=1e-5 * s2 * 4)
    assert get_layer(r, "layer2.0.conv1").bias is None


def test_orthogonal_makes_linear_mlp_an_isometry():
    # OrthP's claim on MLP-7-Linear: with sigma_w = 1 every singular value of the
    # end-to-end map is 1 once widths allow it (all layers tall or square).
    m = create_model("mlp_7_linear", init="orthogonal")
    prod = np.eye(1024)
    for name in layer_names(m):
        prod = prod @ np.asarray(_kernel(m, name), np.float64)
    s = np.linalg.svd(prod, compute_uv=False)
    np.testing.assert_allclose(s, 1.0, atol=1e-4)


def test_delta_orthogonal():
    r = create_model("resnet20", init="delta-orthogonal", sigma_w=1.3, seed=2)
    for name in ["conv1", "layer2.0.conv1", "layer3.2.conv2"]:
        k = _kernel(r, name)
        off = k.copy()
        off[1, 1] = 0
        assert np.all(off == 0)
        c = k[1, 1]  # (cin, cout)
        g = c.T @ c if c.shape[0] >= c.shape[1] else c @ c.T
        np.testing.assert_allclose(g, 1.69 * np.eye(min(c.shape)), atol=1e-5 * 4)
    lin = _kernel(r, "linear")  # dense layers: plain orthogonal
    np.testing.assert_allclose(lin.T @ lin, 1.69 * np.eye(10), atol=1e-5 * 4)


def test_init_default_seed_and_bn_reset():
    a = create_model("lenet5", seed=0)
    b = create_model("lenet5", seed=0)
    c = create_model("lenet5", seed=1)
    assert np.array_equal(_kernel(a, "conv1"), _kernel(b, "conv1"))
    assert not np.array_equal(_kernel(a, "conv1"), _kernel(c, "conv1"))
    # "default" keeps Flax's LeCun normal: std 1 / sqrt(fan_in) (truncated normal)
    k = _kernel(create_model("mlp", depth=2, width=512, seed=0), "net.0")
    assert k.std() == pytest.approx(1 / math.sqrt(1024), rel=0.05)
    r = create_model("resnet20", init="torch")
    bn = get_layer(r, "layer1.0.bn1")
    bn.scale[...] = bn.scale[...] * 3.0
    bn.mean[...] = bn.mean[...] + 1.0
    apply_init(r, "kaiming", key=jax.random.key(0))
    assert np.all(np.asarray(bn.scale[...]) == 1) and np.all(np.asarray(bn.mean[...]) == 0)


# --------------------------------------------------------------------------
# Forward values against independent NCHW computations (PyTorch conventions)
# --------------------------------------------------------------------------

HI = lax.Precision.HIGHEST


def _conv_nchw(x, kernel_hwio, stride, pad, bias=None):
    w = jnp.transpose(kernel_hwio, (3, 2, 0, 1))  # OIHW, like torch
    y = lax.conv_general_dilated(x, w, (stride, stride), ((pad, pad), (pad, pad)),
                                 dimension_numbers=("NCHW", "OIHW", "NCHW"), precision=HI)
    return y if bias is None else y + bias[None, :, None, None]


def _bn_nchw(x, bn):
    r = lambda v: jnp.asarray(v[...])[None, :, None, None]
    return (x - r(bn.mean)) / jnp.sqrt(r(bn.var) + 1e-5) * r(bn.scale) + r(bn.bias)


def _randomise_bn(model, key):
    for i, (_, m) in enumerate(iter_modules(model)):
        if isinstance(m, nnx.BatchNorm):
            k = jax.random.split(jax.random.fold_in(key, i), 4)
            n = m.scale.shape
            m.scale[...] = jax.random.uniform(k[0], n, minval=0.5, maxval=1.5)
            m.bias[...] = 0.1 * jax.random.normal(k[1], n)
            m.mean[...] = 0.1 * jax.random.normal(k[2], n)
            m.var[...] = jax.random.uniform(k[3], n, minval=0.5, maxval=1.5)


def test_cifar_resnet_forward_matches_handwritten():
    # one block per stage; built abstractly, then filled (fast on CPU)
    m = apply_init(nnx.eval_shape(lambda: CifarResNet(8, option="A", rngs=nnx.Rngs(0))), "torch")
    _randomise_bn(m, jax.random.key(1))
    m.eval()
    x = jax.random.normal(jax.random.key(2), (2, 32, 32, 3))

    def conv(name, h, stride):
        return _conv_nchw(h, get_layer(m, name).kernel[...], stride, 1)

    def bn(name, h):
        return _bn_nchw(h, get_layer(m, name))

    h = jnp.transpose(x, (0, 3, 1, 2))
    h = jax.nn.relu(bn("bn1", conv("conv1", h, 1)))
    for s in (1, 2, 3):
        stride = 1 if s == 1 else 2
        p = f"layer{s}.0"
        out = jax.nn.relu(bn(f"{p}.bn1", conv(f"{p}.conv1", h, stride)))
        out = bn(f"{p}.bn2", conv(f"{p}.conv2", out, 1))
        if stride == 1:
            short = h
        else:  # reference ZeroPaddingX2: F.pad(x[:, :, ::2, ::2], (0,0,0,0,C//2,C//2))
            c = h.shape[1]
            short = jnp.pad(h[:, :, ::2, ::2], ((0, 0), (c // 2, c // 2), (0, 0), (0, 0)))
        h = jax.nn.relu(out + short)
    h = h.mean(axis=(2, 3))
    ref = h @ get_layer(m, "linear").kernel[...] + get_layer(m, "linear").bias[...]
    np.testing.assert_allclose(m(x), ref, rtol=1e-4, atol=1e-4)


def test_torchvision_stem_and_strided_bottleneck_match_handwritten():
    # odd spatial sizes: where "SAME" padding and torch's explicit padding differ
    key = jax.random.key(3)
    block = apply_init(nnx.eval_shape(lambda: Bottleneck(
        LayerFactory(nnx.Rngs(0)), 8, {"conv1": 4, "conv2": 4, "conv3": 16}, stride=2, ds_width=16)),
        "torch")
    _randomise_bn(block, key)
    block.eval()
    x = jax.random.normal(jax.random.key(4), (1, 7, 7, 8))
    h = jnp.transpose(x, (0, 3, 1, 2))
    out = jax.nn.relu(_bn_nchw(_conv_nchw(h, block.conv1.kernel[...], 1, 0), block.bn1))
    out = jax.nn.relu(_bn_nchw(_conv_nchw(out, block.conv2.kernel[...], 2, 1), block.bn2))
    out = _bn_nchw(_conv_nchw(out, block.conv3.kernel[...], 1, 0), block.bn3)
    short = _bn_nchw(_conv_nchw(h, block.downsample[0].kernel[...], 2, 0), block.downsample[1])
    ref = jnp.transpose(jax.nn.relu(out + short), (0, 2, 3, 1))
    y = block(x)
    assert y.shape == (1, 4, 4, 16)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)

    # stem of a shrunken ResNet-18: conv 7x7/2 pad 3, BN, ReLU, max-pool 3x3/2 pad 1
    w = {n: 8 for n in widths_of(abstract("resnet18")) if n != "fc"}
    net = create_model("resnet18", num_classes=10, widths=w, init="torch")
    _randomise_bn(net, key)
    net.eval()
    x = jax.random.normal(jax.random.key(5), (1, 13, 13, 3))
    got = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    h = jax.nn.relu(_bn_nchw(_conv_nchw(jnp.transpose(x, (0, 3, 1, 2)), net.conv1.kernel[...], 2, 3),
                             net.bn1))  # (1, 8, 7, 7)
    hp = jnp.pad(h, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-jnp.inf)
    pooled = jnp.stack([jnp.stack([hp[:, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3].max(axis=(2, 3))
                                   for j in range(4)], -1) for i in range(4)], -2)
    np.testing.assert_allclose(got, jnp.transpose(pooled, (0, 2, 3, 1)), rtol=1e-4, atol=1e-5)
    assert out_shape(net, (1, 13, 13, 3)).shape == (1, 10)


def test_mlp_dense_kernels_and_spec_kwargs():
    m = create_model("mlp", depth=3, width=16, input_dim=64)
    ks = m.dense_kernels()
    assert [k.shape for k in ks] == [(64, 16), (16, 16), (16, 10)] and m.act == "linear"
    assert model_spec("mlp", input_dim=64).input_shape == (64,)
    assert model_spec("mlp", input_dim=1024).input_shape == (32, 32, 1)
    with pytest.raises(UserError, match="does not take"):
        model_spec("resnet20", input_dim=64)


def test_float64_model_is_float64_throughout_batchnorm_statistics_too():
    """create_model(param_dtype=float64): every variable float64, BN running statistics included, and a
    train-mode BN update stays float64 (no dtype-promotion warning) and equals the float64 batch mean."""
    import warnings

    from isotpp.models.program import flat_arrays

    with jax.enable_x64(True):
        m = create_model("resnet20", widths={n: 4 for n in layer_names(create_model("resnet20"))[:-1]},
                         param_dtype=jnp.float64, seed=0)
        dtypes = {k: v.dtype for k, v in flat_arrays(nnx.state(m)).items() if jnp.issubdtype(v.dtype, jnp.floating)}
        assert set(dtypes.values()) == {jnp.dtype(jnp.float64)}, dtypes
        assert {"bn1.mean", "bn1.var"} <= set(dtypes)
        x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 8, 8, 3)) * 1e-3 + 1.0, jnp.float64)
        h = np.asarray(m.conv1(x))
        m.train()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            m(x)
        mean, var = m.bn1.mean[...], m.bn1.var[...]
        assert mean.dtype == jnp.float64 and var.dtype == jnp.float64
        # Flax momentum 0.9 from mean 0 / var 1: 0.1 of the batch statistics (biased variance)
        np.testing.assert_allclose(np.asarray(mean), 0.1 * h.mean(axis=(0, 1, 2)), rtol=1e-12, atol=1e-300)
        np.testing.assert_allclose(np.asarray(var), 0.9 + 0.1 * h.var(axis=(0, 1, 2)), rtol=1e-12)
