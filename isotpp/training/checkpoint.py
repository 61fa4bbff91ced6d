"""Training checkpoints with orbax: the whole state of a run, preemption-safe.

A checkpoint directory holds one sub-directory per saved step (orbax's
``CheckpointManager``; the newest ``max_to_keep`` are kept) with two items:

* ``state``: the pytree of arrays — parameters, BatchNorm statistics, the
  optimiser state (so a pruning method's state: TPP's iteration, reg, phase,
  masks), the step counter and the RNG key data — restored directly with the
  shardings of the running job;
* ``meta``: JSON — the model's build config and widths (what rebuilds a pruned
  architecture), the pruning plan and method, the epoch and the position in
  it, the data order's seed, the metrics history.

Atomicity is orbax's: a step is written to a temporary directory and renamed
when complete, so a run killed in the middle of a save leaves the previous
step as the latest (the temporary directory is cleaned up next time). A step
that was finalised but is unreadable later (a truncated file, a disk error)
is detected when restoring: it is set aside as ``corrupt-<step>`` and the
previous one is used, with a warning.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import shutil
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from isotpp import parallel
from isotpp.errors import UserError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1

# Third-party loggers that narrate failures isotpp handles itself (a full disk, a damaged checkpoint that
# is set aside): kept off stderr unless the user configured them.
_QUIET_LOGGERS = ("absl", "orbax", "asyncio")


def _quiet_third_party() -> None:
    for name in _QUIET_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.CRITICAL)
    if not getattr(sys.unraisablehook, "isotpp_filter", False):
        sys.unraisablehook = _unraisable_filter(sys.unraisablehook)


def _unraisable_filter(previous):
    """A sys.unraisablehook that drops the "Event loop is closed" callbacks a failed orbax read leaves behind
    (tensorstore completing into asyncio loops orbax has closed: harmless), passing everything else on."""

    def hook(info):
        if isinstance(info.exc_value, RuntimeError) and str(info.exc_value) == "Event loop is closed":
            return
        previous(info)

    hook.isotpp_filter = True
    return hook


def _is_disk_full(error: BaseException) -> bool:
    seen = set()
    stack = [error]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "RESOURCE_EXHAUSTED" in str(e) or "No space left on device" in str(e):
            return True
        stack += [e.__cause__, e.__context__, *getattr(e, "exceptions", ())]
    return False


def abstract_like(tree: Any) -> Any:
    """Shapes, dtypes and shardings of ``tree``'s arrays: the restore target."""

    def leaf(x):
        sharding = getattr(x, "sharding", None)
        return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)

    return jax.tree.map(leaf, tree)


class TrainCheckpointer:
    """Saves and restores (state pytree, JSON metadata) by step in ``directory``.

    ``max_to_keep``: newest checkpoints kept (at least 2, so a corrupt latest
    one has a predecessor). ``async_save``: arrays are copied off the devices
    before :meth:`save` returns and written in the background (the training
    step may donate its buffers right away); :meth:`wait` blocks until done.
    Every process calls every method (orbax coordinates the writes).
    """

    def __init__(self, directory: str | Path, *, max_to_keep: int = 2, async_save: bool = True):
        if max_to_keep < 2:
            raise UserError(f"max_to_keep must be at least 2 (got {max_to_keep}): "
                            "a corrupt checkpoint needs a fallback")
        self.directory = Path(directory).absolute()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create the checkpoint directory {self.directory}: {e.strerror}") from None
        _quiet_third_party()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=True,
            cleanup_tmp_directories=True,
            enable_async_checkpointing=async_save,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    # ------------------------------------------------------------------

    def steps(self) -> list[int]:
        """Finalised checkpoint steps, oldest first."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Write ``state`` and ``meta`` as checkpoint ``step`` (a step saved already is left as it is)."""
        if step in self._manager.all_steps():
            return
        meta = {"format": FORMAT_VERSION, "step": int(step), **meta}
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        with self._storage():
            self._manager.save(int(step), args=args, force=True)

    @contextlib.contextmanager
    def _storage(self) -> Iterator[None]:
        """A full disk while writing (now or in the background) as one line; the older checkpoints stay."""
        try:
            yield
        except Exception as e:
            if not _is_disk_full(e):
                raise
            kept = self.steps()
            where = f"; the checkpoint of step {kept[-1]} is kept" if kept else ""
            raise UserError(f"cannot write a checkpoint in {self.directory}: no space left on device{where}; free "
                            "some space, then run the same command again (with --resume) to continue") from None

    def restore(self, target: Any, step: int | None = None,
                check: Callable[[dict[str, Any]], None] | None = None) -> tuple[int, Any, dict[str, Any]] | None:
        """(step, state, meta) of the newest readable checkpoint, or None when there is none.

        ``target``: the state pytree of the running job (arrays or
        :func:`abstract_like`), which fixes structure, dtypes and shardings.
        ``check(meta)`` runs before any array is read and may raise a
        UserError (another architecture, another batch size): that is the
        user's mistake, not a damaged checkpoint, and nothing is set aside.
        An unreadable step is set aside and the one before it tried, with a
        warning; if none is readable, a UserError says so.
        """
        self.wait()
        abstract = abstract_like(target)
        candidates = [s for s in self.steps() if step is None or s == step]
        if step is not None and not candidates:
            raise UserError(f"no checkpoint for step {step} in {self.directory}: it has {self.steps() or 'none'}")
        failures = []
        for s in reversed(candidates):
            try:
                meta = self._manager.restore(s, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
                if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION or meta.get("step") != s:
                    raise ValueError("metadata missing or from another format")
            except Exception as e:  # noqa: BLE001 - any unreadable checkpoint falls back to the previous one
                failures.append(self._unreadable(s, e))
                continue
            if check is not None:
                check(meta)
            try:
                state = self._manager.restore(s, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
                return s, state["state"], meta
            except Exception as e:  # noqa: BLE001
                failures.append(self._unreadable(s, e))
        if failures:
            raise UserError(f"no readable checkpoint in {self.directory} ({'; '.join(failures)}): "
                            "start again without --resume or restore the directory")  # fmt: skip
        return None

    def _unreadable(self, step: int, error: Exception) -> str:
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        # one line on stderr (no source line): the fallback worked, this is news, not a failure
        warnings.warn_explicit(f"checkpoint {self.directory / str(step)} is unreadable ({reason}); falling back "
                               "to the previous one", UserWarning, filename="isotpp", lineno=0)
        self._set_aside(step)
        return f"step {step}: {reason}"

    def _set_aside(self, step: int) -> None:
        """Move an unreadable step out of orbax's sight (kept for inspection) so it can be re-saved."""
        if parallel.is_main_process():
            src = self.directory / str(step)
            dst = self.directory / f"corrupt-{step}"
            if dst.exists():
                shutil.rmtree(dst, ignore_errors=True)
            try:
                src.rename(dst)
            except OSError as e:
                logger.warning("could not move the corrupt checkpoint %s aside (%s)", src, e.strerror)
        if jax.process_count() > 1:

            multihost_utils.sync_global_devices(f"isotpp-checkpoint-set-aside-{step}")
        self._manager.reload()

    def reached_preemption(self, step: int) -> bool:
        """Whether every process has reached the step at which to save for a preemption (multi-host)."""
        return self._manager.reached_preemption(step)

    def wait(self) -> None:
        """Block until background saves are finalised."""
        with self._storage():
            self._manager.wait_until_finished()

    def close(self) -> None:
        """Finish background writes and release orbax's threads."""
        with self._storage():
            self._manager.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
