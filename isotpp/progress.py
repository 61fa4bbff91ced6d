"""One progress convention for the studies, the Trainer and the commands.

On a terminal, :func:`progress` is a tqdm bar on stderr. Anywhere else (nohup,
Slurm, ``| tee``, a notebook's captured stderr) a bar's ``\\r`` frames would
fill log files, so it becomes a line on the ``isotpp`` logger every
``interval`` seconds (``$ISOTPP_PROGRESS_INTERVAL``, default 30), and one more
with the final count when it closes after having beaten at least once: a
heartbeat that says where a long run is, and silence for short steps::

    >>> import logging
    >>> from isotpp.progress import progress
    >>> with progress(3, "demo", unit="ep", tty=False, interval=0) as bar:
    ...     for epoch in range(3):
    ...         bar.update()  # one INFO line per update with interval=0

Library code never prints: silence everything with
``logging.getLogger("isotpp").setLevel(logging.WARNING)``; the command line
shows INFO lines on stderr (:func:`configure_logging`).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

from tqdm import tqdm

__all__ = ["LogProgress", "configure_logging", "progress"]

log = logging.getLogger("isotpp.progress")

DEFAULT_INTERVAL_S = 30.0


def _interval_from_env() -> float:
    try:
        return max(0.0, float(os.environ.get("ISOTPP_PROGRESS_INTERVAL", DEFAULT_INTERVAL_S)))
    except ValueError:
        return DEFAULT_INTERVAL_S


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class LogProgress:
    """tqdm's ``update``/``set_postfix``/``close`` API, writing periodic log lines instead of frames."""

    def __init__(self, total: int | None, desc: str, unit: str = "it", *, initial: int = 0,
                 interval: float | None = None, logger: logging.Logger | None = None):
        self.total, self.desc, self.unit = total, desc, unit
        self.n = initial
        self.interval = _interval_from_env() if interval is None else interval
        self.logger = logger or log
        self._start_n = initial
        self._t0 = self._last = time.monotonic()
        self._postfix = ""
        self._closed = False
        self._logged_n = initial

    def line(self) -> str:
        """The status line: ``desc: n/total unit (pct), rate, eta, postfix``."""
        elapsed = time.monotonic() - self._t0
        done = self.n - self._start_n
        parts = [f"{self.desc}: {self.n}" + (f"/{self.total}" if self.total else "") + f" {self.unit}"]
        if self.total:
            parts[0] += f" ({100.0 * self.n / self.total:.0f} %)"
        if done > 0 and elapsed > 0:
            per = elapsed / done
            parts.append(f"{per:.3g} s/{self.unit}" if per >= 1 else f"{1 / per:.3g} {self.unit}/s")
            if self.total and self.n < self.total:
                parts.append(f"eta {_duration(per * (self.total - self.n))}")
        parts.append(f"elapsed {_duration(elapsed)}")
        if self._postfix:
            parts.append(self._postfix)
        return ", ".join(parts)

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last, self._logged_n = now, self.n
            self.logger.info(self.line())

    def set_postfix(self, **values: Any) -> None:
        self._postfix = " ".join(f"{k}={v}" for k, v in values.items())

    def refresh(self) -> None:
        """Accept tqdm's ``bar.n = k; bar.refresh()`` idiom."""
        self.update(0)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            # a heartbeat ends with the final count; a bar that never beat (shorter than the interval) stays
            # silent, so a short step or a failure adds no line to a command's output
            if self._logged_n != self._start_n and self.n > self._logged_n:
                self.logger.info(self.line())

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Silent(LogProgress):
    def update(self, n: int = 1) -> None:
        self.n += n

    def close(self) -> None:
        self._closed = True


def progress(total: int | None, desc: str, unit: str = "it", *, enabled: bool = True, initial: int = 0,
             tty: bool | None = None, interval: float | None = None):
    """A progress bar for ``total`` steps: tqdm on a terminal, periodic log lines elsewhere.

    Args:
      enabled: False gives a bar that shows nothing (``progress=False`` in the
        library's functions, or a process other than the main one).
      tty: whether stderr is a terminal (default: ask it).
      interval: seconds between log lines off a terminal (default
        ``$ISOTPP_PROGRESS_INTERVAL`` or 30).

    Returns an object with tqdm's ``update(n)``, ``set_postfix(**kw)``,
    ``refresh()`` and ``close()``, usable as a context manager.
    """
    if not enabled:
        return _Silent(total, desc, unit, initial=initial)
    if tty is None:
        tty = bool(getattr(sys.stderr, "isatty", lambda: False)())
    if tty:

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=False, dynamic_ncols=True,
                    mininterval=0.5)
    return LogProgress(total, desc, unit, initial=initial, interval=interval)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at each record (pytest and notebooks swap it)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def configure_logging(level: int = logging.INFO) -> None:
    """Show the ``isotpp`` logger's records on stderr as ``isotpp: message`` (the command line's setting).

    Does nothing when the application already gave that logger a handler.
    """
    logger = logging.getLogger("isotpp")
    if logger.handlers:
        return
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("isotpp: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False  # third-party set-up (absl) may give the root logger a handler: print once
