"""Refusing work that cannot fit in memory, before it is allocated."""

from __future__ import annotations

import os

from isotpp.errors import UserError
from isotpp.files import fmt_bytes

__all__ = ["available_bytes", "parameter_count", "require", "require_for_training"]


def available_bytes() -> int:
    """Memory this process can still get: ``MemAvailable`` of /proc/meminfo, else the physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError, AttributeError):
        return 1 << 62  # unknown: refuse nothing


def require(nbytes: float, what: str, fix: str) -> None:
    """Raise a one-line UserError when ``nbytes`` exceed the memory available.

    ``what`` names the allocation ("the inputs (1,000,000,000 x 1024 float32)"),
    ``fix`` what to lower.
    """
    available = available_bytes()
    if nbytes > available:
        raise UserError(f"{what} would need {fmt_bytes(nbytes)} of memory, more than the {fmt_bytes(available)} "
                        f"available: {fix}")


def parameter_count(model) -> int:
    """Elements of every variable of an (abstract or concrete) NNX model."""
    import math

    from flax import nnx

    return sum(math.prod(v.shape) for _, v in nnx.to_flat_state(nnx.state(model)))


def require_for_training(model, what: str, fix: str) -> None:
    """Refuse to train a model whose weights, gradients and optimiser state (4 float32 copies) cannot fit."""
    n = parameter_count(model)
    require(16 * n, f"training {what} ({n:,} parameters)", fix)
