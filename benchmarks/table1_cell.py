"""A few hundred steps of a Table 1 cell on synthetic CIFAR-shaped data (a benchmark, not a test).

    python benchmarks/table1_cell.py [--steps 300] [--batch 128] [--arch resnet56] [--ratio 0.9]

ResNet56 (CIFAR-10 shape, 32×32×3, 10 classes), TPP on: the paper's optimiser
wrapper with the L1 plan ``*layer*.conv1:RATIO`` and its CIFAR settings
(isotpp.pruning.tpp.TPPConfig defaults), SGD momentum 0.9, weight decay 5e-4, LR 1e-3,
on a fixed set of 16 random batches whose labels a random linear teacher gives
(so the loss can fall). Prints the device kind, the median step time and
images/s, the loss at the start and the end, the mean JSV (``gram``, batch
statistics, 64 samples) before and after, and the peak memory.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from _bench import load_average, machine, mib, peak_memory

from isotpp.models import create_model, layer_names
from isotpp.pruning.groups import channel_groups
from isotpp.pruning.plan import l1_plan
from isotpp.pruning.tpp import TPPConfig, targets_for, tpp
from isotpp.spectra import jacobian as sp
from isotpp.training.engine import ModelFns, init_state, make_update_fn, reference_sgd


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--arch", default="resnet56", help="a CIFAR ResNet (resnet20 for a quick dry run)")
    ap.add_argument("--ratio", type=float, default=0.9)
    ap.add_argument("--jsv-samples", type=int, default=64)
    args = ap.parse_args()
    dev = jax.devices()[0]
    print(f"device: {jax.device_count()} × {dev.device_kind} ({dev.platform}); machine: {machine()}", flush=True)

    model = create_model(args.arch, init="kaiming", seed=0)
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(16, args.batch, 32, 32, 3)).astype(np.float32)
    teacher = rng.normal(size=(32 * 32 * 3, 10)).astype(np.float32)
    ys = (xs.reshape(16, args.batch, -1) @ teacher).argmax(-1).astype(np.int32)
    xs, ys = jnp.asarray(xs), jnp.asarray(ys)
    jsv_x = xs[0, : args.jsv_samples]

    def mean_jsv(m):
        return float(sp.model_singular_values(m, jsv_x, method="gram", bn="batch", chunk_size=len(jsv_x)).mean())

    jsv_before = mean_jsv(model)
    cfg = TPPConfig()
    plan = l1_plan(model, f"*layer*.conv1:{args.ratio}")
    tx = tpp(reference_sgd(1e-3, weight_decay=5e-4), plan,
             targets_for(plan, channel_groups(model), layer_names(model), cfg), cfg)
    fns, params, rest = ModelFns.from_model(model)
    state = init_state(params, rest, tx)
    step = jax.jit(make_update_fn(fns, tx), donate_argnums=0)
    t = time.perf_counter()
    state, m = step(state, xs[0], ys[0], {})
    first_loss = float(m["loss"])
    compile_s = time.perf_counter() - t
    times, losses = [], []
    for i in range(1, args.steps):
        t = time.perf_counter()
        state, m = step(state, xs[i % 16], ys[i % 16], {})
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t)
        losses.append(float(m["loss"]))
    step_s = statistics.median(times)
    jsv_after = mean_jsv(fns.merge(state.params, state.rest))
    peak, source = peak_memory()
    print(f"{args.arch} TPP ({args.ratio} of *layer*.conv1), batch {args.batch}, {args.steps} steps on "
          f"{dev.device_kind}: {step_s * 1e3:.1f} ms/step ({args.batch / step_s:.0f} images/s), first step incl. "
          f"compile {compile_s:.1f} s; loss {first_loss:.3f} -> {statistics.mean(losses[-16:]):.3f} "
          f"(mean of the last 16); mean JSV (bn=batch) {jsv_before:.4g} -> {jsv_after:.4g}; "
          f"peak {mib(peak)} ({source}; the whole run, one process); load average {load_average():.1f}")


if __name__ == "__main__":
    main()
