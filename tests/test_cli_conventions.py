"""The command line's conventions: --version, python -m, help without JAX, one declared domain per
option, aliases, --list-layers, and one line (exit 2) for every value outside its domain."""

import argparse
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import isotpp
from isotpp.cli import args as A
from isotpp.cli.app import build_parser, main

ROOT = Path(__file__).resolve().parent.parent


def _subparsers(parser, prefix=()):
    """(command words, parser) of every leaf sub-command."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield prefix, parser
        return
    for name, p in subs[0].choices.items():
        yield from _subparsers(p, (*prefix, name))


def _run(argv, capsys):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_version_everywhere(capsys):
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert isotpp.__version__ == version
    code, out, _ = _run(["--version"], capsys)
    assert code == 0 and out.strip() == f"isotpp {version}"
    r = subprocess.run([sys.executable, "-m", "isotpp", "--version"], capture_output=True, text=True, timeout=60,
                       check=False)
    assert r.returncode == 0 and r.stdout.strip() == f"isotpp {version}", r.stderr


def test_help_imports_no_jax_and_shows_examples_and_defaults():
    """Every command's --help, in one fresh interpreter: JAX is never imported."""
    commands = [" ".join(words) for words, _ in _subparsers(build_parser())]
    code = (
        "import sys, io, contextlib\n"
        "from isotpp.cli.app import main\n"
        f"for words in [[]] + [c.split() for c in {commands!r}]:\n"
        "    buf = io.StringIO()\n"
        "    with contextlib.redirect_stdout(buf):\n"
        "        try: main([*words, '--help'])\n"
        "        except SystemExit as e: assert e.code == 0, words\n"
        "    text = buf.getvalue()\n"
        "    assert 'examples:' in text and '%%' not in text and '80%%' not in text, (words, text)\n"
        "assert 'jax' not in sys.modules and 'flax' not in sys.modules, sorted(m for m in sys.modules if 'jax' in m)\n"
        "print(len(commands := [1]))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    help_text = subprocess.run([sys.executable, "-m", "isotpp", "prune", "--help"], capture_output=True,
                               text=True, timeout=60, check=True).stdout
    assert "(default: 128)" in help_text and "(default: TPP)" in help_text  # shown by the formatter


def test_the_mirrored_names_are_the_librarys():
    from isotpp import data
    from isotpp.models import MODEL_NAMES
    from isotpp.models.init import INIT_SCHEMES
    from isotpp.pruning.methods import ALIASES, METHODS

    assert A.INIT_SCHEMES == tuple(INIT_SCHEMES)
    method = A.prune_method()  # read from the registry, not mirrored
    assert method.names == tuple(METHODS) and len(METHODS) == 9
    assert all(method(alias) == name for alias, name in ALIASES.items()) and len(ALIASES) == 4
    assert A.MODEL_NAMES == tuple(MODEL_NAMES)
    assert set(A.DATASETS) == set(data.DATASET_INFO) and A.DATASET_ALIASES == data._ALIASES


def test_every_option_has_help_and_a_declared_domain():
    domains = (A.Domain, type(A.output_file), type(A.label))
    seen = 0
    for words, parser in _subparsers(build_parser()):
        for action in parser._actions:
            if not action.option_strings or isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                continue
            seen += 1
            name = f"isotpp {' '.join(words)} {action.option_strings[0]}"
            assert action.help and len(action.help) > 10, name
            if action.nargs == 0:  # a flag
                continue
            assert action.choices is not None or isinstance(action.type, domains), name
            assert action.type not in (int, float, str, None) or action.choices is not None, name
    assert seen > 80


@pytest.mark.parametrize("canonical,alias,dest,value", [
    (["spectrum", "--dataset"], ["spectrum", "--data"], "data", "synthetic"),
    (["spectrum", "--jsv-samples"], ["spectrum", "--samples"], "samples", "7"),
    (["prune", "--model", "lenet5", "--checkpoint"], ["prune", "--model", "lenet5", "--base"], "base", "{file}"),
    (["prune", "--model", "lenet5", "--train-limit"], ["prune", "--model", "lenet5", "--limit"], "train_limit", "9"),
    (["train", "--out"], ["train", "--workdir"], "workdir", "{dir}"),
    (["train", "--out", "x", "--train-limit"], ["train", "--out", "x", "--limit"], "limit", "9"),
])
def test_one_name_per_concept_old_spellings_kept(tmp_path, canonical, alias, dest, value):
    (tmp_path / "m.npz").write_bytes(b"x")
    value = value.format(file=tmp_path / "m.npz", dir=tmp_path / "run")
    parser = build_parser()
    extra = ["--out", str(tmp_path / "o")] if canonical[0] == "train" and "--out" not in canonical else []
    a = parser.parse_args([*canonical, value, *extra])
    b = parser.parse_args([*alias, value, *extra])
    assert getattr(a, dest) == getattr(b, dest) == (int(value) if value.isdigit() else value)


def test_list_layers_marks_streams_and_the_classifier(capsys):
    code, out, err = _run(["prune", "--model", "resnet20", "--list-layers"], capsys)
    assert code == 0 and err == ""
    rows = [line for line in out.splitlines() if line.startswith("|")][2:]  # after the header and the rule
    names = [r.split("|")[1].strip() for r in rows]
    # ResNet-20: stem, then 3 stages x 3 blocks x (conv1, conv2), then the classifier; forward order
    assert names[:3] == ["conv1", "layer1.0.conv1", "layer1.0.conv2"] and names[-1] == "linear" and len(names) == 20
    status = {r.split("|")[1].strip(): r.split("|")[3].strip() for r in rows}
    assert [n for n, s in status.items() if s == "yes"] == [f"layer{i}.{j}.conv1" for i in (1, 2, 3) for j in range(3)]
    assert sum(s == "only with its stream" for s in status.values()) == 10 and status["linear"] == "no"
    assert "9 prunable alone, 10 tie a residual stream, 1 fixed" in out
    code, out, _ = _run(["spectrum", "--model", "mlp", "--depth", "3", "--width", "5", "--list-layers"], capsys)
    assert code == 0 and "2 prunable alone, 0 tie a residual stream, 1 fixed" in out


def test_a_pattern_matching_nothing_names_the_closest_layers(capsys):
    code, _, err = _run(["prune", "--dry-run", "--model", "resnet56", "--ratios", "*layer*.conv3:0.5"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "matches no layer (of 56)" in lines[0]
    closest = lines[0].split("the closest are ")[1].split(" (--list-layers")[0].split(", ")
    assert closest == ["layer1.0.conv1", "layer1.1.conv1", "layer1.2.conv1", "layer1.3.conv1", "layer1.4.conv1"]


@pytest.mark.parametrize("argv,needle", [
    (["train", "--wd", "-1"], "--wd: -1 is outside [0, inf)"),
    (["train", "--momentum", "-5"], "--momentum: -5 is outside [0, 1)"),
    (["train", "--width-scale", "0"], "--width-scale"),
    (["train", "--width-scale", "-1"], "--width-scale"),
    (["train", "--width-scale", "1e-9"], "--width-scale: 1e-9 is outside"),
    (["train", "--width-scale", "nan"], "nan is not a finite number"),
    (["train", "--eval-batch-size", "100000000"], "--eval-batch-size"),
    (["train", "--batch-size", "0"], "--batch-size: 0 is outside"),
    (["train", "--out", ""], "expected an output directory, got ''"),
    (["train", "--workdir", ""], "expected an output directory, got ''"),
    (["prune", "--model", "resnet20", "--reg-granularity", "0"], "--reg-granularity: 0 is outside"),
    (["prune", "--model", "resnet20", "--seed", "-1"], "--seed: -1 is outside"),
    (["prune", "--model", "resnet57"], "did you mean resnet56"),
    (["prune", "--model", "resnet20", "--ratios", "*:1.5"], "outside [0, 1)"),
    (["prune", "--model", "resnet20", "--method", "L2"], "unknown method 'L2'"),
    (["prune", "--model", "resnet20", "--out", ""], "expected an output directory"),
    (["spectrum", "--json", ""], "expected an output file, got ''"),
    (["spectrum", "--json", "{tmp}"], "is a directory"),
    (["spectrum", "--plot", "{tmp}/"], "is a directory"),
    (["spectrum", "--plot", "{tmp}/file.txt/x.png"], "is a file, not a directory"),
    (["spectrum", "--checkpoint", "{tmp}"], "is not a file"),
    (["spectrum", "--checkpoint", "{tmp}/missing.npz"], "does not exist"),
    (["spectrum", "--sigma-w", "inf"], "inf is not a finite number"),
    (["spectrum", "--samples", "0"], "--jsv-samples/--samples: 0 is outside"),
    (["spectrum", "--init", "xavier"], "unknown init scheme"),
    (["spectrum", "--data-dir", "{tmp}/nowhere"], "does not exist"),
    (["reproduce", "mlp-linear", "--methods", "", "--out", "{tmp}/o"], "name at least one"),
    (["reproduce", "mlp-linear", "--methods", ",", "--out", "{tmp}/o"], "name at least one"),
    (["reproduce", "mlp-linear", "--methods", "L1,,TPP", "--out", "{tmp}/o"], "extra comma"),
    (["reproduce", "mlp-linear", "--methods", "L1,l1", "--out", "{tmp}/o"], "given twice"),
    (["reproduce", "mlp-linear", "--lr-schedule", "a=0:0.1", "--lr-schedule", "a=0:0.2", "--out", "{tmp}/o"],
     "'a' is given twice"),
    (["reproduce", "mlp-linear", "--lr-schedule", "../../evil=0:0.1", "--out", "{tmp}/o"], "names files"),
    (["reproduce", "mlp-linear", "--lr-schedule", "x=5:0.1", "--out", "{tmp}/o"], "schedule"),
    (["reproduce", "mlp-linear", "--seeds", "0", "--out", "{tmp}/o"], "--seeds: 0 is outside"),
    (["reproduce", "mlp-linear", "--out", "{tmp}/file.txt"], "is not a directory"),
    (["reproduce", "pai", "--densities", "0", "--out", "{tmp}/o"], "density"),
    (["reproduce", "pai", "--scorer", "", "--out", "{tmp}/o"], "expected an input file"),
    (["demo", "--out", ""], "expected an output directory"),
    (["demo", "--data-dir", "/nonexistent"], "does not exist"),
])
def test_values_outside_their_domain_are_one_line_before_anything_runs(tmp_path, capsys, argv, needle):
    (tmp_path / "file.txt").write_text("x")
    before = sorted(p.name for p in tmp_path.iterdir())
    words = [a.format(tmp=tmp_path) for a in argv]
    if words[0] == "train" and not {"--out", "--workdir"} & set(words):
        words += ["--out", str(tmp_path / "run")]
    code, out, err = _run(words, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and needle in lines[0], err
    assert "Traceback" not in err and out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


@pytest.mark.parametrize("argv,needle", [
    (["prune", "--model", "resnet20", "--ratios", "zzz:0.5"], "pattern 'zzz' matches no layer"),
    (["prune", "--model", "resnet20", "--ratios", "*layer*.conv1:0.5", "--train-limit", "16", "--batch-size", "32"],
     "--batch-size 32 is larger than --train-limit 16"),
    (["prune", "--model", "resnet20", "--ratios", "*layer*.conv1:0.5", "--dataset", "synthetic", "--batch-size",
      "5000"], "larger than the 1024 training examples"),
    (["prune", "--model", "resnet20", "--ratios", "*layer*.conv1:0.5", "--width-scale", "0.02"],
     "width scale 0.02 leaves layer conv1 (16 channels) with none: use a scale of at least 0.0625"),
    (["train", "--model", "lenet5", "--dataset", "synthetic", "--train-limit", "8", "--batch-size", "32"],
     "--batch-size 32 is larger than --train-limit 8"),
    # the classifier 64 x 10^9 + 10^9 biases, plus the 273,008 other variables (BN statistics included), 16 bytes each
    (["prune", "--model", "resnet20", "--ratios", "*layer*.conv1:0.5", "--num-classes", "1000000000"],
     "training resnet20 (65,000,273,008 parameters) would need 968.6 GiB of memory"),
])
def test_options_that_contradict_each_other_are_refused_before_anything_is_written(tmp_path, capsys, argv, needle):
    code, out, err = _run([*argv, "--out", tmp_path / "run"], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and needle in lines[0], err
    assert not (tmp_path / "run").exists()
