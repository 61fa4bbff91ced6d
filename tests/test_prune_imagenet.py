"""`isotpp prune --dataset imagenet`: the full pipeline on a tiny generated ImageFolder tree
(a narrowed ResNet-18 on 32x32 crops), the flags, and bad input."""

import dataclasses
import subprocess
import sys

import numpy as np
import pytest

from isotpp.cli.app import build_parser
from isotpp.cli.prune import config_from_args
from isotpp.data.imagefolder import EvalTransform, train_order
from isotpp.errors import UserError
from isotpp.models import widths_of
from isotpp.pruning.model_file import load_model
from isotpp.pruning.plan import Plan
from isotpp.studies.pruning_run import PruneConfig, load_data, run_pruning

TINY = {"model": "resnet18", "dataset": "imagenet", "image_size": 32, "resize": 36, "width_scale": 0.125,
        "batch_size": 8, "base_epochs": 1, "base_lr_schedule": "0:0.05", "epochs": 1, "lr_schedule": "0:0.01",
        "method": "L1", "ratios": "*layer*.conv1:0.5", "workers": 0, "jsv_samples": 4, "checkpoint_every": None,
        "progress": False}


@pytest.fixture(scope="module")
def tree(tmp_path_factory, image_tree):
    # 3 classes x 8 train (3 steps of 8) and x 4 val (12 images: two eval batches of 8, the last padded)
    return image_tree(tmp_path_factory.mktemp("data") / "imagenet", splits=(("train", 8), ("val", 4)),
                      sides=(40, 41), extensions=(".JPEG",))


@pytest.fixture(scope="module")
def run(tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("prune") / "l1"
    summary = run_pruning(PruneConfig(data_dir=str(tree), out=str(out), **TINY), log=lambda s: None)
    return out, summary


def test_the_folder_data_has_the_in_memory_interface(tree):
    data = load_data(PruneConfig(data_dir=str(tree), **TINY))
    assert (data.num_train, data.num_classes, data.input_shape) == (24, 3, (32, 32, 3))
    assert data.steps_per_epoch(8) == 3 and data.steps_per_epoch(7) == 3  # the last incomplete batch dropped
    source = data.source(PruneConfig(**TINY), seed=0, augment=True)
    assert source.steps_per_epoch == 3 and source.global_batch_size == 8
    x, y = next(iter(source.epoch(0)))
    assert x.shape == (8, 32, 32, 3) and y.shape == (8,)
    batches = list(data.evaluation().batches())
    assert len(batches) == 2 and int(sum(np.asarray(v).sum() for _, _, v in batches)) == 12
    probe = data.probe(5)
    assert probe.shape == (5, 32, 32, 3) and probe.dtype == np.float32
    np.testing.assert_array_equal(data.probe(3), probe[:3])
    assert data.probe(100).shape[0] == 12  # at most the validation set
    # an unaugmented source trains on the eval transform of the epoch's images
    plain = data.source(PruneConfig(**TINY), seed=0, augment=False)
    x0, y0 = next(iter(plain.epoch(0)))
    first = train_order(24, 8, 0, 0, (0, 1))[0][:8]
    transform = EvalTransform(32, 36)
    np.testing.assert_array_equal(np.asarray(x0), np.stack([transform((*data.train[i], True))[0] for i in first]))
    assert np.asarray(y0).tolist() == [data.train.labels[i] for i in first]
    # --train-limit draws a subset of the training images
    assert load_data(PruneConfig(data_dir=str(tree), **{**TINY, "train_limit": 16})).num_train == 16


def test_imagenet_run_leaves_a_summary_and_follows_the_plan(run):
    out, s = run
    for name in ("config.json", "plan.json", "pruned.npz", "final.npz", "summary.json", "base/model.npz",
                 "retrain/metrics.jsonl"):
        assert (out / name).exists(), name
    assert set(s) >= {"model", "dataset", "method", "base_acc", "jsv_after_prune", "best_acc", "final_acc",
                      "acc_per_epoch", "jsv_per_epoch", "params", "params_pruned", "sparsity", "flops",
                      "flops_pruned", "speedup", "wall_s"}
    assert s["model"] == "resnet18" and s["dataset"] == "imagenet" and s["method"] == "L1"
    assert 0 < s["sparsity"] < 1 and s["speedup"] > 1 and s["jsv_after_prune"] > 0
    assert len(s["acc_per_epoch"]) == 1 and s["jsv_per_epoch"][0] > 0
    for acc in (s["base_acc"], s["best_acc"], s["final_acc"]):
        assert 0.0 <= acc <= 100.0
        assert abs(acc * 12 / 100 - round(acc * 12 / 100)) < 1e-6  # the 12 validation images, each counted once
    plan = Plan.load(out / "plan.json")
    pruned, header = load_model(out / "pruned.npz")
    base, _ = load_model(out / "base" / "model.npz")
    assert base.build_config.input_shape == (32, 32, 3) and base.build_config.num_classes == 3
    layers = {k: v for k, v in plan.pruned.items() if not k.startswith("stream:")}
    assert all(not v for k, v in plan.pruned.items() if k.startswith("stream:"))  # the residual streams are kept
    assert len(layers) == 8 and all(layer.endswith(".conv1") for layer in layers)  # 4 stages x 2 blocks
    for layer, idx in layers.items():  # the widths follow the plan: ceil(0.5 n) of n filters removed
        assert widths_of(pruned)[layer] == widths_of(base)[layer] - len(idx) == widths_of(base)[layer] // 2
    assert header["meta"]["jsv_after_prune"] == pytest.approx(s["jsv_after_prune"])
    assert run_pruning(PruneConfig(data_dir="/nowhere", out=str(out), **TINY)) == s  # finished: not redone


def test_the_imagenet_flags_reach_the_config(tree, tmp_path):
    args = build_parser().parse_args(["prune", "--model", "resnet50", "--ratios", "*layer*.conv1:0.3",
                                      "--dataset", "imagenet", "--data-dir", str(tree), "--workers", "3",
                                      "--image-size", "160", "--resize", "182", "--out", str(tmp_path)])
    c = config_from_args(args).validate()
    assert (c.dataset, c.data_dir, c.workers, c.image_size, c.resize) == ("imagenet", str(tree), 3, 160, 182)
    d = config_from_args(build_parser().parse_args(["prune", "--model", "resnet50", "--ratios", "*conv1:0.3",
                                                    "--out", str(tmp_path)]))
    assert (d.workers, d.image_size, d.resize) == (None, 224, 256)
    with pytest.raises(UserError, match="resize 100 is smaller than image-size 224"):
        PruneConfig(dataset="imagenet", resize=100).validate()


def test_table2_cell_commands_build_imagenet_configs(tree, tmp_path):
    from isotpp.studies.paper_tables import cell_command, cells, load_spec

    spec = load_spec("table2_resnet50")
    base = tmp_path / "base.npz"
    base.write_bytes(b"")  # validate() only checks that the base model exists
    for cell in cells(spec):
        args = build_parser().parse_args(cell_command(spec, cell, tmp_path, data_dir=str(tree))[1:])
        args.base = str(base)
        c = config_from_args(args).validate()
        assert (c.model, c.dataset, c.data_dir, c.batch_size) == ("resnet50", "imagenet", str(tree), 256)
        assert (c.workers, c.image_size, c.resize, c.update_reg_interval) == (None, 224, 256, 5)
    data = load_data(dataclasses.replace(c, batch_size=8))
    assert (data.num_classes, data.input_shape, data.eval_batch_size) == (3, (224, 224, 3), 8)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "isotpp.cli", "prune", "--model", "resnet18", "--ratios",
                           "*layer*.conv1:0.5", "--dataset", "imagenet", *map(str, args)], capture_output=True,
                          text=True, timeout=300, check=False)


@pytest.mark.parametrize("case,needle", [
    ("no-data-dir", "needs --data-dir"),
    ("missing", "does not exist"),
    ("no-train", "does not exist"),
    ("empty", "no images"),
    ("workers", "--workers"),
])
def test_bad_imagenet_input_exits_2_with_one_line(tmp_path, case, needle):
    empty = tmp_path / "empty"
    (empty / "train" / "cat").mkdir(parents=True)
    (empty / "val" / "cat").mkdir(parents=True)
    (tmp_path / "no-train" / "val").mkdir(parents=True)
    data = {"no-data-dir": [], "missing": ["--data-dir", tmp_path / "missing"],
            "no-train": ["--data-dir", tmp_path / "no-train"], "empty": ["--data-dir", empty],
            "workers": ["--data-dir", empty, "--workers", "-1"]}[case]
    r = _cli(*data, "--out", tmp_path / "o")
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert not (tmp_path / "o" / "summary.json").exists()
