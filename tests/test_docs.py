"""The docs cannot rot: every Python block of the user guide and of the README's Python section runs,
and the site builds with ``mkdocs build --strict`` (no warning: broken links, missing pages, bad docstrings)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GUIDE = sorted((REPO / "docs" / "guide").glob("*.md"))
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks(text: str) -> list[str]:
    return _BLOCK.findall(text)


def readme_python_section() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^## .*Python.*?$(.*?)(?=^## )", text, re.DOTALL | re.MULTILINE)
    assert match, "the README has a '## ... Python ...' section"
    return match.group(1)


def test_the_block_finder():
    text = "a\n```python\nx = 1\n```\n```bash\nls\n```\n```python\ny = 2\n```\n"
    assert python_blocks(text) == ["x = 1\n", "y = 2\n"]


def test_the_guide_has_every_capability_with_examples():
    assert [p.stem for p in GUIDE] == ["pai", "pruning", "scaling", "spectra"]
    for page in GUIDE:
        assert python_blocks(page.read_text(encoding="utf-8")), f"{page.name} has no Python example"


@pytest.mark.parametrize("page", [*GUIDE, "README.md"], ids=lambda p: Path(p).name)
def test_every_python_block_runs(page, tmp_path, monkeypatch):
    # the blocks of one page run in order in one namespace, as a reader would paste them
    text = readme_python_section() if page == "README.md" else Path(page).read_text(encoding="utf-8")
    blocks = python_blocks(text)
    assert blocks
    monkeypatch.chdir(tmp_path)  # files the examples write land here
    namespace: dict = {"__name__": "__docs__"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{Path(page).name}, Python block {i + 1}", "exec"), namespace)  # noqa: S102


def test_the_site_builds_strictly(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                       cwd=REPO, capture_output=True, text=True, timeout=300, env=env, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8")
    assert "model_singular_values" in api and "spectrum_histogram" in api and "demo_data_dir" in api
    for page in ("getting-started", "guide/spectra", "guide/pruning", "guide/pai", "guide/scaling", "results",
                 "theory", "own-models", "fidelity", "reliability", "cli", "speed", "launching"):
        assert (tmp_path / "site" / page / "index.html").is_file(), page
