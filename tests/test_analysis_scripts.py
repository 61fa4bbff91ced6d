"""analysis/depth_sweep.py: the measured deep-linear spectra agree with the theory it prints
beside them, and its files are written; bad arguments exit 2 with one line."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "analysis" / "depth_sweep.py"


def test_depth_sweep_matches_theory(tmp_path):
    r = subprocess.run([sys.executable, str(SCRIPT), "--depths", "1,3", "--width", "150", "--nets", "3",
                        "--sigma-w", "1.1", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300,
                       check=False)
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "depth_sweep.json").read_text())
    assert [row["depth"] for row in result["rows"]] == [1, 3]
    for row in result["rows"]:
        L, g, t = row["depth"], row["gaussian"], row["gaussian_theory"]
        assert abs(t["mean_lambda"] - 1.1 ** (2 * L)) < 1e-12 and t["var_over_mean_sq"] == L
        assert abs(g["mean_lambda"] / t["mean_lambda"] - 1) < 0.05, row  # 450 values: a few per cent
        assert abs(g["var_over_mean_sq"] / L - 1) < 0.15, row
        assert g["max_lambda"] < 1.05 * t["max_lambda"] and g["n_values"] == 450
        s = row["orthogonal_theory"]["s"]
        assert abs(s - 1.1**L) < 1e-12
        assert abs(row["orthogonal"]["min_s"] - s) < 1e-5 and abs(row["orthogonal"]["max_s"] - s) < 1e-5
    assert (tmp_path / "depth_sweep.png").stat().st_size > 10_000
    assert "Var λ / mean²" in (tmp_path / "depth_sweep.md").read_text()


def test_depth_sweep_bad_arguments(tmp_path):
    for args in (["--depths", "0,2"], ["--width", "-3"], ["--depths", "a"]):
        r = subprocess.run([sys.executable, str(SCRIPT), *args, "--out", str(tmp_path / "o")], capture_output=True,
                           text=True, timeout=120, check=False)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not (tmp_path / "o").exists()
