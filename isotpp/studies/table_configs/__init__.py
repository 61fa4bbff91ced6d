"""The papers' tables as :class:`~isotpp.studies.paper_tables.TableSpec` configs, one module per table.

Each module defines ``get_config()``; :func:`isotpp.studies.paper_tables.load_spec` finds
them by name (``table1_resnet56``, ``table2_resnet50``, ...) through
:mod:`importlib.resources`, so they work from an installed wheel as well as
from a checkout.
"""
