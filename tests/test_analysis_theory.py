"""analysis/ theory scripts: each runs at a tiny size, its numbers agree with the library's
theory (and, loosely at these sizes, with its own measurements); bad arguments exit 2.

The scripts run in this process (their ``main(argv)``), BLAS on one thread: the
same code path as the command line without a fresh interpreter and JAX import each.
"""

import importlib
import json
import math
import sys
from pathlib import Path

import pytest
from threadpoolctl import threadpool_limits

from isotpp import theory

ANALYSIS = Path(__file__).resolve().parent.parent / "analysis"


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _module(name):
    if str(ANALYSIS) not in sys.path:
        sys.path.insert(0, str(ANALYSIS))
    return importlib.import_module(name)


def _main(name, argv):
    try:
        return _module(name).main(argv)
    except SystemExit as e:  # argparse's errors
        return e.code


def _script(name, *args, out):
    assert _main(name, [*map(str, args), "--out", str(out)]) == 0
    return json.loads((out / f"{name}.json").read_text())


def test_phase_diagram(tmp_path):
    res = _script("phase_diagram", "--depth", 2, "--width", 300, "--nets", 2, out=tmp_path)
    for r in res["rows"]:
        mf = theory.mean_field("tanh", r["sigma_w"], r["sigma_b"])
        assert r["chi"] == pytest.approx(mf.chi) and r["phase"] == mf.phase
        assert r["measured"]["mean_lambda"] == pytest.approx(r["theory"]["mean_lambda"], rel=0.15)
    line = res["critical_line"]
    assert line["sigma_w"][0] == 1.0 and all(b > a for a, b in zip(line["sigma_w"], line["sigma_w"][1:]))
    assert (tmp_path / "phase_diagram.png").stat().st_size > 10_000


def test_pruning_theory_and_tpp_lens(tmp_path):
    from isotpp.models import create_model
    from isotpp.spectra.jacobian import model_singular_values

    net = create_model("mlp", depth=3, width=12, act="linear", input_dim=20, num_classes=5, init="gaussian", seed=1)
    measured = _module("pruning_theory")._kernel_product_sv(net)  # the scripts' JSV: the kernel product's
    assert measured == pytest.approx(model_singular_values(net, None, method="linear")[0], rel=1e-5)
    res = _script("pruning_theory", "--ratios", "0.5", "--nets", 2, "--inits", "gaussian", out=tmp_path)
    by = {(r["init"], r["ratio"]): r for r in res["rows"]}
    assert by[("gaussian", 0.5)]["theory"]["mean_lambda"] == pytest.approx(0.5**6)  # keep^(hidden layers)
    assert by[("gaussian", 0.5)]["random"]["mean"] == pytest.approx(by[("gaussian", 0.5)]["theory"]["mean_s"],
                                                                    rel=0.3)
    assert list(by) == [("gaussian", 0.5)]
    # the study's init only: the orthogonal MLP-7-Linear's isometry is asserted, predicted and measured, in
    # test_theory_free.py and test_cli_spectrum.py
    lens = _script("tpp_lens", "--nets", 1, "--inits", "torch", out=tmp_path)
    assert lens["orthp_point_mass_s"] == pytest.approx(1.0) and lens["study"]["L1"] == 0.0058
    torch_row, = lens["rows"]
    assert torch_row["init"] == "torch" and torch_row["sigma_w"] == pytest.approx(1 / math.sqrt(3))
    assert torch_row["measured_init"] == pytest.approx(torch_row["theory_init"], rel=0.2)


def test_pennington_density(tmp_path):
    res = _script("pennington_density", "--depths", 2, "--width", 120, "--nets", 1, out=tmp_path)
    assert {(r["act"], r["init"]) for r in res["rows"]} == {
        (a, i) for a in ("tanh", "hard_tanh", "relu") for i in ("gaussian", "orthogonal")}
    for r in res["rows"]:
        assert r["chi"] == pytest.approx(1.0, abs=1e-6)  # on the critical line
    assert (tmp_path / "pennington_density.png").stat().st_size > 10_000


def test_spectrum_theory_table(tmp_path):
    """The command line's own numbers and theory object, one row per command."""
    res = _script("spectrum_theory_table", "--acts", "relu", "--depths", 2, "--width", 60, "--samples", 2,
                  "--nets", 1, out=tmp_path)
    assert [(r["act"], r["init"], r["depth"]) for r in res["rows"]] == [("relu", "gaussian", 2),
                                                                        ("relu", "orthogonal", 2)]
    for r in res["rows"]:
        assert r["command"].startswith("isotpp spectrum --model mlp --depth 2 --width 60") and r["dtype"] == "float64"
        assert r["theory"]["lambda_mean"] == pytest.approx(2.0)  # sigma_w^4 mu_1 = 4 / 2
        assert r["theory"]["zero_fraction"] == 0.5 and r["theory"]["chi"] == pytest.approx(1.0)
        assert r["measured"]["zero_fraction"] == pytest.approx(0.5, abs=0.15) and r["n_values"] == 120
    assert "isotpp spectrum" in (tmp_path / "spectrum_theory_table.md").read_text()
    assert (tmp_path / "spectrum_theory_table.png").stat().st_size > 10_000


@pytest.mark.parametrize("name,args", [("phase_diagram", ["--width", "0"]), ("pruning_theory", ["--ratios", "1.2"]),
                                       ("pennington_density", ["--depths", "x"]), ("tpp_lens", ["--nets", "-1"]),
                                       ("spectrum_theory_table", ["--acts", "sigmoid"]),
                                       ("pruning_theory", ["--inits", "kaiming"])])
def test_bad_arguments(tmp_path, capsys, name, args):
    assert _main(name, [*args, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "error" in err, err
    assert not (tmp_path / "o").exists()
