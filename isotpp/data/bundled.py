"""A small real Fashion-MNIST subset shipped inside the package, and the demo's data fallback.

``isotpp demo`` must work on a fresh machine: :func:`demo_data_dir` looks for
Fashion-MNIST where :func:`isotpp.data.find_dataset_dir` does, downloads it
(checksum-verified, into the cache) when it is missing, and when that fails
(offline) falls back to :data:`SUBSET_DIR`: the first 10,000 training and
2,000 test images of Fashion-MNIST (MIT licence, Zalando SE; the notice is
``SUBSET_DIR / "LICENSE"``), 5 MB of gzipped IDX files that
:func:`isotpp.data.load_dataset` reads like the full set::

    >>> from isotpp.data import load_dataset
    >>> from isotpp.data.bundled import SUBSET_DIR
    >>> test = load_dataset("fashion_mnist", "test", data_dir=SUBSET_DIR)
    >>> len(test), test.images.shape[1:]
    (2000, (32, 32, 1))
"""

from __future__ import annotations

import logging
from pathlib import Path

from isotpp.data.discovery import find_dataset_dir
from isotpp.data.download import download_dataset
from isotpp.errors import DataError

__all__ = ["SUBSET_DIR", "SUBSET_SIZES", "demo_data_dir"]

log = logging.getLogger(__name__)

SUBSET_DIR = Path(__file__).resolve().with_name("fashion_mnist_subset")
SUBSET_SIZES = {"train": 10_000, "test": 2_000}

FULL_SET_HINT = ("for the full set: `apt-get install dataset-fashion-mnist`, set ISOTPP_DATA to a directory "
                 "holding it, or rerun when online (it is then downloaded into the cache)")


def demo_data_dir(data_dir: str | Path | None = None, *, download: bool = True) -> tuple[Path, str]:
    """Where Fashion-MNIST comes from for the demo: ``(directory, source)``.

    ``source`` is ``"found"`` (``data_dir``, ``$ISOTPP_DATA``, the cache or a
    system package), ``"downloaded"`` (just fetched into the cache, every file's
    MD5 checked) or ``"subset"`` (not found, the download failed or
    ``download=False``: the shipped subset, announced by one warning on the
    ``isotpp`` logger that says how to get the full set). An explicit
    ``data_dir`` that does not hold the data is an error, never replaced.

    Raises:
      DataError: ``data_dir`` was given and does not hold Fashion-MNIST.
    """
    if data_dir is not None:
        return find_dataset_dir("fashion_mnist", data_dir), "found"
    try:
        return find_dataset_dir("fashion_mnist"), "found"
    except DataError:
        pass
    if download:
        try:
            directory = download_dataset("fashion_mnist")
        except DataError as exc:
            log.debug("Fashion-MNIST download failed: %s", exc)  # the warning below says it in one line
        else:
            log.info("Fashion-MNIST downloaded (checksums verified) into %s", directory)
            return directory, "downloaded"
    log.warning("Fashion-MNIST not found%s: running on the %s training / %s test images shipped with isotpp; %s",
                " and could not be downloaded" if download else "", f"{SUBSET_SIZES['train']:,}",
                f"{SUBSET_SIZES['test']:,}", FULL_SET_HINT)
    return SUBSET_DIR, "subset"
