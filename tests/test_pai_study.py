"""The PaI study on a slice of real Fashion-MNIST (a tiny schedule): every piece runs, the
results contract holds, a rerun reuses everything, and bad input exits 2 with one line."""

import json
import subprocess
import sys

import numpy as np
import pytest

from isotpp.pai.masks import keep_count
from isotpp.studies import pai as study

SMALL = {
    "seeds": (0,), "densities": (0.05,), "methods": ("magnitude", "autosparse+ai"), "epochs": 2, "lr_schedule": "0:0.1",
    "train_limit": 3000, "val_size": 500, "batch_size": 100, "score_examples": 200, "irp_rounds": 2,
    "irp_epochs": 1, "irp_lr_schedule": "0:0.1", "scorer_epochs": 2, "scorer_hidden": (8,), "ai_iters": 20,
    "transfer_methods": ("autosparse",), "transfer_densities": (0.05,), "transfer_epochs": 1, "jsv_samples": 8,
}


@pytest.fixture(scope="module")
def small_study(tmp_path_factory, fashion_mnist_dir):
    out = tmp_path_factory.mktemp("pai")
    config = study.PaIConfig(data_dir=str(fashion_mnist_dir), **SMALL)
    results = study.run_study(config, out, progress=False, log=lambda s: None)
    return out, config, results


def test_every_piece_runs_on_real_data(small_study):
    out, _, r = small_study
    lenet = r["lenet"]
    assert lenet["methods"] == ["dense", "magnitude", "autosparse+ai"]
    n = 784 * 300 + 300 * 100 + 100 * 10
    for method in ("magnitude", "autosparse+ai"):
        cell = lenet["runs"][method]["0.05"]
        assert cell["seeds"] == [0]
        assert cell["density"] == [keep_count(0.05, n) / n]  # the exact count, global threshold
        assert 10.0 < cell["final_acc"][0] <= 100.0 and cell["jsv_mean"][0] > 0
    dense = lenet["runs"]["dense"]["1"]
    assert dense["density"] == [1.0] and dense["final_acc"][0] > 60.0  # 2 epochs on 2,500 images
    # the transfer target and the scorer's validation on a second IRP run of another seed
    assert r["transfer"]["arch"] == "small_convnet" and r["transfer"]["runs"]["autosparse"]["0.05"]["seeds"] == [0]
    v = r["autosparse"]["validation"]
    assert v["record_seed"] == 101 and r["autosparse"]["scorer"]["record_seed"] == 100
    for name in ("results.json", "table.md", "accuracy.png", "jsv.png", "metrics.jsonl", "autosparse/scorer.npz",
                 "autosparse/irp_lenet_300_100_seed100.npz", "lenet/seed0/dense__d1.json"):
        assert (out / name).is_file(), name
    table = (out / "table.md").read_text()
    assert "Magnitude" in table and "AutoSparse+AI" in table and "ticket overlap" in table


def test_accuracy_is_last_epoch_or_validation_selected(small_study):
    out, _, _ = small_study
    cell = json.loads((out / "lenet" / "seed0" / "magnitude__d0.05.json").read_text())
    test, val = np.array(cell["test_acc_per_epoch"]), np.array(cell["val_acc_per_epoch"])
    assert cell["final_acc"] == test[-1]
    best = len(val) - 1 - int(np.argmax(val[::-1]))
    assert cell["val_selected_acc"] == test[best]


def test_rerun_reuses_every_piece(small_study):
    out, config, r = small_study
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.npz")}
    again = study.run_study(config, out, progress=False, log=lambda s: None)
    assert again["lenet"]["runs"] == r["lenet"]["runs"]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.npz")} == before
    changed = study.PaIConfig(**{**config.to_dict(), "epochs": 3})
    with pytest.raises(study.UserError, match="different epochs"):
        study.run_study(changed, out, progress=False, log=lambda s: None)


def test_study_config_refuses_shared_seeds():
    with pytest.raises(study.UserError, match="must not share a seed"):
        study.PaIConfig(seeds=(0, 100)).validate()


def test_bad_density_exits_2_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "isotpp.cli", "reproduce", "pai", "--quick", "--densities",
                           "0.1,1.5", "--out", str(tmp_path / "out")], check=False, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "density 1.5 is outside (0, 1]" in lines[0], proc.stderr


def test_files_for_other_features_or_architectures_exit_2(tmp_path, fashion_mnist_dir, small_study, capsys):
    from isotpp.cli.app import main
    from isotpp.pai.irp import IRPRecord

    shapes = {"conv1.kernel": (3, 3, 1, 8), "fc2.kernel": (100, 10)}
    IRPRecord(arch="small_convnet", seed=3, density=0.5, rounds=2, rewind="kernels", names=tuple(shapes),
              w0={n: np.zeros(s, np.float32) for n, s in shapes.items()},
              masks={n: np.ones((2, *s), bool) for n, s in shapes.items()}).save(tmp_path / "conv_irp.npz")
    src = small_study[0] / "autosparse" / "scorer.npz"
    with np.load(src) as data:
        arrays = {k: np.asarray(data[k]) for k in data.files}
    header = json.loads(bytes(arrays["__isotpp__"]).decode())
    header["spec"]["features"] = ["w0", "g0", "fan_in"]
    arrays["__isotpp__"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    np.savez(tmp_path / "other_features.npz", **arrays)
    cases = [
        (("--densities", "0"), "outside (0, 1]"),
        (("--irp-record", tmp_path / "conv_irp.npz"), "made on small_convnet, not lenet_300_100"),
        (("--scorer", tmp_path / "other_features.npz"), "trained on features ['w0', 'g0', 'fan_in']"),
    ]
    for extra, needle in cases:
        try:
            rc = main(["reproduce", "pai", "--quick", "--data-dir", str(fashion_mnist_dir), "--out",
                       str(tmp_path / "out"), *map(str, extra)])
        except SystemExit as e:  # a value outside its domain is refused while parsing (exit 2, one line)
            rc = e.code
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert rc == 2 and len(lines) == 1 and needle in lines[0], (extra, err)
