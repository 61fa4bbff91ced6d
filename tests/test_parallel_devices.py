"""1 device vs 8 (simulated CPU) devices: the same global batch trains the same network.

JAX fixes its device count when it is imported, so the comparison runs in a
subprocess started with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``
(this file run as a script); the rest of the suite keeps one device. The
subprocess trains with the trainer, on 1 and on 8 devices, with on-device
augmentation: a small conv + BatchNorm network with plain SGD, and a small
ResNet-20 (BatchNorm, residual adds) with TPP (its Gram and L2 penalties on
the convs and the BatchNorm scales and biases, its state in the optimiser
state); it reports per-step losses and the final state.

It computes in float64: the two runs differ only in the order of their sums
(BatchNorm statistics and gradients are all-reduced over 8 shards), which in
float32 is ~1e-7 per step and grows through training dynamics (~1e-4 after 8
steps here); in float64 any real discrepancy stands out at 1e-9.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

STEPS_PER_EPOCH, EPOCHS, BATCH = 4, 2, 16


def test_eight_devices_train_like_one(tmp_path):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, __file__, str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=600, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["devices"] == 8
    assert report["indivisible_batch_error"] == ("global batch size 12 does not divide over 8 devices: "
                                                 "use a multiple of 8")
    for mode in ("plain", "tpp"):
        r = report[mode]
        assert r["batch_devices"] == 8, "the batch was not split over the 8 devices"
        assert r["params_replicated"], "parameters are not replicated"
        assert len(r["losses_1"]) == STEPS_PER_EPOCH * EPOCHS
        np.testing.assert_allclose(r["losses_8"], r["losses_1"], rtol=1e-9, err_msg=f"{mode}: per-step losses")
        assert r["max_param_diff"] < 1e-9 * r["max_param_abs"], f"{mode}: parameters differ ({r['max_param_diff']})"
        assert r["max_bn_diff"] < 1e-9, f"{mode}: BatchNorm running statistics differ ({r['max_bn_diff']})"
    assert report["plain"]["test_acc_1"] == pytest.approx(report["plain"]["test_acc_8"])
    tpp = report["tpp"]
    assert tpp["state_1"] == tpp["state_8"], "TPP's state (iteration, phase, reg) differs"
    assert tpp["state_1"]["phase"] == "stabilize_reg" and tpp["state_1"]["reg"] == pytest.approx(1.0)
    assert report["plain"]["losses_1"] != tpp["losses_1"], "TPP's penalties had no effect"


# --------------------------------------------------------------------------
# The subprocess.
# --------------------------------------------------------------------------


def _tiny_resnet():
    import jax.numpy as jnp
    from flax import nnx

    from isotpp.models import create_model, widths_of

    full = widths_of(nnx.eval_shape(lambda: create_model("resnet8", num_classes=10, input_shape=(8, 8, 1))))
    widths = {k: max(2, v // 8) for k, v in list(full.items())[:-1]}
    return create_model("resnet8", num_classes=10, input_shape=(8, 8, 1), widths=widths, init="kaiming", seed=0,
                        param_dtype=jnp.float64)


def _conv_bn():
    import jax
    import jax.numpy as jnp
    from flax import nnx

    class ConvBN(nnx.Module):
        def __init__(self, rngs):
            f64 = {"param_dtype": jnp.float64, "rngs": rngs}
            self.conv1 = nnx.Conv(1, 6, (3, 3), **f64)
            self.bn1 = nnx.BatchNorm(6, momentum=0.9, **f64)
            self.conv2 = nnx.Conv(6, 6, (3, 3), strides=(2, 2), **f64)
            self.bn2 = nnx.BatchNorm(6, momentum=0.9, **f64)
            self.fc = nnx.Linear(6, 10, **f64)

        def __call__(self, x):
            x = jax.nn.relu(self.bn1(self.conv1(x)))
            return self.fc(jax.nn.relu(self.bn2(self.conv2(x))).mean((1, 2)))

    return ConvBN(nnx.Rngs(0))


def _run(mode: str, n_devices: int, workdir: Path) -> dict:
    import jax

    from isotpp import parallel
    from isotpp.data.pipeline import InMemoryData, InMemoryEval
    from isotpp.models import layer_names
    from isotpp.pruning.groups import channel_groups
    from isotpp.pruning.plan import l1_plan
    from isotpp.pruning.tpp import TPPConfig, describe, targets_for, tpp
    from isotpp.training.engine import reference_sgd
    from isotpp.training.sharded import TrainConfig, Trainer

    rng = np.random.default_rng(0)
    images = rng.normal(size=(STEPS_PER_EPOCH * BATCH, 8, 8, 1))
    labels = rng.integers(0, 10, STEPS_PER_EPOCH * BATCH).astype(np.int32)
    mesh = parallel.make_mesh(n_devices)
    model = _tiny_resnet() if mode == "tpp" else _conv_bn()
    tx = reference_sgd(0.02, 5e-4)
    plan = None
    if mode == "tpp":
        plan = l1_plan(model, "*layer*.conv1:0.5")
        cfg = TPPConfig(lw_opp=10.0, reg_granularity=0.25, update_reg_interval=1, stabilize_iters=100,
                        zero_out_interval=2)  # fmt: skip
        tx = tpp(tx, plan, targets_for(plan, channel_groups(model), layer_names(model), cfg), cfg)
    data = InMemoryData(images, labels, batch_size=BATCH, mesh=mesh, seed=1, augment=True, fill=-0.5)
    evaluation = InMemoryEval(images, labels, mesh, batch_size=24) if mode == "plain" else None
    config = TrainConfig(epochs=EPOCHS, lr_schedule="0:0.02,1:0.01", log_every_steps=1, progress=False,
                         checkpoints=False)  # fmt: skip
    trainer = Trainer(model, tx, data, config, workdir, eval_data=evaluation, plan=plan)
    x, _ = next(data.epoch(0))
    history, _ = trainer.fit()
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    out = {
        "losses": [r["loss"] for r in records if "loss" in r],
        "test_acc": history[-1].get("test_acc"),
        "params": [np.asarray(a) for a in jax.tree.leaves(trainer.state.params)],
        "rest": [np.asarray(a) for a in jax.tree.leaves(trainer.state.rest)],
        "batch_devices": len({s.device for s in x.addressable_shards}),
        "params_replicated": all(a.sharding.is_fully_replicated for a in jax.tree.leaves(trainer.state.params)),
    }
    if mode == "tpp":
        state = describe(trainer.state.opt_state)
        out["state"] = {k: state[k] for k in ("iteration", "phase")} | {"reg": round(state["reg"], 6)}
    return out


def _main(out_dir: Path) -> None:
    import jax

    from isotpp import parallel
    from isotpp.data.pipeline import InMemoryData
    from isotpp.errors import UserError

    jax.config.update("jax_enable_x64", True)
    report = {"devices": jax.device_count()}
    try:
        InMemoryData(np.zeros((24, 2, 2, 1)), np.zeros(24), batch_size=12, mesh=parallel.make_mesh())
    except UserError as e:
        report["indivisible_batch_error"] = str(e)
    for mode in ("plain", "tpp"):
        one = _run(mode, 1, out_dir / f"{mode}-1")
        eight = _run(mode, 8, out_dir / f"{mode}-8")
        r = {
            "losses_1": one["losses"], "losses_8": eight["losses"],
            "test_acc_1": one["test_acc"], "test_acc_8": eight["test_acc"],
            "max_param_diff": max(float(np.abs(a - b).max()) for a, b in zip(one["params"], eight["params"])),
            "max_param_abs": max(float(np.abs(a).max()) for a in one["params"]),
            "max_bn_diff": max(float(np.abs(a - b).max()) for a, b in zip(one["rest"], eight["rest"])),
            "batch_devices": eight["batch_devices"], "params_replicated": eight["params_replicated"],
        }
        if mode == "tpp":
            r["state_1"], r["state_8"] = one["state"], eight["state"]
        report[mode] = r
    (out_dir / "report.json").write_text(json.dumps(report))


if __name__ == "__main__":
    _main(Path(sys.argv[1]))
