"""The examples in the public API's docstrings run and print what they say (doctest)."""

import doctest
import importlib

import pytest

MODULES = [
    "isotpp.spectra.jacobian", "isotpp.theory.fuss_catalan", "isotpp.reporting.figures", "isotpp.pruning.plan", "isotpp.pruning.cost", "isotpp.models.zoo",
    "isotpp.data", "isotpp.data.bundled", "isotpp.studies.linear_report", "isotpp.reporting.tables", "isotpp.progress",
    "isotpp.training.metrics",
]  # fmt: skip


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.attempted > 0, f"{name} has no docstring example"
    assert result.failed == 0, f"{result.failed} docstring example(s) of {name} failed (see the output above)"
