"""Atomic file output: a result is either whole on disk or not there at all.

Everything isotpp writes for a user (JSON, tables, figures, model files) goes
through :func:`atomic_write`: the bytes go to a temporary file in the target's
directory and are moved over the target with ``os.replace``, so an interrupted
run never leaves a half-written file where a good one was expected.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from isotpp.errors import UserError
from isotpp.storage import faults


def storage_error(path: str | os.PathLike, error: OSError) -> UserError:
    """One line for a write that the file system refused (a full disk, no permission, read-only)."""
    reason = error.strerror or str(error)
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return UserError(f"cannot write {path}: {reason}; free some space (or choose another directory), then run "
                         "the same command again: finished work is kept")
    return UserError(f"cannot write {path}: {reason}; choose a writable path")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, *, mkdir: bool = True) -> Iterator[BinaryIO]:
    """Open a temporary binary file that replaces ``path`` on successful exit.

    The file gets the permissions a plain ``open`` would (0666 less the
    umask, so 0644 usually). A file system that refuses the write (a full
    disk, no permission) is a :class:`UserError` naming ``path``; the target
    is then left as it was.
    """
    path = Path(path)
    if mkdir:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create directory {path.parent}: {e.strerror}; choose a writable path") from e
    elif not path.parent.is_dir():
        raise UserError(f"directory {path.parent} does not exist: create it or choose another path")
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the kernel applies the umask
    except OSError as e:
        raise storage_error(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        faults.at("before", path)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise storage_error(path, e) from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    faults.at("after", path)


def jsonable(obj: Any) -> Any:
    """Numpy/JAX scalars and arrays to plain Python; NaN/inf to None (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):
        return jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    """Write ``obj`` as strict JSON, atomically."""
    data = json.dumps(jsonable(obj), indent=indent, allow_nan=False)
    with atomic_write(path) as f:
        f.write(data.encode() + b"\n")
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_write(path) as f:
        f.write(text.encode())
    return Path(path)


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as e:
        raise UserError(f"{path} does not exist: check the path") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}): it may be truncated; regenerate it") from e
