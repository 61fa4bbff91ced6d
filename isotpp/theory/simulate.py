"""Finite-width samples of the quantities the theory predicts (numpy, float64).

The second method beside the N -> infinity formulas: draw an MLP (the same
conventions as :class:`isotpp.models.mlp.MLP`: activation after every hidden
layer, none after the last), put an input at the mean-field fixed point, and
build its Jacobian J = W_L D_(L-1) ... D_1 W_1 layer by layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from isotpp.theory.free import fixed_point_input_norm_sq
from isotpp.theory.meanfield import _check_act, _phi

__all__ = ["jacobian_moments", "sample_jacobian", "sample_jacobian_prefixes", "sample_weight"]

_DERIVATIVE = {
    "linear": lambda h: np.ones_like(h),
    "tanh": lambda h: 1 / np.cosh(h) ** 2,
    "relu": lambda h: (h > 0) * 1.0,
    "hard_tanh": lambda h: (np.abs(h) < 1) * 1.0,
}


def sample_weight(rng: np.random.Generator, n_out: int, n_in: int, init: str, sigma_w: float) -> np.ndarray:
    """An (n_out, n_in) weight: Gaussian N(0, sigma_w^2 / n_in) entries, or sigma_w x Haar
    (orthonormal rows if n_out <= n_in, else orthonormal columns)."""
    if init == "gaussian":
        return sigma_w * rng.standard_normal((n_out, n_in)) / math.sqrt(n_in)
    q, r = np.linalg.qr(rng.standard_normal((max(n_out, n_in), min(n_out, n_in))))
    q = q * np.sign(np.diag(r))
    return sigma_w * (q if n_out >= n_in else q.T)


def sample_jacobian(rng: np.random.Generator, widths: Sequence[int], init: str, sigma_w: float,
                    act: str = "linear", sigma_b: float = 0.0, q_in: float | None = None,
                    keep: float = 1.0) -> np.ndarray:
    """J (N_L x N_0) of one random MLP at one input with |x|^2 / N_0 = ``q_in``
    (None: the mean-field fixed point, or 1 where there is none). ``keep`` < 1 zeroes
    a random fraction 1 - keep of every hidden layer's units (random pruning)."""
    return sample_jacobian_prefixes(rng, widths, init, sigma_w, act, sigma_b, q_in, keep)[-1]


def sample_jacobian_prefixes(rng: np.random.Generator, widths: Sequence[int], init: str, sigma_w: float,
                             act: str = "linear", sigma_b: float = 0.0, q_in: float | None = None,
                             keep: float = 1.0) -> list[np.ndarray]:
    """[J_1, ..., J_L] of one random MLP (arguments as :func:`sample_jacobian`): J_l
    (N_l x N_0) = W_l D_(l-1) ... D_1 W_1 is the Jacobian of the depth-l network made of
    the first l layers (no activation after its last), at the same input. One draw thus
    samples the networks of every depth up to L, each with the right law."""
    act = _check_act(act)
    if q_in is None:
        q_in = fixed_point_input_norm_sq(act, sigma_w, sigma_b) or 1.0
    x = rng.standard_normal(widths[0])
    x *= math.sqrt(q_in * widths[0]) / max(np.linalg.norm(x), 1e-300)
    J, out = None, []
    for l in range(1, len(widths)):
        W = sample_weight(rng, widths[l], widths[l - 1], init, sigma_w)
        h = W @ x + sigma_b * rng.standard_normal(widths[l])
        J = W if J is None else W @ J
        out.append(J)
        if l < len(widths) - 1:
            mask = np.ones(widths[l])
            if keep < 1:
                mask[rng.permutation(widths[l])[: round((1 - keep) * widths[l])]] = 0.0
            x = _phi(act, h) * mask
            J = (_DERIVATIVE[act](h) * mask)[:, None] * J
    return out


def jacobian_moments(J: np.ndarray) -> tuple[float, float]:
    """(mean, mean square) of lambda over the n = min(N_0, N_L) squared singular values."""
    A = J @ J.T if J.shape[0] <= J.shape[1] else J.T @ J
    n = A.shape[0]
    return float(np.trace(A) / n), float(np.sum(A * A) / n)
