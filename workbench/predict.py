"""Classify new images with a trained run: top-k labels and probabilities, best first.

:class:`Classifier` reads the run's ``config.json`` and decodes every image exactly as training
did (``images.load_array`` with the run's size and resize mode: EXIF orientation, RGB
conversion, the same resize), so a photo gets the prediction the evaluation measured::

    classifier = Classifier.load("runs/flowers")
    classifier.predict("photo.jpg", top_k=5)
    # [{"label": "tulip", "probability": 0.91}, {"label": "rose", "probability": 0.05}, ...]
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from workbench._checks import check_int
from workbench.data.images import RESIZE_MODES, load_array

_SINGLE = (str, Path, bytes, bytearray, memoryview, np.ndarray)


class Classifier:
    """A trained model with its labels and its training preprocessing.

    Args:
        model: a Keras classifier taking raw 0-255 pixels.
        labels: the class names, in output order.
        image_size: the side of the square images the model takes.
        resize_mode: how images were resized in training (``squash``, ``crop``, ``pad``).
    """

    def __init__(self, model, labels, *, image_size: int, resize_mode: str = "squash"):
        self.model, self.labels = model, list(labels)
        self.image_size = check_int("image_size", image_size, minimum=8)
        if resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, "
                             f"received: {resize_mode!r}")
        self.resize_mode = resize_mode
        outputs = model.output_shape[-1]
        if outputs != len(self.labels):
            raise ValueError(f"labels must name each of the model's {outputs} outputs, "
                             f"received: {len(self.labels)} labels")
        self.model.predict(np.zeros((1, image_size, image_size, 3), np.uint8), verbose=0)  # warm-up

    @classmethod
    def load(cls, run_dir: str | Path, *, model: str = "best") -> Classifier:
        """Loads a run directory's ``best.keras`` (or ``model.keras``) in Keras's safe mode.

        Args:
            run_dir: a run directory written by ``finetune``.
            model: ``"best"`` (best validation accuracy; the final model if there is none) or
                ``"final"``.
        """
        from workbench.models import load_model

        run_dir = Path(run_dir)
        config_path = run_dir / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"run_dir must be a run directory with config.json, "
                                    f"received: {str(run_dir)!r}")
        if model not in ("best", "final"):
            raise ValueError(f"model must be 'best' or 'final', received: {model!r}")
        config = json.loads(config_path.read_text(encoding="utf-8"))
        path = run_dir / ("best.keras" if model == "best" else "model.keras")
        if not path.is_file():
            path = run_dir / "model.keras"
        return cls(load_model(path), config["classes"], image_size=config["image_size"],
                   resize_mode=config.get("resize_mode", "squash"))

    def predict(self, images, *, top_k: int = 5, batch_size: int = 32):
        """The ``top_k`` most likely classes of one image, or of each image of a list.

        Args:
            images: a path, ``bytes``, a binary file object, a PIL image or a uint8 NumPy array;
                or a list of them.
            top_k: how many classes to return (at most the number of classes).
            batch_size: images per model call for a list.

        Returns:
            For one image, a list of ``{"label", "probability"}`` dicts, best first; for a
            list, one such list per image.

        Raises:
            workbench.data.images.ImageRejected: an input is not a usable image (not an image,
                truncated, a decompression bomb, ...); nothing is predicted for it.
            TypeError: an input is of an unsupported type.
        """
        check_int("top_k", top_k, minimum=1)
        # one image: a path, bytes, an array, a PIL image (getpixel) or a file object (read)
        single = isinstance(images, _SINGLE) or hasattr(images, "getpixel") or \
            hasattr(images, "read")
        batch = [images] if single else list(images)
        if not batch:
            raise ValueError("images must hold at least one image, received: an empty list")
        pixels = np.stack([load_array(image, self.image_size, self.resize_mode)
                           for image in batch])
        probabilities = self.model.predict(pixels, batch_size=batch_size, verbose=0)
        results = [self._top(row, min(top_k, len(self.labels))) for row in probabilities]
        return results[0] if single else results

    def _top(self, probabilities: np.ndarray, k: int) -> list[dict]:
        order = np.argsort(-probabilities, kind="stable")[:k]
        return [{"label": self.labels[i], "probability": float(probabilities[i])} for i in order]
