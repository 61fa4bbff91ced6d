"""AutoSparse: a small network that learns from one IRP run which weights survive.

From an :class:`isotpp.pai.irp.IRPRecord`, every prunable weight is one
example: features (w0, g0) (its initial value and its initial gradient summed
over one pass of the training set) and label = survival count / K. A scoring
MLP f: (w0, g0) ↦ score (2 → hidden → … → 1, ReLU) is fitted with mean squared
error and Adam on the *standardised* features; the standardisation (the
training record's feature means and stds) is part of the scorer and saved with
it, so a new network's features are standardised the same way. To prune a new
network (another seed, another architecture): compute its (w0, g0) with the
scorer's batch size, score every weight, keep the top scores globally.

Differences from the reference code (REFERENCE §6), on purpose:

* the scorer is validated on a *second* IRP run with another seed
  (:func:`validate_scorer` refuses the record it was trained on), never on a
  slice of its own training data;
* the networks it prunes use other seeds than both IRP runs (the study
  refuses overlapping seeds);
* the pruned networks' accuracy is read at the last epoch or at the epoch of
  best *validation* accuracy, never as the maximum over test epochs.

A scorer file (``.npz``) holds the MLP's arrays and a JSON header with its
*feature spec* (feature names, the definition of g0 and its batch size);
:func:`load_scorer` refuses a file whose features are not the ones this code
computes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy.stats import spearmanr

from isotpp.errors import UserError
from isotpp.pai.masks import top_count_masks
from isotpp.storage.artifact import SCORER, Artifact, read_artifact, write_artifact

__all__ = [
    "FEATURES",
    "G0_DEFINITION",
    "Scorer",
    "feature_spec",
    "fit_scorer",
    "load_scorer",
    "record_examples",
    "train_scorer",
    "validate_scorer",
]

FEATURES = ("w0", "g0")
# what g0 means; a scorer trained on any other definition is refused
G0_DEFINITION = "sum over one pass of the training set of batch-mean cross-entropy gradients at init (v1)"


def feature_spec(batch_size: int) -> dict[str, Any]:
    """The features a scorer reads: names, the definition of g0, g0's batch size."""
    return {"features": list(FEATURES), "g0": G0_DEFINITION, "g0_batch_size": int(batch_size)}


# --------------------------------------------------------------------------
# The scoring MLP: pure functions of a list of (W, b).
# --------------------------------------------------------------------------


def init_mlp(key: jax.Array, sizes: Sequence[int]) -> list[tuple[jax.Array, jax.Array]]:
    """He-normal weights, zero biases, for layer sizes (in, hidden…, out)."""
    keys = jax.random.split(key, len(sizes) - 1)
    return [(jax.random.normal(k, (a, b)) * jnp.sqrt(2.0 / a), jnp.zeros(b)) for k, a, b in
            zip(keys, sizes[:-1], sizes[1:])]


@jax.jit
def mlp_apply(params, x: jax.Array) -> jax.Array:
    """(n, features) -> (n,): ReLU between layers, linear output."""
    for w, b in params[:-1]:
        x = jax.nn.relu(x @ w + b)
    w, b = params[-1]
    return (x @ w + b)[:, 0]


@dataclasses.dataclass(frozen=True, eq=False)
class Scorer:
    """A trained scoring MLP with its input standardisation and feature spec."""

    params: list  # [(W, b), ...] as numpy arrays
    mean: np.ndarray  # (features,)
    std: np.ndarray  # (features,)
    spec: dict[str, Any]
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        """The batch size g0 must be computed with (see :meth:`PrunableNet.gradient_sum`)."""
        return int(self.spec["g0_batch_size"])

    def predict(self, x: np.ndarray | jax.Array) -> jax.Array:
        """Scores of raw (unstandardised) feature rows (n, 2)."""
        z = (jnp.asarray(x, jnp.float32) - self.mean) / self.std
        return mlp_apply([(jnp.asarray(w), jnp.asarray(b)) for w, b in self.params], z)

    def __call__(self, w0: Mapping[str, jax.Array], g0: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        """Scores per kernel (higher = keep) from its initial weights and summed gradient."""
        missing = [n for n in w0 if n not in g0]
        if missing:
            raise UserError(f"no g0 for {missing[0]}: compute g0 for every kernel")
        x = _stack(w0, g0)
        s = self.predict(x)
        out, start = {}, 0
        for n, w in w0.items():
            size = int(np.prod(np.shape(w)))
            out[n] = s[start:start + size].reshape(np.shape(w))
            start += size
        return out

    # ---------------------------------------------------------------- files

    def save(self, path: str | Path) -> Path:
        """Write the scorer as an artefact of kind ``isotpp.autosparse_scorer`` (:mod:`isotpp.storage.artifact`)."""
        fields = {"spec": self.spec, "layers": len(self.params), "mean": np.asarray(self.mean).tolist(),
                  "std": np.asarray(self.std).tolist()}
        arrays = {}
        for i, (w, b) in enumerate(self.params):
            arrays[f"W{i}"] = np.asarray(w, np.float32)
            arrays[f"b{i}"] = np.asarray(b, np.float32)
        return write_artifact(path, SCORER, arrays, fields, self.meta)


def _stack(w0: Mapping[str, Any], g0: Mapping[str, Any]) -> np.ndarray:
    return np.stack([np.concatenate([np.ravel(np.asarray(w0[n])) for n in w0]),
                     np.concatenate([np.ravel(np.asarray(g0[n])) for n in w0])], axis=1).astype(np.float32)


def load_scorer(path: str | Path, *, features: Sequence[str] = FEATURES) -> Scorer:
    """Read a scorer file; refuse one whose features are not ``features`` with this code's g0."""
    return read_artifact(path, SCORER, lambda file: _scorer_from(file, features))


def _scorer_from(file: Artifact, features: Sequence[str]) -> Scorer:
    header = file.header
    spec = dict(header.get("spec") or {})
    if list(spec.get("features") or []) != list(features) or spec.get("g0") != G0_DEFINITION:
        raise UserError(f"scorer file {file.path} was trained on features {spec.get('features')} (g0: "
                        f"{spec.get('g0')!r}), this code scores with {list(features)} (g0: {G0_DEFINITION!r}): "
                        "train a new scorer")
    if type(spec.get("g0_batch_size")) is not int or spec["g0_batch_size"] < 1:
        raise file.corrupt("does not say which batch size its g0 used")
    mean, std = np.asarray(header["mean"], np.float32), np.asarray(header["std"], np.float32)
    if mean.shape != (len(features),) or std.shape != mean.shape:
        raise UserError(f"scorer file {file.path} does not take {len(features)} features: train a new scorer")
    if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
        raise file.corrupt("has a standardisation that is not finite and positive")
    layers = header["layers"]
    if type(layers) is not int or layers < 1:
        raise file.corrupt(f"has {layers!r} layers")
    params, fan_in = [], len(features)
    for i in range(layers):
        fan_out = file.shape(f"W{i}")[-1] if i < layers - 1 else 1
        params.append((file.array(f"W{i}", (fan_in, fan_out), dtype="f"), file.array(f"b{i}", (fan_out,), dtype="f")))
        fan_in = fan_out
    return Scorer(params, mean, std, spec, dict(file.meta))


# --------------------------------------------------------------------------
# Fitting and validating.
# --------------------------------------------------------------------------


def record_examples(record) -> tuple[np.ndarray, np.ndarray]:
    """(features (n, 2) = [w0, g0], labels (n,) = survival / K) of every weight of an IRP record."""
    if set(record.g0) != set(record.names):
        raise UserError(f"the IRP record of {record.arch} (seed {record.seed}) has no g0: record g0 with the run")
    return _stack(record.w0, record.g0), np.concatenate([np.ravel(v) for v in record.labels().values()])


def fit_scorer(x: np.ndarray, y: np.ndarray, *, spec: Mapping[str, Any], hidden: Sequence[int] = (64, 64),
               epochs: int = 5, batch_size: int = 1024, lr: float = 1e-3, seed: int = 0,
               meta: Mapping[str, Any] | None = None) -> Scorer:
    """Fit f(standardised x) ≈ y by MSE with Adam; minibatches reshuffled every epoch."""
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.float32)
    if x.ndim != 2 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"features {x.shape} and labels {y.shape} do not match")
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    std = np.where(std > 0, std, 1.0).astype(np.float32)
    z = jnp.asarray((x - mean) / std)
    key = jax.random.key(seed)
    params = init_mlp(jax.random.fold_in(key, 0), [x.shape[1], *hidden, 1])
    tx = optax.adam(lr)
    n = x.shape[0]
    bs = min(batch_size, n)
    steps = n // bs
    losses = _fit(params, tx.init(params), z, jnp.asarray(y), key, epochs, steps, bs, tx)
    params, curve = losses
    info = {"train_mse_per_epoch": np.asarray(curve).tolist(), "epochs": epochs, "batch_size": bs, "lr": lr,
            "hidden": list(hidden), "examples": n, "label_mean": float(y.mean())}
    return Scorer([(np.asarray(w), np.asarray(b)) for w, b in params], mean.astype(np.float32), std, dict(spec),
                  dict(meta or {}) | info)


def _fit(params, opt_state, z, y, key, epochs, steps, bs, tx):
    @jax.jit
    def epoch(carry, k):
        params, opt_state = carry
        idx = jax.random.permutation(k, z.shape[0])[: steps * bs].reshape(steps, bs)

        def step(c, i):
            p, s = c
            loss, g = jax.value_and_grad(lambda p: jnp.mean((mlp_apply(p, z[i]) - y[i]) ** 2))(p)
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), loss

        (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), idx)
        return (params, opt_state), losses.mean()

    curve = []
    carry = (params, opt_state)
    for e in range(epochs):
        carry, loss = epoch(carry, jax.random.fold_in(key, e + 1))
        curve.append(float(loss))
    return carry[0], curve


def validate_scorer(scorer: Scorer, record) -> dict[str, float]:
    """How well the scorer predicts a held-out IRP run (another seed, same architecture).

    Refuses the record the scorer was trained on. Returns the MSE against the
    labels (and that of always predicting the training mean), the Spearman
    rank correlation, and the *ticket overlap*: the fraction of the record's
    final IRP mask that the scorer's top-k recovers (k = the mask's size),
    next to the same overlap for |w0|, |w0·g0| and a random choice (= density).
    """


    src_arch, src_seed = scorer.meta.get("record_arch"), scorer.meta.get("record_seed")
    if record.arch != src_arch:
        raise UserError(f"the validation IRP record is of {record.arch}, the scorer was trained on {src_arch} "
                        f"records: validate on a record of {src_arch}")
    if record.seed == src_seed:
        raise UserError(f"the validation IRP record has seed {record.seed}, the seed of the scorer's own training "
                        "record: validate on a record made with another seed")
    if int(record.g0_spec.get("batch_size", -1)) != scorer.batch_size:
        raise UserError(f"the validation record's g0 used batch size {record.g0_spec.get('batch_size')}, the "
                        f"scorer's {scorer.batch_size}: record it with the scorer's batch size")
    x, y = record_examples(record)
    pred = np.asarray(scorer.predict(x))
    final = record.final_masks()
    k = int(sum(m.sum() for m in final.values()))

    def overlap(scores: Mapping[str, Any]) -> float:
        keep = top_count_masks({n: jnp.asarray(s) for n, s in scores.items()}, k)
        return float(sum(np.logical_and(np.asarray(keep[n]), final[n]).sum() for n in final) / k)

    scored = scorer(record.w0, record.g0)
    return {
        "mse": float(np.mean((pred - y) ** 2)),
        "mse_constant": float(np.mean((scorer.meta.get("label_mean", float(y.mean())) - y) ** 2)),
        "spearman": float(spearmanr(pred, y).statistic),
        "ticket_overlap": overlap(scored),
        "ticket_overlap_magnitude": overlap({n: np.abs(w) for n, w in record.w0.items()}),
        "ticket_overlap_w0g0": overlap({n: np.abs(record.w0[n] * record.g0[n]) for n in record.names}),
        "ticket_overlap_random": k / y.size,
        "density": k / y.size,
        "record_seed": record.seed,
    }


def train_scorer(record, *, hidden: Sequence[int] = (64, 64), epochs: int = 5, batch_size: int = 1024,
                 lr: float = 1e-3, seed: int = 0) -> Scorer:
    """Fit a scorer on every weight of one IRP record (which must carry g0 of this code's definition)."""
    if record.g0_spec.get("definition") != G0_DEFINITION or "batch_size" not in record.g0_spec:
        raise UserError(f"the IRP record of {record.arch} (seed {record.seed}) has g0 of another definition "
                        f"({record.g0_spec.get('definition')!r}): record it again with this version")
    x, y = record_examples(record)
    meta = {"record_arch": record.arch, "record_seed": record.seed, "record_density": record.density,
            "record_rounds": record.rounds, "record_rewind": record.rewind}
    return fit_scorer(x, y, spec=feature_spec(int(record.g0_spec["batch_size"])), hidden=hidden, epochs=epochs,
                      batch_size=batch_size, lr=lr, seed=seed, meta=meta)
