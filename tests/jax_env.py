"""The environment of a test's JAX subprocess: Keras on JAX on the CPU, compiled quickly.

XLA compiles with LLVM's optimizations off (``--xla_backend_optimization_level=0``, as the GPU
check's ``--tiny`` does: about a third of the compile time; the same computation, only slower
machine code, and these programs run a few steps), and with a ``cache`` folder JAX's persistent
compilation cache lets a process that compiles one program twice (an uninterrupted run and its
resumed twin) compile it once. Each test passes its own folder: JAX writes a cache entry in
place, so two processes compiling at once must not share one. The tests compare JAX runs with
JAX runs under the same flags, or with TensorFlow within a tolerance.
"""

import os


def jax_env(cache=None, *, xla_flags: str = "", **variables) -> dict:
    """``os.environ`` with Keras on JAX on the CPU, the fast compile flags (plus ``xla_flags``),
    the persistent compilation cache in ``cache`` when given, and ``variables``."""
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_backend_optimization_level=0 {xla_flags}".strip(), **variables}
    if cache is not None:
        env.update(JAX_COMPILATION_CACHE_DIR=str(cache),
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return env
