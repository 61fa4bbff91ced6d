"""Model files: the weights of one network plus what rebuilds its architecture.

A model file is a ``.npz`` archive holding every variable of the NNX state
under its dotted path (``layer1.0.conv1.kernel``, ``bn1.mean``) and a JSON
header (``__isotpp__``) with the build config (architecture, classes, input
shape, arch kwargs), the widths record of a pruned network and free-form
metadata. It is written atomically, so an interrupted save never replaces a
good file with a broken one. (Training checkpoints with optimiser and method
state are a separate, orbax-based format.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from isotpp.errors import DataError, UserError
from isotpp.files import Npz, json_header, open_npz
from isotpp.io import atomic_write

_HEADER = "__isotpp__"
FORMAT_VERSION = 1


def _flat_state(model: nnx.Module) -> dict[str, np.ndarray]:
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(model)):
        out[".".join(str(p) for p in path)] = np.asarray(var[...])
    return out


def save_model(path: str | Path, model: nnx.Module, meta: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (weights, BN statistics, architecture) to ``path`` (.npz)."""
    from isotpp.models import widths_of

    config = getattr(model, "build_config", None)
    if config is None:
        raise UserError("this model was not built by isotpp.models.create_model: it cannot be saved as a model file")
    header = {
        "format": FORMAT_VERSION,
        "build": config.to_dict(),
        "widths": widths_of(model),
        "meta": meta or {},
    }
    arrays = _flat_state(model)
    arrays[_HEADER] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    path = Path(path)
    with atomic_write(path) as f:
        np.savez(f, **arrays)
    return path


_FIX = "save it again with isotpp.checkpoint.save_model"


def read_header(path: str | Path) -> dict[str, Any]:
    """The header of model file ``path`` (checked; no weights are read)."""
    with _open(path) as data:
        return _header(path, data)


def _open(path: str | Path) -> Npz:
    path = Path(path)
    if not path.exists():
        raise UserError(f"model file {path} does not exist: check the path")
    return open_npz(path, what="model file", fix=_FIX)


def _header(path, data: Npz) -> dict[str, Any]:
    header = json_header(data, _HEADER, fix=_FIX)
    build, widths, meta = header.get("build"), header.get("widths"), header.get("meta", {})
    if not isinstance(build, dict):
        raise DataError(f"model file {path} has no build description (got {type(build).__name__}): {_FIX}")
    if widths is not None and not (isinstance(widths, dict) and all(
            isinstance(k, str) and type(v) is int and v >= 1 for k, v in widths.items())):
        raise DataError(f"model file {path} has a corrupt widths record: {_FIX}")
    if not isinstance(meta, dict):
        raise DataError(f"model file {path} has corrupt metadata (a {type(meta).__name__}): {_FIX}")
    return header


def load_model(path: str | Path) -> tuple[nnx.Module, dict[str, Any]]:
    """Rebuild the network stored in ``path``; returns (model, header)."""
    from isotpp.models import BuildConfig

    with _open(path) as data:
        header = _header(path, data)
        config = BuildConfig.from_dict(header.get("build", {}))
        model = config.create(widths=header.get("widths") or None, abstract=True)
        state = nnx.state(model)
        flat = []
        for key_path, var in nnx.to_flat_state(state):
            key = ".".join(str(p) for p in key_path)
            if key not in data.files:
                raise UserError(f"model file {path} lacks {key} for {config.name}: it was saved from another architecture")
            if tuple(data.shape(key)) != tuple(var.shape):  # checked before the array is read
                raise UserError(
                    f"model file {path}: {key} has shape {tuple(data.shape(key))}, {config.name} expects "
                    f"{tuple(var.shape)}"
                )
            flat.append((key_path, var.replace(jax.numpy.asarray(data[key], dtype=var.dtype))))
        nnx.update(model, nnx.from_flat_state(flat))
    return model, {**header["build"], "widths": header.get("widths"), "meta": header.get("meta", {})}
