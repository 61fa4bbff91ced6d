"""Mesh, shardings and multi-host plumbing on this process's devices (8-device and 2-process runs:
test_parallel_devices.py, test_parallel_multiprocess.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from isotpp import parallel
from isotpp.errors import UserError


def test_mesh_and_shardings():
    mesh = parallel.make_mesh()
    assert mesh.axis_names == ("data",) and mesh.devices.size == jax.device_count()
    assert parallel.make_mesh(1).devices.size == 1
    with pytest.raises(UserError, match="asked for .* devices but .* present"):
        parallel.make_mesh(jax.device_count() + 1)
    assert parallel.replicated(mesh).spec == P()
    assert parallel.batch_sharding(mesh).spec == P("data")
    info = parallel.describe(mesh)
    assert info["num_devices"] == jax.device_count() and info["num_processes"] == 1 and info["platform"] == "cpu"


def test_batches_from_local_slices_and_replicated_copies():
    mesh = parallel.make_mesh()
    local = (np.arange(12.0).reshape(4, 3), np.arange(4))
    x, _y = parallel.global_batch_from_local(local, parallel.batch_sharding(mesh))
    assert x.sharding.spec == P("data")
    np.testing.assert_array_equal(np.asarray(x), local[0])
    assert parallel.local_batch_size(8) == 8 and parallel.process_shard() == (0, 1)

    source = {"w": jnp.ones(3)}
    placed = parallel.put_replicated(source, mesh)
    jax.jit(lambda t: jax.tree.map(lambda a: a + 1, t), donate_argnums=0)(placed)
    assert float(source["w"].sum()) == 3.0, "donating the placed copy must not delete the caller's array"


def test_create_replicated_makes_arrays_on_the_mesh():
    mesh = parallel.make_mesh()
    tree = parallel.create_replicated(lambda: {"a": jnp.arange(3.0), "b": jax.random.normal(jax.random.key(0), (2,))},
                                      mesh)  # fmt: skip
    assert all(a.sharding.is_fully_replicated for a in jax.tree.leaves(tree))
    np.testing.assert_array_equal(np.asarray(tree["a"]), [0.0, 1.0, 2.0])


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, False),
        ({"ISOTPP_DISTRIBUTED": "1"}, True),
        ({"ISOTPP_DISTRIBUTED": "0", "SLURM_NTASKS": "4"}, False),
        ({"SLURM_NTASKS": "2"}, True),
        ({"SLURM_NTASKS": "1"}, False),
        ({"OMPI_COMM_WORLD_SIZE": "8"}, True),
        ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, True),
    ],
)
def test_when_the_environment_asks_for_several_processes(monkeypatch, env, expected):
    for name in ("ISOTPP_DISTRIBUTED", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "JAX_COORDINATOR_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert parallel._env_asks_for_distributed() is expected


def test_initialize_without_a_request_stays_single_process(monkeypatch):
    monkeypatch.setenv("ISOTPP_DISTRIBUTED", "0")
    assert parallel.initialize() is False
    assert parallel.initialize(False) is False
    assert parallel.is_main_process()
