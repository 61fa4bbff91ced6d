"""`isotpp reproduce convnet` on a tiny schedule: every method's runs share one base model and
one pruned network per method, the cost matches the dry run, both JSVs are recorded, a rerun
reuses everything, and a directory holding another study is refused."""

import pytest

from isotpp.errors import UserError
from isotpp.pruning.model_file import load_model
from isotpp.studies.convnet import quick_config, run_convnet_study
from isotpp.studies.pruning_run import mean_jsv

TINY = {"model": "resnet8", "dataset": "synthetic", "train_limit": 256, "width_scale": 0.25, "base_epochs": 1, "base_lr": "0:0.05",
        "retrain_epochs": 1, "lr_schedules": (("0.01", "0:0.01"), ("0.001", "0:0.001")), "batch_size": 64,
        "tpp_reg_granularity": 0.5, "tpp_stabilize_iters": 4, "tpp_zero_out_interval": 1, "jsv_samples": 4,
        "ratio": 0.5}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("convnet")
    results = run_convnet_study(quick_config(**TINY), out, log=lambda s: None)
    return out, results


def test_results_cover_every_method_and_lr(study):
    out, r = study
    assert list(r["runs"]) == ["L1", "L1+OrthP", "TPP"]
    for method, by_lr in r["runs"].items():
        assert list(by_lr) == ["0.01", "0.001"]
        for cell in by_lr.values():
            for key in ("best_acc", "final_acc", "jsv_after_prune", "jsv_after_prune_eval", "sparsity", "speedup"):
                assert len(cell[key]) == 1, (method, key)
            assert len(cell["acc_per_epoch"][0]) == 1 and 0 <= cell["best_acc"][0] <= 100
            assert cell["jsv_after_prune"][0] > 0 and cell["jsv_after_prune_eval"][0] > 0
        # both LRs retrain the same pruned network: one JSV after pruning per method and seed
        assert by_lr["0.01"]["jsv_after_prune"] == by_lr["0.001"]["jsv_after_prune"]
    assert len(r["base"]["acc"]) == 1 and r["base"]["jsv"][0] > 0 and r["base"]["jsv_eval"][0] > 0
    for name in ("results.json", "table.md", "figure.png"):
        assert (out / name).exists()
    assert "(BN running stats)" in (out / "table.md").read_text()


def test_cost_matches_the_cost_of_the_base_and_is_the_same_for_every_method(study):
    from isotpp.pruning.cost import ratios_cost

    out, r = study
    base, _ = load_model(out / "seed0" / "base" / "model.npz")
    cost = ratios_cost(base, "*layer*.conv1:0.5")
    for by_lr in r["runs"].values():
        for cell in by_lr.values():
            assert cell["sparsity"][0] == pytest.approx(cost.sparsity, abs=1e-12)
            assert cell["speedup"][0] == pytest.approx(cost.speedup, rel=1e-12) and cost.speedup > 1


def test_running_statistics_jsv_is_the_pruned_networks(study):
    from isotpp.studies.pruning_run import PruneConfig, load_data

    out, r = study
    data = load_data(PruneConfig(model="resnet8", dataset="synthetic", train_limit=256))
    for method, folder in (("L1", "L1"), ("L1+OrthP", "L1_plus_OrthP"), ("TPP", "TPP")):
        model, _ = load_model(out / "seed0" / folder / "pruned.npz")
        assert r["runs"][method]["0.01"]["jsv_after_prune_eval"][0] == pytest.approx(
            mean_jsv(model, data.probe(4), "eval"), rel=1e-5)
        assert r["runs"][method]["0.01"]["jsv_after_prune"][0] == pytest.approx(
            mean_jsv(model, data.probe(4), "batch"), rel=1e-5)


def test_rerun_reuses_everything_and_other_settings_are_refused(study):
    out, r = study
    again = run_convnet_study(quick_config(**TINY), out, log=lambda s: None)
    assert again["runs"] == r["runs"] and again["invocation_s"] < r["invocation_s"]
    # the study's wall time counts both calls: the first one's work plus the (cheap) second one
    assert r["wall_s"] == pytest.approx(r["invocation_s"], abs=0.5)
    assert r["wall_s"] < again["wall_s"] <= r["wall_s"] + again["invocation_s"] + 1e-6
    with pytest.raises(UserError, match="different ratio"):
        run_convnet_study(quick_config(**{**TINY, "ratio": 0.7}), out, log=lambda s: None)
