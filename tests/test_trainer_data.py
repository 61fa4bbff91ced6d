"""Input pipelines of the trainer: on-device augmentation, in-memory order and resumption, prefetch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from isotpp import parallel
from isotpp.data.cifar import CIFAR10_MEAN, CIFAR10_STD, random_crop_flip
from isotpp.data.pipeline import (
    HostData,
    InMemoryData,
    InMemoryEval,
    crop_flip,
    pad_fill,
    prefetch_to_mesh,
)
from isotpp.data.pipeline import random_crop_flip as device_random_crop_flip


class _FixedRng:
    """Stands in for np.random.Generator: hands random_crop_flip chosen offsets and flips."""

    def __init__(self, dy, dx, flip):
        self._ints = [np.asarray(dy), np.asarray(dx)]
        self._flip = np.asarray(flip)

    def integers(self, low, high, size):
        return self._ints.pop(0)

    def random(self, n):
        return np.where(self._flip, 0.0, 1.0)


def test_device_crop_flip_equals_the_numpy_reference():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(6, 5, 7, 3)).astype(np.float32)
    dy, dx = np.array([0, 8, 3, 4, 8, 1]), np.array([8, 0, 5, 4, 2, 7])
    flip = np.array([True, False, True, False, True, True])
    fill = pad_fill(CIFAR10_MEAN, CIFAR10_STD)
    expected = random_crop_flip(images, _FixedRng(dy, dx, flip), padding=4, fill=fill)
    got = crop_flip(jnp.asarray(images), jnp.asarray(dy), jnp.asarray(dx), jnp.asarray(flip), padding=4, fill=fill)
    np.testing.assert_array_equal(np.asarray(got), expected)


def test_pad_value_is_a_black_pixel_after_normalisation():
    fill = pad_fill(CIFAR10_MEAN, CIFAR10_STD)
    black = (np.zeros(3, np.float32) - np.asarray(CIFAR10_MEAN, np.float32)) / np.asarray(CIFAR10_STD, np.float32)
    np.testing.assert_allclose(fill, black, rtol=1e-6)
    x = jnp.ones((1, 4, 4, 3))
    corner = crop_flip(x, jnp.array([0]), jnp.array([0]), jnp.array([False]), padding=4, fill=fill)[0]
    np.testing.assert_allclose(np.asarray(corner[0, 0]), fill, rtol=1e-6)  # all padding


def test_random_augmentation_is_a_function_of_the_key():
    x = jnp.arange(2 * 32 * 32 * 3, dtype=jnp.float32).reshape(2, 32, 32, 3)
    a = device_random_crop_flip(jax.random.key(1), x)
    b = device_random_crop_flip(jax.random.key(1), x)
    c = device_random_crop_flip(jax.random.key(2), x)
    assert a.shape == x.shape
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    outs = np.stack([np.asarray(device_random_crop_flip(jax.random.key(k), x[:1]))[0] for k in range(40)])
    assert (outs == np.asarray(x[0])).all(axis=(1, 2, 3)).sum() < 10  # mostly moved or flipped
    assert (outs == 0).any()  # some padding shows


def _in_memory(n=50, batch=8, **kw):
    images = np.arange(n, dtype=np.float32)[:, None, None, None] * np.ones((1, 4, 4, 1), np.float32)
    labels = np.arange(n, dtype=np.int32)
    return InMemoryData(images, labels, batch_size=batch, mesh=parallel.make_mesh(), **kw)


def test_in_memory_epochs_cover_every_example_and_resume_at_any_step():
    data = _in_memory(seed=3)
    assert data.steps_per_epoch == 7  # 50 examples, batches of 8, the last topped up
    epoch0 = [np.asarray(y) for _, y in data.epoch(0)]
    assert set(np.concatenate(epoch0).tolist()) == set(range(50))
    for x, y in data.epoch(0):
        np.testing.assert_array_equal(np.asarray(x)[:, 0, 0, 0], np.asarray(y))  # images travel with labels
    again = [np.asarray(y) for _, y in data.epoch(0)]
    assert all(np.array_equal(a, b) for a, b in zip(epoch0, again))
    epoch1 = [np.asarray(y) for _, y in data.epoch(1)]
    assert not all(np.array_equal(a, b) for a, b in zip(epoch0, epoch1))
    tail = [np.asarray(y) for _, y in data.epoch(0, start_step=4)]
    assert len(tail) == 3 and all(np.array_equal(a, b) for a, b in zip(tail, epoch0[4:]))
    assert _in_memory(drop_last=True).steps_per_epoch == 6


def test_in_memory_augmentation_depends_on_the_global_step_only():
    data = _in_memory(augment=True, padding=1, seed=0)
    full = [np.asarray(x) for x, _ in data.epoch(2)]
    tail = [np.asarray(x) for x, _ in data.epoch(2, start_step=5)]
    np.testing.assert_array_equal(tail[0], full[5])
    np.testing.assert_array_equal(tail[1], full[6])
    plain = [np.asarray(x) for x, _ in _in_memory(seed=0).epoch(2)]
    assert not np.array_equal(full[0], plain[0])
    assert data.describe()["augment"] and data.describe()["steps_per_epoch"] == 7


def test_in_memory_evaluation_pads_and_marks_the_padding():
    images = np.random.default_rng(0).normal(size=(23, 2, 2, 1)).astype(np.float32)
    ev = InMemoryEval(images, np.arange(23) % 3, parallel.make_mesh(), batch_size=10)
    batches = [tuple(np.asarray(a) for a in b) for b in ev.batches()]
    assert [b[0].shape[0] for b in batches] == [10, 10, 10]
    valid = np.concatenate([b[2] for b in batches])
    assert valid.sum() == 23 and not valid[23:].any()
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches])[:23], images)


def test_prefetch_yields_every_batch_in_order_and_raises_producer_errors():
    sharding = parallel.batch_sharding(parallel.make_mesh())
    local = [(np.full((4, 2), i, np.float32), np.full(4, i, np.int32)) for i in range(5)]
    got = list(prefetch_to_mesh(iter(local), sharding, size=2))
    assert [int(np.asarray(y)[0]) for _, y in got] == list(range(5))
    assert all(isinstance(x, jax.Array) for x, _ in got)

    def broken():
        yield local[0]
        raise ValueError("decoder died on file 7")

    it = prefetch_to_mesh(broken(), sharding, size=2)
    next(it)
    with pytest.raises(ValueError, match="file 7"):
        next(it)
    # leaving early stops the producer thread
    early = prefetch_to_mesh(iter(local * 100), sharding, size=1)
    next(early)
    early.close()


def test_host_data_resumes_where_asked():
    calls = []

    def local_epoch(epoch, start):
        calls.append((epoch, start))
        for s in range(start, 3):
            yield np.full((4, 1), 10 * epoch + s, np.float32), np.zeros(4, np.int32)

    data = HostData(local_epoch, 4, 3, parallel.make_mesh())
    got = [float(np.asarray(x)[0, 0]) for x, _ in data.epoch(2, start_step=1)]
    assert got == [21.0, 22.0] and calls == [(2, 1)]
