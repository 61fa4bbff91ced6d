"""Hostile files: declared sizes are checked before memory is allocated; every refusal is one line."""

import gzip
import io
import json
import pickle
import struct
import tracemalloc
import zipfile

import format1_fixtures
import jax
import numpy as np
import pytest
from flax import nnx

import isotpp
from isotpp.data.cifar import read_cifar_batch
from isotpp.data.idx import read_idx
from isotpp.errors import DataError, UserError
from isotpp.models import create_model
from isotpp.models.program import flat_arrays
from isotpp.pai.autosparse import Scorer, feature_spec, load_scorer
from isotpp.pai.irp import IRPRecord, load_irp_record
from isotpp.pruning.model_file import load_model, save_model
from isotpp.storage.artifact import IRP_RECORD, MODEL, SCORER
from isotpp.storage.npz import open_npz


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


# --------------------------------------------------------------------------
# Artefacts (model files, scorers, IRP records): one format, one corrupt-file path.
# --------------------------------------------------------------------------


def _good_model(path):
    return save_model(path, create_model("mlp", depth=2, width=3, input_dim=4, num_classes=2), {"note": "m"})


def _good_scorer(path):
    rng = np.random.default_rng(0)
    params = [(rng.normal(size=(2, 4)).astype(np.float32), np.zeros(4, np.float32)),
              (rng.normal(size=(4, 1)).astype(np.float32), np.zeros(1, np.float32))]
    return Scorer(params, np.zeros(2, np.float32), np.ones(2, np.float32), feature_spec(32), {"note": "s"}).save(path)


def _good_record(path):
    w0 = {"a.kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}
    return IRPRecord(arch="mlp", seed=1, density=0.5, rounds=2, rewind="kernels", names=("a.kernel",), w0=w0,
                     masks={"a.kernel": np.ones((2, 2, 3), bool)}, g0={"a.kernel": np.ones((2, 3), np.float32)},
                     g0_spec={"batch_size": 32}, meta={"note": "i"}).save(path)


# artefact -> (kind, writer of a good file, loader, a float array to damage, an array whose shape the rest fixes)
ARTEFACTS = {
    "model": (MODEL, _good_model, load_model, "net.0.kernel", "net.0.kernel"),
    "scorer": (SCORER, _good_scorer, load_scorer, "W0", "b0"),
    "irp": (IRP_RECORD, _good_record, load_irp_record, "w0/a.kernel", "masks/a.kernel"),
}


def _members(path):
    with np.load(path) as data:
        return {k: np.asarray(data[k]) for k in data.files}


def _header(arrays):
    return json.loads(arrays["__isotpp__"].tobytes())


def _with_header(arrays, header):
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return arrays | {"__isotpp__": np.frombuffer(raw, np.uint8)}


def _npz_bytes(arrays, raw_members=()):
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    if raw_members:
        with zipfile.ZipFile(buf, "a") as zf:
            for name, data in raw_members:
                zf.writestr(name, data)
    return buf.getvalue()


def _object_npy():
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|O", "fortran_order": False, "shape": (1,)})
    return buf.getvalue() + pickle.dumps([None])


def _other(name):
    names = list(ARTEFACTS)
    return names[(names.index(name) + 1) % len(names)]


def _header_change(**change):
    return lambda a, raw, n, x: _npz_bytes(_with_header(a, _header(a) | change))


# corruption -> (bytes of the bad file from (good arrays, good bytes, artefact, array to damage), needle)
# (the array to damage is the float one, or for "array of another shape" the one whose shape the rest fixes)
CORRUPTIONS = {
    "missing": (None, "does not exist"),
    "empty": (lambda a, raw, n, x: b"", "is empty"),
    "garbage zip": (lambda a, raw, n, x: b"PK\x03\x04garbage", "not readable"),
    "zeros": (lambda a, raw, n, x: b"\x00" * 100, "not readable"),
    "truncated": (lambda a, raw, n, x: raw[: len(raw) // 2], "it may be truncated"),
    "member not .npy": (lambda a, raw, n, x: _npz_bytes(a, [("junk.npy", b"junk")]), "member 'junk' is not a .npy"),
    "pickled member": (lambda a, raw, n, x: _npz_bytes(a, [("obj.npy", _object_npy())]), "holds Python objects"),
    "no header": (lambda a, raw, n, x: _npz_bytes({k: v for k, v in a.items() if k != "__isotpp__"}),
                  "has no __isotpp__ header"),
    "bad JSON": (lambda a, raw, n, x: _npz_bytes(_with_header(a, b"{not json")), "has a corrupt header"),
    "header not bytes": (lambda a, raw, n, x: _npz_bytes(a | {"__isotpp__": np.zeros(3)}),
                         "has a corrupt header (float64 (3,))"),
    "header a list": (lambda a, raw, n, x: _npz_bytes(_with_header(a, [1, 2])), "not a JSON object"),
    "header text": (lambda a, raw, n, x: _npz_bytes(_with_header(a, "text")), "not a JSON object"),
    "header a number": (lambda a, raw, n, x: _npz_bytes(_with_header(a, 3)), "not a JSON object"),
    "header null": (lambda a, raw, n, x: _npz_bytes(_with_header(a, None)), "not a JSON object"),
    "another kind": (lambda a, raw, n, x: _npz_bytes(_with_header(a, _header(a) | {
        "kind": ARTEFACTS[_other(n)][0].name})), "holds an isotpp"),
    "unknown kind": (_header_change(kind="x.y"), "holds an artefact of kind 'x.y'"),
    "newer format": (_header_change(format=99), "has format 99 (written by isotpp 0.1.0), newer than the 2 this"),
    "format 0": (_header_change(format=0), "has format 0, which this isotpp no longer reads"),
    "format a string": (_header_change(format="2"), "has no format version"),
    "metadata not a dict": (_header_change(meta=7), "has corrupt metadata (a int)"),
    "array missing": (lambda a, raw, n, x: _npz_bytes({k: v for k, v in a.items() if k != x}), "lacks"),
    "array of another shape": (lambda a, raw, n, x: _npz_bytes(a | {x: np.zeros((7, 7), np.float32)}),
                               "of shape (7, 7)"),
    "NaN": (lambda a, raw, n, x: _npz_bytes(a | {x: np.full_like(a[x], np.nan)}), "NaN or infinite values in"),
}


@pytest.mark.parametrize("artefact", ARTEFACTS)
@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_every_corrupt_artefact_is_one_line_naming_the_file_and_what_to_do(tmp_path, artefact, corruption):
    kind, write, load, damaged, shaped = ARTEFACTS[artefact]
    damaged = shaped if corruption == "array of another shape" else damaged
    good = write(tmp_path / "good.npz")
    make, needle = CORRUPTIONS[corruption]
    bad = tmp_path / "bad.npz"
    if make is not None:
        bad.write_bytes(make(_members(good), good.read_bytes(), artefact, damaged))
    msg = _one_line(pytest.raises(DataError, load, bad).value, needle)
    # one style: "<what> <path> <problem>: <what to do>"
    assert msg.startswith((f"{kind.what} {bad} ", f"{kind.what} {bad}: ")), msg
    assert ": " in msg.removeprefix(f"{kind.what} {bad}: "), msg
    if corruption in ("array missing", "array of another shape", "NaN"):
        assert damaged in msg, msg
    if corruption == "another kind":
        assert f"holds an isotpp {ARTEFACTS[_other(artefact)][0].what}, not a {kind.what}: pass a" in msg, msg
    load(good)  # the untouched file still loads


def _assert_same(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        assert type(x) is type(y) and np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(x, y)


def _content(artefact, loaded):
    if artefact == "model":
        model, info = loaded
        return {"arrays": {k: np.asarray(v) for k, v in flat_arrays(nnx.state(model)).items()}, "info": info}
    return vars(loaded)


SAVE = {
    "model": lambda m, path: save_model(path, m, {"note": "model"}),
    "scorer": lambda s, path: s.save(path),
    "irp": lambda r, path: r.save(path),
}


@pytest.mark.parametrize("artefact", ARTEFACTS)
def test_files_written_before_the_artefact_format_still_load(tmp_path, artefact):
    """tests/data/format1/: the bytes the code before this format wrote (tests/format1_fixtures.py)."""
    kind, _, load, *_ = ARTEFACTS[artefact]
    expected = getattr(format1_fixtures, {"irp": "record"}.get(artefact, artefact))()
    new_path = SAVE[artefact](expected, tmp_path / "new.npz")
    header = _header(_members(new_path))
    assert (header["kind"], header["format"], header["isotpp"]) == (kind.name, 2, isotpp.__version__)
    old, new = _content(artefact, load(format1_fixtures.DIR / f"{artefact}.npz")), _content(artefact, load(new_path))
    _assert_same(old, new)
    if artefact == "model":  # and the values are the ones the fixture was made of
        _assert_same(old["arrays"], {k: np.asarray(v) for k, v in flat_arrays(nnx.state(expected)).items()})
        assert old["info"]["meta"] == {"note": "model"} and old["info"]["widths"] == {"net.0": 3, "net.2": 2}
    else:
        _assert_same(old, vars(expected))


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
