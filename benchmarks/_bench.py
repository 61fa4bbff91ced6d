"""Helpers shared by the benchmark scripts: workers in their own processes, peak memory, formatting."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys


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


def run_worker(script: str, *args: str) -> dict:
    """Run ``script --worker ...`` in a fresh process (its own peak memory, XLA flags) and return its JSON line."""
    p = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, check=False,
                       cwd=os.path.dirname(os.path.abspath(script)))
    if p.returncode:
        sys.stderr.write(p.stderr[-4000:])
        raise SystemExit(f"worker {' '.join(args)} failed")
    return json.loads(p.stdout.strip().splitlines()[-1])


def emit(result: dict) -> None:
    """A worker's last stdout line: its result, with the peak memory of its process."""
    peak, source = peak_memory()
    print(json.dumps({**result, "peak_bytes": peak, "peak_source": source}), flush=True)


def machine() -> str:
    names = []
    try:
        with open("/proc/cpuinfo") as fh:
            names = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
    except OSError:
        pass
    cpu = f"{len(names)} × {names[0]}" if names else (platform.processor() or platform.machine())
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{cpu}; load average {load:.1f} at start (contended when above the core count)"


def mib(b: float) -> str:
    return f"{b / 2**20:,.0f} MiB"
