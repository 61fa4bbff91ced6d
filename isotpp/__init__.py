"""isotpp: dynamical-isometry analysis of neural-network pruning in JAX."""

import os as _os

__version__ = "0.1.0"

# XLA's CPU backend: YNNPACK's convolution fusions run weight-gradient convolutions
# 2-5x slower than the Eigen path (measured; see isotpp/ops.py and the README's
# "CPU speed" section). The flag must be set before JAX creates its CPU client,
# so it is appended here, at import. ISOTPP_XLA_DEFAULTS=0 leaves XLA_FLAGS alone;
# a flag the user set explicitly always wins.
_CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=",)


def xla_defaults() -> None:
    """Append isotpp's CPU flags to ``XLA_FLAGS`` (for jaxlib 0.10, the versions they were measured on)."""
    if _os.environ.get("ISOTPP_XLA_DEFAULTS", "1") == "0":
        return
    try:
        from importlib.metadata import version

        if not version("jaxlib").startswith("0.10."):
            return  # unknown flags abort XLA: only pass what this jaxlib is known to accept
    except Exception:  # noqa: BLE001 - no metadata: be conservative
        return
    flags = _os.environ.get("XLA_FLAGS", "")
    for flag in _CPU_FLAGS:
        if flag.split("=")[0] not in flags:
            flags = f"{flags} {flag}".strip()
    _os.environ["XLA_FLAGS"] = flags


xla_defaults()

# The one-call API, imported on first use (keeps `import isotpp` and `isotpp --help` fast).
_LAZY = {
    "prune_optax": "isotpp.optax_pruning",
    "pruned_model": "isotpp.optax_pruning",
    "fit_schedule": "isotpp.optax_pruning",
    "tpp_state": "isotpp.tpp",
    "describe": "isotpp.tpp",
    "channel_groups": "isotpp.groups",
    "l1_plan": "isotpp.plan",
    "soft_prune": "isotpp.plan",
    "hard_prune": "isotpp.plan",
    "save_model": "isotpp.checkpoint",
    "load_model": "isotpp.checkpoint",
    "model_singular_values": "isotpp.spectrum",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'isotpp' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
