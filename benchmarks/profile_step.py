"""Where the ResNet56 training step's time goes on CPU, per op category, XLA against PyTorch (a benchmark).

    python benchmarks/profile_step.py [--rounds 3] [--batch 128] [--no-trace] [--json out.json]

Two measurements, in one process, XLA and PyTorch alternated per category:

**Isolated categories** (the figures docs/speed.md uses). Every convolution of
ResNet56 at batch 128 (six distinct shapes, 55 convolutions; 3×3, stride 1 or
2) is compiled on its own three ways: forward, input gradient (a VJP in x
only) and weight gradient (a VJP in the kernel only), and each BatchNorm
(batch statistics) + ReLU chain at every activation shape, forward and
backward; each is timed (median of ``--repeats``) and multiplied by how often
the step runs it, beside PyTorch's own kernels on the same shapes
(``F.conv2d``, ``aten.convolution_backward`` with an input-only or
weight-only mask, ``F.batch_norm`` + ReLU forward and backward, channels
first as the reference runs them). The whole step is timed in the same
rounds (isotpp's default and the reference's); the step minus the summed
categories is the rest: copies and transposes (including the conv-input
copies of ``isotpp.models.ops.materialize``), the shortcuts, the classifier, the
optimiser and the scheduling between ops.

**A jax.profiler trace** (``--no-trace`` skips it), kept for the record of
why it is not used for the split:
Compiles the step of ``bench_conv_step.py`` (ResNet56, CIFAR shape, SGD with
momentum and weight decay, ``isotpp.configure_cpu``), traces ``--steps``
steps with ``jax.profiler.trace`` and reads the trace back
(``jax.profiler.ProfileData``): every event XLA's CPU runtime records per
executed thunk (one per HLO instruction it runs: a convolution, a fusion, a
copy, ...) is matched by name to the compiled module's HLO text and put in a
category:

* conv forward / conv input-grad / conv weight-grad: a convolution (or a
  fusion around one) whose output is the batch's activations (forward, or
  input gradient when its JAX op name is under ``transpose(...)``), or a
  kernel-shaped output (weight gradient);
* BN/ReLU/add chains (fusions with reductions): the batch statistics and
  their gradients; elementwise fusions without reductions;
* copies/transposes: ``copy``, ``transpose`` and fusions whose root is one;
* control flow (the conditionals of ``isotpp.models.ops.materialize``), other.

The trace's convolution events cover only the dispatch of XLA CPU's
asynchronous convolution thunks (which run on the Eigen pool afterwards), so
they undercount convolutions (a few % of the step where the isolated timing
finds most of it); on a contended machine the other events are stretched by
the OS's time slices (durations come in multiples of ~20 ms at load 10).
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import statistics
import sys
import tempfile
import time

from _bench import load_average, machine

INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\S+(?:\{[^}]*\})?|\([^=]*\))\s+([\w\-]+)\(")
SHAPE = re.compile(r"\[([\d,]*)\]")


def parse_hlo(text: str) -> tuple[dict, dict]:
    """(instruction name -> (opcode, output dims, op_name metadata, called computation), computation -> body)."""
    instrs, comps, current = {}, collections.defaultdict(list), None
    for line in text.splitlines():
        m = re.match(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
        if m and "=" not in line.split("{")[0]:
            current = m.group(1)
            continue
        m = INSTR.match(line)
        if not m:
            continue
        name, shape, opcode = m.groups()
        dims = SHAPE.search(shape)
        dims = tuple(int(d) for d in dims.group(1).split(",") if d) if dims else ()
        op_name = re.search(r'op_name="([^"]*)"', line)
        calls = re.search(r"calls=%?([\w.\-]+)", line)
        instrs[name] = (opcode, dims, op_name.group(1) if op_name else "", calls.group(1) if calls else None)
        comps[current].append((name, opcode, line.lstrip().startswith("ROOT")))
    return instrs, comps


def category(name: str, instrs: dict, comps: dict, batch: int) -> str:
    if name not in instrs:
        return "other (runtime)"
    opcode, dims, op_name, calls = instrs[name]
    body = comps.get(calls, []) if opcode == "fusion" else [(name, opcode, True)]
    ops = {o for _, o, _ in body}
    root = next((o for _, o, r in body if r), opcode)
    if "convolution" in ops or opcode == "convolution":
        if dims and dims[0] == batch:
            return "conv input-grad" if "transpose(" in op_name else "conv forward"
        return "conv weight-grad"
    if opcode in ("conditional", "while", "call"):
        return "control flow (materialize conds)"
    if opcode in ("copy", "transpose") or root in ("copy", "transpose"):
        return "copies/transposes"
    if "dot" in ops or opcode == "dot":
        return "dense (classifier)"
    if "reduce" in ops or opcode == "reduce":
        return "BN/ReLU/add chains (reductions)"
    if opcode == "fusion":
        return "BN/ReLU/add chains (elementwise)"
    return f"other ({opcode})"


def build(batch: int, variant: str):
    import isotpp

    isotpp.configure_cpu()
    import jax

    from isotpp.models import create_model
    from isotpp.training.engine import (
        ModelFns,
        init_state,
        make_update_fn,
        reference_sgd,
    )

    model = create_model("resnet56", init="kaiming")
    fns, params, rest = ModelFns.from_model(model)
    tx = reference_sgd(0.01, weight_decay=5e-4)
    state = init_state(params, rest, tx)
    x = jax.random.normal(jax.random.key(0), (batch, 32, 32, 3))
    y = jax.random.randint(jax.random.key(1), (batch,), 0, 10)
    step = jax.jit(make_update_fn(fns, tx), donate_argnums=0)
    return step, state, x, y


# (input H=W, cin, cout, stride, count in the step); 3x3 kernels, padding 1
CONVS = [(32, 3, 16, 1, 1), (32, 16, 16, 1, 18), (32, 16, 32, 2, 1), (16, 32, 32, 1, 17), (16, 32, 64, 2, 1),
         (8, 64, 64, 1, 17)]
# BatchNorm + ReLU chains: (H=W, channels, count)
BNS = [(32, 16, 19), (16, 32, 18), (8, 64, 18)]


def _median(fn, repeats):
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def jax_categories(batch):
    """{category: [(callable, count)]} for XLA: each runs one conv (or BN chain) at one shape."""
    import jax
    import jax.numpy as jnp

    from flax import nnx

    from isotpp.models.ops import BatchNorm
    from isotpp.models.ops import conv_general_dilated as conv

    key = jax.random.key(0)
    cats = {"conv forward": [], "conv input-grad": [], "conv weight-grad": [], "BN+ReLU chains fwd+bwd": []}
    for hw, cin, cout, stride, count in CONVS:
        x = jax.random.normal(key, (batch, hw, hw, cin))
        w = jax.random.normal(key, (3, 3, cin, cout)) * 0.1
        g = jax.random.normal(key, (batch, hw // stride, hw // stride, cout))

        def f(x, w, stride=stride):
            return conv(x, w, (stride, stride), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))

        fwd = jax.jit(f)
        dx = jax.jit(lambda x, w, g, f=f: jax.vjp(lambda x: f(x, w), x)[1](g)[0])
        dw = jax.jit(lambda x, w, g, f=f: jax.vjp(lambda w: f(x, w), w)[1](g)[0])
        cats["conv forward"].append((lambda fwd=fwd, x=x, w=w: fwd(x, w).block_until_ready(), count))
        if cin != 3:  # the first conv's input needs no gradient
            cats["conv input-grad"].append((lambda dx=dx, x=x, w=w, g=g: dx(x, w, g).block_until_ready(), count))
        cats["conv weight-grad"].append((lambda dw=dw, x=x, w=w, g=g: dw(x, w, g).block_until_ready(), count))
    for hw, c, count in BNS:
        x = jax.random.normal(key, (batch, hw, hw, c))
        gamma, beta = jnp.ones((c,)), jnp.zeros((c,))

        def chain(x, gamma, beta, c=c):
            bn = BatchNorm(c, momentum=0.9, epsilon=1e-5, rngs=nnx.Rngs(0))  # the models' own layer
            bn.scale[...], bn.bias[...] = gamma, beta
            return jax.nn.relu(bn(x, use_running_average=False))

        both = jax.jit(lambda x, gamma, beta, g, chain=chain: jax.vjp(chain, x, gamma, beta)[1](g))
        cats["BN+ReLU chains fwd+bwd"].append(
            (lambda both=both, x=x, gm=gamma, b=beta: jax.block_until_ready(both(x, gm, b, x)), count))
    return cats


def torch_categories(batch):
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(os.cpu_count() or 1)
    cats = {"conv forward": [], "conv input-grad": [], "conv weight-grad": [], "BN+ReLU chains fwd+bwd": []}
    for hw, cin, cout, stride, count in CONVS:
        x = torch.randn(batch, cin, hw, hw)
        w = torch.randn(cout, cin, 3, 3) * 0.1
        g = torch.randn(batch, cout, hw // stride, hw // stride)

        def back(mask, x=x, w=w, g=g, stride=stride):
            with torch.no_grad():
                return torch.ops.aten.convolution_backward(g, x, w, None, [stride] * 2, [1, 1], [1, 1], False,
                                                           [0, 0], 1, mask)

        with torch.no_grad():
            cats["conv forward"].append((lambda x=x, w=w, s=stride: F.conv2d(x, w, None, s, 1), count))
        if cin != 3:
            cats["conv input-grad"].append((lambda back=back: back([True, False, False]), count))
        cats["conv weight-grad"].append((lambda back=back: back([False, True, False]), count))
    for hw, c, count in BNS:
        x = torch.randn(batch, c, hw, hw, requires_grad=True)
        gamma, beta = torch.ones(c, requires_grad=True), torch.zeros(c, requires_grad=True)
        g = torch.randn(batch, c, hw, hw)

        def chain(x=x, gamma=gamma, beta=beta, g=g):
            y = F.relu(F.batch_norm(x, None, None, gamma, beta, training=True))
            return torch.autograd.grad(y, (x, gamma, beta), g)

        cats["BN+ReLU chains fwd+bwd"].append((chain, count))
    return cats


def decompose(batch, rounds, repeats):
    """Per category, per round: seconds per step for XLA and PyTorch, plus the whole steps."""
    import jax

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import torch
    import torch.nn.functional as F
    from torch_reference import ResNet56

    jc, tc = jax_categories(batch), torch_categories(batch)
    step, state, x, y = build(batch, "default")
    holder = {"state": state}

    def jax_step():
        holder["state"], m = step(holder["state"], x, y, {})
        jax.block_until_ready(m)

    net = ResNet56().train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    tx, ty = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))

    def torch_step():
        opt.zero_grad()
        F.cross_entropy(net(tx), ty).backward()
        opt.step()

    out = {k: {"xla": [], "torch": []} for k in [*jc, "whole step"]}
    for r in range(rounds):
        order = (("xla", jc, jax_step), ("torch", tc, torch_step))
        for who, cats, whole in order if r % 2 == 0 else order[::-1]:
            for cat, items in cats.items():
                out[cat][who].append(sum(_median(fn, repeats) * n for fn, n in items))
            out["whole step"][who].append(_median(whole, repeats))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v['xla'][-1]:.3f}/{v['torch'][-1]:.3f}" for k, v in out.items())
              + f" s (XLA/torch); load {load_average():.1f}", flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3, help="traced steps")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-trace", action="store_true")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--variant", default="default")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    import isotpp

    isotpp.configure_cpu()
    import jax

    print(f"machine: {machine()}")
    dec = decompose(args.batch, args.rounds, args.repeats)
    med = {k: {w: statistics.median(v[w]) for w in v} for k, v in dec.items()}
    parts = [k for k in med if k != "whole step"]
    print(f"\nResNet56, batch {args.batch}: seconds per step by category (median of {args.rounds} rounds); "
          f"share of each whole step; XLA / PyTorch")
    print(f"{'category':<26}{'XLA s':>8}{'share':>7}{'torch s':>9}{'share':>7}{'XLA/torch':>10}")
    for k in [*parts, "rest (step - categories)", "whole step"]:
        if k == "rest (step - categories)":
            a = med["whole step"]["xla"] - sum(med[p]["xla"] for p in parts)
            b = med["whole step"]["torch"] - sum(med[p]["torch"] for p in parts)
        else:
            a, b = med[k]["xla"], med[k]["torch"]
        print(f"{k:<26}{a:>8.3f}{100 * a / med['whole step']['xla']:>6.0f}%{b:>9.3f}"
              f"{100 * b / med['whole step']['torch']:>6.0f}%{a / b:>9.2f}x")
    print(f"load average at end {load_average():.1f}", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"decomposition": dec, "load_end": load_average()}, fh, indent=1)
    if args.no_trace:
        return 0

    step, state, x, y = build(args.batch, args.variant)
    hlo = step.lower(state, x, y, {}).compile().as_text()
    instrs, comps = parse_hlo(hlo)
    state, m = step(state, x, y, {})
    jax.block_until_ready(m)
    walls = []
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d):
            for _ in range(args.steps):
                t = time.perf_counter()
                state, m = step(state, x, y, {})
                jax.block_until_ready(m)
                walls.append(time.perf_counter() - t)
        (path,) = glob.glob(f"{d}/**/*.xplane.pb", recursive=True)
        prof = jax.profiler.ProfileData.from_file(path)
        per_instr = collections.Counter()
        for plane in prof.planes:
            if not plane.name.startswith("/host:CPU"):
                continue
            for line in plane.lines:
                for ev in line.events:
                    if ev.name in instrs:
                        per_instr[ev.name] += ev.duration_ns
    by_cat = collections.Counter()
    for name, ns in per_instr.items():
        by_cat[category(name, instrs, comps, args.batch)] += ns
    total = sum(by_cat.values())
    wall = statistics.median(walls)
    print(f"machine: {machine()}; load at end {load_average():.1f}")
    print(f"ResNet56 step, batch {args.batch}: wall {wall:.3f} s/step (median of {args.steps}, traced); summed "
          f"thunk time {total / 1e9 / args.steps:.3f} s/step over threads ({len(per_instr)} instructions seen)")
    print(f"{'category':<40}{'s/step':>9}{'share':>8}")
    for cat, ns in by_cat.most_common():
        print(f"{cat:<40}{ns / 1e9 / args.steps:>9.3f}{100 * ns / total:>7.1f}%")
    print("\ncostliest instructions (s/step, category, output dims, JAX op):")
    for name, ns in per_instr.most_common(12):
        opcode, dims, op_name, _ = instrs[name]
        print(f"  {ns / 1e9 / args.steps:7.3f}  {name:<28} {category(name, instrs, comps, args.batch):<34} "
              f"{dims} {op_name[-70:]}")
    if args.json:
        with open(args.json.replace(".json", "_trace.json"), "w") as fh:
            json.dump({"wall_s": walls, "categories_ns": dict(by_cat), "steps": args.steps, "load": load_average(),
                       "top": per_instr.most_common(40)}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
