"""Two JAX processes on loopback (2 CPU devices each) train like one process.

The test starts this file twice as a script, with the environment a launcher
sets (``ISOTPP_DISTRIBUTED=1``, ``JAX_COORDINATOR_ADDRESS=127.0.0.1:PORT``,
``JAX_NUM_PROCESSES=2``, ``JAX_PROCESS_ID=i``); each process calls
:func:`isotpp.parallel.initialize`, i.e. ``jax.distributed.initialize(
coordinator_address="127.0.0.1:PORT", num_processes=2, process_id=i)``
(cross-process collectives on CPU: gloo), then

* loads its shard of a generated JPEG tree with the Grain ImageFolder loader
  (shards chosen by ``ShardByJaxProcess``) and assembles the global batch from
  the two process-local slices;
* trains a small BatchNorm CNN with the trainer on 4 devices over 2 processes,
  checkpointing on shared storage (the tmp dir), then resumes for one more
  epoch from that checkpoint.

The parent compares with the same training in one process on one device.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

EPOCHS, BATCH, N_TRAIN = 2, 8, 32


def _tiny_cnn():
    import jax
    from flax import nnx

    class TinyCNN(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
            self.bn = nnx.BatchNorm(4, momentum=0.9, rngs=rngs)
            self.fc = nnx.Linear(4, 10, rngs=rngs)

        def __call__(self, x):
            return self.fc(jax.nn.relu(self.bn(self.conv(x))).mean((1, 2)))

    return TinyCNN(nnx.Rngs(0))


def _data():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(N_TRAIN, 8, 8, 1)).astype(np.float32)
    return images, rng.integers(0, 10, N_TRAIN).astype(np.int32)


def _train(workdir: Path | None, epochs: int, resume: bool = False):
    from isotpp import parallel
    from isotpp.data.pipeline import InMemoryData, InMemoryEval
    from isotpp.training.engine import reference_sgd
    from isotpp.training.sharded import TrainConfig, Trainer

    images, labels = _data()
    mesh = parallel.make_mesh()
    data = InMemoryData(images, labels, batch_size=BATCH, mesh=mesh, seed=3, augment=True)
    evaluation = InMemoryEval(images, labels, mesh, batch_size=12)
    config = TrainConfig(epochs=epochs, lr_schedule="0:0.1,1:0.05", checkpoint_every_steps=3, log_every_steps=1,
                         progress=False)  # fmt: skip
    trainer = Trainer(_tiny_cnn(), reference_sgd(0.1, 1e-4), data, config, workdir, eval_data=evaluation)
    history, _ = trainer.fit(resume=resume)
    return trainer, history


def _make_tree(root: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(1)
    for c in ("a", "b", "c"):
        for split in ("train", "val"):
            (root / split / c).mkdir(parents=True, exist_ok=True)
        for i in range(4):
            pixels = rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "train" / c / f"{i}.JPEG")
        Image.fromarray(pixels).save(root / "val" / c / "0.JPEG")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_like_one(tmp_path):
    tree = tmp_path / "images"
    _make_tree(tree)
    port = _free_port()
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    # what a launcher sets on each host (docs/launching.md): isotpp.parallel.initialize() reads it
    envs = [{**env, "ISOTPP_DISTRIBUTED": "1", "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
             "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(i)} for i in range(2)]  # fmt: skip
    procs = [subprocess.Popen([sys.executable, __file__, str(tmp_path)], env=envs[i], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]  # fmt: skip
    outs = []
    for p in procs:
        try:
            _out, err = p.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("the two processes did not finish in 300 s")
        outs.append(err)
    for i, p in enumerate(procs):
        assert p.returncode == 0, f"process {i} failed:\n{outs[i][-3000:]}"
    reports = [json.loads((tmp_path / f"proc{i}.json").read_text()) for i in range(2)]
    for i, r in enumerate(reports):
        assert (r["process_index"], r["process_count"], r["device_count"], r["local_devices"]) == (i, 2, 4, 2)

    # each process loaded half of every global batch; together they hold the one-process batch
    from isotpp.data.imagefolder import ImageFolderLoader, scan_imagefolder

    single = next(ImageFolderLoader(scan_imagefolder(tree / "train"), 4, seed=5, shard=(0, 1), size=16).train_epoch(1))
    assert reports[0]["global_labels"] == reports[1]["global_labels"] == single[1].tolist()
    assert reports[0]["local_labels"] + reports[1]["local_labels"] == single[1].tolist()
    np.testing.assert_allclose(reports[0]["local_sums"] + reports[1]["local_sums"], single[0].sum(axis=(1, 2, 3)),
                               rtol=1e-5)  # fmt: skip

    # only process 0 wrote logs; config.json knows the topology
    work = tmp_path / "work"
    config = json.loads((work / "config.json").read_text())
    assert config["devices"]["num_processes"] == 2 and config["devices"]["num_devices"] == 4
    records = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if "train_loss" in r] == [0, 1, 2]  # two epochs, then one resumed
    assert reports[0]["history"] == reports[1]["history"]

    # the same training in this process, on one device
    trainer, history = _train(None, EPOCHS)
    ref_losses = [r["train_loss"] for r in history]
    np.testing.assert_allclose([r["train_loss"] for r in reports[0]["history"][:EPOCHS]], ref_losses, rtol=1e-5)
    final = np.load(tmp_path / "params_after_2_epochs.npz")
    import jax

    for i, leaf in enumerate(jax.tree.leaves(trainer.state.params)):
        np.testing.assert_allclose(final[f"p{i}"], np.asarray(leaf), rtol=1e-4, atol=1e-6)
    assert reports[0]["final_step"] == reports[1]["final_step"] == (EPOCHS + 1) * (N_TRAIN // BATCH)


# --------------------------------------------------------------------------
# A worker process.
# --------------------------------------------------------------------------


def _worker(tmp: Path) -> None:
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    from isotpp import parallel

    # = jax.distributed.initialize(coordinator_address="127.0.0.1:PORT", num_processes=2, process_id=i)
    assert parallel.initialize()
    pid = jax.process_index()
    from jax.experimental import multihost_utils

    from isotpp.data.imagefolder import ImageFolderLoader, scan_imagefolder

    mesh = parallel.make_mesh()
    loader = ImageFolderLoader(scan_imagefolder(tmp / "images" / "train"), 4, seed=5, size=16)  # ShardByJaxProcess
    images, labels = next(loader.train_epoch(1))
    global_labels = parallel.global_batch_from_local(labels, parallel.batch_sharding(mesh))
    gathered = multihost_utils.process_allgather(global_labels, tiled=True)

    work = tmp / "work"
    trainer, history = _train(work, EPOCHS)
    if parallel.is_main_process():
        leaves = jax.tree.leaves(jax.tree.map(lambda a: np.asarray(a.addressable_data(0)), trainer.state.params))
        np.savez(tmp / "params_after_2_epochs.npz", **{f"p{i}": a for i, a in enumerate(leaves)})
    multihost_utils.sync_global_devices("saved")
    resumed, history = _train(work, EPOCHS + 1, resume=True)
    report = {
        "process_index": jax.process_index(), "process_count": jax.process_count(),
        "device_count": jax.device_count(), "local_devices": jax.local_device_count(),
        "local_labels": labels.tolist(), "local_sums": images.sum(axis=(1, 2, 3)).tolist(),
        "global_labels": np.asarray(gathered).tolist(),
        "history": [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in history],
        "final_step": resumed.step,
    }
    (tmp / f"proc{pid}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
