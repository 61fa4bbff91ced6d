"""The pruning-at-initialisation study, as a script: the same as ``isotpp reproduce pai``.

    python experiments/pai.py --quick --out runs/pai-quick      # a few minutes
    python experiments/pai.py --out runs/pai                    # the full study (about an hour or more on 2 cores)

Every option of ``isotpp reproduce pai --help`` is accepted. The library does the
work (:mod:`isotpp.studies.pai`); this file only forwards the arguments.
"""

import sys

from isotpp.cli.app import main

if __name__ == "__main__":
    sys.exit(main(["reproduce", "pai", *sys.argv[1:]]))
