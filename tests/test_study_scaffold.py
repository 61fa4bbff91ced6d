"""The study scaffold on a toy study (no training): cells computed once and read back, the
settings record and its checks, old settings keys of run directories written by isotpp 0.1,
the wall clock and the results file."""

import dataclasses
import json
from typing import ClassVar

import pytest

from isotpp.errors import UserError
from isotpp.storage.atomic import write_json
from isotpp.studies import mlp_linear, pai
from isotpp.studies.rundir import open_run
from isotpp.studies.scaffold import StudySettings, run_study, slug


@dataclasses.dataclass(frozen=True)
class Toy(StudySettings):
    seeds: tuple[int, ...] = (0, 1)
    methods: tuple[str, ...] = ("L1", "L1+OrthP")
    lr_schedule: str = "0:0.1"
    steps: int = 3
    quick: bool = False

    QUICK: ClassVar = {"steps": 1}
    POSITIVE: ClassVar = ("steps",)
    SCHEDULES: ClassVar = ("lr_schedule",)
    RENAMED: ClassVar = {"lr": "lr_schedule"}


def _toy(config, out, computed):
    def body(study, data):
        runs = {}
        for m in study.config.methods:
            for s in study.config.seeds:
                def compute(m=m, s=s):
                    computed.append((m, s))
                    study.record(method=m, seed=s)
                    return {"acc": data[s] + len(m)}

                runs.setdefault(m, []).append(study.cached(study.out / f"seed{s}" / f"{slug(m)}.json", compute)["acc"])
        return study.finish({"config": study.config.to_dict(), "runs": runs},
                            lambda results, out: {"table": write_json(out / "table.json", results["runs"])})

    return run_study(config, out, load_data=lambda c: {s: 10 * s for s in c.seeds}, body=body, log=lambda s: None)


def test_cells_are_computed_once_and_read_back(tmp_path):
    computed = []
    results = _toy(Toy(), tmp_path, computed)
    assert results["runs"] == {"L1": [2, 12], "L1+OrthP": [8, 18]}
    assert computed == [("L1", 0), ("L1", 1), ("L1+OrthP", 0), ("L1+OrthP", 1)]
    assert (tmp_path / "seed1" / "L1_plus_OrthP.json").exists()
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["runs"] == results["runs"] and on_disk["wall_s"] >= 0
    assert results["files"] == {"table": str(tmp_path / "table.json"), "results": str(tmp_path / "results.json")}
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 4
    (tmp_path / "seed0" / "L1.json").unlink()  # an interrupted call: one cell missing
    computed.clear()
    again = _toy(Toy(seeds=(0, 1, 2)), tmp_path, computed)  # seeds are reusable: a third one is added
    assert computed == [("L1", 0), ("L1", 2), ("L1+OrthP", 2)]
    assert again["runs"] == {"L1": [2, 12, 22], "L1+OrthP": [8, 18, 28]}
    assert json.loads((tmp_path / "wall.json").read_text())["wall_s"] >= on_disk["wall_s"]


def test_the_settings_are_checked_and_recorded(tmp_path):
    _toy(Toy(), tmp_path, [])
    with pytest.raises(UserError, match=r"holds a study with a different steps \(3 there, 4 here\)"):
        _toy(Toy(steps=4), tmp_path, [])
    assert json.loads((tmp_path / "config.json").read_text())["steps"] == 3
    with pytest.raises(UserError, match="no seeds"):
        Toy(seeds=()).validate()
    with pytest.raises(UserError, match="steps must be >= 1, got 0"):
        Toy(steps=0).validate()
    with pytest.raises(UserError, match="schedule"):
        Toy(lr_schedule="5:0.1").validate()
    assert Toy.quick_config(lr="0:0.5") == Toy(steps=1, lr_schedule="0:0.5", quick=True)  # old names accepted


def test_a_directory_with_the_old_settings_keys_resumes(tmp_path):
    old = {("lr" if k == "lr_schedule" else k): v for k, v in Toy().to_dict().items()}
    write_json(tmp_path / "config.json", old)
    computed = []
    _toy(Toy(), tmp_path, computed)
    assert len(computed) == 4 and "lr_schedule" in json.loads((tmp_path / "config.json").read_text())
    write_json(tmp_path / "config.json", old | {"lr": "0:0.2"})  # an old key with another value is still refused
    with pytest.raises(UserError, match=r"different lr_schedule \('0:0.2' there, '0:0.1' here\)"):
        _toy(Toy(), tmp_path, [])


@pytest.mark.parametrize("config,old", [
    (mlp_linear.quick_config(), {"base_lr_schedule": "base_lr"}),
    (pai.quick_config(), {"lr_schedule": "lr", "irp_lr_schedule": "irp_lr"}),
])
def test_the_studies_read_their_old_settings_keys(tmp_path, config, old):
    """A study directory written before the hyperparameters had one name each opens with today's config."""
    record = {old.get(k, k): v for k, v in config.to_dict().items()}
    write_json(tmp_path / "config.json", record)
    with open_run(tmp_path, config.to_dict(), kind="study", reusable=config.REUSABLE, renamed=config.RENAMED):
        pass
    with pytest.raises(UserError, match="different"):
        with open_run(tmp_path, config.to_dict(), kind="study", reusable=config.REUSABLE):
            pass


def test_a_pruning_run_reads_its_old_settings_keys(tmp_path):
    from isotpp.studies.pruning_run import RENAMED, REUSABLE, PruneConfig

    settings = PruneConfig(out=str(tmp_path)).to_dict()
    write_json(tmp_path / "config.json", {RENAMED_BACK.get(k, k): v for k, v in settings.items()})
    assert {"wd", "stabilize_reg_interval"} <= set(json.loads((tmp_path / "config.json").read_text()))
    with open_run(tmp_path, settings, kind="pruning run", reusable=REUSABLE, renamed=RENAMED):
        pass


RENAMED_BACK = {"weight_decay": "wd", "stabilize_iters": "stabilize_reg_interval"}


def test_the_architecture_pages_example_runs(capsys):
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "architecture.md").read_text()
    outputs = []
    for code in re.findall(r"```python\n(.*?)```", text, re.DOTALL):
        exec(compile(code, "docs/architecture.md", "exec"), {})
        outputs.append(capsys.readouterr().out.strip())
    assert outputs == ["{'L1': [2, 12], 'L1+OrthP': [8, 18]}", "84.2 None"]  # a study, the metrics writer
