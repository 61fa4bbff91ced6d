"""SIGTERM as a request to stop at the next safe point: keep what is finished, exit 75.

Every long-running command (``isotpp train``, ``isotpp prune``, each study)
runs inside :func:`sigterm_stops`: SIGTERM then only sets a flag. The trainer
checks it between steps (it saves a checkpoint first) and once more when a
stage ends; the pruning pipeline and the studies check it between their pieces
and inside their training loops (:func:`check`). Either way :class:`Preempted`
is raised, whatever was committed stays, whatever was in flight is dropped, and
the command line exits with :data:`PREEMPTED_EXIT_CODE` (sysexits' EX_TEMPFAIL,
"retry"); running the same command again continues exactly.

Only a single-process run in its main thread installs the handler; multi-host
training leaves SIGTERM to JAX's preemption service (the trainer asks orbax).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

# sysexits.h EX_TEMPFAIL: "temporary failure, retry"; the run is not finished, resume it.
PREEMPTED_EXIT_CODE = 75

_DEFAULT_HINT = "run again with --resume to continue"


class Preempted(Exception):
    """Stopped on SIGTERM after keeping what was finished; run the same command again to continue.

    ``step`` and ``directory``: the checkpoint saved (the trainer), else None.
    ``reported``: the message is on stderr already.
    """

    exit_code = PREEMPTED_EXIT_CODE

    def __init__(self, message: str, *, step: int | None = None, directory: Path | None = None):
        super().__init__(message)
        self.step, self.directory = step, directory
        self.reported = False


class _State:
    depth = 0
    requested = False
    previous = None
    hint = _DEFAULT_HINT


def _handle(signum, frame) -> None:
    _State.requested = True


def _single_process() -> bool:
    """Whether this is not one process of a multi-host JAX job, without starting a backend (a runner
    such as the table's must not claim an accelerator its children need)."""
    if "jax" not in sys.modules:
        return True
    try:
        from jax._src import (
            distributed,  # JAX is loaded already (checked above): never start it here
        )

        return distributed.global_state.client is None  # jax.distributed.initialize() was not called
    except (ImportError, AttributeError):  # another JAX layout: ask JAX itself
        import jax  # loaded already (checked above)

        return jax.process_count() == 1


@contextlib.contextmanager
def sigterm_stops(hint: str | None = None) -> Iterator[None]:
    """Within this block SIGTERM sets the stop flag instead of ending the process.

    Nested blocks share the outermost handler and its ``hint`` (what the
    message tells the user to do: the pruning pipeline and the studies say
    "run the same command again"); the flag is cleared when the outermost
    block ends, so a library caller can train again in the same process.
    """
    outermost = _State.depth == 0
    installed = False
    if outermost and threading.current_thread() is threading.main_thread() and _single_process():
        _State.previous = signal.signal(signal.SIGTERM, _handle)
        _State.hint = hint or _DEFAULT_HINT
        installed = True
    _State.depth += 1
    try:
        yield
    finally:
        _State.depth -= 1
        if outermost:
            if installed:
                signal.signal(signal.SIGTERM, _State.previous if _State.previous is not None else signal.SIG_DFL)
            _State.previous, _State.requested, _State.hint = None, False, _DEFAULT_HINT


def requested() -> bool:
    """Whether SIGTERM arrived inside :func:`sigterm_stops`."""
    return _State.requested


def hint() -> str:
    """What to tell the user to do after a stop (set by the outermost :func:`sigterm_stops`)."""
    return _State.hint


def check(kept: str = "finished pieces are kept") -> None:
    """Raise :class:`Preempted` if SIGTERM arrived; ``kept`` says what was saved (e.g. "finished pieces are in D")."""
    if _State.requested:
        raise Preempted(f"stopped by SIGTERM: {kept}; {_State.hint}")
