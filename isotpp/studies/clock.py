"""A study's wall time across invocations.

Studies resume: a second call finishes what the first left and reuses what it
finished, so the time of the last call alone says little about what the study
cost. :class:`StudyClock` keeps the total in ``<out>/wall.json`` and adds to it
each time work is saved (:meth:`StudyClock.tick`), so an interrupted call
still counts up to the last piece of work it kept.
"""

from __future__ import annotations

import time
from pathlib import Path

from isotpp.errors import UserError
from isotpp.storage.atomic import read_json, write_json


class StudyClock:
    """``total_s``: seconds spent on the study in ``out`` over every call so far, up to the last
    :meth:`tick`; ``invocation_s``: seconds since this clock started."""

    def __init__(self, out: str | Path):
        self.path = Path(out) / "wall.json"
        total = read_json(self.path).get("wall_s", 0.0) if self.path.exists() else 0.0
        if isinstance(total, bool) or not isinstance(total, (int, float)) or total < 0:
            raise UserError(f"{self.path} holds no wall time (\"wall_s\": {total!r}): delete it to restart the count")
        self.total_s = float(total)
        self._start = self._last = time.time()

    def tick(self) -> float:
        """Add the time since the last tick to the total and save it; returns the total."""
        now = time.time()
        self.total_s += now - self._last
        self._last = now
        write_json(self.path, {"wall_s": self.total_s})
        return self.total_s

    @property
    def invocation_s(self) -> float:
        return time.time() - self._start
