"""The spectral lens on masks at initialisation: approximate isometry and the JSV.

* :func:`isometrize` — Lee et al.'s approximate isometry (ICLR 2020) for a
  masked network: SGD on Σ_l ‖W̃_lᵀW̃_l − I‖_F with W̃ = W ⊙ M, the mask kept
  (pruned weights stay exactly 0), through :func:`isotpp.pruning.isometry.approximate_isometry`.
* :func:`jsv_at_init` — the per-sample Jacobian singular values of a masked
  network (through :func:`isotpp.spectra.jacobian.model_singular_values`, ``gram``
  method, eval mode) and their summary, so every method's spectrum can be
  compared before training.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from isotpp.pai.masks import apply_masks
from isotpp.pai.net import PrunableNet
from isotpp.pruning.isometry import approximate_isometry
from isotpp.spectra.jacobian import model_singular_values, summarize

__all__ = ["isometrize", "jsv_at_init"]


def isometrize(net: PrunableNet, masks: Mapping[str, jax.Array], *, iters: int, lr: float = 0.1, params=None):
    """``params`` (default: the net's initial ones) with the masked kernels made approximately isometric."""

    base = net.params if params is None else params
    kernels = net.kernels(base)
    new = approximate_isometry(kernels, {n: jnp.asarray(masks[n]) for n in net.names}, iters=iters, lr=lr)
    return apply_masks(net.with_kernels(new, base), masks)


def jsv_at_init(net: PrunableNet, params, x, *, method: str = "gram") -> dict[str, float]:
    """Summary of the JSV of the network with ``params`` on inputs ``x``: mean, std, max, min, cond_mean,
    diff_mean and the fraction of exactly-zero singular values (a severed network has J = 0)."""

    sv = model_singular_values(net.model(params), x, method=method)
    with np.errstate(invalid="ignore"):  # a severed network: s_max = s_min = 0, its condition number is nan
        out = summarize(sv).as_dict()
    out["zero_fraction"] = float(np.mean(np.asarray(sv) == 0.0))
    return out
