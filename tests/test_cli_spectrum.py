"""`isotpp spectrum`: the CLI contract, checked against deep-linear theory."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from isotpp.cli.app import main


def _run(tmp_path, *args, name="out.json"):
    path = tmp_path / name
    assert main(["spectrum", *map(str, args), "--json", str(path)]) == 0
    return json.loads(path.read_text())


def _square_mlp(n, depth, init, sigma, seed, *extra):
    return ("--model", "mlp", "--depth", depth, "--width", n, "--act", "linear", "--input-dim", n,
            "--num-classes", n, "--init", init, "--sigma-w", sigma, "--samples", 2, "--seed", seed, *extra)


def test_gaussian_deep_linear_matches_fuss_catalan(tmp_path):
    """N = 400, L = 7, σ_w = 1, 4 nets pooled: mean λ within 3 % of σ_w^(2L), Var(λ)/mean²
    within 10 % of L; a linear net's input-free spectrum is reported once per net."""
    out = _run(tmp_path, *_square_mlp(400, 7, "gaussian", 1.0, 0, "--nets", 4, "--values"))
    assert out["method"] == "linear" and out["n_samples"] == 4 and out["nets"] == 4
    assert out["dtype"] == "float64" and out["float64_auto"]
    sv = np.asarray(out["singular_values"])
    assert sv.shape == (4, 400)
    for seed in range(4):  # net k is the single net of seed k
        single = _run(tmp_path, *_square_mlp(400, 7, "gaussian", 1.0, seed, "--values"), name=f"{seed}.json")
        assert single["n_samples"] == 1
        np.testing.assert_allclose(np.asarray(single["singular_values"])[0], sv[seed], rtol=1e-12)
    assert not np.allclose(sv[0], sv[1])
    lam = sv.ravel() ** 2
    assert out["lambda_mean"] == pytest.approx(lam.mean(), rel=1e-9)
    assert lam.mean() == pytest.approx(1.0, rel=0.03)
    assert lam.var() / lam.mean() ** 2 == pytest.approx(7.0, rel=0.10)
    th = out["theory"]
    assert th["mean_lambda"] == pytest.approx(1.0) and th["lambda_mean"] == pytest.approx(1.0)
    assert th["var_over_mean_sq"] == pytest.approx(7.0) and th["lambda_var_over_mean_sq"] == pytest.approx(7.0)
    assert th["q_star"] is None and th["chi"] is None  # linear: no mean-field fixed point
    assert out["ks_distance"] < 0.05  # float64: the small singular values are resolved


def test_gaussian_sigma_scales_the_spectrum(tmp_path):
    """σ_w = 1.2: mean λ = σ_w^(2L) (L = 3, N = 300, averaged over seeds)."""
    lam = np.concatenate([
        np.asarray(_run(tmp_path, *_square_mlp(300, 3, "gaussian", 1.2, s, "--values"))["singular_values"][0]) ** 2
        for s in range(3)
    ])
    assert lam.mean() == pytest.approx(1.2 ** 6, rel=0.03)
    assert lam.var() / lam.mean() ** 2 == pytest.approx(3.0, rel=0.10)


@pytest.mark.parametrize("sigma,depth", [(1.0, 7), (1.3, 4)])
def test_orthogonal_is_exactly_isometric(tmp_path, sigma, depth):
    out = _run(tmp_path, *_square_mlp(64, depth, "orthogonal", sigma, 0, "--values"))
    sv = np.asarray(out["singular_values"])
    np.testing.assert_allclose(sv, sigma ** depth, rtol=1e-5)
    assert out["theory"]["max_s"] == pytest.approx(sigma ** depth)


def test_mlp_7_linear_rectangular_orthogonal(tmp_path):
    """1024 -> 100 x 5 -> 10 with semi-orthogonal layers: all 10 JSV equal 1."""
    out = _run(tmp_path, "--model", "mlp", "--init", "orthogonal", "--samples", 3, "--values")
    np.testing.assert_allclose(np.asarray(out["singular_values"]), 1.0, rtol=1e-5)
    assert out["mean"] == pytest.approx(1.0, rel=1e-5) and out["diff_mean"] < 1e-9


def test_generic_methods_agree_with_the_closed_form(tmp_path):
    args = ("--model", "mlp", "--depth", 4, "--width", 32, "--input-dim", 48, "--num-classes", 10,
            "--init", "gaussian", "--samples", 5, "--values")
    lin = np.asarray(_run(tmp_path, *args, "--method", "linear")["singular_values"])
    gram = np.asarray(_run(tmp_path, *args, "--method", "gram")["singular_values"])
    jac = np.asarray(_run(tmp_path, *args, "--method", "jacobian")["singular_values"])
    np.testing.assert_allclose(gram, lin, rtol=1e-3, atol=1e-4 * lin.max())
    np.testing.assert_allclose(jac, lin, rtol=1e-4, atol=1e-5 * lin.max())


def test_summary_keys_plot_and_checkpoint(tmp_path):
    from isotpp.models import create_model
    from isotpp.pruning.model_file import save_model

    model = create_model("resnet20", init="kaiming", seed=3)
    save_model(tmp_path / "r20.npz", model)
    out = _run(tmp_path, "--checkpoint", tmp_path / "r20.npz", "--seed", 3, "--samples", 4, "--plot", tmp_path / "h.png")
    assert {"mean", "std", "max", "min", "cond_mean", "diff_mean", "n_samples", "model", "init"} <= set(out)
    assert out["model"] == "resnet20" and out["n_samples"] == 4 and out["method"] == "gram"
    assert (tmp_path / "h.png").stat().st_size > 1000
    # the same network built directly gives the same numbers
    direct = _run(tmp_path, "--model", "resnet20", "--init", "kaiming", "--seed", 3, "--samples", 4, name="d.json")
    assert direct["mean"] == pytest.approx(out["mean"], rel=1e-5)
    assert direct["init"] == "kaiming" and out["init"].startswith("checkpoint:")


def test_real_data_inputs(tmp_path, fashion_mnist_dir):
    out = _run(tmp_path, "--model", "lenet5", "--data", "fashion_mnist", "--data-dir", fashion_mnist_dir,
               "--samples", 6, "--init", "kaiming")
    assert out["inputs"] == "fashion_mnist" and out["n_samples"] == 6
    assert 0 < out["min"] <= out["mean"] <= out["max"]


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "isotpp.cli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300, check=False)


@pytest.mark.parametrize("args", [
    ("spectrum", "--model", "nope"),
    ("spectrum", "--samples", "0"),
    ("spectrum", "--init", "zeros"),
    ("spectrum", "--sigma-w", "-1"),
    ("spectrum", "--checkpoint", "/nonexistent/model.npz"),
    ("spectrum", "--model", "resnet8", "--data", "fashion_mnist"),
    ("spectrum", "--model", "lenet5", "--method", "linear", "--samples", "2"),
])
def test_bad_arguments_exit_2_with_one_line(args):
    r = _cli(*args)
    assert r.returncode == 2, r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip() and "sample/s" not in l]
    assert len(lines) == 1 and "error" in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_float64_runs_in_a_fresh_process(tmp_path):
    """float64 (set before any computation) agrees with float32 on a well-conditioned net."""
    path = tmp_path / "f64.json"
    r = _cli("spectrum", "--model", "mlp", "--depth", 3, "--width", 20, "--input-dim", 30, "--num-classes", 5,
             "--init", "gaussian", "--samples", 2, "--method", "gram", "--float64", "--json", path)
    assert r.returncode == 0, r.stderr
    out64 = json.loads(path.read_text())
    out32 = _run(tmp_path, "--model", "mlp", "--depth", 3, "--width", 20, "--input-dim", 30, "--num-classes", 5,
                 "--init", "gaussian", "--samples", 2, "--method", "gram")
    assert out64["dtype"] == "float64"
    assert out64["mean"] == pytest.approx(out32["mean"], rel=1e-4)


def test_tanh_orthogonal_reports_measured_and_predicted_moments(tmp_path):
    """The issue's command: tanh, orthogonal, sigma_w 1.2, sigma_b 0.1, width 400, inputs at the fixed point."""
    out = _run(tmp_path, "--model", "mlp", "--depth", 3, "--width", 400, "--input-dim", 400, "--num-classes", 400,
               "--act", "tanh", "--init", "orthogonal", "--sigma-w", 1.2, "--sigma-b", 0.1, "--samples", 2,
               "--nets", 2, "--plot", tmp_path / "s.png")
    th = out["theory"]
    assert out["n_samples"] == 4 and out["nets"] == 2 and out["method"] == "gram"
    assert out["inputs"].startswith("gaussian at the mean-field fixed point")
    from isotpp import theory

    mf = theory.mean_field("tanh", 1.2, 0.1)
    assert th["q_star"] == pytest.approx(mf.q_star) and th["chi"] == pytest.approx(mf.chi)
    assert th["layer_q"] == pytest.approx([mf.q_star, mf.q_star], rel=1e-9)
    assert out["lambda_mean"] == pytest.approx(th["lambda_mean"], rel=0.05)
    assert out["lambda_var_over_mean_sq"] == pytest.approx(th["lambda_var_over_mean_sq"], rel=0.10)
    assert out["ks_distance"] < 0.05
    assert (tmp_path / "s.png").stat().st_size > 10_000


def test_hard_tanh_relu_atoms_and_biases(tmp_path):
    out = _run(tmp_path, "--model", "mlp", "--depth", 3, "--width", 400, "--input-dim", 400, "--num-classes", 400,
               "--act", "relu", "--init", "kaiming", "--samples", 2, "--values", "--float64")
    sv = np.asarray(out["singular_values"])
    # ReLU at sigma_w = sqrt(2), sigma_b = 0 is critical and every q is a fixed point: no q*, chi = 1
    assert out["theory"]["zero_fraction"] == 0.5 and out["theory"]["q_star"] is None
    assert out["theory"]["chi"] == pytest.approx(1.0)
    # ReLU's forced zeros (float64: float32's gram method leaves them at ~3e-4 s_max)
    assert np.mean(sv < 1e-4 * sv.max()) == pytest.approx(0.5, abs=0.03)
    assert out["dtype"] == "float64" and out["ks_distance"] < 0.05
    ht = _run(tmp_path, "--model", "mlp", "--depth", 2, "--width", 400, "--input-dim", 400, "--num-classes", 400,
              "--act", "hard_tanh", "--init", "gaussian", "--sigma-w", 1.5, "--sigma-b", 0.3, "--samples", 2,
              name="ht.json")
    from isotpp import theory

    q = theory.mean_field("hard_tanh", 1.5, 0.3).q_star
    assert ht["theory"]["zero_fraction"] == pytest.approx(1 - theory.activation_derivative_moments("hard_tanh", q, 1))
    assert ht["lambda_mean"] == pytest.approx(ht["theory"]["lambda_mean"], rel=0.05)


def test_no_theory_says_why(tmp_path, capsys):
    out = _run(tmp_path, "--model", "lenet5", "--samples", 2, "--init", "kaiming")
    assert "theory" not in out and out["theory_note"].startswith("no theory for lenet5")
    assert out["theory_note"] in capsys.readouterr().out
    out = _run(tmp_path, "--model", "mlp", "--depth", 2, "--width", 20, "--input-dim", 30, "--act", "tanh",
               "--init", "torch", "--samples", 2, name="t.json")
    assert "theory" not in out and "torch" in out["theory_note"]


def test_deep_mlp_runs_in_float64(tmp_path):
    out = _run(tmp_path, "--model", "mlp", "--depth", 16, "--width", 16, "--input-dim", 16, "--num-classes", 16,
               "--act", "tanh", "--init", "orthogonal", "--samples", 1)
    assert out["dtype"] == "float64" and out["float64_auto"]
    import jax

    assert not jax.config.jax_enable_x64  # the caller's setting is left alone


@pytest.mark.parametrize("args", [
    ("spectrum", "--sigma-b", "-0.1"),
    ("spectrum", "--nets", "0"),
    ("spectrum", "--model", "lenet5", "--sigma-b", "0.1"),
    ("spectrum", "--act", "sigmoid"),
])
def test_new_options_bad_values_exit_2(args):
    r = _cli(*args)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len([l for l in r.stderr.splitlines() if l.strip()]) == 1, r.stderr
