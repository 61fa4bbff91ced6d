"""Theory of the Jacobian spectra isotpp measures.

* :mod:`isotpp.theory.fuss_catalan` — deep linear square networks: the exact
  Fuss–Catalan law (Gaussian weights) and the point mass (orthogonal weights);
* :mod:`isotpp.theory.meanfield` — mean-field signal propagation: q*, chi, the
  depth scales xi_q, xi_c and the order-to-chaos line;
* :mod:`isotpp.theory.free` — the spectrum of J Jᵀ for nonlinear and rectangular
  networks by free multiplicative convolution (moments in closed form, the density
  by numerical inversion of the S-transform equation).

:func:`network_theory` picks the law for an MLP, or says why none applies.
"""

from isotpp.theory.free import (
    ChainSpectrum,
    chain_spectrum,
    fixed_point_input_norm_sq,
    ks_distance,
)
from isotpp.theory.fuss_catalan import (
    Theory,
    fuss_catalan_cdf,
    fuss_catalan_density,
    fuss_catalan_moment,
    fuss_catalan_support,
    mean_lambda,
    orthogonal_singular_value,
    predicted_summary,
    singular_value_density,
    theory_for,
    var_over_mean_sq,
)
from isotpp.theory.meanfield import (
    MeanField,
    activation_derivative_moments,
    chi_one_sigma_w,
    correlation_map,
    derivative_law,
    fixed_point,
    mean_field,
    variance_map,
    variance_trajectory,
)
from isotpp.theory.network import NetworkTheory, network_theory, weight_law

__all__ = [
    "ChainSpectrum",
    "MeanField",
    "NetworkTheory",
    "Theory",
    "activation_derivative_moments",
    "chain_spectrum",
    "chi_one_sigma_w",
    "correlation_map",
    "derivative_law",
    "fixed_point",
    "fixed_point_input_norm_sq",
    "fuss_catalan_cdf",
    "fuss_catalan_density",
    "fuss_catalan_moment",
    "fuss_catalan_support",
    "ks_distance",
    "mean_field",
    "mean_lambda",
    "network_theory",
    "orthogonal_singular_value",
    "predicted_summary",
    "singular_value_density",
    "theory_for",
    "var_over_mean_sq",
    "variance_map",
    "variance_trajectory",
    "weight_law",
]
