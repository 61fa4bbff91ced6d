"""Tiny artefacts of every kind with known values, and the files isotpp wrote for them before the artefact
format (format 1, isotpp at commit 6de8cf2), kept in tests/data/format1/ so that files written by that code
are checked to load (tests/test_files.py).

Regenerate (only ever with the code of that commit: the point is the old bytes)::

    git archive 6de8cf2 isotpp | tar -x -C /tmp/old && PYTHONPATH=/tmp/old python tests/format1_fixtures.py
"""

from pathlib import Path

import numpy as np
from flax import nnx

from isotpp.models import create_model
from isotpp.pai.autosparse import Scorer, feature_spec
from isotpp.pai.irp import IRPRecord
from isotpp.pruning.model_file import save_model

DIR = Path(__file__).resolve().parent / "data" / "format1"


def _values(shape, start: float) -> np.ndarray:
    return (start + np.arange(int(np.prod(shape)), dtype=np.float32) / 8).reshape(shape)


def model() -> nnx.Module:
    """An MLP 4 -> 3 -> 2 whose every variable holds known values."""
    m = create_model("mlp", depth=2, width=3, input_dim=4, num_classes=2, act="relu")
    for i, (path, var) in enumerate(nnx.to_flat_state(nnx.state(m))):
        var.set_value(_values(var.shape, i))
    return m


def scorer() -> Scorer:
    params = [(_values((2, 4), 0), _values((4,), 1)), (_values((4, 1), 2), _values((1,), 3))]
    return Scorer(params, np.array([0.5, -0.5], np.float32), np.array([2.0, 3.0], np.float32), feature_spec(32),
                  {"record_arch": "mlp", "record_seed": 1})


def record() -> IRPRecord:
    names = ("a.kernel", "b.kernel")
    w0 = {"a.kernel": _values((2, 3), 0), "b.kernel": _values((3, 2), 1)}
    masks = {n: np.stack([np.ones(w.shape, bool), _values(w.shape, 0) % 0.25 == 0]) for n, w in w0.items()}
    return IRPRecord(arch="mlp", seed=1, density=0.5, rounds=2, rewind="kernels", names=names, w0=w0, masks=masks,
                     g0={n: -w for n, w in w0.items()}, g0_spec={"batch_size": 32}, meta={"note": "irp"})


if __name__ == "__main__":
    DIR.mkdir(parents=True, exist_ok=True)
    save_model(DIR / "model.npz", model(), {"note": "model"})
    scorer().save(DIR / "scorer.npz")
    record().save(DIR / "irp.npz")
