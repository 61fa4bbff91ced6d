"""Hostile files: declared sizes are checked before memory is allocated; every refusal is one line."""

import gzip
import io
import json
import pickle
import struct
import tracemalloc
import zipfile

import numpy as np
import pytest

from isotpp.checkpoint import load_model, save_model
from isotpp.data.cifar import read_cifar_batch
from isotpp.data.idx import read_idx
from isotpp.errors import DataError, UserError
from isotpp.files import open_npz
from isotpp.pai.autosparse import load_scorer
from isotpp.pai.irp import load_irp_record


def _peak(fn):
    """(result or exception, peak bytes Python allocated while running ``fn``)."""
    tracemalloc.start()
    try:
        try:
            out = fn()
        except Exception as e:  # noqa: BLE001 - the caller inspects it
            out = e
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _one_line(exc, *needles):
    msg = str(exc)
    assert isinstance(exc, UserError) and "\n" not in msg, repr(exc)
    for n in needles:
        assert n in msg, msg
    return msg


def test_a_gzip_bomb_idx_is_refused_from_its_header(tmp_path):
    """A 2 MB gzip IDX that expands to 1 GB of zeros: refused after reading the 16-byte header."""
    header = struct.pack(">I", 0x0803) + struct.pack(">3I", 1_000_000, 32, 32)
    member = gzip.compress(bytes(1 << 20), compresslevel=9)  # gzip members concatenate (as `cat a.gz b.gz`)
    raw = io.BytesIO(gzip.compress(header) + member * 1024)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(raw.getvalue())
    assert path.stat().st_size < 2 << 20
    exc, peak = _peak(lambda: read_idx(path, ndim=3))
    _one_line(exc, "declares a 1000000x32x32 array (976.6 MiB)", "more than the 128.0 MiB")
    assert peak < 16 << 20  # a few copies of the 1 MB file, not its 1 GiB expansion


def test_a_raw_idx_declaring_more_than_it_holds_is_refused_before_reading_on(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(struct.pack(">I", 0x0803) + struct.pack(">3I", 100, 28, 28) + bytes(784))
    _one_line(pytest.raises(DataError, read_idx, path).value, "is truncated (expected 78416 bytes, got 800)")


def _npz_with_member(path, name, header_shape, payload: bytes):
    """A .npz whose member's .npy header declares ``header_shape`` float32 but stores ``payload``."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": header_shape})
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{name}.npy", buf.getvalue() + payload)
    return path


def test_an_npz_member_declaring_terabytes_is_refused_before_allocation(tmp_path):
    path = _npz_with_member(tmp_path / "bomb.npz", "w", (10**12,), bytes(8))
    exc, peak = _peak(lambda: open_npz(path, what="model file"))
    _one_line(exc, "member 'w' declares 3.6 TiB of data but stores 8 bytes")
    assert peak < 1 << 20


@pytest.mark.parametrize("loader,what", [(load_model, "model file"), (load_irp_record, "IRP record"),
                                         (load_scorer, "scorer file")])
@pytest.mark.parametrize("content,needle", [
    (b"", "is empty"),
    (b"PK\x03\x04garbage", "not readable"),
    (b"\x00" * 100, "not readable"),
])
def test_empty_and_garbage_npz_are_one_line(tmp_path, loader, what, content, needle):
    path = tmp_path / "x.npz"
    path.write_bytes(content)
    _one_line(pytest.raises(UserError, loader, path).value, what, needle)


@pytest.mark.parametrize("header", [[1, 2], "text", 3, None])
def test_model_headers_of_the_wrong_json_type_are_one_line(tmp_path, header):
    path = tmp_path / "m.npz"
    np.savez(path, __isotpp__=np.frombuffer(json.dumps(header).encode(), np.uint8))
    _one_line(pytest.raises(UserError, load_model, path).value, "not a JSON object")


@pytest.mark.parametrize("mutate,needle", [
    (lambda h: h | {"build": [1]}, "no build description"),
    (lambda h: h | {"widths": {"net.0": -3}}, "corrupt widths"),
    (lambda h: h | {"widths": "wide"}, "corrupt widths"),
    (lambda h: h | {"meta": 7}, "corrupt metadata"),
    # a crafted depth would make even the abstract architecture slow to build; the file holds 4x3 + 3 + 3x2 + 2
    (lambda h: h | {"build": {**h["build"], "arch_kwargs": {**h["build"]["arch_kwargs"], "depth": 10**9}}},
     "declares depth = 1,000,000,000, more than the 23 numbers it holds"),
])
def test_model_header_fields_of_the_wrong_type_are_one_line(tmp_path, mutate, needle):
    from isotpp.models import create_model

    good = save_model(tmp_path / "good.npz", create_model("mlp", depth=2, width=3, input_dim=4, num_classes=2))
    with np.load(good) as data:
        arrays = {k: data[k] for k in data.files}
    header = json.loads(arrays["__isotpp__"].tobytes())
    arrays["__isotpp__"] = np.frombuffer(json.dumps(mutate(header)).encode(), np.uint8)
    np.savez(tmp_path / "bad.npz", **arrays)
    _one_line(pytest.raises(UserError, load_model, tmp_path / "bad.npz").value, needle)
    model, _ = load_model(good)  # the untouched file still loads
    assert model.build_config.name == "mlp"


class _HugePlaceholder:
    """Pickles as numpy's array reconstructor asked for a 10^12-byte placeholder."""

    def __reduce__(self):
        return np._core.multiarray._reconstruct, (np.ndarray, (10**12,), b"b")


def test_a_cifar_batch_asking_for_a_huge_placeholder_is_refused(tmp_path):
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({"data": _HugePlaceholder(), "labels": [0]}, protocol=2))
    exc, peak = _peak(lambda: read_cifar_batch(path))
    _one_line(exc, "refusing a placeholder array of shape (1000000000000,)")
    assert peak < 1 << 20
