"""Jacobian spectra of models with many outputs: Hutchinson traces and stochastic Lanczos quadrature.

The exact per-sample spectrum (:mod:`isotpp.spectra.jacobian`, ``"gram"``) costs one
vector-Jacobian product per class: 1,000 backward passes per chunk for an
ImageNet model. This module estimates the same spectrum from a fixed number of
matrix-vector products with A = J·Jᵀ (the *budget*), whatever the number of
classes.

What is estimated
-----------------
For a sample x with Jacobian J = d logits / dx (C × D, C ≤ D) the exact method
returns the singular values s_1 ≥ … ≥ s_C of J, i.e. λ_i = s_i² are the
eigenvalues of A = J·Jᵀ. Its spectral measure is μ_x = (1/C) Σ_i δ(λ_i).

* **mean λ** = (1/C)·tr A = ‖J‖_F² / C (the reference's "mean JSV²" per sample).
  Hutchinson: for a Rademacher probe z ∈ {±1}^C, E[zᵀ A z] = tr A, so
  ‖Jᵀz‖²/C is an unbiased estimate; its variance is
  2(‖A‖_F² − Σ_i A_ii²)/C² per probe.
* **the density μ_x**, and with it the mean JSV ∫√λ dμ_x (= the reference's
  ``mean``), the std and (s − 1)² of the summary: stochastic Lanczos
  quadrature (SLQ). m Lanczos steps on A from q₁ = z/√C give a tridiagonal
  T_m with eigenpairs (θ_j, y_j); Σ_j y_1j²·g(θ_j) is the m-point Gauss
  quadrature of ∫ g dμ_z, where μ_z = Σ_i (q₁·u_i)² δ(λ_i) has expectation μ_x
  over z. It is exact for polynomials g of degree < 2m. Its first moment
  Σ_j y_1j² θ_j = q₁ᵀ A q₁ *is* the Hutchinson estimate, so one set of probes
  gives both.
* **extreme singular values**: the Ritz values interlace the eigenvalues, so
  max θ ≤ λ_max and min θ ≥ λ_min, and they converge from the ends first (the
  top one within a few steps for a separated λ_max; the bottom one slower).

Cost: each Lanczos step is one product A·q = J(Jᵀq), i.e. one VJP and one JVP
of the model linearised once at x, batched over the samples of a chunk (each
sample has its own probe). P probes of m steps cost P·m products (2·P·m passes
plus P forward passes) against the exact method's C VJPs.

Error: every (sample, probe) pair gives an independent estimate e_ip of the
sample's mean λ (or mean s). The estimate of the sample mean is the average,
its standard error sqrt(Σ_i var_p(e_ip)/P)/N from the spread between probes of
the same sample (with one probe per sample, the spread over all pairs, which
also counts the samples' own differences: an upper bound).

The quadrature's own error (few steps, much of the spectrum near 0) is not in
that spread. For the mean JSV it is bracketed: the Gauss rule overestimates
∫√λ dμ_z and the (m + 1)-point Gauss–Radau rule with a node at 0 (from the
same Lanczos run, β_m included) underestimates it. The reported mean JSV is
each probe's midpoint of the two, whose quadrature error is at most half the
bracket whichever end lies nearer (on ReLU networks the Radau end, on smooth
tanh ones the Gauss end); ``summary()`` reports the midpoint (``mean``) and the
bracket (``mean_lower``, ``mean_upper``).

Only BatchNorm's running statistics (``bn="eval"``) are supported: with batch
statistics the rows of the reference's "batch Jacobian" couple the samples and
a JVP cannot be taken per sample within one batched pass.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from isotpp import memory
from isotpp.errors import UserError

# Default number of J·Jᵀ products per sample (each one VJP plus one JVP).
DEFAULT_MATVECS = 64
# ``method="auto"`` switches to the stochastic estimate when C ≥ this factor × budget.
AUTO_FACTOR = 4
# Lanczos steps per probe: at least this many (or the whole budget, if smaller), the rest of
# the budget in probes. Few steps widen the Radau–Gauss bracket of the mean JSV (the Gauss end
# overestimates √λ's integral when much of the spectrum lies near 0: ResNet56, 4 steps: +15 %,
# 10 steps: +5 %), an error the probe spread does not show; more probes buy the means'
# variance (128-class tanh MLP, budget 64, Gauss values: 8 steps × 8 probes gave 0.6 % error
# in the mean JSV and W₁ 10 %, 16 × 4 1.5 % and 4.5 %).
MIN_STEPS = 10


def split_budget(matvecs: int, num_classes: int, steps: int | None = None) -> tuple[int, int]:
    """(probes, steps), probes·steps ≤ ``matvecs``: probes = max(1, matvecs // 10), steps the rest (≤ C)."""
    if matvecs < 1:
        raise UserError(f"matvecs must be at least 1, got {matvecs}")
    if steps is None:
        steps = matvecs // max(1, matvecs // MIN_STEPS)
    if steps < 1 or steps > matvecs:
        raise UserError(f"steps must be in [1, matvecs={matvecs}], got {steps}")
    steps = min(steps, num_classes)
    return max(1, matvecs // steps), steps


def prefer_stochastic(num_classes: int, input_dim: int, matvecs: int | None) -> bool:
    """``method="auto"``: stochastic when C ≥ 4 × the budget (default 64 products) and C ≤ D."""
    budget = DEFAULT_MATVECS if matvecs is None else matvecs
    return num_classes <= input_dim and num_classes >= AUTO_FACTOR * budget


# --------------------------------------------------------------------------
# Pure functions of an apply function ``f: (B, ...) -> (B, C)``.
# --------------------------------------------------------------------------


def lanczos_jjt(f: Callable[[jax.Array], jax.Array], x: jax.Array, key: jax.Array, steps: int):
    """``steps`` Lanczos steps on each sample's J·Jᵀ from a Rademacher start.

    Returns (alpha (B, m), beta (B, m)): the diagonal and off-diagonal of
    every sample's tridiagonal T_m, plus β_m (the next off-diagonal, which the
    Gauss–Radau rule needs) as the last column of beta. Full reorthogonalisation (twice, classical
    Gram–Schmidt) against the stored Lanczos vectors; after a breakdown
    (Krylov space exhausted) the remaining vectors are zero and decouple with
    weight zero.
    """
    logits, jvp = jax.linearize(f, x)
    vjp = jax.linear_transpose(jvp, x)
    b, c = logits.shape
    dtype = logits.dtype

    def matvec(q):  # (B, C) -> (B, C): J (Jᵀ q) per sample
        (g,) = vjp(q)
        return jvp(g)

    q0 = jax.random.rademacher(key, (b, c), dtype=dtype) / jnp.sqrt(jnp.asarray(c, dtype))
    basis = jnp.zeros((steps, b, c), dtype).at[0].set(q0)
    tiny = jnp.finfo(dtype).eps

    def body(carry, j):
        basis, q, q_prev, beta_prev = carry
        w = matvec(q)
        alpha = jnp.sum(q * w, axis=-1)
        w = w - alpha[:, None] * q - beta_prev[:, None] * q_prev
        for _ in range(2):  # reorthogonalise against every stored vector (zeros beyond j)
            w = w - jnp.einsum("mb,mbc->bc", jnp.einsum("mbc,bc->mb", basis, w), basis)
        beta = jnp.linalg.norm(w, axis=-1)
        ok = beta > tiny * jnp.maximum(jnp.abs(alpha), tiny) * c
        q_next = jnp.where(ok[:, None], w / jnp.where(ok, beta, 1.0)[:, None], 0.0)
        beta = jnp.where(ok, beta, 0.0)
        basis = jax.lax.dynamic_update_index_in_dim(basis, q_next, jnp.minimum(j + 1, steps - 1), 0)
        return (basis, q_next, q, beta), (alpha, beta)

    carry = (basis, q0, jnp.zeros_like(q0), jnp.zeros((b,), dtype))
    _, (alpha, beta) = jax.lax.scan(body, carry, jnp.arange(steps))
    return alpha.T, beta.T


def _tridiagonal(alpha: np.ndarray, off: np.ndarray) -> np.ndarray:
    m = alpha.shape[-1]
    t = np.zeros((*alpha.shape, m))
    idx = np.arange(m)
    t[..., idx, idx] = alpha
    t[..., idx[:-1], idx[1:]] = off
    t[..., idx[1:], idx[:-1]] = off
    return t


def gauss_quadrature(alpha: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nodes θ and weights y₁² of the m-point Gauss rule: eigenvalues and squared first components of T_m.

    ``alpha`` (…, m), ``beta`` (…, m − 1) or (…, m) (the last entry, β_m, is not used).
    """
    alpha = np.asarray(alpha, np.float64)
    beta = np.asarray(beta, np.float64)[..., : alpha.shape[-1] - 1]
    theta, vecs = np.linalg.eigh(_tridiagonal(alpha, beta))
    return np.clip(theta, 0.0, None), vecs[..., 0, :] ** 2


def radau_quadrature(alpha: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of the (m + 1)-point Gauss–Radau rule with a node fixed at λ = 0.

    T_m extended by β_m and α̃ = δ_m, where T_m δ = β_m² e_m (Golub & Meurant).
    For g = √λ (even derivatives < 0, odd > 0 on λ > 0) the Gauss rule
    overestimates ∫ g dμ_z and this one underestimates it: together they
    bracket the probe's exact value.
    """
    alpha = np.asarray(alpha, np.float64)
    beta = np.asarray(beta, np.float64)
    m = alpha.shape[-1]
    t = _tridiagonal(alpha, beta[..., : m - 1])
    rhs = np.zeros(alpha.shape)
    rhs[..., -1] = beta[..., -1] ** 2
    delta = np.einsum("...ij,...j->...i", np.linalg.pinv(t, hermitian=True), rhs)
    ext_alpha = np.concatenate([alpha, delta[..., -1:]], axis=-1)
    theta, vecs = np.linalg.eigh(_tridiagonal(ext_alpha, beta))
    return np.clip(theta, 0.0, None), vecs[..., 0, :] ** 2


# --------------------------------------------------------------------------
# The estimate.
# --------------------------------------------------------------------------


def _sem(e: np.ndarray) -> float:
    """Standard error of e.mean() over probes, e of shape (N, P) (see the module docstring)."""
    n, p = e.shape
    if p >= 2:
        return float(np.sqrt(e.var(axis=1, ddof=1).sum() / p) / n)
    return float(e.std(ddof=1) / np.sqrt(n)) if n >= 2 else float("nan")


@dataclasses.dataclass(frozen=True)
class StochasticSpectrum:
    """SLQ nodes (λ) and weights per sample and probe, shape (N, P, m) each.

    ``weights`` sum to one per (sample, probe). ``matvecs`` is the number of
    J·Jᵀ products per sample actually used (P·m).
    """

    nodes: np.ndarray
    weights: np.ndarray
    num_classes: int
    matvecs: int
    radau_nodes: np.ndarray | None = None  # (N, P, m + 1): the Gauss–Radau rule, node fixed at 0
    radau_weights: np.ndarray | None = None

    @property
    def probes(self) -> int:
        return self.nodes.shape[1]

    def _moment(self, g) -> np.ndarray:  # (N, P): Σ_j w_j g(θ_j) per probe
        return (self.weights * g(self.nodes)).sum(-1)

    def lambda_mean(self) -> tuple[float, float]:
        """Mean λ = mean over samples of tr(J·Jᵀ)/C (Hutchinson), and its standard error."""
        e = self._moment(lambda t: t)
        return float(e.mean()), _sem(e)

    def _radau_sv(self) -> np.ndarray | None:  # (N, P): the Gauss–Radau value of each probe's mean s
        if self.radau_nodes is None:
            return None
        return (self.radau_weights * np.sqrt(self.radau_nodes)).sum(-1)

    def sv_mean(self) -> tuple[float, float]:
        """Mean singular value over samples and classes, and its standard error over probes.

        Each probe's value is the midpoint of its Gauss (above) and Gauss–Radau (below)
        quadratures of ∫√λ, which bracket the probe's exact value; without the Radau rule,
        the Gauss value.
        """
        e = self._moment(np.sqrt)
        radau = self._radau_sv()
        if radau is not None:
            e = (e + radau) / 2
        return float(e.mean()), _sem(e)

    def sv_mean_upper(self) -> float:
        """The Gauss estimate of the mean JSV: above the probes' exact value."""
        return float(self._moment(np.sqrt).mean())

    def sv_mean_lower(self) -> float:
        """The Gauss–Radau estimate of the mean JSV: below the probes' exact value, as the Gauss one is above it."""
        radau = self._radau_sv()
        return float("nan") if radau is None else float(radau.mean())

    def pooled(self) -> tuple[np.ndarray, np.ndarray]:
        """Singular values and weights of the density pooled over samples and probes (weights sum to 1)."""
        n, p, _ = self.nodes.shape
        return np.sqrt(self.nodes).ravel(), self.weights.ravel() / (n * p)

    def extremes(self) -> tuple[float, float]:
        """(s_max, s_min) from the largest / smallest Ritz value of any probe: s_max is a lower bound, s_min an upper one."""
        live = self.weights > 1e-12
        return float(np.sqrt(self.nodes[live].max())), float(np.sqrt(self.nodes[live].min()))

    def singular_values(self) -> np.ndarray:
        """A representative (N, C) array, descending: the C mid-quantiles of each sample's SLQ
        density (its probes pooled), with the first and last replaced by the Ritz extremes.

        :func:`isotpp.spectra.jacobian.summarize` of it approximates the exact summary;
        use :meth:`summary` for the estimates with their errors.
        """
        n, p, m = self.nodes.shape
        c = self.num_classes
        s = np.sqrt(self.nodes).reshape(n, p * m)
        w = self.weights.reshape(n, p * m) / p
        order = np.argsort(s, axis=1)
        s, w = np.take_along_axis(s, order, 1), np.take_along_axis(w, order, 1)
        cdf = np.cumsum(w, axis=1)
        levels = (np.arange(c) + 0.5) / c
        out = np.empty((n, c))
        for i in range(n):
            out[i] = s[i, np.minimum(np.searchsorted(cdf[i], levels), p * m - 1)]
            live = w[i] > 1e-12
            out[i, 0], out[i, -1] = s[i, live].min(), s[i, live].max()
        return out[:, ::-1]

    def summary(self) -> dict[str, float | int]:
        lam, lam_se = self.lambda_mean()
        mean, mean_se = self.sv_mean()
        s_max, s_min = self.extremes()
        return {
            "lambda_mean": lam,
            "lambda_mean_stderr": lam_se,
            "mean": mean,
            "mean_stderr": mean_se,
            "mean_lower": self.sv_mean_lower(),
            "mean_upper": self.sv_mean_upper(),
            "max_ritz": s_max,
            "min_ritz": s_min,
            "n_samples": int(self.nodes.shape[0]),
            "probes": self.probes,
            "steps": int(self.nodes.shape[2]),
            "matvecs": self.matvecs,
        }


def concatenate(estimates: list[StochasticSpectrum]) -> StochasticSpectrum:
    """One estimate over the samples of several (same classes and budget), e.g. of independent weight draws."""
    first = estimates[0]
    if any(e.num_classes != first.num_classes or e.nodes.shape[1:] != first.nodes.shape[1:] for e in estimates):
        raise UserError("stochastic spectra to pool must have the same classes, probes and steps")

    def cat(name):
        parts = [getattr(e, name) for e in estimates]
        return None if any(p is None for p in parts) else np.concatenate(parts)

    return StochasticSpectrum(cat("nodes"), cat("weights"), first.num_classes, first.matvecs,
                              cat("radau_nodes"), cat("radau_weights"))


def wasserstein1(u_values, v_values, u_weights=None, v_weights=None) -> float:
    """W₁ distance between two weighted 1-D distributions (∫|F_u − F_v|)."""
    u = np.asarray(u_values, np.float64).ravel()
    v = np.asarray(v_values, np.float64).ravel()
    uw = np.full(u.size, 1.0 / u.size) if u_weights is None else np.asarray(u_weights, np.float64).ravel()
    vw = np.full(v.size, 1.0 / v.size) if v_weights is None else np.asarray(v_weights, np.float64).ravel()
    grid = np.sort(np.concatenate([u, v]))
    order_u, order_v = np.argsort(u), np.argsort(v)
    cdf_u = np.concatenate([[0.0], np.cumsum(uw[order_u])]) / uw.sum()
    cdf_v = np.concatenate([[0.0], np.cumsum(vw[order_v])]) / vw.sum()
    fu = cdf_u[np.searchsorted(u[order_u], grid[:-1], side="right")]
    fv = cdf_v[np.searchsorted(v[order_v], grid[:-1], side="right")]
    return float(np.sum(np.abs(fu - fv) * np.diff(grid)))


@functools.partial(jax.jit, static_argnames=("graphdef", "steps"))
def _lanczos_chunk(graphdef, state, x, key, *, steps: int):
    def f(x):
        model = nnx.merge(graphdef, state, copy=True)
        model.eval()
        return model(x)

    return lanczos_jjt(f, x, key, steps)


def stochastic_spectrum(
    model: nnx.Module,
    x: jax.Array | np.ndarray,
    *,
    matvecs: int = DEFAULT_MATVECS,
    steps: int | None = None,
    seed: int = 0,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> StochasticSpectrum:
    """SLQ estimate of every sample's Jacobian spectrum with ``matvecs`` J·Jᵀ products per sample.

    ``steps`` Lanczos steps per probe (default min(C, 20, matvecs/2)), the rest
    of the budget in probes. BatchNorm uses its running statistics. Samples
    run in chunks of ``chunk_size`` (default min(N, 32), or, given
    ``memory_budget`` in bytes, the most that XLA's memory analysis of the
    compiled chunk fits in it).
    """
    x = jnp.asarray(x)
    if x.ndim < 2 or x.shape[0] == 0:
        raise UserError(f"x must hold at least one sample (N, ...), got shape {x.shape}")
    graphdef, state = nnx.split(model)
    out_shape = jax.eval_shape(lambda s, xb: nnx.merge(graphdef, s)(xb), state, x[:1]).shape
    c, d = int(out_shape[-1]), math.prod(x.shape[1:])
    if c > d:
        raise UserError(f"the stochastic spectrum needs num_classes ≤ input size ({c} > {d}): use method 'gram'")
    probes, steps = split_budget(matvecs, c, steps)
    n = x.shape[0]
    key = jax.random.key(seed)
    programs = {}
    if memory_budget is not None:
        chunk_size, programs[chunk_size] = memory.chunk_for_budget(
            lambda k: _lanczos_chunk.lower(graphdef, state, x[:k], key, steps=steps).compile(),
            n, memory_budget, min(n, chunk_size or 32),
        )
    chunk_size = chunk_size or min(n, 32)
    gauss, radau = [], []
    for start in range(0, n, chunk_size):
        xb = x[start : start + chunk_size]
        tri = []
        for p in range(probes):
            k = jax.random.fold_in(jax.random.fold_in(key, start), p)
            run = programs.get(len(xb)) or functools.partial(_lanczos_chunk, graphdef, steps=steps)
            tri.append([np.asarray(a) for a in run(state, xb, k)])
        alpha, beta = (np.stack([t[i] for t in tri], axis=1) for i in (0, 1))  # (B, P, m)
        for out, rule in ((gauss, gauss_quadrature), (radau, radau_quadrature)):
            out.append(rule(alpha, beta))
        if progress is not None:
            progress(min(start + chunk_size, n), n)
    def cat(rule, i):
        return np.concatenate([r[i] for r in rule])

    return StochasticSpectrum(cat(gauss, 0), cat(gauss, 1), c, probes * steps, cat(radau, 0), cat(radau, 1))
