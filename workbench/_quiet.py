"""A quiet start: TensorFlow, absl and XLA print start-up lines on stderr (oneDNN notices, the
CUDA-stub probe, CPU-feature notices, "failed call to cuInit" without a GPU) that say nothing a
user must act on. Newer TensorFlow writes them through absl's C++ logging before any setting
can stop them, so the only sure way is to point the process's stderr at /dev/null while Keras
and the backend start."""

from __future__ import annotations

import contextlib
import logging
import os
import sys

from workbench._compat import JAX_PLATFORM_LOGGER


@contextlib.contextmanager
def stderr_silenced():
    """Sends what this process writes to file descriptor 2 (C libraries too) to /dev/null."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def start_keras_quietly(first=None) -> None:
    """Imports Keras and its backend, and lets the backend probe its devices, with the start-up
    lines silenced; errors still raise (and are shown) once stderr is back.

    Args:
        first: called once Keras is imported, before the backend probes its devices (a
            multi-process runtime must start before that).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "keras" in sys.modules:
        if first is not None:
            first()
        return
    with stderr_silenced():
        import keras

        if first is not None:
            first()

        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf
            tf.config.list_physical_devices("GPU")  # the CUDA probe, now rather than later
        elif keras.backend.backend() == "jax":
            import jax
            jax.devices()
    for name in ("absl", "tensorflow", JAX_PLATFORM_LOGGER):
        logging.getLogger(name).setLevel(logging.ERROR)
