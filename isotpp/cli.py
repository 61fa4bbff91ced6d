"""The ``isotpp`` command line: thin sub-commands over the library.

Every sub-command reports bad input as one line on stderr and exits 2 (no
traceback); results are written atomically.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from isotpp.commands.args import Parser as _Parser
from isotpp.commands.args import positive_float as _positive_float
from isotpp.commands.args import positive_int as _positive_int
from isotpp.errors import UserError

# --------------------------------------------------------------------------
# isotpp spectrum
# --------------------------------------------------------------------------


def _add_spectrum(sub) -> None:
    from isotpp.models.init import INIT_SCHEMES

    p = sub.add_parser(
        "spectrum",
        help="per-sample Jacobian singular values of a model and their summary",
        description=(
            "Jacobian singular values (JSV) of d logits / d input, per sample, with the TPP "
            "reference's summary (mean, std, max, min, mean condition number, mean (s-1)^2). "
            "Inputs come from --data or are standard Gaussian."
        ),
    )
    p.add_argument("--model", default="mlp", help="architecture name, e.g. mlp, mlp_7_linear, lenet5, resnet56, vgg19, resnet50")
    p.add_argument("--depth", type=_positive_int, default=7, help="mlp: number of dense layers (default 7)")
    p.add_argument("--width", type=_positive_int, default=100, help="mlp: hidden width (default 100)")
    p.add_argument("--act", choices=("linear", "relu", "tanh"), default="linear", help="mlp: activation")
    p.add_argument("--input-dim", type=_positive_int, default=None, help="mlp: input dimension (default 1024)")
    p.add_argument("--num-classes", type=_positive_int, default=None, help="number of outputs (default: the model's)")
    p.add_argument("--init", choices=INIT_SCHEMES, default="default", help="weight initialisation (default: Flax's)")
    p.add_argument("--sigma-w", type=_positive_float, default=1.0, help="weight scale for gaussian/orthogonal inits")
    p.add_argument("--samples", type=_positive_int, default=100, help="number of input samples (default 100)")
    p.add_argument("--seed", type=int, default=0, help="seed for the weights (inputs use seed+1)")
    p.add_argument("--method", choices=("auto", "gram", "jacobian", "linear"), default="auto",
                   help="auto: exact kernel product for linear MLPs, else gram (J·Jᵀ from VJPs)")
    p.add_argument("--bn", choices=("eval", "batch"), default="eval",
                   help="BatchNorm statistics: running (eval) or of each batch (batch, as the reference)")
    p.add_argument("--float64", action="store_true", help="compute in float64 (badly conditioned spectra)")
    p.add_argument("--checkpoint", default=None, help="model file (.npz) written by isotpp to load weights from")
    p.add_argument("--data", default=None, help="take inputs from a dataset: fashion_mnist, mnist, cifar10, cifar100")
    p.add_argument("--data-dir", default=None, help="where the dataset files are (else $ISOTPP_DATA, cache, system)")
    p.add_argument("--chunk-size", type=_positive_int, default=None, help="samples per jitted chunk")
    p.add_argument("--values", action="store_true", help="include every sample's singular values in the JSON")
    p.add_argument("--json", default=None, metavar="PATH", help="write the summary as JSON")
    p.add_argument("--plot", default=None, metavar="PATH",
                   help="write a histogram with the theory overlay (.png, .pdf or .svg)")
    _add_format(p, "--plot's path with each extension")
    p.set_defaults(func=_run_spectrum)


def _run_spectrum(args) -> int:
    from isotpp.commands.spectrum import run_spectrum

    result = run_spectrum(
        model=args.model,
        depth=args.depth,
        width=args.width,
        act=args.act,
        input_dim=args.input_dim,
        num_classes=args.num_classes,
        init=args.init,
        sigma_w=args.sigma_w,
        samples=args.samples,
        seed=args.seed,
        method=args.method,
        bn=args.bn,
        float64=args.float64,
        checkpoint=args.checkpoint,
        data=args.data,
        data_dir=args.data_dir,
        chunk_size=args.chunk_size,
        values=args.values,
        json_path=args.json,
        plot_path=args.plot,
        plot_formats=_formats(args),
    )
    print(result["table"])
    for key in ("json", "plot"):
        if result.get(key):
            print(f"{key}: {result[key]}")
    return 0


# --------------------------------------------------------------------------
# isotpp reproduce mlp-linear / isotpp demo
# --------------------------------------------------------------------------


def _add_format(p, where: str = "figure.<ext> in --out") -> None:
    p.add_argument("--format", default=None, metavar="EXT[,EXT]",
                   help=f"figure formats, comma-separated from png, pdf, svg (e.g. png,pdf): one file each, {where}")


def _formats(args) -> tuple[str, ...]:
    from isotpp.plots import parse_formats

    return parse_formats(args.format)


def _redraw(results, out, formats, write_report) -> None:
    """Write the figures again in ``formats`` (the study itself writes PNG) and list the new files."""
    if formats and formats != ("png",):
        paths = write_report(results, out, formats=formats)
        results["files"] = {k: str(v) for k, v in paths.items()} | {"results": results["files"]["results"]}


def _seeds(text: str) -> int:
    return _positive_int(text)


def _add_reproduce(sub) -> None:
    p = sub.add_parser("reproduce", help="run a paper's study end to end",
                       description="Reproduce a study of the papers; results, table and figure land in --out.")
    studies = p.add_subparsers(dest="study", metavar="STUDY", parser_class=_Parser)
    studies.required = True
    m = studies.add_parser(
        "mlp-linear", help="MLP-7-Linear: L1 vs L1+OrthP vs TPP (+ KernOrth, AI), two retraining LRs",
        description="The TPP paper's linear-network study: train MLP-7-Linear, prune 80%% of every hidden "
                    "layer with each method, retrain at LR 1e-2 and 1e-3, record accuracy and mean JSV "
                    "per epoch. The published schedule is the default; --quick runs a reduced one.",
    )
    _study_args(m, default_seeds=3)
    m.set_defaults(func=_run_reproduce_mlp)
    c = studies.add_parser(
        "convnet", help="CPU-scale ConvNet study: ResNet-20 at a high ratio, L1 vs L1+OrthP vs TPP",
        description="A CIFAR-style ResNet-20 (narrowed) on a slice of Fashion-MNIST (CIFAR-10 with --dataset "
                    "cifar10): prune *layer*.conv1 at a high ratio with L1, L1+OrthP and TPP, retrain at two "
                    "learning rates, record accuracy and mean JSV per epoch. Sized for a 2-core CPU.",
    )
    c.add_argument("--quick", action="store_true", help="a reduced schedule (a few minutes)")
    c.add_argument("--seeds", type=_seeds, default=1, help="number of seeds (default 1)")
    c.add_argument("--methods", default=None, help="comma-separated (default L1,L1+OrthP,TPP)")
    c.add_argument("--dataset", choices=("fashion_mnist", "mnist", "cifar10"), default="fashion_mnist")
    c.add_argument("--data-dir", default=None)
    c.add_argument("--ratio", type=float, default=None, help="pruning ratio of every block's conv1 (default 0.9)")
    c.add_argument("--out", required=True)
    _add_format(c)
    c.set_defaults(func=_run_reproduce_convnet)
    _add_reproduce_pai(studies)


def _add_reproduce_pai(studies) -> None:
    p = studies.add_parser(
        "pai", help="pruning at initialisation + AutoSparse on Fashion-MNIST (LeNet-300-100, a small ConvNet)",
        description="Random, magnitude, SNIP, GraSP, SynFlow, IRP and AutoSparse masks (each also with "
                    "approximate isometry) at several densities: mean JSV at initialisation and final test "
                    "accuracy, 3 seeds; the AutoSparse scorer is also transferred to a small ConvNet.",
    )
    p.add_argument("--quick", action="store_true", help="a reduced run (minutes on a CPU)")
    p.add_argument("--seeds", type=_seeds, default=None, help="number of seeds (default 3, quick 1)")
    p.add_argument("--densities", default=None, help="kept fractions, e.g. '0.1,0.05,0.01' or '10%%,1%%' "
                                                     "(default 10,5,2,1,0.5 %%; quick 5,1 %%)")
    p.add_argument("--methods", default=None, help="comma-separated, e.g. 'snip,grasp+ai,autosparse' "
                                                   "(default: all seven and each +ai)")
    p.add_argument("--epochs", type=_positive_int, default=None, help="training epochs (default 10, quick 3)")
    p.add_argument("--scope", choices=("global", "layerwise"), default="global", help="one threshold or per layer")
    p.add_argument("--no-transfer", action="store_true", help="skip the transfer to the small ConvNet")
    p.add_argument("--scorer", default=None, metavar="PATH", help="use this trained AutoSparse scorer (.npz)")
    p.add_argument("--irp-record", default=None, metavar="PATH",
                   help="train the AutoSparse scorer from this LeNet-300-100 IRP record (.npz)")
    p.add_argument("--data-dir", default=None, help="where Fashion-MNIST is (else $ISOTPP_DATA, cache, system)")
    p.add_argument("--out", required=True, help="run directory (reruns reuse what is already there)")
    _add_format(p, "accuracy.<ext> and jsv.<ext> in --out")
    p.set_defaults(func=_run_reproduce_pai)


def _run_reproduce_pai(args) -> int:
    from isotpp.pai.masks import parse_densities
    from isotpp.studies import pai as study
    from isotpp.studies.pai_report import pai_tables

    kw = {"data_dir": args.data_dir, "scope": args.scope, "scorer_path": args.scorer,
          "irp_record_path": args.irp_record}
    if args.seeds is not None:
        kw["seeds"] = tuple(range(args.seeds))
    if args.densities is not None:
        kw["densities"] = parse_densities(args.densities)
    if args.methods is not None:
        kw["methods"] = tuple(m.strip() for m in args.methods.split(",") if m.strip())
        if not kw["methods"]:
            raise UserError("--methods is empty: name at least one method")
    if args.epochs is not None:
        kw["epochs"] = args.epochs
    if args.no_transfer:
        kw["transfer"] = False
    formats = _formats(args)
    results = study.run_study(study.quick_config(**kw) if args.quick else study.PaIConfig(**kw), args.out)
    from isotpp.studies.pai_report import write_report

    _redraw(results, args.out, formats, write_report)
    print(pai_tables(results))
    for key, path in results["files"].items():
        print(f"{key}: {path}")
    return 0


def _study_args(p, default_seeds: int) -> None:
    p.add_argument("--quick", action="store_true", help="a reduced schedule (minutes on a CPU)")
    p.add_argument("--seeds", type=_seeds, default=default_seeds, help=f"number of seeds (default {default_seeds})")
    p.add_argument("--methods", default=None,
                   help="comma-separated methods (default: L1,L1+OrthP,TPP,L1+KernOrth,L1+AI)")
    p.add_argument("--dataset", choices=("fashion_mnist", "mnist"), default="fashion_mnist")
    p.add_argument("--ratio", type=float, default=None, help="pruning ratio of every hidden layer (default 0.8)")
    p.add_argument("--lr-schedule", action="append", default=None, metavar="LR=SCHEDULE",
                   help="retraining schedule per LR label, e.g. '0.001=0:0.001,45:0.0001' (repeatable; "
                        "default: the paper's two)")
    p.add_argument("--epochs", type=_positive_int, default=None, help="retraining epochs (default 90, quick 10)")
    p.add_argument("--data-dir", default=None, help="where the dataset files are (else $ISOTPP_DATA, cache, system)")
    p.add_argument("--out", required=True, help="run directory (reruns reuse what is already there)")
    _add_format(p)


def _study_config(args, seeds: int):
    from isotpp.studies import mlp_linear as study

    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip()) if args.methods else study.METHODS
    if not methods:
        raise UserError("--methods is empty: name at least one method")
    for m in methods:
        study.canonical_method(m)
    kw = {"dataset": args.dataset, "data_dir": args.data_dir, "seeds": tuple(range(seeds)), "methods": methods}
    if args.ratio is not None:
        kw["ratio"] = args.ratio
    if args.epochs is not None:
        kw["retrain_epochs"] = args.epochs
    if args.lr_schedule:
        schedules = []
        for item in args.lr_schedule:
            label, sep, text = item.partition("=")
            if not sep or not label.strip():
                raise UserError(f"bad --lr-schedule {item!r}: write LABEL=SCHEDULE, e.g. '0.001=0:0.001,45:0.0001'")
            schedules.append((label.strip(), text.strip()))
        kw["lr_schedules"] = tuple(schedules)
    return study.quick_config(**kw) if args.quick else study.StudyConfig(**kw)


def _print_study(results, args) -> None:
    from isotpp.study_report import results_table, write_report

    _redraw(results, args.out, _formats(args), write_report)
    print(results_table(results))
    files = results["files"]
    for key in ("results", "csv", "table", *(k for k in files if k.startswith("figure"))):
        if key in files:
            print(f"{key}: {files[key]}")


def _run_reproduce_mlp(args) -> int:
    from isotpp.studies import mlp_linear as study

    _formats(args)  # a bad --format fails before the work
    results = study.run_study(_study_config(args, args.seeds), args.out)
    _print_study(results, args)
    return 0


def _run_reproduce_convnet(args) -> int:
    from isotpp.studies import convnet

    kw = {"dataset": args.dataset, "data_dir": args.data_dir, "seeds": tuple(range(args.seeds))}
    if args.methods:
        kw["methods"] = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    if args.ratio is not None:
        kw["ratio"] = args.ratio
    config = convnet.quick_config(**kw) if args.quick else convnet.ConvStudyConfig(**kw)
    _formats(args)
    results = convnet.run_convnet_study(config, args.out)
    _print_study(results, args)
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the quick linear-network study on Fashion-MNIST, one seed (a few minutes)",
                       description="The quick MLP-7-Linear study on Fashion-MNIST with one seed: prints the "
                                   "table and the paths of the figure and results.")
    p.add_argument("--out", default="runs/demo", help="run directory (default runs/demo)")
    p.add_argument("--data-dir", default=None,
                   help="where Fashion-MNIST is (else $ISOTPP_DATA, cache, system; then downloaded into the "
                        "cache; offline, the 10,000-image subset shipped with isotpp)")
    p.add_argument("--no-download", action="store_true",
                   help="when Fashion-MNIST is not found, use the shipped subset without trying to download it")
    _add_format(p)
    p.set_defaults(func=_run_demo)


def _run_demo(args) -> int:
    from isotpp.data.bundled import demo_data_dir
    from isotpp.studies import mlp_linear as study

    _formats(args)
    data_dir, _ = demo_data_dir(args.data_dir, download=not args.no_download)
    config = study.quick_config(seeds=(0,), data_dir=str(data_dir))
    results = study.run_study(config, args.out)
    _print_study(results, args)
    return 0


# --------------------------------------------------------------------------

def _add_prune(sub) -> None:
    from isotpp.commands.prune import add_parser

    add_parser(sub)


def _add_train(sub) -> None:
    from isotpp.commands.train import add_parser

    add_parser(sub)


_COMMANDS: list[Callable] = [_add_spectrum, _add_train, _add_prune, _add_reproduce, _add_demo]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="isotpp", description="Dynamical-isometry analysis of neural-network pruning.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for add in _COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from isotpp.progress import configure_logging

    configure_logging()
    try:
        return args.func(args)
    except UserError as e:
        print(f"isotpp {args.command}: error: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    except Exception as e:  # preemption (SIGTERM) saved a checkpoint: exit with the "retry" code
        from isotpp.trainer import Preempted

        if isinstance(e, Preempted):
            return e.exit_code
        raise
    except KeyboardInterrupt:
        print(f"isotpp {args.command}: interrupted; finished results were kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
