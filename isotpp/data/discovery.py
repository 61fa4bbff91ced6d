"""Where dataset files are looked for, and where isotpp caches things.

Search order of :func:`find_dataset_dir` (the first directory holding any of the
dataset's files wins):

1. the explicit ``data_dir`` (if given, *only* there: a wrong explicit path is
   an error, never silently replaced by another copy);
2. each directory in ``$ISOTPP_DATA`` (``os.pathsep``-separated);
3. the cache directory (``$ISOTPP_CACHE``, else ``$XDG_CACHE_HOME/isotpp``,
   else ``~/.cache/isotpp``), where downloads go;
4. system locations: ``/usr/share/datasets/<alias>`` and
   ``/usr/local/share/datasets/<alias>`` (e.g. Debian's
   ``dataset-fashion-mnist`` installs ``/usr/share/datasets/fashion-mnist``).

Within a root R, the accepted layouts are, in order: flat (files directly in R;
explicit path and ``$ISOTPP_DATA`` only), torchvision's (``R/MNIST/raw``,
``R/FashionMNIST/raw``, ``R/cifar-10-batches-py``, ``R/cifar-100-python``), and
both of those under ``R/<alias>`` (``R/mnist``, ``R/fashion_mnist``,
``R/fashion-mnist``, ``R/cifar10`` ...). MNIST and Fashion-MNIST use the same
file names, so a flat ``$ISOTPP_DATA`` holds one of them: keep them in
``$ISOTPP_DATA/<name>`` when you have both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from isotpp.errors import DataError

__all__ = ["SYSTEM_DATA_DIRS", "cache_dir", "dataset_files", "find_dataset_dir", "holds_dataset"]

SYSTEM_DATA_DIRS = (Path("/usr/share/datasets"), Path("/usr/local/share/datasets"))

_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@dataclass(frozen=True)
class _Layout:
    aliases: tuple[str, ...]  # directory names the dataset may live under
    torchvision_subdir: str  # where torchvision puts the files under its root
    files: tuple[str, ...]  # the dataset's files (IDX ones may also end in .gz)
    gzip_ok: bool


_LAYOUTS = {
    "mnist": _Layout(("mnist", "MNIST"), "MNIST/raw", _IDX_FILES, True),
    "fashion_mnist": _Layout(
        ("fashion_mnist", "fashion-mnist", "FashionMNIST", "fmnist"), "FashionMNIST/raw", _IDX_FILES, True
    ),
    "cifar10": _Layout(
        ("cifar10", "cifar-10", "CIFAR10"),
        "cifar-10-batches-py",
        (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"),
        False,
    ),
    "cifar100": _Layout(("cifar100", "cifar-100", "CIFAR100"), "cifar-100-python", ("train", "test", "meta"), False),
}


def cache_dir() -> Path:
    """isotpp's cache: ``$ISOTPP_CACHE``, else ``$XDG_CACHE_HOME/isotpp``, else ``~/.cache/isotpp``."""
    explicit = os.environ.get("ISOTPP_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "isotpp"


def dataset_files(name: str) -> tuple[str, ...]:
    """File names that make up dataset ``name`` (IDX files may also be gzipped)."""
    return _LAYOUTS[name].files


def holds_dataset(directory: Path, name: str) -> bool:
    """Whether ``directory`` directly contains any of the dataset's files.

    Any one file is enough: a partial copy is then reported by the loader, file
    by file, rather than skipped in favour of another copy.
    """
    layout = _LAYOUTS[name]
    for f in layout.files:
        if (directory / f).is_file() or (layout.gzip_ok and (directory / f"{f}.gz").is_file()):
            return True
    return False


def _candidates(root: Path, name: str, *, flat: bool) -> list[Path]:
    layout = _LAYOUTS[name]
    dirs = [root] if flat else []
    dirs.append(root / layout.torchvision_subdir)
    for alias in layout.aliases:
        dirs += [root / alias, root / alias / layout.torchvision_subdir]
    return dirs


def _data_env_roots() -> list[Path]:
    value = os.environ.get("ISOTPP_DATA", "")
    return [Path(p).expanduser() for p in value.split(os.pathsep) if p]


def find_dataset_dir(name: str, data_dir: str | Path | None = None) -> Path:
    """The directory holding dataset ``name``'s files (see the module doc for the order).

    Raises:
      DataError: nothing found; the message lists where it looked and how to
        provide the data.
    """
    if name not in _LAYOUTS:
        raise DataError(f"no files to look for for dataset {name!r}: it is not file-based")
    layout = _LAYOUTS[name]
    example = layout.files[0] + (".gz" if layout.gzip_ok else "")
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        for d in _candidates(root, name, flat=True):
            if holds_dataset(d, name):
                return d
        raise DataError(
            f"{root} does not hold {name} (no {example} in it, in {root / layout.torchvision_subdir} "
            f"or in {root / layout.aliases[0]}): pass the directory holding the files, "
            "or use download=True (--download) when online"
        )
    searched: list[str] = []
    groups = [(r, True, "$ISOTPP_DATA") for r in _data_env_roots()]
    groups.append((cache_dir(), False, "cache"))
    groups += [(r, False, "system") for r in SYSTEM_DATA_DIRS]
    for root, flat, label in groups:
        for d in _candidates(root, name, flat=flat):
            if holds_dataset(d, name):
                return d
        searched.append(f"{root} ({label})")
    raise DataError(
        f"{name} not found (looked for {example} in {', '.join(searched)}, each also under "
        f"{layout.aliases[0]}/ and {layout.torchvision_subdir}/): pass data_dir (--data-dir), "
        f"set ISOTPP_DATA to the directory holding the files, or use download=True (--download) when online"
    )
