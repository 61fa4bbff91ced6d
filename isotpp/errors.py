"""User-facing errors, and the one check of a non-negative number the library shares.

Anything a user can cause (a bad argument, a missing or corrupt file, a shape
mismatch) raises :class:`UserError` with a one-line message that says what went
wrong and what to do. The CLI turns it into that line on stderr and exit code 2;
library callers can catch it like any exception.
"""

import math


class UserError(Exception):
    """A problem with the user's input, reported as one actionable line."""

    exit_code = 2


class DataError(UserError):
    """A data file is missing, truncated or corrupt."""


def nonnegative(name: str, value) -> float:
    """``value`` as a finite float >= 0, else a UserError naming ``name``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v < 0:
        raise UserError(f"{name} must be a finite number >= 0, got {value!r}")
    return v
