"""What the Keras backend runs on: GPUs visible, their name, GPU memory, and the precision and
distribution context that training and the throughput study share.

Each hardware query is one small function, so tests can swap in a fake.

GPU memory. TensorFlow reserves nearly the whole memory of every visible GPU when it first
touches one, so two notebooks (or a notebook and a monitor) cannot share a card. The workbench
turns on TensorFlow's *memory growth* instead (take memory as it is needed) the first time it
asks how many GPUs there are, which is before it builds or trains anything. Turn that off with
the environment variable ``WORKBENCH_GPU_MEMORY_GROWTH=0`` (``false``, ``no`` and ``off`` work
too), or call :func:`configure_gpu_memory` yourself before anything runs on the GPU. JAX
behaves differently: it preallocates 75% of the card when it starts, which its own variables
control (``XLA_PYTHON_CLIENT_PREALLOCATE=false`` to allocate as needed,
``XLA_PYTHON_CLIENT_MEM_FRACTION=.5`` for a smaller share); they must be set before JAX first
uses the GPU, so the workbench leaves them to you.

Several devices. ``execution_context(..., strategy="auto")`` trains data-parallel when the
backend sees several devices: ``tf.distribute.MirroredStrategy`` over the GPUs on TensorFlow,
``keras.distribution.DataParallel`` over the local devices on JAX (each batch is split across
them, so the batch size must be a multiple of the device count). ``strategy="distributed"``
trains over the devices of several worker processes, on one or several machines
(``workbench._cluster``).
"""

from __future__ import annotations

import contextlib
import os
import warnings

import keras

from workbench._checks import UsageError
from workbench._cluster import DEFAULT_JOIN_TIMEOUT, joined, leave
from workbench._cluster import start as join_cluster

PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
MEMORY_GROWTH_ENV = "WORKBENCH_GPU_MEMORY_GROWTH"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_memory_configured = False  # configure_gpu_memory ran once on the TensorFlow backend


def _tensorflow_config():
    """``tf.config``: TensorFlow's device configuration (tests swap in a fake)."""
    import tensorflow as tf

    return tf.config


def _jax_devices() -> list:
    """The devices of JAX's default platform (GPUs when there are any), as JAX lists them."""
    import jax

    return jax.devices()


def gpu_count() -> int:
    """GPUs visible to the current Keras backend.

    On TensorFlow the first call also applies :func:`configure_gpu_memory`'s default (memory
    growth, unless ``WORKBENCH_GPU_MEMORY_GROWTH=0``).
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        _configure_gpu_memory_once()
        return len(_tensorflow_config().list_physical_devices("GPU"))
    if backend == "jax":
        return sum(device.platform == "gpu" for device in _jax_devices())
    return 0


def local_device_count() -> int:
    """Devices data-parallel training can split a batch over: GPUs on TensorFlow, the devices
    of JAX's default platform on JAX (several CPU devices too, e.g. with
    ``XLA_FLAGS=--xla_force_host_platform_device_count=2``), 1 on other backends."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return max(1, gpu_count())
    if backend == "jax":
        return max(1, len(_jax_devices()))
    return 1


def gpu_name() -> str:
    """The first GPU's name as the Keras backend reports it."""
    if keras.backend.backend() == "jax":
        return next(device.device_kind for device in _jax_devices() if device.platform == "gpu")
    if keras.backend.backend() == "tensorflow":
        config = _tensorflow_config()
        gpu = config.list_physical_devices("GPU")[0]
        return config.experimental.get_device_details(gpu).get("device_name", gpu.name)
    return "GPU"


def memory_growth_default() -> bool:
    """Whether TensorFlow's GPU memory growth is wanted, from ``WORKBENCH_GPU_MEMORY_GROWTH``.

    Returns:
        True when the variable is unset or empty (the default) or says ``1``/``true``/``yes``/
        ``on``; False for ``0``/``false``/``no``/``off`` (any case).

    Raises:
        ValueError: the variable holds anything else.
    """
    value = os.environ.get(MEMORY_GROWTH_ENV, "").strip().lower()
    if value in ("", *_TRUE):
        return True
    if value in _FALSE:
        return False
    raise UsageError(f"{MEMORY_GROWTH_ENV} must be one of {', '.join(_TRUE + _FALSE)} (or "
                     f"unset), received: {os.environ[MEMORY_GROWTH_ENV]!r}")


def configure_gpu_memory(growth: bool | None = None) -> bool | None:
    """Sets TensorFlow's GPU memory growth for every visible GPU.

    With growth on, TensorFlow takes GPU memory as it needs it instead of reserving the whole
    card up front. It can only be changed before TensorFlow first uses a GPU; later calls warn
    and change nothing. The workbench calls this once, with the default, the first time it
    counts GPUs (see :func:`gpu_count`).

    Args:
        growth: True to grow as needed, False for TensorFlow's own behaviour (reserve the card),
            None for :func:`memory_growth_default` (on unless ``WORKBENCH_GPU_MEMORY_GROWTH=0``).

    Returns:
        The setting now in force, or None when there was nothing to set: not the TensorFlow
        backend, no GPU visible, or TensorFlow had already initialised the GPUs.

    Raises:
        ValueError: ``growth`` is not True, False or None, or the environment variable holds
            an unknown value.
    """
    global _memory_configured
    if growth is not None and not isinstance(growth, bool):
        raise UsageError(f"growth must be True, False or None, received: {growth!r}")
    growth = memory_growth_default() if growth is None else growth
    if keras.backend.backend() != "tensorflow":
        return None
    _memory_configured = True
    config = _tensorflow_config()
    gpus = config.list_physical_devices("GPU")
    if not gpus:
        return None
    try:
        for gpu in gpus:
            config.experimental.set_memory_growth(gpu, growth)
    except RuntimeError as error:  # the GPUs are already in use: their settings are fixed
        warnings.warn(f"GPU memory growth was not set to {growth}: TensorFlow had already "
                      f"initialised the GPUs ({error}). Call workbench._device."
                      "configure_gpu_memory() before anything runs on the GPU, or set "
                      "TF_FORCE_GPU_ALLOW_GROWTH before starting Python.", RuntimeWarning,
                      stacklevel=2)
        return None
    return growth


def _configure_gpu_memory_once() -> None:
    if not _memory_configured:
        configure_gpu_memory()


def auto_distribution():
    """The data-parallel strategy ``strategy="auto"`` picks, or None for one device.

    Returns:
        ``tf.distribute.MirroredStrategy`` over the GPUs when TensorFlow sees several,
        ``keras.distribution.DataParallel`` over the local devices when JAX sees several, else
        None.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow" and gpu_count() > 1:
        import tensorflow as tf

        return tf.distribute.MirroredStrategy()
    if backend == "jax" and local_device_count() > 1:
        return keras.distribution.DataParallel(devices=keras.distribution.list_devices())
    return None


def resolve_strategy(strategy, *, join_timeout: float = DEFAULT_JOIN_TIMEOUT,
                     resume_hint: str | None = None):
    """The strategy object a setting names.

    Args:
        strategy: a strategy or distribution object (returned as is), None (one device),
            ``"auto"`` (:func:`auto_distribution`) or ``"distributed"``: this process is one
            worker of several, started by a launcher (``workbench._cluster``); their runtime
            is started here, so it must come before anything else runs on the backend.
        join_timeout: with ``"distributed"``, seconds to wait for the other workers to start.
        resume_hint: with ``"distributed"``, what to do when a worker stops mid-run (the
            command that resumes), printed in the line this worker exits with.

    Raises:
        ValueError: any other string, ``"distributed"`` without a launcher's environment, or
            a bad ``join_timeout``.
        workbench._cluster.ClusterError: the workers did not all join in time.
    """
    if strategy == "distributed":
        return join_cluster(keras.backend.backend(), join_timeout=join_timeout,
                            resume_hint=resume_hint)
    if strategy == "auto":
        return auto_distribution()
    if isinstance(strategy, str):
        raise UsageError(f"strategy must be a strategy object, None, 'auto' or 'distributed', "
                         f"received: {strategy!r}")
    return strategy


def replica_count(strategy) -> int:
    """The devices each batch is split between under ``strategy`` (1 for None)."""
    if strategy is None:
        return 1
    if hasattr(strategy, "num_replicas_in_sync"):  # a tf.distribute strategy
        return int(strategy.num_replicas_in_sync)
    return int(strategy.device_mesh.devices.size)  # a keras.distribution.Distribution


@contextlib.contextmanager
def execution_context(precision: str, strategy):
    """Sets the dtype policy and the distribution strategy for building and training.

    Args:
        precision: one of ``PRECISIONS``; ``"auto"`` is mixed float16 when a GPU is visible.
        strategy: a ``tf.distribute.Strategy`` or a ``keras.distribution.Distribution`` (JAX),
            None for one device, or a name :func:`resolve_strategy` knows (``"auto"``:
            MirroredStrategy over several GPUs on TensorFlow, DataParallel over several local
            devices on JAX; ``"distributed"``: several worker processes).

    Yields the policy name and the strategy object (or None). The global dtype policy is
    restored afterwards; it must be set before a checkpoint is loaded, so that the optimizer's
    loss-scaling state is restored with it. A worker of several tells the others when it leaves
    the context (``workbench._cluster.leave``), so that none waits for it in vain.

    Raises:
        ValueError: ``precision`` is not one of ``PRECISIONS``, or ``strategy`` is a string
            :func:`resolve_strategy` does not know.
    """
    if precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}, "
                         f"received: {precision!r}")
    strategy = resolve_strategy(strategy)
    gpus = gpu_count()
    policy = ("mixed_float16" if gpus else "float32") if precision == "auto" else precision
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(policy)
    cluster = joined()
    try:
        with strategy.scope() if strategy is not None else contextlib.nullcontext():
            yield policy, strategy
    except BaseException as error:
        if cluster is not None:
            leave(error)
        raise
    else:
        if cluster is not None:
            leave()
    finally:
        keras.mixed_precision.set_global_policy(previous)
