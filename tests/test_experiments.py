"""The scripts in experiments/ are thin forwards to the library's commands: their help is the
command's, and bad input exits 2 with the command's one-line error."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("script,usage", [
    ("mlp_linear.py", "isotpp reproduce mlp-linear"),
    ("convnet_study.py", "isotpp reproduce convnet"),
    ("pai.py", "isotpp reproduce pai"),
    ("train_cifar.py", "train_cifar"),
    ("train_imagenet.py", "train_imagenet"),
])
def test_help_is_the_commands(script, usage):
    r = subprocess.run([sys.executable, str(ROOT / "experiments" / script), "--help"], capture_output=True,
                       text=True, timeout=120, check=False)
    assert r.returncode == 0 and r.stdout.startswith(f"usage: {usage}"), r.stdout[:200] + r.stderr


@pytest.mark.parametrize("script,args,needle", [
    ("mlp_linear.py", ["--ratio", "1.5", "--out", "{tmp}"], "ratio"),
    ("convnet_study.py", ["--ratio", "1.0", "--out", "{tmp}"], "outside (0, 1)"),
    ("pai.py", ["--densities", "0", "--out", "{tmp}"], "density"),
])
def test_bad_input_exits_2_with_one_line(script, args, needle, tmp_path):
    argv = [a.format(tmp=tmp_path / "out") for a in args]
    r = subprocess.run([sys.executable, str(ROOT / "experiments" / script), *argv], capture_output=True, text=True,
                       timeout=120, check=False)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1 and needle in lines[0], r.stderr
    assert not (tmp_path / "out" / "results.json").exists()
