"""Implementations of the ``isotpp`` sub-commands, callable from Python.

Each returns plain data (and writes its files); ``isotpp.cli`` only parses
arguments and prints.
"""
