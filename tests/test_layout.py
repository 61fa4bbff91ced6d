"""The package's hygiene: each subpackage imports only the layers below it, importing it changes
nothing outside it, function-local imports stay rare and say why, and the top-level API is what
``__all__`` lists."""

import ast
import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import isotpp

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "isotpp"
CLI = ("cli/",)  # lazy imports keep `isotpp --help` free of JAX: allowed here, with a comment
BOUND_PER_1000_LINES = 2


# The layers of the package, lowest first (README "Design"): a module imports isotpp modules of its own
# layer and of the layers before it only. Foundations know nothing of models or JAX programs; models and
# data know no maths; the theory knows no model; spectra measure models; the training engine trains any
# model; pruning builds on training (its methods' phases are optimisers); PaI on pruning; studies run
# all of it; only the command line knows about flags.
LAYERS = (
    {"errors", "progress", "memory", "parallel", "preemption", "storage", "reporting"},
    {"models", "data"},
    {"theory"},
    {"spectra"},
    {"training"},
    {"pruning"},
    {"pai"},
    {"studies"},
    {"cli"},
)


def _isotpp_imports(path: Path):
    """(line, imported isotpp module) for every import in ``path``, module-level or not."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "isotpp":
            names = [f"isotpp.{a.name}" for a in node.names] if node.module == "isotpp" else [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.split(".")[0] == "isotpp"]
        else:
            continue
        for name in names:
            yield node.lineno, name


def test_each_layer_imports_only_the_layers_below_it():
    rank = {name: i for i, layer in enumerate(LAYERS) for name in layer}
    top_level = {p.stem for p in PACKAGE.glob("*.py")} | {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    unplaced = top_level - {"__init__", "__main__"} - set(rank)
    assert not unplaced, f"modules or subpackages in no layer: {sorted(unplaced)}"
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        home = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        if home in ("__init__", "__main__"):
            continue  # the package's lazy public API and `python -m isotpp` sit above everything
        for line, name in _isotpp_imports(path):
            target = name.split(".")[1]
            if target in ("__version__", "configure_cpu"):
                continue
            assert target in rank, f"isotpp/{path.relative_to(PACKAGE)}:{line} imports {name}, in no layer"
            if rank[target] > rank[home]:
                upward.append(f"isotpp/{path.relative_to(PACKAGE)}:{line} ({home}) imports {name} ({target})")
    assert not upward, "imports from a higher layer: " + "; ".join(upward)


def _environments(code: str) -> tuple[dict, dict]:
    """os.environ before and after ``code`` in a fresh interpreter (without XLA_FLAGS)."""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "ISOTPP_XLA_DEFAULTS")}
    script = f"import json, os\nbefore = dict(os.environ)\n{code}\nprint(json.dumps([before, dict(os.environ)]))"
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120,
                       check=True)
    return tuple(json.loads(r.stdout.strip().splitlines()[-1]))


def test_importing_isotpp_leaves_the_environment_alone():
    before, after = _environments("import isotpp")
    assert after == before
    # the library's modules too (JAX itself sets a few variables when imported: it goes first)
    before, after = _environments("import jax\nbefore = dict(os.environ)\n"
                                  "import isotpp.studies.mlp_linear, isotpp.studies.pai, isotpp.studies.paper_tables")
    assert after == before
    _, configured = _environments("import isotpp\nisotpp.configure_cpu()")
    from importlib.metadata import version

    if version("jaxlib").startswith("0.10."):  # the versions the flags are known to work with
        assert configured["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=reduce"


def test_configure_cpu_keeps_an_explicit_flag(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=all --other")
    isotpp.configure_cpu()
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=all --other"
    monkeypatch.setenv("XLA_FLAGS", "--other")
    monkeypatch.setenv("ISOTPP_XLA_DEFAULTS", "0")
    isotpp.configure_cpu()
    assert os.environ["XLA_FLAGS"] == "--other"


def _required_modules() -> set[str]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {d.split(">")[0].split("<")[0].split("=")[0].split("[")[0].strip().lower() for d in deps}
    rename = {"pillow": "PIL", "orbax-checkpoint": "orbax"}
    return {rename.get(n, n.replace("-", "_")) for n in names} | {"isotpp"} | set(sys.stdlib_module_names)


def _local_imports(path: Path):
    """(line, top-level module, has a comment) for each import inside a function of ``path``; the
    comment may be on the import, on the line above it, or on any import of its block (the imports
    that follow one another)."""
    lines = path.read_text().splitlines()
    tree = ast.parse("\n".join(lines))
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for body in (getattr(node, f, None) for node in ast.walk(fn) for f in ("body", "orelse", "handlers",
                                                                               "finalbody")):
            if not isinstance(body, list):
                continue
            block: list[ast.stmt] = []
            for stmt in [*body, None]:
                if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                    block.append(stmt)
                    continue
                if block:
                    commented = "#" in "".join(lines[block[0].lineno - 2: block[-1].end_lineno])
                    for node in block:
                        module = node.names[0].name if isinstance(node, ast.Import) else (node.module or "")
                        yield node.lineno, module.split(".")[0], commented
                block = []


def test_function_local_imports_are_rare_and_say_why():
    required = _required_modules()
    files = sorted(PACKAGE.rglob("*.py"))
    n_lines = sum(len(p.read_text().splitlines()) for p in files)
    counted, silent = [], []
    for p in files:
        rel = p.relative_to(PACKAGE).as_posix()
        seen = set()
        for line, module, commented in _local_imports(p):
            if (rel, line) in seen:
                continue
            seen.add((rel, line))
            if not commented:
                silent.append(f"isotpp/{rel}:{line}")
            if module in required and not rel.startswith(CLI):
                counted.append(f"isotpp/{rel}:{line}")
    assert not silent, f"function-local imports without a comment saying why: {silent}"
    assert len(counted) <= BOUND_PER_1000_LINES * n_lines / 1000, (
        f"{len(counted)} function-local imports of required modules in {n_lines} lines: {counted}")


def test_the_public_api_is_all_of_it():
    assert "configure_cpu" in isotpp.__all__ and len(set(isotpp.__all__)) == len(isotpp.__all__)
    for name in isotpp.__all__:
        assert callable(getattr(isotpp, name)), name
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        isotpp.nothing  # noqa: B018


def test_the_table_of_moved_modules_is_true():
    """docs/architecture.md's "Where modules moved": every new module imports, no old one is left behind."""
    text = (REPO / "docs" / "architecture.md").read_text().split("## Where modules moved", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(isotpp[\w.]*)` \| `(isotpp[\w.]*)` \|$", text, re.M)
    assert len(rows) >= 30, rows
    for old, new in rows:
        if _exists(new):
            importlib.import_module(new)
        else:  # a function that moved: its new module has it
            parent, name = new.rsplit(".", 1)
            assert hasattr(importlib.import_module(parent), name), new
        assert old == "isotpp.cli" or not _exists(old), (old, new)


def _exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is gone too
        return False
