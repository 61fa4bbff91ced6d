"""argparse pieces shared by every command-line entry point.

Every option of every ``isotpp`` command declares its *domain* here, as its
argparse ``type``: the integer or float range (finite numbers only), the
non-empty string, the comma-separated list without empty or repeated items,
the input file that exists, the output file or directory that can be written.
argparse applies these while parsing, so a value outside its domain is one
line and exit 2 before anything is computed or written (a test walks every
option of every command and checks it has a domain and a help text).

This module imports neither JAX nor NumPy: ``isotpp --help`` stays fast.
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from isotpp.pruning.methods import method_aliases, method_names

INT32_MAX = 2**31 - 1


class HelpFormatter(argparse.HelpFormatter):
    """Paragraphs wrapped, indented blocks (the examples epilogs) kept as written; every option's default shown.

    Like :class:`argparse.ArgumentDefaultsHelpFormatter`, but a default of
    ``None`` or ``False`` (an unset option, a flag) is left out rather than
    printed as "None"; such options say in their help what happens when unset.
    """

    def _fill_text(self, text, width, indent):
        paragraphs = []
        for para in text.split("\n\n"):
            lines = para.splitlines()
            if any(line.startswith(" ") for line in lines):
                paragraphs.append("\n".join(indent + line for line in lines))
            else:
                paragraphs.append(super()._fill_text(para, width, indent))
        return "\n\n".join(paragraphs)

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or default is None or default is False or default is argparse.SUPPRESS
                or not (action.option_strings or action.nargs in ("?", "*"))):
            return text
        return text + " (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2) instead of usage + error, and :class:`HelpFormatter`."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


# --------------------------------------------------------------------------
# Numbers.
# --------------------------------------------------------------------------


class Domain:
    """An argparse ``type`` that checks a value's domain; ``describe`` is the domain in words."""

    describe = "a value"

    def __repr__(self) -> str:  # argparse names the type in some messages
        return self.describe


def _fmt(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


class Int(Domain):
    """An integer in [lo, hi]."""

    def __init__(self, lo: int, hi: int = INT32_MAX, what: str = "an integer"):
        self.lo, self.hi = lo, hi
        self.describe = f"{what} in [{_fmt(lo)}, {_fmt(hi)}]"

    def __call__(self, text: str) -> int:
        try:
            value = int(str(text).strip().replace("_", ""), 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {self.describe}, got {text!r}") from None
        if not self.lo <= value <= self.hi:
            raise argparse.ArgumentTypeError(f"{value} is outside [{self.lo}, {self.hi}]: expected {self.describe}")
        return value


class Float(Domain):
    """A finite float in a range; ``lo_open`` / ``hi_open`` exclude the bound."""

    def __init__(self, lo: float = -math.inf, hi: float = math.inf, *, lo_open: bool = False,
                 hi_open: bool = False, what: str = "a finite number"):
        self.lo, self.hi, self.lo_open, self.hi_open = lo, hi, lo_open, hi_open
        left = "(" if lo_open or lo == -math.inf else "["
        right = ")" if hi_open or hi == math.inf else "]"
        self.range = f"{left}{_fmt(lo)}, {_fmt(hi)}{right}"
        self.describe = f"{what} in {self.range}"

    def __call__(self, text: str) -> float:
        try:
            value = float(str(text).strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {self.describe}, got {text!r}") from None
        low_ok = value > self.lo if self.lo_open else value >= self.lo
        high_ok = value < self.hi if self.hi_open else value <= self.hi
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text.strip()} is not a finite number: expected {self.describe}")
        if not (low_ok and high_ok):
            raise argparse.ArgumentTypeError(f"{text.strip()} is outside {self.range}: expected {self.describe}")
        return value


class ByteSize(Domain):
    """A size in bytes: a positive number with an optional unit (B; KiB, MiB, GiB, TiB or K, M, G, T: powers of
    1024; KB, MB, GB, TB: powers of 1000), e.g. ``2GiB``, ``512M``, ``1.5e9``; returns whole bytes."""

    _UNITS = {"": 1, "b": 1, "k": 2**10, "kib": 2**10, "m": 2**20, "mib": 2**20, "g": 2**30, "gib": 2**30,
              "t": 2**40, "tib": 2**40, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}

    def __init__(self, lo: int = 1, hi: int = 2**60, what: str = "a size"):
        self.lo, self.hi = lo, hi
        self.describe = f"{what} in bytes, e.g. 2GiB, 512MiB, 1.5GB"

    def __call__(self, text: str) -> int:
        m = re.fullmatch(r"\s*([0-9][0-9_.eE+]*)\s*([A-Za-z]*)\s*", str(text))
        unit = m and self._UNITS.get(m.group(2).lower())
        try:
            number = float(m.group(1).replace("_", "")) if m and unit else math.nan
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise argparse.ArgumentTypeError(f"expected {self.describe}, got {text!r}")
        value = int(number * unit)
        if not self.lo <= value <= self.hi:
            raise argparse.ArgumentTypeError(f"{str(text).strip()} is {value} bytes, outside [{self.lo}, {self.hi}]: "
                                             f"expected {self.describe}")
        return value


positive_int = Int(1, what="a positive integer")
count = Int(1, 1_000_000_000, what="a count")
seed = Int(0, INT32_MAX, what="a seed")
positive_float = Float(0.0, lo_open=True, what="a positive finite number")
nonnegative_float = Float(0.0, what="a non-negative finite number")
fraction = Float(0.0, 1.0, hi_open=True, what="a fraction")  # pruning ratios, momentum
open_fraction = Float(0.0, 1.0, lo_open=True, hi_open=True, what="a fraction")
byte_size = ByteSize()


# --------------------------------------------------------------------------
# Strings and lists.
# --------------------------------------------------------------------------


class Text(Domain):
    """A non-empty string (surrounding blanks stripped), without control characters."""

    describe = "a non-empty text"

    def __call__(self, text: str) -> str:
        value = str(text).strip()
        if not value:
            raise argparse.ArgumentTypeError("expected a non-empty value, got ''")
        if any(ord(c) < 32 for c in value):
            raise argparse.ArgumentTypeError(f"control characters are not allowed, got {value!r}")
        return value


text = Text()


class CommaList(Domain):
    """Comma-separated, non-empty items, none repeated; with ``choices``, each among them
    (case-insensitively, returned as spelled in ``choices``). Returns a tuple."""

    def __init__(self, choices: Iterable[str] | None = None, what: str = "item"):
        self.choices = tuple(choices) if choices is not None else None
        self.what = what
        self.describe = f"comma-separated {what}s"

    def __call__(self, value: str) -> tuple[str, ...]:
        items = [item.strip() for item in str(value).split(",")]
        if not any(items):
            raise argparse.ArgumentTypeError(f"expected {self.describe}, got {value!r}: name at least one")
        if not all(items):
            raise argparse.ArgumentTypeError(f"empty {self.what} in {value!r}: remove the extra comma")
        if self.choices is not None:
            canon = {c.lower(): c for c in self.choices}
            unknown = [i for i in items if i.lower() not in canon]
            if unknown:
                raise argparse.ArgumentTypeError(
                    f"unknown {self.what} {unknown[0]!r}: choose among {', '.join(self.choices)}")
            items = [canon[i.lower()] for i in items]
        seen = {i.lower() for i in items}
        if len(seen) != len(items):
            dup = next(i for k, i in enumerate(items) if i.lower() in {j.lower() for j in items[:k]})
            raise argparse.ArgumentTypeError(f"{self.what} {dup!r} is given twice in {value!r}")
        return tuple(items)


class Checked(Domain):
    """A non-empty string checked by a library parser (imported only when used, so ``--help``
    stays free of JAX): ``check(text)`` raises :class:`isotpp.errors.UserError` on a bad value.
    Returns the string as given (stripped)."""

    def __init__(self, check: Callable[[str], object], describe: str):
        self.check, self.describe = check, describe

    def __call__(self, value: str) -> str:
        # imported on use: the parsers load no JAX, so `isotpp --help` stays fast
        from isotpp.errors import UserError

        value = text(value)
        try:
            self.check(value)
        except UserError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return value


def _lr_schedule(value: str) -> None:
    # imported on use: the parsers load no JAX, so `isotpp --help` stays fast
    from isotpp.training.engine import LRSchedule

    LRSchedule.parse(value)


def _ratios(value: str) -> None:
    # imported on use: the parsers load no JAX, so `isotpp --help` stays fast
    from isotpp.pruning.groups import parse_ratios

    parse_ratios(value)


def _densities(value: str) -> None:
    # imported on use: the parsers load no JAX, so `isotpp --help` stays fast
    from isotpp.pai.masks import parse_densities

    parse_densities(value)


lr_schedule = Checked(_lr_schedule, "an LR schedule 'epoch:lr,...'")
ratios = Checked(_ratios, "'GLOB:RATIO,...' pruning ratios")
densities = Checked(_densities, "kept fractions")

_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")


def label(value: str) -> str:
    """A name that becomes part of a file name: letters, digits, '.', '_', '+', '-'; 1-64 characters."""
    value = str(value).strip()
    if not _LABEL.fullmatch(value):
        raise argparse.ArgumentTypeError(
            f"label {value!r} must be 1-64 letters, digits, '.', '_', '+' or '-', starting with a letter or "
            "digit (it names files)")
    return value


class LabelledSchedule(Domain):
    """``LABEL=SCHEDULE``: a safe label and a valid LR schedule; returns (label, schedule)."""

    describe = "LABEL=SCHEDULE"

    def __call__(self, value: str) -> tuple[str, str]:
        name, sep, schedule = str(value).partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected LABEL=SCHEDULE, e.g. '0.001=0:0.001,45:0.0001', "
                                             f"got {value!r}")
        return label(name), lr_schedule(schedule)


class AppendUnique(argparse.Action):
    """``action="append"`` that refuses a repeated key (the first element of a tuple value)."""

    def __call__(self, parser, namespace, values, option_string=None):
        items = list(getattr(namespace, self.dest, None) or [])
        key = values[0] if isinstance(values, tuple) else values
        if any((i[0] if isinstance(i, tuple) else i) == key for i in items):
            parser.error(f"argument {option_string}: {key!r} is given twice")
        items.append(values)
        setattr(namespace, self.dest, items)


# --------------------------------------------------------------------------
# Paths.
# --------------------------------------------------------------------------


def _path_text(value: str, what: str) -> Path:
    value = str(value)
    if not value.strip():
        raise argparse.ArgumentTypeError(f"expected {what}, got ''")
    if "\0" in value:
        raise argparse.ArgumentTypeError(f"{what} contains a NUL character")
    return Path(value).expanduser()


def _writable_place(path: Path, what: str) -> None:
    """``path`` can be created or replaced: the nearest existing ancestor is a writable directory."""
    parent = path.parent
    while not parent.exists():
        if parent.is_symlink():
            raise argparse.ArgumentTypeError(f"{what} {path}: {parent} is a broken link")
        parent = parent.parent
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"{what} {path}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{what} {path}: directory {parent} is not writable; choose another place")


def output_file(value: str) -> str:
    """A file to write: not a directory, in a place that can be written (missing directories are created)."""
    path = _path_text(value, "an output file")
    if str(value).endswith(("/", os.sep)) or path.is_dir():
        raise argparse.ArgumentTypeError(f"{value} is a directory: name a file, e.g. {path / 'out.json'}")
    _writable_place(path, "output file")
    return str(value)


def output_dir(value: str) -> str:
    """A run directory: an existing writable directory, or one that can be created."""
    path = _path_text(value, "an output directory")
    if path.exists():
        if not path.is_dir():
            raise argparse.ArgumentTypeError(f"{path} exists and is not a directory: choose another --out")
        if not os.access(path, os.W_OK | os.X_OK):
            raise argparse.ArgumentTypeError(f"directory {path} is not writable: choose another --out")
        return str(value)
    _writable_place(path, "output directory")
    return str(value)


def input_file(value: str) -> str:
    """An existing, readable regular file."""
    path = _path_text(value, "an input file")
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{path} does not exist: check the path")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{path} is not a file")
    if not os.access(path, os.R_OK):
        raise argparse.ArgumentTypeError(f"{path} is not readable: check its permissions")
    return str(value)


def data_dir(value: str) -> str:
    """A data directory: a non-empty path; whether it exists is checked with the dataset's name by
    :func:`check_after_parsing`."""
    return str(_path_text(value, "a data directory"))


def later_input_file(value: str) -> str:
    """An input file that an earlier job may still be writing (a grid's base model): a non-empty path,
    whose existence :func:`check_after_parsing` checks when the command runs."""
    return str(_path_text(value, "an input file"))


def check_after_parsing(prog: str, args: argparse.Namespace) -> None:
    """Checks made once the whole command line is parsed, reported like argparse's (one line, exit 2):
    ``--data-dir`` exists (the message names the dataset it should hold), a base model exists."""
    # imported on use: the parsers load no JAX, so `isotpp --help` stays fast
    import sys

    base = getattr(args, "base", None)  # prune: the base model may be written by an earlier job of a grid
    if base is not None:
        try:
            input_file(base)
        except argparse.ArgumentTypeError as e:
            sys.stderr.write(f"{prog}: error: argument --checkpoint/--base: {e} (see '{prog} --help')\n")
            raise SystemExit(2) from None
    directory = getattr(args, "data_dir", None)
    if directory is None:
        return
    path = Path(directory).expanduser()
    name = getattr(args, "dataset", None) or getattr(args, "data", None) or "dataset"
    if not path.is_dir() or not os.access(path, os.R_OK | os.X_OK):
        state = "is not a readable directory" if path.exists() else "does not exist"
        sys.stderr.write(f"{prog}: error: argument --data-dir: {path} {state}: pass the directory holding the "
                         f"{name} files (see '{prog} --help')\n")
        raise SystemExit(2)


def version_action(parser: argparse.ArgumentParser) -> None:
    """``--version``: the installed isotpp's version."""
    # imported on use: the parsers load no JAX, so `isotpp --help` stays fast
    from isotpp import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                        help="print the version and exit")


class Choice(Domain):
    """One of ``names`` (case-insensitive), or an alias of one; returns the canonical name."""

    def __init__(self, names: Iterable[str], aliases: dict[str, str] | None = None, what: str = "value"):
        self.names = tuple(names)
        self._lookup = {n.lower(): n for n in self.names} | {k.lower(): v for k, v in (aliases or {}).items()}
        self.what = what
        self.describe = "{" + ",".join(self.names) + "}"

    def __call__(self, value: str) -> str:
        key = str(value).strip().lower()
        if key not in self._lookup:
            close = difflib.get_close_matches(key, list(self._lookup), n=3, cutoff=0.6)
            hint = f"did you mean {' or '.join(dict.fromkeys(self._lookup[c] for c in close))}? " if close else ""
            raise argparse.ArgumentTypeError(f"unknown {self.what} {value!r}: {hint}choose one of {', '.join(self.names)}")
        return self._lookup[key]


# --------------------------------------------------------------------------
# Names the library defines, mirrored here so that building the parsers imports
# no JAX (tests/test_cli_conventions.py checks they equal the library's). The
# pruning methods are read from their registry (isotpp.pruning.methods, JAX-free).
# --------------------------------------------------------------------------

INIT_SCHEMES = ("default", "torch", "kaiming", "gaussian", "orthogonal", "delta-orthogonal")  # isotpp.models.init
DATASETS = ("fashion_mnist", "mnist", "cifar10", "cifar100", "synthetic")  # isotpp.data.DATASET_INFO
DATASET_ALIASES = {"fmnist": "fashion_mnist", "fashion-mnist": "fashion_mnist", "fashionmnist": "fashion_mnist",
                   "cifar-10": "cifar10", "cifar-100": "cifar100"}  # isotpp.data._ALIASES
SPECTRUM_METHODS = ("auto", "gram", "jacobian", "linear", "stochastic")  # isotpp.spectra.jacobian.METHODS
MODEL_NAMES = ("mlp", "mlp_7_linear", "mlp_7_relu", "lenet_300_100", "lenet5", "resnet8", "resnet20", "resnet32",
               "resnet44", "resnet56", "resnet110", "resnet8_B", "resnet20_B", "resnet32_B", "resnet44_B", "resnet56_B",
               "resnet110_B", "vgg11", "vgg13", "vgg16", "vgg19", "resnet18", "resnet34", "resnet50")  # isotpp.models.MODEL_NAMES
model_name = Choice(MODEL_NAMES, what="model")
init_scheme = Choice(INIT_SCHEMES, what="init scheme")
dataset = Choice(DATASETS, DATASET_ALIASES, what="dataset")


def prune_method() -> Choice:
    """One of the registered structured pruning methods (read when the parser is built)."""
    return Choice(method_names(), method_aliases(), what="method")


# --------------------------------------------------------------------------
# Running a command.
# --------------------------------------------------------------------------


def recorded(args: argparse.Namespace) -> dict:
    """The parsed options as a run records them (``config.json``): values only, no handlers or command name."""
    return {k: v for k, v in vars(args).items() if k not in ("func", "command") and not callable(v)}


def checked_only(prog: str, args: argparse.Namespace) -> bool:
    """With ``ISOTPP_CHECK_ARGS=1``, print the validated options and return True: the command is not run.

    A long command line for a cluster can so be checked (every option's domain,
    paths, schedules, patterns' syntax) in a second before it is submitted.
    """
    if os.environ.get("ISOTPP_CHECK_ARGS", "") in ("", "0"):
        return False
    shown = ", ".join(f"{k}={v!r}" for k, v in sorted(recorded(args).items()) if v not in (None, False))
    print(f"{prog}: the arguments are valid (ISOTPP_CHECK_ARGS is set: nothing was run): {shown}")
    return True


def guarded(prog: str, command: Callable[[], int]) -> int:
    """Run ``command`` and turn every way it can end into an exit status and at most one line.

    0: done; 2: bad input (UserError, a refused file operation, out of memory);
    75: stopped by SIGTERM after a checkpoint (rerun to continue); 130:
    interrupted; 70: an internal error, whose traceback goes to a file the line
    names (or to stderr with ``ISOTPP_TRACEBACK=1``).
    """
    # imported on use: the parsers load no JAX, so `isotpp --help` stays fast
    import sys

    from isotpp.errors import UserError

    try:
        return command()
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; finished results were kept", file=sys.stderr)
        return 130
    except MemoryError:
        print(f"{prog}: error: out of memory: lower the sizes (samples, widths, batch size)", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - nothing but one line reaches the user
        from isotpp.preemption import Preempted

        if isinstance(e, Preempted):  # SIGTERM: what was finished is kept
            if not e.reported:
                print(f"{prog}: {e}", file=sys.stderr, flush=True)
            return e.exit_code
        if "RESOURCE_EXHAUSTED" in str(e).split("\n", 1)[0]:  # XLA could not allocate
            print(f"{prog}: error: out of memory on the device: lower the sizes (samples, widths, batch size)",
                  file=sys.stderr)
            return 2
        if isinstance(e, OSError) and e.errno is not None:  # the system refused (disk full, permissions)
            where = f" ({e.filename})" if e.filename else ""
            print(f"{prog}: error: {e.strerror}{where}: free space or choose another place", file=sys.stderr)
            return 2
        return _internal_error(prog, e)


def _internal_error(prog: str, exc: BaseException) -> int:
    """A bug, not the user's input: one line naming a file with the traceback (exit 70)."""
    # imported on use: the parsers load no JAX, so `isotpp --help` stays fast
    import sys
    import tempfile
    import traceback

    if os.environ.get("ISOTPP_TRACEBACK"):
        raise exc
    try:
        fd, path = tempfile.mkstemp(prefix="isotpp-traceback-", suffix=".txt")
        with os.fdopen(fd, "w") as f:
            f.write("".join(traceback.format_exception(exc)))
        where = f"the traceback is in {path}"
    except OSError:
        where = "set ISOTPP_TRACEBACK=1 to see the traceback"
    first = str(exc).splitlines()[0] if str(exc) else ""
    print(f"{prog}: internal error: {type(exc).__name__}: {first} (a bug in isotpp; {where}; please report it)",
          file=sys.stderr)
    return 70
