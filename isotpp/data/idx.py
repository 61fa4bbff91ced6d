"""IDX files: the format of MNIST and Fashion-MNIST.

An IDX file is a 4-byte magic number ``0x0000TTDD`` (``TT`` the element type,
``DD`` the number of dimensions), ``DD`` big-endian uint32 sizes, then the
elements in C order. MNIST-family files use type 0x08 (uint8):
``0x00000803`` for images (N, 28, 28) and ``0x00000801`` for labels (N,).
Files may be raw or gzip-compressed (as distributed); the header is read
first and bounds everything after it (:class:`isotpp.storage.npz.ByteStream`), then
the payload is decoded with one ``np.frombuffer``.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np

from isotpp.errors import DataError
from isotpp.storage.npz import ByteStream, fmt_bytes

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

_FIX = "re-download or reinstall it"
# The largest MNIST-family file, train images, is 47 MB (60,000 x 28 x 28); nothing larger is legitimate.
IDX_LIMIT = 128 << 20

# File names (without .gz) of the MNIST-family splits: split -> (images, labels).
IDX_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: str | Path, *, ndim: int | None = None, limit: int = IDX_LIMIT) -> np.ndarray:
    """Read an IDX file (raw or gzip) into an array of its native dtype.

    Checks the magic number, the dimension header and that the payload has
    exactly the size the header announces. The header is read first: a file
    declaring more than ``limit`` bytes is refused before anything is
    allocated or decompressed, and a gzip file is decompressed only as far as
    its header declares. ``ndim`` (3 for images, 1 for labels) additionally
    checks the number of dimensions. The result may be a read-only view of the
    file's bytes (uint8 files); copy it before writing to it.

    Raises:
      DataError: the file is missing, not IDX, truncated, has trailing bytes,
        declares more than ``limit`` bytes or is a corrupt gzip; the message
        names the file.
    """
    path = Path(path)
    stream = ByteStream(path, what="IDX file", fix=f"{_FIX}, or point data_dir/ISOTPP_DATA at a complete copy",
                        limit=limit)
    size_note = " after decompression" if stream.compressed else ""
    head = stream.take(4)
    if len(head) < 4:
        stream.check_complete()
        raise DataError(f"{path} is truncated (expected an IDX header, got {len(head)} bytes{size_note}): {_FIX}")
    magic = int.from_bytes(head, "big")
    type_code, nd = head[2], head[3]
    if head[:2] != b"\0\0" or type_code not in _IDX_DTYPES or nd == 0:
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
    dims_raw = stream.take(4 * nd)
    if len(dims_raw) < 4 * nd:
        stream.check_complete()
        raise DataError(
            f"{path} is truncated (expected a {header}-byte header, got {4 + len(dims_raw)} bytes{size_note}): {_FIX}"
        )
    dims = struct.unpack(f">{nd}I", dims_raw)
    dtype = _IDX_DTYPES[type_code]
    count = math.prod(dims)
    expected = header + count * dtype.itemsize
    if expected > limit:
        raise DataError(f"{path} declares a {'x'.join(map(str, dims))} array ({fmt_bytes(expected)}), more than the "
                        f"{fmt_bytes(limit)} an IDX file of isotpp's datasets can hold: {_FIX}")
    if not stream.compressed and len(stream._raw) < expected:
        raise DataError(f"{path} is truncated (expected {expected} bytes, got {len(stream._raw)}): {_FIX}")
    payload = stream.take(count * dtype.itemsize)
    if len(payload) < count * dtype.itemsize:
        stream.check_complete()
        raise DataError(f"{path} is truncated (expected {expected} bytes{size_note}, got {header + len(payload)}): "
                        f"{_FIX}")
    extra = stream.trailing()
    if extra:
        raise DataError(
            f"{path} has {extra} unexpected bytes after its data (expected {expected} bytes{size_note}): {_FIX}"
        )
    array = np.frombuffer(payload, dtype=dtype, count=count).reshape(dims)
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
