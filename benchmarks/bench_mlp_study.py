"""Speed of the linear-network study's steps, and the full schedule it implies (a benchmark, not a test).

    python benchmarks/bench_mlp_study.py [--torch]

Times one epoch (600 steps of batch 100 over 60,000 examples held on the
device) of: a plain training step of MLP-7-Linear (width 100), a TPP step
(width 100, Gram penalty on six layers), and the retraining step of the pruned
network (width 20) with 6 and 10 runs vmapped together; then the wall time of
the published schedule for one seed and the three main methods (base 90
epochs, TPP 110,001 iterations, 6 retraining runs of 90 epochs). With
``--torch`` it times a plain and a TPP-style step of the same MLP in PyTorch
(2 threads) in the same run, for comparison. Memory: each JAX row gives XLA's
memory analysis of its compiled epoch (its own figure; the rows share one
process), and the process's peak RSS is printed after the JAX rows and after
the PyTorch ones (monotone in one process: the second includes the first).
Each row gives the load average when it finished.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
from _bench import load_average, machine, mib, peak_memory, peak_rss_bytes, xla_bytes

from isotpp.data.pipeline import epoch_batches
from isotpp.models import create_model, layer_names
from isotpp.pruning.groups import channel_groups
from isotpp.pruning.plan import hard_prune, l1_plan
from isotpp.pruning.tpp import TPPConfig, targets_for, tpp
from isotpp.training.engine import (
    LRSchedule,
    ModelFns,
    RunGroup,
    init_state,
    reference_sgd,
    stack_runs,
)

N, B = 60_000, 100
STEPS = N // B


def time_epochs(group, x, y, repeats):
    """(first epoch incl. compile s, s/step, XLA bytes of the compiled epoch, load average at the end)."""
    batches = epoch_batches(jax.random.key(0), N, B)
    lr = jnp.zeros((group.n_runs,), jnp.float32)
    program = xla_bytes(group._epoch, group.state, x, y, batches, lr, {})
    t = time.perf_counter()
    group.run_epoch(x, y, batches, 0)
    first = time.perf_counter() - t
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        group.run_epoch(x, y, batches, 0)
        ts.append(time.perf_counter() - t)
    return first, statistics.median(ts) / STEPS, program, load_average()


def torch_steps(repeats):
    import torch
    from torch_reference import mlp_7_linear

    net = mlp_7_linear()
    layers = list(net)[:6]  # the six hidden-producing layers
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(B, 1024)
    y = torch.randint(0, 10, (B,))
    pruned = [torch.randperm(100)[:80] for _ in range(6)]

    def step(tpp_terms):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        if tpp_terms:
            for layer, idx in zip(layers, pruned):
                w = layer.weight
                g = w @ w.t()
                t = g.detach().clone()
                t[idx, :] = 0
                t[:, idx] = 0
                loss = loss + 1000 * 0.5 * ((g - t) ** 2).mean()
        loss.backward()
        if tpp_terms:
            for layer, idx in zip(layers, pruned):
                layer.weight.grad[idx] += 0.5 * layer.weight[idx]
                layer.bias.grad[idx] += 0.5 * layer.bias[idx]
        opt.step()

    out = {}
    for name, flag in (("plain", False), ("TPP", True)):
        for _ in range(20):
            step(flag)
        ts = []
        for _ in range(repeats):
            t = time.perf_counter()
            for _ in range(100):
                step(flag)
            ts.append((time.perf_counter() - t) / 100)
        out[name] = statistics.median(ts)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--torch", action="store_true")
    args = ap.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}, {os.cpu_count()} CPUs; {machine()}")

    x = jax.random.normal(jax.random.key(0), (N, 32, 32, 1))
    y = jax.random.randint(jax.random.key(1), (N,), 0, 10)
    model = create_model("mlp_7_linear", init="torch")
    fns, params, rest = ModelFns.from_model(model)
    tx = reference_sgd(weight_decay=1e-4)
    rows = {}
    rows["plain step, width 100"] = time_epochs(
        RunGroup(fns, tx, stack_runs([init_state(params, rest, tx)]), [LRSchedule.parse("0.01")]), x, y, args.repeats)
    plan = l1_plan(model, "*:0.8", ["net.12"])
    cfg = TPPConfig()
    ttx = tpp(reference_sgd(1e-3, weight_decay=1e-4), plan,
              targets_for(plan, channel_groups(model), layer_names(model), cfg), cfg)
    rows["TPP step, width 100"] = time_epochs(
        RunGroup(fns, ttx, stack_runs([init_state(params, rest, ttx)]), [LRSchedule.parse("0.001")]), x, y,
        args.repeats)
    small = hard_prune(model, plan)
    sfns, sp, sr = ModelFns.from_model(small)
    for r in (1, 6, 10):
        rows[f"retrain step, width 20, {r} runs vmapped"] = time_epochs(
            RunGroup(sfns, tx, stack_runs([init_state(sp, sr, tx)] * r), [LRSchedule.parse("0.01")] * r), x, y,
            args.repeats)

    print(f"\n{'step':<40}{'compile+1st epoch s':>20}{'ms/step':>10}{'XLA memory':>12}{'load':>6}")
    for k, (first, per, program, load) in rows.items():
        print(f"{k:<40}{first:>20.2f}{per * 1e3:>10.3f}{mib(program):>12}{load:>6.1f}")

    peak, source = peak_memory()
    print(f"{source} of the process after the JAX rows: {mib(peak)}")

    base = 90 * STEPS * rows["plain step, width 100"][1]
    tpp_s = cfg.total_iters * rows["TPP step, width 100"][1]
    retrain = 90 * STEPS * rows["retrain step, width 20, 6 runs vmapped"][1]
    print(f"\nfull published schedule, one seed, L1 + L1+OrthP + TPP (steps only): base {base:.0f} s + "
          f"TPP {tpp_s:.0f} s + 6 retraining runs {retrain:.0f} s = {(base + tpp_s + retrain) / 60:.1f} min")
    if args.torch:
        t = torch_steps(args.repeats)
        print(f"PyTorch (same MLP, batch 100): plain step {t['plain'] * 1e3:.2f} ms, TPP-style step "
              f"{t['TPP'] * 1e3:.2f} ms -> the same schedule "
              f"{(90 * STEPS * t['plain'] * 7 + cfg.total_iters * t['TPP']) / 60:.1f} min; "
              f"peak RSS after them {mib(peak_rss_bytes())}; load {load_average():.1f}")


if __name__ == "__main__":
    main()
