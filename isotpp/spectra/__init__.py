"""Jacobian spectra: exact (linear, gram, jacobian) and stochastic, linearity, their figures."""
