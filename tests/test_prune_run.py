"""`isotpp prune`, the full pipeline, on a tiny ResNet-20 and synthetic data:
every stage's artefacts, each method's distinctive step, resuming, bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx

from isotpp.models import widths_of
from isotpp.models.program import flat_arrays
from isotpp.pruning.model_file import load_model
from isotpp.pruning.plan import Plan
from isotpp.storage.atomic import read_json
from isotpp.studies.pruning_run import PruneConfig, run_pruning

TINY = {"model": "resnet8", "dataset": "synthetic", "ratios": "*layer*.conv1:0.5", "width_scale": 0.25,
        "batch_size": 64, "base_epochs": 1, "base_lr_schedule": "0:0.05", "epochs": 1, "lr_schedule": "0:0.01",
        "jsv_samples": 4, "checkpoint_every": None, "progress": False}


@pytest.fixture(scope="module")
def base_file(tmp_path_factory):
    out = tmp_path_factory.mktemp("l1")
    summary = run_pruning(PruneConfig(method="L1", out=str(out), **TINY), log=lambda s: None)
    return out / "base" / "model.npz", out, summary


def _run(tmp_path, method, **kw):
    cfg = PruneConfig(method=method, out=str(tmp_path / method.replace("+", "_")), **{**TINY, **kw})
    return run_pruning(cfg, log=lambda s: None), tmp_path / method.replace("+", "_")


def test_l1_run_leaves_every_artefact(base_file):
    base_path, out, s = base_file
    for name in ("config.json", "plan.json", "pruned.npz", "final.npz", "summary.json", "base/metrics.jsonl",
                 "retrain/metrics.jsonl", "retrain/config.json"):
        assert (out / name).exists(), name
    assert set(s) >= {"base_acc", "jsv_after_prune", "best_acc", "final_acc", "acc_per_epoch", "jsv_per_epoch",
                      "params", "params_pruned", "sparsity", "flops", "flops_pruned", "speedup", "wall_s"}
    assert len(s["acc_per_epoch"]) == 1 and s["jsv_per_epoch"][0] > 0
    assert 0 < s["sparsity"] < 1 and s["speedup"] > 1 and s["jsv_after_prune"] > 0
    plan = Plan.load(out / "plan.json")
    pruned, header = load_model(out / "pruned.npz")
    base, _ = load_model(base_path)
    for layer, idx in plan.pruned.items():  # the widths follow the plan
        if not layer.startswith("stream:"):
            assert widths_of(pruned)[layer] == widths_of(base)[layer] - len(idx)
    assert header["meta"]["jsv_after_prune"] == pytest.approx(s["jsv_after_prune"])
    # a finished run is not redone
    assert run_pruning(PruneConfig(method="L1", out=str(out), **TINY), log=lambda s: None) == s


def test_tpp_runs_its_phases_and_removes_the_zeroed_filters(base_file, tmp_path):
    base_path, _, _ = base_file
    s, out = _run(tmp_path, "TPP", base=str(base_path), update_reg_interval=1, reg_granularity=0.25,
                  stabilize_iters=40, zero_out_interval=2)
    lines = [json.loads(line) for line in (out / "pre" / "metrics.jsonl").read_text().splitlines()]
    assert max(line.get("step", 0) for line in lines) == 4 + 40 + 1  # TPPConfig.total_iters
    assert (out / "plan.json").exists() and s["method"] == "TPP"
    pruned, _ = load_model(out / "pruned.npz")
    plan = Plan.load(out / "plan.json")
    assert widths_of(pruned)["layer1.0.conv1"] == plan.sizes["layer1.0.conv1"] - len(plan.pruned["layer1.0.conv1"])


def test_orthp_orthogonalises_the_pruned_kernels(base_file, tmp_path):
    base_path, _, _ = base_file
    _, out = _run(tmp_path, "L1+OrthP", base=str(base_path))
    pruned, _ = load_model(out / "pruned.npz")
    k = np.asarray(flat_arrays(nnx.state(pruned))["layer2.0.conv1.kernel"], np.float64)
    w = k.reshape(-1, k.shape[-1]).T  # filters x fan_in: fewer rows than columns, orthonormal rows x sqrt(2)
    np.testing.assert_allclose(w @ w.T, 2.0 * np.eye(w.shape[0]), atol=1e-5)


def test_scratch_keeps_the_architecture_and_reinitialises(base_file, tmp_path):
    base_path, l1_out, _ = base_file
    _, out = _run(tmp_path, "Scratch", base=str(base_path))
    scratch, _ = load_model(out / "pruned.npz")
    l1, _ = load_model(l1_out / "pruned.npz")
    assert widths_of(scratch) == widths_of(l1)
    a = np.asarray(flat_arrays(nnx.state(scratch))["layer1.0.conv1.kernel"])
    b = np.asarray(flat_arrays(nnx.state(l1))["layer1.0.conv1.kernel"])
    assert a.shape == b.shape and not np.allclose(a, b)


def test_x_plus_l1_trains_with_the_penalty_before_choosing(base_file, tmp_path):
    base_path, _, _ = base_file
    _, out = _run(tmp_path, "KernOrth+L1", base=str(base_path), pre_iters=5)
    config = read_json(out / "pre" / "config.json")
    # KernOrth+L1 is the reference's opp_scheme v2: weight lw_opp (1000, constant), not lw_orth_reg
    assert config["train"]["penalty_weights"] == {"kernorth_v2": 1000.0}
    assert config["train"]["method"] == "kernorth_v2+L1"
    lines = [json.loads(line) for line in (out / "pre" / "metrics.jsonl").read_text().splitlines()]
    assert max(line.get("step", 0) for line in lines) == 5


def test_x_plus_l1_in_the_reference_opp_loop(base_file, tmp_path):
    """pre_scheme="opp": the reference's opp_scheme v2 loop — TPP's schedule (L2 ramp, zero-out) on the
    L1-chosen filters, the Gram term replaced by lw_opp · KernOrth over every layer."""
    base_path, _, _ = base_file
    _, out = _run(tmp_path, "KernOrth+L1", base=str(base_path), pre_scheme="opp", lw_opp=10.0,
                  update_reg_interval=1, reg_granularity=0.5, stabilize_iters=20, zero_out_interval=1)
    config = read_json(out / "pre" / "config.json")
    assert config["train"]["penalty_weights"] == {"kernorth_v2": 10.0}
    assert config["train"]["method"] == "kernorth_v2+L1"
    lines = [json.loads(line) for line in (out / "pre" / "metrics.jsonl").read_text().splitlines()]
    assert max(line.get("step", 0) for line in lines) == 2 + 20 + 1  # TPPConfig.total_iters (every layer zeroed by then)
    plan = Plan.load(out / "plan.json")
    pruned, _ = load_model(out / "pruned.npz")
    assert widths_of(pruned)["layer1.0.conv1"] == plan.sizes["layer1.0.conv1"] - len(plan.pruned["layer1.0.conv1"])


def test_retraining_penalty_is_in_the_retraining_loss(base_file, tmp_path):
    base_path, _, _ = base_file
    s, out = _run(tmp_path, "L1+OrthConv", base=str(base_path))
    assert "orthconv" in json.dumps(read_json(out / "retrain" / "config.json"))
    assert s["method"] == "L1+OrthConv"


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "isotpp.cli", "prune", *map(str, args)], capture_output=True,
                          text=True, timeout=300, check=False)


@pytest.mark.parametrize("args,needle", [
    (("--model", "resnet20", "--ratios", "*layer*.conv1:0.5", "--method", "Magic", "--out", "{tmp}"),
     "unknown method"),
    (("--model", "resnet20", "--ratios", "*layer*.conv1:1.0", "--out", "{tmp}"), "outside [0, 1)"),
    (("--model", "resnet20", "--ratios", "*layer*.conv1:0.5"), "--out"),
    (("--model", "resnet20", "--ratios", "*layer*.conv1:0.5", "--base", "/nonexistent.npz", "--out", "{tmp}"),
     "does not exist"),
    (("--model", "resnet20", "--ratios", "*layer*.conv1:0.5", "--lr-schedule", "5:0.1", "--out", "{tmp}"),
     "schedule"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, args, needle):
    r = _cli(*[str(a).format(tmp=tmp_path / "o") for a in args])
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert not (tmp_path / "o" / "summary.json").exists()
