"""Mean-field signal propagation through wide fully connected networks.

A layer computes h^l = W^l x^(l-1) + b^l, x^l = phi(h^l), with weight entries of
variance sigma_w^2 / fan_in (or sigma_w times a Haar orthogonal matrix) and biases
N(0, sigma_b^2). For N -> infinity the pre-activations of a layer are Gaussian with
a variance q^l that follows the deterministic *variance map* (Poole et al. 2016)

    q^l = V(q^(l-1)) = sigma_w^2 E[phi(sqrt(q^(l-1)) z)^2] + sigma_b^2,   z ~ N(0, 1),

and two inputs' correlation c follows the *correlation map*

    c^l = C(c^(l-1)) = (sigma_w^2 E[phi(u_1) phi(u_2)] + sigma_b^2) / q*,
    u_1 = sqrt(q*) z_1,  u_2 = sqrt(q*) (c z_1 + sqrt(1 - c^2) z_2).

Returned quantities (Schoenholz et al. 2017, "Deep information propagation"):

* ``q_star``: the stable fixed point q* = V(q*);
* ``chi`` = sigma_w^2 E[phi'(h)^2], h ~ N(0, q*): the slope C'(1), which is also
  the mean squared singular value gained per layer; chi = 1 is the order-to-chaos
  line;
* ``xi_q`` = -1 / log V'(q*): depth scale of the variance's convergence to q*,
  with V'(q*) = sigma_w^2 E[phi'(h)^2 + phi(h) phi''(h)];
* ``xi_c`` = -1 / log C'(c*): depth scale of the correlation, at the stable
  correlation fixed point c* (1 in the ordered phase chi < 1, below 1 in the
  chaotic phase); infinite on the critical line.

Activations: ``linear``, ``tanh``, ``relu``, ``hard_tanh`` (clip to [-1, 1]).
Expectations use closed forms where they exist (linear, relu, hard_tanh) and
Gauss-Hermite quadrature for tanh (analytic integrand: 1e-12 and better).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import integrate, optimize, special

from isotpp.errors import UserError, nonnegative

__all__ = [
    "ACTIVATIONS",
    "MeanField",
    "activation_derivative_moments",
    "chi_one_sigma_w",
    "correlation_map",
    "derivative_law",
    "fixed_point",
    "mean_field",
    "variance_map",
    "variance_trajectory",
]

ACTIVATIONS = ("linear", "tanh", "relu", "hard_tanh")

_GH_NODES = 161
_Z, _WZ = np.polynomial.hermite_e.hermegauss(_GH_NODES)
_WZ = _WZ / math.sqrt(2 * math.pi)  # E[f(z)] = sum(_WZ * f(_Z))
_Z2, _W2 = np.polynomial.hermite_e.hermegauss(81)
_W2 = _W2 / math.sqrt(2 * math.pi)


def _check_act(act) -> str:
    key = str(act).lower()
    if key == "identity":
        key = "linear"
    if key not in ACTIVATIONS:
        raise UserError(f"unknown activation {act!r}: use one of {', '.join(ACTIVATIONS)}")
    return key




def _check_positive(name: str, value) -> float:
    v = nonnegative(name, value)
    if v == 0:
        raise UserError(f"{name} must be > 0, got {value!r}")
    return v


def _phi(act: str, h):
    if act == "tanh":
        return np.tanh(h)
    if act == "relu":
        return np.maximum(h, 0.0)
    if act == "hard_tanh":
        return np.clip(h, -1.0, 1.0)
    return h


def _Phi(x):
    return 0.5 * special.erfc(-x / math.sqrt(2.0))


def _pdf(x):
    return np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


# ----------------------------------------------------------------- one-dimensional


def _mean_phi_sq(act: str, q: float) -> float:
    """E[phi(h)^2], h ~ N(0, q)."""
    if q == 0:
        return 0.0
    if act == "linear":
        return q
    if act == "relu":
        return q / 2
    if act == "hard_tanh":
        a = 1 / math.sqrt(q)
        inside = (2 * _Phi(a) - 1) - 2 * a * _pdf(a)  # E[z^2; |z| < a]
        return q * inside + 2 * (1 - _Phi(a))
    return float(_WZ @ np.tanh(math.sqrt(q) * _Z) ** 2)


def activation_derivative_moments(act: str, q: float, k: int) -> float:
    """mu_k = E[phi'(h)^(2k)], h ~ N(0, q) (q = 0: phi'(0)^(2k))."""
    act, q = _check_act(act), nonnegative("q", q)
    if act == "linear" or k == 0:
        return 1.0
    if act == "relu":
        return 0.5
    if act == "hard_tanh":
        return 1.0 if q == 0 else float(special.erf(1 / math.sqrt(2 * q)))
    return float(_WZ @ np.cosh(math.sqrt(q) * _Z) ** (-4 * k))


@dataclass(frozen=True)
class DerivativeLaw:
    """The law of phi'(h)^2, h ~ N(0, q): an atom ``p`` at 1 and 1 - p at 0
    (linear, relu, hard_tanh), or (tanh) a density on (0, 1] given as bins of equal
    mass between the decreasing ``edges`` (the exact quantiles of sech(h)^4)."""

    act: str
    q: float
    p: float | None = None
    edges: np.ndarray | None = field(default=None, repr=False)

    @property
    def is_bernoulli(self) -> bool:
        return self.p is not None

    def moment(self, k: int) -> float:
        """mu_k = E[phi'(h)^(2k)] (exact, not from the bins; p for an atom at 1)."""
        if self.is_bernoulli:
            return 1.0 if k == 0 else self.p
        return activation_derivative_moments(self.act, self.q, k)

    @property
    def nonzero_fraction(self) -> float:
        return self.p if self.is_bernoulli else 1.0


_BINS = 256


def derivative_law(act: str, q: float) -> DerivativeLaw:
    """The law of the squared derivative phi'(h)^2 for h ~ N(0, q)."""
    act, q = _check_act(act), nonnegative("q", q)
    if act == "tanh" and q > 0:
        # |h| quantiles at equal steps of probability; h = inf (the last) maps to 0
        u = np.linspace(0.0, 1.0, _BINS + 1)
        h = math.sqrt(q) * special.ndtri(0.5 + 0.5 * u[:-1])
        edges = np.concatenate([np.cosh(h) ** -4.0, [0.0]])
        return DerivativeLaw(act, q, edges=edges)
    return DerivativeLaw(act, q, p=activation_derivative_moments(act, q, 1))


def variance_map(act: str, q: float, sigma_w: float, sigma_b: float = 0.0) -> float:
    """V(q) = sigma_w^2 E[phi(sqrt(q) z)^2] + sigma_b^2."""
    act = _check_act(act)
    return sigma_w**2 * _mean_phi_sq(act, nonnegative("q", q)) + sigma_b**2


def variance_trajectory(act: str, q0: float, sigma_w: float, sigma_b: float, layers: int) -> list[float]:
    """q^1, ..., q^layers from the input's mean square q0 = |x|^2 / N_0."""
    act = _check_act(act)
    out, q = [], sigma_w**2 * q0 + sigma_b**2  # the first layer sees x itself, not phi(x)
    for _ in range(layers):
        out.append(q)
        q = variance_map(act, q, sigma_w, sigma_b)
    return out


def _dV(act: str, q: float, sigma_w: float) -> float:
    """V'(q) = sigma_w^2 E[phi'^2 + phi phi''] (Gaussian integration by parts)."""
    if act == "linear":
        return sigma_w**2
    if act == "relu":
        return sigma_w**2 / 2
    if act == "hard_tanh":
        # phi'' = delta(h + 1) - delta(h - 1): E[phi phi''] = -2 p_q(1)
        if q == 0:
            return sigma_w**2
        return sigma_w**2 * (math.erf(1 / math.sqrt(2 * q)) - 2 * _pdf(1 / math.sqrt(q)) / math.sqrt(q))
    t = np.tanh(math.sqrt(q) * _Z)
    return sigma_w**2 * float(_WZ @ ((1 - t * t) ** 2 - 2 * t * t * (1 - t * t)))


def fixed_point(act: str, sigma_w: float, sigma_b: float = 0.0) -> float:
    """q* alone (cheaper than :func:`mean_field`): inf where the variance grows without bound."""
    act = _check_act(act)
    return _fixed_point(act, _check_positive("sigma_w", sigma_w), nonnegative("sigma_b", sigma_b))


def _fixed_point(act: str, sigma_w: float, sigma_b: float) -> float:
    """The stable fixed point q* of the variance map (inf when q grows without bound)."""
    if act in ("linear", "relu"):
        slope = sigma_w**2 if act == "linear" else sigma_w**2 / 2
        if slope < 1 - 1e-12:
            return sigma_b**2 / (1 - slope)
        return math.inf  # grows, or (slope 1, sigma_b 0) every q is a fixed point: none is isolated
    if sigma_b == 0 and sigma_w <= 1:  # phi'(0) = 1: q -> 0
        return 0.0
    top = sigma_w**2 + sigma_b**2 + 1.0  # phi^2 <= 1 bounds V
    lo = 1e-300 if sigma_b > 0 else 1e-12
    f = lambda q: variance_map(act, q, sigma_w, sigma_b) - q
    if f(lo) <= 0:  # sigma_b = 0 with sigma_w just above 1: q* below lo
        return 0.0
    return float(optimize.brentq(f, lo, top, xtol=1e-15, rtol=1e-14, maxiter=500))


# ----------------------------------------------------------------- two-dimensional


def _clip_mean(m, s):
    """E[clip(m + s Z, -1, 1)] for Z ~ N(0, 1), s > 0 (vectorised in m)."""
    a, b = (-1 - m) / s, (1 - m) / s
    inside = m * (_Phi(b) - _Phi(a)) + s * (_pdf(a) - _pdf(b))
    return inside - _Phi(a) + (1 - _Phi(b))


def correlation_map(act: str, c: float, q: float, sigma_w: float, sigma_b: float = 0.0) -> tuple[float, float]:
    """(C(c), C'(c)) at variance q: C = (sigma_w^2 E[phi(u1) phi(u2)] + sigma_b^2) / q,
    C' = sigma_w^2 E[phi'(u1) phi'(u2)]."""
    act = _check_act(act)
    c = min(max(float(c), -1.0), 1.0)
    s = math.sqrt(max(1 - c * c, 0.0))
    r = math.sqrt(q)
    if act == "linear":
        return (sigma_w**2 * q * c + sigma_b**2) / q, sigma_w**2
    if act == "relu":
        theta = math.acos(c)
        k = q / (2 * math.pi) * (s + (math.pi - theta) * c)
        return (sigma_w**2 * k + sigma_b**2) / q, sigma_w**2 * (math.pi - theta) / (2 * math.pi)
    if act == "tanh":
        z1, z2 = _Z2[:, None], _Z2[None, :]
        w = _W2[:, None] * _W2[None, :]
        u1, u2 = r * z1, r * (c * z1 + s * z2)
        e = float(np.sum(w * np.tanh(u1) * np.tanh(u2)))
        d = float(np.sum(w / (np.cosh(u1) * np.cosh(u2)) ** 2))
        return (sigma_w**2 * e + sigma_b**2) / q, sigma_w**2 * d
    # hard_tanh: condition on z1, inner expectations in closed form, outer by adaptive quadrature
    a = 1 / r
    if s < 1e-12:
        e, d = _mean_phi_sq("hard_tanh", q), math.erf(a / math.sqrt(2))
    else:
        def outer_e(z1):
            return _pdf(z1) * float(np.clip(r * z1, -1, 1)) * float(_clip_mean(r * c * z1, r * s))

        def outer_d(z1):
            return _pdf(z1) * (_Phi((a - c * z1) / s) - _Phi((-a - c * z1) / s))

        e = integrate.quad(outer_e, -12, 12, points=(-a, a), limit=200, epsabs=1e-13)[0] if a < 12 else \
            integrate.quad(outer_e, -12, 12, limit=200, epsabs=1e-13)[0]
        d = integrate.quad(outer_d, -a, a, limit=200, epsabs=1e-13)[0] if a < 12 else \
            integrate.quad(outer_d, -12, 12, limit=200, epsabs=1e-13)[0]
    return (sigma_w**2 * e + sigma_b**2) / q, sigma_w**2 * d


# ---------------------------------------------------------------------- summary


@dataclass(frozen=True)
class MeanField:
    """Mean-field quantities of one (act, sigma_w, sigma_b): see the module docstring.

    ``q_star`` is inf where there is no isolated fixed point (relu or linear with
    chi > 1: the variance grows; chi = 1 with sigma_b = 0: every q is one), 0 where
    it decays to zero; ``c_star``, ``xi_c`` are None where q*
    is 0 or inf (no correlation map), ``xi_q`` is None where q* is inf.
    """

    act: str
    sigma_w: float
    sigma_b: float
    q_star: float
    chi: float
    xi_q: float | None
    xi_c: float | None
    c_star: float | None

    @property
    def phase(self) -> str:
        if abs(self.chi - 1) < 1e-9:
            return "critical"
        return "ordered" if self.chi < 1 else "chaotic"

    def as_dict(self) -> dict:
        return asdict(self) | {"phase": self.phase}


def _depth_scale(slope: float) -> float:
    slope = abs(slope)
    if slope >= 1 - 1e-12:
        return math.inf
    return -1 / math.log(slope) if slope > 0 else 0.0


def mean_field(act: str, sigma_w: float, sigma_b: float = 0.0) -> MeanField:
    """q*, chi, xi_q, xi_c and c* for activation ``act`` at (sigma_w, sigma_b)."""
    act = _check_act(act)
    sigma_w, sigma_b = _check_positive("sigma_w", sigma_w), nonnegative("sigma_b", sigma_b)
    q = _fixed_point(act, sigma_w, sigma_b)
    if math.isinf(q):
        chi = sigma_w**2 * activation_derivative_moments(act, 1.0, 1)  # relu/linear: q-free
        return MeanField(act, sigma_w, sigma_b, q, chi, None, None, None)
    chi = sigma_w**2 * activation_derivative_moments(act, q, 1)
    xi_q = _depth_scale(_dV(act, q, sigma_w))
    if q == 0:
        return MeanField(act, sigma_w, sigma_b, q, chi, xi_q, None, None)
    c_star = 1.0
    if chi > 1 + 1e-12:  # chaotic: c = 1 is unstable, the stable fixed point lies below
        f = lambda c: correlation_map(act, c, q, sigma_w, sigma_b)[0] - c
        lo, hi = (-1.0 if f(-1.0) > 0 else 0.0), 1 - 1e-3  # f ~ -(chi - 1)(1 - c) there, above quadrature error
        if f(hi) >= 0:  # chi is barely above 1: the two fixed points merge
            c_star = 1.0
        elif f(lo) == 0:
            c_star = lo
        else:
            c_star = float(optimize.brentq(f, lo, hi, xtol=1e-14))
    slope = chi if c_star == 1.0 else correlation_map(act, c_star, q, sigma_w, sigma_b)[1]
    return MeanField(act, sigma_w, sigma_b, q, chi, xi_q, _depth_scale(slope), c_star)


def chi_one_sigma_w(act: str, sigma_b: float) -> float:
    """The sigma_w on the order-to-chaos line chi(sigma_w, sigma_b) = 1."""
    act, sigma_b = _check_act(act), nonnegative("sigma_b", sigma_b)
    if act == "linear":
        return 1.0
    if act == "relu":
        return math.sqrt(2.0)
    if sigma_b == 0:
        return 1.0
    f = lambda s: s**2 * activation_derivative_moments(act, _fixed_point(act, s, sigma_b), 1) - 1
    hi = 1.0
    while f(hi) < 0:
        hi *= 1.5
        if hi > 1e3:
            raise UserError(f"no order-to-chaos transition for {act} at sigma_b={sigma_b}")
    return float(optimize.brentq(f, 1.0, hi, xtol=1e-12))
