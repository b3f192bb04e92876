"""The runtimes that run an exported model without Keras: a LiteRT interpreter, ONNX Runtime,
or a TensorFlow SavedModel. Each is a callable from a float32 batch of raw pixels to
probabilities.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from workbench._checks import check_int


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
    """

    def __init__(self, path: str | Path, *, threads: int = 2):
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(path)
        self.threads = check_int("threads", threads, minimum=1)
        if not self.path.is_file():
            raise FileNotFoundError(f"path must be a .tflite file, received: {str(path)!r}")
        self._interpreter = Interpreter(model_path=str(self.path), num_threads=self.threads)
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        if len(self._input["shape"]) != 4:
            raise ValueError(f"the model must take (N, H, W, 3) images, received input shape: "
                             f"{list(self._input['shape'])}")
        if self._input["shape"][0] != 1:  # one image per invoke
            self._interpreter.resize_tensor_input(self._input["index"],
                                                  [1, *self._input["shape"][1:]])
        self._interpreter.allocate_tensors()
        self._lock = threading.Lock()

    @property
    def input_shape(self) -> tuple:
        """``(None, height, width, channels)``, like a Keras model's."""
        return (None, *(int(d) for d in self._input["shape"][1:]))

    @property
    def output_shape(self) -> tuple:
        """``(None, classes)``, like a Keras model's."""
        return (None, int(self._output["shape"][-1]))

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        pixels = _quantize(np.asarray(pixels), self._input)
        if pixels.ndim != 4:
            raise ValueError(f"pixels must be a batch (N, H, W, 3), received shape: "
                             f"{pixels.shape}")
        rows = []
        for image in pixels:
            with self._lock:
                self._interpreter.set_tensor(self._input["index"], image[None])
                self._interpreter.invoke()
                rows.append(self._interpreter.get_tensor(self._output["index"]))  # a copy
        return _dequantize(np.concatenate(rows), self._output)


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


def runner(path: str | Path, format: str):
    """A function from a float32 batch to probabilities, running the exported model."""
    if format == "litert":
        return LiteRTModel(path)
    if format == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: x})[0]
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    return lambda x: loaded.serve(tf.constant(x)).numpy()
