"""Reading the files isotpp reads, with every size checked before memory is allocated.

A file's header declares how large its content is (an IDX header's
dimensions, a ``.npy`` member's shape and dtype, a gzip stream's expansion);
a crafted or corrupt file can declare terabytes in a few bytes. Every reader
here checks the declared size against what the file can hold and against a
bound *before* allocating, decompresses with a limit, and reports a bad file
as one :class:`~isotpp.errors.DataError` line naming the file:

- :func:`read_bytes`: a whole file, refused when larger than ``limit``;
- :class:`ByteStream`: raw or gzip bytes taken piece by piece (IDX files
  read their header first, then exactly the payload it declares);
- :func:`open_npz`: a ``.npz`` archive (the artefacts of
  :mod:`isotpp.storage.artifact`, preprocessing caches) whose members' shapes
  are checked against their stored sizes before one is loaded; no pickles.
"""

from __future__ import annotations

import math
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from isotpp.errors import DataError

__all__ = ["DEFAULT_LIMIT", "ByteStream", "Npz", "fmt_bytes", "open_npz", "read_bytes"]

DEFAULT_LIMIT = 4 << 30  # no file isotpp reads is legitimately larger than 4 GiB in memory
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20


def fmt_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover - the loop returns


def _stat_size(path: Path, what: str, fix: str) -> int:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise DataError(f"{what} {path} is missing: {fix}") from None
    except OSError as exc:
        raise DataError(f"could not read {what} {path} ({exc.strerror or exc}): check the path") from None
    if not path.is_file():
        raise DataError(f"{what} {path} is not a file: {fix}")
    return st.st_size


def read_bytes(path: str | Path, *, limit: int = DEFAULT_LIMIT, what: str = "file", fix: str = "check the file") -> bytes:
    """The content of ``path``, refused (before reading) when it is larger than ``limit`` bytes."""
    path = Path(path)
    size = _stat_size(path, what, fix)
    if size > limit:
        raise DataError(f"{what} {path} is {fmt_bytes(size)}, more than the {fmt_bytes(limit)} such a file can be: "
                        f"{fix}")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"could not read {what} {path} ({exc.strerror or exc}): check its permissions") from None


class ByteStream:
    """The bytes of a raw or gzip file, taken in order with :meth:`take`, never more than asked.

    A gzip file is decompressed only as far as the bytes taken, so a small
    file that expands to gigabytes costs no more memory than the caller asked
    for. ``compressed`` says whether the file was gzip.
    """

    def __init__(self, path: str | Path, *, what: str = "file", fix: str = "check the file",
                 limit: int = DEFAULT_LIMIT):
        self.path = Path(path)
        self._what, self._fix = what, fix
        self._raw = read_bytes(self.path, limit=limit, what=what, fix=fix)
        self.compressed = self._raw.startswith(_GZIP_MAGIC)
        self._pos = 0
        self._inflate = zlib.decompressobj(wbits=31) if self.compressed else None
        self._pending = self._raw

    def take(self, n: int) -> bytes:
        """Up to ``n`` more bytes (fewer only at the end of the data)."""
        if not self.compressed:
            out = self._raw[self._pos:self._pos + n]
            self._pos += len(out)
            return out
        parts, got = [], 0
        while got < n and not self._inflate.eof:
            data = self._pending if self._pending else self._inflate.unconsumed_tail
            if not data:
                break
            try:
                piece = self._inflate.decompress(data, min(n - got, 64 * _CHUNK))
            except zlib.error as exc:
                raise DataError(f"{self.path} is not a valid gzip file ({exc}): {self._fix}") from None
            self._pending = b""
            parts.append(piece)
            got += len(piece)
            if not piece and not self._inflate.unconsumed_tail:
                break
        return b"".join(parts)

    def check_complete(self) -> None:
        """A gzip stream that ended early (the file was cut) is refused."""
        if self.compressed and not self._inflate.eof and not self._inflate.unconsumed_tail:
            raise DataError(f"{self.path} is truncated (the gzip stream ends early): {self._fix}")

    def trailing(self, cap: int = _CHUNK) -> int:
        """How many bytes follow what was taken (counted up to ``cap``)."""
        rest = len(self.take(cap))
        if self.compressed and self._inflate.eof and self._inflate.unused_data:
            rest += len(self._inflate.unused_data)
        return rest


# --------------------------------------------------------------------------
# .npz archives.
# --------------------------------------------------------------------------


class Npz:
    """A ``.npz`` archive opened by :func:`open_npz`: ``files``, ``archive[name]``, ``in``."""

    def __init__(self, path: Path, zf: zipfile.ZipFile, members: dict[str, tuple[zipfile.ZipInfo, tuple, np.dtype]],
                 what: str, fix: str):
        self.path, self._zf, self._members, self._what, self._fix = path, zf, members, what, fix
        self.files = list(members)

    def __contains__(self, name: str) -> bool:
        return name in self._members

    def __iter__(self) -> Iterator[str]:
        return iter(self.files)

    def shape(self, name: str) -> tuple[int, ...]:
        """The declared shape of member ``name`` (nothing is read)."""
        return self._members[name][1]

    def __getitem__(self, name: str) -> np.ndarray:
        info, shape, dtype = self._members[name]
        try:
            with self._zf.open(info) as f:
                return np.lib.format.read_array(f, allow_pickle=False)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            raise DataError(f"{self._what} {self.path} is corrupt at {name} ({exc}): {self._fix}") from None

    def close(self) -> None:
        self._zf.close()

    def __enter__(self) -> Npz:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _npy_header(f) -> tuple[tuple[int, ...], np.dtype, int]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version in ((2, 0), (3, 0)):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise ValueError(f"unknown .npy version {version}")
    return tuple(shape), dtype, f.tell()


def open_npz(path: str | Path, *, what: str = "file", fix: str = "write it again",
             limit: int = DEFAULT_LIMIT) -> Npz:
    """Open a ``.npz`` archive, checking every member before anything is loaded.

    Each member must be a ``.npy`` array of a plain dtype (no objects, no
    pickles) whose declared shape × itemsize is exactly what the member
    stores; the members together may expand to at most ``limit`` bytes.

    Raises:
      DataError: missing, not a zip, a member that is not a plain array or
        declares more data than it holds, or too large; one line naming the file.
    """
    path = Path(path)
    size = _stat_size(path, what, fix)
    if size == 0:
        raise DataError(f"{what} {path} is empty: {fix}")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise DataError(f"{what} {path} is not readable as a .npz ({exc}): it may be truncated; {fix}") from None
    try:
        members, total = {}, 0
        for info in zf.infolist():
            name = info.filename.removesuffix(".npy")
            total += info.file_size
            if total > limit:
                raise DataError(f"{what} {path} expands to more than {fmt_bytes(limit)}: {fix}")
            try:
                with zf.open(info) as f:
                    shape, dtype, offset = _npy_header(f)
            except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, SyntaxError) as exc:
                raise DataError(f"{what} {path}: member {name!r} is not a .npy array ({exc}): {fix}") from None
            if dtype.hasobject:
                raise DataError(f"{what} {path}: member {name!r} holds Python objects, which isotpp never reads: {fix}")
            if any(not isinstance(d, int) or d < 0 for d in shape):
                raise DataError(f"{what} {path}: member {name!r} has a bad shape {shape}: {fix}")
            declared = math.prod(shape) * dtype.itemsize
            if declared != info.file_size - offset:
                raise DataError(f"{what} {path}: member {name!r} declares {fmt_bytes(declared)} of data but stores "
                                f"{fmt_bytes(max(0, info.file_size - offset))}: it is corrupt or crafted; {fix}")
            members[name] = (info, shape, dtype)
    except BaseException:
        zf.close()
        raise
    return Npz(path, zf, members, what, fix)
