"""Iterative rewind pruning: the per-round counts, the final density, nested masks, rewinding,
the run record on disk and its refusals."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from isotpp.errors import UserError
from isotpp.pai.irp import (
    IRPRecord,
    _rewound,
    irp_keep_counts,
    load_irp_record,
    make_record,
    run_irp,
)
from isotpp.pai.masks import keep_count


def test_keep_counts_remove_the_same_number_each_round():
    assert irp_keep_counts(1000, 0.1, 3) == (700, 400, 100)
    counts = irp_keep_counts(266_200, 0.01, 10)
    assert counts[-1] == keep_count(0.01, 266_200) == 2662
    removed = -np.diff((266_200, *counts))
    assert set(removed) <= {26_353, 26_354}  # 263,538 / 10, to within one
    assert irp_keep_counts(10, 1.0, 2) == (10, 10)
    with pytest.raises(UserError):
        irp_keep_counts(10, 0.5, 0)
    with pytest.raises(UserError, match="density"):
        irp_keep_counts(10, 0.0, 2)


@pytest.fixture(scope="module")
def tiny():
    from isotpp.models import create_model
    from isotpp.pai.net import PrunableNet
    from isotpp.pai.runs import PaIData, Split

    nets = [PrunableNet.from_model(create_model("mlp", depth=3, width=12, input_dim=6, num_classes=3, act="relu",
                                                init="kaiming", seed=s)) for s in (0, 1)]
    x = jax.random.normal(jax.random.key(0), (96, 6))
    y = (x[:, 0] > 0).astype(jnp.int32) + (x[:, 1] > 0.5).astype(jnp.int32)
    split = Split(x, y)
    return nets, PaIData(split, split, split)


def test_irp_final_mask_has_the_target_density_and_nested_rounds(tiny):
    from isotpp.training.engine import LRSchedule

    nets, data = tiny
    hist = run_irp(nets, [0.1, 0.3], data, rounds=3, epochs=1, lr=LRSchedule.parse("0.05"), weight_decay=1e-4,
                   batch_size=32, key=jax.random.key(0))
    n = nets[0].n_weights
    for h, d in zip(hist, (0.1, 0.3)):
        counts = [sum(int(h[name][j].sum()) for name in nets[0].names) for j in range(3)]
        assert tuple(counts) == irp_keep_counts(n, d, 3)
        assert counts[-1] == keep_count(d, n)
        for name in nets[0].names:
            assert h[name].shape == (3, *nets[0].shapes()[name]) and h[name].dtype == bool
            assert np.all(h[name][1] <= h[name][0]) and np.all(h[name][2] <= h[name][1])  # never revived
    rec = make_record(nets[0], hist[0], seed=0, density=0.1, rewind="kernels")
    surv = rec.survival()
    assert sum(int((c == 3).sum()) for c in surv.values()) == keep_count(0.1, n)  # survived every round
    labels = np.concatenate([v.ravel() for v in rec.labels().values()])
    assert set(np.round(labels * 3).astype(int)) <= {0, 1, 2, 3}


def test_rewind_kernels_or_everything(tiny):
    nets, _ = tiny
    net = nets[0]
    trained = jax.tree.map(lambda a: a + 1.0, net.params)
    masks = {n: jnp.asarray(np.arange(np.prod(s)).reshape(s) % 2 == 0) for n, s in net.shapes().items()}
    from isotpp.models.program import flat_arrays

    p, _ = _rewound(net, trained, net.rest, masks, "kernels")
    f, f0, ft = flat_arrays(p), flat_arrays(net.params), flat_arrays(trained)
    for name in f:
        if name in masks:  # kept kernels back at init, pruned ones 0
            np.testing.assert_array_equal(f[name], np.where(masks[name], f0[name], 0.0))
        else:  # biases keep their trained values
            np.testing.assert_array_equal(f[name], ft[name])
    p, _ = _rewound(net, trained, net.rest, masks, "all")
    f = flat_arrays(p)
    for name in f:
        np.testing.assert_array_equal(f[name], np.where(masks[name], f0[name], 0.0) if name in masks else f0[name])


def test_record_round_trip_and_refusals(tmp_path, tiny):
    nets, _ = tiny
    net = nets[1]
    masks = {n: np.stack([np.ones(s, bool), np.arange(np.prod(s)).reshape(s) % 3 == 0])
             for n, s in net.shapes().items()}
    g0 = {n: np.full(s, 0.5, np.float32) for n, s in net.shapes().items()}
    rec = make_record(net, masks, seed=1, density=0.3, rewind="all", g0=g0, g0_spec={"batch_size": 32},
                      meta={"note": "x"})
    rec.save(tmp_path / "r.npz")
    back = load_irp_record(tmp_path / "r.npz", arch="mlp")
    assert isinstance(back, IRPRecord) and back.arch == "mlp" and back.rounds == 2 and back.seed == 1
    assert back.names == net.names and back.g0_spec == {"batch_size": 32} and back.meta == {"note": "x"}
    for n in net.names:
        np.testing.assert_array_equal(back.masks[n], masks[n])
        np.testing.assert_array_equal(back.w0[n], np.asarray(net.kernels()[n]))
        np.testing.assert_array_equal(back.g0[n], g0[n])
    back.check_net(net)
    with pytest.raises(UserError, match="made on mlp, not lenet_300_100"):
        load_irp_record(tmp_path / "r.npz", arch="lenet_300_100")
    from isotpp.pai.net import PrunableNet
    from isotpp.pai.small_convnet import small_convnet

    with pytest.raises(UserError, match="IRP record is of mlp"):
        back.check_net(PrunableNet.from_model(small_convnet()))
    # missing, garbage and every other corrupt file: tests/test_files.py, over every kind of artefact
