"""Helpers shared by the benchmark scripts: workers in their own processes, peak memory, load, formatting.

Memory, as every benchmark reports it next to time:

* a worker's **peak** (:func:`peak_memory`): the device's ``peak_bytes_in_use``
  where the backend keeps it (GPU/TPU), the process's peak resident set size
  otherwise (CPU; it includes the runtime, ≈ 0.4–0.6 GiB for JAX or PyTorch).
  Peak RSS only grows within a process, so a per-row peak is a row's own only
  when the row runs in a fresh process (:func:`run_worker`);
* for rows that share one process, **XLA's memory analysis** of the row's
  compiled program (:func:`xla_bytes`: arguments + outputs + temporaries,
  what the program itself allocates, without the runtime).

Every figure is printed with the 1-minute load average (:func:`load_average`):
the machine is shared, and a figure taken at a load above the core count is
contended.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys


def configure_xla(flags: str | None = None) -> None:
    """The process's XLA flags, before its first JAX computation: ``flags`` (each replacing a flag of the same
    name already in ``XLA_FLAGS``), then ``isotpp.configure_cpu()`` as the ``isotpp`` command runs, which
    keeps any flag set explicitly."""
    import isotpp

    if flags:
        names = {f.split("=")[0] for f in flags.split()}
        kept = [f for f in os.environ.get("XLA_FLAGS", "").split() if f.split("=")[0] not in names]
        os.environ["XLA_FLAGS"] = " ".join([*kept, *flags.split()])
    isotpp.configure_cpu()


def peak_rss_bytes() -> int:
    """The process's peak resident set size (for workers that do not import JAX, e.g. PyTorch's)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def peak_memory() -> tuple[int, str]:
    """Device peak where the backend reports it, the process's peak RSS otherwise (isotpp.memory.peak_bytes)."""
    if "jax" in sys.modules:
        from isotpp.memory import peak_bytes

        return peak_bytes()
    return peak_rss_bytes(), "peak RSS"


def load_average() -> float:
    """The 1-minute load average (NaN where the platform has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def xla_bytes(jitted, *args, **kwargs) -> int:
    """Bytes XLA's memory analysis gives the compiled ``jitted(*args)`` (arguments + outputs + temporaries)."""
    from isotpp.memory import compiled_bytes

    return compiled_bytes(jitted.lower(*args, **kwargs).compile())


def run_worker(script: str, *args: str) -> dict:
    """Run ``script --worker ...`` in a fresh process (its own peak memory, XLA flags) and return its JSON line,
    with the load average when it started (``load_start``; the worker's own ``load`` is taken at its end)."""
    load_start = load_average()
    p = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, check=False,
                       cwd=os.path.dirname(os.path.abspath(script)))
    if p.returncode:
        sys.stderr.write(p.stderr[-4000:])
        raise SystemExit(f"worker {' '.join(args)} failed")
    return {**json.loads(p.stdout.strip().splitlines()[-1]), "load_start": load_start}


def emit(result: dict) -> None:
    """A worker's last stdout line: its result, with the peak memory of its process and the load average."""
    peak, source = peak_memory()
    print(json.dumps({**result, "peak_bytes": peak, "peak_source": source, "load": load_average()}), flush=True)


def machine() -> str:
    names = []
    try:
        with open("/proc/cpuinfo") as fh:
            names = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
    except OSError:
        pass
    cpu = f"{len(names)} × {names[0]}" if names else (platform.processor() or platform.machine())
    return f"{cpu}; load average {load_average():.1f} at start (contended when above the core count)"


def loads(rows: list[dict]) -> str:
    """The range of load averages over workers' results ('3.1–4.2')."""
    vals = [v for r in rows for v in (r.get("load_start"), r.get("load")) if v is not None]
    return f"{min(vals):.1f}–{max(vals):.1f}" if vals else "?"


def mib(b: float) -> str:
    return f"{b / 2**20:,.0f} MiB"
