"""AutoSparse's scorer: it learns, it saves and loads with its standardisation and feature spec,
and it refuses other features, its own training record and records of other architectures."""

import json

import jax
import numpy as np
import pytest

from isotpp.errors import UserError
from isotpp.pai.autosparse import (
    G0_DEFINITION,
    Scorer,
    feature_spec,
    fit_scorer,
    load_scorer,
    record_examples,
    train_scorer,
    validate_scorer,
)
from isotpp.pai.irp import IRPRecord


def _record(seed: int, arch: str = "mlp", *, batch_size: int = 32) -> IRPRecord:
    """A synthetic IRP record in which survival grows with |w0| (plus a little of |g0|)."""
    rng = np.random.default_rng(seed)
    shapes = {"a.kernel": (40, 30), "b.kernel": (30, 10)}
    w0 = {n: rng.normal(0, 0.1, s).astype(np.float32) for n, s in shapes.items()}
    g0 = {n: rng.normal(0, 1.0, s).astype(np.float32) for n, s in shapes.items()}
    priority = {n: np.abs(w0[n]) * 10 + 0.1 * np.abs(g0[n]) for n in shapes}
    flat = np.concatenate([p.ravel() for p in priority.values()])
    rounds = 4
    thresholds = np.quantile(flat, [0.25, 0.5, 0.75, 0.95])
    masks = {n: np.stack([priority[n] > t for t in thresholds]) for n in shapes}
    return IRPRecord(arch=arch, seed=seed, density=0.05, rounds=rounds, rewind="kernels", names=tuple(shapes),
                     w0=w0, masks=masks, g0=g0,
                     g0_spec={"definition": G0_DEFINITION, "batch_size": batch_size})


@pytest.fixture(scope="module")
def scorer():
    return train_scorer(_record(1), hidden=(16, 16), epochs=30, batch_size=128, lr=3e-3)


def test_record_examples_are_w0_g0_and_survival_over_k():
    rec = _record(1)
    x, y = record_examples(rec)
    assert x.shape == (1500, 2) and y.shape == (1500,)
    np.testing.assert_array_equal(x[:1200, 0], rec.w0["a.kernel"].ravel())
    np.testing.assert_array_equal(x[1200:, 1], rec.g0["b.kernel"].ravel())
    assert set(np.round(y * 4).astype(int)) == {0, 1, 2, 3, 4}


def test_fit_learns_a_simple_rule_and_standardises():
    rng = np.random.default_rng(0)
    x = np.stack([rng.normal(5.0, 0.01, 4000), rng.normal(0.0, 100.0, 4000)], 1)  # wildly different scales
    y = ((x[:, 0] - 5.0) / 0.01 > 0).astype(np.float32)
    s = fit_scorer(x, y, spec=feature_spec(8), hidden=(16,), epochs=20, batch_size=256, lr=3e-3)
    np.testing.assert_allclose(s.mean, x.mean(0), rtol=1e-4)
    np.testing.assert_allclose(s.std, x.std(0), rtol=1e-4)
    pred = np.asarray(s.predict(x))
    assert np.mean((pred - y) ** 2) < 0.05
    assert s.meta["train_mse_per_epoch"][-1] < s.meta["train_mse_per_epoch"][0]


def test_scorer_validates_on_another_seed_and_beats_chance(scorer):
    v = validate_scorer(scorer, _record(2))
    assert v["record_seed"] == 2 and v["density"] == pytest.approx(0.05, abs=0.01)
    assert v["mse"] < v["mse_constant"]
    assert v["spearman"] > 0.8
    assert v["ticket_overlap"] > 5 * v["ticket_overlap_random"]


def test_scorer_refuses_its_own_training_record_and_other_architectures(scorer):
    with pytest.raises(UserError, match="its own|own training record|another seed"):
        validate_scorer(scorer, _record(1))
    with pytest.raises(UserError, match="of lenet5, the scorer was trained on mlp"):
        validate_scorer(scorer, _record(2, arch="lenet5"))
    with pytest.raises(UserError, match="batch size"):
        validate_scorer(scorer, _record(2, batch_size=64))


def test_save_load_round_trip(tmp_path, scorer):
    path = scorer.save(tmp_path / "scorer.npz")
    back = load_scorer(path)
    assert isinstance(back, Scorer) and back.spec == scorer.spec and back.batch_size == 32
    np.testing.assert_array_equal(back.mean, scorer.mean)
    np.testing.assert_array_equal(back.std, scorer.std)
    rec = _record(3)
    a, b = scorer(rec.w0, rec.g0), back(rec.w0, rec.g0)
    for n in rec.names:
        assert a[n].shape == rec.w0[n].shape
        np.testing.assert_array_equal(np.asarray(a[n]), np.asarray(b[n]))
    assert back.meta["record_seed"] == 1 and back.meta["record_arch"] == "mlp"


def _rewrite_header(src, dst, **changes):
    with np.load(src) as data:
        arrays = {k: np.asarray(data[k]) for k in data.files}
    header = json.loads(bytes(arrays["__isotpp__"]).decode())
    for k, v in changes.items():
        header["spec"][k] = v
    arrays["__isotpp__"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    np.savez(dst, **arrays)


def test_a_scorer_for_other_features_is_refused(tmp_path, scorer):
    path = scorer.save(tmp_path / "scorer.npz")
    _rewrite_header(path, tmp_path / "w0only.npz", features=["w0"])
    with pytest.raises(UserError, match=r"trained on features \['w0'\]"):
        load_scorer(tmp_path / "w0only.npz")
    _rewrite_header(path, tmp_path / "oldg0.npz", g0="mean gradient of one batch")
    with pytest.raises(UserError, match="train a new scorer"):
        load_scorer(tmp_path / "oldg0.npz")
    with pytest.raises(UserError, match="train a new scorer"):
        load_scorer(path, features=("w0", "g0", "fan_in"))
    # missing, garbage and every other corrupt file: tests/test_files.py, over every kind of artefact


def test_a_record_without_g0_or_with_another_g0_is_refused():
    rec = _record(1)
    no_g0 = IRPRecord(**{**rec.__dict__, "g0": {}})
    with pytest.raises(UserError, match="no g0|another definition"):
        train_scorer(no_g0)
    other = IRPRecord(**{**rec.__dict__, "g0_spec": {"definition": "something else", "batch_size": 32}})
    with pytest.raises(UserError, match="another definition"):
        train_scorer(other)


def test_scores_apply_to_another_architecture():
    """The same scorer ranks the weights of a differently shaped network (the transfer case)."""
    from isotpp.pai.masks import keep_count, masks_from_scores
    from isotpp.pai.net import PrunableNet
    from isotpp.pai.small_convnet import small_convnet

    s = fit_scorer(np.random.default_rng(0).normal(size=(256, 2)), np.zeros(256), spec=feature_spec(16),
                   hidden=(4,), epochs=1, batch_size=64)
    net = PrunableNet.from_model(small_convnet(seed=5))
    g0 = {n: jax.numpy.ones(sh) for n, sh in net.shapes().items()}
    scores = s(net.kernels(), g0)
    m = masks_from_scores(scores, 0.02)
    assert sum(int(v.sum()) for v in m.values()) == keep_count(0.02, net.n_weights)
