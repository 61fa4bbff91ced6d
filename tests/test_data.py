"""Tests of isotpp.data: file formats, preprocessing, discovery, cache, downloads.

Everything runs on tiny files written here in the official formats, except the
real-data test, which reads the installed Fashion-MNIST when present. No test
touches the network.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
import urllib.error
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import isotpp.data as data_mod
from isotpp.data import (
    DATASET_INFO,
    Dataset,
    discovery,
    download,
    input_shape,
    load_dataset,
    make_synthetic,
)
from isotpp.data.cifar import random_crop_flip, read_cifar_batch
from isotpp.data.discovery import cache_dir, find_dataset_dir
from isotpp.data.download import (
    Resource,
    download_dataset,
    fetch_verified,
    safe_extract_tar,
)
from isotpp.data.idx import read_idx
from isotpp.errors import DataError, UserError


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    """No test sees the user's data/cache settings or writes to ~/.cache."""
    monkeypatch.setenv("ISOTPP_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ISOTPP_DATA", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)


def _fail_one_line(excinfo, *fragments):
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for frag in fragments:
        assert str(frag) in msg, msg
    return msg


# ---------------------------------------------------------------- IDX writers


def _idx_bytes(array: np.ndarray) -> bytes:
    array = np.asarray(array, dtype=np.uint8)
    magic = 0x0800 | array.ndim
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def _write(path: Path, payload: bytes, gz: bool) -> Path:
    path = path.with_name(path.name + ".gz") if gz else path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


def _mnist_like(directory: Path, n_train=7, n_test=3, *, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        _write(directory / f"{prefix}-images-idx3-ubyte", _idx_bytes(images), gz)
        _write(directory / f"{prefix}-labels-idx1-ubyte", _idx_bytes(labels), gz)
        arrays[split] = (images, labels)
    return arrays


def _reference_pixels(images: np.ndarray, size=(32, 32)) -> np.ndarray:
    """What torchvision's Resize((32, 32)) does on each 'L' PIL image, written out plainly."""
    return np.stack([np.asarray(Image.fromarray(im, mode="L").resize(size[::-1], Image.BILINEAR)) for im in images])


# ----------------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_roundtrip(tmp_path, gz):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    labels = np.array([9, 0, 4], dtype=np.uint8)
    p_img = _write(tmp_path / "x-images", _idx_bytes(images), gz)
    p_lab = _write(tmp_path / "x-labels", _idx_bytes(labels), gz)
    np.testing.assert_array_equal(read_idx(p_img, ndim=3), images)
    np.testing.assert_array_equal(read_idx(p_lab), labels)
    assert read_idx(p_img).dtype == np.uint8


def test_read_idx_big_endian_types(tmp_path):
    values = np.array([[1, -2], [70000, 3]], dtype=">i4")
    path = tmp_path / "ints"
    path.write_bytes(struct.pack(">I", 0x0C02) + struct.pack(">2I", 2, 2) + values.tobytes())
    out = read_idx(path)
    assert out.dtype == np.int32 and out.dtype.isnative
    np.testing.assert_array_equal(out, values)


@pytest.mark.parametrize(
    ("mutate", "expect"),
    [
        (lambda b: b[:-5], "is truncated (expected 16+2352 bytes"),
        (lambda b: b[:10], "is truncated (expected a 16-byte header"),
        (lambda b: b[:2], "is truncated (expected an IDX header"),
        (lambda b: b"\x12\x34" + b[2:], "is not an IDX file (magic 0x1234"),
        (lambda b: b[:2] + b"\x07" + b[3:], "is not an IDX file"),
        (lambda b: b + b"\0\0", "2 unexpected bytes after its data"),
        (lambda b: b[:3] + b"\x01" + b[4:], "1-d IDX array"),
    ],
)
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_rejects_bad_files(tmp_path, mutate, expect, gz):
    good = _idx_bytes(np.zeros((3, 28, 28), dtype=np.uint8))
    path = _write(tmp_path / "train-images-idx3-ubyte", mutate(good), gz)
    expect = expect.replace("16+2352", str(16 + 3 * 784))
    with pytest.raises(DataError) as excinfo:
        read_idx(path, ndim=3)
    msg = _fail_one_line(excinfo, path, expect)
    if gz and "truncated (expected" in expect:
        assert "after decompression" in msg


def test_read_idx_gzip_errors_and_missing(tmp_path):
    payload = gzip.compress(_idx_bytes(np.zeros((50, 28, 28), dtype=np.uint8)))
    cut = tmp_path / "cut.gz"
    cut.write_bytes(payload[: len(payload) // 2])
    with pytest.raises(DataError) as excinfo:
        read_idx(cut)
    _fail_one_line(excinfo, cut, "truncated", "re-download")
    bad = tmp_path / "bad.gz"
    bad.write_bytes(payload[:10] + b"garbage-garbage-garbage" + payload[40:])
    with pytest.raises(DataError) as excinfo:
        read_idx(bad)
    _fail_one_line(excinfo, bad)
    with pytest.raises(DataError) as excinfo:
        read_idx(tmp_path / "nope")
    _fail_one_line(excinfo, tmp_path / "nope", "missing")


# ------------------------------------------------------- MNIST-family loading


@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist_matches_torchvision_pipeline(tmp_path, gz):
    arrays = _mnist_like(tmp_path / "m", gz=gz)
    for split in ("train", "test"):
        images, labels = arrays[split]
        ds = load_dataset("mnist", split, data_dir=tmp_path / "m")
        assert isinstance(ds, Dataset) and ds.name == "mnist" and ds.split == split and ds.num_classes == 10
        assert ds.images.shape == (len(images), 32, 32, 1) and ds.images.dtype == np.float32
        assert ds.labels.dtype == np.int32 and len(ds) == len(images)
        np.testing.assert_array_equal(ds.labels, labels)
        # ToTensor then Normalize, in float32, written out independently.
        pixels = _reference_pixels(images).astype(np.float32)
        expected = (pixels / np.float32(255) - np.float32(0.1307)) / np.float32(0.3081)
        np.testing.assert_array_equal(ds.images[..., 0], expected)


def test_load_mnist_options(tmp_path):
    images, labels = _mnist_like(tmp_path)["train"]
    raw = load_dataset("fashion_mnist", data_dir=tmp_path, resize=None, normalize=False)
    assert raw.images.shape == (7, 28, 28, 1)
    np.testing.assert_array_equal(raw.images[..., 0], images.astype(np.float32) / np.float32(255))
    # A known pixel value through the normalisation: 255 -> (1 - 0.1307) / 0.3081.
    one = load_dataset("mnist", data_dir=tmp_path, resize=None).images[..., 0]
    assert one[images == 255].size and np.allclose(one[images == 255], (1 - 0.1307) / 0.3081, rtol=1e-6)
    assert np.allclose(one[images == 0], -0.1307 / 0.3081, rtol=1e-6)
    small = load_dataset("mnist", data_dir=tmp_path, limit=2, resize=(16, 20))
    assert small.images.shape == (2, 16, 20, 1) and small.input_shape == (16, 20, 1)
    np.testing.assert_array_equal(small.labels, labels[:2])
    assert len(load_dataset("mnist", data_dir=tmp_path, limit=100)) == 7
    assert input_shape("mnist") == (32, 32, 1) and input_shape("fmnist", None) == (28, 28, 1)
    assert input_shape("cifar10") == DATASET_INFO["cifar10"].input_shape == (32, 32, 3)


def test_load_mnist_inconsistent_files(tmp_path):
    _mnist_like(tmp_path, gz=False)
    _write(tmp_path / "train-labels-idx1-ubyte", _idx_bytes(np.zeros(6, np.uint8)), gz=False)
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist", data_dir=tmp_path)
    _fail_one_line(excinfo, tmp_path / "train-images-idx3-ubyte", "7 images", "6 labels")
    _write(tmp_path / "train-labels-idx1-ubyte", _idx_bytes(np.full(7, 12, np.uint8)), gz=False)
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist", data_dir=tmp_path)
    _fail_one_line(excinfo, tmp_path / "train-labels-idx1-ubyte", "0..9")
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist", "test", data_dir=tmp_path)
    _fail_one_line(excinfo, tmp_path / "t10k-images-idx3-ubyte.gz", "missing")


def test_bad_arguments():
    with pytest.raises(UserError) as excinfo:
        load_dataset("imagenet")
    _fail_one_line(excinfo, "imagenet", "cifar10", "fashion_mnist", "mnist", "synthetic")
    with pytest.raises(UserError, match="split"):
        load_dataset("synthetic", "val")
    with pytest.raises(UserError, match="resize"):
        load_dataset("synthetic", resize=32)
    with pytest.raises(UserError, match="limit"):
        load_dataset("synthetic", limit=-1)


# -------------------------------------------------------------------- cache


def test_preprocessing_cache_used_and_invalidated(tmp_path, monkeypatch):
    images, _ = _mnist_like(tmp_path / "d", n_train=5)["train"]
    first = load_dataset("mnist", data_dir=tmp_path / "d")
    cached = list((cache_dir() / "preprocessed").glob("mnist-train-32x32-*.npy"))
    assert len(cached) == 1
    assert not list((cache_dir() / "preprocessed").glob(".*"))  # no temp file left behind
    np.testing.assert_array_equal(np.load(cached[0]), _reference_pixels(images))

    def no_resize(*args, **kwargs):
        raise AssertionError("resized again although the cache is valid")

    with monkeypatch.context() as m:
        m.setattr(data_mod, "resize_images", no_resize)
        second = load_dataset("mnist", data_dir=tmp_path / "d")
        np.testing.assert_array_equal(second.images, first.images)
        assert load_dataset("mnist", data_dir=tmp_path / "d", limit=2).images.shape[0] == 2

    # Change the source: the cache must be rebuilt, and the stale entry removed.
    new_images = 255 - images[:4]
    src = _write(tmp_path / "d" / "train-images-idx3-ubyte", _idx_bytes(new_images), gz=True)
    _write(tmp_path / "d" / "train-labels-idx1-ubyte", _idx_bytes(np.zeros(4, np.uint8)), gz=True)
    st = src.stat()
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third = load_dataset("mnist", data_dir=tmp_path / "d", normalize=False)
    np.testing.assert_array_equal(third.images[..., 0] * np.float32(255), _reference_pixels(new_images))
    entries = list((cache_dir() / "preprocessed").glob("mnist-train-32x32-*.npy"))
    assert len(entries) == 1 and entries != cached

    # A corrupt cache entry is rebuilt, not trusted.
    entries[0].write_bytes(b"not a npy file")
    again = load_dataset("mnist", data_dir=tmp_path / "d", normalize=False)
    np.testing.assert_array_equal(again.images, third.images)


# -------------------------------------------------------------------- CIFAR


def _py2_str(b: bytes) -> bytes:
    return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b


def _py2_int(i: int) -> bytes:
    return b"K" + bytes([i]) if 0 <= i < 256 else b"J" + struct.pack("<i", i)


def _py2_value(v) -> bytes:
    if isinstance(v, bytes):
        return _py2_str(v)
    if isinstance(v, list):
        return b"](" + b"".join(_py2_value(x) for x in v) + b"e"
    if isinstance(v, np.ndarray):  # uint8 array as numpy under Python 2 pickled it
        dtype_state = b"(" + _py2_int(3) + _py2_str(b"|") + b"NNN" + _py2_int(-1) + _py2_int(-1) + _py2_int(0) + b"t"
        dtype = b"cnumpy\ndtype\n" + _py2_str(b"u1") + _py2_int(0) + _py2_int(1) + b"\x87R" + dtype_state + b"b"
        return (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n(K\x00t" + _py2_str(b"b") + b"\x87R"
                + b"(" + _py2_int(1) + b"(" + b"".join(_py2_int(s) for s in v.shape) + b"t" + dtype
                + b"\x89" + _py2_str(v.tobytes()) + b"tb")  # fmt: skip
    return _py2_int(v)


def _py2_pickle(d: dict) -> bytes:
    """A dict pickled like the official CIFAR batches (cPickle, protocol 2, str keys)."""
    return b"\x80\x02}(" + b"".join(_py2_str(k) + _py2_value(v) for k, v in d.items()) + b"u."


def _cifar_arrays(n, num_classes, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8), rng.integers(0, num_classes, size=n).tolist()


def _write_cifar10(root: Path, n=2) -> dict:
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    out = {}
    for i, f in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        data, labels = _cifar_arrays(n, 10, i)
        batch = {b"batch_label": b"batch", b"labels": labels, b"data": data, b"filenames": [b"a.png"] * n}
        (d / f).write_bytes(_py2_pickle(batch))
        out[f] = (data, labels)
    (d / "batches.meta").write_bytes(_py2_pickle({b"label_names": [b"airplane"] * 10, b"num_vis": 3072}))
    return out


def _write_cifar100(root: Path, n=3, protocol=2) -> dict:
    d = root / "cifar-100-python"
    d.mkdir(parents=True)
    out = {}
    for i, f in enumerate(["train", "test"]):
        data, labels = _cifar_arrays(n, 100, 10 + i)
        labels[0] = 99
        batch = {b"fine_labels": labels, b"coarse_labels": [0] * n, b"data": data}
        (d / f).write_bytes(pickle.dumps(batch, protocol=protocol))  # as Python 3 would write it
        out[f] = (data, labels)
    (d / "meta").write_bytes(pickle.dumps({b"fine_label_names": [b"x"] * 100}, protocol=protocol))
    return out


def test_py2_pickle_writer_is_a_real_numpy_pickle(tmp_path):
    data, labels = _cifar_arrays(2, 10, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # numpy.core alias
        obj = pickle.loads(_py2_pickle({b"data": data, b"labels": labels}), encoding="latin1")
    np.testing.assert_array_equal(obj["data"], data)
    assert obj["labels"] == labels


def test_cifar10_roundtrip_nhwc_and_normalisation(tmp_path):
    written = _write_cifar10(tmp_path)
    train = load_dataset("cifar10", "train", data_dir=tmp_path, normalize=False)
    assert train.images.shape == (10, 32, 32, 3) and train.num_classes == 10
    data = np.concatenate([written[f"data_batch_{k}"][0] for k in range(1, 6)])
    labels = [label for k in range(1, 6) for label in written[f"data_batch_{k}"][1]]
    np.testing.assert_array_equal(train.labels, labels)
    # NHWC: images[n, y, x, c] == data[n, c * 1024 + y * 32 + x].
    n, y, x, c = 7, 5, 30, 2
    assert train.images[n, y, x, c] * 255 == pytest.approx(float(data[n, c * 1024 + y * 32 + x]))
    np.testing.assert_array_equal(
        np.round(train.images * 255).astype(np.uint8), data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    )
    test = load_dataset("cifar10", "test", data_dir=tmp_path / "cifar-10-batches-py")
    tdata = written["test_batch"][0].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).astype(np.float32)
    mean, std = np.float32([0.485, 0.456, 0.406]), np.float32([0.229, 0.224, 0.225])
    np.testing.assert_array_equal(test.images, (tdata / np.float32(255) - mean) / std)
    # Known values: a white red pixel and a black blue pixel.
    assert (np.float32(1) - np.float32(0.485)) / np.float32(0.229) == pytest.approx(2.2489083)
    assert (np.float32(0) - np.float32(0.406)) / np.float32(0.225) == pytest.approx(-1.8044444)


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar100_roundtrip(tmp_path, protocol):
    written = _write_cifar100(tmp_path, protocol=protocol)
    for split in ("train", "test"):
        ds = load_dataset("cifar100", split, data_dir=tmp_path)
        data, labels = written[split]
        assert ds.num_classes == 100 and ds.labels.max() == 99
        np.testing.assert_array_equal(ds.labels, labels)
        nhwc = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).astype(np.float32)
        mean, std = np.float32([0.5071, 0.4867, 0.4408]), np.float32([0.2675, 0.2565, 0.2761])
        np.testing.assert_array_equal(ds.images, (nhwc / np.float32(255) - mean) / std)


def test_cifar_bad_files(tmp_path):
    _write_cifar10(tmp_path)
    d = tmp_path / "cifar-10-batches-py"
    (d / "data_batch_3").unlink()
    with pytest.raises(DataError) as excinfo:
        load_dataset("cifar10", data_dir=tmp_path)
    _fail_one_line(excinfo, d / "data_batch_3", "missing")

    data, labels = _cifar_arrays(2, 10, 0)
    (d / "data_batch_3").write_bytes(_py2_pickle({b"data": data[:, :3000].copy(), b"labels": labels}))
    with pytest.raises(DataError) as excinfo:
        load_dataset("cifar10", data_dir=tmp_path)
    _fail_one_line(excinfo, d / "data_batch_3", "(N, 3072)")

    (d / "data_batch_3").write_bytes(_py2_pickle({b"data": data, b"labels": labels + [1]}))
    with pytest.raises(DataError) as excinfo:
        read_cifar_batch(d / "data_batch_3")
    _fail_one_line(excinfo, d / "data_batch_3", "3 labels for 2 images")

    (d / "test_batch").write_bytes(_py2_pickle({b"data": data, b"labels": labels})[:-100])
    with pytest.raises(DataError) as excinfo:
        load_dataset("cifar10", "test", data_dir=tmp_path)
    _fail_one_line(excinfo, d / "test_batch")


def test_cifar_unpickler_refuses_arbitrary_globals(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "test_batch"
    # cos\nsystem\n("touch <marker>")R -- would run a shell command with a plain pickle.load.
    evil.write_bytes(b"\x80\x02cos\nsystem\n" + _py2_str(f"touch {marker}".encode()) + b"\x85R.")
    with pytest.raises(DataError) as excinfo:
        read_cifar_batch(evil)
    _fail_one_line(excinfo, evil, "refusing to load global os.system")
    assert not marker.exists()
    # An object-dtype array (could hold arbitrary objects) is refused as well.
    obj = pickle.dumps({"data": np.array([None], dtype=object), "labels": [0]}, protocol=2)
    evil.write_bytes(obj)
    with pytest.raises(DataError, match="refusing"):
        read_cifar_batch(evil)


def test_random_crop_flip():
    rng = np.random.default_rng(0)
    images = rng.random((64, 8, 8, 3)).astype(np.float32)
    same = random_crop_flip(images, np.random.default_rng(1), padding=0)
    for a, b in zip(images, same):
        assert np.array_equal(a, b) or np.array_equal(a[:, ::-1], b)
    assert not np.array_equal(images, same) and np.array_equal(images[0], images[0])
    fill = np.float32([-1.0, -2.0, -3.0])
    out = random_crop_flip(images, np.random.default_rng(2), padding=2, fill=fill)
    assert out.shape == images.shape and out.dtype == np.float32
    padded = np.broadcast_to(fill, (64, 12, 12, 3)).copy()
    padded[:, 2:10, 2:10] = images
    offsets = set()
    for i in range(64):
        crops = [(dy, dx, f) for dy in range(5) for dx in range(5) for f in (False, True)
                 if np.array_equal(out[i], padded[i, dy:dy + 8, dx:dx + 8][:, ::-1] if f else
                                   padded[i, dy:dy + 8, dx:dx + 8])]  # fmt: skip
        assert crops, i
        offsets.add(crops[0])
    assert len(offsets) > 10  # the crops really vary


# ---------------------------------------------------------------- discovery


def _touch_fashion(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "train-labels-idx1-ubyte.gz").write_bytes(b"")
    return d


def test_discovery_order(tmp_path, monkeypatch):
    explicit = _touch_fashion(tmp_path / "explicit")
    env = _touch_fashion(tmp_path / "env" / "fashion_mnist")  # $ISOTPP_DATA/<name>
    cache = _touch_fashion(cache_dir() / "FashionMNIST" / "raw")  # torchvision layout in the cache
    system = _touch_fashion(tmp_path / "sys" / "fashion-mnist")  # Debian's name
    monkeypatch.setattr(discovery, "SYSTEM_DATA_DIRS", (tmp_path / "nowhere", tmp_path / "sys"))
    monkeypatch.setenv("ISOTPP_DATA", f"{tmp_path / 'empty'}{os.pathsep}{tmp_path / 'env'}")

    assert find_dataset_dir("fashion_mnist", explicit) == explicit
    assert find_dataset_dir("fashion_mnist") == env
    monkeypatch.delenv("ISOTPP_DATA")
    assert find_dataset_dir("fashion_mnist") == cache
    (cache / "train-labels-idx1-ubyte.gz").unlink()
    assert find_dataset_dir("fashion_mnist") == system
    (system / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as excinfo:
        find_dataset_dir("fashion_mnist")
    _fail_one_line(excinfo, "fashion_mnist not found", cache_dir(), tmp_path / "sys", "ISOTPP_DATA", "download")


def test_discovery_layouts(tmp_path, monkeypatch):
    monkeypatch.setattr(discovery, "SYSTEM_DATA_DIRS", ())
    flat = _touch_fashion(tmp_path / "flat")
    monkeypatch.setenv("ISOTPP_DATA", str(flat))
    assert find_dataset_dir("fashion_mnist") == flat  # flat $ISOTPP_DATA
    tv = _touch_fashion(tmp_path / "root" / "FashionMNIST" / "raw")
    assert find_dataset_dir("fashion_mnist", tmp_path / "root") == tv
    ref = _touch_fashion(tmp_path / "ref" / "fmnist" / "FashionMNIST" / "raw")  # the reference's data_path/dataset_dir
    assert find_dataset_dir("fashion_mnist", tmp_path / "ref") == ref
    c10 = tmp_path / "c" / "cifar-10-batches-py"
    c10.mkdir(parents=True)
    (c10 / "test_batch").write_bytes(b"")
    assert find_dataset_dir("cifar10", tmp_path / "c") == c10
    assert find_dataset_dir("cifar10", c10) == c10
    # An explicit path that lacks the data is an error naming it, never a silent fallback.
    with pytest.raises(DataError) as excinfo:
        find_dataset_dir("fashion_mnist", tmp_path / "c")
    _fail_one_line(excinfo, tmp_path / "c", "does not hold fashion_mnist")


def test_cache_dir_env(tmp_path, monkeypatch):
    assert cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("ISOTPP_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "isotpp"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "isotpp"


# ---------------------------------------------------------------- downloads


def _served(tmp_path, name: str, payload: bytes, md5: str | None = None) -> Resource:
    src = tmp_path / "server" / name
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_bytes(payload)
    return Resource(name, md5 or hashlib.md5(payload).hexdigest(), (src.as_uri(),))


def test_download_verified(tmp_path, monkeypatch):
    # Serve tiny gzipped IDX files over file:// URLs with their true MD5s.
    arrays = _mnist_like(tmp_path / "server")
    resources = tuple(
        _served(tmp_path, p.name, p.read_bytes()) for p in sorted((tmp_path / "server").glob("*.gz"))
    )
    monkeypatch.setitem(download.RESOURCES, "mnist", resources)
    monkeypatch.setattr(discovery, "SYSTEM_DATA_DIRS", ())
    ds = load_dataset("mnist", "test", download=True, resize=None, normalize=False)
    np.testing.assert_array_equal(ds.labels, arrays["test"][1])
    target = cache_dir() / "mnist"
    assert sorted(p.name for p in target.iterdir()) == sorted(r.filename for r in resources)

    calls = []
    monkeypatch.setattr(download, "open_url", lambda url, timeout=0: calls.append(url))
    assert fetch_verified(resources[0], target) == target / resources[0].filename
    assert calls == []  # already there with the right checksum: no fetch


def test_download_checksum_mismatch_deletes(tmp_path):
    res = _served(tmp_path, "train-images-idx3-ubyte.gz", b"tampered", md5="0" * 32)
    dest = tmp_path / "dest"
    with pytest.raises(DataError) as excinfo:
        fetch_verified(res, dest)
    _fail_one_line(excinfo, "checksum mismatch", res.filename, "0" * 32, dest)
    assert list(dest.iterdir()) == []  # neither the file nor a .part remains


def test_download_offline_message(tmp_path, monkeypatch):
    def offline(url, timeout=0):
        raise urllib.error.URLError(OSError(101, "Network is unreachable"))

    monkeypatch.setattr(download, "open_url", offline)
    monkeypatch.setattr(discovery, "SYSTEM_DATA_DIRS", ())
    with pytest.raises(DataError) as excinfo:
        load_dataset("fashion_mnist", download=True)
    _fail_one_line(excinfo, "could not download train-images-idx3-ubyte.gz (offline?)",
                   cache_dir() / "fashion_mnist", "ISOTPP_DATA")  # fmt: skip
    assert not [p for p in (cache_dir() / "fashion_mnist").iterdir()]


def _tar_gz(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, payload in members:
            if payload is not None:
                info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return buf.getvalue()


def test_download_and_extract_cifar(tmp_path, monkeypatch):
    written = _write_cifar10(tmp_path / "src")
    members = [(tarfile.TarInfo("cifar-10-batches-py"), None)]
    members[0][0].type = tarfile.DIRTYPE
    for p in sorted((tmp_path / "src" / "cifar-10-batches-py").iterdir()):
        members.append((tarfile.TarInfo(f"cifar-10-batches-py/{p.name}"), p.read_bytes()))
    res = _served(tmp_path, "cifar-10-python.tar.gz", _tar_gz(members))
    monkeypatch.setitem(download.RESOURCES, "cifar10", (Resource(res.filename, res.md5, res.urls, extract=True),))
    where = download_dataset("cifar10", tmp_path / "data")
    assert where == tmp_path / "data" / "cifar-10-batches-py"
    assert not (tmp_path / "data" / "cifar-10-python.tar.gz").exists()
    ds = load_dataset("cifar10", "test", data_dir=tmp_path / "data", normalize=False)
    np.testing.assert_array_equal(ds.labels, written["test_batch"][1])


@pytest.mark.parametrize("kind", ["traversal", "absolute", "symlink"])
def test_extract_refuses_unsafe_members(tmp_path, kind):
    if kind == "symlink":
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.type, info.linkname, payload = tarfile.SYMTYPE, "/etc/passwd", None
    else:
        name = "../escaped" if kind == "traversal" else str(tmp_path / "escaped")
        info, payload = tarfile.TarInfo(name), b"x"
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(_tar_gz([(info, payload)]))
    with pytest.raises(DataError) as excinfo:
        safe_extract_tar(archive, tmp_path / "out")
    _fail_one_line(excinfo, archive, "refusing")
    assert not (tmp_path / "escaped").exists()
    assert list((tmp_path / "out").iterdir()) == []


# ---------------------------------------------------------------- synthetic


def test_synthetic_deterministic_and_learnable():
    x1, y1 = make_synthetic(200, (8, 8, 1), 4, seed=3)
    x2, y2 = make_synthetic(200, (8, 8, 1), 4, seed=3)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert x1.dtype == np.float32 and y1.dtype == np.int32 and np.bincount(y1).tolist() == [50] * 4
    xt, yt = make_synthetic(100, (8, 8, 1), 4, seed=4)
    assert not np.array_equal(xt[:10], x1[:10])
    # Nearest class mean (estimated on one split) classifies the other: the classes are shared.
    means = np.stack([x1[y1 == c].mean(0) for c in range(4)])
    pred = ((xt[:, None] - means[None]) ** 2).sum(axis=(2, 3, 4)).argmin(1)
    assert (pred == yt).mean() > 0.9

    ds = load_dataset("synthetic", "test", limit=50)
    assert ds.images.shape == (50, 32, 32, 1) and ds.num_classes == 10 and ds.split == "test"
    assert load_dataset("synthetic", resize=None).images.shape == (1024, 28, 28, 1)


# ---------------------------------------------------------------- real data


def test_real_fashion_mnist(fashion_mnist_dir, monkeypatch):
    monkeypatch.setenv("ISOTPP_DATA", str(fashion_mnist_dir))
    train = load_dataset("fashion_mnist", "train", resize=None, normalize=False)
    test = load_dataset("fashion_mnist", "test", resize=None, normalize=False)
    assert len(train) == 60000 and len(test) == 10000
    assert np.bincount(train.labels, minlength=10).tolist() == [6000] * 10
    assert np.bincount(test.labels, minlength=10).tolist() == [1000] * 10

    head = load_dataset("fashion_mnist", "train", limit=1000)
    assert head.images.shape == (1000, 32, 32, 1) and head.images.dtype == np.float32

    # Independently: gunzip, skip the 16-byte header, PIL-resize, ToTensor, Normalize.
    with gzip.open(fashion_mnist_dir / "train-images-idx3-ubyte.gz") as f:
        raw = np.frombuffer(f.read(16 + 1000 * 784), dtype=np.uint8, offset=16).reshape(1000, 28, 28)
    pixels = np.stack([np.asarray(Image.fromarray(im).resize((32, 32), Image.BILINEAR)) for im in raw])
    expected = (pixels.astype(np.float32) / np.float32(255) - np.float32(0.1307)) / np.float32(0.3081)
    assert float(head.images.mean()) == pytest.approx(float(expected.mean(dtype=np.float64)), rel=1e-6)
    np.testing.assert_array_equal(head.images[..., 0], expected)
    np.testing.assert_array_equal(train.images[:1000, ..., 0] * np.float32(255), raw.astype(np.float32))
