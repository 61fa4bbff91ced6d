"""What sending XLA's reductions to YNNPACK (``isotpp.configure_cpu``) changes in a number: approximate isometry.

    python benchmarks/ynn_rounding.py [--iters 2000]

L1+AI's SGD on the non-squared ‖WᵀW − I‖_F is the method of the README's demo
whose mean JSV moved most with the flag (0.9645 → 1.0226). This runs the same
AI loop on a masked MLP-7-Linear three ways in one process — isotpp's flags,
every YNNPACK fusion off (compiled with ``compiler_options``), and float64 —
and prints the mean and smallest singular value of the kernel product after
it: if the two float32 runs agree with each other better than either agrees
with float64, the flag is not the less accurate one; the method is sensitive
to rounding. Measured 2026-12-01: 0.0054539 with either flag, 0.0057544 in
float64 (5.5 %).
"""

from __future__ import annotations

import argparse

import isotpp

isotpp.configure_cpu()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from isotpp.models import create_model  # noqa: E402
from isotpp.pruning.isometry import _run  # noqa: E402
from isotpp.spectra.jacobian import kernel_product_singular_values  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=2000)
    args = ap.parse_args()
    jax.config.update("jax_enable_x64", True)
    kernels = create_model("mlp_7_linear", init="torch", seed=0).dense_kernels()
    rng = np.random.default_rng(0)
    # keep ≈ 20 % of each hidden layer's units (the demo's ratio 0.8); the output layer whole
    masks = [np.ones(k.shape) if i == len(kernels) - 1 else
             np.repeat((rng.random(k.shape[1]) < 0.2)[None, :], k.shape[0], 0) for i, k in enumerate(kernels)]
    ks = {str(i): k * jnp.asarray(m, jnp.float32) for i, (k, m) in enumerate(zip(kernels, masks))}
    ms = {str(i): jnp.asarray(m, jnp.float32) for i, m in enumerate(masks)}
    call = (ks, ms, jnp.asarray(args.iters, jnp.int32), jnp.asarray(0.1, jnp.float32))
    lowered = _run.lower(*call)
    out = {"isotpp's flags (YNNPACK reductions)": lowered.compile()(*call),
           "every YNNPACK fusion off": lowered.compile(
               compiler_options={"xla_cpu_experimental_ynn_fusion_type": ""})(*call)}
    f64 = {n: k.astype(jnp.float64) for n, k in ks.items()}
    out["float64"] = _run(f64, {n: m.astype(jnp.float64) for n, m in ms.items()},
                          jnp.asarray(args.iters, jnp.int32), jnp.asarray(0.1, jnp.float64))
    print(f"approximate isometry, {args.iters} SGD steps at lr 0.1, masked MLP-7-Linear")
    print(f"{'run':<38}{'mean JSV':>12}{'min JSV':>12}")
    for name, res in out.items():
        s = np.asarray(kernel_product_singular_values([res[str(i)] for i in range(len(res))]), np.float64)
        print(f"{name:<38}{s.mean():>12.7f}{s.min():>12.7f}")


if __name__ == "__main__":
    main()
