"""Export a run's model for serving and phones: LiteRT (TFLite), SavedModel or ONNX, checked.

:func:`export` converts a run directory's ``best.keras`` (or ``model.keras``) and writes the
result under ``<run_dir>/export/`` with a JSON sidecar next to it (``model.tflite`` and
``model.tflite.json``), so the labels and the preprocessing travel with the file:

========================  =====================================================================
``model.tflite``          LiteRT flatbuffer, float32 (``model_float16.tflite``,
                          ``model_int8.tflite`` quantized; ``model_final*`` from ``model.keras``)
``saved_model/``          a TensorFlow SavedModel for TF Serving (endpoint ``serve``)
``model.onnx``            ONNX, through Keras's own exporter (tf2onnx)
``<name>.json``           the sidecar: labels, input size and dtype, value range (raw 0-255 RGB,
                          the model scales its input itself), resize mode, backbone, format,
                          quantization, the source ``.keras`` file with its sha256, agreement
========================  =====================================================================

Every export is checked before it is put in place: the exported model and the Keras model
classify the run's test split (at most ``max_images`` images, decoded exactly as in training),
and top-1 agreement and the largest probability difference are recorded. A float32 export must
agree on at least 99% of the images with probabilities within 1e-3, or :class:`ExportCheckFailed`
is raised and no file is left at the export's path; quantized exports only report the numbers.

Files are written to a temporary name and renamed; the old sidecar is removed before the new
file is renamed in and the new sidecar written last, so a killed export never leaves a file that
a sidecar vouches for. :func:`find_export` returns an export only while its sidecar matches the
run's current ``.keras`` file (by sha256), so retraining makes an export stale.

This module imports TensorFlow only inside :func:`export`: :func:`find_export` and
:func:`read_sidecar` are what the no-TensorFlow fast path of ``workbench.deploy.predict`` uses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import io
import json
import warnings
from pathlib import Path

import numpy as np

from workbench._checks import check_choice, check_int
from workbench._io import atomic_path, remove, write_json
from workbench.deploy.runtime import runner
from workbench.runs import MODELS, RunDir

FORMATS = ("litert", "saved_model", "onnx")
QUANTIZATIONS = (None, "float16", "int8")
MIN_AGREEMENT = 0.99   # float32 exports: top-1 agreement with the Keras model, at least
MAX_PROB_DIFF = 1e-3   # float32 exports: largest |probability difference|, at most
INPUT = {"dtype": "float32", "layout": "NHWC", "channels": "RGB", "value_range": [0, 255],
         "preprocessing": "none: feed raw 0-255 pixels; the model scales them itself"}


class ExportError(RuntimeError):
    """A model that could not be exported (the converter failed, or no TensorFlow backend)."""


class ExportCheckFailed(ExportError):
    """A float32 export whose predictions differ from the Keras model's; it was removed.

    Attributes:
        agreement: the numbers measured (see :class:`ExportResult`).
    """

    def __init__(self, message: str, agreement: dict):
        super().__init__(message)
        self.agreement = agreement


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What :func:`export` wrote.

    Attributes:
        path: the exported file (a folder for ``saved_model``).
        sidecar_path: the JSON next to it.
        agreement: ``None`` when not checked, else a dict: ``split``, ``images``,
            ``top1_agreement`` (fraction of images with the same top-1 class as the Keras model),
            ``max_abs_diff`` and ``mean_abs_diff`` (of the probabilities), ``required`` (the
            float32 thresholds, or ``None`` for quantized exports) and ``passed``.
        info: the sidecar's contents.
    """

    path: Path
    sidecar_path: Path
    agreement: dict | None
    info: dict

    def format(self) -> str:
        """A few lines for a terminal: the files and the agreement."""
        size = _size(self.path)
        lines = [f"Wrote {self.path} ({size / 1e6:.2f} MB) and {self.sidecar_path.name}"]
        a = self.agreement
        if a is None:
            lines.append("agreement: not checked")
        else:
            verdict = "reported only (quantized)" if a["passed"] is None else "passed"
            lines.append(f"agreement with the Keras model on {a['images']} {a['split']} images: "
                         f"top-1 {a['top1_agreement']:.2%}, max |dp| {a['max_abs_diff']:.2e} "
                         f"({verdict})")
        return "\n".join(lines) + "\n"


def export_path(run_dir: str | Path, *, format: str = "litert", quantize: str | None = None,
                model: str = "best") -> Path:
    """Where :func:`export` writes: ``<run_dir>/export/model.tflite`` and so on."""
    check_choice("format", format, FORMATS)
    check_choice("quantize", quantize, QUANTIZATIONS)
    check_choice("model", model, MODELS)
    if quantize is not None and format != "litert":
        raise ValueError(f"quantize applies to format='litert' only, received: "
                         f"quantize={quantize!r} with format={format!r}")
    stem = "model" if model == "best" else "model_final"
    if format == "saved_model":
        name = "saved_model" if model == "best" else "saved_model_final"
    elif format == "onnx":
        name = f"{stem}.onnx"
    else:
        name = f"{stem}{'_' + quantize if quantize else ''}.tflite"
    return Path(run_dir) / "export" / name


def sidecar_path(path: str | Path) -> Path:
    """The sidecar JSON of an exported file: its name plus ``.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def read_sidecar(path: str | Path) -> dict:
    """The sidecar of an exported file (``model.tflite`` -> ``model.tflite.json``).

    Raises:
        FileNotFoundError: when there is none.
    """
    side = sidecar_path(path)
    if not side.is_file():
        raise FileNotFoundError(f"no sidecar {side.name} next to {str(path)!r}")
    return json.loads(side.read_text(encoding="utf-8"))


def find_export(run_dir: str | Path, *, format: str = "litert", quantize: str | None = None,
                model: str = "best") -> Path | None:
    """The path of an up-to-date export, or None when it is missing, incomplete or stale.

    Stale means the run's ``.keras`` file is no longer the one the export was made from
    (another file name, or another sha256; the hash is skipped while size and modification
    time are unchanged). Imports no TensorFlow.
    """
    path = export_path(run_dir, format=format, quantize=quantize, model=model)
    try:
        info = read_sidecar(path)
        source = RunDir(run_dir).model_path(model)
    except (FileNotFoundError, ValueError):  # ValueError: a sidecar that is not JSON
        return None
    if not path.exists() or info.get("bytes") != _size(path) or \
            info.get("source_model") != source.name:
        return None
    stat = source.stat()
    if info.get("source_bytes") == stat.st_size and info.get("source_mtime_ns") == stat.st_mtime_ns:
        return path
    return path if info.get("source_sha256") == _sha256(source) else None


def export(run_dir: str | Path, *, format: str = "litert", quantize: str | None = None,
           model: str = "best", check: bool = True, max_images: int = 1000,
           representative_images: int = 200, seed: int = 0) -> ExportResult:
    """Exports a run's model to ``<run_dir>/export/`` and checks it against the Keras model.

    Args:
        run_dir: a run directory written by ``finetune``.
        format: ``"litert"`` (a TFLite flatbuffer for phones and fast CPU serving),
            ``"saved_model"`` (TF Serving) or ``"onnx"``.
        quantize: LiteRT only: ``None`` (float32), ``"float16"`` (float16 weights, half the
            size) or ``"int8"`` (full integer quantization of weights and activations,
            calibrated on training images, with float32 input and output so it is used the
            same way; ops without an int8 kernel stay float).
        model: ``"best"`` (``best.keras``, or ``model.keras`` when there is none) or
            ``"final"`` (``model.keras``).
        check: compare the export with the Keras model on the run's test split (the
            validation split when there is no test split).
        max_images: at most this many images are compared (evenly spaced through the split).
        representative_images: training images used to calibrate ``int8``.
        seed: which training images calibrate ``int8``.

    Returns:
        An :class:`ExportResult`.

    Raises:
        ExportCheckFailed: a float32 export agreed on fewer than 99% of the images or differed
            by more than 1e-3 in a probability; nothing is left at its path.
        ExportError: the converter cannot handle the model, or Keras does not run on
            TensorFlow.
        FileNotFoundError: ``run_dir`` is not a finished run, or (with ``check``) its split
            folder is gone.
    """
    path = export_path(run_dir, format=format, quantize=quantize, model=model)
    check_int("max_images", max_images, minimum=1)
    check_int("representative_images", representative_images, minimum=1)
    check_int("seed", seed, minimum=0)
    run_dir = Path(run_dir)
    run = RunDir(run_dir)
    side_px = run.image_size  # reads config.json: not a run directory at all fails here
    source = run.model_path(model)
    stat = source.stat()
    source_sha = _sha256(source)

    import keras

    if keras.backend.backend() != "tensorflow":
        raise ExportError(f"export needs Keras on TensorFlow (KERAS_BACKEND=tensorflow), "
                          f"received backend: {keras.backend.backend()!r}")
    from workbench.models import load_model

    network = load_model(source)
    network.predict_on_batch(np.zeros((1, side_px, side_px, 3), np.float32))  # ONNX needs a call
    data = run.load_splits() if check or quantize == "int8" else None  # decoded once
    images = _check_images(data, max_images, run_dir) if check else None
    side = sidecar_path(path)
    with atomic_path(path) as temporary:  # a file, or a folder for saved_model
        try:
            _convert(network, temporary, format=format, quantize=quantize, data=data,
                     count=representative_images, seed=seed)
        except Exception as error:  # the converters raise many types; name the model and why
            raise ExportError(f"the {format} converter cannot handle {source}"
                              f"{' with quantize=' + repr(quantize) if quantize else ''}: "
                              f"{type(error).__name__}: {' '.join(str(error).split())[:800]}"
                              ) from error
        agreement = None
        if images is not None:
            agreement = _agreement(network, temporary, format, images, float32=quantize is None)
            if agreement["passed"] is False:
                remove(side)
                remove(path)
                raise ExportCheckFailed(
                    f"the {format} export of {source.name} disagrees with the Keras model on "
                    f"the {agreement['split']} split: top-1 agreement "
                    f"{agreement['top1_agreement']:.4f} (at least {MIN_AGREEMENT} required), "
                    f"max |probability difference| {agreement['max_abs_diff']:.2e} (at most "
                    f"{MAX_PROB_DIFF} allowed); the export was removed", agreement)
        info = {
            "format": format, "quantize": quantize, "file": path.name, "model": model,
            "labels": run.classes, "image_size": run.image_size,
            "resize_mode": run.resize_mode, "backbone": run.starting_point,
            "input": {**INPUT, "shape": [None, side_px, side_px, 3]},
            "output": "float32 softmax probabilities, one per label, in the order of labels",
            "source_model": source.name, "source_sha256": source_sha,
            "source_bytes": stat.st_size, "source_mtime_ns": stat.st_mtime_ns,
            "bytes": _size(temporary), "agreement": agreement,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "keras_version": keras.__version__,
        }
        remove(side)  # no sidecar may vouch for a half-replaced file
    write_json(side, info)
    return ExportResult(path, side, agreement, info)


# --- conversion ----------------------------------------------------------------------------------

def _convert(network, target: Path, *, format: str, quantize, data, count: int,
             seed: int) -> None:
    """Writes ``network`` in ``format`` to ``target`` (a file, or a folder for saved_model)."""
    quiet = contextlib.redirect_stdout(io.StringIO())  # Keras prints the endpoints it saves
    if format == "saved_model":
        with quiet:
            network.export(str(target), format="tf_saved_model", verbose=False)
        return
    if format == "onnx":
        with quiet, warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # tf2onnx on NumPy 2
            network.export(str(target), format="onnx", verbose=False)
        return
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(network)
    if quantize is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantize == "int8":
        calibration = _representative(data, count, seed)
        converter.representative_dataset = lambda: ([image[None]] for image in calibration)
    with quiet, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        flatbuffer = converter.convert()
    target.write_bytes(flatbuffer)


def _representative(data, count: int, seed: int) -> np.ndarray:
    """Up to ``count`` training images (float32, raw 0-255) that calibrate int8 ranges."""
    images = data.images["train"]
    chosen = np.random.default_rng(seed).permutation(len(images))[:count]
    return np.asarray(images[np.sort(chosen)], dtype=np.float32)


# --- the agreement check -------------------------------------------------------------------------

def _check_images(data, max_images: int, run_dir: Path) -> tuple[str, np.ndarray]:
    """Up to ``max_images`` images of the test split (the validation split without one),
    evenly spaced through it: the split is ordered by class, so its first images would check
    only the first classes."""
    for split in ("test", "val"):
        if split in data.images and len(data.images[split]):
            images = data.images[split]
            chosen = np.unique(np.linspace(0, len(images) - 1, min(max_images, len(images)))
                               .round().astype(int))
            return split, np.asarray(images[chosen])
    raise ValueError(f"check=True needs a test or validation split; the dataset of {run_dir} "
                     "has neither (use check=False)")


def _agreement(network, path: Path, format: str, images, *, float32: bool) -> dict:
    split, pixels = images
    expected = _batched(lambda x: network.predict_on_batch(x), pixels)
    got = _batched(runner(path, format), pixels)
    diff = np.abs(np.asarray(got, np.float64) - np.asarray(expected, np.float64))
    top1 = float(np.mean(np.argmax(got, axis=1) == np.argmax(expected, axis=1)))
    max_diff = float(diff.max())
    passed = (top1 >= MIN_AGREEMENT and max_diff <= MAX_PROB_DIFF) if float32 else None
    return {"split": split, "images": int(len(pixels)), "top1_agreement": round(top1, 6),
            "max_abs_diff": max_diff, "mean_abs_diff": float(diff.mean()),
            "required": {"top1_agreement": MIN_AGREEMENT, "max_abs_diff": MAX_PROB_DIFF}
            if float32 else None, "passed": passed}


def _batched(run, pixels: np.ndarray, batch_size: int = 64) -> np.ndarray:
    return np.concatenate([np.asarray(run(np.asarray(pixels[i:i + batch_size], np.float32)))
                           for i in range(0, len(pixels), batch_size)])


# --- files ---------------------------------------------------------------------------------------

def _size(path: Path) -> int:
    """Bytes of a file, or of every file under a folder."""
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
