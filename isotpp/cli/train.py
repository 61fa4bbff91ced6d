"""``isotpp train``: train a named model from scratch with the data-parallel trainer (isotpp.training.sharded).

    isotpp train --model resnet56 --dataset cifar10 --epochs 200 \
        --lr-schedule 0:0.1,100:0.01,150:0.001 --batch-size 128 --wd 5e-4 --out runs/resnet56_base

(``experiments/train_cifar.py`` is the same program as a script.)

Every device of every host trains one global batch (``--batch-size``); the
data set is held on the devices and augmented there (pad 4 + random crop +
flip). ``--resume`` continues exactly from the newest checkpoint of
``--workdir`` (or starts when there is none), so the same command line serves
first launches and restarts. SIGTERM saves a checkpoint and exits with code
75; bad arguments and diverged runs exit 2 with one line. Outputs (process 0):
``config.json``, ``metrics.jsonl``, ``checkpoints/``, ``model.npz`` (an
isotpp model file) and ``results.json``. See docs/launching.md.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence

from isotpp import configure_cpu
from isotpp.cli import args as A
from isotpp.cli.args import Parser as _Parser
from isotpp.cli.args import positive_float as _positive_float  # noqa: F401 (experiments/train_imagenet.py)
from isotpp.cli.args import positive_int as _positive_int  # noqa: F401
from isotpp.errors import UserError

PROG = "isotpp train"


def add_common_arguments(p: argparse.ArgumentParser, *, model: str, batch: int, schedule: str, epochs: int,
                         wd: float) -> None:
    """The options every training entry point shares (defaults as given)."""
    p.add_argument("--model", type=A.model_name, default=model, metavar="MODEL",
                   help=f"architecture name, one of {', '.join(A.MODEL_NAMES)}")
    p.add_argument("--epochs", type=A.Int(1, 100_000), default=epochs, help="epochs to train")
    p.add_argument("--lr-schedule", type=A.lr_schedule, default=schedule, help="epoch:lr pieces")
    p.add_argument("--batch-size", type=A.Int(1, 1_000_000), default=batch,
                   help="GLOBAL batch over all devices and hosts (at most the number of training examples)")
    p.add_argument("--wd", type=A.nonnegative_float, default=wd, help="weight decay, PyTorch-style")
    p.add_argument("--momentum", type=A.fraction, default=0.9, help="SGD momentum, in [0, 1)")
    p.add_argument("--init", type=A.init_scheme, default="kaiming", metavar=A.init_scheme.describe,
                   help="weight init scheme (kaiming, as the reference)")
    p.add_argument("--seed", type=A.seed, default=0, help="seed for the weights, the data order and augmentation")
    p.add_argument("--out", "--workdir", dest="workdir", type=A.output_dir, required=True, metavar="DIR",
                   help="run directory: config.json, metrics.jsonl, checkpoints/, model.npz go here")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--bf16", action="store_true", help="compute in bfloat16 (parameters and optimiser stay float32)")
    p.add_argument("--distributed", action="store_true",
                   help="call jax.distributed.initialize() (multi-host; also when ISOTPP_DISTRIBUTED=1)")
    p.add_argument("--data-dir", type=A.data_dir, default=None,
                   help="where the dataset files are (unset: $ISOTPP_DATA, the cache, system locations)")
    p.add_argument("--checkpoint-every", type=A.positive_int, default=1000, metavar="STEPS",
                   help="also checkpoint every STEPS steps (epoch ends always)")
    p.add_argument("--log-every", type=A.positive_int, default=100, metavar="STEPS",
                   help="a step record in metrics.jsonl every STEPS steps")
    p.add_argument("--eval-batch-size", type=A.Int(1, 1_000_000), default=None,
                   help="global evaluation batch (unset: 1000, at most the test set)")
    p.add_argument("--width-scale", type=WIDTH_SCALE, default=1.0,
                   help="multiply every hidden width (smoke tests on small machines)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


WIDTH_SCALE = A.Float(1 / 64, 64.0, what="a width factor")
_EXAMPLES = """examples:
  isotpp train --model resnet20 --dataset synthetic --epochs 1 --width-scale 0.25 --out runs/smoke
  isotpp train --model resnet56 --dataset cifar10 --data-dir DATA --epochs 200 \\
      --lr-schedule 0:0.1,100:0.01,150:0.001 --batch-size 128 --wd 5e-4 --out runs/resnet56_base --resume
"""


def _arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    add_common_arguments(p, model="resnet56", batch=128, schedule="0:0.1,100:0.01,150:0.001", epochs=200, wd=5e-4)
    p.add_argument("--dataset", "--data", dest="dataset", type=A.dataset, default="cifar10",
                   metavar="DATASET",
                   help=f"one of {', '.join(A.DATASETS)}")
    p.add_argument("--train-limit", "--limit", dest="limit", type=A.positive_int, default=None,
                   help="use only the first N training examples (at least --batch-size)")
    p.add_argument("--no-augment", action="store_true", help="no random crop / flip")
    return p


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = _Parser(prog=prog, description=__doc__.split("\n\n")[0], epilog=_EXAMPLES)
    A.version_action(parser)
    return _arguments(parser)


def add_parser(sub) -> None:
    """Register ``isotpp train`` on the ``isotpp`` sub-parsers."""
    p = sub.add_parser("train", help="train a model from scratch (base models), data-parallel, resumable",
                       description=__doc__.split("\n\n")[0], epilog=_EXAMPLES)
    _arguments(p)
    p.set_defaults(func=run)


def scaled_widths(name: str, num_classes: int, input_shape, scale: float) -> dict[str, int] | None:
    """Every conv/dense width times ``scale`` (at least 1), the classifier kept."""
    if scale == 1.0:
        return None
    # imported on use: the parsers load no JAX, so `isotpp --help` stays fast
    from flax import nnx

    from isotpp.models import create_model, widths_of

    widths = widths_of(nnx.eval_shape(lambda: create_model(name, num_classes=num_classes, input_shape=input_shape)))
    last = list(widths)[-1]
    check_width_scale(widths, scale, keep=last)
    return {k: (v if k == last else round(v * scale)) for k, v in widths.items()}


def check_width_scale(widths: dict[str, int], scale: float, keep: str) -> None:
    """Refuse a ``scale`` that would leave a layer (other than ``keep``) without a channel."""
    narrowest = min((v, k) for k, v in widths.items() if k != keep)
    if round(narrowest[0] * scale) < 1:
        raise UserError(f"width scale {scale:g} leaves layer {narrowest[1]} ({narrowest[0]} channels) with none: "
                        f"use a scale of at least {1 / narrowest[0]:g}")


def make_model(args, num_classes: int, input_shape):
    # imported on use: the parsers load no JAX, so `isotpp --help` stays fast
    import jax.numpy as jnp
    from flax import nnx

    from isotpp.memory import require_for_training
    from isotpp.models import create_model

    widths = scaled_widths(args.model, num_classes, input_shape, args.width_scale)
    require_for_training(nnx.eval_shape(lambda: create_model(args.model, num_classes=num_classes,
                                                             input_shape=input_shape, widths=widths)),
                         args.model, "lower --width-scale")
    return create_model(args.model, num_classes=num_classes, input_shape=input_shape, widths=widths,
                        init=args.init, seed=args.seed, dtype=jnp.bfloat16 if args.bf16 else None)


def train_config(args, **kwargs):
    # imported on use: the parsers load no JAX, so `isotpp --help` stays fast
    from isotpp.training.sharded import TrainConfig

    return TrainConfig(epochs=args.epochs, lr_schedule=args.lr_schedule, seed=args.seed,
                       checkpoint_every_steps=args.checkpoint_every, log_every_steps=args.log_every,
                       progress=not args.no_progress, **kwargs)


def finish(args, trainer, history) -> None:
    """model.npz and results.json (process 0)."""
    # imported on use: the parsers load no JAX, so `isotpp --help` stays fast
    from pathlib import Path

    from isotpp import parallel
    from isotpp.pruning.model_file import save_model
    from isotpp.storage.atomic import write_json

    if not parallel.is_main_process():
        return
    workdir = Path(args.workdir)
    save_model(workdir / "model.npz", trainer.host_model(), meta={"trained_by": PROG, "epochs": args.epochs})
    accs = [r["test_acc"] for r in history if "test_acc" in r]
    write_json(workdir / "results.json", {
        "model": args.model, "epochs": len(history), "steps": trainer.step,
        "final_test_acc": accs[-1] if accs else None, "best_test_acc": max(accs) if accs else None,
        "history": history,
    })
    if accs:
        print(f"final test accuracy {accs[-1]:.2f} % (best {max(accs):.2f} %); model: {workdir / 'model.npz'}")


# Settings that may change between the calls that continue one workdir (they do not change the result).
REUSABLE = ("workdir", "resume", "distributed", "data_dir", "checkpoint_every", "log_every", "no_progress",
            "workers")


@contextlib.contextmanager
def training_run(args, parser: argparse.ArgumentParser | None = None):
    """The workdir of a training command, opened: locked, its settings checked, SIGTERM -> checkpoint + 75.

    Call after :func:`isotpp.parallel.initialize`; yields the
    :class:`isotpp.studies.rundir.RunDir` (check the data with its ``check_data``,
    pass its ``settings`` as the trainer's ``args`` record). The trainer
    records the settings (config.json's ``args``) when it starts; a workdir
    of a run with other settings is refused, a run that fails before that
    leaves nothing. ``parser``: the command's, whose defaults stand for the
    options an older isotpp's record lacks.
    """
    # imported on use: the parsers load no JAX, so `isotpp --help` stays fast
    from isotpp.preemption import sigterm_stops
    from isotpp.studies.rundir import open_run

    settings = A.recorded(args)
    defaults = {k: parser.get_default(k) for k in settings} if parser is not None else None
    with sigterm_stops(), open_run(args.workdir, settings, kind="training run", reusable=REUSABLE,
                                   section="args", defaults=defaults) as run:
        yield run


def run(args, hooks=()) -> int:
    # imported on use: the parsers load no JAX, so `isotpp --help` stays fast
    from isotpp import parallel

    parallel.initialize(True if args.distributed else None)  # before anything touches a device

    # imported on use: the parsers load no JAX, so `isotpp --help` stays fast
    from isotpp.cli.prune import check_batch
    from isotpp.data import DATASET_INFO, load_dataset
    from isotpp.data.identity import data_identity
    from isotpp.data.pipeline import InMemoryData, InMemoryEval, pad_fill
    from isotpp.training.engine import LRSchedule, reference_sgd
    from isotpp.training.sharded import Trainer

    check_batch(args.batch_size, args.limit, DATASET_INFO.get(args.dataset))
    with training_run(args, build_parser()) as run:
        schedule = LRSchedule.parse(args.lr_schedule)
        mesh = parallel.make_mesh()
        train = load_dataset(args.dataset, "train", data_dir=args.data_dir, limit=args.limit)
        test = load_dataset(args.dataset, "test", data_dir=args.data_dir)
        run.check_data(data_identity(train.name, train=train, test=test))
        info = DATASET_INFO[train.name]
        model = make_model(args, train.num_classes, train.input_shape)
        tx = reference_sgd(schedule.initial, args.wd, args.momentum)
        data = InMemoryData(train.images, train.labels, batch_size=args.batch_size, mesh=mesh, seed=args.seed,
                            augment=not args.no_augment, fill=pad_fill(info.mean, info.std))
        evaluation = InMemoryEval(test.images, test.labels, mesh, batch_size=args.eval_batch_size or 1000)
        trainer = Trainer(model, tx, data, train_config(args), args.workdir, eval_data=evaluation, hooks=hooks,
                          extra_config={"args": run.settings})
        history, _ = trainer.fit(resume=args.resume)
        finish(args, trainer, history)
    return 0


def main(argv: Sequence[str] | None = None, *, hooks=(), parser=None, runner=run) -> int:
    """Parse, run, and turn user errors and preemption into exit codes (2, 75; see :func:`isotpp.cli.app.main`)."""
    configure_cpu()  # before the run starts JAX
    parser = parser or build_parser()
    args = parser.parse_args(argv)
    A.check_after_parsing(parser.prog, args)
    if A.checked_only(parser.prog, args):
        return 0
    return A.guarded(parser.prog, lambda: runner(args, hooks))


if __name__ == "__main__":
    sys.exit(main())
