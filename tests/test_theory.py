"""Free-probability theory of deep linear nets: the Fuss-Catalan law and its plots."""

import math

import numpy as np
import pytest
from scipy import integrate
from threadpoolctl import threadpool_limits

from isotpp import theory
from isotpp.errors import UserError
from isotpp.spectra import histogram as plots


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """numpy's BLAS on one thread: at these sizes threads only spin against other work."""
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _integrate_density(L, sigma_w, fn, n=400):
    """int f(lam) rho(lam) dlam by Gauss-Legendre after lam = edge * y^(L+1),
    y = 1 - (1 - v)^2: this removes both the lam^(-L/(L+1)) singularity at 0 and
    the square root at the edge, so the quadrature is independent of theory's own."""
    edge = theory.fuss_catalan_support(L, sigma_w)[1]
    t, w = np.polynomial.legendre.leggauss(n)
    v, w = 0.5 * (t + 1), 0.5 * w
    y, dy = 1 - (1 - v) ** 2, 2 * (1 - v)
    lam, dlam = edge * y ** (L + 1), edge * (L + 1) * y**L * dy
    return float(np.sum(w * dlam * fn(lam) * theory.fuss_catalan_density(lam, L, sigma_w)))


def _product(rng, L, N, sigma_w, sample):
    J = np.eye(N)
    for _ in range(L):
        J = sample(rng, N, sigma_w) @ J
    return J


def _gaussian(rng, N, sigma_w):
    return sigma_w * rng.standard_normal((N, N)) / math.sqrt(N)


def _orthogonal(rng, N, sigma_w):
    q, r = np.linalg.qr(rng.standard_normal((N, N)))
    return sigma_w * q * np.sign(np.diag(r))


# ----------------------------------------------------------------------- moments


@pytest.mark.parametrize("L", [1, 2, 5, 7])
@pytest.mark.parametrize("sigma_w", [1.0, 1.3])
def test_density_is_normalised_and_has_fuss_catalan_moments(L, sigma_w):
    assert _integrate_density(L, sigma_w, np.ones_like) == pytest.approx(1.0, rel=1e-8)
    for k in (1, 2, 3):
        numeric = _integrate_density(L, sigma_w, lambda lam, k=k: lam**k)
        assert numeric == pytest.approx(theory.fuss_catalan_moment(k, L, sigma_w), rel=1e-8)


def test_moment_identities():
    # Catalan numbers (L = 1) and the ternary numbers (L = 2)
    assert [theory.fuss_catalan_moment(k, 1) for k in range(6)] == [1, 1, 2, 5, 14, 42]
    assert [theory.fuss_catalan_moment(k, 2) for k in range(6)] == [1, 1, 3, 12, 55, 273]
    for L in (1, 2, 5, 7, 30):
        for sigma_w in (1.0, 1.3, math.sqrt(2)):
            assert theory.mean_lambda(L, sigma_w) == sigma_w ** (2 * L)
            m1, m2 = (theory.fuss_catalan_moment(k, L, sigma_w) for k in (1, 2))
            assert (m2 - m1**2) / m1**2 == pytest.approx(L, rel=1e-12)
        assert theory.var_over_mean_sq(L) == L


def test_L1_is_marchenko_pastur():
    x = np.concatenate([np.logspace(-250, -1, 30), np.linspace(0.01, 3.999, 400)])
    mp = np.sqrt(4 - x) / (2 * np.pi * np.sqrt(x))
    np.testing.assert_allclose(theory.fuss_catalan_density(x, 1), mp, rtol=1e-10)
    # F(x) = (2 theta + sqrt(x (4 - x)) / 2) / pi with x = 4 sin^2 theta (no cancellation at 0)
    mp_cdf = (2 * np.arcsin(np.sqrt(x) / 2) + 0.5 * np.sqrt(x * (4 - x))) / np.pi
    np.testing.assert_allclose(theory.fuss_catalan_cdf(x, 1), mp_cdf, rtol=1e-12)
    # with a scale: lambda / sigma_w^2 is MP
    np.testing.assert_allclose(theory.fuss_catalan_density(1.69 * x, 1, 1.3), mp / 1.69, rtol=1e-10)
    # s = sqrt(lambda) is the quarter circle sqrt(4 - s^2) / pi
    s = np.linspace(0, 1.999, 50)
    np.testing.assert_allclose(theory.singular_value_density(s, 1), np.sqrt(4 - s * s) / np.pi, rtol=1e-9)


@pytest.mark.parametrize("L,sigma_w", [(1, 1.0), (2, 1.3), (5, 1.0), (7, 0.9)])
def test_support_edge(L, sigma_w):
    lo, edge = theory.fuss_catalan_support(L, sigma_w)
    assert lo == 0.0
    assert edge == pytest.approx(sigma_w ** (2 * L) * (L + 1) ** (L + 1) / L**L, rel=1e-13)
    outside = edge * np.array([1.0, 1.0 + 1e-9, 1.01, 2.0, 1e6])
    assert np.all(theory.fuss_catalan_density(outside, L, sigma_w) == 0.0)
    inside = edge * np.array([1e-12, 0.5, 0.99, 1 - 1e-6])
    assert np.all(theory.fuss_catalan_density(inside, L, sigma_w) > 0.0)
    assert np.all(theory.fuss_catalan_density([-1.0, -1e-300], L, sigma_w) == 0.0)
    assert theory.fuss_catalan_density(0.0, L, sigma_w) == np.inf
    np.testing.assert_array_equal(theory.fuss_catalan_cdf([-1.0, 0.0, edge, 2 * edge], L, sigma_w), [0, 0, 1, 1])


@pytest.mark.parametrize("L", [2, 5])
def test_cdf_is_the_integrated_density(L):
    edge = theory.fuss_catalan_support(L)[1]
    for q in edge * np.array([1e-6, 0.05, 0.3, 0.8, 0.999]):
        # lam = q * u^(L+1) removes the singularity at 0
        val, _ = integrate.quad(
            lambda u, q=q: theory.fuss_catalan_density(q * u ** (L + 1), L)[()] * q * (L + 1) * u**L, 0, 1, epsabs=1e-13
        )
        assert theory.fuss_catalan_cdf(q, L) == pytest.approx(val, abs=1e-9)
    grid = np.linspace(0, edge, 3001)
    assert np.all(np.diff(theory.fuss_catalan_cdf(grid, L)) >= 0)


def test_singular_value_density_is_the_change_of_variables():
    L, sigma_w = 3, 1.2
    s = np.linspace(0.01, 3.0, 50)
    np.testing.assert_allclose(
        theory.singular_value_density(s, L, sigma_w), 2 * s * theory.fuss_catalan_density(s * s, L, sigma_w)
    )
    s_edge = math.sqrt(theory.fuss_catalan_support(L, sigma_w)[1])
    total, _ = integrate.quad(lambda v: theory.singular_value_density(v, L, sigma_w)[()], 0, s_edge, limit=200)
    assert total == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize("L", [1, 2, 5, 7, 30])
def test_predicted_mean_s_matches_the_mellin_transform(L):
    # E[x^t] = Gamma((L+1)t + 1) / (Gamma(t + 1) Gamma(Lt + 2)) continues the
    # Fuss-Catalan moments to real t; t = 1/2 gives E[s]. Independent of the quadrature.
    sigma_w = 1.1
    mellin = math.exp(math.lgamma(0.5 * L + 1.5) - math.lgamma(1.5) - math.lgamma(0.5 * L + 2))
    summary = theory.predicted_summary(L, sigma_w)
    assert summary["mean_s"] == pytest.approx(sigma_w**L * mellin, rel=1e-9)
    assert summary["mean_lambda"] == sigma_w ** (2 * L)
    assert summary["var_over_mean_sq"] == L
    assert summary["lambda_max"] == theory.fuss_catalan_support(L, sigma_w)[1]
    assert summary["max_s"] ** 2 == pytest.approx(summary["lambda_max"])
    assert summary["std_s"] ** 2 == pytest.approx(summary["mean_lambda"] - summary["mean_s"] ** 2)
    assert summary["mean_sq_dev"] == pytest.approx(summary["mean_lambda"] - 2 * summary["mean_s"] + 1)


def test_deep_nets_stay_finite():
    L, sigma_w = 200, 1.0
    edge = theory.fuss_catalan_support(L, sigma_w)[1]
    lam = edge * np.logspace(-40, -1e-6, 200)
    rho = theory.fuss_catalan_density(lam, L, sigma_w)
    assert np.all(np.isfinite(rho)) and np.all(rho > 0)
    cdf = theory.fuss_catalan_cdf(lam, L, sigma_w)
    assert np.all(np.diff(cdf) >= 0) and 0 < cdf[0] < cdf[-1] < 1
    assert math.isinf(theory.mean_lambda(2000, 2.0))  # overflow is inf, not an exception


# -------------------------------------------------------------------- simulation


@pytest.mark.parametrize("L", [2, 5])
def test_gaussian_product_matches_fuss_catalan(L):
    N, sigma_w = 400, 1.3
    lams = []
    for seed in (0, 1):
        J = _product(np.random.default_rng(seed), L, N, sigma_w, _gaussian)
        lam = np.sort(np.linalg.svd(J, compute_uv=False) ** 2)
        cdf = theory.fuss_catalan_cdf(lam, L, sigma_w)
        n = lam.size
        ks = max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n))
        assert ks < 0.03
        lams.append(lam)
    lam = np.concatenate(lams)
    assert lam.mean() == pytest.approx(theory.mean_lambda(L, sigma_w), rel=0.05)
    assert lam.var() / lam.mean() ** 2 == pytest.approx(theory.var_over_mean_sq(L), rel=0.05)


def test_orthogonal_product_is_a_point_mass():
    for L, sigma_w in [(1, 1.0), (5, 1.3), (7, 0.8)]:
        J = _product(np.random.default_rng(L), L, 120, sigma_w, _orthogonal)
        s = np.linalg.svd(J, compute_uv=False)
        s0 = theory.orthogonal_singular_value(L, sigma_w)
        assert s0 == sigma_w**L
        np.testing.assert_allclose(s, s0, rtol=1e-10, atol=0)


# -------------------------------------------------------------------- dispatcher


def test_theory_for():
    gauss = theory.theory_for("gaussian", 7, 1.0, "linear")
    assert gauss.name == "fuss-catalan" and not gauss.is_point_mass and gauss.label
    assert gauss.support_s() == (0.0, math.sqrt(theory.fuss_catalan_support(7)[1]))
    np.testing.assert_allclose(gauss.density_s([0.5, 1.0]), theory.singular_value_density([0.5, 1.0], 7, 1.0))
    kaiming = theory.theory_for("kaiming", 3, 1.0, "linear")
    assert kaiming.name == "fuss-catalan" and kaiming.sigma_w == math.sqrt(2)
    orth = theory.theory_for("orthogonal", 4, 1.1, "identity")
    assert orth.is_point_mass and orth.point_mass == theory.orthogonal_singular_value(4, 1.1)
    assert orth.summary()["mean_s"] == orth.point_mass and orth.summary()["std_s"] == 0.0
    with pytest.raises(ValueError):
        orth.density_s(1.0)
    assert theory.theory_for("gaussian", 7, 1.0, "relu") is None
    assert theory.theory_for("uniform", 7, 1.0, "linear") is None
    with pytest.raises(AttributeError):  # frozen
        gauss.depth = 3


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "3", None])
def test_bad_depth_is_a_user_error(bad):
    with pytest.raises(UserError, match="depth"):
        theory.fuss_catalan_density(1.0, bad)
    with pytest.raises(UserError, match="depth"):
        theory.theory_for("gaussian", bad, 1.0, "linear")


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), "x"])
def test_bad_sigma_is_a_user_error(bad):
    with pytest.raises(UserError, match="sigma_w"):
        theory.fuss_catalan_support(3, bad)
    with pytest.raises(UserError, match="sigma_w"):
        theory.theory_for("orthogonal", 3, bad, "linear")


# ------------------------------------------------------------------------- plots


def _is_png(path):
    data = path.read_bytes()
    return len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"


def test_spectrum_histogram_writes_png(tmp_path):
    J = _product(np.random.default_rng(0), 5, 150, 1.0, _gaussian)
    s = np.linalg.svd(J, compute_uv=False)
    gauss = theory.theory_for("gaussian", 5, 1.0, "linear")
    for name, kwargs in [("auto.png", {}), ("lin.png", {"log_x": False}), ("log.png", {"log_x": True})]:
        fig = plots.spectrum_histogram(s, tmp_path / name, theory=gauss, title="L=5", **kwargs)
        assert isinstance(fig, plots.Figure) and _is_png(tmp_path / name)
    orth = theory.theory_for("orthogonal", 3, 1.1, "linear")
    plots.spectrum_histogram(np.full(50, orth.point_mass), tmp_path / "orth.png", theory=orth)
    plots.spectrum_histogram(np.r_[0.0, s], tmp_path / "zeros.png", log_x=True)
    assert _is_png(tmp_path / "orth.png") and _is_png(tmp_path / "zeros.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["auto.png", "lin.png", "log.png", "orth.png", "zeros.png"]


def test_spectrum_histogram_failed_write_leaves_nothing(tmp_path, monkeypatch):
    s = np.linspace(0.1, 2.0, 100)
    with pytest.raises(UserError, match="does not exist"):
        plots.spectrum_histogram(s, tmp_path / "missing" / "h.png")
    (tmp_path / "adir.png").mkdir()  # os.replace onto a directory fails
    with pytest.raises(UserError, match="cannot write figure"):
        plots.spectrum_histogram(s, tmp_path / "adir.png")

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(plots.Figure, "savefig", boom)
    with pytest.raises(UserError, match="No space left"):
        plots.spectrum_histogram(s, tmp_path / "full.png")
    assert [p.name for p in tmp_path.iterdir()] == ["adir.png"]
    assert list((tmp_path / "adir.png").iterdir()) == []


@pytest.mark.parametrize("bad", [[], [1.0, np.nan], [-0.5, 1.0]])
def test_spectrum_histogram_rejects_bad_values(tmp_path, bad):
    with pytest.raises(UserError):
        plots.spectrum_histogram(np.array(bad), tmp_path / "h.png")


def test_theory_figure_draws_s_and_lambda_on_the_axis_where_the_mass_is():
    """Two panels, s and lambda, each the measured histogram with the law's density over it; log-x
    (bars and curve as densities of log10, so areas stay probabilities) where the values span
    decades, linear where they do not; the precision's floor as a dotted line."""
    from isotpp.theory.plots import draw_law, spectrum_theory_figure
    from isotpp.theory.simulate import sample_jacobian

    rng = np.random.default_rng(0)
    for init, L, log in (("gaussian", 6, True), ("orthogonal", 2, False)):
        law = theory.chain_spectrum((200,) * (L + 1), init, 1.2, "tanh", 0.1)
        s = np.linalg.svd(sample_jacobian(rng, (200,) * (L + 1), init, 1.2, "tanh", 0.1), compute_uv=False)
        fig = spectrum_theory_figure(s, law=law, title="t", floor=1e-3 * s.max())
        ax, bx = fig.axes
        assert ax.get_xlabel() == "singular value s" and bx.get_xlabel() == "λ = s²"
        for a, var in ((ax, "s"), (bx, "lambda")):
            assert (a.get_xscale() == "log") == log
            x, y = max(a.get_lines(), key=lambda ln: len(ln.get_xdata())).get_data()  # the density curve
            t = np.log10(x) if log else x
            lam = (x * x if var == "s" else x)[[0, -1]]  # the drawn range holds the law's mass there
            # (to the trapezoid rule's error at the edges, where the orthogonal law's density diverges)
            assert integrate.trapezoid(y, t) == pytest.approx(float(np.diff(law.cdf_lambda(lam))[0]), abs=0.04)
            assert law.cdf_lambda(lam[0]) < 0.05 and law.cdf_lambda(lam[1]) > 0.99
            assert any("float32" in str(h.get_label()) for h in a.get_lines())
    with pytest.raises(UserError, match="var"):
        draw_law(ax, law, s, var="sigma")
