"""`isotpp spectrum`: the CLI contract, checked against deep-linear theory."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from isotpp.cli import main


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
    from isotpp.checkpoint import save_model
    from isotpp.models import create_model

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
    ("spectrum", "--model", "resnet20", "--data", "fashion_mnist"),
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
