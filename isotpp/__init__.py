"""isotpp: dynamical-isometry analysis of neural-network pruning in JAX."""

__version__ = "0.1.0"
