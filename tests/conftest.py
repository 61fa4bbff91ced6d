"""Shared pytest fixtures."""

import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

# One persistent XLA compilation cache per test session, shared by the xdist
# workers and by the subprocesses the CLI tests start (they inherit the
# environment): most tests build the same tiny models, so most compilations
# are repeats (measured on tests/test_study_convnet.py: 35 % less CPU, cold cache).
# Set here, before any test imports JAX; a cache directory the user set wins.
# (The controller imports this file first; its workers inherit the directory.)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      str(Path(tempfile.gettempdir()) / f"isotpp-test-jax-cache-{os.getpid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

# Under xdist every core already runs a worker: numpy's BLAS gets one thread per
# worker (two BLAS threads per worker on 2 cores made QR-heavy tests 15-35x slower).
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)

import isotpp
from isotpp.progress import configure_logging

isotpp.configure_cpu()  # the XLA settings the `isotpp` command uses, before any test starts JAX

FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
_FASHION_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                  "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")  # fmt: skip


@pytest.fixture(scope="session")
def fashion_mnist_dir() -> Path:
    """The real Fashion-MNIST files (Debian package dataset-fashion-mnist); skips when absent."""
    missing = [f for f in _FASHION_FILES if not (FASHION_MNIST_SYSTEM_DIR / f).is_file()]
    if missing and os.environ.get("ISOTPP_REQUIRE_REAL_DATA"):
        pytest.fail(f"ISOTPP_REQUIRE_REAL_DATA is set but {FASHION_MNIST_SYSTEM_DIR}/{missing[0]} is missing")
    if missing:
        pytest.skip(f"real Fashion-MNIST not installed ({FASHION_MNIST_SYSTEM_DIR}/{missing[0]} missing; "
                    "apt-get install dataset-fashion-mnist)")  # fmt: skip
    return FASHION_MNIST_SYSTEM_DIR


def make_image_tree(root: Path, *, classes: Sequence[str] = ("cat", "dog", "eel"),
                    splits: Sequence[tuple[str, int]] = (("train", 6), ("val", 2)),
                    sides: tuple[int, int] = (30, 60), extensions: Sequence[str] = (".JPEG", ".jpg", ".png"),
                    junk: bool = False, seed: int = 0) -> Path:
    """A small ImageFolder tree ``root/<split>/<class>/img<i><ext>`` of random RGB images.

    ``splits``: (name, images per class); each side drawn from ``range(*sides)``;
    the i-th image of a class gets ``extensions[i % len]``. ``junk`` adds what a
    loader must skip: a ``notes.txt`` in every class directory and a hidden
    ``train/.cache`` directory.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in splits:
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                h, w = int(rng.integers(*sides)), int(rng.integers(*sides))
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(d / f"img{i}{extensions[i % len(extensions)]}")
            if junk:
                (d / "notes.txt").write_text("not an image")
    if junk:
        (root / "train" / ".cache").mkdir()
    return root


@pytest.fixture(scope="session")
def image_tree():
    """:func:`make_image_tree`, for tests that need an ImageFolder tree of JPEGs."""
    return make_image_tree


@pytest.fixture(autouse=True)
def _isotpp_logging(caplog):
    """The ``isotpp`` logger as the command line sets it up (one ``isotpp: ...`` line on stderr per record,
    which capsys sees; no propagation, so a root handler that absl may add prints nothing twice), with
    caplog's handler attached to it so that caplog sees the records too."""
    configure_logging()
    logger = logging.getLogger("isotpp")
    logger.propagate = False
    logger.addHandler(caplog.handler)
    yield
    logger.removeHandler(caplog.handler)


def pytest_sessionfinish(session):
    """The controller (not an xdist worker) removes the session's compilation cache."""
    if not hasattr(session.config, "workerinput") and "isotpp-test-jax-cache-" in os.environ["JAX_COMPILATION_CACHE_DIR"]:
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


# The longest test files (CPU-seconds on 2 cores, from `pytest --durations`), started first: with
# `--dist loadfile` (the README's command) each file runs on one worker, its module fixtures once, and
# the long ones cannot be left for the end, when the other worker would idle.
LONG_FILES = ("test_surgery_property.py", "test_faults.py", "test_prune_imagenet.py", "test_study_convnet.py",
              "test_prune_run.py", "test_parallel_devices.py", "test_checkpoint_train.py", "test_models.py",
              "test_cli_spectrum.py", "test_pai_study.py", "test_parallel_multiprocess.py", "test_study_mlp.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order
