"""What identifies the data a run was trained on, so that a run directory cannot be continued on other data.

A run directory records its settings and refuses different ones
(:mod:`isotpp.studies.rundir`), but the data directory may differ between the calls
of one run (data move). What must not differ is the data themselves: a study
started on the 10,000 / 2,000-image Fashion-MNIST subset shipped with isotpp
(:mod:`isotpp.data.bundled`) and continued on the full set would silently
mix results. :func:`data_identity` is the record that tells them apart: the
dataset's name, the size of each split and a fingerprint of the content (a
SHA-256 over every label and a few whole examples of each split), computed
in well under a millisecond for the sizes isotpp trains on::

    >>> from isotpp.data import load_dataset
    >>> train, test = load_dataset("synthetic", "train"), load_dataset("synthetic", "test")
    >>> identity = data_identity("synthetic", train=train, test=test)
    >>> identity["examples"], len(identity["fingerprint"])
    ({'train': 1024, 'test': 256}, 16)
    >>> describe_identity(identity).startswith("synthetic: 1,024 train / 256 test examples, fingerprint ")
    True

The same data read from another path give the same identity; a different
subset, size or content gives another.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

__all__ = ["data_identity", "describe_identity"]

_ORDER = ("train", "val", "test")  # the order the splits are hashed and shown in
_ROWS = 4  # whole examples hashed per split, spread over it (first, last and between)


def _rows(n: int) -> list[int]:
    return sorted({round(i * (n - 1) / (_ROWS - 1)) for i in range(_ROWS)}) if n else []


def _update_arrays(h, images, labels) -> int:
    labels = np.asarray(labels)
    n = int(labels.shape[0])
    h.update(np.ascontiguousarray(labels, dtype="<i8").tobytes())
    images = np.asarray(images)  # a JAX array on the CPU: no copy (indexing it on the device would compile)
    rows = images[_rows(n)] if n else np.zeros((0,))
    h.update(f"{rows.dtype.str}{tuple(np.shape(images)[1:])}".encode())
    h.update(np.ascontiguousarray(rows).tobytes())
    return n


def _update_files(h, files, labels) -> int:
    """An image folder: the file names (relative to its root) and their labels; the pixels are
    not read (a million JPEGs), a copy elsewhere with the same names and classes is the same data."""
    for name, label in zip(files, labels, strict=True):
        h.update(f"{name}\0{int(label)}\n".encode())
    return len(files)


def data_identity(dataset: str, **splits: Any) -> dict[str, Any]:
    """``{"dataset", "examples": {split: n}, "fingerprint"}`` of the data a run loaded.

    Each split is a :class:`isotpp.data.Dataset` (or anything with ``images``
    and ``labels``), an ``(images, labels)`` pair of arrays (NumPy or JAX), or
    an image folder (``files`` relative to its root, and ``labels``).
    """
    h = hashlib.sha256(str(dataset).encode())
    examples = {}
    for name in sorted(splits, key=lambda s: (_ORDER.index(s) if s in _ORDER else len(_ORDER), s)):
        split = splits[name]
        h.update(f"\0{name}\0".encode())
        if hasattr(split, "files"):
            examples[name] = _update_files(h, split.files, split.labels)
        elif hasattr(split, "images"):
            examples[name] = _update_arrays(h, split.images, split.labels)
        else:
            images, labels = split
            examples[name] = _update_arrays(h, images, labels)
    return {"dataset": str(dataset), "examples": examples, "fingerprint": h.hexdigest()[:16]}


def describe_identity(identity: dict[str, Any]) -> str:
    """One phrase: ``fashion_mnist: 10,000 train / 2,000 test examples, fingerprint 0123abcd``."""
    try:
        sizes = " / ".join(f"{n:,} {split}" for split, n in identity["examples"].items())
        return f"{identity['dataset']}: {sizes} examples, fingerprint {identity['fingerprint'][:8]}"
    except (KeyError, TypeError, AttributeError, ValueError):
        return repr(identity)[:80]
