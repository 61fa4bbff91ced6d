"""Training many masked runs of one architecture at once, with validation and test curves.

The runs of a :class:`isotpp.training.engine.RunGroup` share batches (paired runs) and
compile into one vmapped program; the optimiser is
``masked(reference_sgd(...))`` so every run keeps its own mask in its
optimiser state. A run whose loss turns NaN/inf is *marked* diverged rather
than stopping the others (its accuracies are then whatever the NaN net
predicts, and the results say so).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import jax
import numpy as np

from isotpp.pai.masked_optim import masked, masked_train_state
from isotpp.pai.net import PrunableNet
from isotpp.training.engine import LRSchedule, RunGroup, reference_sgd, stack_runs

__all__ = ["PaIData", "Split", "masked_group", "selected_accuracy", "train_runs"]


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
    x: jax.Array
    y: jax.Array

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclasses.dataclass(frozen=True, eq=False)
class PaIData:
    """Training, validation (held out from the training set) and test splits."""

    train: Split
    val: Split
    test: Split


def masked_group(nets: Sequence[PrunableNet], masks: Sequence[Mapping[str, jax.Array]], lr: LRSchedule, *,
                 weight_decay: float, params: Sequence | None = None) -> RunGroup:
    """A RunGroup of one run per (net, mask): masked initial parameters, masks in the optimiser state.

    ``params`` overrides the nets' initial parameters (e.g. after approximate isometry).
    """
    if len(nets) != len(masks) or not nets:
        raise ValueError("one mask per net, at least one")
    tx = masked(reference_sgd(lr.initial, weight_decay=weight_decay), nets[0].names)
    states = [masked_train_state(net.params if params is None else params[i], net.rest, tx, m)
              for i, (net, m) in enumerate(zip(nets, masks))]
    return RunGroup(nets[0].fns, tx, stack_runs(states), [lr] * len(nets))


def train_runs(group: RunGroup, data: PaIData, *, epochs: int, batch_size: int, key: jax.Array,
               evaluate: bool = True, on_epoch: Callable[[int, dict], None] | None = None) -> dict[str, np.ndarray]:
    """Train every run of ``group`` for ``epochs`` epochs; per-run, per-epoch curves.

    Returns ``loss`` and ``train_acc`` (R, epochs), with ``evaluate`` also
    ``val_acc`` and ``test_acc`` (R, epochs) measured after each epoch, and
    ``diverged`` (R,) bool. ``on_epoch(epoch, metrics)`` is called after each epoch.
    """
    hist: dict[str, list] = {"loss": [], "train_acc": [], "val_acc": [], "test_acc": []}
    for epoch in range(epochs):
        m = group.train_epoch(data.train.x, data.train.y, key, epoch, batch_size)
        hist["loss"].append(m["loss"])
        hist["train_acc"].append(m["train_acc"])
        if evaluate:
            hist["val_acc"].append(group.evaluate(data.val.x, data.val.y))
            hist["test_acc"].append(group.evaluate(data.test.x, data.test.y))
        if on_epoch is not None:
            on_epoch(epoch, {k: v[-1] for k, v in hist.items() if v})
    out = {k: np.stack(v, axis=1) for k, v in hist.items() if v}
    out["diverged"] = ~np.all(np.isfinite(out["loss"]), axis=1)
    return out


def selected_accuracy(val_acc: np.ndarray, test_acc: np.ndarray) -> np.ndarray:
    """Per run, the test accuracy at the epoch of best validation accuracy (the last such epoch)."""
    val_acc = np.asarray(val_acc)
    r, e = val_acc.shape
    best = e - 1 - np.argmax(val_acc[:, ::-1], axis=1)
    return np.asarray(test_acc)[np.arange(r), best]
