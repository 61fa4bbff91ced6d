"""Input pipelines for the sharded trainer: data on device, or fed by the host.

The trainer asks a *training source* for an epoch's batches, starting at any
step (that is how a resumed run continues exactly), and an *evaluation source*
for padded batches with a validity mask. Every batch is a pair of global
arrays sharded along the mesh's ``data`` axis.

* :class:`InMemoryData`: the whole split held on every device (CIFAR is
  150 MB of uint8, 600 MB as float32); each step gathers its rows there and,
  for training, applies the reference's augmentation on device in the same
  jitted call (:func:`crop_flip`: 4-pixel pad with the value of a black pixel
  after normalisation, random crop, horizontal flip). The order of an epoch is
  a permutation drawn from ``(seed, epoch)`` and the augmentation of step *s*
  from ``(seed, s)``, so any step can be reproduced without replaying the ones
  before it.
* :class:`HostData`: batches produced on the host (the Grain ImageFolder
  pipeline, :mod:`isotpp.data.imagefolder`), each process loading only its
  slice of every global batch; a background thread assembles the global
  arrays and keeps ``prefetch`` of them in flight (:func:`prefetch_to_mesh`).
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from isotpp import parallel
from isotpp.errors import UserError

Batch = tuple[jax.Array, jax.Array]  # (images, labels), global arrays
EvalBatch = tuple[jax.Array, jax.Array, jax.Array]  # (images, labels, valid)


class TrainSource(Protocol):
    """What :class:`isotpp.training.sharded.Trainer` trains on."""

    global_batch_size: int
    steps_per_epoch: int

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]: ...

    def describe(self) -> dict[str, Any]: ...


class EvalSource(Protocol):
    """What the trainer evaluates on: every example once, padding marked invalid."""

    def batches(self) -> Iterator[EvalBatch]: ...


# --------------------------------------------------------------------------
# On-device augmentation.
# --------------------------------------------------------------------------


def pad_fill(mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """The normalised value of a black (0) pixel, per channel: ``-mean / std``.

    The reference pads the *raw* image with zeros before normalising, so a
    normalised image is padded with this value instead.
    """
    return -np.asarray(mean, np.float32) / np.asarray(std, np.float32)


def crop_flip(images: jax.Array, dy: jax.Array, dx: jax.Array, flip: jax.Array, *, padding: int = 4,
              fill: Any = 0.0) -> jax.Array:
    """Pad by ``padding`` with ``fill`` (per channel), crop the window at (dy, dx), flip where ``flip``.

    The deterministic core of ``RandomCrop(H, padding) + RandomHorizontalFlip``
    for an NHWC batch; ``isotpp.data.cifar.random_crop_flip`` is its NumPy twin.
    """
    n, h, w, c = images.shape
    fill = jnp.broadcast_to(jnp.asarray(fill, images.dtype), (c,))
    padded = jnp.broadcast_to(fill, (n, h + 2 * padding, w + 2 * padding, c))
    padded = padded.at[:, padding : padding + h, padding : padding + w].set(images)

    def one(img, y0, x0, f):
        out = jax.lax.dynamic_slice(img, (y0, x0, 0), (h, w, c))
        return jnp.where(f, out[:, ::-1], out)

    return jax.vmap(one)(padded, dy, dx, flip)


def random_crop_flip(key: jax.Array, images: jax.Array, *, padding: int = 4, fill: Any = 0.0) -> jax.Array:
    """:func:`crop_flip` with offsets uniform in [0, 2·padding] and flips with probability 1/2."""
    n = images.shape[0]
    k_y, k_x, k_f = jax.random.split(key, 3)
    dy = jax.random.randint(k_y, (n,), 0, 2 * padding + 1)
    dx = jax.random.randint(k_x, (n,), 0, 2 * padding + 1)
    flip = jax.random.bernoulli(k_f, 0.5, (n,))
    return crop_flip(images, dy, dx, flip, padding=padding, fill=fill)


# --------------------------------------------------------------------------
# Data held on device.
# --------------------------------------------------------------------------


@dataclasses.dataclass
class InMemoryData:
    """A training split on every device, batched (and augmented) there.

    ``images`` NHWC (float32, normalised) and int ``labels`` on the host;
    ``batch_size`` is the global batch. ``augment`` turns on the CIFAR
    augmentation (pad ``padding`` with ``fill``, crop, flip). With
    ``drop_last=False`` (the default, as :func:`isotpp.data.pipeline.epoch_batches`)
    the last batch is topped up with examples from the start of the epoch's
    permutation so every example is seen and every batch has the same shape.
    """

    images: Any
    labels: Any
    batch_size: int
    mesh: Mesh
    seed: int = 0
    augment: bool = False
    padding: int = 4
    fill: Any = 0.0
    drop_last: bool = False

    def __post_init__(self):
        n = int(np.shape(self.labels)[0])
        if np.shape(self.images)[0] != n:
            raise UserError(f"{np.shape(self.images)[0]} images but {n} labels: they must match")
        parallel.check_batch_size(self.batch_size, self.mesh)
        if self.batch_size > n:
            raise UserError(f"batch size {self.batch_size} exceeds the {n} training examples: lower the batch size "
                            f"to at most {n} or use more training examples")
        self.num_examples = n
        self.steps_per_epoch = n // self.batch_size if self.drop_last else -(-n // self.batch_size)
        if self.steps_per_epoch == 0:
            raise UserError(f"batch size {self.batch_size} exceeds the {n} training examples: lower it")
        self.global_batch_size = self.batch_size
        self._images = parallel.put_replicated(np.asarray(self.images), self.mesh)
        self._labels = parallel.put_replicated(np.asarray(self.labels, np.int32), self.mesh)
        self._fill = np.broadcast_to(np.asarray(self.fill, np.float32), (np.shape(self.images)[-1],)).copy()
        key = jax.random.key(self.seed)
        self._order_key, self._augment_key = jax.random.split(key)
        rep, bat = parallel.replicated(self.mesh), parallel.batch_sharding(self.mesh)
        batch, drop_last = self.batch_size, self.drop_last
        self._order = jax.jit(lambda k, e: epoch_batches(k, n, batch, epoch=e, drop_last=drop_last), out_shardings=rep)
        self._take = jax.jit(self._take_fn, out_shardings=(bat, bat))

    def _take_fn(self, images, labels, order, step, global_step):
        idx = order[step]
        x, y = images[idx], labels[idx]
        if self.augment:
            key = jax.random.fold_in(self._augment_key, global_step)
            x = random_crop_flip(key, x, padding=self.padding, fill=self._fill)
        return x, y

    def epoch_order(self, epoch: int) -> jax.Array:
        """The (steps, batch) example indices of ``epoch``."""
        return self._order(self._order_key, np.int32(epoch))

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        order = self.epoch_order(epoch)
        for step in range(start_step, self.steps_per_epoch):
            global_step = epoch * self.steps_per_epoch + step
            yield self._take(self._images, self._labels, order, np.int32(step), np.int32(global_step))

    def describe(self) -> dict[str, Any]:
        return {"kind": "in_memory", "examples": self.num_examples, "global_batch_size": self.batch_size,
                "steps_per_epoch": self.steps_per_epoch, "seed": self.seed, "augment": self.augment,
                "padding": self.padding, "fill": self._fill.tolist(), "drop_last": self.drop_last}


@dataclasses.dataclass
class InMemoryEval:
    """An evaluation split on every device, served in padded global batches of ``batch_size``."""

    images: Any
    labels: Any
    mesh: Mesh
    batch_size: int = 1000

    def __post_init__(self):
        n = int(np.shape(self.labels)[0])
        if n == 0:
            raise UserError("the evaluation set is empty: check the data")
        devices = self.mesh.devices.size  # every device of every process
        self.batch_size = -(-min(self.batch_size, n) // devices) * devices  # a multiple of the devices
        chunks = -(-n // self.batch_size)
        pad = chunks * self.batch_size - n
        images = np.asarray(self.images)
        labels = np.asarray(self.labels, np.int32)
        if pad:
            images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
            labels = np.concatenate([labels, np.zeros(pad, np.int32)])
        self.num_examples, self._chunks = n, chunks
        self._images = parallel.put_replicated(images, self.mesh)
        self._labels = parallel.put_replicated(labels, self.mesh)
        bat = parallel.batch_sharding(self.mesh)
        bs = self.batch_size

        def take(images, labels, i):
            start = i * bs
            x = jax.lax.dynamic_slice_in_dim(images, start, bs)
            y = jax.lax.dynamic_slice_in_dim(labels, start, bs)
            return x, y, (start + jnp.arange(bs)) < n

        self._take = jax.jit(take, out_shardings=(bat, bat, bat))

    def batches(self) -> Iterator[EvalBatch]:
        for i in range(self._chunks):
            yield self._take(self._images, self._labels, np.int32(i))


# --------------------------------------------------------------------------
# Data fed by the host.
# --------------------------------------------------------------------------

_END = object()


def prefetch_to_mesh(batches: Iterable[Any], sharding, size: int = 2) -> Iterator[Any]:
    """Global arrays from process-local host batches, ``size`` of them assembled ahead in a thread.

    Errors in the producer (a corrupt file, a dead worker) are re-raised in
    the consumer, at the batch where they happened.
    """
    if size <= 0:
        for local in batches:
            yield parallel.global_batch_from_local(local, sharding)
        return
    q: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()

    def produce():
        try:
            for local in batches:
                if stop.is_set():
                    return
                q.put(parallel.global_batch_from_local(local, sharding))
            q.put(_END)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which re-raises it
            q.put(e)

    thread = threading.Thread(target=produce, daemon=True, name="isotpp-prefetch")
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


@dataclasses.dataclass
class HostData:
    """Training batches loaded on the host, this process's slice of each global batch.

    ``local_epoch(epoch, start_step)`` yields (images, labels) NumPy pairs of
    ``global_batch_size // process_count`` examples, deterministic in (epoch,
    step); they are turned into global arrays sharded over ``mesh``.
    """

    local_epoch: Callable[[int, int], Iterable[tuple[np.ndarray, np.ndarray]]]
    global_batch_size: int
    steps_per_epoch: int
    mesh: Mesh
    prefetch: int = 2
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        parallel.check_batch_size(self.global_batch_size, self.mesh)

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        local = self.local_epoch(epoch, start_step)
        return prefetch_to_mesh(local, parallel.batch_sharding(self.mesh), self.prefetch)

    def describe(self) -> dict[str, Any]:
        return {"kind": "host", "global_batch_size": self.global_batch_size,
                "steps_per_epoch": self.steps_per_epoch, "prefetch": self.prefetch, **self.info}


@dataclasses.dataclass
class HostEval:
    """Evaluation batches loaded on the host: (images, labels, valid) local slices."""

    local_batches: Callable[[], Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]]
    mesh: Mesh
    prefetch: int = 2

    def batches(self) -> Iterator[EvalBatch]:
        return prefetch_to_mesh(self.local_batches(), parallel.batch_sharding(self.mesh), self.prefetch)


def epoch_batches(key, n_examples: int, batch_size: int, *, epoch=None, drop_last: bool = False) -> jax.Array:
    """The engine's one epoch order: a shuffled (steps, batch) index array.

    The permutation is drawn from ``key`` (from ``fold_in(key, epoch)`` when
    ``epoch`` is given: any epoch's order without drawing the ones before it).
    With ``drop_last=False`` the last partial batch is filled up with examples
    from the start of the permutation (every example is seen at least once and
    every batch has the same size, which ``lax.scan`` needs). Both regimes use
    it: :meth:`RunGroup.train_epoch` and the sharded trainer's in-memory source
    (:class:`isotpp.data.pipeline.InMemoryData`).
    """
    if epoch is not None:
        key = jax.random.fold_in(key, epoch)
    perm = jax.random.permutation(key, n_examples)
    steps = n_examples // batch_size if drop_last else -(-n_examples // batch_size)
    if steps == 0:
        raise UserError(f"batch size {batch_size} exceeds the {n_examples} training examples: lower it")
    total = steps * batch_size
    if total > n_examples:
        perm = jnp.concatenate([perm, perm[: total - n_examples]])
    return perm[:total].reshape(steps, batch_size)
