"""OrthP — the oracle trainability recovery (Wang et al. 2021; REFERENCE §4).

After pruning and before retraining, every conv/dense kernel is replaced by the
orthogonal factor of its QR decomposition: the kernel as W (rows = filters),
transposed if it has fewer rows than columns, Q·sign(diag R) (so the result is
the unique QR factor with a positive diagonal of R), transposed back, times the
activation gain (1 linear, √2 ReLU). On a linear MLP every JSV becomes 1.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from isotpp.errors import UserError
from isotpp.groups import map_named
from isotpp.models import ACT_GAIN, layer_names


def orthogonalize(kernel: np.ndarray, gain: float = 1.0) -> np.ndarray:
    """The OrthP image of one kernel (Flax layout, filters last), same shape and dtype."""
    k = np.asarray(kernel)
    w = k.reshape(-1, k.shape[-1]).T.astype(np.float64)  # (filters, fan_in)
    transposed = w.shape[0] < w.shape[1]
    if transposed:
        w = w.T
    q, r = np.linalg.qr(w)
    d = np.sign(np.diag(r))
    d[d == 0] = 1.0
    q = q * d[None, :]
    if transposed:
        q = q.T
    out = (gain * q).T.reshape(k.shape)  # back to (…, fan_in, n)
    return out.astype(k.dtype)


def orthp(model: nnx.Module, act: str = "linear") -> nnx.Module:
    """Apply OrthP to every conv/dense kernel of ``model`` in place; returns the model."""
    if act not in ACT_GAIN:
        raise UserError(f"unknown activation {act!r} for the OrthP gain: use one of {', '.join(ACT_GAIN)}")
    gain = ACT_GAIN[act]
    kernels = {f"{name}.kernel" for name in layer_names(model)}
    state = nnx.state(model, nnx.Param)
    new = map_named(lambda name, x: jnp.asarray(orthogonalize(np.asarray(x), gain)) if name in kernels else x, state)
    nnx.update(model, new)
    return model
