"""Stochastic spectra (Hutchinson + SLQ): exact on hand-made cases, unbiased, and
within stated errors of the exact spectrum of a 128-class model as the budget grows."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from isotpp import memory
from isotpp.errors import UserError
from isotpp.models import create_model
from isotpp.spectra import jacobian as sp
from isotpp.spectra import stochastic as sps


def _linear_map(c=12, d=20, seed=0):
    w = jax.random.normal(jax.random.key(seed), (d, c)) / np.sqrt(d)
    return (lambda x: x.reshape(x.shape[0], -1) @ w), np.asarray(w, np.float64)


def test_lanczos_full_steps_recovers_every_eigenvalue():
    f, w = _linear_map()
    x = jnp.zeros((3, 20))
    alpha, beta = jax.jit(sps.lanczos_jjt, static_argnums=(0, 3))(f, x, jax.random.key(1), 12)
    nodes, weights = sps.gauss_quadrature(alpha, beta)
    exact = np.linalg.eigvalsh(w.T @ w)
    for i in range(3):
        np.testing.assert_allclose(np.sort(nodes[i]), exact, rtol=2e-4, atol=1e-6)
        np.testing.assert_allclose(weights[i].sum(), 1.0, rtol=1e-5)


def test_first_moment_is_hutchinson_of_the_same_probe():
    f, w = _linear_map()
    x = jnp.zeros((2, 20))
    key = jax.random.key(3)
    alpha, beta = sps.lanczos_jjt(f, x, key, 4)
    z = np.asarray(jax.random.rademacher(key, (2, 12), dtype=jnp.float32), np.float64)
    hutch = np.einsum("bc,cd,bd->b", z, w.T @ w, z) / 12  # zᵀ A z / C by hand
    np.testing.assert_allclose(np.asarray(alpha[:, 0]), hutch, rtol=1e-5)
    nodes, weights = sps.gauss_quadrature(alpha, beta)
    np.testing.assert_allclose((nodes * weights).sum(-1), hutch, rtol=1e-5)


def test_gauss_and_radau_bracket_each_probes_mean_jsv():
    """Per probe q: Gauss–Radau (node at 0) ≤ qᵀ√A q ≤ Gauss, for √ on a spectrum with mass near 0."""
    f, w = _linear_map(c=40, d=41, seed=4)  # square-ish: smallest singular values near 0
    x = jnp.zeros((6, 41))
    key = jax.random.key(8)
    alpha, beta = sps.lanczos_jjt(f, x, key, 4)
    q = np.asarray(jax.random.rademacher(key, (6, 40), dtype=jnp.float32), np.float64) / np.sqrt(40)
    lam, u = np.linalg.eigh(w.T @ w)
    exact = np.einsum("bc,cd,bd->b", q, (u * np.sqrt(np.clip(lam, 0, None))) @ u.T, q)
    gauss = (lambda t, wt: (wt * np.sqrt(t)).sum(-1))(*sps.gauss_quadrature(alpha, beta))
    radau = (lambda t, wt: (wt * np.sqrt(t)).sum(-1))(*sps.radau_quadrature(alpha, beta))
    assert np.all(radau <= exact * (1 + 1e-4)) and np.all(exact <= gauss * (1 + 1e-4))
    assert np.all(gauss - radau > 1e-3 * exact)  # 4 steps: a real bracket, not a tie


def test_estimates_unbiased_over_many_probes():
    """300 probes of 3 steps on one fixed A: mean λ and mean s within 4 standard errors."""
    f, w = _linear_map(c=30, d=40, seed=2)
    x = jnp.zeros((300, 40))  # same Jacobian for each "sample": 300 independent probes
    alpha, beta = sps.lanczos_jjt(f, x, jax.random.key(5), 3)
    nodes, weights = sps.gauss_quadrature(alpha, beta)
    est = sps.StochasticSpectrum(nodes.reshape(1, 300, 3), weights.reshape(1, 300, 3), 30, 900)
    lam = np.linalg.eigvalsh(w.T @ w)
    (m, se), (sm, sse) = est.lambda_mean(), est.sv_mean()
    assert abs(m - lam.mean()) < 4 * se and se < 0.05 * lam.mean()
    # 3-point Gauss quadrature of √λ is biased by < 1 % here; the probe noise dominates
    assert abs(sm - np.sqrt(lam).mean()) < 4 * sse + 0.01 * np.sqrt(lam).mean()
    s_max, s_min = est.extremes()
    assert s_max <= np.sqrt(lam.max()) * (1 + 1e-5) and s_max > 0.95 * np.sqrt(lam.max())
    assert s_min >= np.sqrt(lam.min()) * (1 - 1e-5)


def test_wasserstein_matches_scipy():
    rng = np.random.default_rng(0)
    u, v, uw = rng.normal(size=30), rng.normal(1, 2, size=17), rng.random(30)
    assert sps.wasserstein1(u, v, uw) == pytest.approx(scipy.stats.wasserstein_distance(u, v, uw), rel=1e-9)


# Error of the estimate against the exact spectrum of a 128-class tanh MLP
# (16 samples), per budget of J·Jᵀ products per sample (each one VJP + one JVP;
# the exact method costs 128 VJPs). Columns: relative error of mean λ, of the
# mean JSV, W₁ between the pooled densities over the exact mean JSV: the
# bounds asserted on each, the figures measured with seed 0 (docs/speed.md).
# The mean JSV is the midpoint of each probe's Gauss–Radau and Gauss values.
ERROR_TABLE = {
    # budget: (max rel err mean λ, max rel err mean JSV, max W1 / mean s); measured
    # 0.081 / 0.048 / 0.116 (1 probe × 8 steps), 0.049 / 0.030 / 0.082 (3 × 10),
    # 0.015 / 0.013 / 0.075 (12 × 10)
    8: (0.10, 0.06, 0.15),
    32: (0.06, 0.04, 0.10),
    128: (0.03, 0.02, 0.09),
}


@pytest.fixture(scope="module")
def wide_mlp():
    model = create_model("mlp", num_classes=128, input_shape=(16, 16, 1), depth=3, width=256,
                         act="tanh", init="gaussian", sigma_w=1.5, seed=0)
    x = jax.random.normal(jax.random.key(7), (16, 16, 16, 1))
    exact = sp.model_singular_values(model, x, method="gram")
    return model, x, exact


def error_vs_budget(model, x, exact, budgets):
    s = exact.astype(np.float64)
    rows = {}
    for b in budgets:
        est = sps.stochastic_spectrum(model, x, matvecs=b, seed=0)
        (lam, lam_se), (mean, mean_se) = est.lambda_mean(), est.sv_mean()
        vals, wts = est.pooled()
        lower, upper = est.sv_mean_lower(), est.sv_mean_upper()
        assert lower - 4 * mean_se <= s.mean() <= upper + 4 * mean_se, b  # Radau below, Gauss above
        assert lower < mean < upper and mean == pytest.approx((lower + upper) / 2, rel=1e-12), b
        rows[b] = {
            "lam_rel": abs(lam / (s**2).mean() - 1), "lam_se_rel": lam_se / (s**2).mean(),
            "mean_rel": abs(mean / s.mean() - 1), "mean_se_rel": mean_se / s.mean(),
            "half_bracket_rel": (upper - lower) / 2 / s.mean(),
            "w1_rel": sps.wasserstein1(s, vals, None, wts) / s.mean(),
            "probes": est.probes, "steps": est.nodes.shape[2],
        }
    return rows


def test_error_vs_budget_table(wide_mlp):
    model, x, exact = wide_mlp
    rows = error_vs_budget(model, x, exact, ERROR_TABLE)
    for b, (lam_max, mean_max, w1_max) in ERROR_TABLE.items():
        r = rows[b]
        assert r["lam_rel"] <= lam_max, (b, r)
        assert r["mean_rel"] <= mean_max, (b, r)
        assert r["w1_rel"] <= w1_max, (b, r)
        # the reported error covers the actual one: the probes' standard error, plus for the
        # mean JSV half the quadrature bracket (the midpoint's largest quadrature error)
        assert r["lam_rel"] <= 4 * r["lam_se_rel"] + 1e-3, (b, r)
        assert r["mean_rel"] <= 4 * r["mean_se_rel"] + r["half_bracket_rel"], (b, r)
    # the error falls as the budget grows: actual errors, the reported standard error, the density's distance
    for key in ("lam_rel", "mean_rel", "lam_se_rel", "mean_se_rel", "w1_rel"):
        assert rows[128][key] < rows[32][key] < rows[8][key], key


def test_auto_picks_stochastic_only_for_many_classes(wide_mlp):
    model, x, exact = wide_mlp
    np.testing.assert_array_equal(sp.model_singular_values(model, x, matvecs=64), exact)  # 128 < 4·64: exact
    sv = sp.model_singular_values(model, x, matvecs=16)  # 128 ≥ 4·16: stochastic
    assert sv.shape == exact.shape and not np.array_equal(sv, exact)
    assert np.all(np.diff(sv, axis=1) <= 0)
    assert abs(sv.mean() / exact.mean() - 1) < 0.05
    assert sv[:, 0].max() <= exact.max() * (1 + 1e-4)  # Ritz values never exceed s_max


def test_refused_settings(wide_mlp):
    model, x, _ = wide_mlp
    with pytest.raises(UserError, match="bn='batch'"):
        sp.model_singular_values(model, x, method="stochastic", bn="batch")
    with pytest.raises(UserError, match="matvecs"):
        sps.stochastic_spectrum(model, x, matvecs=0)
    small_input = create_model("mlp", num_classes=20, input_shape=(4, 2, 1), depth=2, width=8, act="tanh")
    with pytest.raises(UserError, match="num_classes"):
        sps.stochastic_spectrum(small_input, jnp.ones((2, 4, 2, 1)))


class _Program:
    """Stands in for a compiled program: XLA's memory analysis of a chunk of k samples."""

    def __init__(self, k, fixed, per):
        self.k, self.bytes = k, fixed + per * k

    def memory_analysis(self):
        return types.SimpleNamespace(argument_size_in_bytes=self.bytes, output_size_in_bytes=0,
                                     alias_size_in_bytes=0, temp_size_in_bytes=0)


def test_chunk_planner_fits_the_budget():
    compiled = []

    def compile_at(k):
        compiled.append(k)
        return _Program(k, fixed=1000, per=100)

    k, prog = memory.chunk_for_budget(compile_at, n=50, budget=1000 + 100 * 7 + 50)
    assert (k, prog.k) == (7, 7) and compiled == [1, 2, 7]
    assert memory.chunk_for_budget(compile_at, n=5, budget=10**6)[0] == 5  # capped by n
    assert memory.chunk_for_budget(compile_at, n=50, budget=10**6, cap=16)[0] == 16
    with pytest.raises(UserError, match="memory_budget"):
        memory.chunk_for_budget(compile_at, n=50, budget=1050)


def test_spectrum_chunks_follow_a_memory_budget():
    model = create_model("mlp", num_classes=10, input_shape=(16, 16, 1), depth=3, width=64, act="tanh", seed=0)
    x = jax.random.normal(jax.random.key(0), (6, 16, 16, 1))
    ref = sp.model_singular_values(model, x, method="gram", chunk_size=6)
    graphdef, state = sp.nnx.split(model)
    one, two = (memory.compiled_bytes(sp._chunk_sv.lower(graphdef, state, x[:k], method="gram", bn="eval").compile())
                for k in (1, 2))
    assert two > one
    done = []
    sv = sp.model_singular_values(model, x, method="gram", memory_budget=two + (two - one) // 2,
                                  progress=lambda d, n: done.append(d))
    assert done == [2, 4, 6]
    np.testing.assert_allclose(sv, ref, rtol=1e-4)
    peak, source = memory.peak_bytes()
    assert peak > 0 and source == "peak RSS"
