"""CIFAR-10 and CIFAR-100 from the official "python version" pickle batches.

Layouts (as extracted from ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``):

- ``cifar-10-batches-py/``: ``data_batch_1`` .. ``data_batch_5`` (10,000 images
  each), ``test_batch``, ``batches.meta``; labels under ``labels``.
- ``cifar-100-python/``: ``train`` (50,000), ``test`` (10,000), ``meta``; labels
  under ``fine_labels`` (100 classes; ``coarse_labels`` is ignored).

Each batch is a pickled dict whose ``data`` is a uint8 array (N, 3072): per
image the 1024 red, then green, then blue values of a 32x32 image in row-major
order (CHW). We return NHWC.

Security: a pickle can run arbitrary code when loaded, so the batches are read
with a restricted unpickler that resolves only the few globals the official
files (and numpy pickles written by Python 3) reference: numpy's array
reconstructor, ``numpy.dtype`` (object dtypes refused) and ``_codecs.encode``
(latin-1 only). Any other global is refused and reported as a DataError.
"""

from __future__ import annotations

import codecs
import io
import math
import pickle
from pathlib import Path

import numpy as np

from isotpp.data.idx import check_labels
from isotpp.errors import DataError
from isotpp.storage.npz import read_bytes

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "CIFAR_FILES",
    "load_cifar_split",
    "random_crop_flip",
    "read_cifar_batch",
]

# The reference's data/cifar10.py normalises CIFAR-10 with the ImageNet statistics.
CIFAR10_MEAN = (0.485, 0.456, 0.406)
CIFAR10_STD = (0.229, 0.224, 0.225)
# data/cifar100.py: the CIFAR-100 statistics (as in the EigenDamage code).
CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)

# name -> split -> batch files, and the label key.
CIFAR_FILES = {
    "cifar10": {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
    "cifar100": {"train": ("train",), "test": ("test",)},
}
_LABEL_KEY = {"cifar10": "labels", "cifar100": "fine_labels"}
_NUM_CLASSES = {"cifar10": 10, "cifar100": 100}
_FIX = "re-download the CIFAR archive and extract it again"
CIFAR_LIMIT = 256 << 20  # the largest batch file, CIFAR-100's train, is 155 MB


class _ArrayMarker:
    """Stands in for ``numpy.ndarray`` in a pickle: only usable as a reconstruct argument."""


def _safe_dtype(spec, align=False, copy=False):
    if isinstance(spec, bytes):
        spec = spec.decode("latin-1")
    if not isinstance(spec, str):
        raise pickle.UnpicklingError(f"refusing dtype spec of type {type(spec).__name__}")
    dtype = np.dtype(spec, align=bool(align), copy=bool(copy))
    if dtype.hasobject:
        raise pickle.UnpicklingError("refusing object dtype")
    return dtype


def _safe_reconstruct(subtype, shape, dtype_code):
    # Mirrors numpy's _reconstruct(ndarray, (0,), b'b'); BUILD then calls
    # ndarray.__setstate__ with the real shape, dtype and raw bytes.
    if subtype is not _ArrayMarker:
        raise pickle.UnpicklingError("refusing to reconstruct anything but a plain ndarray")
    shape = tuple(int(s) for s in shape)
    if any(s < 0 for s in shape) or math.prod(shape) > CIFAR_LIMIT:  # numpy writes (0,); the data come later
        raise pickle.UnpicklingError(f"refusing a placeholder array of shape {shape}")
    return np.ndarray(shape, dtype=np.uint8)


def _safe_frombuffer(buffer, dtype, shape, order):
    # Protocol-5 numpy pickles (Python 3 default).
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise pickle.UnpicklingError("refusing object dtype")
    return np.frombuffer(bytes(buffer), dtype=dtype).reshape(shape, order=order).copy()


def _safe_encode(text, encoding="utf-8"):
    # Python 3 protocol <= 2 writes bytes as _codecs.encode(str, 'latin1').
    if codecs.lookup(encoding).name != "iso8859-1" or not isinstance(text, str):
        raise pickle.UnpicklingError("refusing _codecs.encode other than latin-1")
    return text.encode("latin-1")


_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy", "ndarray"): _ArrayMarker,
    ("numpy", "dtype"): _safe_dtype,
    ("numpy.core.numeric", "_frombuffer"): _safe_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _safe_frombuffer,
    ("_codecs", "encode"): _safe_encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None


def _unpickle(path: Path) -> dict:
    raw = read_bytes(path, limit=CIFAR_LIMIT, what="CIFAR batch",
                     fix=f"{_FIX}, or point data_dir/ISOTPP_DATA at a complete copy")
    try:
        # latin-1 turns Python 2 str (keys, raw pixel bytes) into str, as torchvision does.
        obj = _RestrictedUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        raise DataError(f"{path} is not a CIFAR batch ({exc}): {_FIX}") from None
    except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError, OverflowError, MemoryError) as exc:
        raise DataError(f"{path} is truncated or corrupt ({type(exc).__name__}: {exc}): {_FIX}") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path} holds a {type(obj).__name__}, not a CIFAR batch dict: {_FIX}")
    return {(k.decode("latin-1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def read_cifar_batch(
    path: str | Path, label_key: str = "labels", num_classes: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """One batch file as images (N, 32, 32, 3) uint8 NHWC and labels (N,) int32.

    Raises:
      DataError: missing file, unsafe or corrupt pickle, wrong keys or shapes,
        labels out of range; the message names the file.
    """
    path = Path(path)
    batch = _unpickle(path)
    data = batch.get("data")
    labels = batch.get(label_key)
    if data is None or labels is None:
        raise DataError(f"{path} lacks the 'data' or '{label_key}' entry (keys: {sorted(map(str, batch))}): {_FIX}")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path} has data {got}, expected uint8 (N, 3072): {_FIX}")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        raise DataError(f"{path} has non-integer '{label_key}': {_FIX}") from None
    if labels.shape != (data.shape[0],):
        raise DataError(f"{path} has {labels.size} labels for {data.shape[0]} images: {_FIX}")
    labels = check_labels(labels, path, num_classes)
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, labels


def load_cifar_split(directory: str | Path, name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """All batches of ``split`` of ``name`` ('cifar10' | 'cifar100') found in ``directory``."""
    directory = Path(directory)
    parts = [
        read_cifar_batch(directory / f, _LABEL_KEY[name], _NUM_CLASSES[name]) for f in CIFAR_FILES[name][split]
    ]
    if len(parts) == 1:
        return parts[0]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def random_crop_flip(
    images: np.ndarray, rng: np.random.Generator, *, padding: int = 4, fill=0.0
) -> np.ndarray:
    """The reference's CIFAR training augmentation on an NHWC batch.

    ``RandomCrop(32, padding=4)`` then ``RandomHorizontalFlip()``: pad each side
    by ``padding`` with ``fill``, crop a random window of the original size, flip
    left-right with probability 1/2. The reference pads the raw image with 0, so
    on normalised images pass ``fill = -mean / std`` (per channel).
    """
    n, h, w, c = images.shape
    fill = np.broadcast_to(np.asarray(fill, dtype=images.dtype), (c,))
    padded = np.empty((n, h + 2 * padding, w + 2 * padding, c), dtype=images.dtype)
    padded[...] = fill
    padded[:, padding : padding + h, padding : padding + w] = images
    dy = rng.integers(0, 2 * padding + 1, size=n)
    dx = rng.integers(0, 2 * padding + 1, size=n)
    flip = rng.random(n) < 0.5
    cols = dx[:, None] + np.arange(w)[None, :]
    cols = np.where(flip[:, None], cols[:, ::-1], cols)
    rows = dy[:, None] + np.arange(h)[None, :]
    return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
