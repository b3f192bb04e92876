"""Temperature scaling and the expected calibration error (workbench.calibration)."""

import numpy as np
import pytest

from workbench import calibration
from workbench.calibration import (apply_temperature, calibrate, expected_calibration_error,
                                   fit_temperature, negative_log_likelihood, reliability_bins)


def _softmax(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _overconfident(seed=0, images=600, classes=5, sharpen=3.0):
    """Labels drawn from softmax(z), probabilities softmax(sharpen * z): over-confident by
    exactly ``sharpen``, so the best temperature is ``sharpen``."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, (images, classes))
    truth = _softmax(logits)
    labels = np.array([rng.choice(classes, p=row) for row in truth])
    return _softmax(sharpen * logits), labels


def test_calibration_keeps_every_answer_and_lowers_the_validation_nll():
    probabilities, labels = _overconfident()
    temperature = fit_temperature(probabilities, labels)
    assert temperature == pytest.approx(3.0, rel=0.15)  # it recovers the over-confidence
    calibrated = apply_temperature(probabilities, temperature)
    np.testing.assert_array_equal(calibrated.argmax(axis=1), probabilities.argmax(axis=1))
    np.testing.assert_array_equal(np.argsort(-calibrated, axis=1),
                                  np.argsort(-probabilities, axis=1))  # every rank kept
    np.testing.assert_allclose(calibrated.sum(axis=1), 1.0, atol=1e-12)
    assert calibrated.max(axis=1).mean() < probabilities.max(axis=1).mean()  # softer
    before = negative_log_likelihood(probabilities, labels)
    after = negative_log_likelihood(probabilities, labels, temperature=temperature)
    assert after < before - 0.1
    assert after == pytest.approx(negative_log_likelihood(calibrated, labels), abs=1e-9)
    assert expected_calibration_error(calibrated, labels) < \
        expected_calibration_error(probabilities, labels) / 2


def test_a_timid_model_is_sharpened_and_a_calibrated_one_left_alone():
    probabilities, labels = _overconfident(seed=1, sharpen=0.5)
    assert fit_temperature(probabilities, labels) == pytest.approx(0.5, rel=0.15)
    uniform = np.full((10, 4), 0.25)  # nothing to learn from: T = 1, no change
    labels = np.arange(10) % 4
    assert fit_temperature(uniform, labels) == 1.0
    np.testing.assert_array_equal(apply_temperature(uniform, 1.0), uniform)


def test_temperature_scaling_is_the_softmax_of_the_scaled_logits():
    logits = np.array([[2.0, 1.0, -1.0], [0.0, 3.0, 0.5]])
    np.testing.assert_allclose(apply_temperature(_softmax(logits), 2.5), _softmax(logits / 2.5),
                               rtol=1e-10)
    as_float32 = apply_temperature(_softmax(logits).astype(np.float32), 2.5)
    assert as_float32.dtype == np.float32


def test_ece_against_a_hand_computed_reference():
    probabilities = np.array([[0.90, 0.05, 0.05],   # confidence 0.9, bin (0.8, 1], right
                              [0.85, 0.10, 0.05],   # 0.85, bin (0.8, 1], wrong (true 1)
                              [0.50, 0.30, 0.20],   # 0.5, bin (0.4, 0.6], right
                              [0.25, 0.40, 0.35]])  # 0.4, bin (0.2, 0.4] (edge), wrong
    labels = np.array([0, 1, 0, 2])
    # bin (0.8,1]: 2 images, confidence 0.875, accuracy 0.5 -> 2/4 * 0.375
    # bin (0.4,0.6]: 1 image, 0.5 vs 1 -> 1/4 * 0.5;  bin (0.2,0.4]: 0.4 vs 0 -> 1/4 * 0.4
    expected = 0.5 * 0.375 + 0.25 * 0.5 + 0.25 * 0.4
    assert expected_calibration_error(probabilities, labels, bins=5) == pytest.approx(expected)
    table = reliability_bins(probabilities, labels, bins=5)
    assert table["count"].tolist() == [0, 1, 1, 0, 2]
    assert table.loc[4, "confidence"] == pytest.approx(0.875)
    assert table.loc[4, "accuracy"] == pytest.approx(0.5)
    assert np.isnan(table.loc[0, "accuracy"])


def _reference_ece(probabilities, labels, bins):
    """Guo et al.'s definition, written out with a loop."""
    total = 0.0
    for m in range(1, bins + 1):
        lower, upper = (m - 1) / bins, m / bins
        members = [i for i, row in enumerate(probabilities)
                   if (lower < row.max() <= upper) or (m == 1 and row.max() == 0)]
        if members:
            accuracy = np.mean([probabilities[i].argmax() == labels[i] for i in members])
            confidence = np.mean([probabilities[i].max() for i in members])
            total += len(members) / len(labels) * abs(accuracy - confidence)
    return total


def test_ece_with_15_bins_matches_the_definition():
    probabilities, labels = _overconfident(seed=2, images=200)
    assert expected_calibration_error(probabilities, labels) == pytest.approx(
        _reference_ece(probabilities, labels, 15), abs=1e-12)
    assert calibration.BINS == 15


def test_calibrate_records_before_and_after():
    probabilities, labels = _overconfident(seed=3, images=300)
    record = calibrate(probabilities, labels)
    assert set(record) >= {"temperature", "images", "bins", "nll_raw", "nll", "ece_raw", "ece",
                           "method"}
    assert record["images"] == 300 and record["bins"] == 15
    assert record["nll"] < record["nll_raw"] and record["ece"] < record["ece_raw"]
    assert record["temperature"] > 1


def test_bad_input_is_named():
    probabilities = np.full((3, 2), 0.5)
    with pytest.raises(ValueError, match="temperature must be > 0.0, received: 0"):
        apply_temperature(probabilities, 0)
    with pytest.raises(ValueError, match=r"probabilities must have shape \(images, classes\)"):
        fit_temperature(np.ones(3), [0, 1, 0])
    with pytest.raises(ValueError, match="labels must be between 0 and 1, received: 0..2"):
        expected_calibration_error(probabilities, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="bins must be >= 1, received: 0"):
        reliability_bins(probabilities, np.array([0, 1, 0]), bins=0)


def test_reliability_diagram_draws_each_curve_the_diagonal_and_the_counts():
    from workbench import plots

    probabilities, labels = _overconfident(seed=4, images=200)
    tables = {"raw": reliability_bins(probabilities, labels),
              "calibrated": reliability_bins(apply_temperature(probabilities, 3.0), labels)}
    figure = plots.reliability_diagram(tables, title="test")
    ax = next(a for a in figure.axes if a.get_title() == "test")
    assert [line.get_label() for line in ax.lines] == ["raw", "calibrated",
                                                       "perfectly calibrated"]
    used = tables["raw"][tables["raw"]["count"] > 0]
    np.testing.assert_allclose(ax.lines[0].get_ydata(), used["accuracy"])
    np.testing.assert_allclose(ax.lines[2].get_xdata(), [0, 1])
    twin = next(a for a in figure.axes if a is not ax)
    assert sum(p.get_height() for p in twin.patches) == 400  # 200 images in each set of bars
    with pytest.raises(ValueError, match=r"curves\['raw'\] must have columns"):
        plots.reliability_diagram({"raw": tables["raw"].drop(columns="count")})
    with pytest.raises(ValueError, match="curves must be a non-empty dict"):
        plots.reliability_diagram({})
