"""analysis/ theory scripts: each runs at a tiny size, its numbers agree with the library's
theory (and, loosely at these sizes, with its own measurements); bad arguments exit 2."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from isotpp import theory

ROOT = Path(__file__).resolve().parent.parent


def _script(name, *args, out):
    r = subprocess.run([sys.executable, str(ROOT / "analysis" / f"{name}.py"), *map(str, args), "--out", str(out)],
                       capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr
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
    res = _script("pruning_theory", "--ratios", "0,0.5", "--nets", 2, out=tmp_path)
    by = {(r["init"], r["ratio"]): r for r in res["rows"]}
    assert by[("orthogonal", 0.0)]["theory"]["mean_s"] == pytest.approx(1.0)
    assert by[("orthogonal", 0.0)]["random"]["mean"] == pytest.approx(1.0, abs=1e-5)
    assert by[("gaussian", 0.5)]["theory"]["mean_lambda"] == pytest.approx(0.5**6)  # keep^(hidden layers)
    assert by[("gaussian", 0.5)]["random"]["mean"] == pytest.approx(by[("gaussian", 0.5)]["theory"]["mean_s"],
                                                                    rel=0.3)
    lens = _script("tpp_lens", "--nets", 1, out=tmp_path)
    assert lens["orthp_point_mass_s"] == pytest.approx(1.0) and lens["study"]["L1"] == 0.0058
    torch_row = lens["rows"][0]
    assert torch_row["init"] == "torch" and torch_row["sigma_w"] == pytest.approx(1 / math.sqrt(3))
    assert torch_row["measured_init"] == pytest.approx(torch_row["theory_init"], rel=0.2)


def test_pennington_density(tmp_path):
    res = _script("pennington_density", "--depths", 2, "--width", 120, "--nets", 1, out=tmp_path)
    assert {(r["act"], r["init"]) for r in res["rows"]} == {
        (a, i) for a in ("tanh", "hard_tanh", "relu") for i in ("gaussian", "orthogonal")}
    for r in res["rows"]:
        assert r["chi"] == pytest.approx(1.0, abs=1e-6)  # on the critical line
    assert (tmp_path / "pennington_density.png").stat().st_size > 10_000


@pytest.mark.parametrize("name,args", [("phase_diagram", ["--width", "0"]), ("pruning_theory", ["--ratios", "1.2"]),
                                       ("pennington_density", ["--depths", "x"]), ("tpp_lens", ["--nets", "-1"])])
def test_bad_arguments(tmp_path, name, args):
    r = subprocess.run([sys.executable, str(ROOT / "analysis" / f"{name}.py"), *args, "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "o").exists()
