"""User-facing errors.

Anything a user can cause (a bad argument, a missing or corrupt file, a shape
mismatch) raises :class:`UserError` with a one-line message that says what went
wrong and what to do. The CLI turns it into that line on stderr and exit code 2;
library callers can catch it like any exception.
"""


class UserError(Exception):
    """A problem with the user's input, reported as one actionable line."""

    exit_code = 2


class DataError(UserError):
    """A data file is missing, truncated or corrupt."""
