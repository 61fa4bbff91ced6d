"""Cost per class of the exact (``gram``) spectrum as the classes grow: 10, 100, 1,000 (a benchmark, not a test).

    python benchmarks/bench_spectrum_classes.py [--samples 8] [--classes 10,100,1000] [--repeats 2]

A small ConvNet (LeNet5 on 32×32×3 inputs, so that D = 3,072 ≥ C) with 10,
100 and 1,000 outputs; one chunk of ``--samples`` samples; the time per sample
per class after compilation (reported separately), and each worker's peak
memory. Above 32 classes it times the former path ("before": the class
blocks of 32 vmapped VJPs inside a ``lax.map``, OpenBLAS's default threads for
``eigvalsh``), the same blocks unrolled in one program
(:func:`isotpp.spectra.jacobian.jacobian_rows`) and the current path ("after": those
blocks, ``eigvalsh`` in one BLAS thread, :func:`isotpp.spectra.jacobian.one_blas_thread`),
one after the other, each in its own process.

Measured (2 vCPU shared with four other engineers' jobs, load average 13–15,
so only ratios mean anything; ``--samples 4 --repeats 2``), µs per sample per
class: 10 classes 1,300; 100 classes now 1,654, blocks with OpenBLAS's default
threads 3,450, before 3,866; 1,000 classes now 6,687, 4,604, before 5,077
(within the noise: an earlier run gave now 3,673, before 5,592). At 1,000
classes LeNet5's Gram matrix (2·C·D FLOPs per sample and class) outweighs its
VJPs; the table and its reading are in docs/speed.md.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import sys
import time

from _bench import emit, machine, mib, run_worker


def _former_rows(f, x):
    """The former jacobian_rows above 32 classes: blocks of 32 vmapped VJPs inside a lax.map."""
    import jax
    import jax.numpy as jnp

    logits, vjp = jax.vjp(f, x)
    b, c = logits.shape
    eye = jnp.eye(c, dtype=logits.dtype)
    chunk = 32
    n_chunks = math.ceil(c / chunk)

    def chunk_rows(i):
        ks = jnp.minimum(i * chunk + jnp.arange(chunk), c - 1)
        return jax.vmap(lambda k: vjp(jnp.broadcast_to(eye[k], (b, c)))[0].reshape(b, -1))(ks)

    rows = jax.lax.map(chunk_rows, jnp.arange(n_chunks)).reshape(n_chunks * chunk, b, -1)[:c]
    return jnp.swapaxes(rows, 0, 1)


def worker(classes: int, variant: str, samples: int, repeats: int) -> None:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from isotpp.models import create_model
    from isotpp.spectra import jacobian as sp

    model = create_model("lenet5", num_classes=classes, input_shape=(32, 32, 3), seed=0)
    graphdef, state = nnx.split(model)
    x = jax.random.normal(jax.random.key(0), (samples, 32, 32, 3))
    rows_fn = _former_rows if variant == "before" else sp.jacobian_rows
    blas = sp.one_blas_thread() if variant == "after" else contextlib.nullcontext()

    def sv(state, x):
        def f(x):
            m = nnx.merge(graphdef, state, copy=True)
            m.eval()
            return m(x)

        rows = rows_fn(f, x)
        gram = jnp.einsum("bkd,bld->bkl", rows, rows, precision=jax.lax.Precision.HIGHEST)
        return jnp.linalg.eigvalsh(gram)

    fn = jax.jit(sv)
    blas.__enter__()
    t = time.perf_counter()
    jax.block_until_ready(fn(state, x))
    compile_s = time.perf_counter() - t
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(state, x))
        ts.append(time.perf_counter() - t)
    med = statistics.median(ts)
    emit({"classes": classes, "variant": variant, "compile_s": compile_s, "seconds": med,
          "us_per_sample_class": med / samples / classes * 1e6})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--classes", default="10,100,1000")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--worker", nargs=2, metavar=("CLASSES", "VARIANT"))
    a = p.parse_args(argv)
    if a.worker:
        worker(int(a.worker[0]), a.worker[1], a.samples, a.repeats)
        return 0
    print(f"# exact spectrum cost per class, LeNet5 32x32x3, {a.samples} samples; {machine()}")
    print("| classes | path | µs / sample / class | compile s | peak memory | load |")
    print("|---|---|---|---|---|---|")
    for c in (int(v) for v in a.classes.split(",")):
        for variant in (("after", "blocks", "before") if c > 32 else ("after",)):
            r = run_worker(__file__, "--worker", str(c), variant, "--samples", str(a.samples),
                           "--repeats", str(a.repeats))
            label = {"after": "unrolled, 1 BLAS thread" if c <= 32 else "vmapped blocks, 1 BLAS thread (now)",
                     "blocks": "vmapped blocks, BLAS default threads", "before": "lax.map, BLAS default (before)"}[variant]
            print(f"| {c} | {label} | {r['us_per_sample_class']:,.0f} | {r['compile_s']:.1f} | "
                  f"{mib(r['peak_bytes'])} | {os.getloadavg()[0]:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
