"""The ``isotpp`` command line: :mod:`isotpp.cli.app` parses and dispatches, one module per command."""

from isotpp.cli.app import build_parser, main

__all__ = ["build_parser", "main"]
