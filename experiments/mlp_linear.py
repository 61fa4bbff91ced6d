"""The linear-network study (TPP paper, MLP-7-Linear), as a script: the same as ``isotpp reproduce mlp-linear``.

    python experiments/mlp_linear.py --quick --seeds 1 --out runs/mlp-quick    # about a minute
    python experiments/mlp_linear.py --out runs/mlp                            # published schedule, 3 seeds

Every option of ``isotpp reproduce mlp-linear --help`` is accepted. The library does the
work (:mod:`isotpp.studies.mlp_linear`); this file only forwards the arguments.
"""

import sys

from isotpp.cli.app import main

if __name__ == "__main__":
    sys.exit(main(["reproduce", "mlp-linear", *sys.argv[1:]]))
