"""ImageNet-style ImageFolder trees through Grain: ``<root>/<class>/<image>``.

``train/<class>/*.JPEG`` and ``val/<class>/*.JPEG`` as torchvision's
``ImageFolder`` reads them (classes are the sorted sub-directory names, files
sorted within a class), with torchvision's standard transforms computed with
Pillow:

* train: ``RandomResizedCrop(224, scale=(0.08, 1), ratio=(3/4, 4/3))`` with
  bilinear resampling, ``RandomHorizontalFlip()``, ``ToTensor``,
  ``Normalize(ImageNet mean, std)``;
* eval: ``Resize(256)`` (shorter side), ``CenterCrop(224)``, the same
  normalisation.

Decoding and augmentation run in Grain worker processes (``workers``). The
order is deterministic: epoch *e* visits a permutation drawn from
``(seed, e)``, dropping the last incomplete global batch; the random crop and
flip of the example at position *g* of the epoch come from ``(seed, e, g)``.
Process *p* of *P* loads the *p*-th slice of every global batch (so the global
batch, and the training, do not depend on how many processes or workers load
it), and an epoch can start at any step (exact resumption) without decoding
the images before it. A file that cannot be decoded stops the run with a
:class:`~isotpp.errors.DataError` naming it.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from isotpp import parallel
from isotpp.data.pipeline import HostData, HostEval
from isotpp.errors import DataError, UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


# --------------------------------------------------------------------------
# The tree.
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ImageFolder:
    """The files of one split and their labels; a Grain random-access data source."""

    root: str
    classes: tuple[str, ...]
    files: tuple[str, ...]  # paths relative to root
    labels: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[str, int]:
        return os.path.join(self.root, self.files[index]), self.labels[index]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def scan_imagefolder(root: str | Path, classes: Sequence[str] | None = None) -> ImageFolder:
    """Index ``root/<class>/<image>``; ``classes`` fixes the class order (pass the train split's to val)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist: "
                        "point --data-dir at the directory holding train/ and val/")
    found = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if classes is None:
        classes = found
    else:
        classes = tuple(classes)
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise DataError(f"{root} has class directories the training split lacks ({', '.join(unknown[:3])}): "
                            "use matching train/ and val/ trees")  # fmt: skip
    index = {c: i for i, c in enumerate(classes)}
    files, labels = [], []
    for c in found:
        names = sorted(e.name for e in os.scandir(root / c)
                       if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))  # fmt: skip
        files += [f"{c}/{n}" for n in names]
        labels += [index[c]] * len(names)
    if not files:
        raise DataError(f"no images under {root}/<class>/ (extensions {', '.join(IMAGE_EXTENSIONS[:3])}, …): "
                        "check the path")  # fmt: skip
    return ImageFolder(str(root), tuple(classes), tuple(files), tuple(labels))


# --------------------------------------------------------------------------
# Transforms (torchvision's, with Pillow).
# --------------------------------------------------------------------------


def decode(path: str):
    """The image at ``path`` as an RGB PIL image, or a DataError naming the file."""

    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot decode image {path} ({e}): replace or delete the file") from None


def random_resized_crop_box(width: int, height: int, rng: np.random.Generator,
                            scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """torchvision's ``RandomResizedCrop.get_params``: (top, left, height, width) of the crop."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height  # fallback: the central crop of the closest allowed ratio
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        h, w = height, round(height * max(ratio))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _normalize(pixels: np.ndarray, mean, std) -> np.ndarray:
    out = pixels.astype(np.float32) / np.float32(255.0)
    out -= np.asarray(mean, np.float32)
    out /= np.asarray(std, np.float32)
    return out


@dataclasses.dataclass(frozen=True)
class TrainTransform:
    """(path, label, position) -> (image HWC float32, label): random-resized crop, flip, normalise."""

    seed: int
    epoch: int
    size: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __call__(self, record):
        path, label, position = record
        rng = np.random.default_rng([self.seed, self.epoch, position])
        img = decode(path)
        top, left, h, w = random_resized_crop_box(img.width, img.height, rng, self.scale, self.ratio)
        img = img.resize((self.size, self.size), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h))
        pixels = np.asarray(img)
        if rng.random() < 0.5:
            pixels = pixels[:, ::-1]
        return _normalize(pixels, self.mean, self.std), np.int32(label)


@dataclasses.dataclass(frozen=True)
class EvalTransform:
    """(path, label, valid) -> (image, label, valid): resize the shorter side, centre crop, normalise."""

    size: int = 224
    resize: int = 256
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __call__(self, record):
        path, label, valid = record
        img = decode(path)
        w, h = img.size
        if w <= h:  # torchvision's Resize(int): the shorter side becomes `resize`
            ow, oh = self.resize, int(self.resize * h / w)
        else:
            oh, ow = self.resize, int(self.resize * w / h)
        img = img.resize((ow, oh), Image.Resampling.BILINEAR)
        top = round((oh - self.size) / 2.0)
        left = round((ow - self.size) / 2.0)
        img = img.crop((left, top, left + self.size, top + self.size))
        return _normalize(np.asarray(img), self.mean, self.std), np.int32(label), np.bool_(valid)


@dataclasses.dataclass(frozen=True)
class PlainTrainTransform:
    """(path, label, position) -> (image, label) under the eval transform: training without augmentation."""

    size: int = 224
    resize: int = 256

    def __call__(self, record):
        path, label, _ = record
        image, label, _ = EvalTransform(self.size, self.resize)((path, label, True))
        return image, label


# --------------------------------------------------------------------------
# Deterministic, sharded order.
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Records:
    """A Grain data source of (path, label, extra) for a list of folder indices."""

    folder: ImageFolder
    indices: np.ndarray
    extra: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        path, label = self.folder[int(self.indices[i])]
        return path, label, self.extra[i].item()


def _shard(shard: tuple[int, int] | None) -> tuple[int, int]:
    if shard is None:
        import grain  # here, not at the top: importing grain takes ~3 s and only ImageFolder runs need it

        opts = grain.sharding.ShardByJaxProcess(drop_remainder=True)
        return opts.shard_index, opts.shard_count
    index, count = int(shard[0]), int(shard[1])
    if not 0 <= index < count:
        raise UserError(f"shard {index} of {count} does not exist: use 0 <= index < count")
    return index, count


def train_order(n: int, global_batch: int, seed: int, epoch: int,
                shard: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(folder indices, positions in the epoch) this shard loads, batch after batch, for one epoch."""
    index, count = shard
    steps = n // global_batch
    perm = np.random.default_rng([seed, epoch]).permutation(n)[: steps * global_batch]
    local = global_batch // count
    positions = np.arange(steps * global_batch).reshape(steps, count, local)[:, index].reshape(-1)
    return perm[positions], positions


def _grain_batches(source, transform, local_batch: int, workers: int) -> Iterator[Any]:
    import grain  # here, not at the top: importing grain takes ~3 s and only ImageFolder runs need it

    ds = grain.MapDataset.source(source).map(transform).batch(local_batch, drop_remainder=True)
    it = ds.to_iter_dataset()
    if workers > 0:
        from absl import flags  # grain's dependency, loaded with it

        # Grain's workers read absl flags (their defaults suit us); a program that does not
        # run absl.app must mark them parsed or the first read fails.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    iterator = iter(it)
    try:
        yield from iterator
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()


@dataclasses.dataclass
class ImageFolderLoader:
    """Grain loaders over one ImageFolder split: this process's slice of every global batch.

    ``shard`` = (index, count) of this process among those loading (default:
    ``grain.sharding.ShardByJaxProcess``); ``global_batch_size`` must divide by
    the count. ``augment=False`` trains on the eval transform (resize, centre crop).
    """

    folder: ImageFolder
    global_batch_size: int
    seed: int = 0
    workers: int = 0
    shard: tuple[int, int] | None = None
    size: int = 224
    resize: int = 256
    augment: bool = True

    def __post_init__(self):
        self.shard = _shard(self.shard)
        if self.global_batch_size <= 0 or self.global_batch_size % self.shard[1]:
            raise UserError(f"global batch size {self.global_batch_size} does not divide over {self.shard[1]} "
                            "processes: use a multiple of the process count")  # fmt: skip
        self.local_batch_size = self.global_batch_size // self.shard[1]
        self.steps_per_epoch = len(self.folder) // self.global_batch_size

    def train_epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(images (b, size, size, 3) float32, labels (b,) int32) for steps start_step … of ``epoch``."""
        if self.steps_per_epoch == 0:
            raise UserError(f"batch size {self.global_batch_size} exceeds the {len(self.folder)} images: lower it")
        indices, positions = train_order(len(self.folder), self.global_batch_size, self.seed, epoch, self.shard)
        skip = start_step * self.local_batch_size
        source = _Records(self.folder, indices[skip:], positions[skip:])
        transform = (TrainTransform(self.seed, epoch, self.size) if self.augment
                     else PlainTrainTransform(self.size, self.resize))  # fmt: skip
        return _grain_batches(source, transform, self.local_batch_size, self.workers)

    def eval_batches(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(images, labels, valid) covering every image once; the last global batch padded (valid False)."""
        n, bs = len(self.folder), self.global_batch_size
        chunks = -(-n // bs)
        index, count = self.shard
        local = bs // count
        slots = np.arange(chunks * bs).reshape(chunks, count, local)[:, index].reshape(-1)
        valid = slots < n
        source = _Records(self.folder, np.where(valid, slots, 0), valid)
        return _grain_batches(source, EvalTransform(self.size, self.resize), local, self.workers)


def _check_workers(workers: int) -> None:
    if workers < 0:
        raise UserError(f"the number of loader workers must be >= 0, got {workers}")


def imagefolder_train_source(folder: ImageFolder, *, global_batch_size: int, mesh, seed: int = 0, workers: int = 0,
                             prefetch: int = 2, shard: tuple[int, int] | None = None, size: int = 224,
                             resize: int = 256, augment: bool = True, info: dict[str, Any] | None = None):
    """The trainer's training source over a scanned split (scan once, then one source per seed)."""

    _check_workers(workers)
    loader = ImageFolderLoader(folder, global_batch_size, seed=seed, workers=workers, shard=shard, size=size,
                               resize=resize, augment=augment)
    info = {"kind": "imagefolder", "root": str(Path(folder.root).parent), "train_images": len(folder),
            "classes": folder.num_classes, "seed": seed, "workers": workers, "size": size, **(info or {})}
    return HostData(loader.train_epoch, global_batch_size, loader.steps_per_epoch, mesh, prefetch, info)


def imagefolder_eval_source(folder: ImageFolder, *, batch_size: int, mesh, workers: int = 0, prefetch: int = 2,
                            shard: tuple[int, int] | None = None, size: int = 224, resize: int = 256):
    """The trainer's evaluation source over a scanned split: every image once, under the eval transform."""

    _check_workers(workers)
    parallel.check_batch_size(batch_size, mesh)
    loader = ImageFolderLoader(folder, batch_size, workers=workers, shard=shard, size=size, resize=resize)
    return HostEval(loader.eval_batches, mesh, prefetch)


def imagefolder_data(root: str | Path, *, global_batch_size: int, mesh, seed: int = 0, workers: int = 0,
                     eval_batch_size: int | None = None, prefetch: int = 2, shard: tuple[int, int] | None = None,
                     size: int = 224, resize: int = 256):
    """(train source, eval source, number of classes) for the trainer from ``root/train`` and ``root/val``."""
    _check_workers(workers)
    root = Path(root)
    train = scan_imagefolder(root / "train")
    val = scan_imagefolder(root / "val", classes=train.classes)
    common = {"workers": workers, "prefetch": prefetch, "shard": shard, "size": size, "resize": resize}
    evaluation = imagefolder_eval_source(val, batch_size=eval_batch_size or global_batch_size, mesh=mesh, **common)
    train_source = imagefolder_train_source(train, global_batch_size=global_batch_size, mesh=mesh, seed=seed,
                                            info={"root": str(root), "val_images": len(val)}, **common)
    return train_source, evaluation, train.num_classes
