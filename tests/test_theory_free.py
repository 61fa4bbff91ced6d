"""Mean-field propagation and the free-probability law of J Jᵀ, against simulation.

Every case draws networks at width >= 400 with numpy (the Jacobian built layer by
layer, inputs at the mean-field fixed point) and asserts: mean lambda within 5 %,
Var(lambda) / E[lambda]^2 within 10 %, Kolmogorov-Smirnov distance below 0.05.
Moments are pooled over many nets through traces (cheap), the KS distance uses
the eigenvalues of a few. One draw of a depth-4 network also samples the depth-2
and depth-3 networks made of its first layers (``sample_jacobian_prefixes``), so
the square chains are simulated once per activation and weights for three depths.
numpy's BLAS runs single-threaded here: on a shared machine its threads spin
against other work, and at N = 400 they buy nothing.
"""

import math

import numpy as np
import pytest
from scipy import integrate, stats
from threadpoolctl import threadpool_limits

from isotpp import theory
from isotpp.errors import UserError
from isotpp.theory import meanfield as mf
from isotpp.theory.simulate import (
    jacobian_moments,
    sample_jacobian,
    sample_jacobian_prefixes,
)

ACTS = ("linear", "tanh", "relu", "hard_tanh")
# (sigma_w, sigma_b) near criticality for each activation
POINT = {"linear": (1.0, 0.0), "tanh": (1.2, 0.1), "relu": (math.sqrt(2), 0.0), "hard_tanh": (1.2, 0.1)}


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _simulate(widths, init, act, sigma_w, sigma_b, nets_moments, nets_ks, seed=0, depths=None):
    """{L: (mean lambda, mean lambda^2, pooled lambda of the first ``nets_ks`` nets)} for the
    depth-L prefixes (default: the whole chain) of ``nets_moments`` random networks."""
    depths = depths or (len(widths) - 1,)
    rng = np.random.default_rng(seed)
    m, lams = {L: [] for L in depths}, {L: [] for L in depths}
    for k in range(nets_moments):
        Js = sample_jacobian_prefixes(rng, widths, init, sigma_w, act, sigma_b)
        for L in depths:
            J = Js[L - 1]
            m[L].append(jacobian_moments(J))
            if k < nets_ks:
                lams[L].append(np.linalg.eigvalsh(J @ J.T if J.shape[0] <= J.shape[1] else J.T @ J))
    return {L: (*np.mean(m[L], axis=0), np.clip(np.concatenate(lams[L]), 0.0, None)) for L in depths}


def _assert_matches(law, m1, m2, lam):
    assert m1 == pytest.approx(law.mean_lambda, rel=0.05)
    assert m2 / m1**2 - 1 == pytest.approx(law.var_over_mean_sq, rel=0.10)
    assert theory.ks_distance(lam, law) < 0.05


def _check(widths, init, act, sigma_w, sigma_b, nets_moments, nets_ks, seed=0):
    law = theory.chain_spectrum(widths, init, sigma_w, act, sigma_b)
    m1, m2, lam = _simulate(widths, init, act, sigma_w, sigma_b, nets_moments, nets_ks, seed)[len(widths) - 1]
    _assert_matches(law, m1, m2, lam)
    return law, lam


# ------------------------------------------------------------------ square chains


@pytest.fixture(scope="module")
def square_chains():
    """Width-400 square networks of depths 2, 3 and 4 per (activation, weights), simulated once."""
    cache = {}

    def get(act, init):
        if (act, init) not in cache:
            sigma_w, sigma_b = POINT[act]
            # the scale of one net's spectrum fluctuates with its active units: many nets unless nothing is
            # random but O
            nets = 6 if init == "orthogonal" and act in ("linear", "tanh") else 16
            seed = 10 * ACTS.index(act) + (init == "orthogonal")
            cache[(act, init)] = _simulate((400,) * 5, init, act, sigma_w, sigma_b, nets, 3, seed, depths=(2, 3, 4))
        return cache[(act, init)]

    return get


@pytest.mark.parametrize("L", [2, 3, 4])
@pytest.mark.parametrize("init", ["gaussian", "orthogonal"])
@pytest.mark.parametrize("act", ACTS)
def test_square_chain_matches_simulation(square_chains, act, init, L):
    sigma_w, sigma_b = POINT[act]
    law = theory.chain_spectrum((400,) * (L + 1), init, sigma_w, act, sigma_b)
    m1, m2, lam = square_chains(act, init)[L]
    _assert_matches(law, m1, m2, lam)
    # the closed forms of the issue: E = sigma_w^(2L) mu1^(L-1), Var/E^2 = (L-1)(mu2/mu1^2 - 1) + L s
    q = law.q_layers[0] if act != "linear" else 0.0
    mu1, mu2 = (mf.activation_derivative_moments(act, q, k) for k in (1, 2))
    assert law.mean_lambda == pytest.approx(sigma_w ** (2 * L) * mu1 ** (L - 1), rel=1e-12)
    s = 1.0 if init == "gaussian" else 0.0
    assert law.var_over_mean_sq == pytest.approx((L - 1) * (mu2 / mu1**2 - 1) + L * s, rel=1e-12, abs=1e-12)
    # relu and hard_tanh zero derivatives force an atom at lambda = 0
    expected_zero = {"relu": 0.5, "hard_tanh": 1 - mu1}.get(act, 0.0)
    assert law.atom == pytest.approx(expected_zero, abs=1e-12)
    # at width 400 the rank is the smallest of the L - 1 layers' active counts, ~Binomial(400, p)
    # each, whose mean lies below 400 p (L = 4: by ~0.02 of the width): the finite-width atom
    tol = 1e-9 * lam.max()
    atom = law.atom
    if atom > 0:
        p = 1 - atom
        atom = 1 - np.sum(stats.binom.sf(np.arange(400), 400, p) ** (L - 1)) / 400  # 1 - E[min] / N
    assert np.mean(lam <= tol) == pytest.approx(float(law.cdf_lambda(tol)) - law.atom + atom, abs=0.035)


def test_depth_at_the_fixed_point_is_homogeneous():
    law = theory.chain_spectrum((400,) * 6, "orthogonal", 1.2, "tanh", 0.1)
    q_star = theory.mean_field("tanh", 1.2, 0.1).q_star
    np.testing.assert_allclose(law.q_layers, q_star, rtol=1e-9)


# ------------------------------------------------------------- rectangular chains


@pytest.mark.parametrize("init", ["gaussian", "orthogonal"])
def test_rectangular_linear_chain_ratios_10_and_tenth(init):
    # 400 -> 4000 -> 400: expansion by 10 then compression by 10
    law, _ = _check((400, 4000, 400), init, "linear", 1.1, 0.0, nets_moments=3, nets_ks=3)
    if init == "gaussian":  # two Marchenko-Pastur factors: m1 = 1.1^4 * 10 * 0.1, v = 1 / 10 + 1
        assert law.mean_lambda == pytest.approx(1.1**4) and law.var_over_mean_sq == pytest.approx(1.1)
    else:  # W2 W1 W1ᵀ W2ᵀ: a projection of rank 400 of 4000 compressed back: a Jacobi law, mean 0.1
        assert law.mean_lambda == pytest.approx(1.1**4 * 0.1) and law.atom == 0 and law.top_atom == 0


@pytest.mark.parametrize("init", ["gaussian", "orthogonal"])
def test_rectangular_tanh_chain(init):
    # ratios 1/3, 2, 0.15; 120 measured values per net
    _check((1200, 400, 800, 120), init, "tanh", 1.1, 0.05, nets_moments=12, nets_ks=8)


def test_rectangular_relu_chain_has_both_atoms():
    # orthogonal relu 400 -> 800 -> 400 -> 400: half the units of each hidden layer are off
    law, lam = _check((400, 800, 400, 400), "orthogonal", "relu", math.sqrt(2), 0.0, nets_moments=12, nets_ks=4)
    assert law.atom == pytest.approx(0.5)  # rank 400 * 1/2 of 400
    assert law.top_atom == 0.0  # no input survives both ReLU layers isometrically


def test_mlp_7_linear_orthogonal_is_isometric_and_random_pruning_is_not():
    widths = (1024, 100, 100, 100, 100, 100, 100, 10)
    iso = theory.chain_spectrum(widths, "orthogonal", 1.0)
    assert iso.point_mass == pytest.approx(1.0) and iso.atom == 0.0
    # orthogonal kernels at the pruned widths (what OrthP restores): still exactly isometric
    thin = theory.chain_spectrum((1024, 20, 20, 20, 20, 20, 20, 10), "orthogonal", 1.0)
    assert thin.point_mass == pytest.approx(1.0)
    # random pruning of the orthogonal network: masks of keep 0.2 in six hidden layers
    pruned = theory.chain_spectrum(widths, "orthogonal", 1.0, keep=0.2)
    assert pruned.point_mass is None and pruned.atom == 0.0 and pruned.top_atom == 0.0
    assert pruned.mean_lambda == pytest.approx(0.2**6)


# ---------------------------------------------------------- against Fuss-Catalan


@pytest.mark.parametrize("L", [1, 3, 8])
def test_square_gaussian_linear_is_fuss_catalan(L):
    law = theory.chain_spectrum((300,) * (L + 1), "gaussian", 1.3)
    x = 1.3 ** (2 * L) * np.array([1e-8, 1e-3, 0.1, 0.7, 1.5, 4.0])
    np.testing.assert_allclose(law.cdf_lambda(x), theory.fuss_catalan_cdf(x, L, 1.3), atol=2e-4)
    np.testing.assert_allclose(law.density_lambda(x[1:-1]), theory.fuss_catalan_density(x[1:-1], L, 1.3), rtol=3e-3)
    assert law.var_over_mean_sq == L


def test_density_integrates_to_the_continuous_mass_and_first_moment():
    for law in (theory.chain_spectrum((400,) * 4, "gaussian", 1.2, "hard_tanh", 0.1),
                theory.chain_spectrum((300, 600, 200), "gaussian", 1.0)):
        lam = np.geomspace(law.support_lambda()[0], law.support_lambda()[1], 20001)
        rho = law.density_lambda(lam)
        assert integrate.trapezoid(rho, lam) == pytest.approx(1 - law.atom - law.top_atom, abs=0.01)
        assert integrate.trapezoid(lam * rho, lam) == pytest.approx(law.mean_lambda, rel=0.02)


# --------------------------------------------------------------------- mean field


def test_relu_and_linear_closed_forms():
    r = theory.mean_field("relu", 1.2, 0.3)
    assert r.q_star == pytest.approx(0.09 / (1 - 0.72)) and r.chi == pytest.approx(0.72)
    assert r.xi_q == pytest.approx(-1 / math.log(0.72)) and r.xi_c == pytest.approx(-1 / math.log(0.72))
    assert theory.mean_field("relu", 1.5, 0.1).q_star == math.inf  # chi > 1: the variance grows
    assert theory.chi_one_sigma_w("relu", 0.4) == pytest.approx(math.sqrt(2))


@pytest.mark.parametrize("act", ["tanh", "hard_tanh"])
def test_maps_and_derivatives_agree(act):
    q = 0.7
    # V'(q) by finite differences against the closed form / integration by parts
    eps = 1e-5
    fd = (theory.variance_map(act, q + eps, 1.3, 0.2) - theory.variance_map(act, q - eps, 1.3, 0.2)) / (2 * eps)
    assert mf._dV(act, q, 1.3) == pytest.approx(fd, rel=1e-6)
    # C'(c) = sigma_w^2 E[phi'(u1) phi'(u2)] against finite differences of C(c)
    for c in (0.2, 0.6):
        fd = (theory.correlation_map(act, c + 1e-4, q, 1.3, 0.2)[0]
              - theory.correlation_map(act, c - 1e-4, q, 1.3, 0.2)[0]) / 2e-4
        assert theory.correlation_map(act, c, q, 1.3, 0.2)[1] == pytest.approx(fd, rel=1e-4)
    # C(1) = 1 at the fixed point
    m = theory.mean_field(act, 1.3, 0.2)
    assert theory.correlation_map(act, 1.0, m.q_star, 1.3, 0.2)[0] == pytest.approx(1.0, rel=1e-9)


def test_order_to_chaos_line_and_phases():
    for act in ("tanh", "hard_tanh"):
        s = theory.chi_one_sigma_w(act, 0.3)
        assert theory.mean_field(act, s, 0.3).chi == pytest.approx(1.0, abs=1e-9)
        assert theory.mean_field(act, 0.9 * s, 0.3).phase == "ordered"
        chaotic = theory.mean_field(act, 1.3 * s, 0.3)
        assert chaotic.phase == "chaotic" and chaotic.c_star < 1
        # xi_c diverges at the line
        assert theory.mean_field(act, s * (1 + 1e-4), 0.3).xi_c > 50


def test_mean_field_against_a_wide_network():
    """q*, chi and c* from a wide tanh network, averaged over layers well past xi_q and xi_c."""
    rng = np.random.default_rng(1)
    N, sw, sb = 700, 1.5, 0.3
    m = theory.mean_field("tanh", sw, sb)
    assert m.phase == "chaotic" and m.xi_c < 25
    x = rng.standard_normal(N) * 2.0
    x2 = x + 0.5 * rng.standard_normal(N)  # correlation ~0.97 at the start
    qs, chis, cs = [], [], []
    for layer in range(150):
        W, b = sw * rng.standard_normal((N, N)) / math.sqrt(N), sb * rng.standard_normal(N)
        h, h2 = W @ x + b, W @ x2 + b
        x, x2 = np.tanh(h), np.tanh(h2)
        if layer >= 90:
            qs.append(np.mean(h * h))
            chis.append(sw**2 * np.mean(1 / np.cosh(h) ** 4))
            cs.append(np.mean(h * h2) / np.sqrt(np.mean(h * h) * np.mean(h2 * h2)))
    assert np.mean(qs) == pytest.approx(m.q_star, rel=0.03)
    assert np.mean(chis) == pytest.approx(m.chi, rel=0.03)
    assert np.mean(cs) == pytest.approx(m.c_star, abs=0.03)


def test_simulator_is_the_models_jacobian():
    """The numpy sampler's J is the Jacobian of isotpp's MLP with the same weights and input."""
    import jax.numpy as jnp

    from isotpp.models import create_model
    from isotpp.models.mlp import draw_biases
    from isotpp.spectra.jacobian import model_singular_values

    model = create_model("mlp", depth=3, width=30, act="hard_tanh", input_dim=20, num_classes=10,
                         init="gaussian", sigma_w=1.3, seed=4)
    draw_biases(model, 0.2, seed=4)
    x = np.random.default_rng(0).standard_normal((1, 20))
    layers = [layer for layer in model.net if hasattr(layer, "kernel")]
    h, J = x[0], None
    for i, layer in enumerate(layers):
        W = np.asarray(layer.kernel[...], np.float64).T
        h = W @ h + np.asarray(layer.bias[...], np.float64)
        J = W if J is None else W @ J
        if i < len(layers) - 1:
            J = ((np.abs(h) < 1) * 1.0)[:, None] * J
            h = np.clip(h, -1, 1)
    sv = model_singular_values(model, jnp.asarray(x, jnp.float32), method="jacobian")[0]
    np.testing.assert_allclose(sv, np.linalg.svd(J, compute_uv=False), rtol=1e-4)
    # and the biases are N(0, sigma_b^2)
    b = np.concatenate([np.asarray(layer.bias[...]) for layer in layers])
    assert b.std() == pytest.approx(0.2, rel=0.15) and abs(b.mean()) < 0.05


def test_random_pruning_is_a_bernoulli_factor():
    widths, keep = (400, 400, 400, 400), 0.5
    law = theory.chain_spectrum(widths, "gaussian", 1.0, "linear", keep=keep)
    assert law.mean_lambda == pytest.approx(keep**2) and law.atom == pytest.approx(0.5)
    rng = np.random.default_rng(3)
    m = np.array([jacobian_moments(sample_jacobian(rng, widths, "gaussian", 1.0, keep=keep)) for _ in range(8)])
    assert m[:, 0].mean() == pytest.approx(law.mean_lambda, rel=0.05)
    assert m[:, 1].mean() / m[:, 0].mean() ** 2 - 1 == pytest.approx(law.var_over_mean_sq, rel=0.10)


def test_a_zero_fixed_point_puts_the_inputs_at_unit_variance():
    """sigma_b = 0 in the ordered phase has q* = 0: inputs "at the fixed point" would be zero
    vectors, and a relu network's Jacobian at 0 is zero (not the law's phi'(0+) = 1/2). The
    theory, the sampler and ``isotpp spectrum`` use |x|^2 / N_0 = 1 there instead."""
    from isotpp.cli.spectrum import run_spectrum

    assert theory.mean_field("relu", 1.41, 0.0).q_star == 0.0 and theory.mean_field("tanh", 0.9, 0.0).q_star == 0.0
    for act, sigma_w in (("relu", 1.41), ("tanh", 0.9)):
        assert theory.fixed_point_input_norm_sq(act, sigma_w) is None
        assert theory.chain_spectrum((50,) * 4, "gaussian", sigma_w, act).q_in == 1.0
    J = sample_jacobian(np.random.default_rng(0), (400,) * 3, "gaussian", 1.41, "relu")
    assert np.mean(np.linalg.svd(J, compute_uv=False) < 1e-9) == pytest.approx(0.5, abs=0.05)
    out = run_spectrum(model="mlp", depth=2, width=60, act="relu", input_dim=60, num_classes=60, init="gaussian",
                       sigma_w=1.41, samples=2, float64=True, progress=False)
    assert out["inputs"] == "gaussian" and out["theory"]["input_q"] == 1.0 and out["theory"]["zero_fraction"] == 0.5
    assert out["mean"] > 0.3 and out["ks_distance"] < 0.2  # not a Jacobian of zeros (mean 0, KS 0.5)


def test_the_issues_rectangular_command_gets_its_theory():
    """`isotpp spectrum --model mlp --depth 7 --width 100 --act linear --input-dim 784 --num-classes 10
    --init gaussian --samples 50 --plot s.png` drew no theory (784 -> 100 x 6 -> 10 is not square) and
    counted one input-free spectrum 50 times; now: the rectangular law, one spectrum per net."""
    from isotpp.cli.spectrum import run_spectrum

    out = run_spectrum(model="mlp", depth=7, width=100, act="linear", input_dim=784, num_classes=10,
                       init="gaussian", samples=50, nets=3, progress=False)  # the figure: test_theory.py
    assert out["n_samples"] == 3 and out["samples_per_net"] == 1 and out["method"] == "linear"
    th = out["theory"]
    assert th["widths"] == [784, 100, 100, 100, 100, 100, 100, 10] and th["q_star"] is None and th["chi"] is None
    # E[W A Wᵀ] = tr(A) / fan_in: every Gaussian layer keeps the mean of lambda at sigma_w^2 = 1
    law = theory.chain_spectrum(th["widths"], "gaussian", 1.0)
    assert th["lambda_mean"] == law.mean_lambda == pytest.approx(1.0)
    assert out["lambda_mean"] == pytest.approx(1.0, rel=0.3) and out["ks_distance"] < 0.3  # 30 values
    assert "theory_note" not in out
    assert out["ks_floor_s"] == pytest.approx(1e-13 * out["max"])  # float64: KS lumps s below 1e-13 s_max


def test_ks_distance_lumps_what_the_precision_cannot_resolve():
    """Deep products put mass below any precision's floor, where rounding leaves values anywhere
    under it: with ``floor`` those count as one point, compared with the law's mass up to it."""
    law = theory.chain_spectrum((400,) * 9, "gaussian", 1.0)  # Fuss-Catalan, L = 8
    grid = np.geomspace(1e-40, law.support_lambda()[1], 20001)
    cdf = law.cdf_lambda(grid)
    lam = np.interp((np.arange(2000) + 0.5) / 2000, cdf, grid)  # the law's quantiles: KS = 1 / (2 n)
    assert theory.ks_distance(lam, law) < 1e-3
    floor = float(np.interp(0.2, cdf, grid))  # a fifth of the mass lies below
    rounded = np.where(lam < floor, 0.5 * floor, lam)  # what a computation resolving only the floor returns
    assert theory.ks_distance(rounded, law) > 0.15
    assert theory.ks_distance(rounded, law, floor=floor) < 1e-3
    with pytest.raises(UserError, match="floor"):
        theory.ks_distance(lam, law, floor=-1.0)
