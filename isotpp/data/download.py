"""Checksum-verified downloads of the public datasets into the cache.

Only ever called on request (``load_dataset(..., download=True)`` or the CLI's
``--download``); nothing else in isotpp touches the network. Each file is
streamed to a temporary file next to its destination while its MD5 is computed,
and renamed into place only when the MD5 matches the published one (the values
torchvision checks); a mismatching download is deleted. The CIFAR archives are
extracted with every member checked to be a plain file or directory that lands
inside the destination (no absolute paths, ``..``, links or devices), on top of
``tarfile``'s ``"data"`` filter.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import socket
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

from isotpp.data.discovery import cache_dir, find_dataset_dir
from isotpp.errors import DataError

__all__ = ["RESOURCES", "Resource", "download_dataset", "fetch_verified", "open_url", "safe_extract_tar"]

_TIMEOUT_S = 60
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Resource:
    """One published file: its name, MD5 and mirrors (tried in order)."""

    filename: str
    md5: str
    urls: tuple[str, ...]
    extract: bool = False


def _mirrored(names_md5: tuple[tuple[str, str], ...], bases: tuple[str, ...]) -> tuple[Resource, ...]:
    return tuple(Resource(f, md5, tuple(b + f for b in bases)) for f, md5 in names_md5)


RESOURCES: dict[str, tuple[Resource, ...]] = {
    "mnist": _mirrored(
        (
            ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
            ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
            ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
        ),
        ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
    ),
    "fashion_mnist": _mirrored(
        (
            ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
            ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
            ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
            ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
        ),
        (
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
    ),
    "cifar10": (
        Resource(
            "cifar-10-python.tar.gz",
            "c58f30108f718f92721af3b95e74349a",
            ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
            extract=True,
        ),
    ),
    "cifar100": (
        Resource(
            "cifar-100-python.tar.gz",
            "eb9058c3a382ffc7106e4002c42a8d85",
            ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",),
            extract=True,
        ),
    ),
}

_NETWORK_ERRORS = (urllib.error.URLError, socket.timeout, ConnectionError, http.client.HTTPException, TimeoutError)


def open_url(url: str, timeout: float = _TIMEOUT_S):
    """Open ``url`` for reading (the one place that touches the network; tests replace it)."""
    return urllib.request.urlopen(url, timeout=timeout)


def _md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _stream_to_temp(url: str, directory: Path, filename: str) -> tuple[Path, str]:
    """Download ``url`` into a temporary file in ``directory``; return it and its MD5."""
    digest = hashlib.md5(usedforsecurity=False)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{filename}.", suffix=".part", dir=directory)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, open_url(url) as response:
            while chunk := response.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp, digest.hexdigest()


def fetch_verified(resource: Resource, directory: str | Path) -> Path:
    """``directory/resource.filename``, downloaded unless already there with the right MD5.

    Raises:
      DataError: every mirror failed (offline?) or served a file with the wrong
        MD5 (the partial file is deleted).
    """
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"cannot create {directory} ({exc.strerror or exc}): pass a writable data_dir or set ISOTPP_CACHE"
        ) from None
    dest = directory / resource.filename
    if dest.is_file() and _md5_of(dest) == resource.md5:
        return dest
    network_errors, mismatches = [], []
    for url in resource.urls:
        try:
            tmp, md5 = _stream_to_temp(url, directory, resource.filename)
        except _NETWORK_ERRORS as exc:
            network_errors.append(f"{url}: {getattr(exc, 'reason', None) or exc}")
            continue
        except OSError as exc:  # local trouble (disk full, permissions), not the network
            raise DataError(
                f"could not write {dest} ({exc.strerror or exc}): free some space or pass a writable data_dir"
            ) from None
        if md5 != resource.md5:
            tmp.unlink(missing_ok=True)
            mismatches.append(f"{url} gave MD5 {md5}")
            continue
        os.replace(tmp, dest)
        return dest
    if mismatches:
        raise DataError(
            f"checksum mismatch downloading {resource.filename} ({'; '.join(mismatches)}, expected {resource.md5}); "
            f"the download was deleted: try again later, or place a verified copy in {directory}"
        )
    raise DataError(
        f"could not download {resource.filename} (offline?) ({'; '.join(network_errors)}): "
        f"place the files in {directory} or set ISOTPP_DATA"
    )


def safe_extract_tar(archive: str | Path, directory: str | Path) -> None:
    """Extract a .tar.gz into ``directory``, refusing links, devices and paths escaping it.

    Members are extracted into a temporary directory first and each top-level
    entry then renamed into place, so an interrupted extraction leaves nothing
    half-written under its final name.

    Raises:
      DataError: the archive is corrupt or holds an unsafe member.
    """
    archive, directory = Path(archive), Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    root = directory.resolve()
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=directory))
    try:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                members = tar.getmembers()
                for m in members:
                    if not (m.isfile() or m.isdir()):
                        raise DataError(f"{archive} holds a link or special file {m.name!r}: refusing to extract it")
                    target = (root / m.name).resolve()
                    if os.path.isabs(m.name) or ".." in Path(m.name).parts or not target.is_relative_to(root):
                        raise DataError(f"{archive} holds an unsafe path {m.name!r}: refusing to extract it")
                tar.extractall(staging, members=members, filter="data")
        except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            raise DataError(f"{archive} is corrupt or truncated ({exc}): delete it and download again") from None
        for entry in staging.iterdir():
            try:
                os.replace(entry, directory / entry.name)
            except OSError as exc:
                raise DataError(
                    f"could not move {entry.name} into {directory} ({exc.strerror or exc}): "
                    f"remove {directory / entry.name} and try again"
                ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def download_dataset(name: str, directory: str | Path | None = None) -> Path:
    """Download (and for CIFAR extract) dataset ``name``; return the directory holding its files.

    ``directory`` defaults to ``cache_dir() / name``, where :func:`find_dataset_dir`
    looks. Files already present with the right MD5 are not fetched again.
    """
    if name not in RESOURCES:
        raise DataError(f"dataset {name!r} cannot be downloaded: choose one of {', '.join(sorted(RESOURCES))}")
    target = Path(directory).expanduser() if directory is not None else cache_dir() / name
    for resource in RESOURCES[name]:
        path = fetch_verified(resource, target)
        if resource.extract:
            safe_extract_tar(path, target)
            path.unlink()
    return find_dataset_dir(name, target)
