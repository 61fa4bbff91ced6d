"""Test-only fault injection: make a run die, stop or find its disk full at a chosen file.

The fault tests (``tests/test_faults.py``) set the environment variable

    ISOTPP_FAULT="ACTION:WHEN:SUFFIX[#N]"

and isotpp acts at the N-th time (default the first) it commits a file whose
path ends with SUFFIX (every atomic write, every file of a multi-file commit,
see :mod:`isotpp.studies.rundir`): WHEN is ``before`` or ``after`` the file replaces
its target; ACTION is ``kill`` (SIGKILL: the process vanishes), ``term``
(SIGTERM: the run stops at its next safe point and exits 75) or ``enospc``
(an ``OSError`` "No space left on device", as a full disk gives). Several
faults are separated by ``;``. Not for users: unset, it costs one lookup of
the environment per committed file.
"""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

ENV = "ISOTPP_FAULT"
_seen: dict[str, int] = {}


def _specs(text: str):
    for item in filter(None, (s.strip() for s in text.split(";"))):
        action, when, rest = item.split(":", 2)
        suffix, _, nth = rest.partition("#")
        yield item, action, when, suffix, int(nth or 1)


def at(when: str, path: str | os.PathLike) -> None:
    """The hook: called ``before`` and ``after`` a file is committed at ``path``."""
    text = os.environ.get(ENV)
    if not text:
        return
    name = Path(path).as_posix()
    for item, action, moment, suffix, nth in _specs(text):
        if moment != when or not name.endswith(suffix):
            continue
        _seen[item] = _seen.get(item, 0) + 1
        if _seen[item] != nth:
            continue
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif action == "term":
            os.kill(os.getpid(), signal.SIGTERM)
        elif action == "enospc":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), name)
        else:
            raise ValueError(f"{ENV}: unknown action {action!r} in {item!r}")
