"""How sure a classifier really is: temperature scaling and the expected calibration error.

A network fine-tuned on a few images over-fits, and its softmax says 0.99 on answers that are
right half the time. Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural
Networks") divides the logits by one number ``T`` fitted on the validation split, minimising its
negative log-likelihood: ``T > 1`` softens over-confident probabilities, ``T < 1`` sharpens
timid ones. Dividing every logit by the same positive number keeps their order, so no top-1
(or top-k) answer changes.

The workbench's models end in a softmax, so the logits are recovered as ``log p``: they differ
from the true logits by a constant per row, which the softmax removes, so
``softmax(log p / T)`` is exactly temperature scaling (``p`` is clipped away from 0 first).

Pure NumPy and SciPy, no Keras: training fits the temperature (``calibration.json`` in the run),
and prediction, evaluation and export apply it. Importing this module loads NumPy alone (SciPy
and pandas are imported by the functions that use them), so a prediction starts fast.

Typical use::

    temperature = fit_temperature(val_probabilities, val_labels)
    calibrated = apply_temperature(test_probabilities, temperature)
    expected_calibration_error(calibrated, test_labels)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from workbench._checks import UsageError, check_int, check_number

if TYPE_CHECKING:  # pandas and SciPy are imported where they are used: prediction needs
    import pandas as pd  # apply_temperature alone, and starts without either (a second)

BINS = 15  # Guo et al.'s number of equal-width confidence bins
TEMPERATURE_RANGE = (0.05, 20.0)  # the search interval of fit_temperature
METHOD = ("temperature scaling (Guo et al. 2017): softmax(log p / T), T minimising the "
          "negative log-likelihood of the validation split")
_EPSILON = 1e-12  # probabilities are clipped to this before the logarithm


def _check(probabilities, labels=None) -> tuple[np.ndarray, np.ndarray | None]:
    """Validates (images, classes) probabilities and optional labels; returns float64 arrays."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or probabilities.shape[1] < 2 or len(probabilities) == 0:
        raise UsageError(f"probabilities must have shape (images, classes) with at least one "
                         f"image and 2 classes, received shape: {probabilities.shape}")
    # two reductions on the common path (Classifier calls this per image): a NaN fails the
    # first test, an infinity makes the sum infinite
    if not probabilities.min() >= 0 or (not np.isfinite(probabilities.sum())
                                         and not np.isfinite(probabilities).all()):
        raise UsageError("probabilities must be finite and >= 0, received: values from "
                         f"{np.nanmin(probabilities)} to {np.nanmax(probabilities)}")
    if labels is None:
        return probabilities, None
    labels = np.asarray(labels)
    if labels.shape != (len(probabilities),) or not np.issubdtype(labels.dtype, np.integer):
        raise UsageError(f"labels must be {len(probabilities)} integer class indices, one per "
                         f"row of probabilities, received: shape {labels.shape}, "
                         f"dtype {labels.dtype}")
    if labels.min() < 0 or labels.max() >= probabilities.shape[1]:
        raise UsageError(f"labels must be between 0 and {probabilities.shape[1] - 1}, "
                         f"received: {int(labels.min())}..{int(labels.max())}")
    return probabilities, labels.astype(np.int64)


def _check_temperature(temperature) -> float:
    temperature = check_number("temperature", temperature, minimum=0.0, exclusive_minimum=True)
    if not np.isfinite(temperature):
        raise UsageError(f"temperature must be finite, received: {temperature!r}")
    return temperature


def _scaled_log_softmax(log_probabilities: np.ndarray, temperature: float) -> np.ndarray:
    scaled = log_probabilities / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    return scaled - np.log(np.exp(scaled).sum(axis=1, keepdims=True))


def apply_temperature(probabilities, temperature: float) -> np.ndarray:
    """Calibrated probabilities: ``softmax(log p / temperature)`` of each row.

    Args:
        probabilities: (images, classes) softmax probabilities.
        temperature: ``T > 0``; 1 returns the probabilities as they are.

    Returns:
        An array of the same shape (and float dtype, float64 for other inputs) whose rows sum
        to 1, ranked as the input rows are (ties can only appear where inputs were within the
        clipping of 1e-12 of 0).

    Raises:
        ValueError: for a temperature <= 0 or probabilities of the wrong shape.
    """
    temperature = _check_temperature(temperature)
    dtype = np.asarray(probabilities).dtype
    dtype = dtype if np.issubdtype(dtype, np.floating) else np.float64
    checked, _ = _check(probabilities)
    if temperature == 1.0:
        return np.asarray(probabilities, dtype=dtype)
    # softmax(log p / T) as p^(1/T) normalised (half the NumPy calls of the log form); dividing
    # by the row's largest first keeps it at 1, so no row underflows to zeros for a small T
    clipped = np.clip(checked, _EPSILON, None)
    powered = (clipped / clipped.max(axis=1, keepdims=True)) ** (1.0 / temperature)
    return (powered / powered.sum(axis=1, keepdims=True)).astype(dtype)


def negative_log_likelihood(probabilities, labels, *, temperature: float = 1.0) -> float:
    """The mean negative log-likelihood of the true classes (cross-entropy), after scaling.

    Args:
        probabilities: (images, classes) softmax probabilities.
        labels: the true class index of each image.
        temperature: the temperature applied first (1: none).

    Returns:
        The mean of ``-log p_true`` over the images.
    """
    temperature = _check_temperature(temperature)
    probabilities, labels = _check(probabilities, labels)
    logs = np.log(np.clip(probabilities, _EPSILON, None))
    return float(-np.mean(_scaled_log_softmax(logs, temperature)[np.arange(len(labels)),
                                                                   labels]))


def fit_temperature(probabilities, labels) -> float:
    """The temperature that minimises the negative log-likelihood of ``labels``.

    A bounded 1-D search over ``log T`` (SciPy's ``minimize_scalar``) within
    :data:`TEMPERATURE_RANGE`; the likelihood is convex in ``1 / T``, so there is one minimum.

    Args:
        probabilities: (images, classes) softmax probabilities of held-out images (the
            validation split: never the images the model was trained on).
        labels: the true class index of each image.

    Returns:
        ``T``, rounded to 4 significant digits; 1.0 when scaling does not lower the likelihood
        by more than 1e-6 (so a calibrated model is left alone).
    """
    from scipy import optimize

    probabilities, labels = _check(probabilities, labels)
    logs = np.log(np.clip(probabilities, _EPSILON, None))
    rows = np.arange(len(labels))

    def nll(log_temperature: float) -> float:
        return float(-np.mean(_scaled_log_softmax(logs, np.exp(log_temperature))[rows, labels]))

    low, high = np.log(TEMPERATURE_RANGE)
    found = optimize.minimize_scalar(nll, bounds=(low, high), method="bounded",
                                     options={"xatol": 1e-5})
    if not nll(found.x) < nll(0.0) - 1e-6:
        return 1.0
    return float(f"{np.exp(found.x):.4g}")


def reliability_bins(probabilities, labels, *, bins: int = BINS) -> pd.DataFrame:
    """Top-1 confidence against accuracy in equal-width bins (a reliability diagram's numbers).

    Image ``i`` falls in bin ``m`` (from 1) when its top-1 probability ``c_i`` satisfies
    ``(m - 1) / bins < c_i <= m / bins``, as in Guo et al. (a confidence of 0 goes to the first).

    Args:
        probabilities: (images, classes) probabilities.
        labels: the true class index of each image.
        bins: the number of bins.

    Returns:
        One row per bin: ``lower``, ``upper``, ``count``, ``confidence`` (mean top-1
        probability) and ``accuracy`` (fraction whose top-1 is right); NaN in an empty bin.
    """
    import pandas as pd

    bins = check_int("bins", bins, minimum=1)
    probabilities, labels = _check(probabilities, labels)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(index, weights=confidence, minlength=bins) / count
        accuracy = np.bincount(index, weights=correct, minlength=bins) / count
    edges = np.linspace(0.0, 1.0, bins + 1)
    return pd.DataFrame({"lower": edges[:-1], "upper": edges[1:], "count": count,
                         "confidence": mean_confidence, "accuracy": accuracy})


def expected_calibration_error(probabilities, labels, *, bins: int = BINS) -> float:
    """The expected calibration error: ``sum_m |B_m| / n * |accuracy(B_m) - confidence(B_m)|``.

    The gap between how sure the top-1 answers are and how often they are right, weighted by
    how many images each confidence bin holds (:func:`reliability_bins`; Guo et al. use 15).

    Args:
        probabilities: (images, classes) probabilities.
        labels: the true class index of each image.
        bins: the number of equal-width confidence bins.

    Returns:
        The ECE, between 0 (calibrated) and 1.
    """
    table = reliability_bins(probabilities, labels, bins=bins)
    used = table[table["count"] > 0]
    gaps = (used["accuracy"] - used["confidence"]).abs()
    return float((used["count"] * gaps).sum() / used["count"].sum())


def calibrate(probabilities, labels, *, bins: int = BINS) -> dict:
    """Fits the temperature on held-out predictions and measures what it changes.

    Args:
        probabilities: (images, classes) softmax probabilities of the validation split.
        labels: the true class index of each image.
        bins: the bins of the expected calibration error.

    Returns:
        A JSON-ready record: ``temperature``, ``images``, ``bins``, ``nll_raw`` and ``nll``,
        ``ece_raw`` and ``ece`` (before and after), and ``method``.
    """
    probabilities, labels = _check(probabilities, labels)
    temperature = fit_temperature(probabilities, labels)
    calibrated = apply_temperature(probabilities, temperature)
    return {
        "temperature": temperature, "images": int(len(labels)), "bins": bins,
        "nll_raw": round(negative_log_likelihood(probabilities, labels), 6),
        "nll": round(negative_log_likelihood(probabilities, labels, temperature=temperature), 6),
        "ece_raw": round(expected_calibration_error(probabilities, labels, bins=bins), 6),
        "ece": round(expected_calibration_error(calibrated, labels, bins=bins), 6),
        "method": METHOD,
    }
