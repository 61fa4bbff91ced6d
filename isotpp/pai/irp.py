"""Iterative rewind pruning (lottery tickets) and its run record.

K rounds. Round j trains the current sparse network, then keeps the
``keep_j`` largest |w| among the weights still alive, globally over every
prunable kernel, and rewinds: the kept kernel weights go back to their values
at initialisation (``rewind="kernels"``, the default), or every parameter and
BatchNorm statistic does (``rewind="all"``). The optimiser restarts each round.

**Counts.** With n weights and k = ``keep_count(density, n)`` kept at the end,
round j keeps ``keep_j = n − ⌊j (n − k) / K⌋``: the same number of weights
(to within one, when K does not divide n − k) is removed every round and round
K ends at exactly k.

An :class:`IRPRecord` holds what AutoSparse learns from: the architecture, the
initial kernels w0, the summed initial gradient g0 (and how it was computed),
and the mask after every round (K, *shape), from which the survival count of a
weight (in how many of the K masks it is) and its label count / K follow.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from isotpp.errors import UserError
from isotpp.pai.masked_optim import masked, masked_train_state
from isotpp.pai.masks import apply_masks, check_density, keep_count, top_count_masks
from isotpp.pai.net import PrunableNet
from isotpp.pai.runs import train_runs
from isotpp.storage.artifact import IRP_RECORD, Artifact, read_artifact, write_artifact
from isotpp.training.engine import (
    RunGroup,
    check_finite,
    reference_sgd,
    stack_runs,
    unstack_run,
)

__all__ = ["IRPRecord", "irp_keep_counts", "load_irp_record", "make_record", "run_irp"]

Rewind = Literal["kernels", "all"]
REWINDS = ("kernels", "all")


def irp_keep_counts(n: int, density, rounds: int) -> tuple[int, ...]:
    """Weights kept after each of the ``rounds`` rounds (the last is ``keep_count(density, n)``)."""
    if rounds < 1:
        raise UserError(f"IRP needs at least one round, got {rounds}: pass rounds >= 1")
    k = keep_count(density, n)
    removed = n - k
    return tuple(n - (j * removed) // rounds for j in range(1, rounds + 1))


# --------------------------------------------------------------------------
# The record.
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class IRPRecord:
    """One IRP run: per prunable weight its w0, g0 and the masks of every round."""

    arch: str
    seed: int
    density: float
    rounds: int
    rewind: str
    names: tuple[str, ...]
    w0: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]  # name -> (rounds, *shape) bool, the mask after each round
    g0: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    g0_spec: dict[str, Any] = dataclasses.field(default_factory=dict)
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def survival(self) -> dict[str, np.ndarray]:
        """In how many of the K round masks each weight is (0..K)."""
        return {n: self.masks[n].sum(axis=0).astype(np.int32) for n in self.names}

    def labels(self) -> dict[str, np.ndarray]:
        """Survival count / K, AutoSparse's regression target."""
        return {n: c.astype(np.float32) / self.rounds for n, c in self.survival().items()}

    def final_masks(self) -> dict[str, np.ndarray]:
        return {n: self.masks[n][-1] for n in self.names}

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: tuple(self.w0[n].shape) for n in self.names}

    def check_net(self, net: PrunableNet, *, what: str = "this model") -> None:
        """UserError unless ``net`` has this record's architecture and kernel shapes."""
        if net.arch != self.arch or net.shapes() != self.shapes():
            raise UserError(f"the IRP record is of {self.arch}, {what} is {net.arch}"
                            f"{' with other kernel shapes' if net.arch == self.arch else ''}: "
                            f"use a record made on {net.arch}")

    # ---------------------------------------------------------------- files

    def save(self, path: str | Path) -> Path:
        """Write the record as an artefact of kind ``isotpp.irp_record`` (:mod:`isotpp.storage.artifact`)."""
        fields = {"arch": self.arch, "seed": self.seed, "density": self.density, "rounds": self.rounds,
                  "rewind": self.rewind, "names": list(self.names), "g0_spec": self.g0_spec}
        arrays = {f"w0/{n}": np.asarray(self.w0[n], np.float32) for n in self.names}
        arrays |= {f"masks/{n}": np.asarray(self.masks[n], bool) for n in self.names}
        arrays |= {f"g0/{n}": np.asarray(self.g0[n], np.float32) for n in self.g0}
        return write_artifact(path, IRP_RECORD, arrays, fields, self.meta)


def load_irp_record(path: str | Path, *, arch: str | None = None) -> IRPRecord:
    """Read an IRP record; with ``arch``, refuse a record made on another architecture."""
    return read_artifact(path, IRP_RECORD, lambda file: _record_from(file, arch))


def _record_from(file: Artifact, arch: str | None) -> IRPRecord:
    header = file.header
    if arch is not None and header["arch"] != arch:
        raise UserError(f"IRP record {file.path} was made on {header['arch']}, not {arch}: "
                        f"pass a record made on {arch}")
    names, rounds = tuple(header["names"]), int(header["rounds"])
    if not all(isinstance(n, str) for n in names) or rounds < 1 or header["rewind"] not in REWINDS:
        raise file.corrupt(f"has a corrupt header (names, {rounds} rounds, rewind {header['rewind']!r})")
    w0 = {n: file.array(f"w0/{n}", dtype="f") for n in names}
    return IRPRecord(
        arch=header["arch"], seed=int(header["seed"]), density=float(header["density"]), rounds=rounds,
        rewind=header["rewind"], names=names, w0=w0,
        masks={n: file.array(f"masks/{n}", (rounds, *w0[n].shape), dtype="b") for n in names},
        g0={n: file.array(f"g0/{n}", w0[n].shape, dtype="f") for n in names if f"g0/{n}" in file.names},
        g0_spec=dict(header.get("g0_spec") or {}), meta=dict(file.meta))


# --------------------------------------------------------------------------
# Running it (several runs of one architecture at once).
# --------------------------------------------------------------------------


def _rewound(net: PrunableNet, trained_params, trained_rest, masks, rewind: str):
    """Initial kernels under the new masks; the other parameters per ``rewind``."""
    if rewind == "all":
        return apply_masks(net.params, masks), net.rest
    params = net.with_kernels({n: jnp.where(masks[n], k, 0.0) for n, k in net.kernels().items()}, trained_params)
    return params, trained_rest


def run_irp(nets: Sequence[PrunableNet], densities: Sequence[float], data, *, rounds: int, epochs: int,
            lr, weight_decay: float, batch_size: int, key: jax.Array, rewind: Rewind = "kernels",
            on_epoch: Callable[[int, int, dict], None] | None = None) -> list[dict[str, np.ndarray]]:
    """IRP for every (net, density) pair as one vmapped group; per run the masks of every round.

    ``nets`` share one architecture (their initial weights may differ);
    ``lr`` is an :class:`isotpp.training.engine.LRSchedule` restarted each round.
    ``on_epoch(round, epoch, metrics)`` reports progress. Returns, per run,
    ``{name: (rounds, *shape) bool}``.
    """

    if rewind not in REWINDS:
        raise UserError(f"unknown rewind {rewind!r}: choose 'kernels' (the kept weights) or 'all' (every parameter)")
    if len(nets) != len(densities) or not nets:
        raise ValueError("one density per net, at least one")
    densities = [check_density(d) for d in densities]
    n = nets[0].n_weights
    counts = [irp_keep_counts(n, d, rounds) for d in densities]
    tx = masked(reference_sgd(lr.initial, weight_decay=weight_decay), nets[0].names)
    masks = [{name: jnp.ones(s, bool) for name, s in net.shapes().items()} for net in nets]
    group = RunGroup(nets[0].fns, tx, stack_runs([masked_train_state(net.params, net.rest, tx, m)
                                                  for net, m in zip(nets, masks)]), [lr] * len(nets))
    history: list[list[dict]] = [[] for _ in nets]
    for j in range(rounds):
        cb = None if on_epoch is None else (lambda e, m, j=j: on_epoch(j, e, m))
        res = train_runs(group, data, epochs=epochs, batch_size=batch_size, key=jax.random.fold_in(key, j),
                         evaluate=False, on_epoch=cb)
        check_finite(res["loss"], where=f"in IRP round {j + 1}")
        states = []
        for r, net in enumerate(nets):
            params = unstack_run(group.state.params, r)
            rest = unstack_run(group.state.rest, r)
            trained = net.kernels(params)
            masks[r] = top_count_masks({k: jnp.abs(v) for k, v in trained.items()}, counts[r][j], alive=masks[r])
            history[r].append({k: np.asarray(v) for k, v in masks[r].items()})
            p, rs = _rewound(net, params, rest, masks[r], rewind)
            states.append(masked_train_state(p, rs, tx, masks[r]))
        group.state = stack_runs(states)
    return [{name: np.stack([h[name] for h in hist]) for name in nets[0].names} for hist in history]


def make_record(net: PrunableNet, masks: Mapping[str, np.ndarray], *, seed: int, density: float, rewind: str,
                g0: Mapping[str, jax.Array] | None = None, g0_spec: Mapping[str, Any] | None = None,
                meta: Mapping[str, Any] | None = None) -> IRPRecord:
    """An :class:`IRPRecord` from a net at initialisation and the round masks :func:`run_irp` returned."""
    rounds = int(next(iter(masks.values())).shape[0])
    return IRPRecord(arch=net.arch, seed=int(seed), density=float(density), rounds=rounds, rewind=rewind,
                     names=net.names, w0={n: np.asarray(k) for n, k in net.kernels().items()},
                     masks={n: np.asarray(masks[n], bool) for n in net.names},
                     g0={n: np.asarray(v) for n, v in (g0 or {}).items()}, g0_spec=dict(g0_spec or {}),
                     meta=dict(meta or {}))
