"""One file format for every artefact isotpp saves: model files, AutoSparse scorers, IRP records.

An artefact is a ``.npz`` archive of named plain arrays (no pickles) and one
JSON header, stored as uint8 bytes under the member ``__isotpp__``::

    {"kind": "isotpp.model", "format": 2, "isotpp": "0.1.0", "meta": {...}, ...the kind's own fields}

``kind`` says what the file holds (a :class:`Kind`: :data:`MODEL`,
:data:`SCORER`, :data:`IRP_RECORD`), ``format`` the version of that kind's
layout, ``isotpp`` the version that wrote it and ``meta`` free-form metadata.

- :func:`write_artifact` writes one atomically (an interrupted save leaves
  the previous file, or none, never half of one).
- :func:`read_artifact` opens one, checks its kind, format and metadata and
  hands an :class:`Artifact` to the kind's parser, whose every array read
  (:meth:`Artifact.array`) checks presence, shape, dtype and finiteness.
  Whatever is wrong with the file (missing, empty, truncated, not a zip, a
  member that is not a plain array, no header, bad JSON, another kind, a
  newer format, a missing array, a wrong shape, NaN) is one
  :class:`~isotpp.errors.DataError` line: ``<what> <path> <problem>: <what to do>``.

Files written before this format still load: format-1 model files (header
``__isotpp__`` without ``kind``), format-1 scorers and IRP records (header
``__header__``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from isotpp import __version__
from isotpp.errors import DataError, UserError
from isotpp.storage.atomic import atomic_write
from isotpp.storage.npz import Npz, open_npz

__all__ = ["HEADER", "IRP_RECORD", "KINDS", "MODEL", "SCORER", "Artifact", "Kind", "read_artifact",
           "write_artifact"]

HEADER = "__isotpp__"
_RESERVED = ("kind", "format", "isotpp", "meta")
T = TypeVar("T")
_DTYPE_KINDS = {"b": "bool", "f": "floating point", "i": "integer"}


@dataclasses.dataclass(frozen=True)
class Kind:
    """What an artefact holds, how its files are described in errors, and which formats are read."""

    name: str  # the header's "kind"
    what: str  # "model file": how errors name such a file
    fix: str  # what to do about a corrupt one
    format: int = 2  # the format written
    oldest: int = 1  # the oldest format still read
    legacy_header: str | None = None  # the header member of format-1 files, when it was not HEADER
    untagged: bool = False  # format-1 files carried no "kind"


MODEL = Kind("isotpp.model", "model file", "save it again with isotpp.save_model", untagged=True)
SCORER = Kind("isotpp.autosparse_scorer", "scorer file", "train it again", legacy_header="__header__")
IRP_RECORD = Kind("isotpp.irp_record", "IRP record", "record it again", legacy_header="__header__")
KINDS = {k.name: k for k in (MODEL, SCORER, IRP_RECORD)}


def write_artifact(path: str | Path, kind: Kind, arrays: Mapping[str, Any], fields: Mapping[str, Any] | None = None,
                   meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``arrays`` (name -> array) and the header (``fields`` of the kind, ``meta``) to ``path``, atomically."""
    fields = dict(fields or {})
    clash = [k for k in fields if k in _RESERVED]
    if clash or HEADER in arrays:
        raise ValueError(f"{clash or HEADER} is reserved by the artefact format")
    header = {"kind": kind.name, "format": kind.format, "isotpp": __version__, "meta": dict(meta or {}), **fields}
    out = {name: np.asarray(a) for name, a in arrays.items()}
    out[HEADER] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    path = Path(path)
    with atomic_write(path) as f:
        np.savez(f, **out)
    return path


class Artifact:
    """An open artefact file: its checked header and lazily read arrays (see :func:`read_artifact`)."""

    def __init__(self, path: Path, kind: Kind, data: Npz, header_member: str):
        self.path, self.kind, self._data = path, kind, data
        self.header = self._header(header_member)
        self.format: int = self.header["format"]
        self.written_by: str | None = self.header.get("isotpp")
        self.meta: dict[str, Any] = self.header.get("meta", {})
        self.names = [n for n in data.files if n != header_member]

    def corrupt(self, problem: str, fix: str | None = None) -> DataError:
        """The one error line for anything wrong with this file: ``<what> <path> <problem>: <fix>``."""
        return DataError(f"{self.kind.what} {self.path} {problem}: {fix or self.kind.fix}")

    def _header(self, member: str) -> dict[str, Any]:
        raw = self._data[member]
        if raw.dtype != np.uint8 or raw.ndim != 1:
            raise self.corrupt(f"has a corrupt header ({raw.dtype} {raw.shape})")
        try:
            header = json.loads(raw.tobytes().decode())
        except (ValueError, UnicodeDecodeError) as exc:
            raise self.corrupt(f"has a corrupt header ({exc})") from None
        if not isinstance(header, dict):
            raise self.corrupt(f"has a header of type {type(header).__name__}, not a JSON object")
        kind, fmt = header.get("kind"), header.get("format")
        if kind is None and self.kind.untagged and fmt == 1:
            kind = self.kind.name  # written before files said their kind
        if kind != self.kind.name:
            other = KINDS.get(kind) if isinstance(kind, str) else None
            held = f"an isotpp {other.what}" if other else f"an artefact of kind {kind!r}"
            raise self.corrupt(f"holds {held}, not a {self.kind.what}", f"pass a {self.kind.what}")
        if type(fmt) is not int:
            raise self.corrupt(f"has no format version (got {fmt!r})")
        if fmt > self.kind.format:
            raise self.corrupt(f"has format {fmt} (written by isotpp {header.get('isotpp', '?')}), newer than the "
                               f"{self.kind.format} this isotpp {__version__} reads", "upgrade isotpp")
        if fmt < self.kind.oldest:
            raise self.corrupt(f"has format {fmt}, which this isotpp no longer reads")
        if not isinstance(header.get("meta", {}), dict):
            raise self.corrupt(f"has corrupt metadata (a {type(header['meta']).__name__})")
        return header

    def shape(self, name: str) -> tuple[int, ...]:
        """The stored shape of array ``name`` (nothing is read)."""
        self._require(name)
        return self._data.shape(name)

    def held(self) -> int:
        """How many numbers the file's arrays hold together (from their headers)."""
        return sum(math.prod(self._data.shape(n)) for n in self.names)

    def _require(self, name: str) -> None:
        if name not in self.names:
            raise self.corrupt(f"lacks the array {name!r}")

    def array(self, name: str, shape: tuple[int, ...] | None = None, *, dtype: str | None = None,
              finite: bool = True) -> np.ndarray:
        """Array ``name``, refused when missing, not of ``shape`` (checked before reading), not of dtype kind
        ``dtype`` (``"b"`` bool, ``"f"`` float, as ``np.dtype.kind``) or, for a float array, not finite."""
        stored = self.shape(name)
        if shape is not None and tuple(stored) != tuple(shape):
            raise self.corrupt(f"has {name} of shape {tuple(stored)}, expected {tuple(shape)}")
        a = self._data[name]
        if dtype is not None and a.dtype.kind != dtype:
            raise self.corrupt(f"has {name} of dtype {a.dtype}, expected {_DTYPE_KINDS.get(dtype, dtype)}")
        if finite and a.dtype.kind in "fc" and not np.isfinite(a).all():
            raise self.corrupt(f"has NaN or infinite values in {name}")
        return a


def _open(path: Path, kind: Kind) -> Artifact:
    if not path.exists():
        raise DataError(f"{kind.what} {path} does not exist: check the path")
    data = open_npz(path, what=kind.what, fix=kind.fix)
    try:
        member = HEADER if HEADER in data or kind.legacy_header not in data else kind.legacy_header
        if member not in data:
            raise DataError(f"{kind.what} {path} has no {HEADER} header, so it is not an isotpp {kind.what}: "
                            f"{kind.fix}")
        return Artifact(path, kind, data, member)
    except BaseException:
        data.close()
        raise


@contextmanager
def _opened(path: str | Path, kind: Kind) -> Iterator[Artifact]:
    artifact = _open(Path(path), kind)
    try:
        yield artifact
    finally:
        artifact._data.close()


def read_artifact(path: str | Path, kind: Kind, parse: Callable[[Artifact], T] = lambda a: a.header) -> T:
    """Open artefact ``path`` of ``kind``, check it and return ``parse(artifact)`` (by default its header).

    ``parse`` reads what it needs through the :class:`Artifact`; a ``KeyError``,
    ``TypeError``, ``ValueError``, ``AttributeError`` or ``IndexError`` it raises
    (a header field missing or of the wrong type) becomes the same one-line
    :class:`~isotpp.errors.DataError` as every other corruption.
    """
    with _opened(path, kind) as artifact:
        try:
            return parse(artifact)
        except UserError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise artifact.corrupt(f"has a corrupt header or arrays ({type(exc).__name__}: {exc})") from None
