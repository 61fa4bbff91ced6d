"""Parameters, FLOPs, sparsity and speedup (isotpp.pruning.cost) and ``isotpp prune --dry-run``.

Counts are checked against hand computations and closed-form sums written
here independently of the tracing in isotpp.pruning.cost, and against the published
headers of the TPP paper's Tables 1 and 2 (see the module doc of isotpp.pruning.cost
for the convention).
"""

import argparse
import json
import re
import subprocess
import sys

import numpy as np
import pytest

from isotpp.cli import app as cli
from isotpp.cli.prune import add_parser
from isotpp.errors import UserError
from isotpp.models import BuildConfig
from isotpp.pruning.cost import (
    count_cost,
    plan_cost,
    ratios_cost,
    widths_after,
    widths_cost,
)
from isotpp.pruning.plan import Plan, hard_prune, l1_plan


def _abstract(name, num_classes=None, **kw):
    from isotpp.models import model_spec

    return BuildConfig(name, num_classes or model_spec(name).num_classes, None,
                       tuple(sorted(kw.items()))).create(abstract=True)


def _concrete(name, seed=0, **kw):
    """A model with real (random) weights, filled from numpy: no per-shape initialiser compiles."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    model = _abstract(name, **kw)
    rng = np.random.default_rng(seed)
    nnx.update(model, jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape), s.dtype),
                                   nnx.state(model)))
    return model


# --------------------------------------------------------------------------
# Hand-computed tiny cases.
# --------------------------------------------------------------------------


def test_two_layer_mlp_by_hand():
    """4 -> 5 -> 3 with biases: 4·5+5 + 5·3+3 = 43 parameters, 20 + 15 = 35 MACs;
    pruning 2 of the 5 hidden units: 4·3+3 + 3·3+3 = 27 parameters, 12 + 9 = 21 MACs."""
    model = _concrete("mlp", depth=2, width=5, input_dim=4, num_classes=3)
    cost = count_cost(model)
    assert (cost.params, cost.params_conv_fc, cost.flops) == (43, 43, 35)
    assert {n: (c.kind, c.params, c.flops, c.out_shape) for n, c in cost.layers.items()} == {
        "net.0": ("dense", 25, 20, (5,)), "net.2": ("dense", 18, 15, (3,))}

    by_hand = Plan({"net.0": 5}, {"net.0": (1, 3)})
    pc = plan_cost(model, by_hand)
    assert (pc.params, pc.params_pruned, pc.flops, pc.flops_pruned) == (43, 27, 35, 21)
    assert pc.sparsity == pytest.approx(1 - 27 / 43) and pc.speedup == pytest.approx(35 / 21)
    assert dict(pc.layers) == {"net.0": (5, 3)}
    # which channels go does not matter, only how many: L1 on the real weights agrees
    assert plan_cost(model, l1_plan(model, "net.0:0.4")).as_dict() == pc.as_dict()
    assert widths_after(model, "net.0:0.4") == {"net.0": 3, "net.2": 3}


def test_lenet5_by_hand_and_against_the_materialised_pruned_model():
    """LeNet-5 at 32x32x1, 5x5 valid convs with biases (params; MACs = kernel size x output positions):
    conv1 1·6·25+6 = 156;  150·28·28 = 117,600    conv2 6·16·25+16 = 2,416; 2,400·10·10 = 240,000
    conv3 16·120·25+120 = 48,120; 48,000·1·1      fc1 120·84+84 = 10,164; 10,080      fc2 84·10+10 = 850; 840
    """
    model = _concrete("lenet5")
    cost = count_cost(model)
    per_layer = {n: (c.params, c.flops, c.out_shape) for n, c in cost.layers.items()}
    assert per_layer == {
        "conv1": (156, 117_600, (28, 28, 6)),
        "conv2": (2_416, 240_000, (10, 10, 16)),
        "conv3": (48_120, 48_000, (1, 1, 120)),
        "fc1": (10_164, 10_080, (84,)),
        "fc2": (850, 840, (10,)),
    }
    assert cost.params == cost.params_conv_fc == 61_706 and cost.flops == 416_520
    assert cost.flops_x2 == 2 * 416_520

    # conv2 at 0.5 keeps 8 filters: conv2 6·8·25+8 = 1,208 (120,000 MACs), conv3 8·120·25+120 = 24,120 (24,000)
    plan = l1_plan(model, "conv2:0.5")
    pc = plan_cost(model, plan)
    assert pc.params_pruned == 61_706 - 2_416 - 48_120 + 1_208 + 24_120
    assert pc.flops_pruned == 416_520 - 240_000 - 48_000 + 120_000 + 24_000
    assert dict(pc.layers) == {"conv2": (16, 8)}
    small = count_cost(hard_prune(model, plan))  # the pruned weights really built, counted directly
    assert (small.params, small.flops) == (pc.params_pruned, pc.flops_pruned)


def test_abstract_and_concrete_models_agree_and_are_left_untouched():
    import jax

    real = _concrete("lenet5")
    conv_fn = real.conv1.conv_general_dilated
    assert count_cost(real) == count_cost(_abstract("lenet5"))
    assert real.conv1.conv_general_dilated is conv_fn  # the recording wrappers live on a copy
    assert real.fc1.dot_general is jax.lax.dot_general


def test_flops_follow_the_input_size():
    """Doubling H and W quadruples every conv's cost; the classifier (after global pooling) is unchanged."""
    model = _abstract("resnet20")
    c32, c64 = count_cost(model), count_cost(model, (64, 64, 3))
    fc = 64 * 10
    assert c64.flops - fc == 4 * (c32.flops - fc)
    assert c64.params == c32.params
    with pytest.raises(UserError, match="NHWC"):
        count_cost(model, (32, 32, 1))


# --------------------------------------------------------------------------
# Whole architectures against closed-form sums and the well-known values.
# --------------------------------------------------------------------------


def _cifar_resnet_macs(n_blocks, mids=(16, 32, 64), num_classes=10):
    macs, cin = 27 * 16 * 32 * 32, 16
    for (w, hw), mid in zip(((16, 32), (32, 16), (64, 8)), mids):
        for _ in range(n_blocks):
            macs += (9 * cin * mid + 9 * mid * w) * hw * hw
            cin = w
    return macs + 64 * num_classes


def _vgg_macs(cfg, num_classes):
    macs, cin, hw = 0, 3, 32
    for v in cfg:
        if v == "M":
            hw //= 2
        else:
            macs += 9 * cin * v * hw * hw
            cin = v
    return macs + cin * num_classes


def _resnet50_macs():
    macs, cin, hw = 7 * 7 * 3 * 64 * 112 * 112, 64, 56  # stem, then 3x3/2 max-pool
    for planes, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(blocks):
            s = stride if i == 0 else 1
            out = hw // s
            macs += cin * planes * hw * hw  # conv1 1x1 (torchvision v1.5: stride on conv2)
            macs += 9 * planes * planes * out * out + planes * 4 * planes * out * out
            if i == 0:
                macs += cin * 4 * planes * out * out  # downsample 1x1
            cin, hw = 4 * planes, out
    return macs + 2048 * 1000


def test_resnet56_vgg19_resnet50_unpruned():
    """ResNet56 (CIFAR-10): 853,018 parameters (0.85M), 125,485,696 MACs (the 125.49M usually quoted;
    the paper's "0.25G" counts adds too). VGG19-BN (CIFAR-100, one classifier layer): 20,081,188
    parameters, 398,182,400 MACs. ResNet50 at 224: 25,557,032 parameters and 4,089,184,256 MACs
    (torchvision's "4.09 GFLOPS"): convs 4,087,136,256 + fc 2,048,000, BN/ReLU/pool/adds not counted."""
    from isotpp.models.vgg import CFG

    r56 = count_cost(_abstract("resnet56"))
    assert (r56.params, r56.params_conv_fc, r56.flops) == (853_018, 848_954, 125_485_696)
    assert r56.flops == _cifar_resnet_macs(9) and r56.flops_x2 / 1e9 == pytest.approx(0.25, abs=0.005)

    vgg = count_cost(_abstract("vgg19"))
    assert (vgg.params, vgg.flops) == (20_081_188, 398_182_400)
    assert vgg.flops == _vgg_macs(CFG[19], 100)

    r50 = count_cost(_abstract("resnet50"))
    assert (r50.params, r50.flops) == (25_557_032, 4_089_184_256)
    assert r50.flops == _resnet50_macs()
    assert r50.layers["fc"].flops == 2_048_000 and r50.layers["conv1"].out_shape == (112, 112, 64)


# --------------------------------------------------------------------------
# The paper's numbers.
# --------------------------------------------------------------------------

# TPP paper (arXiv 2207.12534, ICLR 2023), Table 1 header, "Layerwise PR / Sparsity/Speedup",
# ResNet56 on CIFAR-10 with *layer*.conv1 pruned (read from the reference repo's figs/tab1.png).
TABLE1_PUBLISHED = {0.3: ("31.14", "1.45"), 0.5: ("49.82", "1.99"), 0.7: ("70.57", "3.59"),
                    0.9: ("90.39", "11.41"), 0.95: ("95.19", "19.31")}
# What isotpp prints (L1's ceil counts: 11/22/44, 8/16/32, 4/9/19, 1/3/6, 1/1/3 filters kept per stage):
# exact counts, and the paper's rounding (counts rounded to 0.001 M parameters and 0.001 GFLOPs).
TABLE1_PRINTED = {0.3: ("31.14", "1.45"), 0.5: ("49.82", "1.99"), 0.7: ("70.58", "3.59"),
                  0.9: ("90.45", "11.58"), 0.95: ("95.18", "19.85")}
TABLE1_PRINTED_ROUNDED = {0.3: ("31.18", "1.45"), 0.5: ("49.82", "1.99"), 0.7: ("70.57", "3.59"),
                          0.9: ("90.39", "11.41"), 0.95: ("95.19", "19.31")}


def _printed(table, suffix=""):
    sparsity = re.search(rf"\| sparsity{suffix}\s+\| ([\d.]+) %", table).group(1)
    speedup = re.search(rf"\| speedup{suffix}\s+\| ([\d.]+) ×", table).group(1)
    return sparsity, speedup


@pytest.fixture(scope="module")
def table1(tmp_path_factory):
    from isotpp.cli.prune import run_prune

    out = {}
    for r in TABLE1_PUBLISHED:
        path = tmp_path_factory.mktemp("dry") / "cost.json"
        res = run_prune(model="resnet56", ratios=f"*layer*.conv1:{r}", json_path=str(path))
        out[r] = {"exact": _printed(res["table"]), "rounded": _printed(res["table"], ", paper's rounding ¹"),
                  "table": res["table"], "json": json.loads(path.read_text()), "as_published": res["as_published"]}
    return out


def test_table1_header_as_printed(table1):
    assert {r: t["exact"] for r, t in table1.items()} == TABLE1_PRINTED
    assert {r: t["rounded"] for r, t in table1.items()} == TABLE1_PRINTED_ROUNDED
    for r in (0.3, 0.5):  # the exact counts give the published 0.3 and 0.5 columns
        assert table1[r]["exact"] == TABLE1_PUBLISHED[r]
    for r in (0.5, 0.7, 0.9, 0.95):  # the paper's rounding gives the published 0.5 ... 0.95 columns
        assert table1[r]["rounded"] == TABLE1_PUBLISHED[r]
    for r, (sparsity, speedup) in TABLE1_PUBLISHED.items():  # every published number is printed
        assert f"| {sparsity} %" in table1[r]["table"] and f"| {speedup} ×" in table1[r]["table"], r


def test_table1_rounded_counts_by_hand(table1):
    """The paper's rounding is 1 - p/P and F/f on counts rounded to 3 decimals in M and G (2 × MACs):
    at 0.9, 1 - 0.082/0.853 = 90.39 % and 0.251/0.022 = 11.41x. The JSON file keeps the exact counts."""
    pub = table1[0.9]["as_published"]
    assert (pub["params_m"], pub["params_pruned_m"], pub["flops_g"], pub["flops_pruned_g"]) == \
        (0.853, 0.082, 0.251, 0.022)
    assert pub["sparsity"] == pytest.approx(1 - 0.082 / 0.853) and pub["speedup"] == pytest.approx(0.251 / 0.022)
    j = table1[0.95]["json"]
    assert (j["params_pruned"], j["flops_pruned"]) == (41_092, 6_322_816)  # 0.041 M, 2 × 6.3 M = 0.013 G
    assert table1[0.95]["as_published"]["speedup"] == pytest.approx(0.251 / 0.013)
    assert "as_published" not in j
    assert j["sparsity"] == pytest.approx(1 - 41_092 / 853_018) and j["speedup"] == pytest.approx(125_485_696 / 6_322_816)


def test_published_rounding_is_none_below_its_precision():
    from isotpp.pruning.cost import as_published

    pub = as_published(1_000, 500, 100_000, 50_000)  # 0.001 M params, 0.0002 G: nothing left to divide by
    assert pub["params_pruned_m"] == 0.001 and pub["flops_pruned_g"] == 0.0 and pub["speedup"] is None
    assert pub["sparsity"] == pytest.approx(0.0)


def test_table1_high_ratio_columns_fit_no_stage_widths():
    """Under exact counting, no ResNet56 with one conv1 width per stage (16·32·64 choices) has 3.59x
    with 70.57 %, 11.41x with 90.39 % or 19.31x with 95.19 %, whether BN parameters count or not:
    those header pairs come from rounded counts (above), not from other widths. 0.3 and 0.5 are
    reachable, by L1's widths among others."""
    k1, k2, k3 = np.meshgrid(np.arange(1, 17), np.arange(1, 33), np.arange(1, 65), indexing="ij")
    macs = 27 * 16 * 1024 + 640.0
    conv_fc = 27 * 16 + 650.0
    bn = 2 * 16 + 2 * (9 * 16 + 9 * 32 + 9 * 64)  # stem + every bn2
    for k, w, hw, cin0 in ((k1, 16, 32, 16), (k2, 32, 16, 16), (k3, 64, 8, 32)):
        first, rest = 9 * cin0 * k + 9 * k * w, 8 * (9 * w * k + 9 * k * w)
        macs = macs + (first + rest) * hw * hw
        conv_fc = conv_fc + first + rest
        bn = bn + 9 * 2 * k
    base = _cifar_resnet_macs(9)
    assert macs[-1, -1, -1] == base and conv_fc[-1, -1, -1] + bn[-1, -1, -1] == 853_018
    speedup = np.round(base / macs, 2)
    sparsity = {"all": np.round((1 - (conv_fc + bn) / 853_018) * 100, 2),
                "conv_fc": np.round((1 - conv_fc / 848_954) * 100, 2)}
    for ratio, (sp, su) in TABLE1_PUBLISHED.items():
        hit = (speedup == float(su)) & ((sparsity["all"] == float(sp)) | (sparsity["conv_fc"] == float(sp)))
        assert hit.any() == (ratio in (0.3, 0.5)), ratio
    assert speedup[10, 21, 43] == 1.45 and sparsity["all"][10, 21, 43] == 31.14  # L1 at 0.3: 11/22/44


def test_pruned_cost_equals_tracing_the_pruned_architecture():
    """plan/ratio costs reuse the unpruned trace's output positions; tracing the narrow model agrees."""
    for name, ratios in (("resnet20", "*layer*.conv1:0.7"), ("lenet5", "conv1:0.5,fc1:0.5")):
        model = _abstract(name)
        pc = ratios_cost(model, ratios)
        narrow = model.build_config.create(widths=widths_after(model, ratios), abstract=True)
        assert count_cost(narrow) == pc.after


def test_resnet50_table2_speedups():
    """The reference README's stage_pr settings for ResNet50 give the speedups of the paper's Table 2,
    exactly and with the paper's rounding (e.g. 8.178 / 3.190 GFLOPs = 2.56x)."""
    model = _abstract("resnet50")
    for ratios, published, flops_pruned_g in (
        ("*layer[1-3]*conv[1-2]:0.3,*layer4*conv[1-2]:0.14", 1.49, 5.491),
        ("*layer[1-3]*conv[1-2]:0.6,*layer4*conv[1-2]:0.21", 2.31, 3.543),
        ("*layer[1-2]*conv[1-2]:0.74,*layer3*conv[1-2]:0.6,*layer4*conv[1-2]:0.21", 2.56, 3.190),
        ("*layer[1-3]*conv[1-2]:0.68,*layer4*conv[1-2]:0.5", 3.06, 2.670),
    ):
        pc = ratios_cost(model, ratios)
        pub = pc.as_published()
        assert round(pc.speedup, 2) == published and round(pub["speedup"], 2) == published, ratios
        assert (pub["flops_g"], pub["flops_pruned_g"]) == (8.178, flops_pruned_g)


def test_resnet34_table2_config_gives_the_published_1_32x():
    """The ResNet-34 config's one setting (Li et al.'s pruned-B) gives the paper's 1.32x, exactly and with
    the paper's rounding, pruning only the 8 non-skipped first convs of the basic blocks."""
    from isotpp.studies.paper_tables import load_spec

    spec = load_spec("table2_resnet34")
    assert [label for label, _ in spec.ratios] == ["1.32x"]
    model = _abstract("resnet34")
    pc = ratios_cost(model, spec.ratios[0][1])
    pub = pc.as_published()
    assert round(pc.speedup, 2) == 1.32 and round(pub["speedup"], 2) == 1.32
    assert pc.layers == {
        "layer1.1.conv1": (64, 32), "layer1.2.conv1": (64, 32), "layer2.1.conv1": (128, 51),
        "layer2.2.conv1": (128, 51), **{f"layer3.{i}.conv1": (256, 153) for i in range(1, 5)},
    }
    # multiply-adds by hand: a basic block's conv1 (c_in→k) and conv2 (k→c_out) are both 3×3 at the stage's
    # output size s×s, so removing d of conv1's filters saves 9·s²·d·(c_in + c_out)
    saved = 2 * 9 * 56**2 * 32 * (64 + 64) + 2 * 9 * 28**2 * 77 * (128 + 128) + 4 * 9 * 14**2 * 103 * (256 + 256)
    assert pc.flops - pc.flops_pruned == saved
    assert pc.flops == 3_663_761_408


def test_vgg19_skip_first_conv():
    model = _abstract("vgg19")
    pc = ratios_cost(model, "*features*:0.5", skip=("*features.0",))
    assert "features.0" not in pc.layers and "classifier" not in pc.layers
    assert pc.layers["features.3"] == (64, 32) and pc.layers["features.49"] == (512, 256)
    assert len(pc.layers) == 15
    # widths given directly give the same
    assert widths_cost(model, widths_after(model, "*features*:0.5", ("*features.0",))) == pc


# --------------------------------------------------------------------------
# The command line.
# --------------------------------------------------------------------------


def _prune_registered() -> bool:
    for action in cli.build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return "prune" in action.choices
    return False


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """isotpp's main with the prune sub-command (registered here until cli.py wires it in)."""
    if not _prune_registered():
        monkeypatch.setattr(cli, "_COMMANDS", [*cli._COMMANDS, add_parser])

    def run(*argv):
        try:
            code = cli.main(["prune", *map(str, argv)])
        except SystemExit as e:  # argparse errors
            code = e.code
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def test_cli_json_keys_and_table(run_cli, tmp_path):
    path = tmp_path / "sub" / "cost.json"
    code, out, err = run_cli("--model", "resnet56", "--ratios", "*layer*.conv1:0.5", "--dry-run", "--json", path)
    assert code == 0 and err == ""
    record = json.loads(path.read_text())
    assert list(record) == ["params", "params_pruned", "sparsity", "flops", "flops_pruned", "speedup", "layers"]
    assert (record["params"], record["params_pruned"]) == (853_018, 428_074)
    assert (record["flops"], record["flops_pruned"]) == (125_485_696, 62_964_352)
    assert record["sparsity"] == pytest.approx(1 - 428_074 / 853_018)
    assert record["speedup"] == pytest.approx(125_485_696 / 62_964_352)
    assert len(record["layers"]) == 27 and record["layers"]["layer3.8.conv1"] == [64, 32]
    assert "layer1.0.conv2" not in record["layers"]
    assert "49.82 %" in out and "1.99 ×" in out and "layer2.0.conv1" in out and f"json: {path}" in out
    assert not list(path.parent.glob(".*.tmp"))  # written atomically, no leftovers


@pytest.mark.parametrize("argv,needle", [
    (("--model", "resnet57", "--ratios", "*layer*.conv1:0.5", "--dry-run"), "unknown model"),
    (("--model", "resnet56", "--ratios", "*layer*.conv1:1.0", "--dry-run"), "outside [0, 1)"),
    (("--model", "resnet56", "--ratios", "*layer*.conv1:-0.1", "--dry-run"), "outside [0, 1)"),
    (("--model", "resnet56", "--ratios", "*layer*.conv1", "--dry-run"), "bad ratio item"),
    (("--model", "resnet56", "--ratios", "*block*:0.5", "--dry-run"), "matches no layer"),
    (("--model", "resnet56", "--ratios", "*linear:0.5", "--dry-run"), "classifier"),
    (("--model", "vgg19", "--ratios", "*:0.5", "--dry-run"), "classifier"),
    (("--model", "resnet56", "--ratios", "*conv2:0.5", "--dry-run"), "only part of residual stream"),
    (("--model", "resnet56", "--ratios", "*layer*.conv1:0.5", "--skip", "*nothing*", "--dry-run"),
     "matches no layer"),
    (("--model", "resnet56", "--ratios", "*layer*.conv1:0.5"), "needs --out"),
    (("--model", "resnet56", "--dry-run"), "--ratios"),
    (("--model", "resnet56", "--ratios", "*layer*.conv1:0.5", "--num-classes", "0", "--dry-run"),
     "positive integer"),
])
def test_cli_bad_input_exits_2_with_one_line(run_cli, argv, needle):
    code, out, err = run_cli(*argv)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and needle in err, err


_SUBPROCESS = """
import sys
from isotpp.cli import app as cli
from isotpp.cli.prune import add_parser
parser = cli.build_parser()
if not any("prune" in (getattr(a, "choices", None) or ()) for a in parser._actions):
    cli._COMMANDS.append(add_parser)
sys.exit(cli.main(sys.argv[1:]))
"""


def test_cli_error_in_a_subprocess_has_no_traceback():
    proc = subprocess.run([sys.executable, "-c", _SUBPROCESS, "prune", "--model", "resnet56",
                           "--ratios", "*layer*.conv2:0.5", "--dry-run"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("isotpp prune: error:") and "Traceback" not in proc.stderr
