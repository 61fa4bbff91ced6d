"""IDX files: the format of MNIST and Fashion-MNIST.

An IDX file is a 4-byte magic number ``0x0000TTDD`` (``TT`` the element type,
``DD`` the number of dimensions), ``DD`` big-endian uint32 sizes, then the
elements in C order. MNIST-family files use type 0x08 (uint8):
``0x00000803`` for images (N, 28, 28) and ``0x00000801`` for labels (N,).
Files may be raw or gzip-compressed (as distributed); both are read whole and
decoded with one ``np.frombuffer``.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from isotpp.errors import DataError

__all__ = ["IDX_STEMS", "check_labels", "idx_split_paths", "load_idx_split", "read_idx"]

# IDX element-type byte -> numpy dtype (multi-byte types are big-endian).
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"
_FIX = "re-download or reinstall it"

# File names (without .gz) of the MNIST-family splits: split -> (images, labels).
IDX_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _read_bytes(path: Path) -> tuple[bytes, bool]:
    """The file's content, decompressed if it is gzip; and whether it was."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path} is missing: {_FIX}, or point data_dir/ISOTPP_DATA at a complete copy") from None
    except OSError as exc:
        raise DataError(f"could not read {path} ({exc.strerror or exc}): check the file's permissions") from None
    if not raw.startswith(_GZIP_MAGIC):
        return raw, False
    try:
        return gzip.decompress(raw), True
    except EOFError:
        raise DataError(f"{path} is truncated (the gzip stream ends early): {_FIX}") from None
    except (gzip.BadGzipFile, zlib.error, OSError) as exc:
        raise DataError(f"{path} is not a valid gzip file ({exc}): {_FIX}") from None


def read_idx(path: str | Path, *, ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (raw or gzip) into an array of its native dtype.

    Checks the magic number, the dimension header and that the payload has
    exactly the size the header announces. ``ndim`` (3 for images, 1 for labels)
    additionally checks the number of dimensions. The result may be a read-only
    view of the file's bytes (uint8 files); copy it before writing to it.

    Raises:
      DataError: the file is missing, not IDX, truncated, has trailing bytes or
        is a corrupt gzip; the message names the file.
    """
    path = Path(path)
    data, compressed = _read_bytes(path)
    size_note = " after decompression" if compressed else ""
    if len(data) < 4:
        raise DataError(f"{path} is truncated (expected an IDX header, got {len(data)} bytes{size_note}): {_FIX}")
    magic = int.from_bytes(data[:4], "big")
    type_code, nd = data[2], data[3]
    if data[:2] != b"\0\0" or type_code not in _IDX_DTYPES or nd == 0:
        raise DataError(
            f"{path} is not an IDX file (magic 0x{magic:08x}, expected 0x00000801 for labels "
            f"or 0x00000803 for images): {_FIX}"
        )
    if ndim is not None and nd != ndim:
        raise DataError(
            f"{path} holds a {nd}-d IDX array (magic 0x{magic:08x}) where a {ndim}-d one was expected: "
            "check that the image and label files are not swapped or renamed"
        )
    header = 4 + 4 * nd
    if len(data) < header:
        raise DataError(
            f"{path} is truncated (expected a {header}-byte header, got {len(data)} bytes{size_note}): {_FIX}"
        )
    dims = struct.unpack(f">{nd}I", data[4:header])
    dtype = _IDX_DTYPES[type_code]
    count = math.prod(dims)
    expected = header + count * dtype.itemsize
    if len(data) < expected:
        raise DataError(f"{path} is truncated (expected {expected} bytes{size_note}, got {len(data)}): {_FIX}")
    if len(data) > expected:
        raise DataError(
            f"{path} has {len(data) - expected} unexpected bytes after its data "
            f"(expected {expected} bytes{size_note}): {_FIX}"
        )
    array = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(dims)
    if dtype.byteorder == ">":
        array = array.astype(dtype.newbyteorder("="))
    return array


def idx_split_paths(directory: str | Path, split: str) -> tuple[Path, Path]:
    """The (images, labels) files of ``split`` in ``directory``, raw preferred over .gz.

    Raises:
      DataError: a file exists neither raw nor gzipped.
    """
    directory = Path(directory)
    paths = []
    for stem in IDX_STEMS[split]:
        raw, gz = directory / stem, directory / f"{stem}.gz"
        if raw.is_file():
            paths.append(raw)
        elif gz.is_file():
            paths.append(gz)
        else:
            raise DataError(f"{gz} is missing (nor is {raw.name} there): re-download or reinstall the dataset")
    return paths[0], paths[1]


def load_idx_split(directory: str | Path, split: str, *, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Raw images (N, H, W) uint8 and labels (N,) int32 of one MNIST-family split.

    Raises:
      DataError: a file is missing or corrupt, the counts disagree or a label is
        out of range; the message names the file.
    """
    images_path, labels_path = idx_split_paths(directory, split)
    images = read_idx(images_path, ndim=3)
    labels = check_labels(read_idx(labels_path, ndim=1), labels_path, num_classes)
    if images.dtype != np.uint8:
        raise DataError(f"{images_path} holds {images.dtype} pixels, expected uint8 (magic 0x00000803): {_FIX}")
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{images_path} holds {images.shape[0]} images but {labels_path.name} holds {labels.shape[0]} labels: "
            f"{_FIX}"
        )
    return images, labels


def check_labels(labels: np.ndarray, path: Path, num_classes: int) -> np.ndarray:
    """Labels as int32, checked to lie in [0, num_classes)."""
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"{path} has labels in [{labels.min()}, {labels.max()}], expected 0..{num_classes - 1}: "
            "it is not this dataset's file; re-download or reinstall it"
        )
    return labels.astype(np.int32)
