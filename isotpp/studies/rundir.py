"""Run directories: one owner at a time, one set of settings, artefacts that appear whole.

Every command that writes a run directory (``isotpp train``'s ``--workdir``,
``isotpp prune``'s ``--out`` and its shared stages, each study's ``--out``)
opens it with :func:`open_run`, which

1. refuses an empty path or a path that is a file;
2. takes the directory's lock, ``.isotpp.lock`` (``flock``; the file names
   the owner's pid, host and command): a second run into the same directory
   is refused with one line while the first lives, and the lock of a run that
   died (SIGKILL, power loss) is taken over, since the kernel released it;
3. finishes or discards what an interrupted run left half-committed
   (:class:`Commit`);
4. compares the settings with those the directory recorded
   (``config.json``) and refuses different ones, naming them; a setting the
   record lacks (a directory of an older isotpp, before the setting existed)
   counts as its default;
5. hands the caller a :class:`RunDir`: once the data are loaded,
   :meth:`RunDir.check_data` refuses data other than those the run was started
   on (the data directory may move, the data may not change); then
   :meth:`RunDir.record` writes the complete settings. The caller validates
   everything else (data present, patterns against the model) first, so a
   refused run writes nothing. If the call fails before anything was recorded,
   the directories it created are removed again, and a directory that existed
   is left as it was.

A piece of work made of several files (a model and its summary, every cell of
a vmapped group) is written through a :class:`Commit`: the files are staged
under ``.staging/``, a marker commits them, then they are moved into place; a
kill before the marker leaves nothing, a kill after it is completed by the
next run's :func:`open_run`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import socket
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

from isotpp import parallel
from isotpp.data.identity import describe_identity
from isotpp.errors import UserError
from isotpp.storage import faults
from isotpp.storage.atomic import read_json, storage_error, write_json

LOCK_NAME = ".isotpp.lock"
SETTINGS_NAME = "config.json"
DATA_KEY = "data"  # the settings' record of the data loaded (isotpp.data.identity), added by RunDir.check_data
STAGING_NAME = ".staging"
_COMMITTED = ".committed"
_TEMPORARY = re.compile(r"\..+\.[0-9a-f]{12}\.tmp|\..+\.[0-9a-f]{32}\.tmp")  # isotpp.storage.atomic, isotpp.reporting.figures

log = logging.getLogger(__name__)

_held: dict[Path, list] = {}  # lock path -> [fd, depth]: this process's locks (re-entrant)


def check_path(path: str | os.PathLike | None, what: str = "output directory") -> Path:
    """``path`` as a Path; an empty or blank one is a UserError (it would mean the current directory)."""
    if path is None or not str(path).strip():
        raise UserError(f"the {what} is empty: name a directory, e.g. runs/my-run")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"the {what} {path} is a file, not a directory: choose another path")
    return path


# --------------------------------------------------------------------------
# The lock.
# --------------------------------------------------------------------------


def _owner() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(Path(a).name if i == 0 else a for i, a in enumerate(sys.argv))[:300]}


def _describe(raw: bytes) -> str:
    try:
        owner = json.loads(raw.decode())
        return f"process {owner['pid']} on {owner['host']} since {owner['started']}: {owner['command']}"
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return "another process"


def _alive(owner: dict[str, Any]) -> bool:
    """For file systems without flock: whether the recorded owner still runs (same host only)."""
    if owner.get("host") != socket.gethostname():
        return True  # cannot tell: assume it lives
    try:
        os.kill(int(owner["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, TypeError, ValueError):
        return True
    return True


def _read(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 4096)


def _in_use(directory: Path, raw: bytes) -> UserError:
    return UserError(f"{directory} is in use by another isotpp run ({_describe(raw)}): wait for it to finish, "
                     "stop it, or use another directory")


def acquire_lock(directory: Path) -> None:
    """Take ``directory``'s lock (re-entrant within a process); a UserError if another process holds it."""
    path = (directory / LOCK_NAME).absolute()
    if path in _held:
        _held[path][1] += 1
        return
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise storage_error(path, e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raw = _read(fd)
            os.close(fd)
            raise _in_use(directory, raw) from None
        except OSError as e:  # no flock here (some network file systems): fall back on the recorded pid
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                os.close(fd)
                raise
            raw = _read(fd)
            with contextlib.suppress(ValueError, UnicodeDecodeError):
                owner = json.loads(raw.decode()) if raw else None
                if isinstance(owner, dict) and owner.get("pid") != os.getpid() and _alive(owner):
                    os.close(fd)
                    raise _in_use(directory, raw) from None
        try:  # the previous owner may have removed the file between our open and our lock: lock the new one
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        previous = _read(fd)
        if previous.strip():
            log.info("took over the lock of %s, which ended without releasing it", _describe(previous))
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(_owner()).encode() + b"\n")
        _held[path] = [fd, 1]
        return


def release_lock(directory: Path) -> None:
    path = (directory / LOCK_NAME).absolute()
    entry = _held.get(path)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] > 0:
        return
    del _held[path]
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # while still holding it: whoever opened the old file retries on the new one
    os.close(entry[0])


@contextlib.contextmanager
def locked(directory: str | os.PathLike) -> Iterator[Path]:
    """Hold ``directory``'s lock (created if need be) for the block."""
    directory = check_path(directory)
    _mkdir(directory)
    acquire_lock(directory)
    try:
        yield directory
    finally:
        release_lock(directory)


# --------------------------------------------------------------------------
# Multi-file commits.
# --------------------------------------------------------------------------


class Commit:
    """Files that appear together or not at all, under ``root``.

        with Commit(out) as c:
            save_model(c.path(out / "seed0/base.npz"), model)
            write_json(c.path(out / "seed0/base.json"), info)

    Inside the block the writers write staged copies (``c.path``); on a clean
    exit a marker commits them and they are moved into place. An exception
    (or a kill) before the marker discards the staged files; a kill while
    moving is completed by :func:`recover` (every :func:`open_run` calls it).
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.dir = self.root / STAGING_NAME / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._files: list[str] = []

    def path(self, final: str | os.PathLike) -> Path:
        rel = Path(final).relative_to(self.root).as_posix()
        if rel not in self._files:
            self._files.append(rel)
        return self.dir / rel

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            return
        missing = [f for f in self._files if not (self.dir / f).exists()]
        if missing:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise RuntimeError(f"staged files never written: {missing}")
        if self._files:
            write_json(self.dir / _COMMITTED, self._files)
            _move_into_place(self.root, self.dir)
        shutil.rmtree(self.dir, ignore_errors=True)


def _move_into_place(root: Path, staged: Path) -> None:
    for rel in read_json(staged / _COMMITTED):
        src, dst = staged / rel, root / rel
        if not src.exists():
            continue  # moved before an interruption
        faults.at("before", dst)
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
        except OSError as e:
            raise storage_error(dst, e) from None
        faults.at("after", dst)


def recover(root: Path) -> None:
    """Complete the committed and discard the uncommitted :class:`Commit` s an interrupted run left in ``root``,
    and remove the temporary files of interrupted atomic writes."""
    staging = root / STAGING_NAME
    if staging.is_dir():
        for d in sorted(staging.iterdir()):
            if (d / _COMMITTED).is_file():
                _move_into_place(root, d)
            shutil.rmtree(d, ignore_errors=True)
        with contextlib.suppress(OSError):
            staging.rmdir()
    for tmp in root.rglob(".*.tmp"):
        if _TEMPORARY.fullmatch(tmp.name) and tmp.is_file():  # only names isotpp's atomic writes give
            with contextlib.suppress(OSError):
                tmp.unlink()


# --------------------------------------------------------------------------
# Settings and the run directory.
# --------------------------------------------------------------------------


def _show(v: Any) -> str:
    text = json.dumps(v) if not isinstance(v, str) else repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _as_recorded(value: Any) -> Any:
    return json.loads(json.dumps(value))  # tuples as lists, keys as strings: what the file holds


def settings_difference(old: Mapping[str, Any], new: Mapping[str, Any], reusable: Sequence[str] = (),
                        defaults: Mapping[str, Any] | None = None) -> list[str]:
    """``key (X there, Y here)`` for every setting outside ``reusable`` that differs (or exists on one side only).

    A setting ``old`` lacks while ``new`` holds its value in ``defaults`` is no
    difference: the record was written before the setting existed, when the
    run behaved as the default does now.
    """
    new = _as_recorded(new)
    defaults = _as_recorded(defaults or {})
    out = []
    for k in sorted(set(old) | set(new)):
        if k in reusable:
            continue
        if k not in old and k in new and k in defaults and new[k] == defaults[k]:
            continue
        if k not in old or k not in new or old[k] != new[k]:
            there = _show(old[k]) if k in old else "absent"
            here = _show(new[k]) if k in new else "absent"
            out.append(f"{k} ({there} there, {here} here)")
    return out


def renamed_keys(old: Mapping[str, Any], renamed: Mapping[str, str]) -> dict[str, Any]:
    """``old`` with every key of ``renamed`` (an older version's name) under its new name."""
    return {renamed.get(k, k): v for k, v in old.items()}


def _mkdir(path: Path) -> Path | None:
    """Create ``path`` and its parents; returns the topmost directory created (None if it existed)."""
    top = None
    for p in [path, *path.parents]:
        if p.exists():
            break
        top = p
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create directory {path}: {e.strerror}; choose a writable path") from None
    return top


class RunDir:
    """An opened run directory (see :func:`open_run`); ``settings`` is what :meth:`record` writes."""

    def __init__(self, path: Path, settings: Mapping[str, Any], section: str | None, main: bool, *,
                 kind: str = "run", recorded: Mapping[str, Any] | None = None):
        self.path, self.settings, self.section, self.main = path, dict(settings), section, main
        self.kind, self.recorded = kind, recorded  # recorded: the settings config.json held (None: a new run)
        self.had_settings = (path / SETTINGS_NAME).exists()

    def check_data(self, identity: Mapping[str, Any]) -> None:
        """Refuse data other than those the run was started on; ``identity``
        (:func:`isotpp.data.identity.data_identity`) joins the settings :meth:`record` writes.

        The same data read from another directory are accepted; a record
        without data (an older isotpp's) accepts any and is completed.
        """
        identity = _as_recorded(identity)
        old = (self.recorded or {}).get(DATA_KEY)
        if old is not None and old != identity:
            raise UserError(f"{self.path} holds a {self.kind} started on other data ({describe_identity(old)} there, "
                            f"{describe_identity(identity)} here): give it the data it was started on (data_dir), "
                            "use another directory, or delete it to start afresh")
        self.settings[DATA_KEY] = identity

    def record(self) -> None:
        """Write the settings (``config.json``; process 0): call it once every check has passed, before any
        other write. If the call fails before anything else is written, :func:`open_run` removes it again."""
        if self.main and self.recorded != _as_recorded(self.settings):  # a finished run's record stays untouched
            write_json(self.path / SETTINGS_NAME, {self.section: self.settings} if self.section else self.settings)

    def rollback(self) -> None:
        """After a failure: remove the settings this call recorded if nothing else was written beside them."""
        settings = self.path / SETTINGS_NAME
        alone = {SETTINGS_NAME, LOCK_NAME, STAGING_NAME}
        if not self.had_settings and settings.exists() and {p.name for p in self.path.iterdir()} <= alone:
            settings.unlink()


def _remove_created(top: Path | None, path: Path) -> None:
    """Remove the empty directories from ``path`` up to ``top`` (the ones this call created)."""
    if top is None:
        return
    for p in [path, *path.parents]:
        with contextlib.suppress(OSError):
            p.rmdir()
        if p == top:
            break


@contextlib.contextmanager
def open_run(path: str | os.PathLike | None, settings: Mapping[str, Any], *, kind: str,
             reusable: Sequence[str] = (), section: str | None = None,
             defaults: Mapping[str, Any] | None = None,
             renamed: Mapping[str, str] | None = None) -> Iterator[RunDir]:
    """Lock ``path``, repair what an interrupted run left, and refuse it if it holds other settings.

    ``settings``: the JSON-able settings of this run; ``reusable``: those that
    may differ between calls (a moved data directory, a progress bar);
    ``defaults``: each setting's default, which a record without the setting
    is taken to hold (a directory written before the setting existed);
    ``section``: compare with (and record under) this key of ``config.json``
    (``isotpp train`` shares the file with the trainer's own record); ``kind``
    names the run in messages ("pruning run", "study"); ``renamed`` maps the
    settings keys of older isotpp versions to today's (their directories
    still resume, and are recorded with today's keys). Only process 0 of a
    multi-host job locks and repairs (the others only compare).
    """

    path = check_path(path)
    main = parallel.is_main_process()
    top = _mkdir(path) if main else None
    run = None
    try:
        if main:
            acquire_lock(path)
        try:
            if main:
                recover(path)
            settings_file = path / SETTINGS_NAME
            old = None
            if settings_file.exists():
                old = read_json(settings_file)
                if section is not None:
                    old = old.get(section) if isinstance(old, dict) else None
                if not isinstance(old, dict):
                    raise UserError(f"{path} holds something other than a {kind} ({settings_file} has no "
                                    "settings of one): use another directory")
                diff = settings_difference(renamed_keys(old, renamed or {}), settings, (*reusable, DATA_KEY),
                                           defaults)  # data: check_data
                if diff:
                    shown = "; ".join(diff[:4]) + ("; ..." if len(diff) > 4 else "")
                    raise UserError(f"{path} holds a {kind} with a different {shown}: use another directory, "
                                    "or delete it to start afresh")
            run = RunDir(path, settings, section, main, kind=kind, recorded=old)
            yield run
        except BaseException:
            if main:  # still under the lock: leave the directory as this call found it, if nothing was made
                with contextlib.suppress(OSError):
                    (path / STAGING_NAME).rmdir()
                if run is not None:
                    run.rollback()
            raise
        finally:
            if main:
                release_lock(path)
    except BaseException:
        if main:
            _remove_created(top, path)
        raise
