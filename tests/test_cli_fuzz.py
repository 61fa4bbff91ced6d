"""Property-based fuzzing of the command line (hypothesis).

For every sub-command, argument lists are drawn from each option's plausible
and hostile values (negative, zero, NaN, inf, huge, empty, unicode, a
directory, a missing file, crafted files) on tiny models. The property:

- the exit status is 0 or 2, and nothing on stderr is a traceback;
- a refused run (2) says so in one line and leaves its workspace exactly as
  it was (no file created, changed or removed);
- an accepted run (0) leaves complete files: every JSON parses, every PNG has
  its signature, no temporary file is left behind.

``spectrum`` and ``prune --dry-run``/``--list-layers`` run to completion on
tiny models; the studies, ``train`` and ``demo`` (minutes when accepted) get
at least one hostile value per draw and must refuse it before doing anything.
Examples are derandomised (the same in every CI run) and bounded (≈ 20 s).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from isotpp.cli.app import main
from isotpp.models import create_model
from isotpp.pruning.model_file import save_model

_SETTINGS = dict(deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# Values that name things in the workspace; filled in per example by _workspace().
_PATH_VALUES = ["{ws}/out/s.json", "{ws}/out/new/deeper/s.json", "{ws}/out", "{ws}/out/", "{ws}/missing.npz",
                "{ws}/empty.npz", "{ws}/garbage.npz", "{ws}/list-header.npz", "{ws}/bomb.npz", "{ws}/good.npz",
                "{ws}/plain.txt", "{ws}/plain.txt/x.json", "", " ", "{ws}/out/ünïcödé ✓.json", "/proc/isotpp.json"]
_NUMBERS = ["0", "-1", "1", "2", "3", "nan", "inf", "-inf", "1e400", "1e-9", "100000000", "99999999999999999999",
            "", "ü", "0x10", "1,2", "2.5"]


def _workspace() -> Path:
    """A fresh directory with crafted inputs and an existing output directory."""
    ws = Path(tempfile.mkdtemp(prefix="isotpp-fuzz-"))
    (ws / "out").mkdir()
    (ws / "out" / "keep.txt").write_text("a result of an earlier run\n")
    (ws / "empty.npz").write_bytes(b"")
    (ws / "garbage.npz").write_bytes(os.urandom(64))
    (ws / "plain.txt").write_text("x")
    np.savez(ws / "list-header.npz", __isotpp__=np.frombuffer(b"[1, 2]", np.uint8), __header__=np.zeros(1))
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (10**12,)})
    with zipfile.ZipFile(ws / "bomb.npz", "w") as zf:
        zf.writestr("__isotpp__.npy", buf.getvalue() + bytes(8))
    save_model(ws / "good.npz", create_model("mlp", depth=2, width=4, input_dim=8, num_classes=3))
    return ws


def _snapshot(ws: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(ws)): (p.stat().st_size, p.stat().st_mtime_ns) for p in ws.rglob("*") if p.is_file()}


def _check(argv: list[str]) -> tuple[int, str]:
    """Run ``argv`` in a fresh workspace and assert the property; returns (status, stderr)."""
    ws = _workspace()
    words = [a.replace("{ws}", str(ws)) for a in argv]
    before = _snapshot(ws)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(words)
        except SystemExit as e:
            code = e.code
    stderr = err.getvalue()
    assert code in (0, 2), (words, code, stderr)
    assert "Traceback" not in stderr and "Traceback" not in out.getvalue(), (words, stderr)
    after = _snapshot(ws)
    if code == 2:
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert lines and lines[-1].startswith("isotpp") and "error:" in lines[-1], (words, stderr)
        assert after == before, (words, stderr, set(after) ^ set(before))
    else:
        assert {k: v for k, v in after.items() if k in before} == before, words  # inputs untouched
        for name in set(after) - set(before):
            path = ws / name
            assert not name.endswith(".tmp"), (words, name)
            if name.endswith(".json"):
                json.loads(path.read_text())
            if name.endswith(".png"):
                assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", (words, name)
    return code, stderr


def _options(pools: dict[str, list[str]], flags: tuple[str, ...] = ()):
    """Draws ``[--opt, value, ..., --flag, ...]`` from a few of the pools."""
    valued = st.lists(st.sampled_from(sorted(pools)), max_size=4, unique=True).flatmap(
        lambda names: st.tuples(*[st.tuples(st.just(n), st.sampled_from(pools[n])) for n in names]))
    chosen_flags = st.lists(st.sampled_from(flags), max_size=2, unique=True) if flags else st.just([])
    return st.tuples(valued, chosen_flags).map(
        lambda t: [w for pair in t[0] for w in pair] + list(t[1]))


_SPECTRUM = {
    "--model": ["mlp", "mlp_7_linear", "resnet57", "", "MLP", "lenet_300_100"],
    "--depth": ["1", "2", "3", "0", "-1", "nan", "100000", "ü"],
    "--width": ["1", "4", "0", "-3", "1000000", "1e3", ""],
    "--input-dim": ["8", "0", "1000000000"],
    "--num-classes": ["3", "1", "0", "100000000"],
    "--init": ["default", "orthogonal", "gaussian", "delta-orthogonal", "torch", "kaiming", "xavier", ""],
    "--sigma-w": ["0.5", "1", "0", "-1", "nan", "inf", "1e300", "1e-300"],
    "--jsv-samples": ["1", "2", "0", "1000000000", "-2"],
    "--seed": ["0", "7", "-1", "4294967296"],
    "--method": ["auto", "gram", "jacobian", "linear", "svd"],
    "--jsv-bn": ["eval", "batch", "train"],
    "--checkpoint": _PATH_VALUES,
    "--dataset": ["synthetic", "gaussian", "random", "imagenet", "", "cifar10"],
    "--data-dir": ["{ws}/out", "{ws}/missing", "{ws}/plain.txt", ""],
    "--chunk-size": ["1", "0", "-1"],
    "--json": _PATH_VALUES,
    "--plot": ["{ws}/out/p.png", "{ws}/out/new/p.png", "{ws}/out", "{ws}/plain.txt/p.png", ""],
}
_SPECTRUM_BASE = ["spectrum", "--model", "mlp", "--depth", "2", "--width", "4", "--input-dim", "8",
                  "--num-classes", "3", "--jsv-samples", "2"]


@settings(max_examples=10, **_SETTINGS)  # each draw compiles a spectrum (≈ 0.25 s of CPU)
@given(_options(_SPECTRUM, ("--values", "--list-layers")))
def test_fuzz_spectrum(extra):
    code, err = _check([*_SPECTRUM_BASE, *extra])
    if any(v in extra for v in ("nan", "inf", "-1", "0", "")) and code == 0:
        # every hostile number in a numeric option must have been refused
        for opt in ("--depth", "--width", "--sigma-w", "--jsv-samples", "--input-dim", "--num-classes", "--seed"):
            if opt in extra:
                assert extra[extra.index(opt) + 1] not in ("nan", "inf", "-1", "0", ""), (extra, err)


_PRUNE = {
    "--model": ["mlp_7_linear", "lenet5", "lenet_300_100", "resnet57", ""],
    "--ratios": ["*:0.5", "net.0:0.5", "zzz:0.5", "*:1.5", "*:nan", "", ",", "*:0", "*:-0.1", "net.*:0.3,net.2:0.9"],
    "--skip": ["net.12", "zzz", "", ",", "net.0,net.0"],
    "--num-classes": ["10", "0", "100000000", "-1"],
    "--json": _PATH_VALUES,
    "--checkpoint": _PATH_VALUES,
    "--wd": _NUMBERS, "--seed": _NUMBERS, "--width-scale": _NUMBERS, "--batch-size": _NUMBERS,
    "--reg-granularity": _NUMBERS, "--train-limit": _NUMBERS, "--epochs": _NUMBERS,
    "--lr-schedule": ["0:0.1", "5:0.1", "0:-1", "", "0:nan", "0:0.1,0:0.2", "abc"],
    "--method": ["L1", "TPP", "l1+orthp", "Magic", ""],
    "--dataset": ["synthetic", "cifar10", "imagenet", "emnist", ""],
}


@settings(max_examples=14, **_SETTINGS)
@given(st.sampled_from(["--dry-run", "--list-layers"]), _options(_PRUNE))
def test_fuzz_prune_dry_run_and_list_layers(mode, extra):
    _check(["prune", "--model", "mlp_7_linear", "--ratios", "net.[0-4]:0.5", mode, *extra])


# Every value here is outside its option's domain: a draw must be refused before anything runs.
_HOSTILE = {
    "--seeds": ["0", "-1", "nan", "", "100000"],
    "--methods": ["", ",", "L1,,TPP", "L1,L1"],
    "--ratio": ["0", "1", "1.5", "-0.5", "nan", "inf", ""],
    "--epochs": ["0", "-1", "1e400", "", "ü"],
    "--data-dir": ["{ws}/missing", "{ws}/plain.txt", ""],
    "--lr-schedule": ["a=0:0.1", "../../evil=0:0.1", "=0:0.1", "x=5:0.1", "x=0:nan", "nolabel"],
    "--densities": ["0", "2", "-1%", "", ",", "nan"],
    "--scorer": ["", "{ws}/missing.npz", "{ws}/out"],
    "--irp-record": ["", "{ws}/missing.npz", "{ws}/out"],
    "--wd": ["-1", "nan", "inf", ""],
    "--momentum": ["-5", "1", "nan"],
    "--width-scale": ["0", "-1", "1e-9", "nan", "1000"],
    "--eval-batch-size": ["100000000", "0"],
    "--batch-size": ["0", "-1", "100000000"],
    "--seed": ["-1", "nan", "4294967296"],
    "--init": ["xavier", ""],
    "--dataset": ["emnist", ""],
    "--model": ["resnet57", ""],
    "--out": ["", "{ws}/plain.txt", "{ws}/plain.txt/sub"],
}
_COMMANDS = {
    ("reproduce", "mlp-linear"): ["--seeds", "--methods", "--ratio", "--epochs", "--data-dir", "--lr-schedule",
                                  "--dataset", "--out"],
    ("reproduce", "convnet"): ["--seeds", "--methods", "--ratio", "--data-dir", "--dataset", "--out"],
    ("reproduce", "pai"): ["--seeds", "--methods", "--densities", "--epochs", "--scorer", "--irp-record",
                           "--data-dir", "--out"],
    ("train",): ["--wd", "--momentum", "--width-scale", "--eval-batch-size", "--batch-size", "--seed", "--init",
                 "--epochs", "--dataset", "--model", "--data-dir", "--out"],
    ("demo",): ["--out", "--data-dir"],
}


@st.composite
def _refused(draw):
    command = draw(st.sampled_from(sorted(_COMMANDS)))
    names = draw(st.lists(st.sampled_from(_COMMANDS[command]), min_size=1, max_size=3, unique=True))
    words = list(command)
    for name in names:
        value = draw(st.sampled_from(_HOSTILE[name]))
        if name == "--lr-schedule" and value == "a=0:0.1":  # hostile only when repeated
            words += [name, value]
        words += [name, value]
    if "--out" not in names and command != ("demo",):
        words += ["--out", "{ws}/out/run"]
    return words


@settings(max_examples=40, **_SETTINGS)
@given(_refused())
def test_fuzz_long_commands_refuse_hostile_values_before_running(argv):
    code, err = _check(argv)
    assert code == 2, (argv, err)


def test_through_the_installed_entry_point(tmp_path):
    """Hostile invocations as a user types them, through the ``isotpp`` script (refused while parsing, so
    JAX is not even imported: each takes a fraction of a second)."""
    isotpp = Path(sys.executable).parent / "isotpp"
    (tmp_path / "empty.npz").write_bytes(b"")
    cases = [
        ([str(isotpp), "spectrum", "--checkpoint", ".", "--json", "out/s.json"], "--checkpoint: . is not a file"),
        ([str(isotpp), "spectrum", "--json", "", "--plot", "p.png"], "--json: expected an output file, got ''"),
        ([str(isotpp), "prune", "--wd", "-1", "--model", "resnet20", "--ratios", "*:0.5", "--out", "run"],
         "--wd: -1 is outside [0, inf)"),
    ]
    for argv, needle in cases:
        r = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert r.returncode == 2 and len(lines) == 1 and needle in lines[0], r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.npz"]
