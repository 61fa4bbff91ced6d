"""Datasets as NumPy arrays, preprocessed exactly as the TPP reference does.

``load_dataset(name, split)`` returns a :class:`Dataset` of NHWC float32 images
and int32 labels. Preprocessing follows the reference's torchvision test-time
transforms (``data/mnist.py``, ``fmnist.py``, ``cifar10.py``, ``cifar100.py``):

- MNIST and Fashion-MNIST: ``Resize((32, 32))`` of the 28x28 PIL image with
  Pillow's bilinear filter (the same call torchvision makes, so the uint8 pixels
  match), ``ToTensor`` (x / 255) and ``Normalize(0.1307, 0.3081)``. The reference
  uses these *MNIST* statistics for Fashion-MNIST too (its data/fmnist.py), and
  so do we, for comparable numbers.
- CIFAR-10: x / 255, normalised with the ImageNet mean/std
  (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225), as the reference's cifar10.py.
- CIFAR-100: mean/std (0.5071, 0.4867, 0.4408) / (0.2675, 0.2565, 0.2761).

The arithmetic is float32 in torchvision's order (divide by 255, subtract the
mean, divide by the std), so values agree bit for bit. The reference's random
crop and flip for CIFAR training are not applied here; see
:func:`isotpp.data.cifar.random_crop_flip`.

Resizing 60k images takes about a second, so the resized uint8 pixels are cached
as ``.npy`` under ``cache_dir()/preprocessed``, keyed by the source file's path,
size and mtime and the target size; the float conversion (a fraction of a
second) is redone on each load, which keeps the cache 4x smaller than float32.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from isotpp.data.cifar import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    load_cifar_split,
)
from isotpp.data.discovery import cache_dir, find_dataset_dir
from isotpp.data.download import download_dataset
from isotpp.data.idx import check_labels, idx_split_paths, read_idx
from isotpp.data.synthetic import make_synthetic
from isotpp.errors import DataError, UserError

__all__ = [
    "DATASET_INFO",
    "MNIST_MEAN",
    "MNIST_STD",
    "Dataset",
    "DatasetInfo",
    "cache_dir",
    "find_dataset_dir",
    "input_shape",
    "load_dataset",
    "make_synthetic",
    "resize_images",
    "to_float",
]

MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)

_CACHE_VERSION = 1  # bump when the cached content's meaning changes


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset; ``input_shape`` is after the default preprocessing (32x32)."""

    input_shape: tuple[int, int, int]
    native_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_size: int
    test_size: int


DATASET_INFO: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo((32, 32, 1), (28, 28, 1), 10, MNIST_MEAN, MNIST_STD, 60_000, 10_000),
    "fashion_mnist": DatasetInfo((32, 32, 1), (28, 28, 1), 10, MNIST_MEAN, MNIST_STD, 60_000, 10_000),
    "cifar10": DatasetInfo((32, 32, 3), (32, 32, 3), 10, CIFAR10_MEAN, CIFAR10_STD, 50_000, 10_000),
    "cifar100": DatasetInfo((32, 32, 3), (32, 32, 3), 100, CIFAR100_MEAN, CIFAR100_STD, 50_000, 10_000),
    # Already standardised; sizes are what load_dataset("synthetic") returns.
    "synthetic": DatasetInfo((32, 32, 1), (28, 28, 1), 10, (0.0,), (1.0,), 1024, 256),
}

_ALIASES = {"fmnist": "fashion_mnist", "fashion-mnist": "fashion_mnist", "fashionmnist": "fashion_mnist",
            "cifar-10": "cifar10", "cifar-100": "cifar100"}  # fmt: skip
_SYNTHETIC_SEEDS = {"train": 0, "test": 1}


@dataclass(frozen=True, eq=False)
class Dataset:
    """One split: ``images`` (N, H, W, C) float32, ``labels`` (N,) int32."""

    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    name: str
    split: str

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])


def _canonical_name(name: str) -> str:
    key = str(name).lower()
    key = _ALIASES.get(key, key)
    if key not in DATASET_INFO:
        raise UserError(f"unknown dataset {name!r}: choose one of {', '.join(sorted(DATASET_INFO))}")
    return key


def _check_resize(resize) -> tuple[int, int] | None:
    if resize is None:
        return None
    try:
        h, w = (int(v) for v in resize)
    except (TypeError, ValueError):
        raise UserError(f"resize must be None or (height, width), got {resize!r}: fix the argument") from None
    if h < 1 or w < 1:
        raise UserError(f"resize must be positive, got {resize!r}: fix the argument")
    return h, w


def input_shape(name: str, resize: tuple[int, int] | None = (32, 32)) -> tuple[int, int, int]:
    """The (H, W, C) that ``load_dataset(name, resize=resize)`` yields."""
    info = DATASET_INFO[_canonical_name(name)]
    size = _check_resize(resize)
    return info.native_shape if size is None else (*size, info.native_shape[2])


def resize_images(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of uint8 images (N, H, W) or (N, H, W, C) to ``size`` = (height, width).

    Uses Pillow's ``Image.resize(..., BILINEAR)`` per image, which is exactly what
    torchvision's ``Resize`` does on a PIL image, so the uint8 results match.
    Returns uint8 with the input's layout.
    """

    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise UserError(f"resize_images needs uint8 images, got {images.dtype}: resize before converting to float")
    h, w = size
    if images.shape[1:3] == (h, w):
        return images
    squeeze = images.ndim == 4 and images.shape[3] == 1
    src = images[..., 0] if squeeze else images
    out = np.empty((src.shape[0], h, w, *src.shape[3:]), dtype=np.uint8)
    bilinear = Image.Resampling.BILINEAR
    for i in range(src.shape[0]):
        out[i] = np.asarray(Image.fromarray(src[i]).resize((w, h), bilinear))
    return out[..., None] if squeeze else out


def to_float(images: np.ndarray, mean=None, std=None) -> np.ndarray:
    """uint8 NHWC -> float32 ``x / 255``, then ``(x - mean) / std`` per channel if given.

    float32 throughout and in torchvision's order (ToTensor, then Normalize), so
    results are bit-identical to the reference's tensors.
    """
    out = np.asarray(images).astype(np.float32)
    out /= np.float32(255.0)
    if mean is not None:
        out -= np.asarray(mean, dtype=np.float32)
        out /= np.asarray(std, dtype=np.float32)
    return out


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array, allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _resized_idx_images(
    name: str, split: str, source: Path, size: tuple[int, int], limit: int | None
) -> tuple[np.ndarray, int]:
    """The first ``limit`` resized uint8 images (n, h, w) of an IDX file, and the file's image count.

    Goes through the .npy cache; a slice smaller than the file is resized
    directly (and not cached) unless the whole file is cached already.
    """
    st = source.stat()
    key_src = {"v": _CACHE_VERSION, "src": str(source.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns,
               "size": list(size)}  # fmt: skip
    key = hashlib.sha256(json.dumps(key_src, sort_keys=True).encode()).hexdigest()[:16]
    stem = f"{name}-{split}-{size[0]}x{size[1]}"
    cached = cache_dir() / "preprocessed" / f"{stem}-{key}.npy"
    if cached.is_file():
        try:
            # mapped, not read: a header declaring more than the file holds fails here without allocating
            images = np.load(cached, mmap_mode="r", allow_pickle=False)
            if images.dtype == np.uint8 and images.ndim == 3 and images.shape[1:] == tuple(size):
                return np.array(images[:limit]), images.shape[0]
        except (OSError, ValueError, EOFError):
            pass  # unreadable cache entry: rebuild it below
    images = read_idx(source, ndim=3)
    count = images.shape[0]
    if limit is not None and limit < count:
        return resize_images(images[:limit], size), count
    images = resize_images(images, size)
    try:
        for stale in cached.parent.glob(f"{stem}-*.npy"):
            stale.unlink(missing_ok=True)
        _atomic_save_npy(cached, images)
    except OSError as exc:
        warnings.warn(f"could not write the preprocessing cache {cached} ({exc}); set ISOTPP_CACHE to a writable "
                      "directory to make later loads faster", stacklevel=3)  # fmt: skip
    return images, count


def _load_idx(name, split, directory, size, limit):
    images_path, labels_path = idx_split_paths(directory, split)
    labels = check_labels(read_idx(labels_path, ndim=1), labels_path, DATASET_INFO[name].num_classes)
    if size is None:
        images = read_idx(images_path, ndim=3)
        count = images.shape[0]
        images = images[:limit]
    else:
        images, count = _resized_idx_images(name, split, images_path, size, limit)
    if count != labels.shape[0]:
        raise DataError(f"{images_path} holds {count} images but {labels_path.name} holds {labels.shape[0]} "
                        "labels: re-download or reinstall them")  # fmt: skip
    return images[..., None], labels[:limit]


def load_dataset(
    name: str,
    split: str = "train",
    *,
    data_dir: str | Path | None = None,
    download: bool = False,
    resize: tuple[int, int] | None = (32, 32),
    normalize: bool = True,
    limit: int | None = None,
) -> Dataset:
    """Load one split of ``name`` ('mnist', 'fashion_mnist', 'cifar10', 'cifar100', 'synthetic').

    Args:
      split: 'train' or 'test'.
      data_dir: where the files are; default: search ``$ISOTPP_DATA``, the cache
        and system locations (see :mod:`isotpp.data.discovery`).
      download: fetch the files (checksum-verified, into ``data_dir`` or the
        cache) if they are not found.
      resize: (height, width) for a bilinear resize, or None to keep the native
        size (28x28 for MNIST-family, needed e.g. by LeNet-300-100).
      normalize: subtract the reference's mean and divide by its std; if False the
        images are ``x / 255`` in [0, 1].
      limit: keep only the first ``limit`` examples (all if there are fewer).

    Raises:
      UserError: unknown name, split or bad argument.
      DataError: files not found, not downloadable, or corrupt.

    >>> test = load_dataset("synthetic", "test", limit=8)
    >>> test.images.shape, test.labels.dtype.name, test.num_classes
    ((8, 32, 32, 1), 'int32', 10)
    """
    name = _canonical_name(name)
    if split not in ("train", "test"):
        raise UserError(f"unknown split {split!r}: use 'train' or 'test'")
    size = _check_resize(resize)
    if limit is not None and (isinstance(limit, bool) or int(limit) != limit or limit < 0):
        raise UserError(f"limit must be a non-negative integer or None, got {limit!r}: fix the argument")
    info = DATASET_INFO[name]

    if name == "synthetic":
        n = info.train_size if split == "train" else info.test_size
        n = n if limit is None else min(n, int(limit))
        images, labels = make_synthetic(n, input_shape(name, size), info.num_classes, _SYNTHETIC_SEEDS[split])
        return Dataset(images, labels, info.num_classes, name, split)

    try:
        directory = find_dataset_dir(name, data_dir)
    except DataError:
        if not download:
            raise
        directory = download_dataset(name, data_dir)

    if name in ("mnist", "fashion_mnist"):
        images, labels = _load_idx(name, split, directory, size, limit)
    else:
        images, labels = load_cifar_split(directory, name, split)
        images, labels = images[:limit], labels[:limit]
        if size is not None:
            images = resize_images(images, size)
    mean, std = (info.mean, info.std) if normalize else (None, None)
    return Dataset(to_float(images, mean, std), labels, info.num_classes, name, split)
