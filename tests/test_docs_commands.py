"""Every command line README.md and docs/**/*.md show is run by this test, as a user types it.

Extraction: every fenced ``bash``/``sh``/``console``/unlabelled block of README.md
and docs/**/*.md; backslash continuations are joined, ``# comments`` dropped, and
each ``&&``/``;``/``|``-separated part that invokes ``isotpp`` (also as
``.venv/bin/isotpp``) or ``python experiments/*.py`` is one command. A command is

- run exactly as typed when it is cheap by construction (``--help``,
  ``--version``, ``--list-layers``, ``--dry-run``), or
- listed in :data:`DOCUMENTED` below with what is executed instead and why: the
  command itself or a small-size variant, either run to completion (``RUN``) or
  with ``ISOTPP_CHECK_ARGS=1`` (``CHECK``: every option is parsed and validated
  against its domain, nothing is computed) for accelerator-scale runs.

A command the docs show that is neither cheap nor listed fails the test, which
prints the line to add. Commands run in a fresh directory holding ``experiments``
and ``.venv`` links, with this venv's ``bin`` first on PATH; ``isotpp`` commands
run through ``isotpp.cli.app.main`` in-process (the entry point's target, checked
once through the installed script below) and ``python experiments/x.py`` through
``runpy``, which keeps the suite fast; the README's main command goes through the
installed entry point itself.
"""

from __future__ import annotations

import json
import os
import re
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from isotpp.cli.app import main

ROOT = Path(__file__).resolve().parent.parent
RUN, CHECK = "run", "check"
_CHEAP = ("--help", "--version", "--list-layers", "--dry-run")

# doc command (whitespace collapsed) -> (mode, command executed instead or None for the same, why)
DOCUMENTED: dict[str, tuple[str, str | None, str]] = {
    # docs/extending.md: a method registered by a plugin module the reader writes (my_methods)
    "ISOTPP_PLUGINS=my_methods isotpp prune --method Random+L2 --model resnet56 --ratios '*layer*.conv1:0.5' "
    "--out runs/random-resnet56": (
        CHECK, "isotpp prune --method L1 --model resnet56 --ratios '*layer*.conv1:0.5' --out runs/random-resnet56",
        "the reader's plugin module does not exist here: tests/test_extension.py loads a plugin through "
        "ISOTPP_PLUGINS and runs a registered method through isotpp prune; the other arguments are validated"),
    "ISOTPP_PLUGINS=my_methods isotpp reproduce mlp-linear --quick --methods L1,Random+L2 --out runs/random": (
        CHECK, "isotpp reproduce mlp-linear --quick --methods L1,TPP --out runs/random",
        "the reader's plugin module does not exist here: tests/test_extension.py runs a registered method "
        "through the linear study; the other arguments are validated"),
    # docs/speed.md: the stochastic spectrum from the command line (already small: run as shown)
    "isotpp spectrum --model mlp --depth 2 --width 256 --act tanh --input-dim 256 --num-classes 128 --init torch "
    "--jsv-samples 8 --matvecs 16 --memory-budget 64MiB --json est.json": (
        RUN, None, "a two-layer MLP with 128 outputs: seconds"),
    # pages merged from parallel branches (docs/fidelity.md, docs/reliability.md)
    "isotpp prune --dry-run --model resnet34 --ratios "
    "'layer1.[12].conv1:0.5,layer2.[12].conv1:0.6,layer3.[1-4].conv1:0.4'": (
        CHECK, None, "a dry run whose brackets are glob classes, not placeholders; ResNet-34 at ImageNet size "
                     "is traced for seconds, so its arguments (patterns against the model) are validated here"),
    ".venv/bin/isotpp demo --out runs/demo": (
        CHECK, None, "the quick study trains 11 networks (≈ 30 s); tests/test_study_mlp.py runs it at a smaller size"),
    "isotpp spectrum --model mlp --depth L --width N --act linear --input-dim D --num-classes C --init "
    "{default,torch,kaiming,gaussian,orthogonal,delta-orthogonal} --sigma-w S --samples K --seed R [--float64] "
    "[--values] [--method auto|gram|jacobian|linear] [--bn eval|batch] [--checkpoint MODEL.npz] "
    "[--data fashion_mnist|mnist|cifar10|cifar100] [--data-dir DIR] --json PATH [--plot PATH]": (
        RUN, "isotpp spectrum --model mlp --depth 3 --width 8 --act linear --input-dim 8 --num-classes 8 --init "
             "orthogonal --sigma-w 1.0 --samples 2 --seed 0 --values --method auto --bn eval --json spec.json "
             "--plot spec.png", "a synopsis: its placeholders filled with a small square orthogonal MLP"),
    "isotpp prune --dry-run --model resnet56 --ratios '*layer*.conv1:0.5' [--skip PATTERN,...] --json cost.json": (
        RUN, "isotpp prune --dry-run --model resnet20 --ratios '*layer*.conv1:0.5' --skip '*layer1.0*' "
             "--json cost.json", "a synopsis: --skip filled in, on ResNet-20 (ResNet-56's dry run, 15 s here, is "
                                 "checked against the paper by tests/test_cost.py)"),
    "isotpp prune --model resnet56 --dataset cifar10 --data-dir DATA --ratios '*layer*.conv1:0.9' --method TPP "
    "[--base base.npz | --base resnet56.pth] --epochs 120 --lr-schedule 0:0.01,60:0.001,90:0.0001 --out runs/tpp": (
        CHECK, "isotpp prune --model resnet56 --dataset cifar10 --data-dir DATA --ratios '*layer*.conv1:0.9' "
               "--method TPP --base base.npz --epochs 120 --lr-schedule 0:0.01,60:0.001,90:0.0001 --out runs/tpp",
        "a synopsis of a ResNet-56 run (hours): one alternative chosen, arguments validated"),
    "isotpp train --model resnet56 --dataset cifar10 --epochs 200 --lr-schedule 0:0.1,100:0.01,150:0.001 "
    "--batch-size 128 --workdir runs/r56 --resume [--bf16] [--distributed]": (
        CHECK, "isotpp train --model resnet56 --dataset cifar10 --epochs 200 --lr-schedule 0:0.1,100:0.01,150:0.001 "
               "--batch-size 128 --workdir runs/r56 --resume --bf16", "200 epochs of ResNet-56 on CIFAR-10"),
    "python experiments/train_imagenet.py --model resnet50 --data-dir /data/imagenet --workers 16 --batch-size 256 "
    "--workdir /shared/runs/r50 --resume [--bf16] [--distributed]": (
        CHECK, "python experiments/train_imagenet.py --model resnet50 --data-dir DATA --workers 16 --batch-size 256 "
               "--workdir runs/r50 --resume --bf16", "ImageNet on accelerators; paths moved into the sandbox"),
    "python experiments/run_table.py table1_resnet56 --out runs/table1 --data-dir DATA": (
        RUN, "python experiments/run_table.py table1_resnet56 --out runs/table1 --list",
        "243 runs on accelerators: the grid's command lines are listed instead"),
    "python experiments/run_table.py table1_resnet56 --out runs/table1 --list": (RUN, None, "cheap: lists commands"),
    "python experiments/build_table.py table1_resnet56 --out runs/table1": (RUN, None, "cheap: an empty table"),
    "python experiments/train_cifar.py --model resnet56 --dataset cifar10 --data-dir /data/cifar --epochs 200 "
    "--lr-schedule 0:0.1,100:0.01,150:0.001 --batch-size 128 --wd 5e-4 --seed 0 --workdir runs/resnet56/base-s0 "
    "--resume": (CHECK, "python experiments/train_cifar.py --model resnet56 --dataset cifar10 --data-dir DATA "
                        "--epochs 200 --lr-schedule 0:0.1,100:0.01,150:0.001 --batch-size 128 --wd 5e-4 --seed 0 "
                        "--workdir runs/resnet56/base-s0 --resume", "200 epochs on CIFAR-10; data path in the sandbox"),
    "python experiments/train_imagenet.py --model resnet50 --data-dir /data/imagenet --workers 16 --epochs 90 "
    "--lr-schedule 0:0.01,30:0.001,60:0.0001,75:0.00001 --batch-size 256 --wd 1e-4 --workdir "
    "/shared/runs/resnet50/tpp-r1 --resume --bf16": (
        CHECK, "python experiments/train_imagenet.py --model resnet50 --data-dir DATA --workers 16 --epochs 90 "
               "--lr-schedule 0:0.01,30:0.001,60:0.0001,75:0.00001 --batch-size 256 --wd 1e-4 --workdir "
               "runs/resnet50/tpp-r1 --resume --bf16", "ImageNet on accelerators; paths moved into the sandbox"),
    "cd isotpp && .venv/bin/python experiments/train_imagenet.py --distributed --model resnet50 --data-dir "
    "/mnt/imagenet --workers 16 --batch-size 1024 --lr-schedule 0:0.04,30:0.004,60:0.0004,75:0.00004 --epochs 90 "
    "--workdir /mnt/shared/runs/resnet50-tpp --resume --bf16": (
        CHECK, "python experiments/train_imagenet.py --distributed --model resnet50 --data-dir DATA --workers 16 "
               "--batch-size 1024 --lr-schedule 0:0.04,30:0.004,60:0.0004,75:0.00004 --epochs 90 --workdir "
               "runs/resnet50-tpp --resume --bf16", "run by gcloud on every TPU host: the inner command, validated"),
    # docs/cli.md
    "isotpp spectrum --model mlp --depth 3 --width 16 --input-dim 16 --num-classes 16 --init orthogonal "
    "--jsv-samples 4 --json spectra/orthogonal.json": (RUN, None, "small as shown"),
    "isotpp spectrum --model mlp_7_relu --dataset synthetic --jsv-samples 4 --method gram --plot spectra/relu.png": (
        RUN, None, "small as shown"),
    "isotpp prune --model lenet5 --dataset synthetic --train-limit 256 --batch-size 64 --ratios '*conv*:0.5' "
    "--method L1 --base-epochs 1 --epochs 1 --jsv-samples 8 --out runs/lenet5-l1": (
        CHECK, None, "trains two LeNet-5s and takes JSVs (≈ 14 s of CPU even at --train-limit 64, most of it "
                     "compilation); tests/test_prune_run.py runs full prune runs"),
    "isotpp train --model resnet20 --dataset synthetic --epochs 1 --train-limit 256 --batch-size 64 --width-scale "
    "0.25 --out runs/smoke": (CHECK, None, "ResNet-20's compilation alone is ≈ 15 s of CPU: tests/test_faults.py::"
                               "test_isotpp_train_as_documented_on_real_data_then_again_then_resumed_then_other_data "
                               "runs this command through the installed entry point on the shipped Fashion-MNIST "
                               "subset (--train-limit 128), again, and with --resume"),
    "isotpp reproduce mlp-linear --quick --seeds 1 --methods L1,TPP --out runs/mlp-quick": (
        CHECK, None, "minutes; tests/test_study_mlp.py runs the study at a reduced size"),
    "isotpp reproduce convnet --quick --out runs/convnet-quick": (
        CHECK, None, "about 7 minutes; tests/test_study_convnet.py runs it at a reduced size"),
    "isotpp reproduce pai --quick --methods snip,synflow+ai --densities 5%,1% --no-transfer --out runs/pai-quick": (
        CHECK, None, "minutes; tests/test_pai_study.py runs the study at a reduced size"),
    # docs/theory.md
    "isotpp spectrum --model mlp --depth 4 --width 400 --input-dim 400 --num-classes 400 --act tanh --init "
    "orthogonal --sigma-w 1.2 --sigma-b 0.1 --samples 4 --nets 2 --json s.json --plot s.png": (
        RUN, "isotpp spectrum --model mlp --depth 4 --width 40 --input-dim 40 --num-classes 40 --act tanh --init "
             "orthogonal --sigma-w 1.2 --sigma-b 0.1 --samples 4 --nets 2 --json s.json --plot s.png",
        "width 40 instead of 400 (the same options; tests/test_theory_free.py checks the theory at width 400)"),
    "isotpp demo --out runs/demo": (CHECK, None, "the quick study (≈ 30 s); tests/test_study_mlp.py covers it"),
    # docs/reliability.md
    "isotpp prune --model mlp --dataset synthetic --ratios '*:0.5' --skip net.12 --method L1 --width-scale 0.25 "
    "--batch-size 64 --base-epochs 1 --base-lr-schedule 0:0.01 --epochs 2 --lr-schedule 0:0.002 --jsv-samples 4 "
    "--train-limit 128 --out runs/tiny": (
        CHECK, None, "12 s of CPU in a fresh process: tests/test_faults.py runs this very command through the "
                     "installed entry point (PRUNE_ARGS, another --out; killed, stopped, resumed, compared with an "
                     "uninterrupted run), so it is only validated here"),
    "isotpp prune --model mlp --dataset synthetic --ratios '*:0.8' --skip net.12 --method TPP --width-scale 0.25 "
    "--batch-size 64 --base-epochs 1 --base-lr-schedule 0:0.01 --epochs 2 --lr-schedule 0:0.002 --jsv-samples 4 "
    "--train-limit 128 --out runs/tiny": (
        CHECK, None, "shows the refusal of other settings in runs/tiny, which needs the run above: tests/"
                     "test_faults.py::test_other_settings_in_a_finished_run_are_refused_and_nothing_changes runs "
                     "this very command into that run and checks the one line"),
    "until isotpp train --model mlp --dataset synthetic --epochs 2 --lr-schedule 0:0.01 --width-scale 0.1 --limit 64 "
    "--batch-size 32 --workdir runs/tiny-train --resume": (
        RUN, "isotpp train --model mlp --dataset synthetic --epochs 2 --lr-schedule 0:0.01 --width-scale 0.1 "
             "--limit 64 --batch-size 32 --workdir runs/tiny-train --resume",
        "the command inside a shell loop on exit 75, run as shown (a second or two); tests/test_faults.py "
        "stops runs with SIGTERM (exit 75) and resumes them"),
}
# Lines that show a launcher around a command given in full elsewhere on the page (its arguments elided).
ELIDED = ("...", "srun ", "gcloud ")


def _blocks(text: str) -> list[str]:
    out, lang, buf = [], None, []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("```"):
            if lang is None:
                lang = stripped[3:].strip().lower()
                buf = []
            else:
                if lang in ("bash", "sh", "shell", "console", "zsh", ""):
                    out.append("\n".join(buf))
                lang = None
            continue
        if lang is not None:
            buf.append(line)
    return out


_INVOKES = re.compile(r"(^|[\s\"'/])(isotpp|python3?\s+experiments/\S+\.py)(\s|$)")


def _split_shell(line: str) -> list[str]:
    """``a && b; c | d`` -> its commands; separators inside quotes or a synopsis's [ ] { } do not split."""
    parts, cur, depth, quote, i = [], [], 0, None, 0
    while i < len(line):
        c = line[i]
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c in "[{":
            depth += 1
        elif c in "]}":
            depth = max(0, depth - 1)
        elif depth == 0 and c in "&|;":
            parts.append("".join(cur))
            cur = []
            i += 2 if line[i:i + 2] in ("&&", "||") else 1
            continue
        cur.append(c)
        i += 1
    return [p.strip() for p in [*parts, "".join(cur)] if p.strip()]


def documented_commands() -> list[tuple[str, str]]:
    """(file, command) for every command line the README and docs show."""
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for block in _blocks(path.read_text()):
            for line in block.replace("\\\n", " ").splitlines():
                line = re.sub(r"\s#\s.*$", "", line).strip().removeprefix("$ ").strip()
                if line.startswith("#"):
                    continue
                inner = re.findall(r"--command\s+\"([^\"]+)\"", line)  # a launcher's quoted command
                for part in (inner or _split_shell(line)):
                    part = " ".join(part.split())
                    if _INVOKES.search(part) and not re.match(r"(python3? -m venv|\S*pip )", part):
                        found.append((path.relative_to(ROOT).as_posix(), part))
    return found


def _plan(command: str) -> tuple[str, str] | None:
    """(mode, command to execute), or None when the command is a launcher around an elided one."""
    if command in DOCUMENTED:
        mode, instead, _ = DOCUMENTED[command]
        return mode, instead or command
    if any(mark in command for mark in ELIDED):
        return None
    unquoted = re.sub(r"'[^']*'|\"[^\"]*\"", "''", command)  # globs in quoted patterns are not placeholders
    if any(flag in command.split() for flag in _CHEAP) and not re.search(r"[\[\]{}]|\b[A-Z]{2,}\b", unquoted):
        return RUN, command
    raise AssertionError(
        f"the docs show `{command}`, which this test neither runs nor lists: add it to DOCUMENTED in "
        f"tests/test_docs_commands.py with a small variant (RUN) or CHECK, and the reason")


def test_every_documented_command_is_planned():
    commands = documented_commands()
    assert len(commands) >= 5  # the extraction still finds the README's commands
    for _, command in commands:
        _plan(command)
    listed = {c for _, c in commands}
    stale = [c for c in DOCUMENTED if c not in listed]
    assert not stale, f"DOCUMENTED lists commands no page shows any more; remove them: {stale}"


def _execute(words: list[str], sandbox: Path, capsys) -> tuple[int, str]:
    if words[0].endswith("isotpp"):
        argv = words[1:]
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    else:
        assert re.fullmatch(r"(\S*/)?python3?", words[0]) and words[1].startswith("experiments/"), words
        old = sys.argv
        sys.argv = words[1:]
        try:
            runpy.run_path(str(sandbox / words[1]), run_name="__main__")
            code = 0
        except SystemExit as e:
            code = e.code
        finally:
            sys.argv = old
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    (tmp_path / "experiments").symlink_to(ROOT / "experiments")
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)
    (tmp_path / "DATA").mkdir()
    (tmp_path / "base.npz").write_bytes(b"")  # CHECK mode: only its existence is checked
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.syspath_prepend(str(ROOT / "experiments"))
    return tmp_path


def test_every_documented_command_runs(sandbox, capsys, monkeypatch):
    done = set()
    for page, command in documented_commands():
        plan = _plan(command)
        if plan is None or plan in done:
            continue
        done.add(plan)
        mode, text = plan
        text = text.replace("DATA", str(sandbox / "DATA"))
        if mode == CHECK:
            monkeypatch.setenv("ISOTPP_CHECK_ARGS", "1")
        else:
            monkeypatch.delenv("ISOTPP_CHECK_ARGS", raising=False)
        code, out = _execute(shlex.split(text), sandbox, capsys)
        assert code == 0, f"{page}: `{text}` exited {code}: {out[-2000:]}"
        assert "Traceback" not in out
        if mode == CHECK:
            assert "the arguments are valid" in out, out
    assert json.loads((sandbox / "spec.json").read_text())["mean"] == pytest.approx(1.0, rel=1e-5)
    assert (sandbox / "spec.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    orthogonal = json.loads((sandbox / "spectra" / "orthogonal.json").read_text())  # docs/cli.md: exact isometry
    assert orthogonal["mean"] == pytest.approx(1.0, abs=1e-5) and orthogonal["std"] < 1e-5
    assert (sandbox / "spectra" / "relu.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((sandbox / "cost" / "resnet20-0.5.json").read_text())["sparsity"] > 0
    tiny = json.loads((sandbox / "runs" / "tiny-train" / "results.json").read_text())  # docs/reliability.md
    assert tiny["steps"] == 4 and tiny["epochs"] == 2  # 64 examples in batches of 32, two epochs
    cost = json.loads((sandbox / "cost.json").read_text())
    assert cost["params"] > cost["params_pruned"] and "layer1.0.conv1" not in cost["layers"]  # skipped


def test_the_main_command_through_the_installed_entry_point(sandbox):
    """The README's main command, as typed, through the installed ``.venv/bin/isotpp`` (arguments checked)."""
    main_command = next((c for _, c in documented_commands() if re.match(r"(\S*/)?isotpp demo", c)), "isotpp demo")
    env = {**os.environ, "ISOTPP_CHECK_ARGS": "1"}
    r = subprocess.run(shlex.split(main_command), cwd=sandbox, env=env, capture_output=True, text=True, timeout=120,
                       check=False)
    assert r.returncode == 0 and "isotpp demo: the arguments are valid" in r.stdout, r.stdout + r.stderr
    assert not (sandbox / "runs").exists()  # checked, nothing run or written
