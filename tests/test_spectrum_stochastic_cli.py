"""`isotpp spectrum --method stochastic --matvecs N --memory-budget SIZE`: the stochastic estimate agrees
with the exact spectrum within the error it reports, the budget changes the chunks and not the values,
and values outside the options' domains are one line (exit 2)."""

import json

import numpy as np
import pytest

from isotpp.cli import args as A
from isotpp.cli.app import main
from isotpp.spectra import jacobian as sp

# a tanh MLP with 128 outputs: the exact method costs 128 VJPs per chunk, the estimate 32 products
WIDE = ("--model", "mlp", "--depth", "2", "--width", "256", "--act", "tanh", "--input-dim", "256",
        "--num-classes", "128", "--init", "gaussian", "--sigma-w", "1.2", "--samples", "8", "--seed", "0")


def _run(tmp_path, name, *extra):
    path = tmp_path / f"{name}.json"
    assert main(["spectrum", *WIDE, *extra, "--json", str(path)]) == 0
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def exact(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("exact"), "exact", "--method", "gram", "--values")


def test_stochastic_mean_within_its_stated_error(tmp_path, exact):
    est = _run(tmp_path, "stochastic", "--method", "stochastic", "--matvecs", "32")
    err = est["error"]
    assert est["method"] == "stochastic" and err["kind"] == "stochastic"
    assert (err["matvecs"], err["probes"] * err["steps"]) == (30, 30)  # 3 probes x 10 Lanczos steps
    # the exact mean JSV lies in the Radau-Gauss bracket widened by 4 standard errors
    assert err["mean_lower"] - 4 * err["mean_stderr"] <= exact["mean"] <= err["mean_upper"] + 4 * err["mean_stderr"]
    assert est["mean"] == pytest.approx((err["mean_lower"] + err["mean_upper"]) / 2, rel=1e-9)  # the bracket's midpoint
    assert abs(est["mean"] / exact["mean"] - 1) < 0.05
    assert abs(est["lambda_mean"] - exact["lambda_mean"]) <= 4 * err["lambda_mean_stderr"] + 1e-6
    assert 0 < err["mean_stderr"] < 0.05 * exact["mean"]
    assert est["max"] <= exact["max"] * (1 + 1e-4)  # Ritz values never exceed s_max
    assert exact["error"] == {"kind": "exact", "resolution_relative_to_s_max": sp.GRAM_RESOLUTION}
    assert exact["method"] == "gram"


def test_auto_follows_matvecs(tmp_path, exact):
    """Without a theory to compare the density with, auto estimates when classes >= 4 x matvecs."""
    est = _run(tmp_path, "few", "--init", "torch", "--matvecs", "16")
    many = _run(tmp_path, "many", "--init", "torch", "--matvecs", "64")
    assert est["method"] == "stochastic" and many["method"] == "gram" and "theory" not in many
    err = est["error"]
    assert err["mean_lower"] - 4 * err["mean_stderr"] <= many["mean"] <= err["mean_upper"] + 4 * err["mean_stderr"]
    assert _run(tmp_path, "theory", "--matvecs", "16")["method"] == "gram"  # the MLP's density meets its theory


def test_memory_budget_fits_the_chunk_and_keeps_the_values(tmp_path, exact, caplog):
    budgeted = _run(tmp_path, "budget", "--method", "gram", "--memory-budget", "1.3MB", "--values")
    assert "chunk of 3 samples" in caplog.text
    np.testing.assert_allclose(budgeted["singular_values"], exact["singular_values"], rtol=1e-5)


@pytest.mark.parametrize("argv, needle", [
    (["--matvecs", "0"], "outside [1, 100000]"),
    (["--matvecs", "many"], "expected a number of products"),
    (["--memory-budget", "2XB"], "expected a size in bytes"),
    (["--memory-budget", "0"], "0 bytes"),
    (["--memory-budget=-1GiB"], "expected a size in bytes"),
    (["--method", "exactly"], "invalid choice"),
])
def test_bad_values_are_one_line(capsys, argv, needle):
    with pytest.raises(SystemExit) as exc:
        main(["spectrum", *argv])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and needle in err and len(err.strip().splitlines()) == 1, err


def test_byte_sizes_and_the_mirrored_method_names():
    assert A.byte_size("2GiB") == 2 * 2**30 and A.byte_size("512M") == 512 * 2**20
    assert A.byte_size("1.5GB") == 1_500_000_000 and A.byte_size("4096") == 4096
    assert set(A.SPECTRUM_METHODS) == set(sp.METHODS)
