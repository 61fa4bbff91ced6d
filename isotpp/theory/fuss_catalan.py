"""Free-probability predictions for the Jacobian spectrum of deep linear networks.

For a linear MLP the input-output Jacobian is J = W_L ... W_1. With N x N layers
and N -> infinity its squared singular values lambda = s^2 have a deterministic
limiting law that depends only on the weight distribution, the depth L and the
weight scale sigma_w:

* Gaussian weights, entries N(0, sigma_w^2 / N): lambda / sigma_w^(2L) follows the
  Fuss-Catalan distribution with parameter L (Penson & Zyczkowski 2011), whose
  moments are the Fuss-Catalan numbers C((L+1)k, k) / (Lk + 1). L = 1 is the
  Marchenko-Pastur law with ratio 1.
* Orthogonal weights W = sigma_w * O: J is sigma_w^L times an orthogonal matrix,
  so every singular value equals sigma_w^L (a point mass).

The Fuss-Catalan density has no elementary closed form in lambda, but it has an
exact parametrisation by an angle (Haagerup & Moller 2012; Neuschel 2014). Write
B(z) = sum_k m_k z^k for the moment generating function; it solves
B = 1 + z B^(L+1). The Stieltjes transform is G(x) = B(1/x) / x, so on the
support w = B(1/x + i0) is a complex root of x = w^(L+1) / (w - 1). With
arg w = phi, the triangle (0, 1, w) has angles phi at 0, L*phi at w and
pi - (L+1)*phi at 1, and the law of sines gives

    x(phi)   = sin((L+1) phi)^(L+1) / (sin(phi) sin(L phi)^L),
    rho(x)   = Im w / (pi x)
             = sin(phi)^2 sin(L phi)^(L-1) / (pi sin((L+1) phi)^L),

for phi in (0, pi/(L+1)); x decreases monotonically from the support edge
(L+1)^(L+1) / L^L (phi -> 0) to 0 (phi -> pi/(L+1)). For L = 1 this is
x = 4 cos^2 phi, rho = tan(phi) / (2 pi) = sqrt(4 - x) / (2 pi sqrt(x)).

Numerically the angle is carried by whichever of phi and delta = pi/(L+1) - phi
is small, so both ends keep full relative precision (the density diverges like
lambda^(-L/(L+1)) at 0 and vanishes like a square root at the edge); x(angle) is
inverted by bisection on log(angle), in log space (machine precision,
vectorised), and the CDF is the integral over the angle, whose integrand is
analytic on the whole interval, by Gauss-Legendre quadrature.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from scipy import integrate

from isotpp.errors import UserError

__all__ = [
    "Theory",
    "fuss_catalan_cdf",
    "fuss_catalan_density",
    "fuss_catalan_moment",
    "fuss_catalan_support",
    "mean_lambda",
    "orthogonal_singular_value",
    "predicted_summary",
    "singular_value_density",
    "theory_for",
    "var_over_mean_sq",
]

_BISECTION_STEPS = 64  # log(delta) spans < 800; 800 / 2**64 is below float64 eps


def _cdf_nodes(L: int) -> int:
    # the CDF integrand is analytic; measured: 64 Gauss-Legendre nodes reach ~1e-13
    # up to L = 100, deeper nets need more (L = 500: 128 nodes)
    return min(512, max(64, 64 + L // 4))


# --------------------------------------------------------------------------- checks


def _check_depth(L) -> int:
    if isinstance(L, bool) or not isinstance(L, numbers.Integral) or L < 1:
        raise UserError(f"depth L must be an integer >= 1, got {L!r}; pass the number of weight matrices")
    return int(L)


def _check_sigma(sigma_w) -> float:
    try:
        s = float(sigma_w)
    except (TypeError, ValueError):
        raise UserError(f"sigma_w must be a positive number, got {sigma_w!r}") from None
    if not math.isfinite(s) or s <= 0.0:
        raise UserError(f"sigma_w must be a finite number > 0, got {sigma_w!r}; use e.g. 1.0 or sqrt(2)")
    return s


def _check_order(k) -> int:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 0:
        raise UserError(f"moment order k must be an integer >= 0, got {k!r}")
    return int(k)


# ------------------------------------------------------------------ closed-form parts


def fuss_catalan_moment(k: int, L: int, sigma_w: float = 1.0) -> float:
    """E[lambda^k] = sigma_w^(2Lk) * C((L+1)k, k) / (Lk + 1) (exact integer, then float)."""
    k, L, sigma_w = _check_order(k), _check_depth(L), _check_sigma(sigma_w)
    return _scaled(_fuss_catalan_number(k, L), sigma_w, 2 * L * k)


def _scaled(n: int, sigma_w: float, power: int) -> float:
    """float(n) * sigma_w**power, but inf instead of OverflowError for huge values."""
    try:
        return float(n) * sigma_w**power
    except OverflowError:
        log_value = math.log(n) + power * math.log(sigma_w)
        return math.exp(log_value) if log_value < 709.0 else math.inf


def _fuss_catalan_number(k: int, L: int) -> int:
    num = math.comb((L + 1) * k, k)
    q, r = divmod(num, L * k + 1)
    assert r == 0  # Fuss-Catalan numbers are integers
    return q


def fuss_catalan_support(L: int, sigma_w: float = 1.0) -> tuple[float, float]:
    """Support (0, sigma_w^(2L) (L+1)^(L+1) / L^L) of lambda = s^2."""
    L, sigma_w = _check_depth(L), _check_sigma(sigma_w)
    log_edge = 2 * L * math.log(sigma_w) + _log_edge(L)
    return 0.0, math.exp(log_edge) if log_edge < 709.0 else math.inf


def _log_edge(L: int) -> float:
    return (L + 1) * math.log(L + 1) - L * math.log(L)


def mean_lambda(L: int, sigma_w: float = 1.0) -> float:
    """E[lambda] = sigma_w^(2L) (the first Fuss-Catalan moment)."""
    return fuss_catalan_moment(1, L, sigma_w)


def var_over_mean_sq(L: int) -> float:
    """Var(lambda) / E[lambda]^2 from the first two moments; equals L exactly."""
    L = _check_depth(L)
    m1, m2 = _fuss_catalan_number(1, L), _fuss_catalan_number(2, L)
    return float(Fraction(m2, m1 * m1) - 1)


def orthogonal_singular_value(L: int, sigma_w: float = 1.0) -> float:
    """Every singular value of (sigma_w O_L) ... (sigma_w O_1): exactly sigma_w^L."""
    L, sigma_w = _check_depth(L), _check_sigma(sigma_w)
    return _scaled(1, sigma_w, L)


# --------------------------------------------------------- the parametrised density
#
# Angles. phi runs from 0 (support edge) to a = pi/(L+1) (lambda -> 0); delta = a - phi.
# Sines of arguments close to pi lose relative precision, so every angle is carried
# by its *small* side: delta when delta <= a/2 (the bulk and lambda -> 0), phi when
# phi < a/2 (towards the edge). In both cases all arguments below stay in (0, pi)
# and away from pi:
#   S1 = sin((L+1) phi) = sin((L+1) delta)     C1 = cos((L+1) delta) = -cos((L+1) phi)
#   S2 = sin(phi)       = sin(a - delta)       C2 = cos(phi)
#   S3 = sin(L phi)     = sin(a + L delta)     C3 = cos(a + L delta) = -cos(L phi)


def _sines(small, on_phi, L: int):
    a = math.pi / (L + 1)
    args = ((L + 1) * small, np.where(on_phi, small, a - small), np.where(on_phi, L * small, a + L * small))
    return args, tuple(np.sin(x) for x in args)


def _trig(small, on_phi, L: int):
    (x1, x2, x3), (s1, s2, s3) = _sines(small, on_phi, L)
    sign = np.where(on_phi, -1.0, 1.0)
    return s1, sign * np.cos(x1), s2, np.cos(x2), s3, sign * np.cos(x3)


def _log_x(small, on_phi, L: int) -> np.ndarray:
    _, (s1, s2, s3) = _sines(small, on_phi, L)
    return (L + 1) * np.log(s1) - np.log(s2) - L * np.log(s3)


def _log_rho(small, on_phi, L: int) -> np.ndarray:
    _, (s1, s2, s3) = _sines(small, on_phi, L)
    return 2 * np.log(s2) + (L - 1) * np.log(s3) - L * np.log(s1) - math.log(math.pi)


def _cdf_integrand(small, on_phi, L: int) -> np.ndarray:
    """rho(x) |dx/d delta| >= 0, written without removable singularities.

    rho * x = sin(phi) sin((L+1) phi) / sin(L phi) (= Im w / pi), times
    d log x / d delta = (L+1)^2 cot((L+1) delta) + cot(phi) - L^2 cot(a + L delta).
    """
    s1, c1, s2, c2, s3, c3 = _trig(small, on_phi, L)
    return ((L + 1) ** 2 * c1 * s2 / s3 + s1 * c2 / s3 - L**2 * s1 * s2 * c3 / s3**2) / math.pi


def _solve_angle(log_x: np.ndarray, L: int):
    """The angle with log x(angle) = log_x (log_x < log edge): (small, on_phi)."""
    a = math.pi / (L + 1)
    half = np.full(log_x.shape, a / 2)
    on_phi = log_x >= _log_x(half, np.zeros(log_x.shape, bool), L)
    # x increases with delta and decreases with phi: bisect log(small) on each side
    lo = np.full(log_x.shape, math.log(np.finfo(float).tiny))
    hi = np.full(log_x.shape, math.log(a / 2))
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        go_up = (_log_x(np.exp(mid), on_phi, L) < log_x) != on_phi
        lo = np.where(go_up, mid, lo)
        hi = np.where(go_up, hi, mid)
    return np.exp(0.5 * (lo + hi)), on_phi


def _split(lam, L: int, sigma_w: float):
    """Standardised log x = log(lam / sigma_w^(2L)) and the mask of the support interior."""
    lam = np.asarray(lam, dtype=float)
    log_scale = 2 * L * math.log(sigma_w)
    pos = lam > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        log_x = np.where(pos, np.log(np.where(pos, lam, 1.0)) - log_scale, 0.0)
    # in logs (no overflow for deep nets), and below the float edge of fuss_catalan_support
    log_edge = log_scale + _log_edge(L)
    inside = pos & (log_x < _log_edge(L)) & (lam < (math.exp(log_edge) if log_edge < 709.0 else math.inf))
    return lam, log_x, inside, log_scale


def fuss_catalan_density(lam, L: int, sigma_w: float = 1.0) -> np.ndarray:
    """Density of lambda = s^2 for a depth-L Gaussian linear network (vectorised).

    Zero outside (0, edge) (see :func:`fuss_catalan_support`), +inf at lambda = 0,
    where it diverges like lambda^(-L/(L+1)); ``nan`` propagates.
    """
    L, sigma_w = _check_depth(L), _check_sigma(sigma_w)
    lam, log_x, inside, log_scale = _split(lam, L, sigma_w)
    out = np.where(lam == 0, np.inf, 0.0)
    if inside.any():
        small, on_phi = _solve_angle(log_x[inside], L)
        out[inside] = np.exp(_log_rho(small, on_phi, L) - log_scale)
    return np.where(np.isnan(lam), np.nan, out)


def fuss_catalan_cdf(lam, L: int, sigma_w: float = 1.0) -> np.ndarray:
    """P(lambda <= lam): the density integrated over (0, lam] (vectorised).

    The integral is taken in the angle, where the integrand is analytic, with a fixed
    Gauss-Legendre rule: from delta = 0 for the lower half of the angle range, and as
    1 - (integral from phi = 0) towards the edge, so both tails keep full precision.
    """
    L, sigma_w = _check_depth(L), _check_sigma(sigma_w)
    lam, log_x, inside, _ = _split(lam, L, sigma_w)
    out = np.where(lam > 0, 1.0, 0.0)
    if inside.any():
        upper, on_phi = _solve_angle(log_x[inside], L)
        nodes, weights = np.polynomial.legendre.leggauss(_cdf_nodes(L))
        small = 0.5 * upper[:, None] * (nodes[None, :] + 1.0)
        part = 0.5 * upper * (_cdf_integrand(small, on_phi[:, None], L) @ weights)
        out[inside] = np.clip(np.where(on_phi, 1.0 - part, part), 0.0, 1.0)
    return np.where(np.isnan(lam), np.nan, out)


def singular_value_density(s, L: int, sigma_w: float = 1.0) -> np.ndarray:
    """Density of s = sqrt(lambda): rho_s(s) = 2 s rho_lambda(s^2); zero for s < 0."""
    s = np.asarray(s, dtype=float)
    pos = s > 0
    lam_density = fuss_catalan_density(np.where(pos, s * s, -1.0), L, sigma_w)
    out = np.where(pos, 2.0 * s * lam_density, 0.0)
    # rho_s(0) is finite (2 / (pi sigma_w), the quarter circle) for L = 1, infinite for L >= 2
    out = np.where(s == 0, 2.0 / (math.pi * _check_sigma(sigma_w)) if L == 1 else np.inf, out)
    return np.where(np.isnan(s), np.nan, out)


def _standard_mean_sqrt(L: int) -> float:
    """E[sqrt(x)] for the standard (sigma_w = 1) Fuss-Catalan law, by quadrature."""
    a = math.pi / (L + 1)

    def integrand(small: float, on_phi: bool) -> float:
        s, side = np.array([small]), np.array([on_phi])
        return float(np.exp(0.5 * _log_x(s, side, L))[0] * _cdf_integrand(s, side, L)[0])

    # the angle range (0, a) in two halves, each from its own small end
    return sum(
        integrate.quad(integrand, 0.0, a / 2, args=(side,), epsabs=0.0, epsrel=1e-11, limit=200)[0]
        for side in (False, True)
    )


def predicted_summary(L: int, sigma_w: float = 1.0) -> dict[str, float]:
    """What the N -> infinity theory predicts for the JSV summaries of a Gaussian linear net.

    Keys: ``mean_lambda`` (E[s^2] = sigma_w^(2L)), ``var_over_mean_sq`` (= L),
    ``lambda_max`` (support edge of s^2), ``max_s`` (its square root), ``min_s`` (0),
    ``mean_s`` (E[s], numerical integral of the density), ``std_s`` and
    ``mean_sq_dev`` (E[(s - 1)^2], the "JSV diff").
    """
    L, sigma_w = _check_depth(L), _check_sigma(sigma_w)
    m1 = mean_lambda(L, sigma_w)
    mean_s = _scaled(1, sigma_w, L) * _standard_mean_sqrt(L)
    edge = fuss_catalan_support(L, sigma_w)[1]
    return {
        "mean_lambda": m1,
        "var_over_mean_sq": var_over_mean_sq(L),
        "lambda_max": edge,
        "max_s": math.sqrt(edge),
        "min_s": 0.0,
        "mean_s": mean_s,
        "std_s": math.sqrt(max(m1 - mean_s**2, 0.0)),
        "mean_sq_dev": m1 - 2.0 * mean_s + 1.0,
    }


# ------------------------------------------------------------------------ dispatcher

_LINEAR_ACTS = ("linear", "identity")


@dataclass(frozen=True)
class Theory:
    """A limiting singular-value law: a density in s, or a point mass.

    ``name`` is ``"fuss-catalan"`` or ``"point-mass"``; ``label`` is short, for plot
    legends; ``point_mass`` is the location of the atom, None for a density.
    """

    name: str
    label: str
    depth: int
    sigma_w: float
    point_mass: float | None = None

    @property
    def is_point_mass(self) -> bool:
        return self.point_mass is not None

    def density_s(self, s) -> np.ndarray:
        """Density of the singular values s (only for laws with a density)."""
        if self.is_point_mass:
            raise ValueError(f"{self.label} is a point mass at {self.point_mass}; it has no density")
        return singular_value_density(s, self.depth, self.sigma_w)

    def support_s(self) -> tuple[float, float]:
        """The interval the singular values s live in (both ends equal for a point mass)."""
        if self.is_point_mass:
            return float(self.point_mass), float(self.point_mass)
        return 0.0, math.sqrt(fuss_catalan_support(self.depth, self.sigma_w)[1])

    def summary(self) -> dict[str, float]:
        """The predicted JSV summaries, same keys as :func:`predicted_summary`."""
        if not self.is_point_mass:
            return predicted_summary(self.depth, self.sigma_w)
        s0 = float(self.point_mass)
        return {
            "mean_lambda": s0 * s0,
            "var_over_mean_sq": 0.0,
            "lambda_max": s0 * s0,
            "max_s": s0,
            "min_s": s0,
            "mean_s": s0,
            "std_s": 0.0,
            "mean_sq_dev": (s0 - 1.0) ** 2,
        }


def theory_for(init: str, depth: int, sigma_w: float = 1.0, act: str = "linear") -> Theory | None:
    """The limiting JSV law for a depth-``depth`` linear MLP, or None if no theory applies.

    ``init``: ``"gaussian"`` (entries N(0, sigma_w^2 / N)), ``"kaiming"`` (the same with
    sigma_w = sqrt(2); the ``sigma_w`` argument is ignored) or ``"orthogonal"``
    (sigma_w times a Haar orthogonal matrix). Only ``act="linear"`` (alias
    ``"identity"``) has a theory here; other activations or inits give None.
    """
    depth, sigma_w = _check_depth(depth), _check_sigma(sigma_w)
    init_key, act_key = str(init).lower(), str(act).lower()
    if act_key not in _LINEAR_ACTS:
        return None
    if init_key == "kaiming":
        init_key, sigma_w = "gaussian", math.sqrt(2.0)
    if init_key == "gaussian":
        return Theory(
            name="fuss-catalan",
            label=f"Fuss–Catalan (L={depth}, σ_w={sigma_w:.3g})",
            depth=depth,
            sigma_w=sigma_w,
        )
    if init_key == "orthogonal":
        s0 = orthogonal_singular_value(depth, sigma_w)
        return Theory(
            name="point-mass",
            label=f"point mass s=σ_w^L={s0:.4g}",
            depth=depth,
            sigma_w=sigma_w,
            point_mass=s0,
        )
    return None
