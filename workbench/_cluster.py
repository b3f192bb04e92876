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

Nothing hangs. JAX's own join aborts the process after its timeout with a page of C++ log, and a
worker that dies mid-run leaves the others blocked in a collective until JAX's heartbeat timeout
(100 s) aborts them too. So the workers first meet over a plain TCP connection to worker 0 at
``MASTER_PORT``: worker 0 says at once whom it waits for, and gives up after the join timeout
(:data:`DEFAULT_JOIN_TIMEOUT`) naming the workers that did not come, before JAX starts. Then it
picks a free port for JAX's coordination service and tells the others. The connections stay open
for the run and a thread watches them: a worker that stops (its connection closes without a
word, or it says it failed) makes the others leave within :data:`LEFT_GRACE` seconds, each with
one line saying who stopped and how to resume, instead of waiting for JAX's timeouts. A worker
that finished its part says so first, so that its exit alarms nobody.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import math
import os
import re
import selectors
import socket
import sys
import threading
import time

from workbench._checks import UsageError, check_number

DEFAULT_PORT = 29500  # torchrun's default coordinator port
DEFAULT_JOIN_TIMEOUT = 120.0  # seconds the workers wait for each other to start
LEFT_GRACE = 3.0  # seconds a worker whose peer failed has to leave the run by itself
DEFAULT_RESUME_HINT = ("run the same finetune again with resume=True on every worker to "
                       "continue from it")
_KEEPALIVE = {"TCP_KEEPIDLE": 10, "TCP_KEEPINTVL": 5, "TCP_KEEPCNT": 3}  # a vanished machine
_HELLO = "workbench-join"
ON_TENSORFLOW = ("training on several machines runs on the JAX backend (KERAS_BACKEND=jax): "
                 "Keras 3's TensorFlow trainer fails under MultiWorkerMirroredStrategy "
                 "(tensorflow/tensorflow#72388); one machine's GPUs work on both backends")
_started: dict = {}  # the cluster and distribution of this process: a process joins one cluster


class ClusterError(RuntimeError):
    """The workers of a distributed run did not all join, or one stopped during the run."""


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
            raise UsageError("SLURM_STEP_NODELIST (or SLURM_JOB_NODELIST) must name the nodes, "
                             "received: nothing")
        return _checked(Cluster(_integer(env, "SLURM_PROCID", 0),
                                _integer(env, "SLURM_NTASKS", 1), f"{hosts[0]}:{_port(env)}",
                                "slurm"))
    raise UsageError("--distributed needs a launcher: start one process per worker with srun "
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


def start(backend: str, cluster: Cluster | None = None, *,
          join_timeout: float = DEFAULT_JOIN_TIMEOUT, resume_hint: str | None = None):
    """Joins the cluster (once per process: later calls return the same) and returns the
    distribution to train under: ``keras.distribution.DataParallel`` over every worker's
    devices, each worker feeding its own part of every batch.

    Worker 0 prints whom it waits for at once; a worker waiting for worker 0 says so once.
    From here until :func:`leave`, a worker that stops makes this one exit (status 1) within
    :data:`LEFT_GRACE` seconds with one line on stderr naming it and ``resume_hint``.

    Args:
        backend: the Keras backend's name; only ``"jax"`` trains on several machines.
        cluster: the workers; default :func:`from_environment`.
        join_timeout: seconds to wait for the other workers to start (> 0).
        resume_hint: what the line printed when a worker stops says to do next, e.g. the
            command to resume with (default: run the same finetune with ``resume=True``).

    Raises:
        ValueError: another backend, no launcher's environment, a bad ``join_timeout``, or a
            process asked to join a second cluster.
        ClusterError: the other workers did not all join within ``join_timeout`` (the message
            names the missing ones), or one of them has left since.
    """
    join_timeout = check_number("join_timeout", join_timeout, minimum=0, exclusive_minimum=True)
    if "distribution" in _started:
        if cluster is not None and cluster != _started["cluster"]:
            raise UsageError(f"this process already joined {_started['cluster']}; a process "
                             f"trains in one cluster, received: {cluster}")
        _started["watch"].arm()
        return _started["distribution"]
    if backend != "jax":
        raise UsageError(f"{ON_TENSORFLOW}, received: KERAS_BACKEND={backend}")
    cluster = cluster or from_environment()
    import jax  # first, so that our exit hook runs before JAX's (atexit runs the last first)

    host, port = cluster.coordinator.rsplit(":", 1)
    peers, runtime_port = _meet(cluster, host, int(port), join_timeout)
    watch = _Watch(cluster, peers, resume_hint or DEFAULT_RESUME_HINT)
    watch.start()
    atexit.register(watch.at_exit)
    _started["watch"] = watch
    jax.distributed.initialize(coordinator_address=f"{host}:{runtime_port}",
                               num_processes=cluster.size, process_id=cluster.rank,
                               initialization_timeout=max(10, math.ceil(min(join_timeout, 3600))))
    import keras

    distribution = keras.distribution.DataParallel(devices=keras.distribution.list_devices(),
                                                   auto_shard_dataset=False)
    _started.update(cluster=cluster, distribution=distribution)
    return distribution


def leave(error: BaseException | None = None) -> None:
    """This worker's part of the run is over (``error``: how it ended, None when it finished).

    The others are told, so that its exit alarms nobody. When ``error`` comes from another
    worker having stopped (JAX's runtime failing a collective), this worker exits at once with
    the one line :func:`start` describes, rather than raising ``error``. Nothing happens in a
    process that joined no cluster.
    """
    watch = _started.get("watch")
    if watch is not None:
        watch.leave(error)


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
        raise UsageError(f"{name} must be an integer, received: {env[name]!r}") from None
    if value < minimum:
        raise UsageError(f"{name} must be >= {minimum}, received: {value}")
    return value


def _port(env) -> int:
    return _integer(env, "MASTER_PORT", 1) if env.get("MASTER_PORT") else DEFAULT_PORT


def _checked(cluster: Cluster) -> Cluster:
    if not 0 <= cluster.rank < cluster.size:
        raise UsageError(f"the worker's rank must be in [0, {cluster.size}) for "
                         f"{cluster.size} workers, received: {cluster.rank}")
    return cluster


def _workers(ranks) -> str:
    """``worker 2`` or ``workers 1, 2``."""
    ranks = sorted(ranks)
    return f"worker{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))}"


def _say(line: str) -> None:
    """A line about joining, on stdout (stderr is silenced while the backend starts)."""
    print(line, flush=True)


def _send(sock: socket.socket, line: str) -> None:
    try:
        sock.sendall(f"{line}\n".encode())
    except OSError:  # the peer is gone: the watch notices that on its own
        pass


def _read_line(sock: socket.socket, deadline: float) -> str | None:
    """One short line from ``sock`` by ``deadline`` (None: closed or too late)."""
    data = b""
    while not data.endswith(b"\n") and len(data) < 256:
        sock.settimeout(max(0.01, min(0.5, deadline - time.monotonic())))
        try:
            byte = sock.recv(1)  # byte by byte: the watch reads what follows
        except TimeoutError:
            if time.monotonic() > deadline:
                return None
            continue
        except OSError:
            return None
        if not byte:
            return None
        data += byte
    return data.decode(errors="replace").strip()


def _keep_alive(sock: socket.socket) -> None:
    """TCP keepalive, so that a machine that vanishes without closing is noticed too."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in _KEEPALIVE.items():
        if hasattr(socket, name):  # Linux names; other systems keep their defaults
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


def _meet(cluster: Cluster, host: str, port: int, timeout: float) -> tuple[dict, int]:
    """The workers meet at worker 0 before JAX starts; returns the open connections by rank
    and the port of JAX's coordination service, which worker 0 chooses."""
    deadline = time.monotonic() + timeout
    if cluster.chief:
        return _gather(cluster, port, deadline, timeout)
    return _reach(cluster, host, port, deadline, timeout)


def _gather(cluster: Cluster, port: int, deadline: float, timeout: float) -> tuple[dict, int]:
    missing, peers = set(range(1, cluster.size)), {}
    try:
        server = socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True) \
            if socket.has_dualstack_ipv6() else socket.create_server(("", port))
    except OSError as error:
        raise ClusterError(f"worker 0 cannot listen at port {port} ({error.strerror or error}): "
                           f"is another run using it? Choose another MASTER_PORT") from None
    if missing:
        _say(f"waiting for {_workers(missing)} of {cluster.size} at {cluster.coordinator} "
             f"(join timeout {timeout:g} s) ...")
    with server:
        server.settimeout(0.5)
        while missing:
            if time.monotonic() > deadline:
                for sock in peers.values():
                    _send(sock, f"missing {','.join(map(str, sorted(missing)))}")
                    sock.close()
                raise ClusterError(f"{_workers(missing)} of {cluster.size} did not join at "
                                   f"{cluster.coordinator} within {timeout:g} s (the join "
                                   f"timeout)")
            try:
                sock, _ = server.accept()
            except TimeoutError:
                continue
            rank, problem = _hello(sock, cluster.size, peers)
            if problem:
                _send(sock, f"refused {problem}")
                sock.close()
                continue
            _keep_alive(sock)
            peers[rank] = sock
            missing.discard(rank)
        with socket.socket() as probe:  # a free port for JAX, closed again just before it binds
            probe.bind(("", 0))
            runtime_port = probe.getsockname()[1]
    for sock in peers.values():
        _send(sock, f"go {runtime_port}")
    return peers, runtime_port


def _hello(sock: socket.socket, size: int, peers: dict) -> tuple[int, str | None]:
    """The rank a connecting worker says it has, or why it cannot join."""
    words = (_read_line(sock, time.monotonic() + 5) or "").split()
    if len(words) != 3 or words[0] != _HELLO or not all(w.isdigit() for w in words[1:]):
        return -1, "not a workbench worker"
    rank, its_size = int(words[1]), int(words[2])
    if its_size != size:
        return rank, f"it was started for {its_size} workers, worker 0 for {size}"
    if not 0 < rank < size or rank in peers:
        return rank, (f"worker {rank} has joined already" if rank in peers
                      else f"rank {rank} is not expected")
    return rank, None


def _reach(cluster: Cluster, host: str, port: int, deadline: float,
           timeout: float) -> tuple[dict, int]:
    said = False
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=2)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise ClusterError(f"worker 0 did not answer at {cluster.coordinator} within "
                                   f"{timeout:g} s (the join timeout)") from None
            if not said:
                _say(f"worker {cluster.rank}: waiting for worker 0 at {cluster.coordinator} "
                     f"(join timeout {timeout:g} s) ...")
                said = True
            time.sleep(0.5)
    _keep_alive(sock)
    _send(sock, f"{_HELLO} {cluster.rank} {cluster.size}")
    # worker 0 answers within its own join timeout, which may have begun later than ours
    reply = (_read_line(sock, time.monotonic() + timeout + 10) or "").split()
    if reply[:1] == ["go"] and len(reply) == 2 and reply[1].isdigit():
        return {0: sock}, int(reply[1])
    sock.close()
    if reply[:1] == ["missing"] and len(reply) == 2:
        raise ClusterError(f"{_workers(int(r) for r in reply[1].split(','))} of {cluster.size} "
                           f"did not join at {cluster.coordinator} within worker 0's join "
                           f"timeout")
    if reply[:1] == ["refused"]:
        raise ClusterError(f"worker 0 at {cluster.coordinator} refused worker {cluster.rank}: "
                           f"{' '.join(reply[1:])}")
    raise ClusterError(f"worker 0 at {cluster.coordinator} closed the connection before every "
                       f"worker joined")


class _Watch(threading.Thread):
    """Watches the connections to the other workers (worker 0: to each; the others: to worker
    0, which passes on who stopped) and ends this process when one stops mid-run.

    A peer is ``"running"``, ``"done"`` (it finished its part), ``"failed"`` (it left with an
    error) or ``"stopped"`` (its connection closed without a word: killed, crashed, gone).
    """

    def __init__(self, cluster: Cluster, peers: dict, resume_hint: str):
        super().__init__(name="workbench-cluster-watch", daemon=True)
        self.cluster, self.peers, self.resume_hint = cluster, peers, resume_hint
        self.state = dict.fromkeys(range(cluster.size), "running")
        del self.state[cluster.rank]
        self.armed, self.left_ok, self.since = True, False, None
        self.changed = threading.Condition()

    def run(self) -> None:
        selector = selectors.DefaultSelector()
        for rank, sock in self.peers.items():
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, rank)
        pending = {rank: b"" for rank in self.peers}
        while True:
            for key, _ in selector.select(timeout=0.25) if selector.get_map() else ():
                try:
                    data = key.fileobj.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    selector.unregister(key.fileobj)
                    self._went(key.data, "stopped")
                    continue
                pending[key.data] += data
                *lines, pending[key.data] = pending[key.data].split(b"\n")
                for line in lines:
                    self._heard(key.data, line.decode(errors="replace").split())
            if not selector.get_map():
                time.sleep(0.25)
            with self.changed:  # a worker that failed may be leaving on its own; a worker
                # that stopped without a word cannot be waited for (nor can JAX's runtime)
                overdue = self.armed and self.since is not None and (
                    "stopped" in self.state.values() or time.monotonic() - self.since > LEFT_GRACE)
            if overdue:  # this worker cannot go on without the one that stopped
                self._abandon()

    def _heard(self, rank: int, words: list) -> None:
        if words[:2] == ["left", "ok"]:
            self._went(rank, "done")
        elif words[:2] == ["left", "failed"]:
            self._went(rank, "failed")
        elif words[:1] == ["gone"] and len(words) == 3 and words[1].isdigit() \
                and words[2] in ("failed", "stopped"):
            self._went(int(words[1]), words[2])  # worker 0 passes it on

    def _went(self, rank: int, how: str) -> None:
        with self.changed:
            if self.state.get(rank) != "running":
                return  # a peer that said it leaves then closes its connection
            self.state[rank] = how
            if how != "done" and self.since is None:
                self.since = time.monotonic()
            self.changed.notify_all()
        if how != "done" and self.cluster.chief:
            for other, sock in self.peers.items():
                if other != rank:
                    _send(sock, f"gone {rank} {how}")

    def _gone(self) -> dict:
        return {rank: how for rank, how in self.state.items() if how in ("failed", "stopped")}

    def message(self) -> str:
        gone = self._gone()
        stopped = sorted(rank for rank, how in gone.items() if how == "stopped")
        ranks = stopped or sorted(gone)
        what = "stopped" if stopped else "failed (see its output)"
        return (f"{_workers(ranks)} of {self.cluster.size} {what} during the run, so worker "
                f"{self.cluster.rank} stops too; the last checkpoint is kept: "
                f"{self.resume_hint}")

    def _abandon(self) -> None:
        """One line on stderr, then exit at once: JAX's runtime would wait for the lost worker
        (and print pages of C++ log) before giving up."""
        line = f"error: {self.message()}\n"
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os.write(2, line.encode())
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)  # whatever JAX's threads say while the process ends
        os._exit(1)

    def arm(self) -> None:
        """A new part of the run begins: every other worker must still be there."""
        with self.changed:
            gone = [rank for rank, how in self.state.items() if how != "done" and how != "running"]
            if gone:
                raise ClusterError(f"{_workers(gone)} of {self.cluster.size} left the cluster; "
                                   f"start every worker again")
            self.state = dict.fromkeys(self.state, "running")
            self.armed, self.left_ok, self.since = True, False, None

    def leave(self, error: BaseException | None) -> None:
        with self.changed:
            runtime = error is not None and type(error).__module__.startswith(("jax", "jaxlib"))
            if runtime:  # JAX's runtime failed a collective: most likely because a worker
                # stopped, which the watch may learn a moment later than the main thread
                self.changed.wait_for(self._gone, LEFT_GRACE)
            gone = self._gone()
            abandon = error is not None and ("stopped" in gone.values() or (runtime and gone))
            if not abandon:
                self.armed, self.left_ok = False, error is None
        if abandon:
            self._abandon()
        for sock in self.peers.values():
            _send(sock, f"left {'ok' if error is None else 'failed'}")

    def at_exit(self) -> None:
        """Before JAX's own exit hook: its shutdown waits for every worker, so it runs only
        when every worker is leaving; otherwise this process ends here."""
        if self.armed:  # leaving mid-run (an error before training began, or after a join)
            self.armed = False
            for sock in self.peers.values():
                _send(sock, "left failed")
        with self.changed:
            self.changed.wait_for(lambda: "running" not in self.state.values(), LEFT_GRACE)
            everyone_left = all(how in ("done", "failed") for how in self.state.values())
        if not everyone_left:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
            os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
            os._exit(0 if self.left_ok else 1)


def check_dask_cluster(cluster, cluster_options=None, *, optional: bool = False) -> None:
    """Checks a ``--cluster`` value (a Dask scheduler address or ``"slurm"``) and its options.

    Args:
        cluster: the value.
        cluster_options: keyword arguments of the SLURM cluster, or None.
        optional: None is a value too (no cluster: local processes).

    Raises:
        ValueError: ``cluster`` is not a non-empty string (nor None when ``optional``), or
            ``cluster_options`` is given without ``cluster="slurm"`` or is not a dict.
    """
    if not (optional and cluster is None) and (not isinstance(cluster, str)
                                               or not cluster.strip()):
        raise UsageError(f"cluster must be {'None, ' if optional else ''}a Dask scheduler "
                         f"address or 'slurm', received: {cluster!r}")
    if cluster_options is not None and (cluster != "slurm" or not isinstance(cluster_options,
                                                                              dict)):
        raise UsageError(f"cluster_options must be a dict and needs cluster='slurm', received: "
                         f"cluster_options={cluster_options!r} with cluster={cluster!r}")


@contextlib.contextmanager
def dask_client(cluster: str, *, jobs: int | None = None, cluster_options: dict | None = None):
    """A ``distributed.Client`` of a running Dask scheduler (``"tcp://host:8786"``), or of a
    ``dask_jobqueue.SLURMCluster`` started here with ``jobs`` jobs (``cluster="slurm"``,
    ``cluster_options`` its keyword arguments; without them dask-jobqueue reads its
    configuration file). Leaving closes the connection, never the user's own cluster."""
    check_dask_cluster(cluster, cluster_options)
    from distributed import Client

    if cluster != "slurm":
        with Client(cluster) as client:
            yield client
        return
    from dask_jobqueue import SLURMCluster

    with SLURMCluster(**(cluster_options or {})) as slurm:
        slurm.scale(jobs=jobs or 1)
        with Client(slurm) as client:
            yield client
