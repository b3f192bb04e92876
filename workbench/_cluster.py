"""Training on several machines: who the workers are, read from the launcher's environment, and
starting JAX's multi-process runtime.

``workbench train --distributed`` (``Execution(strategy="distributed")``) is started once per
worker process by a launcher, and every worker runs the same command:

- **SLURM** (``srun``): ``SLURM_PROCID``, ``SLURM_NTASKS`` and ``SLURM_STEP_NODELIST``; the
  coordinator is the first node, on port ``MASTER_PORT`` (default :data:`DEFAULT_PORT`).
- **torchrun-style** launchers: ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``.

The workers join through ``jax.distributed.initialize``, and ``keras.distribution.DataParallel``
replicates the model over every device of every worker; each worker feeds its own part of every
batch (``workbench.data.pipeline.Batches(shard=...)``), so a step sees the same batch as on one
device. This runs on the JAX backend only: Keras 3's TensorFlow trainer fails under
``MultiWorkerMirroredStrategy`` (it reduces the scalar logs of every step along axis 0:
tensorflow/tensorflow#72388), which :func:`start` says instead of failing in the first step.

The runtime must start before JAX does anything else, which is why the CLI calls :func:`start`
before the backend probes its devices, and ``finetune`` before it builds anything.
"""

from __future__ import annotations

import dataclasses
import os
import re

DEFAULT_PORT = 29500  # torchrun's default coordinator port
ON_TENSORFLOW = ("training on several machines runs on the JAX backend (KERAS_BACKEND=jax): "
                 "Keras 3's TensorFlow trainer fails under MultiWorkerMirroredStrategy "
                 "(tensorflow/tensorflow#72388); one machine's GPUs work on both backends")
_started: dict = {}  # the cluster and distribution of this process: a process joins one cluster


@dataclasses.dataclass(frozen=True)
class Cluster:
    """The worker processes of one distributed run, as this process sees them.

    Attributes:
        rank: this worker's index, from 0; worker 0 is the chief, which writes the run directory.
        size: how many workers there are.
        coordinator: ``host:port`` of worker 0, where the others connect.
        launcher: ``"slurm"`` or ``"torchrun"``: where this was read from.
    """

    rank: int
    size: int
    coordinator: str
    launcher: str

    @property
    def chief(self) -> bool:
        """Whether this is worker 0, the one that writes the run directory."""
        return self.rank == 0


def from_environment(env=None) -> Cluster:
    """The cluster this process belongs to, from its launcher's environment variables
    (torchrun-style variables first, then SLURM's).

    Args:
        env: the environment to read (default ``os.environ``).

    Raises:
        ValueError: no launcher's variables are set, or they are inconsistent; the message
            says which variables each launcher sets.
    """
    env = os.environ if env is None else env
    if env.get("WORLD_SIZE") and env.get("RANK") and env.get("MASTER_ADDR"):
        return _checked(Cluster(_integer(env, "RANK", 0), _integer(env, "WORLD_SIZE", 1),
                                f"{env['MASTER_ADDR']}:{_port(env)}", "torchrun"))
    if env.get("SLURM_PROCID") and env.get("SLURM_NTASKS"):
        hosts = expand_nodelist(env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
                                or "")
        if not hosts:
            raise ValueError("SLURM_STEP_NODELIST (or SLURM_JOB_NODELIST) must name the nodes, "
                             "received: nothing")
        return _checked(Cluster(_integer(env, "SLURM_PROCID", 0),
                                _integer(env, "SLURM_NTASKS", 1), f"{hosts[0]}:{_port(env)}",
                                "slurm"))
    raise ValueError("--distributed needs a launcher: start one process per worker with srun "
                     "(SLURM), or set RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT "
                     "(torchrun-style); none of them is set")


def expand_nodelist(text: str) -> list[str]:
    """SLURM's compact host list as names: ``"gpu[01-03,07],login"`` -> ``gpu01 gpu02 gpu03
    gpu07 login`` (zero padding kept)."""
    hosts = []
    for name, ranges in re.findall(r"([^,\[]+)(?:\[([^\]]*)\])?,?", text.strip()):
        if not ranges:
            hosts.append(name)
            continue
        for part in ranges.split(","):
            first, _, last = part.partition("-")
            for number in range(int(first), int(last or first) + 1):
                hosts.append(f"{name}{number:0{len(first)}d}")
    return hosts


def start(backend: str, cluster: Cluster | None = None):
    """Joins the cluster (once per process: later calls return the same) and returns the
    distribution to train under: ``keras.distribution.DataParallel`` over every worker's
    devices, each worker feeding its own part of every batch.

    Args:
        backend: the Keras backend's name; only ``"jax"`` trains on several machines.
        cluster: the workers; default :func:`from_environment`.

    Raises:
        ValueError: another backend, no launcher's environment, or a process asked to join a
            second cluster.
    """
    if "distribution" in _started:
        if cluster is not None and cluster != _started["cluster"]:
            raise ValueError(f"this process already joined {_started['cluster']}; a process "
                             f"trains in one cluster, received: {cluster}")
        return _started["distribution"]
    if backend != "jax":
        raise ValueError(f"{ON_TENSORFLOW}, received: KERAS_BACKEND={backend}")
    cluster = cluster or from_environment()
    import jax

    jax.distributed.initialize(coordinator_address=cluster.coordinator,
                               num_processes=cluster.size, process_id=cluster.rank)
    import keras

    distribution = keras.distribution.DataParallel(devices=keras.distribution.list_devices(),
                                                   auto_shard_dataset=False)
    _started.update(cluster=cluster, distribution=distribution)
    return distribution


def joined() -> Cluster | None:
    """The cluster this process joined with :func:`start`, or None."""
    return _started.get("cluster")


def barrier(name: str) -> None:
    """Waits until every worker of the joined cluster reaches the barrier ``name``."""
    if "distribution" in _started:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _integer(env, name: str, minimum: int) -> int:
    try:
        value = int(env[name])
    except ValueError:
        raise ValueError(f"{name} must be an integer, received: {env[name]!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, received: {value}")
    return value


def _port(env) -> int:
    return _integer(env, "MASTER_PORT", 1) if env.get("MASTER_PORT") else DEFAULT_PORT


def _checked(cluster: Cluster) -> Cluster:
    if not 0 <= cluster.rank < cluster.size:
        raise ValueError(f"the worker's rank must be in [0, {cluster.size}) for "
                         f"{cluster.size} workers, received: {cluster.rank}")
    return cluster
