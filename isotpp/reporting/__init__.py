"""Readable tables and figures."""
