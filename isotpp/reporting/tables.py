"""Readable tables of results."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence

import numpy as np


def fmt_number(x: float | None, digits: int = 4) -> str:
    """Fixed digits for ordinary magnitudes, scientific notation for tiny/huge ones."""
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "nan" if x is not None else "-"
    ax = abs(x)
    if ax != 0 and (ax < 10 ** -(digits - 1) or ax >= 1e6):
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}f}"


def mean_std(values: Sequence[float], digits: int = 2) -> str:
    """'mean ± std' with the population std (the papers' convention)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return "-"
    if v.size == 1:
        return fmt_number(float(v[0]), digits)
    return f"{fmt_number(float(v.mean()), digits)} ± {fmt_number(float(v.std()), digits)}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table with padded columns (readable as plain text)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])


def mean_std_fixed(values: Sequence[float | None], decimals: int = 2) -> str:
    """'mean ± std' (population std) in fixed-point notation for both numbers.

    For quantities with a natural unit such as accuracies in percent, where
    :func:`mean_std`'s switch to scientific notation for small numbers would
    print a small std as ``5.0e-02``. ``None`` counts as nan; no values give "-".
    """
    v = np.asarray([np.nan if x is None else x for x in values], dtype=np.float64)
    if v.size == 0:
        return "-"
    if v.size == 1:
        return f"{v[0]:.{decimals}f}"
    return f"{v.mean():.{decimals}f} ± {v.std():.{decimals}f}"


def csv_text(rows: Sequence[dict]) -> str:
    """Rows of one flat dict each as CSV text (header from the first row; ``None`` and NaN as empty cells).

    The tidy form a DataFrame reads directly: ``pandas.read_csv(path)``.

    >>> print(csv_text([{"method": "L1", "acc": 77.3}, {"method": "TPP", "acc": float("nan")}]), end="")
    method,acc
    L1,77.3
    TPP,
    """

    buf = io.StringIO()
    fields = list(rows[0]) if rows else []
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None or (isinstance(v, float) and math.isnan(v)) else v
                         for k, v in row.items()})
    return buf.getvalue()
