"""Which theory applies to a freshly initialised MLP, and what it predicts.

:func:`network_theory` maps an MLP's initialisation (scheme, sigma_w, sigma_b),
activation and layer widths to the free-probability law of its squared JSV
(:func:`isotpp.theory.chain_spectrum`) and its mean-field quantities, or returns
the reason no theory applies. Initialisations and the weight law they give:

==================  ===========================================================
``gaussian``        entries N(0, sigma_w^2 / fan_in)
``orthogonal``,     sigma_w times a Haar (semi-)orthogonal matrix (dense layers
``delta-orthogonal`` of ``delta-orthogonal`` are orthogonal)
``kaiming``         Gaussian with sigma_w = sqrt(2) (the ``sigma_w`` argument is
                    not used by this init)
``default``         Flax's LeCun normal: i.i.d. entries of variance 1 / fan_in
                    (truncated normal); the law is universal in the entries'
                    distribution, so Gaussian with sigma_w = 1
``torch``           U(+-1/sqrt(fan_in)): variance 1 / (3 fan_in), Gaussian law
                    with sigma_w = 1/sqrt(3); linear networks only (its biases
                    have a per-layer variance the mean-field recursion here
                    does not model)
==================  ===========================================================
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from isotpp.theory.free import ChainSpectrum, chain_spectrum
from isotpp.theory.meanfield import MeanField, mean_field

__all__ = ["NetworkTheory", "network_theory", "weight_law"]


def weight_law(init: str, sigma_w: float) -> tuple[str, float] | None:
    """(``"gaussian"`` | ``"orthogonal"``, effective sigma_w) of an init scheme, or None."""
    init = str(init).lower()
    if init == "gaussian":
        return "gaussian", float(sigma_w)
    if init in ("orthogonal", "delta-orthogonal"):
        return "orthogonal", float(sigma_w)
    if init == "kaiming":
        return "gaussian", math.sqrt(2.0)
    if init == "default":
        return "gaussian", 1.0
    if init == "torch":
        return "gaussian", 1.0 / math.sqrt(3.0)
    return None


@dataclass(frozen=True)
class NetworkTheory:
    """The law of lambda = s^2 (``law``) and, for nonlinear networks, ``mean_field``."""

    law: ChainSpectrum
    mean_field: MeanField | None

    def as_json(self) -> dict:
        """The ``theory`` object of ``isotpp spectrum``'s JSON."""
        mf = self.mean_field
        law = self.law
        out = {
            "name": law.name,
            "label": law.label,
            "weights": law.init,
            "sigma_w": law.sigma_w,
            "sigma_b": law.sigma_b,
            "widths": list(law.widths),
            "lambda_mean": law.mean_lambda,
            "lambda_var_over_mean_sq": law.var_over_mean_sq,
            "q_star": None if mf is None or math.isinf(mf.q_star) else mf.q_star,
            "chi": None if mf is None else mf.chi,
            "xi_q": None if mf is None or mf.xi_q is None or math.isinf(mf.xi_q) else mf.xi_q,
            "xi_c": None if mf is None or mf.xi_c is None or math.isinf(mf.xi_c) else mf.xi_c,
            "phase": None if mf is None else mf.phase,
            "input_q": law.q_in if mf is not None else None,
            "layer_q": list(law.q_layers) if mf is not None else None,
        }
        return out | law.summary()


def network_theory(
    init: str,
    act: str,
    widths: Sequence[int],
    sigma_w: float = 1.0,
    sigma_b: float = 0.0,
    q_in: float | None = None,
    *,
    dataset_inputs: bool = False,
) -> tuple[NetworkTheory | None, str | None]:
    """(theory, None) for an MLP with layer widths (N_0, ..., N_L), or (None, reason).

    ``q_in`` = |x|^2 / N_0 of the inputs (None: at the mean-field fixed point);
    ``dataset_inputs``: the inputs come from a dataset (their norms vary and are
    not at the fixed point), which a nonlinear network's theory cannot use.
    """
    wl = weight_law(init, sigma_w)
    if wl is None:
        return None, f"no theory for init {init!r}: the free-probability theory needs i.i.d. or orthogonal weights"
    weights, s_w = wl
    act = str(act).lower()
    linear = act in ("linear", "identity")
    if not linear and str(init).lower() == "torch":
        return None, ("no theory for init 'torch' with a nonlinear activation: its biases have a per-layer "
                      "variance; use gaussian or orthogonal with sigma_b")
    if not linear and dataset_inputs:
        return None, ("no theory for dataset inputs in a nonlinear network: the theory's inputs sit at the "
                      "mean-field fixed point; use the generated Gaussian inputs")
    law = chain_spectrum(widths, weights, s_w, act, sigma_b, q_in)
    return NetworkTheory(law, None if linear else mean_field(act, s_w, sigma_b)), None
