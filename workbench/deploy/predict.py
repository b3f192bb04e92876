"""Classify new images with a trained run: top-k labels and probabilities, best first.

:class:`Classifier` reads the run's ``config.json`` and decodes every image exactly as training
did (``images.load_array`` with the run's size and resize mode: EXIF orientation, RGB
conversion, the same resize), so a photo gets the prediction the evaluation measured::

    classifier = Classifier.load("runs/flowers")
    classifier.predict("photo.jpg", top_k=5)
    # [{"label": "tulip", "probability": 0.91}, {"label": "rose", "probability": 0.05}, ...]
    classifier.predict_batch(["a.jpg", "b.jpg"])   # one such list per image

The fast path (``runtime="auto"``, the default) runs the run's export with the faster of the
LiteRT interpreter and ONNX Runtime on this machine, as ``workbench.deploy.export.export_fast``
timed and recorded it in ``export/model.tflite.json`` (the other is the fallback, used with a
warning when the chosen one fails to load), and imports no TensorFlow or Keras at all; when the
export is missing or stale (the run's ``.keras`` file changed) it is made on first use, which
does import TensorFlow, once. If the conversion fails, the Keras model is used instead, with
one warning. When ``workbench export`` (``--quantize auto``, its default) measured a quantized
model faster on this CPU and as accurate on the validation split (at most 0.5 points of top-1
lost, the calibration error up by at most 0.01), ``"auto"`` runs that file instead
(``info["model_file"]`` names it; ``workbench.deploy.export.choose_quantized``); float32 remains
the fallback, and ``--quantize none`` at export or a named runtime here keeps float32.
``runtime="litert"`` or ``"onnx"`` uses that float32 runtime or fails;
``runtime="keras"`` always uses the Keras model (loaded in safe mode). (``runtime`` was called
``backend`` before; ``backend=`` still works for one release, with a ``DeprecationWarning``.
``KERAS_BACKEND`` is the only backend: the Keras one.)

A decoded uint8 array of exactly the model's input size goes to the model as it is; anything
else is decoded and resized by ``images.load_array`` (a JPEG at a reduced scale first, when it
is at least twice the input size: libjpeg's DCT scaling).

Calibration: the probabilities are those of the run's ``calibration.json`` (one temperature,
fitted on the validation split when training finished; ``workbench.calibration``), so 0.9 means
right about nine times in ten on images like the validation split's; ``calibrated=False`` gives
the network's raw softmax. Scaling changes no ranking. A run trained before runs were calibrated,
or a bare model file, has temperature 1. An exported file carries the temperature in its sidecar.

Thread safety: one :class:`Classifier` may be shared by the threads of a web server. Decoding
and resizing run in parallel; the model itself runs one call at a time, behind a lock inside
the classifier (a LiteRT interpreter must never be invoked from two threads at once). LiteRT
takes the lock per image, so the images of concurrent requests interleave; ONNX Runtime runs
concurrent calls side by side.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from workbench._checks import (MissingPath, UsageError, check_bool, check_choice, check_int,
                               check_number, deprecated, renamed_arguments)
from workbench.calibration import apply_temperature
from workbench.data.images import DEFAULT_MAX_PIXELS, RESIZE_MODES, load_array
from workbench.deploy import export as exporting
from workbench.deploy.files import predict_rows
from workbench.deploy.runtime import RUNTIMES, load_runtime
from workbench.runs import MODELS, RunDir

RUNTIME_CHOICES = ("auto", *RUNTIMES, "keras")  # the values of Classifier.load's runtime
BACKENDS = RUNTIME_CHOICES  # its old name, for one release
AUTO_EXPORT_CHECK_IMAGES = 256  # test images compared when exporting on first use
_SINGLE = (str, Path, bytes, bytearray, memoryview, np.ndarray)
_EXPLAIN_LOCK = threading.Lock()  # one Keras explainer made, and one map computed, at a time


def _one_image(value) -> bool:
    """Whether ``value`` is one image: a path, bytes, an array, a PIL image (``getpixel``) or a
    file object (``read``), rather than a list of them."""
    return isinstance(value, _SINGLE) or hasattr(value, "getpixel") or hasattr(value, "read")


class Classifier:
    """A trained model with its labels and its training preprocessing.

    Args:
        model: a Keras classifier taking raw 0-255 pixels, or a fast runtime
            (``workbench.deploy.runtime.LiteRTModel`` or ``OnnxModel``).
        labels: the class names, in output order.
        image_size: the side of the square images the model takes.
        resize_mode: how images were resized in training (``squash``, ``crop``, ``pad``).
        info: extra facts for :attr:`info` (backbone, files, run metrics, ...).
        temperature: divides the logits before the softmax (``workbench.calibration``): the
            run's fitted temperature; 1 leaves the probabilities as the network gives them.

    Attributes:
        runtime: ``"litert"``, ``"onnx"`` or ``"keras"``: what runs the model (``backend``,
            its old name, still works for one release with a ``DeprecationWarning``).
        info: a JSON-serialisable dict describing the model: ``labels``, ``num_classes``,
            ``image_size``, ``resize_mode``, ``runtime``, ``backbone``, ``model_file``,
            ``metrics`` (the run's ``metrics.json`` when there is one), ``runtime_choice``
            (for a run's export: the record of ``export_fast``'s timing), ...; ``backend``
            repeats ``runtime`` for one release.
    """

    def __init__(self, model, labels, *, image_size: int, resize_mode: str = "squash",
                 info: dict | None = None, temperature: float = 1.0):
        self.model, self.labels = model, [str(label) for label in labels]
        self.temperature = check_number("temperature", temperature, minimum=0.0,
                                        exclusive_minimum=True)
        self.image_size = check_int("image_size", image_size, minimum=8)
        if resize_mode not in RESIZE_MODES:
            raise UsageError(f"resize_mode must be one of {RESIZE_MODES}, "
                             f"received: {resize_mode!r}")
        self.resize_mode = resize_mode
        outputs = model.output_shape[-1]
        if outputs != len(self.labels):
            raise UsageError(f"labels must name each of the model's {outputs} outputs, "
                             f"received: {len(self.labels)} labels")
        side = tuple(model.input_shape[1:3])
        if None not in side and side != (self.image_size, self.image_size):
            raise UsageError(f"image_size must match the model's input {side}, "
                             f"received: {image_size}")
        self.runtime = getattr(model, "runtime", "keras")
        self._lock = threading.Lock()  # the Keras model call; LiteRTModel locks each invoke
        self.info = {**(info or {}), "labels": list(self.labels),
                     "num_classes": len(self.labels), "image_size": self.image_size,
                     "resize_mode": self.resize_mode, "runtime": self.runtime,
                     "backend": self.runtime, "temperature": self.temperature}
        self._probabilities(np.zeros((1, self.image_size, self.image_size, 3), np.uint8), 1)

    @property
    def backend(self) -> str:
        """The old name of :attr:`runtime`, for one release."""
        deprecated("Classifier.backend is deprecated and will be removed in the next release, "
                   "use Classifier.runtime")
        return self.runtime

    @classmethod
    @renamed_arguments(backend="runtime")
    def load(cls, path: str | Path, *, model: str = "best", runtime: str = "auto",
             labels: list | None = None, image_size: int | None = None,
             resize_mode: str | None = None, threads: int = 2) -> Classifier:
        """Loads a run directory, a ``.tflite`` or ``.onnx`` file or a ``.keras`` file.

        Args:
            path: a run directory written by ``finetune``; or a ``.tflite`` or ``.onnx`` file
                (its labels and preprocessing from the sidecar ``<file>.json`` that
                ``workbench export`` writes, or from ``labels`` and ``image_size``); or a
                ``.keras`` file (labels from ``labels`` or the ``config.json`` beside it;
                always run by Keras).
            model: for a run directory: ``"best"`` (best validation accuracy; the final model
                if there is none) or ``"final"``.
            runtime: what runs the model: ``"auto"`` (the faster of LiteRT and ONNX Runtime,
                exporting the run on first use; Keras with a warning when that fails),
                ``"litert"`` or ``"onnx"`` (that runtime or an error) or ``"keras"`` (the
                ``.keras`` model in Keras's safe mode). Called ``backend`` before: that name
                still works for one release, with a ``DeprecationWarning``.
            labels: class names for a model file without a sidecar or config.
            image_size: input side for such a file (a ``.keras`` file's own by default).
            resize_mode: resize mode for such a file (``"squash"`` by default).
            threads: CPU threads of the runtime (LiteRT or ONNX Runtime).

        Returns:
            A warmed-up :class:`Classifier`.

        Raises:
            FileNotFoundError: ``path`` is neither a run directory nor a model file, or a
                run directory without a finished model (checked first, before any export).
            ValueError: a bad option, or labels missing for a bare model file.
            workbench.deploy.export.ExportError: ``runtime="litert"`` or ``"onnx"`` and the
                run cannot be exported or its export does not load.
        """
        check_choice("runtime", runtime, RUNTIME_CHOICES)
        check_choice("model", model, MODELS)
        check_int("threads", threads, minimum=1)
        path = Path(path)
        if path.is_dir():
            given = [name for name, value in (("labels", labels), ("image_size", image_size),
                                              ("resize_mode", resize_mode)) if value is not None]
            if given:
                raise UsageError(f"{given[0]} applies to a model file; a run directory has its "
                                 f"own in config.json, received: {given[0]} for {str(path)!r}")
            return cls._load_run(path, model=model, runtime=runtime, threads=threads)
        if path.suffix in (".tflite", ".onnx") and path.is_file():
            runs_it = "litert" if path.suffix == ".tflite" else "onnx"
            if runtime not in ("auto", runs_it):
                raise UsageError(f"runtime must be 'auto' or {runs_it!r} for a {path.suffix} "
                                 f"file, received: {runtime!r}")
            facts = _sidecar_facts(path)
            network = load_runtime(path, runs_it, threads=threads)
            labels, image_size, resize_mode = _file_labels(
                path, labels, image_size, resize_mode, facts, network)
            return cls(network, labels, image_size=image_size, resize_mode=resize_mode,
                       info={**facts, "model_file": str(path)},
                       temperature=float(facts.get("temperature", 1.0)))
        if path.suffix == ".keras" and path.is_file():
            if runtime in RUNTIMES:
                raise UsageError(f"runtime={runtime!r} needs a run directory or an exported "
                                 f"file, received: {str(path)!r}")
            from workbench.models import load_model

            facts = _config_facts(path.parent) if RunDir(path.parent).exists else {}
            network = load_model(path)
            labels, image_size, resize_mode = _file_labels(
                path, labels, image_size, resize_mode, facts, network)
            return cls(network, labels, image_size=image_size, resize_mode=resize_mode,
                       info={**facts, "model_file": str(path)},
                       temperature=_file_temperature(path) if facts else 1.0)
        raise MissingPath(f"path must be a run directory (with config.json), a .tflite, "
                          f".onnx or .keras file, received: {str(path)!r}")

    @classmethod
    def _load_run(cls, run_dir: Path, *, model: str, runtime: str, threads: int) -> Classifier:
        facts = _config_facts(run_dir)
        # No model at all: say so now, before exporting or importing Keras (seconds) would fail.
        source = RunDir(run_dir).model_path(model)
        options = {"image_size": facts["image_size"], "resize_mode": facts["resize_mode"],
                   "temperature": RunDir(run_dir).temperature(model)}
        if runtime != "keras":
            asked = None if runtime == "auto" else runtime
            try:
                network = exporting.load_fast(run_dir, model=model, runtime_name=asked,
                                              threads=threads)
                if network is None:  # missing or stale: export now (imports TensorFlow, once)
                    if asked is None:
                        exporting.export_fast(run_dir, model=model, threads=threads,
                                              max_images=AUTO_EXPORT_CHECK_IMAGES)
                    else:
                        exporting.export(run_dir, format=asked, model=model,
                                         max_images=AUTO_EXPORT_CHECK_IMAGES)
                    network = exporting.load_fast(run_dir, model=model, runtime_name=asked,
                                                  threads=threads)
            except Exception as error:  # any converter or runtime failure: Keras takes over
                if asked is not None:
                    raise
                warnings.warn(f"Classifier: no LiteRT or ONNX model for {run_dir} "
                              f"({type(error).__name__}: {error}); using the Keras model "
                              f"instead ('workbench export {run_dir}' says why; add --no-check "
                              "where the dataset is not available)", RuntimeWarning,
                              stacklevel=3)
            else:
                side = exporting.read_sidecar(network.path)
                tflite = exporting.find_export(run_dir, model=model)
                record = exporting.read_sidecar(tflite).get("runtime") if tflite else None
                info = {**facts, "model_file": str(network.path),
                        "export": side.get("agreement"), "runtime_choice": record}
                return _keeping_source(cls(network, facts["labels"], info=info, **options),
                                       source)
        from workbench.models import load_model

        return _keeping_source(cls(load_model(source), facts["labels"],
                                   info={**facts, "model_file": str(source)}, **options), source)

    def predict(self, image, *, top_k: int = 5, max_pixels: int = DEFAULT_MAX_PIXELS,
                tta: bool = False, calibrated: bool = True,
                batch_size: int | None = None) -> list[dict]:
        """The ``top_k`` most likely classes of one image (for several: :meth:`predict_batch`).

        Args:
            image: a path, ``bytes``, a binary file object, a PIL image or a uint8 NumPy array.
                A list of them still works for one release, with a ``DeprecationWarning``, and
                returns what :meth:`predict_batch` returns.
            top_k: how many classes to return (at most the number of classes).
            max_pixels: larger images are refused before decoding (a web service sets its
                own, from its decoding memory).
            tta: test-time augmentation: average the probabilities of the image and its
                mirror image (twice the work; not for digits, text or other handed things).
            calibrated: probabilities scaled by :attr:`temperature` (the run's calibration);
                False: the network's raw softmax. The order of the classes is the same.
            batch_size: deprecated (it applies to :meth:`predict_batch`); for one release it
                is passed on with a list of images and ignored with one image.

        Returns:
            A list of ``{"label", "probability"}`` dicts, best first.

        Raises:
            workbench.data.images.ImageRejected: the input is not a usable image (not an image,
                truncated, a decompression bomb, ...).
            TypeError: an input of an unsupported type.
        """
        options = {"top_k": top_k, "max_pixels": max_pixels, "tta": tta, "calibrated": calibrated}
        if not _one_image(image) and isinstance(image, Iterable):
            deprecated("Classifier.predict of a list of images is deprecated and will be removed "
                       "in the next release, use Classifier.predict_batch")
            return self.predict_batch(image, batch_size=batch_size or 32, **options)
        if batch_size is not None:
            deprecated("Classifier.predict's batch_size is deprecated and will be removed in the "
                       "next release; it applies to Classifier.predict_batch")
            check_int("batch_size", batch_size, minimum=1)
        return self.predict_batch([image], **options)[0]

    def predict_batch(self, images, *, top_k: int = 5, batch_size: int = 32,
                      max_pixels: int = DEFAULT_MAX_PIXELS, tta: bool = False,
                      calibrated: bool = True) -> list[list[dict]]:
        """The ``top_k`` most likely classes of each image of a list, decoded all at once (for
        many files on disk, :meth:`predict_files` decodes in threads and streams the rows).

        Args:
            images: a list of what :meth:`predict` takes.
            top_k: how many classes to return per image (at most the number of classes).
            batch_size: images per model call (the LiteRT interpreter takes one image per
                invoke, which measured as fast on CPU).
            max_pixels: larger images are refused before decoding.
            tta: average each image with its mirror image, as :meth:`predict`.
            calibrated: scaled by :attr:`temperature`, as :meth:`predict`.

        Returns:
            One list of ``{"label", "probability"}`` dicts (best first) per image, in order.

        Raises:
            workbench.data.images.ImageRejected: an input is not a usable image; nothing is
                predicted for the others either (:meth:`predict_files` goes on past one).
            TypeError: an input of an unsupported type, or ``images`` a single image.
            ValueError: an empty list, or a bad option.
        """
        check_int("top_k", top_k, minimum=1)
        check_int("batch_size", batch_size, minimum=1)
        check_int("max_pixels", max_pixels, minimum=1)
        check_bool("tta", tta)
        check_bool("calibrated", calibrated)
        if _one_image(images):
            raise TypeError(f"images must be a list of images (Classifier.predict takes one), "
                            f"received: {type(images).__name__}")
        batch = list(images)
        if not batch:
            raise UsageError("images must hold at least one image, received: an empty list")
        pixels = np.stack([self._pixels(image, max_pixels) for image in batch])
        probabilities = self.probabilities(pixels, batch_size=batch_size, tta=tta,
                                           calibrated=calibrated)
        return self.top_rows(probabilities, top_k)

    def probabilities(self, pixels: np.ndarray, *, batch_size: int = 32, tta: bool = False,
                      calibrated: bool = True) -> np.ndarray:
        """The probabilities of images already decoded and resized, one row per image.

        Args:
            pixels: uint8 ``(N, image_size, image_size, 3)``, as ``images.load_array`` gives
                them with this classifier's size and resize mode.
            batch_size: images per model call (ONNX Runtime and Keras).
            tta: average each image with its mirror image, as :meth:`predict`.
            calibrated: scaled by :attr:`temperature`, as :meth:`predict`.

        Returns:
            float32 ``(N, classes)``, in :attr:`labels` order.
        """
        side = self.image_size
        if not isinstance(pixels, np.ndarray) or pixels.ndim != 4 or \
                pixels.shape[1:] != (side, side, 3):
            raise UsageError(f"pixels must be an array (N, {side}, {side}, 3), received: "
                             f"{getattr(pixels, 'shape', type(pixels).__name__)}")
        probabilities = self._probabilities(pixels, batch_size)
        if tta:
            probabilities = (probabilities + self._probabilities(
                np.ascontiguousarray(pixels[:, :, ::-1]), batch_size)) / 2
        if calibrated and self.temperature != 1.0:
            probabilities = apply_temperature(probabilities, self.temperature)
        return probabilities

    def top(self, probabilities: np.ndarray, top_k: int = 5) -> list[dict]:
        """The ``top_k`` classes of one row of :meth:`probabilities`, best first, as
        ``{"label", "probability"}`` dicts (ties in label order)."""
        return self.top_rows(np.asarray(probabilities)[None], top_k)[0]

    def top_rows(self, probabilities: np.ndarray, top_k: int = 5) -> list[list[dict]]:
        """:meth:`top` of each row of ``probabilities`` (N, classes), ranked in one NumPy call
        (a third of a small model's batch time went to ranking row by row)."""
        k = min(top_k, len(self.labels))
        order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
        chosen = np.take_along_axis(probabilities, order, axis=1).tolist()
        labels = self.labels
        return [[{"label": labels[i], "probability": p} for i, p in zip(row, values)]
                for row, values in zip(order.tolist(), chosen)]

    def predict_files(self, paths, *, top_k: int = 5, batch_size: int = 64,
                      threads: int | None = None, tta: bool = False, calibrated: bool = True,
                      features: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS,
                      progress: str = "none"):
        """Classifies many image files, decoding them in threads while the model runs batches.

        A thin call of :func:`workbench.deploy.files.predict_rows`: files are decoded by a
        pool of ``threads`` threads (a large JPEG at a reduced scale) into a bounded queue, so
        memory stays flat for any number of files, and a file that cannot be used gets a row
        with its reason instead of stopping the others.

        Args:
            paths: image paths (str or Path), or ``workbench.deploy.files.Source`` rows as
                ``batch.list_files`` lists a folder or a list file.
            top_k: classes per row.
            batch_size: images per model call.
            threads: decoding threads (default: ``min(8, CPUs)``).
            tta: average each image with its mirror image.
            calibrated: probabilities scaled by :attr:`temperature`.
            features: also give each image's pooled backbone features (runs the run's Keras
                model: exported files output the probabilities only).
            max_pixels: larger images are refused before decoding.
            progress: ``"none"`` (the default), ``"auto"`` (a bar with images/s and the time
                left where someone watches, plain lines headless) or ``"lines"``.

        Yields:
            One dict per file, in order: ``path``, ``label_1``, ``probability_1``, ...,
            ``error`` (a reason of ``workbench.data.scan.REASONS``, ``""`` when classified),
            ``detail``, ``size`` and ``mtime_ns`` of the file; and ``features`` (a float32
            vector, None for a file in error) when ``features`` is True.
        """

        return predict_rows(self, paths, top_k=top_k, batch_size=batch_size, threads=threads,
                            tta=tta, calibrated=calibrated, features=features,
                            max_pixels=max_pixels, progress=progress)

    def _pixels(self, image, max_pixels: int) -> np.ndarray:
        """One image as uint8 ``(size, size, 3)``: an array of that shape as it is (what
        ``load_array`` would return for it), anything else decoded and resized."""
        side = self.image_size
        if isinstance(image, np.ndarray) and image.dtype == np.uint8 and \
                image.shape == (side, side, 3):
            return image
        return load_array(image, side, self.resize_mode, max_pixels=max_pixels)

    def _probabilities(self, pixels: np.ndarray, batch_size: int) -> np.ndarray:
        """Runs the model on uint8 pixels: LiteRT one image per invoke, ONNX Runtime and Keras
        ``batch_size`` images per call."""
        pixels = pixels.astype(np.float32)
        if self.runtime == "litert":
            return self.model(pixels)
        if self.runtime == "onnx":
            return np.concatenate([self.model(pixels[i:i + batch_size])
                                   for i in range(0, len(pixels), batch_size)])
        with self._lock:
            parts = [np.asarray(self.model.predict_on_batch(pixels[i:i + batch_size]))
                     for i in range(0, len(pixels), batch_size)]
        return np.concatenate(parts)

    def keras_model(self, *, needed_by: str = "this needs"):
        """The Keras model behind this classifier: its own when it runs Keras, else the run's
        ``.keras`` file it was exported from, loaded anew (importing Keras).

        Args:
            needed_by: the words the error starts with (``"explain needs"``).

        Raises:
            ValueError: when there is none (a bare exported file).
        """
        source = getattr(self, "keras_source", None)
        if self.runtime == "keras":
            return self.model
        if source is not None and Path(source).is_file():
            from workbench.models import load_model

            return load_model(source)
        raise UsageError(f"{needed_by} the Keras model of a run: load a run directory or a "
                         f".keras file, received: {self.info.get('model_file')!r}")

    def explainer(self):
        """The :class:`workbench.explain.Explainer` of this classifier's Keras model.

        LiteRT and ONNX models have no gradients, so maps come from the run's ``.keras`` model
        (this classifier's own when it runs Keras), loaded on the first call (importing Keras)
        and kept.

        Raises:
            ValueError: when there is no Keras model to explain with (a bare exported file).
        """
        with _EXPLAIN_LOCK:
            if getattr(self, "_explainer", None) is None:
                from workbench.explain import Explainer

                network = self.keras_model(needed_by="explain needs")
                self._explainer = Explainer(network, labels=self.labels,
                                            resize_mode=self.resize_mode,
                                            temperature=self.temperature)
            return self._explainer

    def explain(self, image, *, method: str = "grad_cam", max_side: int | None = 512,
                max_pixels: int = DEFAULT_MAX_PIXELS, tta: bool = False,
                label: str | None = None):
        """Where the model looked for this classifier's top class (or ``label``) in one image.

        Args:
            image: a path, ``bytes``, a file object, a PIL image or a uint8 array.
            method: ``"grad_cam"`` or ``"occlusion"`` (``workbench.explain``).
            max_side: draw the map at most this many pixels a side; None for the image's own
                size (after EXIF orientation).
            max_pixels: larger images are refused before decoding.
            tta: rank the classes as ``predict(tta=True)`` does.
            label: the class to explain, e.g. the top class of an earlier :meth:`predict` (no
                second prediction is made; the probability is then the Keras model's).

        Returns:
            A ``workbench.explain.Explanation`` of the class :meth:`predict` ranks first (or
            ``label``), with the probability :meth:`predict` gives it.

        Raises:
            workbench.data.images.ImageRejected: the input is not a usable image.
            ValueError: when there is no Keras model to explain with (see :meth:`explainer`).
        """
        if label is not None and label not in self.labels:
            raise UsageError(f"label must be one of the classes, received: {label!r}")
        top = None if label is not None else \
            self.predict(image, top_k=1, max_pixels=max_pixels, tta=tta)[0]
        explainer = self.explainer()
        with _EXPLAIN_LOCK:
            explanation = explainer.explain(image, self.labels.index(label or top["label"]),
                                            method=method, max_side=max_side,
                                            max_pixels=max_pixels)
        if top is not None:
            explanation.probability = float(top["probability"])
        return explanation


def _keeping_source(classifier: Classifier, source: Path) -> Classifier:
    """``classifier`` knowing the run's ``.keras`` file, for :meth:`Classifier.explainer`."""
    classifier.keras_source = source
    return classifier


def _config_facts(run_dir: Path) -> dict:
    """What a run directory says about its model."""
    run = RunDir(run_dir)
    return {"run_dir": str(run_dir), "labels": run.classes, "image_size": run.image_size,
            "resize_mode": run.resize_mode, "backbone": run.starting_point,
            "recipe": run.config.get("recipe"), "metrics": run.metrics}


def _file_temperature(path: Path) -> float:
    """The temperature of a run's best or final model file; 1 for any other file."""
    run = RunDir(path.parent)
    model = run.which_model(path)
    return run.temperature(model) if model else 1.0


def _sidecar_facts(path: Path) -> dict:
    """The sidecar of an exported file, or nothing when there is none."""
    try:
        side = exporting.read_sidecar(path)
    except FileNotFoundError:
        return {}
    keep = ("labels", "image_size", "resize_mode", "backbone", "format", "quantize",
            "source_model", "agreement", "temperature")
    return {key: side[key] for key in keep if key in side}


def _file_labels(path: Path, labels, image_size, resize_mode, facts: dict, network):
    """Labels, image size and resize mode of a model file: given, else from its metadata."""
    labels = labels if labels is not None else facts.get("labels")
    if labels is None:
        raise UsageError(f"labels are needed for {path.name}: pass labels=[...] (it has no "
                         f"sidecar {exporting.sidecar_path(path).name} or config.json), "
                         f"received: labels=None")
    if isinstance(labels, (str, bytes)):
        raise UsageError(f"labels must be a list of class names, received: {labels!r}")
    if image_size is None:
        image_size = facts.get("image_size") or network.input_shape[1]
    resize_mode = resize_mode or facts.get("resize_mode", "squash")
    return list(labels), image_size, resize_mode
