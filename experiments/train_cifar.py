"""Train a named CIFAR model with the data-parallel trainer: the ``isotpp train`` command as a script.

    python experiments/train_cifar.py --model resnet56 --dataset cifar10 --epochs 200 \
        --lr-schedule 0:0.1,100:0.01,150:0.001 --batch-size 128 --wd 5e-4 --workdir runs/resnet56_base

See ``isotpp train --help`` and docs/launching.md.
"""

import sys

from isotpp.cli.train import (  # noqa: F401 (the script's API: train_imagenet.py builds on it)
    PROG,
    _Parser,
    _positive_float,
    _positive_int,
    add_common_arguments,
    build_parser,
    finish,
    make_model,
    run,
    scaled_widths,
    train_config,
)
from isotpp.cli.train import main as _main


def main(argv=None, **kwargs) -> int:
    kwargs.setdefault("parser", build_parser("train_cifar"))
    return _main(argv, **kwargs)


if __name__ == "__main__":
    sys.exit(main())
