"""Run directories' settings records (isotpp.studies.rundir, docs/reliability.md): a setting an older isotpp did not
record counts as its default, and a run continues only on the data it was started on (isotpp.data.identity)."""

import shutil

import numpy as np
import pytest

from isotpp.data import load_dataset
from isotpp.data.bundled import SUBSET_DIR
from isotpp.data.identity import data_identity, describe_identity
from isotpp.errors import UserError
from isotpp.storage.atomic import read_json, write_json
from isotpp.studies.rundir import open_run, settings_difference

DEFAULTS = {"method": "TPP", "pre_scheme": "penalty", "kernorth_rule": "c_in"}


def test_a_setting_the_record_lacks_counts_as_its_default(tmp_path):
    old = {"method": "L1"}  # written before pre_scheme and kernorth_rule existed
    assert settings_difference(old, {"method": "L1", "pre_scheme": "penalty"}, defaults=DEFAULTS) == []
    assert settings_difference(old, {"method": "L1", "pre_scheme": "opp"}, defaults=DEFAULTS) == [
        "pre_scheme (absent there, 'opp' here)"]
    assert settings_difference(old, {"method": "L1", "pre_scheme": "penalty"}) == [
        "pre_scheme (absent there, 'penalty' here)"]  # no defaults given: refused as before
    assert settings_difference({"method": "L1", "pre_scheme": "opp"}, {"method": "L1"}, defaults=DEFAULTS) == [
        "pre_scheme ('opp' there, absent here)"]  # a setting that went away is still a difference

    d = tmp_path / "run"
    write_json(d / "config.json", old)
    new = {"method": "L1", "pre_scheme": "penalty", "kernorth_rule": "c_in"}
    with open_run(d, new, kind="pruning run", defaults=DEFAULTS) as run:
        run.record()
    assert read_json(d / "config.json") == new  # the record is completed
    write_json(d / "config.json", old)
    with pytest.raises(UserError) as refused, open_run(d, {**new, "pre_scheme": "opp"}, kind="pruning run",
                                                       defaults=DEFAULTS):
        pass
    assert str(refused.value) == (f"{d} holds a pruning run with a different pre_scheme (absent there, 'opp' here): "
                                  "use another directory, or delete it to start afresh")
    assert read_json(d / "config.json") == old


def test_data_identity_tells_the_shipped_subset_from_the_full_set(fashion_mnist_dir, tmp_path):
    """The subset is the first 10,000 / 2,000 images of the full set: the same first training images are the
    same data, the test sets differ; the same files elsewhere are the same data."""
    copy = shutil.copytree(SUBSET_DIR, tmp_path / "moved")

    def identity(directory, limit):
        train = load_dataset("fashion_mnist", "train", data_dir=directory, limit=limit, resize=None)
        test = load_dataset("fashion_mnist", "test", data_dir=directory, resize=None)
        return data_identity("fashion_mnist", train=train), data_identity("fashion_mnist", train=train, test=test)

    (sub_train, sub), (full_train, full), (copy_train, moved) = (identity(d, 500) for d in
                                                                  (SUBSET_DIR, fashion_mnist_dir, copy))
    assert sub_train == full_train == copy_train and sub == moved
    assert sub != full and sub["examples"] == {"train": 500, "test": 2000} and full["examples"]["test"] == 10_000
    assert describe_identity(sub) == f"fashion_mnist: 500 train / 2,000 test examples, fingerprint {sub['fingerprint'][:8]}"
    assert identity(SUBSET_DIR, 501)[0] != sub_train  # one more example
    train = load_dataset("fashion_mnist", "train", data_dir=SUBSET_DIR, limit=500, resize=None)
    labels = train.labels.copy()
    labels[250] = (labels[250] + 1) % 10  # one label changed
    assert data_identity("fashion_mnist", train=(train.images, labels)) != sub_train
    images = train.images.copy()
    images[-1, 3, 3] += 1  # one pixel of the last example changed
    assert data_identity("fashion_mnist", train=(images, train.labels)) != sub_train
    assert data_identity("fashion_mnist", train=(np.asarray(train.images), train.labels)) == sub_train


def test_a_study_refuses_other_data_and_accepts_the_same_data_elsewhere(fashion_mnist_dir, tmp_path, monkeypatch):
    """The demo's case: a study started on the shipped subset is not continued on the full set (the data
    directory may differ between calls, the data may not); a copy of the subset elsewhere is accepted."""
    from isotpp.studies import mlp_linear

    ran = []
    monkeypatch.setattr(mlp_linear, "_run", lambda study, data: ran.append(study.config.data_dir))
    out = tmp_path / "demo"

    def study(data_dir):
        config = mlp_linear.quick_config(seeds=(0,), data_dir=str(data_dir), train_limit=300)
        return mlp_linear.run_study(config, out, progress=False, log=lambda s: None)

    study(SUBSET_DIR)
    recorded = read_json(out / "config.json")
    assert recorded["data"]["examples"] == {"train": 300, "test": 2000} and recorded["data_dir"] == str(SUBSET_DIR)
    with pytest.raises(UserError) as refused:
        study(fashion_mnist_dir)
    line = str(refused.value)
    assert "\n" not in line and line.startswith(
        f"{out} holds a study started on other data (fashion_mnist: 300 train / 2,000 test examples, fingerprint ")
    assert "fashion_mnist: 300 train / 10,000 test examples" in line and line.endswith(
        "here): give it the data it was started on (data_dir), use another directory, or delete it to start afresh")
    assert read_json(out / "config.json") == recorded and ran == [str(SUBSET_DIR)]
    copy = shutil.copytree(SUBSET_DIR, tmp_path / "moved")
    study(copy)
    assert ran == [str(SUBSET_DIR), str(copy)] and read_json(out / "config.json")["data"] == recorded["data"]
    del recorded["data"]  # a study an older isotpp started: the data are recorded by the next call
    write_json(out / "config.json", recorded)
    study(fashion_mnist_dir)
    assert read_json(out / "config.json")["data"]["examples"]["test"] == 10_000


def test_a_record_without_data_or_a_data_key_in_the_settings_is_no_difference(tmp_path):
    d = tmp_path / "run"
    identity = {"dataset": "synthetic", "examples": {"train": 2}, "fingerprint": "0" * 16}
    with open_run(d, {"a": 1}, kind="run") as run:
        run.check_data(identity)
        run.record()
    assert read_json(d / "config.json") == {"a": 1, "data": identity}
    with open_run(d, {"a": 1}, kind="run") as run:  # compared by check_data, not with the settings
        with pytest.raises(UserError, match="holds a run started on other data"):
            run.check_data({**identity, "fingerprint": "1" * 16})
