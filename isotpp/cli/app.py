"""The ``isotpp`` command line: thin sub-commands over the library.

Every sub-command reports bad input as one line on stderr and exits 2 (no
traceback); every option's domain is declared in :mod:`isotpp.cli.args`
and checked while parsing, before anything is computed or written. Building
the parsers imports no JAX, so ``isotpp --help`` is fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from isotpp import configure_cpu
from isotpp.cli import args as A
from isotpp.cli.args import Parser as _Parser
from isotpp.pruning.methods import load_plugins, study_methods

# --------------------------------------------------------------------------
# isotpp spectrum
# --------------------------------------------------------------------------

_SPECTRUM_EXAMPLES = """examples:
  isotpp spectrum --model mlp --depth 7 --width 100 --init orthogonal --jsv-samples 10 --json jsv.json
  isotpp spectrum --model lenet5 --dataset synthetic --jsv-samples 8 --plot jsv.png
  isotpp spectrum --checkpoint runs/prune/final.npz --dataset cifar10 --json final-jsv.json
  isotpp spectrum --model resnet20 --list-layers
"""


def _add_spectrum(sub) -> None:
    p = sub.add_parser(
        "spectrum",
        help="per-sample Jacobian singular values of a model and their summary",
        description=(
            "Jacobian singular values (JSV) of d logits / d input, per sample, with the TPP "
            "reference's summary (mean, std, max, min, mean condition number, mean (s-1)^2). "
            "Inputs come from --dataset or are standard Gaussian."
        ),
        epilog=_SPECTRUM_EXAMPLES,
    )
    p.add_argument("--model", type=A.model_name, default="mlp",
                   help="architecture name, e.g. mlp, mlp_7_linear, lenet5, resnet56, vgg19, resnet50")
    p.add_argument("--depth", type=A.Int(1, 10_000), default=7, help="mlp: number of dense layers")
    p.add_argument("--width", type=A.positive_int, default=100, help="mlp: hidden width")
    p.add_argument("--act", choices=("linear", "relu", "tanh", "hard_tanh"), default="linear",
                   help="mlp: activation after every hidden layer (none after the last)")
    p.add_argument("--input-dim", type=A.positive_int, default=None, help="mlp: input dimension (unset: 1024)")
    p.add_argument("--num-classes", type=A.positive_int, default=None,
                   help="number of outputs (unset: the model's)")
    p.add_argument("--init", type=A.init_scheme, default="default", metavar=A.init_scheme.describe,
                   help="weight initialisation (default: Flax's)")
    p.add_argument("--sigma-w", type=A.positive_float, default=1.0,
                   help="weight scale of the gaussian, orthogonal and delta-orthogonal inits")
    p.add_argument("--jsv-samples", "--samples", dest="samples", type=A.positive_int, default=100,
                   help="number of input samples")
    p.add_argument("--sigma-b", type=A.nonnegative_float, default=0.0, help="mlp: biases drawn N(0, sigma_b^2)")
    p.add_argument("--nets", type=A.Int(1, 10_000), default=1,
                   help="independent weight draws (seeds seed, seed+1, ...), spectra pooled")
    p.add_argument("--seed", type=A.seed, default=0, help="seed for the weights (inputs use seed+1)")
    p.add_argument("--method", choices=A.SPECTRUM_METHODS, default="auto",
                   help="auto: exact kernel product for linear MLPs, stochastic when the classes number at least 4x "
                        "--matvecs (BatchNorm eval), else gram (exact: J·Jᵀ from one VJP per class); jacobian: the "
                        "explicit Jacobian's SVD; stochastic: Hutchinson + Lanczos estimate with its error in the JSON")
    p.add_argument("--matvecs", type=A.Int(1, 100_000, what="a number of products"), default=None,
                   help="stochastic: J·Jᵀ products per sample, each one VJP + one JVP (unset: 64); more: smaller "
                        "error")
    p.add_argument("--memory-budget", type=A.byte_size, default=None, metavar="SIZE",
                   help="bytes a chunk of samples may use (e.g. 2GiB): the chunk size is fitted to it from XLA's "
                        "memory analysis (unset: chosen from the model size)")
    p.add_argument("--jsv-bn", "--bn", dest="bn", choices=("eval", "batch"), default="eval",
                   help="BatchNorm statistics: running (eval) or of each batch (batch, as the reference)")
    p.add_argument("--float64", action="store_true", help="compute in float64 (badly conditioned spectra)")
    p.add_argument("--checkpoint", type=A.input_file, default=None, metavar="MODEL.npz",
                   help="model file (.npz) written by isotpp to load the model and weights from")
    p.add_argument("--dataset", "--data", dest="data", type=_SPECTRUM_INPUTS, default=None,
                   metavar="DATASET",
                   help=f"take inputs from the first test examples of one of {', '.join(_SPECTRUM_INPUTS.names)} "
                        "(unset: standard Gaussian noise)")
    p.add_argument("--data-dir", type=A.data_dir, default=None,
                   help="where the dataset files are (unset: $ISOTPP_DATA, the cache, system locations)")
    p.add_argument("--chunk-size", type=A.positive_int, default=None,
                   help="samples per jitted chunk (unset: chosen from the model size)")
    p.add_argument("--values", action="store_true", help="include every sample's singular values in the JSON")
    p.add_argument("--json", type=A.output_file, default=None, metavar="PATH", help="write the summary as JSON")
    p.add_argument("--plot", type=A.output_file, default=None, metavar="PATH",
                   help="write a histogram with the theory overlay (format from the extension: .png, .pdf, .svg)")
    _add_format(p, "--plot's path with each extension")
    p.add_argument("--list-layers", action="store_true",
                   help="print the model's layer names in forward order (which can be pruned) and stop")
    p.set_defaults(func=_run_spectrum)


_SPECTRUM_INPUTS = A.Choice((*A.DATASETS, "gaussian"), {**A.DATASET_ALIASES, "random": "gaussian"}, what="input source")


def _run_spectrum(args) -> int:
    # imported on use: the parsers load no JAX, so `isotpp --help` stays fast
    from isotpp.cli.spectrum import run_spectrum

    if args.list_layers:
        return _list_layers(args.model, args.num_classes, args.checkpoint,
                            {"depth": args.depth, "width": args.width, "act": args.act,
                             "input_dim": args.input_dim or 1024} if args.model == "mlp" else {})
    result = run_spectrum(
        model=args.model,
        depth=args.depth,
        width=args.width,
        act=args.act,
        input_dim=args.input_dim,
        num_classes=args.num_classes,
        init=args.init,
        sigma_w=args.sigma_w,
        sigma_b=args.sigma_b,
        samples=args.samples,
        nets=args.nets,
        seed=args.seed,
        method=args.method,
        bn=args.bn,
        float64=args.float64,
        checkpoint=args.checkpoint,
        data=args.data,
        data_dir=args.data_dir,
        chunk_size=args.chunk_size,
        matvecs=args.matvecs,
        memory_budget=args.memory_budget,
        values=args.values,
        json_path=args.json,
        plot_path=args.plot,
        plot_formats=args.format or (),
    )
    print(result["table"])
    for key in ("json", "plot"):
        if result.get(key):
            print(f"{key}: {result[key]}")
    return 0


# --------------------------------------------------------------------------
# isotpp reproduce mlp-linear / convnet / pai, isotpp demo
# --------------------------------------------------------------------------

_seeds = A.Int(1, 1000, what="a positive number of seeds")
_epochs = A.Int(1, 100_000, what="a number of epochs")
_methods = A.CommaList(what="method")
_out_help = "run directory (a rerun of the same command continues there; other settings are refused)"
_data_dir_help = "where the dataset files are (unset: $ISOTPP_DATA, the cache, system locations)"
_formats = A.CommaList(("png", "pdf", "svg"), what="figure format")


def _add_format(p, where: str = "figure.<ext> in --out") -> None:
    p.add_argument("--format", type=_formats, default=None, metavar="EXT[,EXT]",
                   help=f"figure formats, comma-separated among png, pdf, svg (e.g. png,pdf): one file each, {where}")


def _redraw(results, out, formats, write_report) -> None:
    """Write the figures again in ``formats`` (a study itself writes PNG) and list the new files."""
    if formats and formats != ("png",):
        paths = write_report(results, out, formats=formats)
        results["files"] = {k: str(v) for k, v in paths.items()} | {"results": results["files"]["results"]}


def _add_reproduce(sub) -> None:
    p = sub.add_parser("reproduce", help="run a paper's study end to end",
                       description="Reproduce a study of the papers; results, table and figure land in --out.",
                       epilog="examples:\n  isotpp reproduce mlp-linear --quick --seeds 1 --out runs/mlp-quick\n"
                              "  isotpp reproduce convnet --quick --out runs/convnet-quick\n"
                              "  isotpp reproduce pai --quick --out runs/pai-quick\n")
    studies = p.add_subparsers(dest="study", metavar="STUDY", parser_class=_Parser)
    studies.required = True
    m = studies.add_parser(
        "mlp-linear", help=f"MLP-7-Linear: {' vs '.join(study_methods('mlp-linear'))}, two retraining LRs",
        description="The TPP paper's linear-network study: train MLP-7-Linear, prune 80% of every hidden "
                    "layer with each method, retrain at LR 1e-2 and 1e-3, record accuracy and mean JSV "
                    "per epoch. The published schedule is the default; --quick runs a reduced one.",
        epilog="examples:\n"
               "  isotpp reproduce mlp-linear --quick --seeds 1 --out runs/mlp-quick\n"
               "  isotpp reproduce mlp-linear --quick --methods L1,TPP --epochs 2 --out runs/mlp-l1-tpp\n"
               "  isotpp reproduce mlp-linear --quick --lr-schedule 0.01=0:0.01,5:0.001 --out runs/mlp-one-lr\n"
               "  isotpp reproduce mlp-linear --out runs/mlp     # the published schedule, 3 seeds\n",
    )
    _study_args(m, default_seeds=3)
    m.set_defaults(func=_run_reproduce_mlp)
    c = studies.add_parser(
        "convnet", help=f"CPU-scale ConvNet study: ResNet-20 at a high ratio, {' vs '.join(study_methods('convnet'))}",
        description="A CIFAR-style ResNet-20 (narrowed) on a slice of Fashion-MNIST (CIFAR-10 with --dataset "
                    f"cifar10): prune *layer*.conv1 at a high ratio with {', '.join(study_methods('convnet'))}, "
                    "retrain at two learning rates, record accuracy and mean JSV per epoch. Sized for a 2-core CPU.",
        epilog="examples:\n  isotpp reproduce convnet --quick --out runs/convnet-quick     # about 7 minutes\n"
               "  isotpp reproduce convnet --methods L1,TPP --ratio 0.7 --out runs/convnet-0.7\n",
    )
    c.add_argument("--quick", action="store_true", help="a reduced schedule (a few minutes)")
    c.add_argument("--seeds", type=_seeds, default=1, help="number of seeds")
    c.add_argument("--methods", type=_methods, default=None,
                   help=f"comma-separated methods (unset: {','.join(study_methods('convnet'))})")
    c.add_argument("--dataset", type=A.Choice(("fashion_mnist", "mnist", "cifar10"), A.DATASET_ALIASES,
                                              what="dataset"), default="fashion_mnist", help="the dataset the study trains on")
    c.add_argument("--data-dir", type=A.data_dir, default=None, help=_data_dir_help)
    c.add_argument("--ratio", type=A.open_fraction, default=None,
                   help="pruning ratio of every block's conv1 (unset: 0.9)")
    c.add_argument("--out", type=A.output_dir, required=True, help=_out_help)
    _add_format(c)
    c.set_defaults(func=_run_reproduce_convnet)
    _add_reproduce_pai(studies)


def _add_reproduce_pai(studies) -> None:
    p = studies.add_parser(
        "pai", help="pruning at initialisation + AutoSparse on Fashion-MNIST (LeNet-300-100, a small ConvNet)",
        description="Random, magnitude, SNIP, GraSP, SynFlow, IRP and AutoSparse masks (each also with "
                    "approximate isometry) at several densities: mean JSV at initialisation and final test "
                    "accuracy, 3 seeds; the AutoSparse scorer is also transferred to a small ConvNet.",
        epilog="examples:\n  isotpp reproduce pai --quick --out runs/pai-quick     # about 90 seconds\n"
               "  isotpp reproduce pai --quick --methods snip,synflow+ai --densities 5%,1% --no-transfer "
               "--out runs/pai-snip\n",
    )
    p.add_argument("--quick", action="store_true", help="a reduced run (minutes on a CPU)")
    p.add_argument("--seeds", type=_seeds, default=None, help="number of seeds (unset: 3, quick 1)")
    p.add_argument("--densities", type=A.densities, default=None,
                   help="kept fractions, e.g. '0.1,0.05,0.01' or '10%%,1%%' (unset: 10,5,2,1,0.5 %%; quick 5,1 %%)")
    p.add_argument("--methods", type=_methods, default=None,
                   help="comma-separated, e.g. 'snip,grasp+ai,autosparse' (unset: every score registered in "
                        "isotpp.pai.registry, each also +ai)")
    p.add_argument("--epochs", type=_epochs, default=None, help="training epochs (unset: 10, quick 3)")
    p.add_argument("--scope", choices=("global", "layerwise"), default="global", help="one threshold or per layer")
    p.add_argument("--no-transfer", action="store_true", help="skip the transfer to the small ConvNet")
    p.add_argument("--scorer", type=A.input_file, default=None, metavar="PATH",
                   help="use this trained AutoSparse scorer (.npz)")
    p.add_argument("--irp-record", type=A.input_file, default=None, metavar="PATH",
                   help="train the AutoSparse scorer from this LeNet-300-100 IRP record (.npz)")
    p.add_argument("--data-dir", type=A.data_dir, default=None, help=_data_dir_help)
    p.add_argument("--out", type=A.output_dir, required=True, help=_out_help)
    _add_format(p, "accuracy.<ext> and jsv.<ext> in --out")
    p.set_defaults(func=_run_reproduce_pai)


def _run_reproduce_pai(args) -> int:
    # imported on use: the parsers load no JAX, so `isotpp --help` stays fast
    from isotpp.pai.masks import parse_densities
    from isotpp.studies import pai as study
    from isotpp.studies.pai_report import pai_tables, write_report

    kw = {"data_dir": args.data_dir, "scope": args.scope, "scorer_path": args.scorer,
          "irp_record_path": args.irp_record}
    if args.seeds is not None:
        kw["seeds"] = tuple(range(args.seeds))
    if args.densities is not None:
        kw["densities"] = parse_densities(args.densities)
    if args.methods is not None:
        kw["methods"] = args.methods
    if args.epochs is not None:
        kw["epochs"] = args.epochs
    if args.no_transfer:
        kw["transfer"] = False
    results = study.run_study(study.quick_config(**kw) if args.quick else study.PaIConfig(**kw), args.out, log=print)
    _redraw(results, args.out, args.format, write_report)
    print(pai_tables(results))
    for key, path in results["files"].items():
        print(f"{key}: {path}")
    return 0


def _study_args(p, default_seeds: int) -> None:
    p.add_argument("--quick", action="store_true", help="a reduced schedule (minutes on a CPU)")
    p.add_argument("--seeds", type=_seeds, default=default_seeds, help="number of seeds")
    p.add_argument("--methods", type=_methods, default=None,
                   help=f"comma-separated methods (unset: {','.join(study_methods('mlp-linear'))})")
    p.add_argument("--dataset", type=A.Choice(("fashion_mnist", "mnist"), A.DATASET_ALIASES, what="dataset"),
                   default="fashion_mnist", help="the dataset the study trains on")
    p.add_argument("--ratio", type=A.open_fraction, default=None,
                   help="pruning ratio of every hidden layer (unset: 0.8)")
    p.add_argument("--lr-schedule", type=A.LabelledSchedule(), action=A.AppendUnique, default=None,
                   metavar="LABEL=SCHEDULE",
                   help="retraining schedule per LR label, e.g. '0.001=0:0.001,45:0.0001' (repeatable, one per "
                        "label; the label names files; unset: the paper's two)")
    p.add_argument("--epochs", type=_epochs, default=None, help="retraining epochs (unset: 90, quick 10)")
    p.add_argument("--data-dir", type=A.data_dir, default=None, help=_data_dir_help)
    p.add_argument("--out", type=A.output_dir, required=True, help=_out_help)
    _add_format(p)


def _study_config(args, seeds: int):
    # imported on use: the parsers load no JAX, so `isotpp --help` stays fast
    from isotpp.studies import mlp_linear as study

    methods = args.methods or study.METHODS
    for m in methods:
        study.canonical_method(m)
    kw = {"dataset": args.dataset, "data_dir": args.data_dir, "seeds": tuple(range(seeds)), "methods": methods}
    if args.ratio is not None:
        kw["ratio"] = args.ratio
    if args.epochs is not None:
        kw["retrain_epochs"] = args.epochs
    if args.lr_schedule:
        kw["lr_schedules"] = tuple(args.lr_schedule)
    return study.quick_config(**kw) if args.quick else study.StudyConfig(**kw)


def _print_study(results, args) -> None:
    # imported on use: the parsers load no JAX, so `isotpp --help` stays fast
    from isotpp.studies.linear_report import results_table, write_report

    _redraw(results, args.out, args.format, write_report)
    print(results_table(results))
    files = results["files"]
    for key in ("results", "csv", "table", *(k for k in files if k.startswith("figure"))):
        if key in files:
            print(f"{key}: {files[key]}")


def _run_reproduce_mlp(args) -> int:
    # imported on use: the parsers load no JAX, so `isotpp --help` stays fast
    from isotpp.studies import mlp_linear as study

    results = study.run_study(_study_config(args, args.seeds), args.out, log=print)
    _print_study(results, args)
    return 0


def _run_reproduce_convnet(args) -> int:
    # imported on use: the parsers load no JAX, so `isotpp --help` stays fast
    from isotpp.studies import convnet

    kw = {"dataset": args.dataset, "data_dir": args.data_dir, "seeds": tuple(range(args.seeds))}
    if args.methods:
        kw["methods"] = args.methods
    if args.ratio is not None:
        kw["ratio"] = args.ratio
    config = convnet.quick_config(**kw) if args.quick else convnet.ConvStudyConfig(**kw)
    results = convnet.run_convnet_study(config, args.out, log=print)
    _print_study(results, args)
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the quick linear-network study on Fashion-MNIST, one seed (a few minutes)",
                       description="The quick MLP-7-Linear study on Fashion-MNIST with one seed: prints the "
                                   "table and the paths of the figure and results.",
                       epilog="examples:\n  isotpp demo\n  isotpp demo --out runs/demo --data-dir ~/data/fashion-mnist\n")
    p.add_argument("--out", type=A.output_dir, default="runs/demo", help=_out_help)
    p.add_argument("--data-dir", type=A.data_dir, default=None,
                   help="where Fashion-MNIST is (unset: $ISOTPP_DATA, the cache, system locations; then downloaded "
                        "into the cache; offline, the 10,000-image subset shipped with isotpp)")
    p.add_argument("--no-download", action="store_true",
                   help="when Fashion-MNIST is not found, use the shipped subset without trying to download it")
    _add_format(p)
    p.set_defaults(func=_run_demo)


def _run_demo(args) -> int:
    # imported on use: the parsers load no JAX, so `isotpp --help` stays fast
    from isotpp.data.bundled import demo_data_dir
    from isotpp.studies import mlp_linear as study

    data_dir, _ = demo_data_dir(args.data_dir, download=not args.no_download)
    config = study.quick_config(seeds=(0,), data_dir=str(data_dir))
    results = study.run_study(config, args.out, log=print)
    _print_study(results, args)
    return 0


def _list_layers(model: str, num_classes: int | None, checkpoint: str | None, arch_kwargs: dict) -> int:
    """``--list-layers`` of ``spectrum`` and ``prune``: the layer table, nothing computed or written."""
    # imported on use: the parsers load no JAX, so `isotpp --help` stays fast
    from isotpp.cli.list_layers import layers_table

    if checkpoint is not None:
        # imported on use: the parsers load no JAX, so `isotpp --help` stays fast
        from isotpp.models import BuildConfig
        from isotpp.pruning.model_file import load_model, read_header

        header = read_header(checkpoint)
        if "build" in header:
            net = BuildConfig.from_dict(header["build"]).create(widths=header.get("widths") or None, abstract=True)
            title = f"{checkpoint} ({net.build_config.name})"
        else:  # a module from outside the zoo: rebuilt by the constructor the file records
            net, info = load_model(checkpoint)
            title = f"{checkpoint} ({info['arch']})"
    else:
        # imported on use: the parsers load no JAX, so `isotpp --help` stays fast
        from isotpp.models import BuildConfig

        net = BuildConfig(model, num_classes, None, tuple(sorted(arch_kwargs.items()))).create(abstract=True)
        title = model
    print(layers_table(net, title))
    return 0


# --------------------------------------------------------------------------

def _add_prune(sub) -> None:
    # imported on use: the parsers load no JAX, so `isotpp --help` stays fast
    from isotpp.cli.prune import add_parser

    add_parser(sub)


def _add_train(sub) -> None:
    # imported on use: the parsers load no JAX, so `isotpp --help` stays fast
    from isotpp.cli.train import add_parser

    add_parser(sub)


_COMMANDS: list[Callable] = [_add_spectrum, _add_train, _add_prune, _add_reproduce, _add_demo]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="isotpp", description="Dynamical-isometry analysis of neural-network pruning.",
                     epilog="examples:\n  isotpp demo\n  isotpp spectrum --model mlp --init orthogonal --jsv-samples 10\n"
                            "  isotpp prune --dry-run --model resnet56 --ratios '*layer*.conv1:0.5'\n"
                            "  isotpp prune --model resnet56 --list-layers\n"
                            "Run 'isotpp COMMAND --help' for a command's options; docs/cli.md has them all.")
    A.version_action(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for add in _COMMANDS:
        add(sub)
    return parser


def _load_plugins() -> int:
    """Import the modules that register methods and scores ($ISOTPP_PLUGINS, ``isotpp.plugins`` entry points)."""
    load_plugins()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), run the command; returns the exit status.

    0: done; 2: bad input (one line on stderr); 75: stopped by SIGTERM after a
    checkpoint (rerun to continue); 130: interrupted; 70: an internal error
    (one line; the traceback goes to a file it names, or to stderr with
    ISOTPP_TRACEBACK=1).
    """
    configure_cpu()  # before any command starts JAX
    status = A.guarded("isotpp", _load_plugins)
    if status:
        return status
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = " ".join(["isotpp", args.command] + ([args.study] if getattr(args, "study", None) else []))
    A.check_after_parsing(prog, args)
    if A.checked_only(prog, args):
        return 0
    # imported on use: the parsers load no JAX, so `isotpp --help` stays fast
    from isotpp.progress import configure_logging

    configure_logging()
    return A.guarded(prog, lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
