"""Data parallelism over every device and host: one mesh, two shardings.

The recipe of the Flax and big_vision examples, with plain ``jax.jit``:

* one :class:`~jax.sharding.Mesh` over all devices with a single ``data`` axis
  (:func:`make_mesh`); a model axis is left out: every network of the TPP
  paper fits one device;
* parameters and optimiser state replicated (``P()``, :func:`replicated`),
  batches split along their first axis (``P('data')``, :func:`batch_sharding`);
  jit over a batch sharded like that computes BatchNorm statistics over the
  *global* batch (XLA inserts the all-reduce), so 1 and 8 devices train the
  same network;
* several hosts: :func:`initialize` calls ``jax.distributed.initialize()``,
  each process reads ``global_batch // process_count`` examples
  (:func:`local_batch_size`) and :func:`global_batch_from_local` assembles the
  global array from the process-local slices; only process 0 writes
  (:func:`is_main_process`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from isotpp.errors import UserError

DATA_AXIS = "data"


def _env_asks_for_distributed() -> bool:
    """ISOTPP_DISTRIBUTED=1/0 decides; else a coordinator address or a SLURM / Open MPI launch of
    several tasks (clusters that jax.distributed.initialize() detects by itself). Cloud TPU VMs are
    detected by JAX but not here: pass the flag there."""
    value = os.environ.get("ISOTPP_DISTRIBUTED", "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        return True
    tasks = (os.environ.get("SLURM_NTASKS", ""), os.environ.get("OMPI_COMM_WORLD_SIZE", ""))
    return any(t.strip().isdigit() and int(t) > 1 for t in tasks)


def initialize(distributed: bool | None = None, **kwargs: Any) -> bool:
    """Start multi-host JAX when asked; returns whether it runs with several processes.

    ``distributed``: True forces ``jax.distributed.initialize(**kwargs)``,
    False never calls it, None (default) calls it when the environment asks:
    ``ISOTPP_DISTRIBUTED=1``, ``JAX_COORDINATOR_ADDRESS`` set, or a SLURM /
    Open MPI launch with more than one task. Keyword arguments
    (``coordinator_address``, ``num_processes``, ``process_id``,
    ``local_device_ids``) go to JAX; without them JAX detects the cluster
    (SLURM, Open MPI, Kubernetes, Cloud TPU) or reads ``JAX_COORDINATOR_ADDRESS``,
    and ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID`` are read here for hand launches.
    Must run before anything touches a device. Calling it twice is harmless.
    """
    want = _env_asks_for_distributed() if distributed is None else bool(distributed)
    if not want:
        return jax.process_count() > 1
    if not jax.distributed.is_initialized():
        # JAX reads JAX_COORDINATOR_ADDRESS itself and detects SLURM / Open MPI / Kubernetes /
        # Cloud TPU; for a hand launch (ssh on each host) the count and rank come from these two.
        for key, env in (("num_processes", "JAX_NUM_PROCESSES"), ("process_id", "JAX_PROCESS_ID")):
            if kwargs.get(key) is None and os.environ.get(env, "").strip():
                try:
                    kwargs[key] = int(os.environ[env])
                except ValueError:
                    raise UserError(f"{env}={os.environ[env]!r} is not an integer: fix the launch script") from None
        try:
            jax.distributed.initialize(**kwargs)
        except (RuntimeError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(
                f"jax.distributed.initialize() failed ({first}): set JAX_COORDINATOR_ADDRESS, "
                "JAX_NUM_PROCESSES and JAX_PROCESS_ID (or launch under SLURM/Open MPI/Cloud TPU), "
                "or drop --distributed for a single process"
            ) from None
    return jax.process_count() > 1


def is_main_process() -> bool:
    """True on the process that writes logs, configs and results (process 0)."""
    return jax.process_index() == 0


def make_mesh(devices: Sequence[jax.Device] | int | None = None) -> Mesh:
    """A 1-D mesh with axis ``data`` over ``devices`` (default: every device of every host).

    An int takes the first that many devices (tests compare 1 and 8 devices).
    """
    if devices is None:
        devices = jax.devices()
    elif isinstance(devices, int):
        available = jax.devices()
        if not 1 <= devices <= len(available):
            raise UserError(f"asked for {devices} devices but {len(available)} are present: ask for fewer")
        devices = available[:devices]
    return Mesh(np.asarray(list(devices)), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (parameters, optimiser state, scalars)."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the ``data`` axis."""
    return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(global_batch: int, mesh: Mesh) -> None:
    """A global batch must split evenly over the devices and the processes."""
    n = mesh.devices.size
    if global_batch % n:
        raise UserError(f"global batch size {global_batch} does not divide over {n} devices: use a multiple of {n}")
    if global_batch % jax.process_count():
        raise UserError(
            f"global batch size {global_batch} does not divide over {jax.process_count()} processes: "
            f"use a multiple of {jax.process_count()}"
        )


def local_batch_size(global_batch: int) -> int:
    """Examples this process loads per step (``global_batch // process_count``)."""
    count = jax.process_count()
    if global_batch % count:
        raise UserError(f"global batch size {global_batch} does not divide over {count} processes")
    return global_batch // count


def process_shard() -> tuple[int, int]:
    """(this process's index, number of processes): the data shard to read."""
    return jax.process_index(), jax.process_count()


def global_batch_from_local(local: Any, sharding: NamedSharding) -> Any:
    """Global arrays from this process's slice of every leaf of ``local`` (numpy or jax).

    The global batch is the concatenation of the processes' slices in
    process order (``jax.make_array_from_process_local_data``); with one
    process it is a plain sharded ``device_put``.
    """
    if jax.process_count() == 1:
        return jax.device_put(local, sharding)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local)


def put_replicated(tree: Any, mesh: Mesh) -> Any:
    """A copy of every leaf on every device of ``mesh`` (each process passes the same values).

    Always a copy, never an alias, so a jitted step may donate the result
    without deleting the caller's arrays. Works with several processes too,
    where ``device_put`` of a host value onto devices of other hosts is not
    allowed: each process fills its own devices from its (identical) copy.
    """
    sharding = replicated(mesh)
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding, may_alias=False)

    def put(x):
        local = isinstance(x, jax.Array) and not x.is_fully_addressable
        host = np.asarray(x.addressable_data(0)) if local else np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree)


def create_replicated(init: Callable[[], Any], mesh: Mesh) -> Any:
    """``init()``'s pytree of arrays created directly on every device (``jax.jit(init, out_shardings=...)``).

    No host copy is ever made, which matters for large models; ``init`` must
    be a pure function of nothing (close over seeds), e.g.
    ``lambda: nnx.state(create_model("resnet50"))``.
    """
    return jax.jit(init, out_shardings=replicated(mesh))()


def create_model_replicated(make_model: Callable[[], Any], mesh: Mesh):
    """An NNX model built by ``make_model()`` with every variable created already replicated on ``mesh``.

    Non-array attributes (``build_config``) are taken from an abstract build.
    """

    abstract = nnx.eval_shape(make_model)
    graphdef, _ = nnx.split(abstract)
    state = create_replicated(lambda: nnx.state(make_model()), mesh)
    model = nnx.merge(graphdef, state)
    if hasattr(abstract, "build_config"):
        model.build_config = abstract.build_config
    return model


def describe(mesh: Mesh) -> dict[str, Any]:
    """JSON-able facts about the devices (for config.json and benchmarks)."""
    devices = mesh.devices.ravel()
    return {
        "platform": devices[0].platform,
        "device_kind": devices[0].device_kind,
        "num_devices": int(devices.size),
        "num_local_devices": jax.local_device_count(),
        "num_processes": jax.process_count(),
        "process_index": jax.process_index(),
        "mesh": {k: int(v) for k, v in mesh.shape.items()},
    }
