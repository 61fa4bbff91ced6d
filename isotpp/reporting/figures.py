"""Figures, drawn with matplotlib's Agg canvas (never a window, no pyplot state).

Every figure is written atomically: rendered into a temporary file in the target
directory, then moved over the target with :func:`os.replace`, so a crash or a
full disk never leaves a half-written PNG under the final name.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from isotpp.errors import UserError

__all__ = ["FORMATS", "PNG_DPI", "auto_log_x", "figure_format", "new_axes", "parse_formats", "save_figure",
           "save_figures"]

# a positive spectrum whose 99th/1st percentile ratio exceeds this is drawn on log-x
_LOG_X_SPREAD = 100.0

FORMATS = ("png", "pdf", "svg")
PNG_DPI = 200  # print quality; PDF and SVG are vector graphics


def figure_format(path) -> str:
    """The file format a figure path asks for, from its extension: 'png', 'pdf' or 'svg'.

    >>> figure_format("runs/demo/figure.pdf")
    'pdf'

    Raises:
      UserError: no extension, or one matplotlib is not asked to write here.
    """
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise UserError(f"cannot tell the figure format of {path}: end the file name in "
                        f"{', '.join('.' + f for f in FORMATS)}")
    return suffix


def parse_formats(text: str | None) -> tuple[str, ...]:
    """``'png,pdf'`` -> ``('png', 'pdf')``; None or empty -> ``()``.

    Raises:
      UserError: an unknown format.
    """
    formats = tuple(dict.fromkeys(f.strip().lower().lstrip(".") for f in (text or "").split(",") if f.strip()))
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise UserError(f"unknown figure format {bad[0]!r}: choose from {', '.join(FORMATS)}, e.g. 'png,pdf'")
    return formats


def new_axes(ax=None, figsize=(6.4, 4.4)):
    """``(figure, axes)``: ``ax`` and its figure when given, else a new Agg figure (no pyplot state)."""
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def save_figures(fig: Figure, path, formats=()) -> list[Path]:
    """Write ``fig`` once per format: ``path`` with each extension of ``formats`` (default: ``path`` as is)."""
    path = Path(path)
    targets = [path.with_suffix("." + f) for f in formats] if formats else [path]
    return [save_figure(fig, t) for t in targets]


def save_figure(fig: Figure, path) -> Path:
    """Write ``fig`` to ``path`` atomically, in the format its extension names; returns the path.

    PNG is rendered at :data:`PNG_DPI` dots per inch; PDF and SVG are vector
    files (fonts embedded as TrueType in PDF, text kept as text in SVG).
    """
    path = Path(path)
    fmt = figure_format(path)
    parent = path.parent
    if not parent.is_dir():
        raise UserError(f"cannot write figure {path}: directory {parent} does not exist; create it first")
    FigureCanvasAgg(fig)  # attach an Agg canvas whatever the global backend
    tmp = parent / f".{path.name}.{uuid.uuid4().hex}.tmp"  # same dir: os.replace is atomic
    try:
        with open(tmp, "xb") as fh:  # default permissions, unlike mkstemp's 0600
            fig.savefig(fh, format=fmt, dpi=PNG_DPI if fmt == "png" else "figure",
                        metadata=_METADATA[fmt])
        os.replace(tmp, path)
    except OSError as exc:
        raise UserError(f"cannot write figure {path}: {exc.strerror or exc}; check the path and free space") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return path


# no creation date in the files: the same figure gives the same bytes (diffable, cacheable)
_METADATA = {"png": {"Software": None}, "pdf": {"CreationDate": None}, "svg": {"Date": None}}


def auto_log_x(s: np.ndarray) -> bool:
    pos = s[s > 0]
    if pos.size < 2:
        return False
    lo, hi = np.percentile(pos, [1, 99])
    return hi / lo > _LOG_X_SPREAD







