"""ImageFolder trees through Grain, on a small generated JPEG tree."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from isotpp.data.imagefolder import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalTransform,
    ImageFolderLoader,
    TrainTransform,
    imagefolder_data,
    random_resized_crop_box,
    scan_imagefolder,
    train_order,
)
from isotpp.errors import DataError

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("cat", "dog", "eel")


@pytest.fixture
def tree(tmp_path, image_tree) -> Path:
    return image_tree(tmp_path / "imagenet", classes=CLASSES, splits=(("train", 6), ("val", 2)), sides=(30, 60),
                      extensions=(".JPEG", ".jpg", ".png"), junk=True)


def _normalize(pixels):
    return (pixels.astype(np.float32) / 255.0 - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD,
                                                                                                    np.float32)


def test_scan_finds_classes_files_and_labels(tree):
    train = scan_imagefolder(tree / "train")
    assert train.classes == CLASSES and len(train) == 18 and train.num_classes == 3
    assert train.files[:3] == ("cat/img0.JPEG", "cat/img1.jpg", "cat/img2.png")
    assert train.labels == tuple(np.repeat([0, 1, 2], 6))
    path, label = train[7]
    assert path == str(tree / "train" / "dog" / "img1.jpg") and label == 1
    val = scan_imagefolder(tree / "val", classes=train.classes)
    assert len(val) == 6
    (tree / "val" / "fox").mkdir()
    with pytest.raises(DataError, match="class directories the training split lacks \\(fox\\)"):
        scan_imagefolder(tree / "val", classes=train.classes)
    with pytest.raises(DataError, match="does not exist"):
        scan_imagefolder(tree / "nowhere")
    (tree / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        scan_imagefolder(tree / "empty")


def test_random_resized_crop_follows_torchvision():
    rng = np.random.default_rng(0)
    for _ in range(300):
        top, left, h, w = random_resized_crop_box(64, 48, rng)
        assert 0 <= top and top + h <= 48 and 0 <= left and left + w <= 64
        assert 0.08 * 0.9 <= h * w / (64 * 48) <= 1.0
        assert 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1
    # no allowed crop fits in 10 tries: the central crop of the closest allowed ratio
    assert random_resized_crop_box(1000, 10, rng) == (0, (1000 - 13) // 2, 10, 13)
    assert random_resized_crop_box(10, 1000, rng) == ((1000 - 13) // 2, 0, 13, 10)


def test_transforms_by_hand(tree):
    path = str(tree / "train" / "cat" / "img0.JPEG")
    src = Image.open(path).convert("RGB")
    w, h = src.size
    # eval: torchvision's Resize(256) (the shorter side; the longer one truncated) then CenterCrop(224)
    ow, oh = (256, int(256 * h / w)) if w <= h else (int(256 * w / h), 256)
    resized = src.resize((ow, oh), Image.Resampling.BILINEAR)
    top, left = round((oh - 224) / 2.0), round((ow - 224) / 2.0)
    expected = _normalize(np.asarray(resized.crop((left, top, left + 224, top + 224))))
    image, label, valid = EvalTransform()((path, 4, True))
    assert image.shape == (224, 224, 3) and image.dtype == np.float32 and label == 4 and valid
    np.testing.assert_allclose(image, expected, rtol=1e-6, atol=1e-6)
    # train, with the crop forced to the whole image: the resized image or its mirror, decided per position
    whole = TrainTransform(seed=0, epoch=0, size=32, scale=(1.0, 1.0), ratio=(w / h, w / h))
    plain = _normalize(np.asarray(src.resize((32, 32), Image.Resampling.BILINEAR)))
    outs = [whole((path, 0, position))[0] for position in range(12)]
    flipped = [np.allclose(o, plain[:, ::-1], atol=1e-5) for o in outs]
    kept = [np.allclose(o, plain, atol=1e-5) for o in outs]
    assert all(a or b for a, b in zip(flipped, kept)) and any(flipped) and any(kept)
    np.testing.assert_array_equal(whole((path, 0, 3))[0], outs[3])  # deterministic in (seed, epoch, position)


def test_train_batches_are_deterministic_sharded_and_resumable(tree):
    folder = scan_imagefolder(tree / "train")
    loader = ImageFolderLoader(folder, 6, seed=1, shard=(0, 1), size=16)
    assert loader.steps_per_epoch == 3 and loader.local_batch_size == 6
    epoch0 = list(loader.train_epoch(0))
    assert len(epoch0) == 3 and epoch0[0][0].shape == (6, 16, 16, 3) and epoch0[0][1].dtype == np.int32
    indices, _ = train_order(len(folder), 6, 1, 0, (0, 1))
    np.testing.assert_array_equal(np.concatenate([y for _, y in epoch0]), np.asarray(folder.labels)[indices])
    assert sorted(indices.tolist()) == list(range(18))
    again = list(loader.train_epoch(0))
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(epoch0, again))
    epoch1 = list(loader.train_epoch(1))
    assert not np.array_equal(epoch0[0][1], epoch1[0][1]) or not np.array_equal(epoch0[0][0], epoch1[0][0])
    # resuming at step 2 loads only the last batch, identical
    tail = list(loader.train_epoch(0, start_step=2))
    assert len(tail) == 1 and np.array_equal(tail[0][0], epoch0[2][0])
    # two processes: each loads half of every global batch; together the same batch
    halves = [list(ImageFolderLoader(folder, 6, seed=1, shard=(p, 2), size=16).train_epoch(0)) for p in (0, 1)]
    for step in range(3):
        assert halves[0][step][0].shape[0] == 3
        np.testing.assert_array_equal(np.concatenate([halves[0][step][0], halves[1][step][0]]), epoch0[step][0])


def test_worker_processes_give_the_same_batches(tree):
    folder = scan_imagefolder(tree / "train")
    serial = list(ImageFolderLoader(folder, 6, seed=2, workers=0, size=16, shard=(0, 1)).train_epoch(0))
    parallel = list(ImageFolderLoader(folder, 6, seed=2, workers=2, size=16, shard=(0, 1)).train_epoch(0))
    assert len(serial) == len(parallel) == 3
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def test_eval_batches_cover_every_image_once(tree):
    val = scan_imagefolder(tree / "val", classes=CLASSES)
    batches = list(ImageFolderLoader(val, 4, size=8, resize=10, shard=(0, 1)).eval_batches())
    assert [b[0].shape for b in batches] == [(4, 8, 8, 3)] * 2
    valid = np.concatenate([b[2] for b in batches])
    assert valid.tolist() == [True] * 6 + [False] * 2
    assert np.concatenate([b[1] for b in batches])[:6].tolist() == list(val.labels)


def test_a_corrupt_image_is_a_data_error_naming_the_file(tree):
    bad = tree / "train" / "dog" / "img3.JPEG"
    bad.write_bytes(bad.read_bytes()[:120])
    folder = scan_imagefolder(tree / "train")
    for workers in (0, 1):
        with pytest.raises(DataError, match=f"cannot decode image {bad}.*replace or delete the file"):
            for _ in ImageFolderLoader(folder, 18, seed=0, workers=workers, size=8, shard=(0, 1)).train_epoch(0):
                pass


def test_imagefolder_feeds_the_trainer(tree):
    import jax
    from flax import nnx

    from isotpp import parallel
    from isotpp.training.engine import reference_sgd
    from isotpp.training.sharded import TrainConfig, Trainer

    class Tiny(nnx.Module):
        def __init__(self):
            rngs = nnx.Rngs(0)
            self.conv = nnx.Conv(3, 4, (3, 3), strides=(2, 2), rngs=rngs)
            self.bn = nnx.BatchNorm(4, rngs=rngs)
            self.fc = nnx.Linear(4, 3, rngs=rngs)

        def __call__(self, x):
            return self.fc(jax.nn.relu(self.bn(self.conv(x))).mean((1, 2)))

    train, evaluation, classes = imagefolder_data(tree, global_batch_size=6, mesh=parallel.make_mesh(), seed=0,
                                                  eval_batch_size=4, size=16, resize=18)  # fmt: skip
    assert classes == 3 and train.steps_per_epoch == 3 and train.describe()["train_images"] == 18
    trainer = Trainer(Tiny(), reference_sgd(0.1), train, TrainConfig(epochs=2, lr_schedule="0.1", progress=False),
                      eval_data=evaluation)  # fmt: skip
    history, _ = trainer.fit()
    assert len(history) == 2 and trainer.step == 6
    assert 0.0 <= history[-1]["test_acc"] <= 100.0 and math.isfinite(history[-1]["test_loss"])
    # 6 val images, every one counted once: accuracy is a multiple of 100/6
    assert abs(history[-1]["test_acc"] * 6 / 100 - round(history[-1]["test_acc"] * 6 / 100)) < 1e-6


def test_train_imagenet_entry_point(tree, tmp_path):
    sys.path.insert(0, str(REPO / "experiments"))
    try:
        import train_imagenet
    finally:
        sys.path.pop(0)
    work = tmp_path / "run"
    # the glue only: a tiny MLP on 16x16 crops (the ImageNet ResNets are tested with the model zoo)
    args = ["--model", "mlp", "--width-scale", "0.05", "--data-dir", str(tree), "--workers", "0",
            "--image-size", "16", "--resize", "18", "--batch-size", "6", "--epochs", "1", "--lr-schedule", "0.01",
            "--no-progress", "--workdir", str(work)]  # fmt: skip
    assert train_imagenet.main(args) == 0
    results = json.loads((work / "results.json").read_text())
    assert results["steps"] == 3 and results["model"] == "mlp"
    assert json.loads((work / "config.json").read_text())["data"]["kind"] == "imagefolder"
    with pytest.raises(SystemExit) as refused:  # a missing --data-dir is refused while parsing
        train_imagenet.main([a if a != str(tree) else str(tmp_path / "missing") for a in args])
    assert refused.value.code == 2
