"""Memory: refusing work that cannot fit before it is allocated, the process's peak, and chunk sizes under a budget.

:func:`require` refuses (one line) an allocation larger than the memory
available. :func:`peak_bytes` reads the device's own statistics where the
backend keeps them (``peak_bytes_in_use`` on GPU/TPU) and the process's peak
resident set size otherwise (CPU). :func:`chunk_for_budget` sizes the chunks of
a batched computation from XLA's memory analysis of the compiled program
(arguments, outputs and temporaries; what the program itself allocates, not
Python's or the runtime's overhead).
"""

from __future__ import annotations

import logging
import math
import os
import resource
import sys
from collections.abc import Callable

import jax
from flax import nnx

from isotpp.errors import UserError
from isotpp.storage.npz import fmt_bytes

__all__ = ["available_bytes", "chunk_for_budget", "compiled_bytes", "parameter_count", "peak_bytes", "require",
           "require_for_training"]

logger = logging.getLogger(__name__)


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
    return sum(math.prod(v.shape) for _, v in nnx.to_flat_state(nnx.state(model)))


def require_for_training(model, what: str, fix: str) -> None:
    """Refuse to train a model whose weights, gradients and optimiser state (4 float32 copies) cannot fit."""
    n = parameter_count(model)
    require(16 * n, f"training {what} ({n:,} parameters)", fix)


def peak_bytes() -> tuple[int, str]:
    """(peak bytes, source): device ``peak_bytes_in_use`` if the backend reports it, else the process's peak RSS."""
    try:
        stats = jax.devices()[0].memory_stats() or {}
    except Exception:  # noqa: BLE001 - backends without statistics raise or return None
        stats = {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), f"{jax.devices()[0].device_kind} peak"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024), "peak RSS"


def compiled_bytes(compiled) -> int:
    """Bytes a compiled XLA program holds at its peak: arguments + outputs + temporaries (aliased outputs once)."""
    m = compiled.memory_analysis()
    if m is None:
        raise UserError("this backend gives no memory analysis: pass chunk_size instead of memory_budget")
    return int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes)


def chunk_for_budget(compile_at: Callable[[int], object], n: int, budget: int, cap: int | None = None):
    """Largest chunk size ≤ min(n, cap) whose compiled program fits ``budget`` bytes, and that program.

    ``compile_at(k)`` returns the compiled program for chunks of k samples. The
    bytes are taken as linear in k from k = 1 and 2, the estimate checked by
    compiling it (halving until it fits).
    """
    if budget <= 0:
        raise UserError(f"memory_budget must be positive bytes, got {budget}")
    cap = min(n, cap or n)
    one = compile_at(1)
    b1 = compiled_bytes(one)
    if b1 > budget:
        raise UserError(
            f"one sample needs {b1 / 2**20:.0f} MiB, over memory_budget {budget / 2**20:.0f} MiB: "
            "raise memory_budget (or use the stochastic method, which needs less)"
        )
    if cap == 1:
        return 1, one
    two = compile_at(2)
    per = max(1, compiled_bytes(two) - b1)
    k = int(max(1, min(cap, 1 + (budget - b1) // per)))
    programs = {1: one, 2: two}
    while True:
        prog = programs.get(k) or compile_at(k)
        used = compiled_bytes(prog)
        if used <= budget or k == 1:
            logger.info("chunk of %d samples: %.0f MiB of %.0f MiB", k, used / 2**20, budget / 2**20)
            return k, prog
        k = max(1, k // 2)
