"""docs/own-models.md's example runs as written (under 20 lines), and analysis/own_model.ipynb executes."""

import os
import re
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def test_the_docs_example_runs(tmp_path, monkeypatch):
    text = (ROOT / "docs" / "own-models.md").read_text()
    block = re.search(r"```python\n(.*?)```", text, re.DOTALL).group(1)
    assert len(block.strip().splitlines()) < 20
    monkeypatch.chdir(tmp_path)
    ns: dict = {"__name__": "__main__"}
    exec(compile(block, "own-models.md", "exec"), ns)  # noqa: S102 - the documented example itself
    import isotpp

    small, x = ns["small"], ns["x"]
    assert [(g.name, g.size) for g in isotpp.channel_groups(small, x)] == [("conv", 8), ("fc", 10)]
    assert [(g.name, g.size, g.prunable) for g in ns["groups"]] == [("conv", 16, True), ("fc", 10, False)]
    assert isotpp.describe(ns["opt"].opt_state)["phase"] == "done"
    loaded, _ = isotpp.load_model("small.npz", constructor=ns["Net"])
    small.eval()
    loaded.eval()
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(small(x)))
    assert ns["jsv"].shape == (8, 10) and np.all(ns["jsv"] > 0)


def test_the_own_model_notebook_executes(tmp_path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "analysis" / "own_model.ipynb", as_version=4)
    env_dir = os.getcwd()
    try:
        os.chdir(tmp_path)
        NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        os.chdir(env_dir)
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "soft == hard: True" in outputs and "phase: done" in outputs and "reloaded == pruned: True" in outputs
