"""Training throughput of the data-parallel trainer (a benchmark, not a test).

    python benchmarks/bench_throughput.py [--cases resnet56,resnet50] [--steps 5] [--bf16] [--json out.json]

Times the trainer's jitted, donated step (isotpp.training.sharded.Trainer.train_step)
on every device present, for plain SGD and for TPP (the optax wrapper with the
paper's plan: ``*layer*.conv1:0.5`` for ResNet56, the stage ratios
``*layer[1-3]*conv[1-2]:0.3,*layer4*conv[1-2]:0.14`` for ResNet-50):

* ResNet56, CIFAR shape (32×32×3, 10 classes), global batch 128;
* ResNet-50, ImageNet shape (224×224×3, 1000 classes), global batch
  ``--imagenet-batch`` (default 256 on accelerators, 8 on CPU).

Batches are random and already on the devices (this measures the step, not
the input pipeline). Compilation is reported separately (first call minus a
steady step); images/s is the global batch over the median step time. The
device kind and count are printed with the results, and after each row its
memory: XLA's memory analysis of the row's compiled step (arguments, outputs
and temporaries: the row's own figure), and the process's peak so far (device
statistics where the backend has them, peak RSS on CPU): the cases run in
order in one process, so that peak includes the rows before it. Each row gives
the load average when it finished.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from _bench import load_average, mib, peak_memory, xla_bytes

from isotpp import parallel
from isotpp.models import create_model, layer_names
from isotpp.pruning.groups import channel_groups
from isotpp.pruning.plan import l1_plan
from isotpp.pruning.tpp import TPPConfig, targets_for, tpp
from isotpp.training.engine import reference_sgd
from isotpp.training.sharded import TrainConfig, Trainer

CASES = {
    # name: (architecture, input shape, classes, TPP ratios, TPP config)
    "resnet56": ("resnet56", (32, 32, 3), 10, "*layer*.conv1:0.5", TPPConfig()),
    "resnet20": ("resnet20", (32, 32, 3), 10, "*layer*.conv1:0.5", TPPConfig()),  # quick dry runs
    "resnet50": ("resnet50", (224, 224, 3), 1000, "*layer[1-3]*conv[1-2]:0.3,*layer4*conv[1-2]:0.14",
                 TPPConfig(update_reg_interval=5, stabilize_iters=40_000)),
}


class _NoData:
    """The trainer wants a source; the benchmark feeds batches itself."""

    def __init__(self, batch, mesh):
        self.global_batch_size, self.steps_per_epoch, self.mesh = batch, 1, mesh


def time_case(name: str, method: str, batch: int, steps: int, mesh, bf16: bool) -> dict:
    arch, shape, classes, ratios, tpp_config = CASES[name]
    model = create_model(arch, num_classes=classes, init="kaiming", dtype=jnp.bfloat16 if bf16 else None)
    tx = reference_sgd(0.01, 5e-4)
    if method == "tpp":
        plan = l1_plan(model, ratios)
        tx = tpp(tx, plan, targets_for(plan, channel_groups(model), layer_names(model), tpp_config), tpp_config)
    trainer = Trainer(model, tx, _NoData(batch, mesh), TrainConfig(epochs=1, lr_schedule="0.01", progress=False))
    rng = np.random.default_rng(0)
    local = parallel.local_batch_size(batch)
    x, y = parallel.global_batch_from_local(
        (rng.normal(size=(local, *shape)).astype(np.float32), rng.integers(0, classes, local).astype(np.int32)),
        parallel.batch_sharding(mesh),
    )
    t = time.perf_counter()
    jax.block_until_ready(trainer.train_step(x, y))
    first = time.perf_counter() - t
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        jax.block_until_ready(trainer.train_step(x, y))
        times.append(time.perf_counter() - t)
    step = statistics.median(times)
    lr = np.float32(trainer.lr(0) or 0.0)
    program = xla_bytes(trainer._train_step, trainer.state, x, y, lr, trainer._weights)
    return {"xla_bytes": program, "load": load_average(), "case": name, "method": method, "global_batch": batch, "step_s": step, "images_per_s": batch / step,
            "compile_s": max(first - step, 0.0), "steps_timed": steps, "bf16": bf16}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default="resnet56,resnet50", help="comma-separated: resnet56, resnet50, resnet20")
    p.add_argument("--methods", default="plain,tpp", help="comma-separated: plain, tpp")
    p.add_argument("--steps", type=int, default=5, help="timed steps per case (after the compiling one)")
    p.add_argument("--cifar-batch", type=int, default=128)
    p.add_argument("--imagenet-batch", type=int, default=None, help="default: 256 on GPU/TPU, 8 on CPU")
    p.add_argument("--bf16", action="store_true", help="bfloat16 compute, float32 parameters")
    p.add_argument("--distributed", action="store_true", help="jax.distributed.initialize() first (multi-host)")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()

    parallel.initialize(True if args.distributed else None)
    mesh = parallel.make_mesh()
    dev = jax.devices()[0]
    on_cpu = dev.platform == "cpu"
    host = platform.processor() or platform.machine()
    try:  # the CPU model and count, for the record
        with open("/proc/cpuinfo") as fh:
            info = fh.read().splitlines()
        names = [line.split(":", 1)[1].strip() for line in info if line.startswith("model name")]
        host = f"{len(names)} × {names[0]}" if names else host
    except OSError:
        pass
    header = (f"devices: {jax.device_count()} × {dev.device_kind} ({dev.platform}), "
              f"{jax.process_count()} process(es); jax {jax.__version__}; host {host}")
    print(header)
    results = []
    for name in args.cases.split(","):
        batch = args.cifar_batch if name != "resnet50" else (args.imagenet_batch or (8 if on_cpu else 256))
        batch = -(-batch // mesh.devices.size) * mesh.devices.size
        for method in args.methods.split(","):
            r = time_case(name, method, batch, args.steps, mesh, args.bf16)
            results.append(r)
            r["peak_bytes"], r["peak_source"] = peak_memory()
            print(f"{name:9s} {method:5s} batch {batch:4d}: {r['images_per_s']:9.1f} images/s "
                  f"(step {r['step_s'] * 1e3:8.1f} ms, median of {args.steps}; compile {r['compile_s']:.1f} s; "
                  f"XLA memory analysis of the step {mib(r['xla_bytes'])}; "
                  f"{r['peak_source']} of the process so far {mib(r['peak_bytes'])}; load {r['load']:.1f})",
                  flush=True)  # fmt: skip
    if args.json:
        from isotpp.storage.atomic import write_json

        write_json(args.json, {"devices": parallel.describe(mesh), "header": header, "results": results})


if __name__ == "__main__":
    main()
