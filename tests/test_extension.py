"""Extension in one file: a structured method (a random filter selector with its own pre-removal
penalty) and a PaI score, registered from this file alone, run end to end through ``isotpp prune``,
the linear study and the PaI study; no file under isotpp/ names them."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import isotpp
from isotpp.cli.app import main
from isotpp.errors import UserError
from isotpp.models import create_model, layer_names, widths_of
from isotpp.models.program import flat_arrays
from isotpp.pai.masks import keep_count, mask_density, masks_from_scores
from isotpp.pai.registry import Score, get_score, register_score, unregister_score
from isotpp.pruning.groups import channel_groups, resolve_ratios
from isotpp.pruning.methods import (
    Method,
    MethodSettings,
    Phase,
    get_method,
    method_colour,
    method_names,
    register_method,
    unregister_method,
)
from isotpp.pruning.model_file import load_model, save_model
from isotpp.pruning.plan import Plan, hard_prune, l1_plan, n_pruned
from isotpp.storage.atomic import read_json
from isotpp.training.engine import reference_sgd

NAME, KEY, SCORE = "Rand+Shrink", "rand_plus_shrink", "antimag"


def kernels_of(model) -> list[str]:
    return [f"{n}.kernel" for n in layer_names(model)]


class RandomShrink(Method):
    """Random filters (as many per group as L1 would take, drawn from the seed), after ``steps`` SGD steps
    with ``weight`` · Σ‖W‖² over every kernel added to the loss."""

    steps = 6
    weight = 5.0
    lr = 0.01

    def select(self, model, settings: MethodSettings) -> Plan:
        groups = channel_groups(model)
        ratios = resolve_ratios(groups, settings.ratios, list(settings.skip))
        groups = [g for g in groups if g.prunable]
        rng = np.random.default_rng(settings.seed)
        pruned = {g.name: tuple(sorted(int(i) for i in rng.choice(g.size, n_pruned(ratios[g.name], g.size),
                                                                   replace=False))) for g in groups}
        return Plan({g.name: g.size for g in groups}, pruned)

    def pre_phase(self, model, plan, settings):
        names = kernels_of(model)

        def shrink(params):
            flat = flat_arrays(params)
            return sum(jnp.sum(flat[k] ** 2) for k in names)

        return Phase(name=NAME, key=KEY, tx=reference_sgd(self.lr, settings.weight_decay), lr=self.lr,
                     steps=self.steps, penalties={"shrink": shrink}, weights={"shrink": self.weight})


class AntiMagnitude(Score):
    """Keeps the smallest |w| at initialisation."""

    def compute(self, net, ctx):
        return {n: -jnp.abs(k) for n, k in net.kernels(ctx.params).items()}


@pytest.fixture(scope="module", autouse=True)
def registered():
    method = register_method(RandomShrink(NAME, "random filters after an L2 shrink", colour="C9"))
    score = register_score(AntiMagnitude(SCORE, "AntiMag", "the smallest |w|", colour="tab:olive"))
    yield method, score
    unregister_method(NAME)
    unregister_score(SCORE)


def test_nothing_under_isotpp_names_them():
    root = Path(isotpp.__file__).parent
    for path in root.rglob("*.py"):
        text = path.read_text(encoding="utf-8").lower()
        assert all(word.lower() not in text for word in (NAME, KEY, SCORE, "RandomShrink", "AntiMag")), path


def test_the_registry_reads_them(registered):
    method, score = registered
    assert get_method("rand+shrink") is method and get_score("AntiMag") is score
    assert method_names()[-1] == NAME and method_colour(NAME) == "C9"
    from isotpp.pai.registry import all_methods, colour, display_name

    assert f"{SCORE}+ai" in all_methods() and display_name(f"{SCORE}+ai") == "AntiMag+AI"
    assert colour(SCORE) == "tab:olive"
    with pytest.raises(UserError, match="already registered"):
        register_method(RandomShrink(NAME))


def _norm(model) -> float:
    flat = flat_arrays(nnx.state(model, nnx.Param))
    return float(sum(np.sum(np.asarray(flat[k], np.float64) ** 2) for k in kernels_of(model)))


def test_the_method_through_isotpp_prune(registered, tmp_path):
    method, _ = registered
    out, base_path = tmp_path / "run", tmp_path / "base.npz"
    # the selector ignores the weights: an untrained (small) base will do
    base = create_model("mlp", depth=3, width=16, act="relu", seed=0)
    save_model(base_path, base)
    rc = main(["prune", "--method", NAME.lower(), "--model", "mlp", "--base", str(base_path), "--dataset",
               "synthetic", "--ratios", "net.0:0.5,net.2:0.5", "--train-limit", "256", "--batch-size", "64",
               "--epochs", "1", "--lr-schedule", "0:0.01", "--jsv-samples", "4", "--seed", "3", "--out", str(out)])
    assert rc == 0
    summary = read_json(out / "summary.json")
    assert summary["method"] == NAME and len(summary["acc_per_epoch"]) == 1
    pre = read_json(out / "pre" / "config.json")["train"]
    assert pre["method"] == NAME and pre["penalty_weights"] == {"shrink": 5.0}
    plan = Plan.load(out / "plan.json")
    settings = MethodSettings(ratios="net.0:0.5,net.2:0.5", seed=3)
    assert plan.pruned == method.select(base, settings).pruned  # the selector's, reproduced from the run's seed
    assert plan.pruned != method.select(base, MethodSettings(ratios=settings.ratios, seed=4)).pruned
    l1 = l1_plan(base, "net.0:0.5,net.2:0.5")
    assert plan.pruned != l1.pruned and [len(p) for p in plan.pruned.values()] == [len(p) for p in l1.pruned.values()]
    assert widths_of(load_model(out / "final.npz")[0]) == {"net.0": 8, "net.2": 8, "net.4": 10}
    pruned, _ = load_model(out / "pruned.npz")
    # six steps at 1 - 2 * 0.01 * 5 per step (with momentum) shrink every kernel: Σ‖W‖² falls below a half
    assert _norm(pruned) < 0.5 * _norm(hard_prune(base, plan))


def test_the_method_through_the_linear_study(registered, tmp_path, fashion_mnist_dir):
    from isotpp.studies import mlp_linear as study

    method, _ = registered
    config = study.quick_config(data_dir=str(fashion_mnist_dir), seeds=(0,), methods=("L1", NAME), train_limit=500,
                                base_epochs=1, base_lr="0:0.01", retrain_epochs=1,
                                lr_schedules=(("0.01", "0:0.01"),))
    results = study.run_study(config, tmp_path, progress=False, log=lambda s: None)
    cell = results["runs"][NAME]["0.01"]
    assert len(cell["acc_per_epoch"][0]) == 1 and 0 < cell["jsv_after_prune"][0]
    base, _ = load_model(tmp_path / "seed0" / "base.npz")
    plan = method.select(base, study.method_settings(config, 0))
    start, _ = load_model(tmp_path / "seed0" / f"{KEY}.npz")  # the pruned network after the phase, kept
    assert read_json(tmp_path / "seed0" / f"{KEY}_state.json") == {"iteration": 6}
    assert widths_of(start) == widths_of(hard_prune(base, plan)) and widths_of(start)["net.0"] == 20
    assert _norm(start) < 0.5 * _norm(hard_prune(base, plan))
    assert cell["jsv_after_prune"][0] != results["runs"]["L1"]["0.01"]["jsv_after_prune"][0]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    phases = [r for r in map(json.loads, lines) if r.get("phase") == KEY]
    assert phases and phases[-1]["iteration"] == 6


def test_the_score_through_the_pai_study(registered, tmp_path, fashion_mnist_dir):
    from isotpp.studies import pai as study

    config = study.quick_config(data_dir=str(fashion_mnist_dir), methods=(SCORE,), densities=(0.1,), epochs=1,
                                lr="0:0.1", train_limit=1000, val_size=200, batch_size=100, score_examples=100,
                                transfer=False, jsv_samples=8)
    results = study.run_study(config, tmp_path, progress=False, log=lambda s: None)
    part = results["lenet"]
    assert part["methods"] == ["dense", SCORE]
    net = study.make_net(study.ARCH, config, 0)
    cell = part["runs"][SCORE]["0.1"]
    assert cell["density"][0] == pytest.approx(keep_count(0.1, net.n_weights) / net.n_weights, abs=1e-12)
    # the kept weights are the smallest |w| of the seed's network: its layer densities are theirs
    masks = masks_from_scores({n: -jnp.abs(k) for n, k in net.kernels().items()}, 0.1)
    expected = {n: float(np.mean(np.asarray(m))) for n, m in masks.items()}
    assert cell["layer_density"][0] == pytest.approx(expected)
    assert "AntiMag" in (tmp_path / "table.md").read_text()


def test_the_extending_page_runs_as_written(monkeypatch, tmp_path):
    page = Path(__file__).resolve().parents[1] / "docs" / "extending.md"
    blocks = re.findall(r"^```python\n(.*?)^```", page.read_text(encoding="utf-8"), re.DOTALL | re.MULTILINE)
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)
    ns: dict = {"__name__": "__docs__"}
    try:
        for i, block in enumerate(blocks):
            exec(compile(block, f"extending.md, Python block {i + 1}", "exec"), ns)  # noqa: S102 - the docs' example
        assert get_method("random+l2").help.startswith("L2 shrink") and get_score("smallestfirst").display
        assert mask_density(ns["masks"]) == pytest.approx(0.05, abs=1e-5)
    finally:
        unregister_method("Random+L2")
        unregister_score("smallestfirst")


def test_plugins_are_imported_before_the_parsers_are_built(tmp_path, monkeypatch):
    (tmp_path / "isotpp_test_plugin.py").write_text(
        "from isotpp.pruning.methods import Method, register_method\n"
        "register_method(Method('PluggedL1', 'L1 under another name, from a plugin module'))\n")
    env = {**os.environ, "ISOTPP_PLUGINS": "isotpp_test_plugin", "PYTHONPATH": str(tmp_path)}
    r = subprocess.run([sys.executable, "-m", "isotpp", "prune", "--help"], capture_output=True, text=True,
                       env=env, timeout=60, check=True)
    assert "PluggedL1" in r.stdout
    bad = subprocess.run([sys.executable, "-m", "isotpp", "prune", "--help"], capture_output=True, text=True,
                         env={**env, "ISOTPP_PLUGINS": "no_such_isotpp_plugin"}, timeout=60, check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "no_such_isotpp_plugin" in bad.stderr
