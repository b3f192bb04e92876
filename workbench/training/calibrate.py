"""Calibrates a finished run: one temperature per model file, fitted on the validation split.

``finetune`` calls :func:`calibrate_run` once the run's models are written; it predicts the
validation images with ``best.keras`` and ``model.keras`` (one pass each; one in all when the run
kept no separate best model), fits a temperature to each (``workbench.calibration.calibrate``)
and writes ``calibration.json``. Prediction, evaluation and export read it back through
``RunDir.temperature``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import keras
import numpy as np

from workbench import calibration
from workbench._checks import check_int
from workbench.models import load_model
from workbench.runs import RunDir

NO_VALIDATION = "no validation split: the probabilities are not calibrated (temperature 1)"


def predict_probabilities(model, images, *, batch_size: int = 64) -> np.ndarray:
    """The model's probabilities for uint8 images, ``batch_size`` at a time (a memory-mapped
    array is read one batch at a time).

    The model is called directly, on this process alone: under a ``tf.distribute`` strategy
    ``predict_on_batch`` gives each replica the whole batch (twice the rows with two devices).
    """
    check_int("batch_size", batch_size, minimum=1)
    parts = [keras.ops.convert_to_numpy(
        model(np.asarray(images[i:i + batch_size], np.float32), training=False))
        for i in range(0, len(images), batch_size)]
    return np.concatenate(parts).astype(np.float32)


@contextlib.contextmanager
def _on_this_process():
    """Without a ``keras.distribution`` for the block: a model loaded in it lives on this
    process alone, so worker 0 can run it while the other workers wait (with the run's
    distribution over several workers, every forward pass would need all of them)."""
    previous = keras.distribution.distribution() if keras.backend.backend() == "jax" else None
    if previous is None:
        yield
        return
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(previous)


def calibrate_run(run_dir: str | Path, images, labels, *, batch_size: int = 64,
                  loaded: dict | None = None) -> dict:
    """Fits the temperature of each of the run's model files on held-out images and writes
    ``calibration.json``.

    Args:
        run_dir: a run directory whose ``model.keras`` (and ``best.keras``) are written.
        images: the validation split's uint8 images, decoded as in training; None or empty
            when the run has no validation split (temperature 1, with a note).
        labels: their class indices.
        batch_size: images per forward pass.
        loaded: ``{file name: keras.Model}`` already in memory (to skip loading it again;
            with a ``keras.distribution`` over several workers each file is loaded anew on
            this process alone).

    Returns:
        What ``calibration.json`` holds: ``temperature`` (that of the model the run's metrics
        describe: ``best.keras`` when there is one), ``split``, and ``models`` mapping each
        file name to ``workbench.calibration.calibrate``'s record.
    """
    run = RunDir(run_dir)
    files = sorted({run.model_path("best").name, run.model_path("final").name})
    if images is None or len(images) == 0:
        record = {"temperature": 1.0, "split": None, "note": NO_VALIDATION, "models": {
            name: {"temperature": 1.0} for name in files}}
    else:
        models = {}
        distributed = keras.backend.backend() == "jax" and \
            keras.distribution.distribution() is not None
        done = []  # (model, its record): best.keras is often the final model itself
        with _on_this_process():
            for name in files:
                model = None if distributed else (loaded or {}).get(name)
                model = model or load_model(run.path / name)
                fitted = next((kept for seen, kept in done if seen is model), None)
                if fitted is None:  # (the list keeps each model alive: no identity reused)
                    probabilities = predict_probabilities(model, images, batch_size=batch_size)
                    fitted = {key: value for key, value in calibration.calibrate(
                        probabilities, np.asarray(labels)).items() if key != "method"}
                    done.append((model, fitted))
                models[name] = dict(fitted)  # the method is said once, below
        record = {"temperature": models[run.model_path("best").name]["temperature"],
                  "split": "val", "method": calibration.METHOD, "models": models}
    run.write_calibration(record)
    return record
