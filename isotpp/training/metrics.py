"""The one metrics writer: ``metrics.jsonl``, one strict-JSON line per record, written by process 0 only.

Both training regimes write through it — the sharded :class:`isotpp.training.sharded.Trainer`
(one line per logged step and per epoch, in its workdir) and the studies
(:class:`isotpp.studies.scaffold.Study`: one line per epoch, phase or cell
event, stamped with ``time``) — so a metrics file looks the same wherever it
comes from::

    >>> import json, tempfile
    >>> from pathlib import Path
    >>> from isotpp.training.metrics import MetricsWriter
    >>> path = Path(tempfile.mkdtemp()) / "metrics.jsonl"
    >>> write = MetricsWriter(path)
    >>> write(epoch=0, step=10, loss=float("nan"))
    >>> json.loads(path.read_text())
    {'epoch': 0, 'step': 10, 'loss': None}

NaN/inf become ``null`` (strict JSON), NumPy and JAX scalars plain numbers.
On a process other than 0 (``jax.process_index() != 0``) every method does
nothing, so every process may call it. ``tensorboard=True`` also writes each
record's numbers as TensorBoard scalars into ``<directory>/tensorboard`` (the
optional ``tensorboardX`` package: ``pip install isotpp[tensorboard]``),
against the record's ``step`` (else ``iteration``, else ``epoch``) and named
after its string labels (``phase``, ``part``, ``method``, ``lr``):
``retrain/L1/0.01/test_acc``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax

from isotpp.errors import UserError
from isotpp.storage.atomic import jsonable, write_text

__all__ = ["MetricsWriter"]

logger = logging.getLogger(__name__)

STEP_KEYS = ("step", "iteration", "epoch")  # the x axis of a TensorBoard scalar, first found
GROUP_KEYS = ("phase", "part", "method", "lr")  # string labels that name a scalar's group (a study's cell)


class MetricsWriter:
    """Appends records to ``path`` as JSON lines (process 0 only); see the module docstring.

    ``timestamps``: add ``time`` (Unix seconds, ms resolution) first in every
    record, as the studies do. ``tensorboard``: also write TensorBoard scalars.
    """

    def __init__(self, path: str | Path, *, timestamps: bool = False, tensorboard: bool = False):
        self.path = Path(path)
        self.timestamps = timestamps
        self._tb = None
        self._tb_dir = self.path.parent / "tensorboard" if tensorboard else None
        if not self.active:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._tb_dir is not None:
            self._tb = _tensorboard_writer(self._tb_dir)  # now: a missing tensorboardX is said before training

    @property
    def active(self) -> bool:
        """Whether this process writes (process 0)."""
        return jax.process_index() == 0

    def __call__(self, **record: Any) -> None:
        self.write(record)

    def write(self, record: Mapping[str, Any]) -> None:
        """Append one record (a flat mapping of JSON-able values)."""
        if not self.active:
            return
        if self.timestamps:
            record = {"time": round(time.time(), 3), **record}
        record = jsonable(dict(record))
        with open(self.path, "a") as f:
            f.write(json.dumps(record, allow_nan=False) + "\n")
            f.flush()
        if self._tb_dir is not None:
            self._scalars(record)

    def _scalars(self, record: dict[str, Any]) -> None:
        if self._tb is None:  # closed (a trainer closes its writers after restoring): a new event file
            self._tb = _tensorboard_writer(self._tb_dir)
        step = next((record[k] for k in STEP_KEYS if isinstance(record.get(k), int)), 0)
        prefix = "/".join(record[k] for k in GROUP_KEYS if isinstance(record.get(k), str))
        for key, value in record.items():
            if key in STEP_KEYS or key == "time" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            self._tb.add_scalar(f"{prefix}/{key}" if prefix else key, value, step)
        self._tb.flush()

    def trim(self, up_to_step: int) -> None:
        """Drop the records with ``step`` > ``up_to_step`` and any line cut by a kill (a resumed run writes
        them again)."""
        if not self.active or not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= up_to_step:
                    kept.append(line)
            except json.JSONDecodeError:
                continue
        write_text(self.path, "".join(k + "\n" for k in kept))

    def close(self) -> None:
        """Flush and close the TensorBoard event file (a later record opens a new one)."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _tensorboard_writer(directory: Path):
    try:  # optional dependency (the `tensorboard` extra), imported only when asked for
        from tensorboardX import SummaryWriter
    except ImportError:
        raise UserError("tensorboard=True needs the tensorboardX package: pip install 'isotpp[tensorboard]'") from None
    return SummaryWriter(str(directory))
