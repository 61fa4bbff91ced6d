"""The CPU-scale ConvNet study (ResNet-20 on Fashion-MNIST: L1 vs L1+OrthP vs TPP), as a script:
the same as ``isotpp reproduce convnet``.

    python experiments/convnet_study.py --quick --out runs/convnet-quick   # a few minutes
    python experiments/convnet_study.py --out runs/convnet                 # the documented run

Every option of ``isotpp reproduce convnet --help`` is accepted. The library does the
work (:mod:`isotpp.studies.convnet`); this file only forwards the arguments.
"""

import sys

from isotpp.cli.app import main

if __name__ == "__main__":
    sys.exit(main(["reproduce", "convnet", *sys.argv[1:]]))
