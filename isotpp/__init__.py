"""isotpp: dynamical-isometry analysis of neural-network pruning in JAX.

Importing isotpp changes nothing outside it (no environment variable is
touched). On a CPU, call :func:`configure_cpu` before the first JAX
computation to get the XLA settings isotpp's speed figures were measured
with; the ``isotpp`` command does so itself.

The one-call API below is imported on first use, so ``import isotpp`` (and
``isotpp --help``) stays fast.
"""

import importlib
import logging
import os
import sys
from importlib.metadata import PackageNotFoundError, version

__version__ = "0.1.0"

__all__ = [
    "channel_groups",
    "configure_cpu",
    "describe",
    "fit_schedule",
    "hard_prune",
    "l1_plan",
    "load_model",
    "model_singular_values",
    "prune_optax",
    "pruned_model",
    "save_model",
    "soft_prune",
    "tpp_state",
]

_logger = logging.getLogger(__name__)

# XLA's CPU backend sends only reductions to YNNPACK: its convolution fusions run weight-gradient
# convolutions 2-5x slower than the Eigen path (isotpp/models/ops.py, docs/results.md), while its
# reductions run the BatchNorm chains faster (the ResNet56 step 1-10 % faster than with every YNNPACK
# fusion off, and as fast as with all but the convolutions on: bench_conv_step.py --paired, docs/speed.md).
# Dots stay on Eigen (jaxlib 0.10.2's YNNPACK fusions reportedly crash or hang on some rank-7/8 multiply-reduce
# patterns rewritten to dots: jax-ml/jax#39257).
_CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=reduce",)


def configure_cpu() -> None:
    """Append isotpp's CPU flags to ``XLA_FLAGS`` (for jaxlib 0.10, the versions they were measured on).

    Call it before the first JAX computation: XLA reads the flags when it
    creates its CPU client. A flag set explicitly in ``XLA_FLAGS`` wins;
    ``ISOTPP_XLA_DEFAULTS=0`` leaves ``XLA_FLAGS`` alone. The ``isotpp``
    command calls it at start::

        import isotpp
        isotpp.configure_cpu()
        import jax  # then use JAX and isotpp as usual
    """
    if os.environ.get("ISOTPP_XLA_DEFAULTS", "1") == "0":
        return
    try:
        if not version("jaxlib").startswith("0.10."):
            return  # unknown flags abort XLA: only pass what this jaxlib is known to accept
    except PackageNotFoundError:  # no metadata: be conservative
        return
    old = os.environ.get("XLA_FLAGS", "")
    flags = old
    for flag in _CPU_FLAGS:
        if flag.split("=")[0] not in flags:
            flags = f"{flags} {flag}".strip()
    if flags == old:
        return
    bridge = sys.modules.get("jax._src.xla_bridge")
    if bridge is not None and bridge.backends_are_initialized():
        _logger.warning("isotpp.configure_cpu() was called after JAX started its backends: the CPU flags take "
                        "effect in the next process; call it before the first JAX computation")
    os.environ["XLA_FLAGS"] = flags


# The one-call API, imported on first use (keeps `import isotpp` and `isotpp --help` fast).
_LAZY = {
    "prune_optax": "isotpp.pruning.optax_prune",
    "pruned_model": "isotpp.pruning.optax_prune",
    "fit_schedule": "isotpp.pruning.optax_prune",
    "tpp_state": "isotpp.pruning.tpp",
    "describe": "isotpp.pruning.tpp",
    "channel_groups": "isotpp.pruning.groups",
    "l1_plan": "isotpp.pruning.plan",
    "soft_prune": "isotpp.pruning.plan",
    "hard_prune": "isotpp.pruning.plan",
    "save_model": "isotpp.pruning.model_file",
    "load_model": "isotpp.pruning.model_file",
    "model_singular_values": "isotpp.spectra.jacobian",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'isotpp' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
