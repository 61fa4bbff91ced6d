"""Shared pytest fixtures."""

import os
from pathlib import Path

import pytest

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
