"""``isotpp prune``: structured pruning by glob ratios (the reference's ``stage_pr``).

``--dry-run`` builds the architecture abstractly (no weights), resolves the
ratios to widths exactly as the L1 selector would prune them (ceil(ratio · n)
filters per layer, at most n − 1) and reports parameters, FLOPs, sparsity and
speedup before and after, under the reference's counting convention
(:mod:`isotpp.pruning.cost`). Without it, the full run of :mod:`isotpp.studies.pruning_run`:
base model, the method's phases, removal, retraining, summary.

Wiring: ``add_parser(sub)`` registers the sub-command on the ``isotpp``
sub-parsers object; the parsed arguments carry ``func`` = :func:`run_prune_args`,
which :func:`isotpp.cli.app.main` calls (UserError -> one line, exit 2).
"""

from __future__ import annotations

import functools
from typing import Any

from isotpp.cli import args as A
from isotpp.errors import UserError

_RATIOS_HELP = ("layer-wise pruning ratios as comma-separated 'GLOB:RATIO' items on layer names, "
                "the last matching pattern winning, e.g. '*layer*.conv1:0.5' (ResNet56) or "
                "'*layer[1-3]*conv[1-2]:0.3,*layer4*conv[1-2]:0.14' (ResNet50); ratios in [0, 1)")


def _parse_skip(text) -> tuple[str, ...]:
    if not text:
        return ()
    if isinstance(text, tuple):
        return text
    return tuple(p.strip() for p in text.split(",") if p.strip())


_EXAMPLES = """examples:
  isotpp prune --model resnet56 --list-layers
  isotpp prune --dry-run --model resnet56 --ratios '*layer*.conv1:0.5' --json cost.json
  isotpp prune --dry-run --model vgg19 --num-classes 100 --ratios '*features*:0.5' --skip '*features.0'
  isotpp prune --model lenet5 --dataset synthetic --ratios '*conv*:0.5' --method L1 \\
      --base-epochs 1 --epochs 1 --train-limit 256 --out runs/lenet5-l1
  isotpp prune --model resnet56 --dataset cifar10 --data-dir DATA --ratios '*layer*.conv1:0.9' \\
      --method TPP --checkpoint base.npz --epochs 120 --lr-schedule 0:0.01,60:0.001,90:0.0001 --out runs/tpp
"""


def add_parser(sub) -> None:
    """Register ``isotpp prune`` on ``sub`` (an argparse sub-parsers object made
    with ``parser_class=isotpp.cli.args.Parser``, so bad arguments exit 2 with one line)."""
    from isotpp.pruning.config import PruneConfig  # no JAX: --help stays fast

    p = sub.add_parser(
        "prune",
        help="structured (filter) pruning by glob ratios; --dry-run reports sparsity and speedup",
        description=(
            "Structured pruning of a model's conv/dense filters by layer-name glob ratios "
            "(the TPP reference's --stage_pr). With --dry-run, print the parameters, FLOPs "
            "(multiply-adds of conv and dense layers per sample), sparsity and speedup before "
            "and after, and the layers whose width changes; nothing is trained or allocated. "
            "Without --dry-run: train (or load) the base model, run the method, remove the filters, "
            "retrain, and write metrics, checkpoints and summary.json to --out (rerun to resume). "
            "--list-layers prints the layer names the patterns match."
        ),
        epilog=_EXAMPLES,
    )
    p.add_argument("--model", type=A.model_name, required=True, metavar="MODEL",
                   help=f"architecture name, one of {', '.join(A.MODEL_NAMES)}")
    p.add_argument("--ratios", type=A.ratios, default=None, metavar="'PATTERN:R,...'", help=_RATIOS_HELP)
    p.add_argument("--skip", type=A.CommaList(what="pattern"), default=None, metavar="PATTERN,...",
                   help="comma-separated glob patterns of layers never pruned, e.g. '*features.0' (VGG19)")
    p.add_argument("--num-classes", type=A.positive_int, default=None,
                   help="number of outputs (unset: the model's, or the dataset's in a full run)")
    p.add_argument("--list-layers", action="store_true",
                   help="print the layer names in forward order (which can be pruned, which tie a residual "
                        "stream) and stop")
    p.add_argument("--dry-run", action="store_true", help="only report the cost before and after pruning")
    p.add_argument("--json", type=A.output_file, default=None, metavar="PATH",
                   help="--dry-run: write {params, params_pruned, sparsity, flops, flops_pruned, speedup, layers} "
                        "as JSON")
    run = p.add_argument_group("a full run (without --dry-run)")
    d = PruneConfig()
    method = A.prune_method()
    run.add_argument("--method", type=method, default=d.method, metavar="METHOD",
                     help=f"one of {', '.join(method.names)} (isotpp.pruning.methods' registry)")
    run.add_argument("--dataset", "--data", dest="dataset", type=_DATASETS, default=d.dataset,
                     metavar="DATASET",
                     help=f"one of {', '.join(_DATASETS.names)}; imagenet is an ImageFolder tree under --data-dir")
    run.add_argument("--data-dir", type=A.data_dir, default=None,
                     help="where the dataset files are; for imagenet (required) the directory holding "
                          "train/<class>/*.JPEG and val/<class>/*.JPEG")
    run.add_argument("--workers", type=A.Int(0, 256, what="a number of processes"), default=None,
                     help="imagenet: Grain decoding processes (unset: min(16, CPUs); 0 decodes in this process)")
    run.add_argument("--image-size", type=A.Int(1, 4096), default=d.image_size,
                     help="imagenet: training crop and eval centre crop")
    run.add_argument("--resize", type=A.Int(1, 4096), default=d.resize,
                     help="imagenet: eval resize of the shorter side before the centre crop")
    run.add_argument("--checkpoint", "--base", dest="base", type=A.later_input_file, default=None, metavar="MODEL",
                     help="trained model to prune: isotpp .npz or PyTorch .pth "
                          "(unset: train one with --base-epochs/--base-lr-schedule)")
    run.add_argument("--base-epochs", type=A.Int(1, 100_000), default=d.base_epochs,
                     help="epochs of the base model trained here")
    run.add_argument("--base-lr-schedule", type=A.lr_schedule, default=d.base_lr_schedule,
                     help="LR of the base model trained here, epoch:lr pieces")
    run.add_argument("--epochs", type=A.Int(1, 100_000), default=d.epochs, help="retraining epochs")
    run.add_argument("--lr-schedule", type=A.lr_schedule, default=d.lr_schedule,
                     help="retraining LR, epoch:lr pieces")
    run.add_argument("--batch-size", type=A.Int(1, 1_000_000), default=d.batch_size,
                     help="global training batch (at most the number of training examples)")
    run.add_argument("--weight-decay", "--wd", dest="weight_decay", type=A.nonnegative_float, default=d.weight_decay,
                     help="weight decay (added to the gradient)")
    run.add_argument("--seed", type=A.seed, default=0, help="seed of the base model, data order and methods")
    run.add_argument("--init", type=A.init_scheme, default=d.init, metavar=A.init_scheme.describe,
                     help="init of trained-from-scratch models")
    run.add_argument("--tpp-lr", type=A.positive_float, default=d.tpp_lr, help="LR of TPP's penalty phases")
    run.add_argument("--lw-opp", type=A.nonnegative_float, default=d.lw_opp,
                     help="weight of TPP's Gram penalty and of X in 'X+L1' (the reference's --lw_opp)")
    run.add_argument("--lw-orth-reg", dest="penalty_weight", type=A.nonnegative_float, default=d.penalty_weight,
                     help="weight of X in 'L1+X' while retraining (the reference's --lw_orth_reg)")
    run.add_argument("--kernorth-rule", choices=("c_in", "fan_in"), default=d.kernorth_rule,
                     help="KernOrth+L1's transpose rule: c_in (the reference's code) or fan_in (its intent)")
    run.add_argument("--reg-granularity", type=A.positive_float, default=d.reg_granularity,
                     help="TPP: increase of the penalty factor every --update-reg-interval iterations")
    run.add_argument("--update-reg-interval", type=A.positive_int, default=d.update_reg_interval,
                     help="TPP: iterations between increases of the penalty factor")
    run.add_argument("--stabilize-iters", "--stabilize-reg-interval", dest="stabilize_iters", type=A.positive_int,
                     default=d.stabilize_iters,
                     help="TPP: iterations at the final penalty before the filters are removed")
    run.add_argument("--zero-out-interval", type=A.positive_int, default=d.zero_out_interval,
                     help="TPP: iterations between zeroings of the penalised weights")
    run.add_argument("--pre-iters", type=A.positive_int, default=d.pre_iters, help="iterations of X in 'X+L1'")
    run.add_argument("--pre-scheme", choices=("penalty", "opp"), default=d.pre_scheme,
                     help="'X+L1': X alone for --pre-iters (default), or inside the reference's opp loop "
                          "(L2 ramp and zero-out on the L1-chosen filters, TPP's schedule)")
    run.add_argument("--jsv-samples", "--samples", dest="jsv_samples", type=A.Int(1, 100_000), default=d.jsv_samples,
                     help="training images the mean JSV is measured on")
    run.add_argument("--jsv-bn", "--bn", dest="jsv_bn", choices=("eval", "batch"), default=d.jsv_bn,
                     help="BatchNorm statistics of the JSV measurement: running (eval) or of the batch")
    run.add_argument("--train-limit", "--limit", dest="train_limit", type=A.positive_int, default=None,
                     help="first N training examples only (imagenet: N images drawn at random, seed 0); "
                          "at least --batch-size")
    run.add_argument("--width-scale", type=_WIDTH_SCALE, default=1.0,
                     help="multiply the widths of a base trained here (small machines)")
    run.add_argument("--bf16", action="store_true", help="compute in bfloat16 (float32 parameters)")
    run.add_argument("--out", type=A.output_dir, default=None, help="run directory (required without --dry-run)")
    p.set_defaults(func=run_prune_args)


_DATASETS = A.Choice((*A.DATASETS, "imagenet"), A.DATASET_ALIASES, what="dataset")
_WIDTH_SCALE = A.Float(1 / 64, 64.0, what="a width factor")


def run_prune_args(args) -> int:
    """The ``func`` of the parsed ``prune`` arguments: run, print, return 0."""
    if args.list_layers:
        # imported on use: the parsers load no JAX, so `isotpp --help` stays fast
        from isotpp.cli.app import _list_layers

        return _list_layers(args.model, args.num_classes, args.base, {})
    if args.ratios is None:
        raise UserError("--ratios is required (e.g. --ratios '*layer*.conv1:0.5'); --list-layers shows the names")
    if not args.dry_run:
        return _full_run(args)
    result = run_prune(model=args.model, ratios=args.ratios, skip=_parse_skip(args.skip),
                       num_classes=args.num_classes, dry_run=args.dry_run, json_path=args.json)
    print(result["table"])
    if result.get("json"):
        print(f"json: {result['json']}")
    return 0


def config_from_args(args):
    """The :class:`~isotpp.studies.pruning_run.PruneConfig` of parsed ``prune`` arguments (a full run)."""
    # imported on use: the parsers load no JAX, so `isotpp --help` stays fast
    from isotpp.studies.pruning_run import PruneConfig

    if not args.out:
        raise UserError("a full run needs --out DIR (or add --dry-run for the cost only)")
    keys = ("method", "dataset", "data_dir", "base", "base_epochs", "base_lr_schedule", "epochs", "lr_schedule",
            "batch_size", "weight_decay", "seed", "init", "tpp_lr", "lw_opp", "reg_granularity", "update_reg_interval",
            "stabilize_iters", "zero_out_interval", "pre_iters", "jsv_samples", "jsv_bn", "train_limit",
            "width_scale", "bf16", "out", "workers", "image_size", "resize", "penalty_weight", "kernorth_rule",
            "pre_scheme")
    return PruneConfig(model=args.model, ratios=args.ratios, skip=_parse_skip(args.skip),
                       **{k: getattr(args, k) for k in keys})


def preflight(args) -> None:
    """What a full run can check before it writes or trains anything: the patterns against the
    architecture, the width scale, the batch against the training examples."""
    # imported on use: the parsers load no JAX, so `isotpp --help` stays fast
    from isotpp.cli.train import check_width_scale
    from isotpp.data import DATASET_INFO
    from isotpp.memory import require_for_training
    from isotpp.models import model_spec, widths_of
    from isotpp.pruning.cost import widths_after

    model = _abstract_model(args.model, args.num_classes or model_spec(args.model).num_classes)
    widths_after(model, args.ratios, _parse_skip(args.skip))  # a pattern matching nothing -> UserError
    require_for_training(model, args.model, "lower --num-classes")
    widths = widths_of(model)
    if args.base is None and args.width_scale != 1.0:
        check_width_scale(widths, args.width_scale, keep=list(widths)[-1])
    check_batch(args.batch_size, args.train_limit, DATASET_INFO.get(str(args.dataset)))


def check_batch(batch_size: int, limit: int | None, info) -> None:
    """Refuse a batch larger than the training examples (``limit``, or the dataset's size when known)."""
    available = min(x for x in (limit, info.train_size if info is not None else None) if x is not None) \
        if (limit is not None or info is not None) else None
    if available is not None and batch_size > available:
        what = f"--train-limit {limit}" if limit == available else f"the {available} training examples"
        raise UserError(f"--batch-size {batch_size} is larger than {what}: lower the batch size to at most "
                        f"{available} or use more training examples")


def _full_run(args) -> int:
    # imported on use: the parsers load no JAX, so `isotpp --help` stays fast
    from isotpp.reporting.tables import fmt_number, markdown_table
    from isotpp.studies.pruning_run import run_pruning

    config = config_from_args(args)
    preflight(args)
    s = run_pruning(config, log=print)
    rows = [["base accuracy (%)", fmt_number(s["base_acc"], 2)],
            ["mean JSV right after pruning", fmt_number(s["jsv_after_prune"])],
            ["best / final accuracy (%)", f"{fmt_number(s['best_acc'], 2)} / {fmt_number(s['final_acc'], 2)}"],
            ["sparsity", f"{100 * s['sparsity']:.2f} %"], ["speedup", f"{s['speedup']:.2f} ×"],
            ["wall time", f"{s['wall_s'] / 60:.1f} min"]]
    print(f"{s['model']} on {s['dataset']} · {s['method']} · {s['ratios']}")
    print(markdown_table(["result", "value"], rows))
    print(f"summary: {args.out}/summary.json")
    return 0


@functools.lru_cache(maxsize=8)
def _abstract_model(name: str, num_classes: int):
    """The unpruned architecture, shapes only; only read here, so repeated dry runs share it."""
    # imported on use: the parsers load no JAX, so `isotpp --help` stays fast
    from isotpp.models import BuildConfig

    return BuildConfig(name, num_classes, None).create(abstract=True)


def _millions(n: int) -> str:
    return f"{n:,} ({n / 1e6:.3f} M)"


def _giga(n: int) -> str:
    return f"{n:,} ({n / 1e9:.4f} G)"


def run_prune(
    *,
    model: str,
    ratios: str | dict[str, float],
    skip: tuple[str, ...] | list[str] = (),
    num_classes: int | None = None,
    dry_run: bool = True,
    json_path: str | None = None,
) -> dict[str, Any]:
    """Cost of pruning ``model`` by ``ratios``; returns the JSON record plus ``table``
    (printable) and ``json`` (the path written, if any)."""
    if not dry_run:
        raise UserError("run_prune reports costs only: use isotpp.studies.pruning_run.run_pruning for a full run")
    # imported on use: the parsers load no JAX, so `isotpp --help` stays fast
    from isotpp.models import model_spec
    from isotpp.pruning.cost import ratios_cost
    from isotpp.pruning.groups import parse_ratios
    from isotpp.reporting.tables import markdown_table

    spec = model_spec(model)  # unknown model -> UserError
    patterns = parse_ratios(ratios)  # bad syntax or ratio outside [0, 1) -> UserError
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                    or num_classes < 1):
        raise UserError(f"--num-classes must be a positive integer, got {num_classes!r}")
    num_classes = num_classes or spec.num_classes
    pc = ratios_cost(_abstract_model(model, num_classes), patterns, tuple(skip))

    record = pc.as_dict()
    rows = [
        ["parameters", _millions(pc.params)],
        ["parameters after", _millions(pc.params_pruned)],
        ["sparsity", f"{pc.sparsity * 100:.2f} %"],
        ["FLOPs (multiply-adds)", _giga(pc.flops)],
        ["FLOPs after", _giga(pc.flops_pruned)],
        ["speedup", f"{pc.speedup:.2f} ×"],
    ]
    pub, footnotes = pc.as_published(), []
    if pub["sparsity"] is not None and pub["speedup"] is not None:
        d = pub["decimals"]
        rows += [["sparsity, paper's rounding ¹", f"{pub['sparsity'] * 100:.2f} %"],
                 ["speedup, paper's rounding ¹", f"{pub['speedup']:.2f} ×"]]
        footnotes.append(f"¹ as the TPP paper's tables compute them, from counts rounded to {d} decimals: "
                         f"{pub['params_pruned_m']:.{d}f} of {pub['params_m']:.{d}f} M parameters, "
                         f"{pub['flops_pruned_g']:.{d}f} of {pub['flops_g']:.{d}f} GFLOPs (adds counted)")
    shape = "×".join(str(d) for d in spec.input_shape)
    header = (f"{model} ({num_classes} classes, input {shape}) · ratios "
              f"{','.join(f'{p}:{r:g}' for p, r in patterns.items())}"
              + (f" · skip {','.join(skip)}" if skip else "") + " · dry run")
    layer_rows = [[name, str(b), str(a), f"{(1 - a / b) * 100:.1f} %"] for name, (b, a) in pc.layers.items()]
    table = "\n".join([
        header,
        markdown_table(["cost", "value"], rows),
        "",
        f"{len(layer_rows)} layer(s) change width:",
        markdown_table(["layer", "width", "after", "pruned"], layer_rows),
        "",
        ("parameters: conv/dense weights and biases + BatchNorm scale and bias; FLOPs: conv/dense "
         "multiply-adds per sample (the TPP reference logs twice this, counting adds separately)"),
    ] + footnotes)
    out: dict[str, Any] = dict(record)
    out["as_published"] = pub  # returned and printed; the JSON file keeps the contract's keys
    out["table"] = table
    if json_path:
        # imported on use: the parsers load no JAX, so `isotpp --help` stays fast
        from isotpp.storage.atomic import write_json

        out["json"] = str(write_json(json_path, record))
    return out
