"""``python -m isotpp``: the ``isotpp`` command."""

import sys

from isotpp.cli.app import main

if __name__ == "__main__":
    sys.exit(main())
