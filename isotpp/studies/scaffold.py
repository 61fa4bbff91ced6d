"""What every study shares: its settings, its run directory, its resumable cells, its clock and its report.

A study is a grid of *cells* (a method at a learning rate, a method at a
density, ...) computed in a run directory that it may leave and resume at
any time. The scaffolding around the grid is the same for each of them:

* :class:`StudySettings` — the base of a study's frozen config dataclass:
  validation of the shared fields, :meth:`~StudySettings.to_dict` (the
  settings record, a plain dict), :meth:`~StudySettings.quick_config` (the
  reduced schedule), the fields that may differ between calls sharing one
  directory (``REUSABLE``) and the settings keys of older isotpp versions
  (``RENAMED``, mapped on read so their directories still resume);
* :func:`run_study` — locks the directory, refuses one that holds another
  study, loads the data before anything is written, records the settings and
  hands a :class:`Study` to the study's own body; SIGTERM stops it at the
  next check with :class:`~isotpp.preemption.Preempted`;
* :class:`Study` — the cell store (a cell is computed once, committed
  atomically with :class:`~isotpp.studies.rundir.Commit` and read back on a rerun),
  the wall clock over every call (:class:`~isotpp.studies.clock.StudyClock`),
  the metrics file (``metrics.jsonl``, the engine's
  :class:`~isotpp.training.metrics.MetricsWriter` with time stamps) and :meth:`Study.finish`, which writes
  ``results.json`` and the report (table and figure).

The paper-table runner (:mod:`isotpp.studies.paper_tables`) uses the cell store's
conventions too: a cell is finished when its record exists.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar

from isotpp.errors import UserError
from isotpp.preemption import sigterm_stops
from isotpp.storage.atomic import read_json, write_json
from isotpp.studies.clock import StudyClock
from isotpp.studies.rundir import Commit, open_run
from isotpp.training.engine import LRSchedule
from isotpp.training.metrics import MetricsWriter

logger = logging.getLogger(__name__)

RESUME_HINT = "run the same command again to continue"

C = TypeVar("C", bound="StudySettings")


class StudySettings:
    """Base of a study's config (a frozen dataclass): the checks, the record and the quick schedule they share.

    Subclasses set ``REUSABLE`` (fields that may differ between calls sharing a
    directory), ``QUICK`` (the overrides of :meth:`quick_config`),
    ``POSITIVE`` (integer fields that must be at least 1), ``SCHEDULES``
    (fields holding ``epoch:lr`` schedules), ``RENAMED`` (old settings key →
    today's field) and override :meth:`check` for the rest.
    """

    REUSABLE: ClassVar[tuple[str, ...]] = ("seeds", "methods", "data_dir")
    QUICK: ClassVar[Mapping[str, Any]] = {}
    POSITIVE: ClassVar[tuple[str, ...]] = ()
    SCHEDULES: ClassVar[tuple[str, ...]] = ()
    RENAMED: ClassVar[Mapping[str, str]] = {}

    def check(self) -> None:
        """The study's own checks (raise :class:`~isotpp.errors.UserError`)."""

    def validate(self) -> Self:
        """``self`` if every setting is usable, else :class:`~isotpp.errors.UserError` naming the first that is not."""
        if not self.seeds:
            raise UserError("no seeds: give at least one, e.g. seeds=(0,)")
        self.check()
        for name in self.SCHEDULES:
            value = getattr(self, name)
            for text in (dict(value).values() if isinstance(value, tuple) else (value,)):
                LRSchedule.parse(text)
        for name in self.POSITIVE:
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")
        return self

    def to_dict(self) -> dict[str, Any]:
        """The settings record (``config.json``, ``results.json["config"]``): a plain, JSON-able dict."""
        d = dataclasses.asdict(self)
        if "lr_schedules" in d:
            d["lr_schedules"] = dict(self.lr_schedules)
        return d

    @classmethod
    def quick_config(cls, **overrides) -> Self:
        """The study's reduced schedule (``QUICK``), with ``overrides`` on top (old names accepted, ``RENAMED``)."""
        overrides = {cls.RENAMED.get(k, k): v for k, v in overrides.items()}
        return cls(**({**cls.QUICK, "quick": True} | overrides))


def slug(name: str) -> str:
    """A method name as a file or directory name (``L1+OrthP`` → ``L1_plus_OrthP``)."""
    return name.replace("+", "_plus_").replace("/", "_")


@dataclasses.dataclass
class Study:
    """An opened study directory: the cell store, the clock, the metrics file and the log."""

    config: Any
    out: Path
    log: Callable[[str], None]
    progress: bool = True
    clock: StudyClock = dataclasses.field(init=False)
    record: MetricsWriter = dataclasses.field(init=False)

    def __post_init__(self):
        self.clock = StudyClock(self.out)
        self.record = MetricsWriter(self.out / "metrics.jsonl", timestamps=True)

    def cell(self, path: Path) -> dict[str, Any] | None:
        """The committed record at ``path`` (None while it is not computed)."""
        return read_json(path) if path.exists() else None

    def cached(self, path: Path, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The record at ``path``: read back, or computed now, committed and counted on the clock."""
        found = self.cell(path)
        if found is None:
            found = compute()
            self.save({path: found})
        return found

    @contextlib.contextmanager
    def commit(self) -> Iterator[Commit]:
        """A :class:`~isotpp.studies.rundir.Commit` into the study directory; the clock ticks once it is in place."""
        with Commit(self.out) as commit:
            yield commit
        self.clock.tick()

    def save(self, records: Mapping[Path, dict[str, Any]]) -> None:
        """Commit several records together (the cells of one vmapped group appear at once, or not at all)."""
        with self.commit() as commit:
            for path, record in records.items():
                write_json(commit.path(path), record)

    def finish(self, results: dict[str, Any], write_report: Callable[[dict, Path], dict[str, Path]]) -> dict:
        """Add the wall times, write ``results.json`` and the report; returns ``results`` with its ``files``."""
        results["wall_s"] = self.clock.tick()  # over every call that worked on the study
        results["invocation_s"] = self.clock.invocation_s
        write_json(self.out / "results.json", results)
        paths = write_report(results, self.out)
        results["files"] = {k: str(v) for k, v in paths.items()} | {"results": str(self.out / "results.json")}
        return results


D = TypeVar("D")


def run_study(config: StudySettings, out: str | Path, *, load_data: Callable[[Any], D],
              body: Callable[[Study, D], dict[str, Any]], progress: bool = True,
              log: Callable[[str], None] | None = None, check: Callable[[Any], None] | None = None,
              reusable: tuple[str, ...] = (), identity: Callable[[D], Any] | None = None) -> dict[str, Any]:
    """Open ``out`` for the study ``config`` describes and run ``body(study, data)`` in it.

    ``out`` is locked while the study runs and refused if it holds a study
    with other settings (``config.REUSABLE`` and ``reusable`` may differ;
    keys of older versions are read through ``config.RENAMED``). ``check``
    (the given files) and ``load_data`` run before anything is written; then
    the settings are recorded and ``body`` computes what is missing.
    ``identity(data)`` (:func:`isotpp.data.identity.data_identity`) is
    recorded with the settings: a rerun on other data is refused. A setting
    an older record lacks counts as its default (``type(config)()``).
    """
    log = log or logger.info  # the command line passes print
    config = config.validate()
    with sigterm_stops(RESUME_HINT), open_run(out, config.to_dict(), kind="study",
                                              reusable=(*config.REUSABLE, *reusable), renamed=config.RENAMED,
                                              defaults=type(config)().to_dict()) as run:
        if check is not None:
            check(config)
        data = load_data(config)
        if identity is not None:
            run.check_data(identity(data))
        run.record()
        return body(Study(config, run.path, log, progress), data)
