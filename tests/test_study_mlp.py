"""The linear-network study on real Fashion-MNIST (a slice, a reduced schedule):
the paper's mechanism, the results contract, resuming, and bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest

from isotpp.studies import mlp_linear as study

# A reduced schedule that still shows the mechanism: 6000 training examples
# (60 steps per epoch), 4 base epochs, TPP with 1000 reg iterations + 700 of
# stabilising (the quick schedule's), 3 retraining epochs at constant LRs.
SMALL = {
    "seeds": (0,), "methods": ("L1", "L1+OrthP", "TPP"), "train_limit": 6000,
    "base_epochs": 4, "base_lr_schedule": "0:0.01", "retrain_epochs": 3,
    "lr_schedules": (("0.01", "0:0.01"), ("0.001", "0:0.001")),
    "tpp_reg_granularity": 1e-3, "tpp_update_reg_interval": 1, "tpp_stabilize_iters": 700,
    "tpp_zero_out_interval": 100,
}


@pytest.fixture(scope="module")
def small_study(tmp_path_factory, fashion_mnist_dir):
    out = tmp_path_factory.mktemp("study")
    config = study.StudyConfig(data_dir=str(fashion_mnist_dir), **SMALL)
    results = study.run_study(config, out, progress=False, log=lambda s: None)
    return out, config, results


def _cell(results, method, lr, key):
    return results["runs"][method][lr][key][0]


def test_the_papers_mechanism(small_study):
    _, _, r = small_study
    l1 = _cell(r, "L1", "0.01", "jsv_after_prune")
    orthp = _cell(r, "L1+OrthP", "0.01", "jsv_after_prune")
    tpp = _cell(r, "TPP", "0.01", "jsv_after_prune")
    # L1 pruning collapses the mean JSV far below 1 ...
    assert l1 < 0.01
    # ... OrthP restores exact isometry on the linear net ...
    assert orthp == pytest.approx(1.0, abs=1e-4)
    # ... and TPP keeps it orders of magnitude above L1's.
    assert tpp > 100 * l1
    # The JSV after pruning does not depend on the retraining LR.
    assert _cell(r, "L1", "0.001", "jsv_after_prune") == l1
    # At LR 1e-3, L1 retrains worse than OrthP and TPP.
    acc = {m: _cell(r, m, "0.001", "final_acc") for m in ("L1", "L1+OrthP", "TPP")}
    assert acc["L1"] + 10 < acc["L1+OrthP"]
    assert acc["L1"] + 10 < acc["TPP"]


def test_results_contract(small_study):
    out, _config, _r = small_study
    on_disk = json.loads((out / "results.json").read_text())
    assert set(on_disk) >= {"config", "runs", "wall_s"}
    assert list(on_disk["runs"]) == ["L1", "L1+OrthP", "TPP"]
    for by_lr in on_disk["runs"].values():
        assert list(by_lr) == ["0.01", "0.001"]
        for cell in by_lr.values():
            assert set(cell) == {"best_acc", "final_acc", "jsv_after_prune", "acc_per_epoch", "jsv_per_epoch"}
            assert len(cell["best_acc"]) == 1
            acc = np.asarray(cell["acc_per_epoch"][0])
            assert acc.shape == (3,) and np.all((0 <= acc) & (acc <= 100))
            assert cell["best_acc"][0] == pytest.approx(acc.max())
            assert cell["final_acc"][0] == pytest.approx(acc[-1])
            assert len(cell["jsv_per_epoch"][0]) == 3
    assert on_disk["config"]["ratio"] == 0.8 and on_disk["config"]["train_limit"] == 6000
    table = (out / "table.md").read_text()
    assert "| L1+OrthP" in table and "Mean JSV after pruning" in table
    assert (out / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "config.json").exists()
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert {l["phase"] for l in lines} == {"base", "tpp", "retrain"}
    assert sum(l["phase"] == "retrain" for l in lines) == 3 * 2 * 3  # methods × LRs × epochs


def test_orthp_cell_keeps_isometry_in_its_first_epoch(small_study):
    _, _, r = small_study
    # after one epoch of retraining the OrthP net is still near-isometric (JSV ~ 1),
    # while L1's mean JSV has grown by orders of magnitude but from ~1e-3
    assert 0.3 < r["runs"]["L1+OrthP"]["0.001"]["jsv_per_epoch"][0][0] < 3


def test_an_interrupted_study_reruns_only_what_is_missing(small_study):
    out, config, _r = small_study
    cell = study._cell_path(out, 0, "L1", "0.001")
    before = json.loads(cell.read_text())
    kept = json.loads(study._cell_path(out, 0, "TPP", "0.01").read_text())
    cell.unlink()
    n_lines = len((out / "metrics.jsonl").read_text().splitlines())
    again = study.run_study(config, out, progress=False, log=lambda s: None)
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()[n_lines:]]
    # no base training, no TPP: only the missing cell was retrained (3 epochs)
    assert {l["phase"] for l in lines} == {"retrain"}
    assert {(l["method"], l["lr"]) for l in lines} == {("L1", "0.001")}
    # same data order and start: the same numbers (to float noise: 1 run vs 6 vmapped runs compile differently)
    after = json.loads(cell.read_text())
    for key, value in before.items():
        np.testing.assert_allclose(after[key], value, rtol=1e-4)
    assert again["runs"]["TPP"]["0.01"]["best_acc"] == [kept["best_acc"]]


def test_a_different_config_in_the_same_directory_is_refused(small_study):
    from isotpp.errors import UserError

    out, _config, _ = small_study
    with pytest.raises(UserError, match="different"):
        study.run_study(study.StudyConfig(**{**SMALL, "ratio": 0.5}), out, progress=False)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "isotpp.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, check=False)


@pytest.mark.parametrize("extra,needle", [
    (("--methods", "L1,Magic"), "unknown method"),
    (("--ratio", "1.0"), "outside"),
    (("--ratio", "-0.1"), "outside"),
    (("--lr-schedule", "0.01=30:0.01"), "schedule"),
    (("--lr-schedule", "0.01=0:fast"), "schedule"),
    (("--lr-schedule", "nolabel"), "LABEL=SCHEDULE"),
    (("--seeds", "0"), "positive"),
])
def test_bad_study_input_exits_2(tmp_path, extra, needle):
    r = _cli("reproduce", "mlp-linear", "--quick", "--out", tmp_path / "o", *extra)
    assert r.returncode == 2, r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert not (tmp_path / "o" / "results.json").exists()


def test_missing_data_is_a_clear_error(tmp_path):
    r = _cli("reproduce", "mlp-linear", "--quick", "--dataset", "mnist", "--data-dir", tmp_path / "none",
             "--out", tmp_path / "o")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "mnist" in r.stderr.lower()
