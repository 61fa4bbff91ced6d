"""The README's speed table, regenerated: isotpp against the PyTorch reference, timed in one run (a benchmark).

    python benchmarks/speed_table.py [--rounds 2] [--repeats 3] [--paired-runs 3] [--write docs/speed.md] [--json out.json]
    python benchmarks/speed_table.py --from-json out.json --write docs/speed.md

Runs the workers of ``bench_conv_step.py`` and ``bench_spectrum.py`` (each in
a fresh process, so each has its own peak memory: device statistics where the
backend has them, peak RSS on CPU, runtime included) for the rows of issue
16's table, isotpp's and the reference's workers interleaved in one run, the
order reversed every other round so that the machine's drift hits both alike.
Each figure is the median over rounds of the workers' medians, given with the
range of 1-minute load averages seen at the workers' starts and ends: the
machine is shared, and a load above its core count means contended figures.

``--paired-runs N`` adds a second table: N processes each timing isotpp's, the
reference's, the TPP and the former-default steps alternated
(``bench_conv_step.py --paired``), whose ratios scatter far less than those
of separate processes (±10 % here).

The Markdown table goes to stdout and, with ``--write FILE``, between the
markers ``<!-- speed-table:begin -->`` and ``<!-- speed-table:end -->`` of
FILE (docs/speed.md), from where the README's table is copied. ``--json``
keeps every worker's result; ``--from-json`` renders a table from such a file
without running anything.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile

from _bench import load_average, machine, mib, run_worker

HERE = os.path.dirname(os.path.abspath(__file__))
STEP, SPECTRUM = os.path.join(HERE, "bench_conv_step.py"), os.path.join(HERE, "bench_spectrum.py")
BEGIN, END = "<!-- speed-table:begin -->", "<!-- speed-table:end -->"

# worker id: (script, worker name, result key, unit scale to ms)
WORKERS = {
    "step": (STEP, "isotpp", "step_s", 1e3),
    "step-tpp": (STEP, "isotpp TPP", "step_s", 1e3),
    "step-torch": (STEP, "torch", "step_s", 1e3),
    "r56-gram": (SPECTRUM, "r56-gram", "ms", 1.0),
    "r56-gram-batch": (SPECTRUM, "r56-gram-batch", "ms", 1.0),
    "r56-jacobian": (SPECTRUM, "r56-jacobian", "ms", 1.0),
    "r56-floor": (SPECTRUM, "r56-floor", "ms", 1.0),
    "r56-floor-batch": (SPECTRUM, "r56-floor-batch", "ms", 1.0),
    "r56-torch": (SPECTRUM, "torch-r56", "ms", 1.0),
    "mlp-linear": (SPECTRUM, "mlp-linear", "ms", 1.0),
    "mlp-torch": (SPECTRUM, "torch-mlp", "ms", 1.0),
    # ideas tried against the profile (docs/speed.md), not defaults
    "step-legacy": (STEP, "isotpp legacy-emitters", "step_s", 1e3),
    "step-conc": (STEP, "isotpp conc-sched", "step_s", 1e3),
    "step-nnx-bn": (STEP, "isotpp nnx-bn", "step_s", 1e3),
    "r56-gram-batch-vmap": (SPECTRUM, "r56-gram-batch-vmap", "ms", 1.0),
    "step-ynn-off": (STEP, "isotpp ynn-off", "step_s", 1e3),
    "r56-gram-ynn-off": (SPECTRUM, "r56-gram-ynn-off", "ms", 1.0),
    "r56-gram-batch-ynn-off": (SPECTRUM, "r56-gram-batch-ynn-off", "ms", 1.0),
}

# table row: (label, isotpp worker, reference worker, floor worker or None, unit)
ROWS = {
    "step": ("ResNet56 training step, batch 128", "step", "step-torch", None, "s"),
    "step-tpp": ("ResNet56 TPP step, batch 128", "step-tpp", "step-torch", None, "s"),
    "jsv-eval": ("ResNet56 JSV, `gram`, BN running stats", "r56-gram", "r56-torch", "r56-floor", "ms/sample"),
    "jsv-batch": ("ResNet56 JSV, `gram`, BN batch stats (what the paper reports)", "r56-gram-batch", "r56-torch",
                  "r56-floor-batch", "ms/sample"),
    "jsv-jacobian": ("ResNet56 JSV, `jacobian`", "r56-jacobian", "r56-torch", "r56-floor", "ms/sample"),
    "mlp": ("MLP-7-Linear JSV, exact `linear`", "mlp-linear", "mlp-torch", None, "ms/sample"),
}
# experiments: the same columns, printed in a second table (not the README's)
EXPERIMENTS = {
    "step-legacy": ("ResNet56 step, XLA's legacy fusion emitters", "step-legacy", "step-torch", None, "s"),
    "step-conc": ("ResNet56 step, concurrency-optimised scheduler", "step-conc", "step-torch", None, "s"),
    "step-nnx-bn": ("ResNet56 step with nnx.BatchNorm (the default before isotpp.models.BatchNorm)", "step-nnx-bn",
                    "step-torch", None, "s"),
    "step-ynn-off": ("ResNet56 step, every YNNPACK fusion off (the default before 2026-12-01)", "step-ynn-off",
                     "step-torch", None, "s"),
    "jsv-eval-ynn-off": ("ResNet56 JSV, `gram`, BN running stats, every YNNPACK fusion off", "r56-gram-ynn-off",
                         "r56-torch", "r56-floor", "ms/sample"),
    "jsv-batch-ynn-off": ("ResNet56 JSV, `gram`, BN batch stats, every YNNPACK fusion off",
                          "r56-gram-batch-ynn-off", "r56-torch", "r56-floor-batch", "ms/sample"),
    "jsv-batch-vmap": ("ResNet56 JSV, `gram`, BN batch stats, VJPs vmapped", "r56-gram-batch-vmap", "r56-torch",
                       "r56-floor-batch", "ms/sample"),
}
ALL = {**ROWS, **EXPERIMENTS}


def _args(wid: str, repeats: int) -> list[str]:
    script, name, _, _ = WORKERS[wid]
    return [script, "--worker", name, "--repeats", str(repeats)]


def measure(rows: list[str], rounds: int, repeats: int) -> dict:
    wids = list(dict.fromkeys(w for r in rows for w in ALL[r][1:4] if w))
    results: dict[str, list[dict]] = {w: [] for w in wids}
    for rnd in range(rounds):
        for w in wids if rnd % 2 == 0 else wids[::-1]:
            res = run_worker(*_args(w, repeats))
            _, _, key, scale = WORKERS[w]
            res["value_ms"] = res[key] * scale
            results[w].append(res)
            print(f"round {rnd + 1}: {w:<16} {res['value_ms']:10.3f} ms, peak {mib(res['peak_bytes'])}, "
                  f"load {res['load_start']:.1f}–{res['load']:.1f}", file=sys.stderr, flush=True)
    return {"machine": machine(), "cpus": os.cpu_count(), "date": datetime.datetime.now(datetime.UTC).isoformat(
        timespec="minutes"), "rounds": rounds, "repeats": repeats, "rows": rows, "results": results}


PAIRED = ("isotpp", "torch", "isotpp TPP", "isotpp ynn-off")
PAIRED_LABELS = {"isotpp": "isotpp", "torch": "PyTorch reference", "isotpp TPP": "isotpp, TPP",
                 "isotpp ynn-off": "isotpp, every YNNPACK fusion off (the default before 2026-12-01)"}


def measure_paired(rounds: int, repeats: int) -> list[dict]:
    """Per round, one process timing isotpp's, the reference's and the variants' steps alternated
    (``bench_conv_step.py --paired``): steadier ratios than separate processes give."""
    out = []
    for rnd in range(rounds):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "paired.json")
            start = load_average()
            subprocess.run([sys.executable, STEP, "--paired", ",".join(PAIRED), "--repeats", str(repeats),
                            "--json", path], check=True, stdout=subprocess.DEVNULL)
            with open(path) as fh:
                res = json.load(fh)
        res["load_start"], res["load"] = start, load_average()
        print(f"round {rnd + 1}: paired steps " + ", ".join(f"{n} {res['median_s'][n]:.3f} s" for n in PAIRED),
              file=sys.stderr, flush=True)
        out.append(res)
    return out


def render_paired(runs: list[dict]) -> str:
    ratio = {n: statistics.median(r["ratio_to_first"][n] for r in runs) for n in PAIRED}
    secs = {n: statistics.median(r["median_s"][n] for r in runs) for n in PAIRED}
    lo = min(min(r["load_start"], r["load"]) for r in runs)
    hi = max(max(r["load_start"], r["load"]) for r in runs)
    lines = [f"The ResNet56 steps alternated in one process (`bench_conv_step.py --paired`, {len(runs)} runs × "
             f"{runs[0]['repeats']} steps each, load {lo:.1f}–{hi:.1f}): the median of each step's time over "
             "isotpp's in the same pair, steadier than the separate processes above.", "",
             "| step | s / step | time / isotpp's |", "|---|---|---|"]
    for n in PAIRED:
        note = f" (isotpp {1 / ratio[n]:.2f}× slower)" if n == "torch" and ratio[n] < 1 else ""
        lines.append(f"| {PAIRED_LABELS[n]} | {secs[n]:.2f} s | {ratio[n]:.3f}{note} |")
    return "\n".join(lines) + "\n"


def _fmt(ms: float, unit: str) -> str:
    if unit == "s":
        return f"{ms / 1e3:.2f} s"
    return f"{ms:.3f} ms" if ms < 1 else f"{ms:,.1f} ms"


def render(data: dict) -> str:
    res = data["results"]

    def med(w):
        return statistics.median(r["value_ms"] for r in res[w])

    def peak(w):
        return statistics.median(r["peak_bytes"] for r in res[w])

    lines = [
        f"Regenerated by `benchmarks/speed_table.py` ({data['date']}; {data['machine'].split(';')[0]}, "
        f"{data['cpus']} vCPU; median of {data['rounds']} interleaved rounds × {data['repeats']} repeats, each "
        "worker a fresh process). Ratio: reference time / isotpp time (> 1: isotpp faster). Floor: one forward "
        "plus one input-only VJP per class, timed as one program in the same run. Peak: each worker process's "
        "peak RSS (runtime included). Load: 1-minute load averages at the workers' starts and ends (contended "
        f"above {data['cpus']}).",
        "",
        "| path | isotpp | PyTorch reference | ratio | % of floor | peak isotpp / reference | load average |",
        "|---|---|---|---|---|---|---|",
    ]
    for key in [r for r in data["rows"] if r in ROWS] + [None] + [r for r in data["rows"] if r in EXPERIMENTS]:
        if key is None:
            if any(r in EXPERIMENTS for r in data["rows"]):
                lines += ["", "Ideas tried in the same run (a default changes only on a clear win; see the profile section):", "", *lines[2:4]]
            continue
        label, mine, ref, floor, unit = ALL[key]
        m, r = med(mine), med(ref)
        if key == "step-tpp":
            ratio = f"{r / m:.2f}× (TPP {100 * (m / med('step') - 1):+.1f} % over the plain step)" \
                if "step" in res else f"{r / m:.2f}×"
        else:
            ratio = f"{r / m:.2f}×"
        fl = f"{100 * med(floor) / m:.0f} % ({_fmt(med(floor), unit)})" if floor else "—"
        loads = [v for w in (mine, ref, floor) if w for x in res[w] for v in (x["load_start"], x["load"])]
        lines.append(f"| {label} | {_fmt(m, unit)} | {_fmt(r, unit)} | {ratio} | {fl} | "
                     f"{mib(peak(mine))} / {mib(peak(ref))} | {min(loads):.1f}–{max(loads):.1f} |")
    return "\n".join(lines) + "\n"


def write_between_markers(path: str, table: str) -> None:
    with open(path) as fh:
        text = fh.read()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{path} has no {BEGIN} ... {END} markers: add them where the table goes")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    with open(path, "w") as fh:
        fh.write(f"{head}{BEGIN}\n{table}{END}{tail}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rows", default=",".join(ROWS), help="comma-separated: " + ", ".join(ALL))
    ap.add_argument("--write", default=None, help="Markdown file with the markers to put the table in")
    ap.add_argument("--json", default=None, help="write every worker's result here")
    ap.add_argument("--from-json", default=None, help="render from a saved --json file instead of measuring")
    ap.add_argument("--paired-runs", type=int, default=0, metavar="N",
                    help="also time the steps alternated in one process, N times (bench_conv_step.py --paired)")
    args = ap.parse_args(argv)
    if args.from_json:
        with open(args.from_json) as fh:
            data = json.load(fh)
    else:
        rows = [r for r in args.rows.split(",") if r]
        unknown = [r for r in rows if r not in ALL]
        if unknown:
            raise SystemExit(f"unknown rows {unknown}: choose from {', '.join(ALL)}")
        print(f"machine: {machine()}", file=sys.stderr)
        data = measure(rows, args.rounds, args.repeats)
        if args.paired_runs:
            data["paired"] = measure_paired(args.paired_runs, max(args.repeats, 8))
        data["load_end"] = load_average()
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(data, fh, indent=1)
    table = render(data)
    if data.get("paired"):
        table += "\n" + render_paired(data["paired"])
    print(table)
    if args.write:
        write_between_markers(args.write, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
