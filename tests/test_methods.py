"""The method registry (isotpp.pruning.methods): the paper's methods with their metadata, name lookup, and
pruned_start running each method's hooks in order (with a recording stand-in for the training engine)."""

import dataclasses

import numpy as np
import pytest
from flax import nnx

from isotpp.errors import UserError
from isotpp.models import create_model, widths_of
from isotpp.models.program import flat_arrays
from isotpp.pruning.methods import (
    LW_OPP,
    TABLE1_METHODS,
    Method,
    MethodSettings,
    get_method,
    method_colour,
    method_names,
    penalty_fn,
    pruned_start,
    register_method,
    study_methods,
)
from isotpp.pruning.plan import l1_plan
from isotpp.pruning.tpp import TPPConfig

SETTINGS = MethodSettings(ratios={"*": 0.5}, skip=("net.6",), pre_iters=7, tpp_reg_granularity=0.5,
                          tpp_update_reg_interval=1, tpp_stabilize_iters=3, tpp_zero_out_interval=1)


def tiny():
    return create_model("mlp", depth=4, width=8, input_dim=6, num_classes=3, act="linear", seed=0)


def test_the_papers_methods_and_the_studies_defaults():
    assert method_names() == ("Scratch", "L1", "L1+OrthP", "L1+KernOrth", "L1+OrthConv", "KernOrth+L1",
                              "OrthConv+L1", "TPP", "L1+AI")
    assert study_methods("mlp-linear") == ("L1", "L1+OrthP", "TPP", "L1+KernOrth", "L1+AI")
    assert study_methods("convnet") == ("L1", "L1+OrthP", "TPP")
    assert TABLE1_METHODS == ("Scratch", "L1", "L1+OrthP", "L1+KernOrth", "L1+OrthConv", "KernOrth+L1",
                              "OrthConv+L1", "TPP")
    colours = [method_colour(n) for n in method_names()]
    assert len(set(colours)) == len(colours) and None not in colours  # one colour per method, in every figure
    # the linear study's five keep the colours its figure always gave them (C0..C4 in its order)
    assert [method_colour(n) for n in study_methods("mlp-linear")] == ["C0", "C1", "C2", "C3", "C4"]
    assert all(len(get_method(n).help) > 20 for n in method_names())


def test_names_aliases_and_refusals():
    assert get_method(" kernorth ").name == "L1+KernOrth" and get_method("ai").name == "L1+AI"
    assert get_method("tpp") is get_method("TPP")
    with pytest.raises(UserError, match="unknown method 'Magic': choose from Scratch, L1"):
        get_method("Magic")
    with pytest.raises(UserError, match="already registered"):
        register_method(Method("L1"))
    with pytest.raises(UserError, match="taken by L1\\+OrthP"):
        register_method(Method("Other", aliases=("orthp",)))
    assert "Other" not in method_names()


class Recorder:
    """A training engine that trains nothing and remembers what it was asked to run."""

    def __init__(self):
        self.calls = []

    def __call__(self, model, phase, plan):
        self.calls.append((phase, plan))
        return model, {"iteration": phase.steps}


def test_l1_runs_no_phase_and_removes_the_l1_filters():
    run, base = Recorder(), tiny()
    small = pruned_start("L1", base, SETTINGS, run_phase=run)
    plan = l1_plan(base, {"*": 0.5}, ["net.6"])
    assert run.calls == []
    assert widths_of(small) == {k: v - len(plan.pruned.get(k, ())) for k, v in widths_of(base).items()}
    assert widths_of(small)["net.0"] == 4


def test_tpp_selects_first_and_runs_its_schedule():
    run, plans = Recorder(), []
    pruned_start("TPP", tiny(), SETTINGS, run_phase=run, on_plan=lambda p: plans.append(p) or p)
    (phase, plan), = run.calls
    cfg = TPPConfig(reg_granularity=0.5, update_reg_interval=1, stabilize_iters=3, zero_out_interval=1)
    assert plan is plans[0] and phase.steps == cfg.total_iters == 2 + 3 + 1
    assert (phase.name, phase.key, phase.lr, dict(phase.penalties)) == ("TPP", "tpp", 1e-3, {})


@pytest.mark.parametrize("scheme", ["penalty", "opp"])
def test_x_plus_l1_trains_the_penalty_before_or_after_choosing(scheme):
    run, base = Recorder(), tiny()
    settings = dataclasses.replace(SETTINGS, pre_scheme=scheme)
    pruned_start("KernOrth+L1", base, settings, run_phase=run)
    (phase, plan), = run.calls
    assert phase.name == "kernorth_v2+L1" and dict(phase.weights) == {"kernorth_v2": LW_OPP}
    params = nnx.state(base, nnx.Param)
    names = [f"net.{i}.kernel" for i in (0, 2, 4, 6)]
    assert float(phase.penalties["kernorth_v2"](params)) == pytest.approx(
        float(penalty_fn("kernorth_v2", names)(params)), rel=1e-6)
    if scheme == "penalty":  # X alone for pre_iters, then L1 chooses on the weights reached
        assert plan is None and phase.steps == 7
    else:  # X inside the reference's opp loop on the filters L1 chose first
        assert plan is not None and phase.steps == 6
    with pytest.raises(UserError, match="pre_scheme"):
        pruned_start("KernOrth+L1", base, dataclasses.replace(SETTINGS, pre_scheme="other"), run_phase=run)


def test_post_steps_orthp_ai_and_scratch():
    small = pruned_start("L1+OrthP", tiny(), SETTINGS, run_phase=Recorder())
    w = np.asarray(flat_arrays(nnx.state(small, nnx.Param))["net.2.kernel"], np.float64)
    np.testing.assert_allclose(w.T @ w, np.eye(4), atol=1e-5)  # 4x4 after pruning: orthogonal (linear gain 1)
    ai = pruned_start("L1+AI", tiny(), dataclasses.replace(SETTINGS, ai_iters=300), run_phase=Recorder())
    l1 = pruned_start("L1", tiny(), SETTINGS, run_phase=Recorder())

    def defect(model):
        k = np.asarray(flat_arrays(nnx.state(model, nnx.Param))["net.2.kernel"], np.float64)
        return np.linalg.norm(k.T @ k - np.eye(4))

    assert defect(ai) < 0.2 * defect(l1)  # ‖·‖_F, not squared, at a constant step: it settles near, not at, 0
    seen = []
    fresh = pruned_start("Scratch", tiny(), dataclasses.replace(
        SETTINGS, new_model=lambda widths: seen.append(dict(widths)) or create_model(
            "mlp", depth=4, width=8, input_dim=6, num_classes=3, act="linear", widths=widths, seed=9)),
        run_phase=Recorder())
    assert seen == [widths_of(l1)] and widths_of(fresh) == widths_of(l1)
    with pytest.raises(UserError, match="new_model"):
        pruned_start("Scratch", tiny(), SETTINGS, run_phase=Recorder())


def test_retraining_penalties():
    names = ["net.0.kernel", "net.2.kernel"]
    params = nnx.state(tiny(), nnx.Param)
    (name, (fn, weight)), = get_method("L1+OrthConv").retrain_penalties(names, SETTINGS).items()
    assert (name, weight) == ("orthconv", 0.1)
    assert float(fn(params)) == pytest.approx(float(penalty_fn("orthconv", names)(params)))
    assert get_method("TPP").retrain_penalties(names, SETTINGS) == {}
