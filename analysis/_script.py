"""What every analysis script shares: argument types and the run-write-print main.

A script declares its options, a ``compute(args) -> result`` and a
``write(result, out_dir) -> (text, {label: path})``; :func:`script_main` parses
(one-line errors, exit 2), creates the output directory, turns a UserError or
OSError into one line on stderr and exit 2, writes, and prints the text and paths.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from isotpp.cli.args import positive_float, positive_int

__all__ = ["choice_list", "depth_list", "positive_float", "positive_int", "public", "ratio_list", "script_main", "write_outputs"]


def depth_list(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"depths must be comma-separated integers, got {text!r}") from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"depths must be integers >= 1, got {text!r}")
    return out


def ratio_list(text: str) -> list[float]:
    try:
        out = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"ratios must be comma-separated numbers, got {text!r}") from None
    if not out or any(not 0 <= r < 1 for r in out):
        raise argparse.ArgumentTypeError(f"ratios must lie in [0, 1), got {text!r}")
    return out


def choice_list(choices: Sequence[str], what: str) -> Callable[[str], list[str]]:
    """An argparse type: a comma-separated subset of ``choices`` (order kept, repeats dropped)."""

    def parse(text: str) -> list[str]:
        out = [a.strip() for a in text.split(",") if a.strip()]
        if not out or any(a not in choices for a in out):
            raise argparse.ArgumentTypeError(f"{what} must be some of {','.join(choices)}, got {text!r}")
        return list(dict.fromkeys(out))

    return parse


def public(result: dict) -> dict:
    """``result`` without the rows' private (underscore) entries, for JSON."""
    return {**result, "rows": [{k: v for k, v in r.items() if not k.startswith("_")} for r in result["rows"]]}


def write_outputs(out: Path, name: str, text: str, record: dict, figure: Callable | None = None):
    """<out>/<name>.json (``record``), <name>.md (``text``) and, with ``figure(path)``, <name>.png."""
    from isotpp.storage.atomic import write_json, write_text

    paths = {"json": write_json(out / f"{name}.json", record)}
    write_text(out / f"{name}.md", text)
    if figure is not None:
        paths["figure"] = figure(out / f"{name}.png")
    return text, paths


def script_main(prog: str, doc: str, argv, options: Sequence[tuple], compute: Callable,
                write: Callable) -> int:
    """Parse ``options`` ((flag, type, default, help) each, plus --out), compute, write, print."""
    from isotpp.cli.args import Parser  # one-line errors, exit 2
    from isotpp.errors import UserError

    ap = Parser(prog=prog, description=doc.split("\n\n")[0])
    for flag, kind, default, help_text in options:
        ap.add_argument(flag, type=kind, default=default, help=help_text)
    ap.add_argument("--out", default=f"runs/{prog}")
    args = ap.parse_args(argv)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        result = compute(args)
    except (UserError, OSError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    text, paths = write(result, out)
    print(text)
    for label, path in paths.items():
        print(f"{label}: {path}")
    return 0
