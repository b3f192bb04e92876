"""The learning-rate range test."""

import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits

from workbench import models
from workbench.data.pipeline import Batches
from workbench.training.lr_find import lr_find


@pytest.fixture(scope="module")
def batches():
    digits = load_digits()
    images = np.repeat(np.repeat((digits.images[:256] * 15).astype(np.uint8), 2, 1), 2, 2)
    return Batches(np.stack([images] * 3, axis=-1), digits.target[:256], batch_size=32, seed=0)


def test_the_loss_falls_then_diverges_and_the_suggestion_is_on_the_descent(batches):
    model = models.classifier(models.backbone("lenet", input_shape=(16, 16, 3)), 10)
    before = [w.copy() for w in model.get_weights()]
    finder = lr_find(model, batches, start_lr=1e-4, end_lr=1e4, steps=80)
    assert len(finder.lrs) < 80  # stopped when the loss blew up at huge rates
    assert np.all(np.diff(finder.lrs) > 0)
    assert finder.losses.min() < finder.losses[0] - 0.05  # it learned somewhere in the sweep
    assert 1e-5 < finder.suggestion <= finder.minimum
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)  # the range test ran on a copy
    ax = finder.plot().axes[0]
    assert ax.get_xscale() == "log" and len(ax.lines) == 2
    assert ax.lines[1].get_xdata()[0] == pytest.approx(finder.suggestion)


def test_frozen_layers_stay_frozen_in_the_copy(batches, monkeypatch):
    model = models.classifier(models.backbone("lenet", input_shape=(16, 16, 3)), 10)
    model.get_layer("backbone").trainable = False
    copies, clone = [], keras.models.clone_model

    def keep_the_copy(*args, **kwargs):  # the copy lr_find trains, to look at afterwards
        copies.append(clone(*args, **kwargs))
        return copies[-1]

    monkeypatch.setattr(keras.models, "clone_model", keep_the_copy)
    before = model.get_weights()
    finder = lr_find(model, batches, steps=10, end_lr=1e-2)
    assert len(finder.lrs) == 10
    (probe,) = copies
    frozen = {id(v) for v in probe.get_layer("backbone").weights}
    for original, trained in zip(before, probe.weights):
        if id(trained) in frozen:
            np.testing.assert_array_equal(original, trained.numpy())
    assert any(not np.array_equal(original, trained.numpy())  # the head did train
               for original, trained in zip(before, probe.weights) if id(trained) not in frozen)
    for original, now in zip(before, model.get_weights()):  # and the model itself is untouched
        np.testing.assert_array_equal(original, now)


def test_bad_arguments_are_named(batches):
    model = models.classifier(models.backbone("lenet", input_shape=(16, 16, 3)), 10)
    with pytest.raises(ValueError, match="end_lr must be > 0.1, received: 0.01"):
        lr_find(model, batches, start_lr=0.1, end_lr=0.01)
    with pytest.raises(ValueError, match="steps must be >= 5, received: 2"):
        lr_find(model, batches, steps=2)
