"""Reproductions of the papers' studies, each a small module over the library."""
