"""The learning-rate range test."""

import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits

from workbench import models
from workbench.data.pipeline import Batches
from workbench.models import StartingPoint
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


# --- the rule, the range test of train's model, the CLI ------------------------------------------

def test_the_suggestion_rule_steepest_descent_else_the_minimum_over_10():
    from workbench.training.lr_find import FIRST, MINIMUM_TENTH, STEEPEST, suggest_rate

    lrs = np.logspace(-5, 1, 61)
    x = np.log10(lrs)
    valley = 2.3 - 1.5 / (1 + np.exp(-3 * (x + 2))) + np.maximum(0, x + 0.5) ** 2  # falls, rises
    rate, rule = suggest_rate(lrs, valley)
    assert rule == STEEPEST and rate == pytest.approx(1e-2, rel=0.15)  # the sigmoid's middle
    falling_from_the_start = 2.0 + np.exp(-(x + 5)) + np.maximum(0, x + 1) ** 2  # steepest first
    rate, rule = suggest_rate(lrs, falling_from_the_start)
    lowest = lrs[np.argmin(falling_from_the_start)]
    assert rule == MINIMUM_TENTH and rate == pytest.approx(lowest / 10)
    late = 2.3 - 1.5 / (1 + np.exp(-6 * (x + 0.3))) + np.maximum(0, x) ** 2 * 20  # a late drop
    rate, rule = suggest_rate(lrs, late)  # steepest at 0.5, within 10x of the minimum at ~1
    assert rule == MINIMUM_TENTH and rate == pytest.approx(lrs[np.argmin(late)] / 10)
    rising = 1.0 + (x + 5) ** 2  # lowest at the first rate: nothing to read below it
    assert suggest_rate(lrs, rising) == (pytest.approx(1e-5), FIRST)
    with pytest.raises(ValueError, match="lrs must be at least 3 increasing rates"):
        suggest_rate([1e-3, 1e-4, 1e-2], [1, 1, 1])


def test_range_test_sets_up_the_recipes_first_stage(tmp_path, monkeypatch):
    import tiny_data
    from workbench.training import lr_find as module
    from workbench.training.lr_mult import LRMultiplierSGD
    from workbench.training.solver import SolverConfig

    splits = tiny_data.write_splits(tmp_path, per_class=4, counts=(2, 1, "rest"))
    seen = {}

    def fake(model, batches, **options):  # what the range test would train, without training
        seen.update(model=model, batches=batches, **options)
        return module.LRFinder(np.array([1e-3, 1e-2, 1e-1]), np.array([2.3, 2.0, 2.2]),
                               suggestion=1e-2, minimum=1e-2)

    monkeypatch.setattr(module, "lr_find", fake)
    finder = module.range_test(splits, start=StartingPoint("lenet", weights=None),
                               recipe="feature_extraction", image_size=16, start_lr=1e-4,
                               solver=SolverConfig(batch_size=8, weight_decay=1e-3),
                               lr_mult_rules={"head": 2.0})
    assert finder.stage == "feature_extraction, stage head"
    model, optimizer = seen["model"], seen["optimizer"]
    assert not any(w.trainable for w in model.get_layer("backbone").weights)  # frozen: mult 0
    assert all(w.trainable for w in model.get_layer("head").weights)
    assert isinstance(optimizer, LRMultiplierSGD) and optimizer.lr_multiplier("head/kernel") == 2
    assert optimizer.weight_decay == pytest.approx(1e-3)
    assert float(np.asarray(optimizer.learning_rate)) == pytest.approx(1e-4)  # a plain rate
    assert seen["batches"].batch_size == 8 and seen["start_lr"] == 1e-4
    two = module.range_test(splits, start=StartingPoint("lenet", weights=None), recipe="two_stage",
                            image_size=16, solver=SolverConfig(batch_size=8))
    assert two.stage == "two_stage, stage head (1 of 2: the later ones are not measured)"


@pytest.mark.slow
def test_cli_lr_find_prints_a_rate_it_tried_and_writes_no_run(tmp_path, capsys):
    import re

    import tiny_data
    from workbench import cli

    splits = tiny_data.write_splits(tmp_path / "task", per_class=6, counts=(4, 1, "rest"))
    cache = [p for p in tmp_path.rglob("*")]  # what exists before, the split folder included
    before = {p for p in cache if p.is_file()}
    plot = tmp_path / "lr.png"
    assert cli.main(["lr-find", "--splits", str(splits), "--backbone", "lenet", "--weights",
                     "none", "--recipe", "scratch", "--image-size", "16", "--batch-size", "8",
                     "--steps", "40", "--start-lr", "1e-4", "--end-lr", "100",
                     "--out", str(plot)]) == 0
    out = capsys.readouterr().out
    match = re.search(r"suggested base_lr: ([0-9.e+-]+) \(([^;]+);", out)
    assert match, out
    rate = float(match.group(1))
    assert 1e-4 <= rate <= 100 and "scratch, stage all" in out
    assert plot.is_file() and plot.stat().st_size > 0
    new = {p for p in tmp_path.rglob("*") if p.is_file()} - before - {plot}
    # only the decoded-image cache of the split folder, as training makes; no run files
    assert not {p.name for p in new} & {"config.json", "metrics.json", "model.keras",
                                        "history.csv", "calibration.json"}, new
    assert all("cache" in str(p.relative_to(tmp_path)).lower() for p in new), new
    assert cli.main(["lr-find", "--splits", str(splits), "--steps", "2"]) == 2
    assert "--steps" in capsys.readouterr().err
