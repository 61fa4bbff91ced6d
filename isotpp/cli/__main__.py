"""``python -m isotpp.cli``: the ``isotpp`` command."""

import sys

from isotpp.cli.app import main

sys.exit(main())
