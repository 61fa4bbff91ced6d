"""The linear-network study's report: table values by hand, figure, atomic writes, the notebook."""

import copy
import json
import os
from pathlib import Path

import pytest
from matplotlib.figure import Figure

from isotpp.errors import UserError
from isotpp.studies.linear_report import (
    find_results,
    learning_rates,
    load_results,
    lr_label,
    results_figure,
    results_table,
    write_report,
)

NOTEBOOK = Path(__file__).resolve().parents[1] / "analysis" / "mlp_linear_study.ipynb"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny_results() -> dict:
    """2 methods (not in alphabetical order), 2 LRs (not in numeric order), 2 seeds, 3 epochs.

    L1 at LR 0.01 has ragged curves (a seed cut after epoch 2); L1 at LR 0.001 has no seed.
    """
    return {
        "config": {"dataset": "mnist", "seeds": [0, 1], "epochs": 3},
        "runs": {
            "TPP": {
                "0.001": {
                    "best_acc": [91.0, 91.1], "final_acc": [90.0, 90.2], "jsv_after_prune": [3.0, 4.0],
                    "acc_per_epoch": [[85.0, 88.0, 91.0], [86.0, 89.0, 91.1]],
                    "jsv_per_epoch": [[3.0, 2.5, 2.0], [4.0, 3.5, 3.0]],
                },
                "0.01": {
                    "best_acc": [92.0, 93.0], "final_acc": [91.0, 92.0], "jsv_after_prune": [3.0, 4.0],
                    "acc_per_epoch": [[80.0, 85.0, 92.0], [82.0, 87.0, 93.0]],
                    "jsv_per_epoch": [[3.0, 2.0, 1.0], [4.0, 3.0, 2.0]],
                },
            },
            "L1": {
                "0.001": {"best_acc": [], "final_acc": [], "jsv_after_prune": [],
                          "acc_per_epoch": [], "jsv_per_epoch": []},
                "0.01": {
                    "best_acc": [90.0, 91.0], "final_acc": [89.0, 91.0], "jsv_after_prune": [1e-4, 3e-4],
                    "acc_per_epoch": [[70.0, 75.0, 90.0], [72.0, 91.0]],
                    "jsv_per_epoch": [[1e-4, 1e-3, 1e-2], [3e-4, 3e-3]],
                },
            },
        },
        "base": {"acc": [91.5, 92.5], "jsv": [0.9, 1.1]},
        "wall_s": 123.4,
    }  # fmt: skip


def table_rows(table: str) -> list[list[str]]:
    lines = [ln for ln in table.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines if not ln.startswith("|-")]


@pytest.fixture
def results_file(tmp_path) -> Path:
    path = tmp_path / "study" / "results.json"
    path.parent.mkdir()
    path.write_text(json.dumps(tiny_results()))
    return path


# ---------------------------------------------------------------- table


def test_table_values_by_hand():
    rows = table_rows(results_table(tiny_results()))
    assert rows[0] == ["Method", "Acc. (LR 0.01)", "Acc. (LR 0.001)", "Mean JSV after pruning"]
    assert rows[1:] == [
        # base: acc 91.5, 92.5 -> 92.00 ± 0.50; jsv 0.9, 1.1 -> 1.0000 ± 0.1000
        ["Unpruned", "92.00 ± 0.50", "92.00 ± 0.50", "1.0000 ± 0.1000"],
        # population std; a 0.05 std stays fixed-point; JSV pooled over both LRs: 3, 4, 3, 4
        ["TPP", "92.50 ± 0.50", "91.05 ± 0.05", "3.5000 ± 0.5000"],
        # no seed at LR 0.001 -> "-"; a tiny JSV switches to scientific
        ["L1", "90.50 ± 0.50", "-", "2.000e-04 ± 1.000e-04"],
    ]


def test_table_with_running_statistics_jsv_column():
    """ConvNet studies add the JSV with BatchNorm's running statistics: a second JSV column."""
    r = tiny_results()
    r["base"]["jsv_eval"] = [2.0, 4.0]
    r["runs"]["TPP"]["0.01"]["jsv_after_prune_eval"] = [0.5, 1.5]
    r["runs"]["TPP"]["0.001"]["jsv_after_prune_eval"] = [0.5, 1.5]
    r["runs"]["L1"]["0.01"]["jsv_after_prune_eval"] = [0.01, 0.03]
    rows = table_rows(results_table(r))
    assert rows[0][3:] == ["Mean JSV after pruning (BN batch stats)", "(BN running stats)"]
    assert rows[1][3:] == ["1.0000 ± 0.1000", "3.0000 ± 1.0000"]
    assert rows[2][3:] == ["3.5000 ± 0.5000", "1.0000 ± 0.5000"]
    assert rows[3][3:] == ["2.000e-04 ± 1.000e-04", "0.0200 ± 0.0100"]
    r["runs"]["L1"]["0.01"]["jsv_after_prune_eval"] = ["x"]
    with pytest.raises(UserError, match="jsv_after_prune_eval"):
        results_table(r)


def test_table_final_accuracy_and_footer():
    table = results_table(tiny_results(), metric="final_acc")
    rows = table_rows(table)
    assert rows[0][1:3] == ["Final acc. (LR 0.01)", "Final acc. (LR 0.001)"]
    assert rows[2] == ["TPP", "91.50 ± 0.50", "90.10 ± 0.10", "3.5000 ± 0.5000"]
    footer = table.strip().splitlines()[-1]
    assert footer.startswith("Final test accuracy")
    assert "0 to 2 seeds" in footer and "dataset mnist" in footer and "wall time 2.1 min" in footer


def test_table_without_base_single_seed_and_no_wall_time():
    r = tiny_results()
    del r["base"], r["wall_s"], r["runs"]["L1"]
    for cell in r["runs"]["TPP"].values():
        cell["best_acc"] = cell["best_acc"][:1]
    table = results_table(r)
    rows = table_rows(table)
    assert [row[0] for row in rows[1:]] == ["TPP"]
    assert rows[1][1:3] == ["92.00", "91.00"]  # one seed: no "± 0.00"
    assert "over 1 seed;" in table and "wall time" not in table


def test_table_rejects_unknown_metric():
    with pytest.raises(UserError, match="unknown metric"):
        results_table(tiny_results(), metric="acc")


def test_learning_rates_sorted_numerically_descending():
    r = {"runs": {"A": {"0.001": {}, "0.1": {}}, "B": {"0.01": {}, "0.0005": {}}}}
    assert learning_rates(r) == ["0.1", "0.01", "0.001", "0.0005"]
    assert [lr_label(x) for x in learning_rates(r)] == ["1e-1", "1e-2", "1e-3", "5e-4"]
    assert lr_label("0.0015") == "1.5e-3"


# ---------------------------------------------------------------- figure and files


def test_figure_png_written(tmp_path):
    path = results_figure(tiny_results(), tmp_path / "fig.png")
    data = path.read_bytes()
    assert path == tmp_path / "fig.png" and len(data) > 1000 and data.startswith(PNG_MAGIC)
    assert [p.name for p in tmp_path.iterdir()] == ["fig.png"]


def test_figure_failed_write_leaves_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "figure.png"
    target.write_bytes(b"old figure")

    def disk_full(self, fh, **kwargs):
        fh.write(PNG_MAGIC + b"half a figure")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", disk_full)
    with pytest.raises(UserError, match="No space left"):
        results_figure(tiny_results(), target)
    assert list(tmp_path.iterdir()) == [target] and target.read_bytes() == b"old figure"


def test_figure_missing_directory(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        results_figure(tiny_results(), tmp_path / "nope" / "fig.png")


def test_write_report(tmp_path):
    r = tiny_results()
    paths = write_report(r, tmp_path / "out" / "report")
    assert paths == {"table": tmp_path / "out" / "report" / "table.md",
                     "csv": tmp_path / "out" / "report" / "results.csv",
                     "figure": tmp_path / "out" / "report" / "figure.png"}  # fmt: skip
    assert paths["table"].read_text() == results_table(r)
    assert paths["figure"].read_bytes().startswith(PNG_MAGIC)
    assert sorted(p.name for p in paths["table"].parent.iterdir()) == ["figure.png", "results.csv", "table.md"]
    # the CSV: one row per (method, LR, seed) present, LRs largest first, seeds from the config
    lines = paths["csv"].read_text().splitlines()
    assert lines == ["method,lr,seed,best_acc,final_acc,jsv_after_prune",
                     "TPP,0.01,0,92.0,91.0,3.0", "TPP,0.01,1,93.0,92.0,4.0",
                     "TPP,0.001,0,91.0,90.0,3.0", "TPP,0.001,1,91.1,90.2,4.0",
                     "L1,0.01,0,90.0,89.0,0.0001", "L1,0.01,1,91.0,91.0,0.0003"]  # fmt: skip


def test_write_report_validates_before_writing(tmp_path):
    with pytest.raises(UserError, match='"runs"'):
        write_report({"config": {}}, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- loading


def test_load_results_file_and_directory(results_file):
    assert load_results(results_file) == tiny_results()
    assert load_results(results_file.parent) == tiny_results()


def test_load_missing_file(tmp_path):
    with pytest.raises(UserError, match=r"results file .*missing\.json does not exist.*isotpp reproduce"):
        load_results(tmp_path / "missing.json")


def test_load_invalid_json(results_file):
    results_file.write_text(results_file.read_text()[:40])  # truncated
    with pytest.raises(UserError, match=r"results\.json is not valid JSON.*regenerate"):
        load_results(results_file)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: r.pop("runs"), 'key "runs" is missing'),
        (lambda r: r.update(runs=[1, 2]), '"runs" must be an object'),
        (lambda r: r["runs"]["TPP"].update({"fast": {}}), "learning-rate key 'fast'"),
        (lambda r: r["runs"]["TPP"]["0.01"].update(best_acc=92.0), r"\['best_acc'\] must be a list of numbers"),
        (lambda r: r["runs"]["L1"]["0.01"].update(acc_per_epoch=[1.0, 2.0]), "per-epoch number lists"),
        (lambda r: r.update(base={"acc": "high"}), r"base\['acc'\]"),
    ],
)
def test_load_malformed(results_file, mutate, message):
    r = copy.deepcopy(tiny_results())
    mutate(r)
    results_file.write_text(json.dumps(r))
    with pytest.raises(UserError, match=message) as info:
        load_results(results_file)
    assert str(results_file) in str(info.value) and "\n" not in str(info.value)


def test_load_accepts_null_as_nan(results_file):
    r = tiny_results()
    r["runs"]["TPP"]["0.01"]["final_acc"] = [None, 92.0]  # a diverged seed written as strict JSON
    results_file.write_text(json.dumps(r))
    rows = table_rows(results_table(load_results(results_file), metric="final_acc"))
    assert rows[2][1] == "nan ± nan"


# ---------------------------------------------------------------- the notebook


def _write_run(root: Path, name: str, results: dict, mtime: float) -> Path:
    path = root / "runs" / name / "results.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(results))
    os.utime(path, (mtime, mtime))
    return path


def test_find_results_takes_the_newest_study_or_the_given_run(tmp_path, monkeypatch):
    older = tiny_results() | {"config": {"dataset": "mnist", "seeds": [0]}}
    _write_run(tmp_path, "older", older, 1_000_000)
    demo = _write_run(tmp_path, "demo", tiny_results(), 2_000_000)
    _write_run(tmp_path, "pai", {"lenet": {}}, 3_000_000)  # newest, but not a study this report reads
    (tmp_path / "runs" / "broken").mkdir()
    (tmp_path / "runs" / "broken" / "results.json").write_text("{half")  # a half-written file is skipped
    monkeypatch.chdir(tmp_path)
    assert find_results() == Path("runs/demo/results.json")
    assert find_results("runs/older") == Path("runs/older/results.json")
    assert find_results(demo) == demo
    elsewhere = _write_run(tmp_path / "scratch", "big", tiny_results(), 2_500_000)  # a run kept on another disk,
    (tmp_path / "runs" / "big").symlink_to(elsewhere.parent)                       # linked into runs/
    assert find_results() == Path("runs/big/results.json")
    (tmp_path / "runs" / "big").unlink()
    (tmp_path / "analysis").mkdir()
    monkeypatch.chdir(tmp_path / "analysis")  # a notebook in analysis/ sees the runs as ../runs
    assert find_results() == Path("../runs/demo/results.json")
    with pytest.raises(UserError, match="isotpp demo"):
        find_results("nowhere")
    monkeypatch.chdir(tmp_path / "runs" / "demo")
    with pytest.raises(UserError, match=r"no study's results.json under runs or \.\./runs: run `isotpp demo`"):
        find_results()


def test_notebook_runs_on_tiny_results(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    # keep the kernel's IPython profile and connection files out of $HOME
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")

    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(c.get("outputs", []) == [] for c in nb.cells), "commit the notebook with outputs cleared"
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and params[0].source.startswith("RUN_DIR = None")
    # as right after `isotpp demo` in a repository: the notebook runs in analysis/, the run is ../runs/demo,
    # an older study lies beside it; RUN_DIR = None must pick the newest and say so
    _write_run(tmp_path, "older", tiny_results() | {"runs": {}}, 1_000_000)
    _write_run(tmp_path, "demo", tiny_results(), 2_000_000)
    (tmp_path / "analysis").mkdir()
    nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=60, resources={"metadata": {"path": str(tmp_path / "analysis")}}
    ).execute()  # raises CellExecutionError on any failing cell

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    shown = [o for o in outputs if o.output_type in ("display_data", "execute_result")]
    markdown = [o.data["text/markdown"] for o in shown if "text/markdown" in o.data]
    assert len(markdown) == 1 and "| TPP " in markdown[0] and "2.000e-04 ± 1.000e-04" in markdown[0]
    assert sum("image/png" in o.data for o in shown) == 2  # the study's figure and the spectrum
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "orthogonal: mean JSV 1" in text
    assert "using ../runs/demo/results.json: 2 methods: TPP, L1" in text
