"""The spectrum of J Jᵀ for wide fully connected networks, by free probability.

isotpp's MLP applies its activation after every hidden layer and none after the
last, so its input-output Jacobian at an input x is

    J = W_L D_(L-1) W_(L-1) ... D_1 W_1,    D_l = diag(phi'(h^l)),

with W_l of shape N_l x N_(l-1) (Gaussian entries N(0, sigma_w^2 / N_(l-1)), or
sigma_w times a Haar (semi-)orthogonal matrix) and h^l the layer's pre-activations,
whose entries are N(0, q_l) for N -> infinity (:mod:`isotpp.theory.meanfield`).
The weights are rotation invariant, so the factors are asymptotically free and
the law of the eigenvalues lambda of J Jᵀ is their free multiplicative
convolution (Pennington, Schoenholz & Ganguli 2017, 2018).

**S-transforms.** For a law with moments m_k write psi(x) = sum_k m_k x^k and
chi = psi^(-1) (the S-transform is S(w) = chi(w) (1 + w) / w). Free products
multiply S-transforms: chi_(AB)(w) = chi_A(w) chi_B(w) (1 + w) / w. A product XY
of an N x M and an M x N matrix has the nonzero spectrum of YX, so
psi_(XY) = (M / N) psi_(YX) and chi_(XY)(w) = chi_(YX)(N w / M). Writing
A_l = J_l J_lᵀ (N_l x N_l), A_l = X Y with X = W_l D_(l-1),
Y = A_(l-1) D_(l-1) W_lᵀ, and Y X = A_(l-1) · (W_lᵀ W_l) · D_(l-1)^2 in N_(l-1)
dimensions, hence

    chi_A(w) = prod_(l=1..L) [ chi_(W_lᵀW_l)(u_l) chi_(D²_(l-1))(u_l) ((1+u_l)/u_l)^(n_l - 1) ],
    u_l = w N_L / N_(l-1),

(n_l = the number of factors at layer l: W_lᵀW_l, D²_(l-1) for l >= 2 unless phi
is linear, and A_(l-1) for l >= 2). The factors:

* Gaussian W (a = N_l / N_(l-1)): chi(u) = u / (sigma_w^2 (1 + u) (a + u))
  (Marchenko-Pastur with ratio 1/a);
* orthogonal W: chi(u) = u / (sigma_w^2 (min(a, 1) + u)) (a projection of rank
  min(a, 1) times sigma_w^2);
* D² for relu, hard_tanh, linear: an atom p at 1, 1 - p at 0, chi(u) = u / (p + u)
  with p = 1/2, erf(1 / sqrt(2 q)), 1;
* D² for tanh: sech(h)^4 with h ~ N(0, q) by Gauss-Hermite quadrature; its chi
  has no closed form and is an unknown x_i of the system, with psi(x_i) = u.

**Moments** follow from chi's expansion: a factor with mean m1 and
v = m2 / m1^2 - 1 contributes m1 multiplicatively and v additively; the
change of dimension N_(l-1) -> N_l maps (m1, v) to (r m1, (v + 1) / r - 1),
r = N_(l-1) / N_l. For equal widths this is E[lambda] = sigma_w^(2L) mu_1^(L-1)
and Var(lambda) / E[lambda]^2 = (L - 1)(mu_2 / mu_1^2 - 1) + L s with
mu_k = E[phi'(h)^(2k)], s = 1 (Gaussian) or 0 (orthogonal).

**Density.** The Stieltjes transform is G(z) = (1 + w) / z where w = psi(1 / z)
solves chi_A(w) = 1 / z. That equation (plus psi_i(x_i) = u_i for tanh layers)
is solved by Newton's method at z = lambda (1 + i eta), eta = 1e-9, continued from
above the support (where w ~ E[lambda] / z) down a log-spaced lambda grid with
adaptive steps; rho(lambda) = -Im G / pi. The atom at 0 has the mass the ranks
force: 1 - min_k(N_k p_k) / N_L (p_k the nonzero fraction of D_k, 1 for inputs,
outputs and weights).

**Which eigenvalues.** The network's n = min(N_0, N_L) singular values s are
what isotpp measures; their squares are the eigenvalues of J Jᵀ (N_L <= N_0) or
JᵀJ (N_0 < N_L), which the law here describes (the N_L - n zeros that N_L > N_0
forces are left out).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from isotpp.errors import UserError, nonnegative
from isotpp.theory.meanfield import (
    DerivativeLaw,
    _check_act,
    _check_positive,
    _fixed_point,
    _mean_phi_sq,
    derivative_law,
)

__all__ = ["ChainSpectrum", "chain_spectrum", "fixed_point_input_norm_sq", "ks_distance"]

INITS = ("gaussian", "orthogonal")
_ETA = 1e-9
_TAIL_TOL = 1e-7


def fixed_point_input_norm_sq(act: str, sigma_w: float, sigma_b: float = 0.0) -> float | None:
    """|x|^2 / N_0 that puts the first layer at the fixed point: E[phi(h)^2], h ~ N(0, q*).

    None when there is no finite, nonzero fixed point: linear, relu with chi >= 1, and
    q* = 0 (sigma_b = 0 in the ordered phase), where inputs "at the fixed point" would
    be zero vectors (for relu a Jacobian of zeros, not the law's phi'(0+) = 1/2); the
    callers then use |x|^2 / N_0 = 1 and the theory follows the variance map from there.
    """
    act = _check_act(act)
    q = _fixed_point(act, _check_positive("sigma_w", sigma_w), nonnegative("sigma_b", sigma_b))
    if math.isinf(q) or q <= 0.0 or act == "linear":
        return None
    return _mean_phi_sq(act, q)


@dataclass(frozen=True)
class _Layer:
    """Factors at layer l in N_(l-1) dimensions: W_lᵀW_l and D²_(l-1)."""

    r: float  # u = r w
    n_factors: int
    w_poles: tuple  # ((c, b), ...): chi_W(u) = u * prod (c + u)^b / sigma^2
    sigma2: float
    d_law: object | None  # DerivativeLaw or None (identity)


def _w_factor(init: str, a: float) -> tuple:
    if init == "gaussian":
        return ((1.0, -1), (a, -1))
    return ((min(a, 1.0), -1),)


def _w_moments(init: str, a: float, sigma2: float) -> tuple[float, float]:
    if init == "gaussian":
        return sigma2 * a, 1 / a
    alpha = min(a, 1.0)
    return sigma2 * alpha, 1 / alpha - 1


@dataclass(eq=False)
class ChainSpectrum:
    """The limiting law of lambda = s^2 for one network (see the module docstring).

    Build with :func:`chain_spectrum`. ``atom`` is the mass at lambda = 0,
    ``top_atom`` the mass at ``top_value`` = sigma_w^(2L) (orthogonal weights with
    linear, relu or hard_tanh: the inputs that every layer passes isometrically);
    ``point_mass`` is ``top_value`` when nothing else is left, else None. Densities
    describe the continuous part (they integrate to 1 - atom - top_atom).
    """

    widths: tuple[int, ...]
    init: str
    sigma_w: float
    act: str
    sigma_b: float
    q_in: float
    q_layers: tuple[float, ...]
    layers: tuple[_Layer, ...] = field(repr=False)
    mean_lambda: float
    var_over_mean_sq: float
    atom: float
    top_atom: float
    top_value: float
    _scale: float = field(repr=False)  # N_L / n: from the N_L-dim law to the n measured values
    _norm_bound: float = field(repr=False)  # >= the largest eigenvalue of J Jᵀ

    # ------------------------------------------------------------- old Theory protocol
    @property
    def depth(self) -> int:
        return len(self.widths) - 1

    @property
    def continuous_mass(self) -> float:
        return max(0.0, 1.0 - self.atom - self.top_atom)

    @property
    def point_mass(self) -> float | None:
        return self.top_value if self.continuous_mass < 1e-9 else None

    @property
    def is_point_mass(self) -> bool:
        return self.point_mass is not None and self.atom == 0.0

    @property
    def name(self) -> str:
        return "free-product"

    @property
    def label(self) -> str:
        shape = "×".join(str(n) for n in self.widths) if len(set(self.widths)) > 1 else f"N={self.widths[0]}"
        return f"free prob.: {self.act}, {self.init}, L={self.depth}, σ_w={self.sigma_w:.3g}" + (
            f", σ_b={self.sigma_b:.3g}" if self.sigma_b else "") + ("" if len(set(self.widths)) == 1 else f" ({shape})")

    def support_s(self) -> tuple[float, float]:
        lo, hi = self.support_lambda()
        return math.sqrt(lo), math.sqrt(hi)

    # ---------------------------------------------------------------------- the law
    def support_lambda(self) -> tuple[float, float]:
        """(lower, upper) edge of the continuous part (or both = the point mass)."""
        if self.point_mass is not None:
            return self.point_mass, self.point_mass
        lam, rho = self._grid[0], self._grid[1]
        on = np.nonzero(rho * lam > 1e-7 * np.max(rho * lam))[0]
        return float(lam[on[-1]]), float(lam[on[0]])  # the grid descends

    def density_lambda(self, lam) -> np.ndarray:
        """Density of the continuous part of lambda (vectorised; zero outside)."""
        lam = np.asarray(lam, dtype=float)
        if self.point_mass is not None:
            return np.zeros_like(lam)
        g_lam, g_rho = self._grid[0][::-1], self._grid[1][::-1]
        with np.errstate(divide="ignore", invalid="ignore"):
            x = np.log(np.where(lam > 0, lam, np.nan))
        out = np.interp(x, np.log(g_lam), g_rho, left=0.0, right=0.0)
        return np.where(lam > 0, np.nan_to_num(out), 0.0)

    def density_s(self, s) -> np.ndarray:
        """Density of s = sqrt(lambda): 2 s rho_lambda(s^2)."""
        if self.point_mass is not None:
            raise ValueError(f"{self.label} has a point mass at s={math.sqrt(self.point_mass):.4g}, no density")
        s = np.asarray(s, dtype=float)
        return np.where(s > 0, 2 * s * self.density_lambda(s * s), 0.0)

    def cdf_lambda(self, lam) -> np.ndarray:
        """P(lambda <= lam), the atom at 0 included."""
        lam = np.asarray(lam, dtype=float)
        top = np.where(lam >= self.top_value, self.top_atom, 0.0)
        if self.point_mass is not None:
            return np.where(lam < 0, 0.0, self.atom + top)
        cont = self.continuous_mass
        g_lam, tail = self._grid[0][::-1], self._grid[2][::-1]
        with np.errstate(divide="ignore"):
            x = np.log(np.maximum(lam, 1e-320))
        upper = np.interp(x, np.log(g_lam), tail, left=tail[0], right=0.0)
        return np.where(lam < 0, 0.0, self.atom + np.clip(cont - upper, 0.0, cont) + top)

    def summary(self) -> dict[str, float]:
        """Predicted JSV summaries; same keys as :func:`isotpp.theory.predicted_summary`
        plus ``zero_fraction`` (the atom at s = 0)."""
        mean_s = self.top_atom * math.sqrt(self.top_value)
        if self.point_mass is not None:
            lmax, lmin = self.point_mass, 0.0 if self.atom else self.point_mass
        else:
            lam, rho = self._grid[0], self._grid[1]
            mean_s += float(np.trapezoid((np.sqrt(lam) * rho * lam)[::-1], np.log(lam)[::-1]))
            lo, lmax = self.support_lambda()
            lmax = max(lmax, self.top_value) if self.top_atom else lmax
            lmin = 0.0 if self.atom > 0 or lo < 1e-6 * lmax else lo
        m1 = self.mean_lambda
        return {
            "mean_lambda": m1,
            "var_over_mean_sq": self.var_over_mean_sq,
            "lambda_max": lmax,
            "max_s": math.sqrt(lmax),
            "min_s": math.sqrt(lmin),
            "mean_s": mean_s,
            "std_s": math.sqrt(max(m1 - mean_s**2, 0.0)),
            "mean_sq_dev": m1 - 2.0 * mean_s + 1.0,
            "zero_fraction": self.atom,
        }

    # ------------------------------------------------------------------ the solver
    @cached_property
    def _grid(self):
        lam, rho, tail = _solve_density(self)
        return lam, rho, tail


def _system(layers):
    """The equation chi_A(w) = 1 / z: log const + sum b log(c + r w) + sum k_g log x_g
    = -log z, and for each group g of k_g identical tanh layers (same variance q and
    dimension ratio r) an unknown x_g = chi_(D²)(r_g w), i.e. psi_g(x_g) = r_g w."""
    poles, log_const, groups = [], 0.0, {}
    for ly in layers:
        log_const -= math.log(ly.sigma2)
        terms = [(0.0, 1), *ly.w_poles]  # u prod (c + u)^b
        if ly.n_factors > 1:
            terms += [(1.0, ly.n_factors - 1), (0.0, -(ly.n_factors - 1))]
        if ly.d_law is not None:
            if ly.d_law.is_bernoulli:
                terms += [(0.0, 1), (ly.d_law.p, -1)]
            else:
                key = (ly.r, ly.d_law.q)
                k, law = groups.get(key, (0, ly.d_law))
                groups[key] = (k + 1, law)
        poles += [(cc, ly.r, b) for cc, b in terms]
    pc, pr, pb = (np.array([p[i] for p in poles], dtype=float) for i in range(3))
    keep = pb != 0
    pc, pr, pb = pc[keep], pr[keep], pb[keep]
    gr = np.array([key[0] for key in groups], dtype=float)
    gk = np.array([k for k, _ in groups.values()], dtype=float)
    mu = np.array([law.moment(1) for _, law in groups.values()], dtype=float)
    if groups:
        edges = np.stack([law.edges for _, law in groups.values()])  # (G, K+1), decreasing
        hi, lo = edges[:, :-1], edges[:, 1:]
        dens = (1.0 / hi.shape[1]) / np.maximum(hi - lo, 1e-300)
        k = np.arange(1, 40)
        moments = np.sum(dens[:, :, None] * (hi[:, :, None] ** (k + 1) - lo[:, :, None] ** (k + 1)), axis=1) / (k + 1)
    else:
        edges = dens = moments = np.zeros((0, 1))
    return pc, pr, pb, log_const, gr, gk, (edges, dens, moments), mu


def _psi_bins(x, bins):
    """psi(x) = E[t x / (1 - t x)] and dpsi/dx for piecewise-constant densities,
    exactly: with zeta = 1/x, psi = zeta g(zeta) - 1, g = sum dens log((zeta - lo) / (zeta - hi))."""
    edges, dens, moments = bins
    if np.max(np.abs(x)) < 0.1:  # far from the support: the moment series, free of cancellation
        k = np.arange(1, moments.shape[1] + 1)
        xp = x[:, None] ** (k - 1)
        return np.sum(moments * xp * x[:, None], axis=1), np.sum(k * moments * xp, axis=1)
    zeta = 1.0 / x
    d = zeta[:, None] - edges  # bin j lies between edges j+1 (lo) and j (hi)
    log_d, inv_d = np.log(d), 1.0 / d
    g = np.sum(dens * (log_d[:, 1:] - log_d[:, :-1]), axis=1)
    dg = np.sum(dens * (inv_d[:, 1:] - inv_d[:, :-1]), axis=1)
    return zeta * g - 1.0, -(zeta**2) * (g + zeta * dg)


def _newton(system, z, t, x, on_y: bool, iters=60):
    """Solve for (t, x) at z from a nearby solution; None if it does not converge.

    The unknown t is w, or y = 1 + w when ``on_y`` (near w = -1, where the small
    eigenvalues live, w itself cannot resolve 1 + w); terms c + r w are then
    written (c - r) + r y, so neither end loses precision to cancellation."""
    pc, pr, pb, log_const, gr, gk, bins, _ = system
    if on_y:
        pc = pc - pr
    log_z = np.log(z)
    best = (math.inf, None)
    for it in range(iters):
        s = pc + pr * t
        w = t - 1 if on_y else t
        R = log_z + log_const + np.sum(pb * np.log(s)) + np.sum(gk * np.log(x))
        R = complex(R.real, (R.imag + math.pi) % (2 * math.pi) - math.pi)
        dlogP = np.sum(pb * pr / s)
        if len(gr):
            psi, dpsi = _psi_bins(x, bins)
            E = psi - gr * w
            dt = -(R - np.sum(gk * E / (dpsi * x))) / (dlogP + np.sum(gk * gr / (dpsi * x)))
            dx = (-E + gr * dt) / dpsi
            err = abs(R) + float(np.max(np.abs(E) / np.abs(gr * w)))
            if not (np.isfinite(dt) and np.all(np.isfinite(dx))):
                return None
        else:
            dt = -R / dlogP
            dx = x
            err = abs(R)
            if not np.isfinite(dt):
                return None
        if err < 1e-12 or (err < 1e-9 and err > 0.25 * best[0]):  # converged, or round-off
            return t, x, it
        if err < best[0]:
            best = (err, (t, x, iters))
        # damping: never move more than half way towards a singular point
        lim = 0.5 * float(np.min(np.abs(s / pr)))
        step = 1.0
        if abs(dt) > lim:
            step = lim / abs(dt)
        if len(gr):
            ratio = float(np.max(np.abs(dx) / (0.5 * np.abs(x))))
            step = min(step, 1 / ratio) if ratio > 0 else step
            x = x + step * dx
        t = t + step * dt
    # ill-conditioned near a hard edge: round-off stalls Newton a little above 1e-12
    return best[1] if best[0] < 1e-8 else None


def _detour(system, t, x, on_y, lam_a: float, lam_b: float):
    """Continue the solution from lam_a to lam_b through the upper half plane, where
    G is analytic: up to Im z = 0.05 lam, across, and down again (stepping around a
    singular point of the real axis, on the physical sheet)."""
    heights = np.geomspace(_ETA, 0.05, 40)
    path = [lam_a * (1 + 1j * e) for e in heights[1:]]
    path += [lam * (1 + 0.05j) for lam in np.geomspace(lam_a, lam_b, 20)[1:]]
    path += [lam_b * (1 + 1j * e) for e in heights[::-1][1:]]
    for z in path:
        sol = _newton(system, z, t, x, on_y)
        if sol is None:
            return None
        t, x, _ = sol
    return t, x, 0


def _solve_density(sp: ChainSpectrum):
    """(lambda descending, rho_n(lambda), tail mass above lambda) on an adaptive grid.

    Steps in log lambda are capped at ``h_bulk`` where the density is resolved
    (a fraction of the law's relative width), larger above the support and in
    the power-law region far below the bulk; the continuation stops when the mass
    left below, extrapolated from the local power law, is under 1e-7.
    """
    system = _system(sp.layers)
    gr, mu = system[4], system[7]
    c = sp._scale
    v = sp.var_over_mean_sq
    v_cont = max((v + 1) * (1 - sp.atom) - 1, 1e-6)
    h_bulk = float(np.clip(math.sqrt(v_cont) / 12, 2e-4, 0.02))
    h_far = 0.25
    ln_lam = math.log(sp._norm_bound) + 0.05
    z = math.exp(ln_lam) * (1 + 1j * _ETA)
    w = (sp.mean_lambda / c) / z
    x = (gr * w / (mu * (1 + gr * w))).astype(complex)
    sol = _newton(system, z, w, x, False, iters=200)
    if sol is None:
        raise RuntimeError("free-probability solver: no start above the support")
    t, x, _ = sol
    on_y = False
    lams, rhos = [math.exp(ln_lam)], [0.0]
    cont = sp.continuous_mass
    mass, peak, h, lam_top, leap, leaps = 0.0, 0.0, 4 * h_bulk, None, False, []
    while True:
        trial = ln_lam - h
        z = math.exp(trial) * (1 + 1j * _ETA)
        if not on_y and t.real < -0.5:
            t, on_y = 1 + t, True
        sol = _newton(system, z, t, x, on_y) if not leap else _detour(system, t, x, on_y, lams[-1], math.exp(trial))
        if sol is not None:
            y = sol[0] if on_y else 1 + sol[0]
            if (y / z).imag > 100 * _ETA * abs(y / z):
                # the conjugate root (negative density): Im G < 0 is the physical branch
                sol = _newton(system, z, np.conj(sol[0]), np.conj(sol[1]), on_y)
        if sol is not None:
            t_new, x_new, its = sol
            y = t_new if on_y else 1 + t_new
            # density of the n measured values; off the support Im y is only eta's smear
            rho = max(-(y / z).imag / math.pi, 0.0) * c if abs(y.imag) > 100 * _ETA * abs(y) else 0.0
            lam = math.exp(trial)
            prev = rhos[-1] * lams[-1]
            step_mass = 0.5 * (rho * lam + prev) * h
            jump = abs(rho * lam - prev) > 0.25 * max(rho * lam, prev) and max(rho * lam, prev) > 1e-3 * peak
            if h > 1e-6 and not leap and (step_mass > 5e-3 * cont or jump):
                sol = None  # too coarse where the mass is: refine
        if sol is None:
            if leap:  # a longer leap
                h *= 2
                if h > 1.0:
                    raise RuntimeError("free-probability solver: the continuation stalled")
                continue
            h /= 2
            if h < 1e-7:
                if mass > 0.999 * cont:  # lost precision deep in the tail: extrapolate from here
                    break
                # a singular point (a hard edge of a tanh factor): step over it
                h, leap = h_bulk, True
            continue
        if leap:
            leaps.append(len(lams))
        leap = False
        t, x, ln_lam = t_new, x_new, trial
        mass += 0.5 * (rho * lam + rhos[-1] * lams[-1]) * (math.log(lams[-1]) - ln_lam)
        lams.append(lam)
        rhos.append(rho)
        peak = max(peak, rho * lam)
        if lam_top is None and rho * lam > 1e-9 * max(peak, 1e-300) and rho > 0:
            lam_top = lam
        if rho > 0 and rhos[-2] > 0:  # power law rho ~ lam^-beta below: mass left = rho lam / (1 - beta)
            beta = -math.log(rho / rhos[-2]) / math.log(lam / lams[-2])
            left = rho * lam / (1 - beta) if beta < 0.999 else math.inf
        else:
            left = math.inf if mass < 0.5 * cont else 0.0
        if mass > 0.5 * cont and (left < 1e-7 or mass >= cont - 1e-9):
            break
        if ln_lam < math.log(sp._norm_bound) - 2000:
            break
        in_bulk = lam_top is not None and lam > 1e-4 * lam_top and rho * lam > 1e-6 * peak
        cap = h_bulk if in_bulk else (h_far if lam_top is not None else 4 * h_bulk)
        h = min(h * (1.3 if its <= 4 else 1.0), cap)
    lam, rho = np.asarray(lams), np.asarray(rhos)
    seg = 0.5 * (rho[1:] * lam[1:] + rho[:-1] * lam[:-1]) * (np.log(lam[:-1]) - np.log(lam[1:]))
    tail = np.concatenate([[0.0], np.cumsum(seg)])
    if leaps and tail[-1] < cont:
        # the mass of the singular points stepped over (hard edges): the deficit
        for i in leaps:
            tail[i:] += (cont - tail[-1]) / len(leaps)
    if tail[-1] > cont:
        tail *= cont / tail[-1]
    return lam, rho, tail


def chain_spectrum(
    widths: Sequence[int],
    init: str,
    sigma_w: float = 1.0,
    act: str = "linear",
    sigma_b: float = 0.0,
    q_in: float | None = None,
    keep: float | Sequence[float] = 1.0,
) -> ChainSpectrum:
    """The law of the squared JSV of an MLP with layer widths ``widths`` = (N_0, ..., N_L).

    ``init``: ``"gaussian"`` (entries N(0, sigma_w^2 / fan_in)) or ``"orthogonal"``
    (sigma_w times Haar (semi-)orthogonal); ``act`` after every hidden layer;
    biases N(0, sigma_b^2). ``q_in`` = |x|^2 / N_0 of the input; None puts the
    first layer at the mean-field fixed point (and needs one: tanh, hard_tanh, or
    relu with sigma_w^2 < 2; for linear and relu the law does not depend on q).

    ``keep``: the fraction of each hidden layer's units that survive random
    pruning (one number, or one per hidden layer). Removing units of layer l is
    multiplying by a diagonal 0/1 mask, so it enters like a Bernoulli(keep)
    derivative; the surviving weights keep their scale (sigma_w^2 / the original
    fan-in). Not with tanh (its derivative law has no atom to merge the mask into).
    """
    widths = tuple(widths)
    if len(widths) < 2 or any(isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1 for n in widths):
        raise UserError(f"widths must be >= 2 positive integers (input, ..., output), got {widths!r}")
    widths = tuple(int(n) for n in widths)
    init = str(init).lower()
    if init not in INITS:
        raise UserError(f"no free-probability theory for init {init!r}: use one of {', '.join(INITS)}")
    act = _check_act(act)
    sigma_w, sigma_b = _check_positive("sigma_w", sigma_w), nonnegative("sigma_b", sigma_b)
    L = len(widths) - 1
    keeps = [float(keep)] * (L - 1) if np.ndim(keep) == 0 else [float(k) for k in keep]
    if len(keeps) != L - 1 or any(not 0 < k <= 1 for k in keeps):
        raise UserError(f"keep must be in (0, 1], one number or one per hidden layer ({L - 1}), got {keep!r}")
    if act == "tanh" and min(keeps, default=1.0) < 1:
        raise UserError("keep < 1 (random pruning) has no theory here for tanh: use linear, relu or hard_tanh")
    if q_in is None:
        q_in = fixed_point_input_norm_sq(act, sigma_w, sigma_b)
        if q_in is None:
            q_in = 1.0  # linear / relu without a fixed point: the law is q-free
    q_in = nonnegative("q_in", q_in)
    # pre-activation variances of the hidden layers (orthogonal expanding layers spread x)
    qs, q_prev_out = [], q_in
    for l in range(1, L):
        gain = sigma_w**2 * (min(1.0, widths[l - 1] / widths[l]) if init == "orthogonal" else 1.0)
        q = gain * q_prev_out + sigma_b**2
        qs.append(q)
        q_prev_out = keeps[l - 1] * _mean_phi_sq(act, q)  # pruned units feed zeros
    layers, m1, v, rank, norm = [], 1.0, 0.0, widths[0], 1.0
    iso = float(widths[0]) if init == "orthogonal" else 0.0  # generic dim of the isometrically passed inputs
    sigma2 = sigma_w**2
    for l in range(1, L + 1):
        a = widths[l] / widths[l - 1]
        r = widths[L] / widths[l - 1]
        wm, wv = _w_moments(init, a, sigma2)
        m1, v = m1 * wm, v + wv
        norm *= sigma2 * ((1 + math.sqrt(a)) ** 2 if init == "gaussian" else 1.0)
        d_law = None
        n = 1 + (l >= 2)
        if l >= 2 and (act != "linear" or keeps[l - 2] < 1):
            d_law = derivative_law(act, qs[l - 2])
            if keeps[l - 2] < 1:
                d_law = DerivativeLaw(act, qs[l - 2], p=d_law.p * keeps[l - 2])
            mu1, mu2 = d_law.moment(1), d_law.moment(2)
            m1, v = m1 * mu1, v + mu2 / mu1**2 - 1
            rank = min(rank, widths[l - 1] * d_law.nonzero_fraction)
            iso = max(0.0, iso - widths[l - 1] * (1 - d_law.p)) if d_law.is_bernoulli else 0.0
            n += 1
        rank = min(rank, widths[l - 1], widths[l])
        iso = max(0.0, iso - max(0, widths[l - 1] - widths[l]))
        layers.append(_Layer(r, n, _w_factor(init, a), sigma2, d_law))
        rr = widths[l - 1] / widths[l]
        m1, v = rr * m1, (v + 1) / rr - 1
    # from the N_L-dim law to the n = min(N_0, N_L) measured values
    n_meas = min(widths[0], widths[L])
    c = widths[L] / n_meas
    m1_n, v_n = m1 * c, (v + 1) / c - 1
    atom = max(0.0, 1.0 - rank / n_meas)
    atom = 0.0 if atom < 1e-12 else atom
    top_atom = iso / n_meas
    top_atom = 0.0 if top_atom < 1e-12 else top_atom
    return ChainSpectrum(widths, init, sigma_w, act, sigma_b, q_in, tuple(qs), tuple(layers), m1_n, v_n, atom,
                         top_atom, sigma2**L, c, norm)


def ks_distance(lam, law: ChainSpectrum, zero_tol: float | None = None, point_rtol: float = 1e-5,
                floor: float | None = None) -> float:
    """Kolmogorov-Smirnov distance between sampled lambda values and ``law``, atoms included.

    Rounding leaves forced zeros at ~1e-30 rather than 0 and smears an atom over a
    few ulps, so where the law has an atom at 0 both distributions are compared
    with [0, ``zero_tol``] (default 1e-9 times the largest value) lumped into one
    point, and values within ``point_rtol`` of the law's atom at ``top_value``
    count as on it; the supremum is taken on both sides of every jump.
    ``floor``: the smallest lambda the computation resolves (deep products put
    mass below any precision's floor, where rounding leaves values anywhere
    under it); [0, floor] is lumped into one point the same way.
    """
    lam = np.sort(np.asarray(lam, dtype=float).ravel())
    if lam.size == 0:
        raise UserError("no lambda values to compare: pass a non-empty array")
    atoms = {}
    lump = 0.0
    if law.atom > 0:
        lump = 1e-9 * max(float(lam[-1]), 0.0) if zero_tol is None else zero_tol
    if floor is not None:
        lump = max(lump, nonnegative("floor", floor))
    if lump > 0:
        lam = np.where(lam <= lump, lump, lam)
        atoms[lump] = float(law.cdf_lambda(lump))  # all of [0, lump] sits at lump
    if law.top_atom > 0:
        top = law.top_value
        lam = np.where(np.abs(lam - top) <= point_rtol * top, top, lam)
        atoms[top] = law.top_atom
    u, counts = np.unique(lam, return_counts=True)
    after = np.cumsum(counts) / lam.size
    before = after - counts / lam.size
    F = law.cdf_lambda(u)
    F_before = F - np.array([atoms.get(float(v), 0.0) for v in u])
    return float(max(np.max(np.abs(after - F)), np.max(np.abs(before - F_before))))
