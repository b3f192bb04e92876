"""What the Keras backend runs on: GPUs visible, their name, and the precision and distribution
context that training and the throughput study share.

Each hardware query is one small function, so tests can swap in a fake.
"""

from __future__ import annotations

import contextlib

import keras

PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")


def gpu_count() -> int:
    """GPUs visible to the current Keras backend."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf
        return len(tf.config.list_physical_devices("GPU"))
    if backend == "jax":
        import jax
        return sum(device.platform == "gpu" for device in jax.devices())
    return 0


def gpu_name() -> str:
    """The first GPU's name as the Keras backend reports it."""
    if keras.backend.backend() == "jax":
        import jax
        return next(device.device_kind for device in jax.devices() if device.platform == "gpu")
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf
        gpu = tf.config.list_physical_devices("GPU")[0]
        return tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name)
    return "GPU"


@contextlib.contextmanager
def execution_context(precision: str, strategy):
    """Sets the dtype policy and the distribution strategy for building and training.

    Args:
        precision: one of ``PRECISIONS``; ``"auto"`` is mixed float16 when a GPU is visible.
        strategy: a ``tf.distribute.Strategy``, None, or ``"auto"`` (MirroredStrategy over all
            GPUs when the TensorFlow backend sees several).

    Yields the policy name and the strategy's class name (or None). The global dtype policy is
    restored afterwards; it must be set before a checkpoint is loaded, so that the optimizer's
    loss-scaling state is restored with it.
    """
    gpus = gpu_count()
    policy = ("mixed_float16" if gpus else "float32") if precision == "auto" else precision
    if strategy == "auto":
        strategy = None
        if gpus > 1 and keras.backend.backend() == "tensorflow":
            import tensorflow as tf
            strategy = tf.distribute.MirroredStrategy()
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(policy)
    try:
        with strategy.scope() if strategy is not None else contextlib.nullcontext():
            yield policy, type(strategy).__name__ if strategy is not None else None
    finally:
        keras.mixed_precision.set_global_policy(previous)
