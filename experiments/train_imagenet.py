"""Train a named ImageNet model from an ImageFolder tree with the data-parallel trainer.

    python experiments/train_imagenet.py --model resnet50 --data-dir /data/imagenet --workers 12 \
        --epochs 90 --lr-schedule 0:0.1,30:0.01,60:0.001 --batch-size 256 --wd 1e-4 --workdir runs/r50

``--data-dir`` holds ``train/<class>/*.JPEG`` and ``val/<class>/*.JPEG``;
Grain worker processes decode and augment (random-resized crop 224 + flip;
eval: resize 256 + centre crop 224), each host loading only its slice of
every global batch. Options, outputs, resuming and exit codes are those of
train_cifar.py; see docs/launching.md.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import train_cifar

from isotpp.cli import args as A

PROG = "train_imagenet"


def build_parser():
    p = train_cifar._Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    train_cifar.add_common_arguments(p, model="resnet50", batch=256, schedule="0:0.1,30:0.01,60:0.001", epochs=90,
                                     wd=1e-4)
    p.add_argument("--workers", type=A.Int(0, 256, what="a number of processes"), default=min(16, os.cpu_count() or 1),
                   help="Grain decoding processes per host (min(16, CPUs) here)")
    p.add_argument("--image-size", type=A.Int(1, 4096), default=224, help="training crop and eval centre crop")
    p.add_argument("--resize", type=A.Int(1, 4096), default=256, help="eval resize of the shorter side")
    return p


def run(args, hooks=()) -> int:
    from isotpp import parallel

    parallel.initialize(True if args.distributed else None)

    from isotpp.cli.args import recorded
    from isotpp.cli.train import training_run
    from isotpp.data.imagefolder import imagefolder_data
    from isotpp.errors import UserError
    from isotpp.training.engine import LRSchedule, reference_sgd
    from isotpp.training.sharded import Trainer

    if not args.data_dir:
        raise UserError("--data-dir is required: the directory holding train/ and val/")
    with training_run(args):
        schedule = LRSchedule.parse(args.lr_schedule)
        mesh = parallel.make_mesh()
        data, evaluation, num_classes = imagefolder_data(
            args.data_dir, global_batch_size=args.batch_size, mesh=mesh, seed=args.seed, workers=args.workers,
            eval_batch_size=args.eval_batch_size, size=args.image_size, resize=args.resize)
        model = train_cifar.make_model(args, num_classes, (args.image_size, args.image_size, 3))
        tx = reference_sgd(schedule.initial, args.wd, args.momentum)
        trainer = Trainer(model, tx, data, train_cifar.train_config(args), args.workdir, eval_data=evaluation,
                          hooks=hooks, extra_config={"args": recorded(args)})
        history, _ = trainer.fit(resume=args.resume)
        train_cifar.finish(args, trainer, history)
    return 0


def main(argv: Sequence[str] | None = None, *, hooks=()) -> int:
    return train_cifar.main(argv, hooks=hooks, parser=build_parser(), runner=run)


if __name__ == "__main__":
    sys.exit(main())
