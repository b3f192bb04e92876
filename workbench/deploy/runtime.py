"""The runtimes that run an exported model without Keras: a LiteRT interpreter, ONNX Runtime,
or a TensorFlow SavedModel. Each is a callable from a float32 batch of raw pixels to
probabilities.

:class:`LiteRTModel` and :class:`OnnxModel` are the two fast runtimes a run's prediction and
evaluation use; which of them is faster depends on the model and the machine, so
``workbench.deploy.export.export_fast`` times both with :func:`time_turns` and records the
faster one. Neither imports TensorFlow.
"""

from __future__ import annotations

import os
import platform
import statistics
import threading
import time
from pathlib import Path

import numpy as np

from workbench._checks import MissingPath, UsageError, check_choice, check_int, check_number

RUNTIMES = ("litert", "onnx")  # the fast runtimes, by the name of their export format


class LiteRTModel:
    """A ``.tflite`` classifier run by the LiteRT interpreter (``ai-edge-litert``).

    Calling it with a batch ``(N, H, W, 3)`` of raw pixels returns the ``(N, classes)``
    probabilities. It invokes the interpreter once per image: on the 2-core CPU of
    ``benchmarks/predict_latency.py`` that beat one invoke on a resized batch of 32 for
    MobileNetV2-224 (203 against 169 images/s) and came within 15% of it for the small CNN; it
    never re-allocates and lets the requests of several threads interleave. Each invoke holds
    a lock, so one instance may be shared by threads.

    Args:
        path: the ``.tflite`` file.
        threads: CPU threads of the interpreter.

    Attributes:
        runtime: ``"litert"``.
    """

    runtime = "litert"

    def __init__(self, path: str | Path, *, threads: int = 2):
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(path)
        self.threads = check_int("threads", threads, minimum=1)
        if not self.path.is_file():
            raise MissingPath(f"path must be a .tflite file, received: {str(path)!r}")
        self._interpreter = Interpreter(model_path=str(self.path), num_threads=self.threads)
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        if len(self._input["shape"]) != 4:
            raise UsageError(f"the model must take (N, H, W, 3) images, received input shape: "
                             f"{list(self._input['shape'])}")
        if self._input["shape"][0] != 1:  # one image per invoke
            self._interpreter.resize_tensor_input(self._input["index"],
                                                  [1, *self._input["shape"][1:]])
        self._interpreter.allocate_tensors()
        self._lock = threading.Lock()
        # float32 in and out (no quantized input or output): __call__ converts nothing
        self._plain = all(details["dtype"] == np.float32
                          for details in (self._input, self._output))

    @property
    def input_shape(self) -> tuple:
        """``(None, height, width, channels)``, like a Keras model's."""
        return (None, *(int(d) for d in self._input["shape"][1:]))

    @property
    def output_shape(self) -> tuple:
        """``(None, classes)``, like a Keras model's."""
        return (None, int(self._output["shape"][-1]))

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        pixels = np.asarray(pixels)
        pixels = pixels.astype(np.float32, copy=False) if self._plain \
            else _quantize(pixels, self._input)
        if pixels.ndim != 4:
            raise UsageError(f"pixels must be a batch (N, H, W, 3), received shape: "
                             f"{pixels.shape}")
        rows = []
        for image in pixels:
            with self._lock:
                self._interpreter.set_tensor(self._input["index"], image[None])
                self._interpreter.invoke()
                rows.append(self._interpreter.get_tensor(self._output["index"]))  # a copy
        output = rows[0] if len(rows) == 1 else np.concatenate(rows)
        return output if self._plain else _dequantize(output, self._output)


class OnnxModel:
    """A ``.onnx`` classifier run by ONNX Runtime on the CPU.

    Calling it with a batch ``(N, H, W, 3)`` of raw pixels returns the ``(N, classes)``
    probabilities in one ``session.run``. ONNX Runtime's sessions may be run by several
    threads at once, so one instance may be shared by threads.

    Args:
        path: the ``.onnx`` file (as ``workbench.deploy.export`` writes it: float32 NHWC input).
        threads: CPU threads of one run (ONNX Runtime's intra-op threads).

    Attributes:
        runtime: ``"onnx"``.
    """

    runtime = "onnx"

    def __init__(self, path: str | Path, *, threads: int = 2):
        import onnxruntime

        self.path = Path(path)
        self.threads = check_int("threads", threads, minimum=1)
        if not self.path.is_file():
            raise MissingPath(f"path must be a .onnx file, received: {str(path)!r}")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: not a line per unused initializer
        self._session = onnxruntime.InferenceSession(str(self.path), options,
                                                     providers=["CPUExecutionProvider"])
        source, target = self._session.get_inputs()[0], self._session.get_outputs()[0]
        if len(source.shape) != 4:
            raise UsageError(f"the model must take (N, H, W, 3) images, received input shape: "
                             f"{list(source.shape)}")
        self._name = source.name
        self._input_shape = (None, *(d if isinstance(d, int) else None for d in source.shape[1:]))
        self._output_shape = (None, target.shape[-1] if isinstance(target.shape[-1], int)
                              else None)

    @property
    def input_shape(self) -> tuple:
        """``(None, height, width, channels)``, like a Keras model's."""
        return self._input_shape

    @property
    def output_shape(self) -> tuple:
        """``(None, classes)``, like a Keras model's."""
        return self._output_shape

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        pixels = np.asarray(pixels, dtype=np.float32)
        if pixels.ndim != 4:
            raise UsageError(f"pixels must be a batch (N, H, W, 3), received shape: "
                             f"{pixels.shape}")
        return self._session.run(None, {self._name: pixels})[0]


def load_runtime(path: str | Path, runtime: str, *, threads: int = 2):
    """A :class:`LiteRTModel` (``runtime="litert"``) or :class:`OnnxModel` (``"onnx"``)."""
    check_choice("runtime", runtime, RUNTIMES)
    return (LiteRTModel if runtime == "litert" else OnnxModel)(path, threads=threads)


SETTLE_SECONDS = 0.06  # ONNX Runtime's threads spin (a core's worth) for ~50 ms after a call


def time_runtimes(models: dict, pixels: np.ndarray, **timing) -> dict:
    """Median milliseconds of one call of each model on ``pixels``, measured interleaved.

    Takes the arguments of :func:`time_turns` and returns the median over every timed call
    (:func:`p50_ms`).

    Returns:
        ``{name: p50 in milliseconds}``.
    """
    return p50_ms(time_turns(models, pixels, **timing))


def time_turns(models: dict, pixels: np.ndarray, *, rounds: int = 8, block: int = 4,
               seconds: float = 1.5, warmup: int = 3,
               settle: float = SETTLE_SECONDS) -> dict:
    """Milliseconds of each timed call of each model on ``pixels``, turn by turn, interleaved.

    The models take turns, ``block`` timed calls each after one untimed call, so that load
    from other processes falls on all of them alike; after each turn it waits ``settle``
    seconds, for the threads that a runtime leaves spinning after its calls (ONNX Runtime's
    spin for about 50 ms) would otherwise slow the next runtime. It stops after ``rounds``
    turns or, past 2 turns, ``seconds``. The turns pair the models' timings: two models'
    calls of one turn ran seconds apart, under the same load, so comparing them turn by turn
    (as ``workbench.deploy.export.choose_quantized`` does) tells a real difference from a
    burst of load that fell on one model's calls.

    Args:
        models: ``{name: callable}``, each called with ``pixels``.
        pixels: the input of every call (one image: ``(1, H, W, 3)`` float32).
        rounds: at most this many turns of each model.
        block: timed calls of each model per turn.
        seconds: stop early (after at least 2 turns) once this much time has passed.
        warmup: untimed calls of each model first.
        settle: seconds of rest after each turn.

    Returns:
        ``{name: [[ms of each timed call] of each turn]}``, the same number of turns for
        every model.
    """
    check_int("rounds", rounds, minimum=1)
    check_number("settle", settle, minimum=0.0)
    check_int("block", block, minimum=1)
    check_int("warmup", warmup, minimum=0)
    check_number("seconds", seconds, minimum=0.0, exclusive_minimum=True)
    if not models:
        raise UsageError("models must name at least one model, received: {}")
    for run in models.values():
        for _ in range(warmup):
            run(pixels)
    turns = {name: [] for name in models}
    started = time.perf_counter()
    for turn in range(rounds):
        for name, run in models.items():
            run(pixels)  # untimed: the previous runtime's threads may still be spinning
            times = []
            for _ in range(block):
                begun = time.perf_counter()
                run(pixels)
                times.append((time.perf_counter() - begun) * 1e3)
            turns[name].append(times)
            time.sleep(settle)
        if turn >= 1 and time.perf_counter() - started > seconds:
            break
    return turns


def p50_ms(turns: dict) -> dict:
    """``{name: median over every call, rounded to the microsecond}`` of :func:`time_turns`'s
    result."""
    return {name: round(statistics.median(ms for turn in values for ms in turn), 3)
            for name, values in turns.items()}


def machine() -> str:
    """The CPU this process runs on, e.g. ``"Intel(R) Xeon(R) ... x86_64, 2 cores"``: a choice
    of runtime measured on one machine is re-measured on another."""
    name = _cpuinfo("model name")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name or platform.processor() or 'unknown CPU'} {platform.machine()}, {cores} cores"


# the vector extensions that decide which kernels BLAS, LiteRT and ONNX Runtime run, widest first
VECTOR_EXTENSIONS = ("amx_int8", "avx512_vnni", "avx512f", "avx_vnni", "avx2", "fma", "avx")


def instruction_sets() -> str:
    """The vector extensions of this CPU that its kernels use, e.g. ``"AVX2, FMA, AVX"``
    (``"unknown"`` without /proc/cpuinfo): with :func:`machine`, what a timing table names."""
    line = _cpuinfo("flags")
    if line is None:
        return "unknown"
    flags = set(line.split())
    present = [name.upper().replace("_", "-") for name in VECTOR_EXTENSIONS if name in flags]
    return ", ".join(present) or "no AVX"


def _cpuinfo(key: str) -> str | None:
    """The value of the first ``key`` line of /proc/cpuinfo (``""`` when it has none), or None
    where there is no /proc/cpuinfo (not Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            return next((line.split(":", 1)[1].strip() for line in info
                         if line.startswith(key)), "")
    except OSError:
        return None


def _quantize(pixels: np.ndarray, details: dict) -> np.ndarray:
    """Pixels in the interpreter's input dtype (scaled for an integer-quantized input)."""
    dtype = details["dtype"]
    scale, zero_point = details["quantization"]
    if np.issubdtype(dtype, np.integer) and scale:
        info = np.iinfo(dtype)
        return np.clip(np.round(pixels / scale + zero_point), info.min, info.max).astype(dtype)
    return pixels.astype(dtype, copy=False)


def _dequantize(output: np.ndarray, details: dict) -> np.ndarray:
    scale, zero_point = details["quantization"]
    if np.issubdtype(output.dtype, np.integer) and scale:
        return (output.astype(np.float32) - zero_point) * scale
    return output.astype(np.float32, copy=False)


def runner(path: str | Path, format: str, *, threads: int = 2):
    """A function from a float32 batch to probabilities, running the exported model
    (``format``: ``"litert"``, ``"onnx"`` or ``"saved_model"``, which imports TensorFlow)."""
    if format in RUNTIMES:
        return load_runtime(path, format, threads=threads)
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    return lambda x: loaded.serve(tf.constant(x)).numpy()
