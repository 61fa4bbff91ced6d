"""ResNet56 training-step speed on CPU: XLA formulations vs. the PyTorch reference (a benchmark, not a test).

    python benchmarks/bench_conv_step.py [--repeats 5] [--rounds 2] [--no-torch]

Each formulation runs in its own process (XLA flags are fixed per process),
rounds interleaved so the machine's drift hits all of them alike:

* ``isotpp``: the default — conv inputs materialised (``isotpp.models.ops``) and
  XLA's YNNPACK fusions for reductions only (``isotpp.configure_cpu``);
* ``lax+ynn``: plain ``lax.conv_general_dilated`` with XLA's defaults (the
  "first Flax version");
* ``lax``: plain conv, isotpp's flags; ``isotpp+ynn``: materialised
  inputs, XLA's defaults (YNNPACK's convolutions on);
* ``isotpp TPP``: the default formulation with TPP's optimiser wrapper
  (``*layer*.conv1`` at 0.5) — its overhead over the plain step;
* ``isotpp legacy-emitters`` / ``isotpp conc-sched``: the default plus
  ``--xla_cpu_use_fusion_emitters=false`` / ``--xla_cpu_enable_concurrency_optimized_scheduler=true``,
  tried against the profile (benchmarks/profile_step.py): 5.56/5.93 s and
  6.30/5.52 s at load 6–7 against the default's 10.0 s (load 12) and 3.08 s
  (load 5) in the same run (speed_table.py, 2026-11-30): no win, not defaults;
* ``isotpp nnx-bn`` / ``isotpp TPP nnx-bn``: the default with Flax's own
  ``nnx.BatchNorm`` instead of ``isotpp.models.BatchNorm`` (block sums);
* ``isotpp eigen-1thread``: the default plus ``--xla_cpu_multi_thread_eigen=false``
  (single convolutions ran as fast with one Eigen thread as with two): 1.386 s
  against the default's 1.247 s in the same run (load 1.3–1.5): not kept;
* ``isotpp ynn-off`` / ``isotpp TPP ynn-off``: every YNNPACK fusion off (the
  default before 2026-12-01); ``isotpp ynn-noconv``: all but the convolution
  fusions (``-individual_convolution``, process flag only);
  ``isotpp ynn-eltwise-reduce``: reductions and elementwise fusions. Paired
  (below): ynn-off 1.036–1.055× the default's step, eltwise-reduce 1.119×;
  ynn-noconv (separate processes) as fast as reductions alone;
* ``isotpp vec512``: ``--xla_cpu_prefer_vector_width=512`` (the CPU has
  AVX-512): 1.011× paired, not kept;
* ``torch``: the reference's step (PyTorch, oneDNN, 2 threads, train mode).

Batch 128, 32×32×3, SGD momentum 0.9 with weight decay; the median of
``--repeats`` steps after one warm-up step per round. Each row also gives its
process's peak memory (each worker is a fresh process: device statistics where
the backend has them, peak RSS on CPU, which includes the XLA or PyTorch
runtime) and the load average at the worker's start and end.

``--paired A,B,…`` times variants in ONE process, their steps alternated: the
steady way to compare choices (separate processes scatter by ±10 % on this
machine). A variant's own XLA flags become options of its step's compilation
(``compile(compiler_options=...)``); ``torch`` pairs the reference's step.

Latest runs (2026-12-01, load 1.6–1.8): ``--paired "isotpp,torch,isotpp ynn-off,isotpp TPP"
--repeats 12``, the default then every YNNPACK fusion but the convolutions: 1.047 s/step,
PyTorch 0.801 s (0.752× the default's step: isotpp 1.33× slower), every YNNPACK
fusion off 1.055×, TPP 1.004×; ``--paired "isotpp,isotpp ynn-off,isotpp TPP,isotpp ynn-eltwise-reduce"
--repeats 10`` with the default at reductions only: 1.064 s, 1.036×, 1.013×, 1.119×.
Earlier (before the reductions went to YNNPACK): ``--paired "isotpp,isotpp nnx-bn,isotpp TPP"
--repeats 12`` (load 1.6): the default 1.121 s/step, with ``nnx.BatchNorm``
(the default before ``isotpp.models.BatchNorm``) 1.224 s (1.079×), TPP 1.120 s
(1.001×); with YNNPACK's fusions but the convolutions on, ``nnx.BatchNorm``
1.049×. Earlier still (contended, load 8.8–9.6): a hand-written BatchNorm VJP
(one backward pass, x̂ saved) gave no gain over ``nnx.BatchNorm``'s autodiff
(7.22 against 7.16 s): not kept.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from _bench import configure_xla, emit, loads, machine, mib, peak_memory, peak_rss_bytes, run_worker

VARIANTS = {
    "isotpp": {"defaults": True, "conv": "isotpp", "tpp": False},
    "isotpp TPP": {"defaults": True, "conv": "isotpp", "tpp": True},
    "lax+ynn": {"defaults": False, "conv": "lax", "tpp": False},
    "lax": {"defaults": True, "conv": "lax", "tpp": False},
    "isotpp+ynn": {"defaults": False, "conv": "isotpp", "tpp": False},
    # XLA CPU options tried against the profile (docs/speed.md): the legacy loop/reduction emitters for the
    # BatchNorm chains, and the concurrency-optimised scheduler for the many small independent ops
    "isotpp legacy-emitters": {"defaults": True, "conv": "isotpp", "tpp": False,
                               "flags": "--xla_cpu_use_fusion_emitters=false"},
    "isotpp conc-sched": {"defaults": True, "conv": "isotpp", "tpp": False,
                          "flags": "--xla_cpu_enable_concurrency_optimized_scheduler=true"},
    # the default before isotpp.models.ops.BatchNorm: Flax's own BatchNorm (sequential channel sums)
    "isotpp nnx-bn": {"defaults": True, "conv": "isotpp", "tpp": False, "bn": "nnx"},
    "isotpp eigen-1thread": {"defaults": True, "conv": "isotpp", "tpp": False,
                             "flags": "--xla_cpu_multi_thread_eigen=false"},
    # YNNPACK's fusions (isotpp's default: reductions only): all off (the default before 2026-12-01), all but
    # the convolutions (XLA's defaults minus them), reductions and elementwise fusions
    "isotpp ynn-off": {"defaults": True, "conv": "isotpp", "tpp": False,
                       "flags": "--xla_cpu_experimental_ynn_fusion_type="},
    "isotpp TPP ynn-off": {"defaults": True, "conv": "isotpp", "tpp": True,
                           "flags": "--xla_cpu_experimental_ynn_fusion_type="},
    "isotpp ynn-noconv": {"defaults": True, "conv": "isotpp", "tpp": False,
                          "flags": "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"},
    "isotpp ynn-eltwise-reduce": {"defaults": True, "conv": "isotpp", "tpp": False,
                                  "flags": "--xla_cpu_experimental_ynn_fusion_type=eltwise,reduce"},
    "isotpp TPP nnx-bn": {"defaults": True, "conv": "isotpp", "tpp": True, "bn": "nnx"},
    # AVX-512 for XLA's generated loops (the machine has it; XLA prefers 256-bit vectors by default)
    "isotpp vec512": {"defaults": True, "conv": "isotpp", "tpp": False, "flags": "--xla_cpu_prefer_vector_width=512"},
}


def _setup(defaults: bool, flags: str | None) -> None:
    """The process's XLA flags, before its first computation: isotpp's (``defaults``) or XLA's, plus ``flags``."""
    if defaults:
        configure_xla(flags)
    elif flags:
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()


def build_step(spec: dict):
    """(jitted step, initial state, x, y) of one variant: ResNet56, batch 128, SGD with momentum."""
    import jax
    from flax import nnx

    from isotpp.models import create_model
    from isotpp.models.ops import BatchNorm
    from isotpp.training.engine import (
        ModelFns,
        init_state,
        make_update_fn,
        reference_sgd,
    )

    conv_fn = jax.lax.conv_general_dilated if spec["conv"] == "lax" else None
    model = create_model("resnet56", init="kaiming", conv_fn=conv_fn)
    if spec.get("bn") == "nnx":
        for _, m in list(nnx.iter_graph(model)):
            if isinstance(m, BatchNorm):
                m.__class__ = nnx.BatchNorm  # the same variables, Flax's own arithmetic
    fns, params, rest = ModelFns.from_model(model)
    tx = reference_sgd(0.01, weight_decay=5e-4)
    if spec["tpp"]:
        from isotpp.models import layer_names
        from isotpp.pruning.groups import channel_groups
        from isotpp.pruning.plan import l1_plan
        from isotpp.pruning.tpp import TPPConfig, targets_for, tpp

        plan = l1_plan(model, "*layer*.conv1:0.5")
        cfg = TPPConfig()
        tx = tpp(reference_sgd(1e-3, weight_decay=5e-4), plan,
                 targets_for(plan, channel_groups(model), layer_names(model), cfg), cfg)
    state = init_state(params, rest, tx)
    x = jax.random.normal(jax.random.key(0), (128, 32, 32, 3))
    y = jax.random.randint(jax.random.key(1), (128,), 0, 10)
    return jax.jit(make_update_fn(fns, tx), donate_argnums=0), state, x, y


def _timed(step, state, x, y):
    """One step, waited for: (new state, metrics, seconds)."""
    import jax

    t = time.perf_counter()
    state, m = step(state, x, y, {})
    jax.block_until_ready(m)
    return state, m, time.perf_counter() - t


def worker(name: str, repeats: int) -> dict:
    spec = VARIANTS[name]
    _setup(spec["defaults"], spec.get("flags"))
    step, state, x, y = build_step(spec)
    state, m, compile_s = _timed(step, state, x, y)
    ts = []
    for _ in range(repeats):
        state, m, s = _timed(step, state, x, y)
        ts.append(s)
    peak, source = peak_memory()
    return {"compile_s": compile_s, "step_s": statistics.median(ts), "loss": float(m["loss"]),
            "peak_bytes": peak, "peak_source": source}


def _compiler_options(flags: str | None) -> dict:
    """A variant's XLA flags as options of its own compilation (``--name=value`` each; XLA's ``+``/``-`` list
    edits exist only as process flags)."""
    opts = {}
    for flag in (flags or "").split():
        name, _, value = flag.removeprefix("--").partition("=")
        if value[:1] in ("+", "-"):
            raise SystemExit(f"--paired: {flag} edits XLA's default list, which only a process flag can do; "
                             "give the full list (e.g. '=reduce') or time it with --variants")
        if name == "xla_cpu_experimental_ynn_fusion_type" and value:  # the option takes the enum's own name
            value = ",".join(f"LIBRARY_FUSION_TYPE_{v.upper()}" for v in value.split(","))
        opts[name] = {"true": True, "false": False}.get(value, value)
    return opts


def _torch_timed(step):
    """The reference's step, timed: seconds."""

    def timed():
        t = time.perf_counter()
        step()
        return time.perf_counter() - t

    return timed


def paired(names: list[str], repeats: int) -> dict:
    """The variants in ONE process, their steps alternated ``repeats`` times (A B A B …, the order
    reversed every other pair): the machine's drift hits them alike, so the ratio of each step to the
    first variant's step in the same pair is far steadier than times taken in separate processes.
    The process runs with isotpp's flags; a variant's own ``flags`` are options of its step's compilation
    (``jit(...).lower(...).compile(compiler_options=...)``)."""
    defaults = {VARIANTS[n]["defaults"] for n in names if n != "torch"}
    if len(defaults) != 1:
        raise SystemExit("variants timed in one process must all run with isotpp's flags or all with XLA's")
    _setup(defaults.pop(), None)
    runs = []
    for name in names:
        if name == "torch":  # the reference in the same process: its steps never overlap isotpp's
            runs.append([_torch_timed(torch_step()), None, None, None])
            runs[-1][0]()  # warm-up
            continue
        spec = VARIANTS[name]
        step, state, x, y = build_step(spec)
        if spec.get("flags"):
            step = step.lower(state, x, y, {}).compile(compiler_options=_compiler_options(spec["flags"]))
        state, _, _ = _timed(step, state, x, y)  # compile
        runs.append([step, state, x, y])
    times = {n: [] for n in names}
    for i in range(repeats):
        order = list(range(len(names))) if i % 2 == 0 else list(range(len(names)))[::-1]
        for k in order:
            step, state, x, y = runs[k]
            if names[k] == "torch":
                s = step()
            else:
                runs[k][1], _, s = _timed(step, state, x, y)
            times[names[k]].append(s)
    base = times[names[0]]
    return {"names": names, "repeats": repeats, "times": times,
            "median_s": {n: statistics.median(ts) for n, ts in times.items()},
            "ratio_to_first": {n: statistics.median(t / b for t, b in zip(ts, base)) for n, ts in times.items()}}


def torch_step():
    """The reference's step (PyTorch, train mode, SGD with momentum and weight decay), as a closure."""
    import torch
    import torch.nn.functional as F
    from torch_reference import ResNet56

    net = ResNet56().train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x, y = torch.randn(128, 3, 32, 32), torch.randint(0, 10, (128,))

    def step():
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        return loss

    return step


def torch_worker(repeats: int) -> dict:
    timed = _torch_timed(torch_step())
    timed()  # warm-up
    ts = [timed() for _ in range(repeats)]
    return {"compile_s": 0.0, "step_s": statistics.median(ts), "loss": 0.0, "peak_bytes": peak_rss_bytes(),
            "peak_source": "peak RSS"}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--variants", default="isotpp,isotpp TPP,lax+ynn,lax,isotpp+ynn", help="comma-separated: "
                    + ", ".join(VARIANTS))
    ap.add_argument("--json", default=None, help="also write every worker's result here")
    ap.add_argument("--paired", default=None, metavar="A,B[,…]",
                    help="time these variants in one process, steps alternated (a variant's XLA flags compile its "
                         "step only): the steady way to compare BatchNorm, TPP or XLA-option choices")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.paired:
        names = [v for v in args.paired.split(",") if v]
        res = paired(names, args.repeats)
        print(f"machine: {machine()}; {args.repeats} alternated steps per variant, one process")
        print(f"{'variant':<22}{'median s/step':>15}{'ratio to ' + names[0]:>24}")
        for n in names:
            print(f"{n:<22}{res['median_s'][n]:>15.3f}{res['ratio_to_first'][n]:>24.3f}")
        if args.json:
            with open(args.json, "w") as fh:
                json.dump({"machine": machine(), **res}, fh, indent=1)
        return
    if args.worker:
        emit(torch_worker(args.repeats) if args.worker == "torch" else worker(args.worker, args.repeats))
        return
    names = [v for v in args.variants.split(",") if v] + ([] if args.no_torch else ["torch"])
    results = {n: [] for n in names}
    for r in range(args.rounds):
        for n in (names if r % 2 == 0 else names[::-1]):
            results[n].append(run_worker(__file__, "--worker", n, "--repeats", str(args.repeats)))
            x = results[n][-1]
            print(f"round {r + 1}: {n:<12} {x['step_s']:.3f} s/step, peak {mib(x['peak_bytes'])}, "
                  f"load {x['load_start']:.1f}–{x['load']:.1f}", flush=True)
    ref = statistics.median(x["step_s"] for x in results["torch"]) if "torch" in results else None
    print(f"\nmachine: {machine()}")
    print(f"ResNet56, batch 128, {os.cpu_count()} CPUs; median over {args.rounds} rounds x {args.repeats} steps")
    print(f"{'formulation':<14}{'s/step':>9}{'img/s':>8}{'compile s':>11}{'vs torch':>10}{'peak':>12}{'load':>10}")
    for n in names:
        s = statistics.median(x["step_s"] for x in results[n])
        c = statistics.median(x["compile_s"] for x in results[n])
        rel = f"{s / ref:.2f}x" if ref else "-"
        peak = statistics.median(x["peak_bytes"] for x in results[n])
        print(f"{n:<14}{s:>9.3f}{128 / s:>8.1f}{c:>11.1f}{rel:>10}{mib(peak):>12}{loads(results[n]):>10}")
    if "isotpp" in results and "isotpp TPP" in results:
        a = statistics.median(x["step_s"] for x in results["isotpp"])
        b = statistics.median(x["step_s"] for x in results["isotpp TPP"])
        print(f"TPP overhead over the plain step: {100 * (b / a - 1):+.1f} %")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": machine(), "rounds": args.rounds, "repeats": args.repeats, "results": results}, fh,
                      indent=1)


if __name__ == "__main__":
    main()
