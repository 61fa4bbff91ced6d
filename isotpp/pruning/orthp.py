"""OrthP — the oracle trainability recovery (Wang et al. 2021; REFERENCE §4).

After pruning and before retraining, every conv/dense kernel is replaced by the
orthogonal factor of its QR decomposition, as the reference's
``orthogonalize_weights`` computes it: the kernel as W (rows = filters, columns
= the fan-in flattened in PyTorch's order c_in, kh, kw), transposed if it has
fewer rows than columns, Q·sign(diag R), transposed back, times the activation
gain (1 linear, √2 ReLU). On a linear MLP every JSV becomes 1.

The fan-in order matters when W is not transposed (at least as many filters as
fan-in, e.g. a 3×3 conv from 3 to 64 channels): the QR of a column-permuted
matrix is a different orthogonal matrix. With a transpose it only permutes the
rows of Q. As in the reference, sign(0) = 0: a column of Q whose diagonal entry
of R is exactly 0 (a rank-deficient kernel, e.g. with an all-zero filter) is
zeroed, not kept; ``zero_sign=1.0`` keeps it instead (the unique-QR convention).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from isotpp.errors import UserError
from isotpp.models import ACT_GAIN, layer_names
from isotpp.models.program import map_named
from isotpp.pruning.penalties import from_torch_filters, torch_filters


def orthogonalize(kernel: np.ndarray, gain: float = 1.0, *, zero_sign: float = 0.0) -> np.ndarray:
    """The OrthP image of one kernel (Flax layout, filters last), same shape and dtype.

    ``zero_sign``: the sign used where diag(R) is exactly 0 (0, the reference's
    ``torch.sign``, zeroes that column of Q).
    """
    k = np.asarray(kernel)
    w = torch_filters(k.astype(np.float64))  # (filters, fan_in), fan-in in PyTorch order
    transposed = w.shape[0] < w.shape[1]
    if transposed:
        w = w.T
    q, r = np.linalg.qr(w)
    d = np.sign(np.diag(r))
    d[d == 0] = zero_sign
    q = q * d[None, :]
    if transposed:
        q = q.T
    return from_torch_filters(gain * q, k.shape).astype(k.dtype)


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
