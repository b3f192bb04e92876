"""The training engine: run directory, resume after a kill, divergence, freezing, recipes."""

import json
import shutil

import keras
import numpy as np
import pandas as pd
import pytest

import tiny_data
from workbench import models
from workbench.data.splitdir import load_splits
from workbench.models import StartingPoint
from workbench.training import callbacks as cb
from workbench.training import checkpoint
from workbench.training.options import Monitoring
from workbench.training.solver import SolverConfig
from workbench.runs import RunDir
from workbench.training.train import finetune

SOLVER = SolverConfig(epochs=4, batch_size=16, base_lr=0.02, lr_policy="cosine")
LENET, CIFAR = StartingPoint("lenet", weights=None), StartingPoint("cifar_cnn", weights=None)


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    return tiny_data.write_splits(root, per_class=12, counts=(6, "rest", 3))


@pytest.fixture(scope="module")
def source_model(splits, tmp_path_factory):
    """A small 'pretrained' source: cifar_cnn trained briefly on the same digits."""
    run = finetune(splits, tmp_path_factory.mktemp("source") / "run", start=CIFAR,
                   recipe="scratch", solver=SOLVER.replace(epochs=1),
                   image_size=16, progress="none")
    return run.path / "model.keras"


# two_stage from the source: the uninterrupted run that a resumed one must equal, and the run
# whose stages, rates and weight updates are checked (`two_stage`)
TWO_STAGE = dict(recipe="two_stage", dropout=0.3, image_size=16, solver=SOLVER, seed=3,
                 progress="none")


@pytest.fixture(scope="module")
def two_stage(splits, source_model, tmp_path_factory):
    """A finished TWO_STAGE run from ``source_model``, trained once for the module (read only)."""
    return finetune(splits, tmp_path_factory.mktemp("two_stage") / "whole", start=source_model,
                    **TWO_STAGE)


# a lenet trained from scratch for one epoch: the run several tests read (`finished`)
ONE_EPOCH = dict(start=LENET, recipe="scratch", image_size=16, solver=SOLVER.replace(epochs=1),
                 progress="none")


@pytest.fixture(scope="module")
def finished(splits, tmp_path_factory):
    """A finished ONE_EPOCH run, trained once for the module; a test that changes it works on a
    copy (:func:`copy_of`)."""
    run = finetune(splits, tmp_path_factory.mktemp("finished") / "run", **ONE_EPOCH)
    assert type(run) is RunDir  # finetune returns the run's RunDir
    return run.path


def copy_of(run_dir, tmp_path):
    return shutil.copytree(run_dir, tmp_path / "run")


def weights_of(path):
    return [np.array(w) for w in models.load_model(path).get_weights()]


def test_run_directory_holds_every_file(splits, tmp_path):
    run = finetune(splits, tmp_path / "run", start=LENET, recipe="scratch",
                   solver=SOLVER.replace(epochs=2), image_size=16, progress="none")
    for name in ("config.json", "history.csv", "steps.csv", "lr_table.csv", "labels.txt",
                 "model.keras", "best.keras", "metrics.json", "checkpoint.json", "curves.png",
                 "resources.csv"):
        assert (run.path / name).is_file(), name
    resources = pd.read_csv(run.path / "resources.csv")
    assert set(resources["epoch"].dropna()) <= {1, 2} and resources["ram_used_mib"].notna().all()
    assert run.metrics["resources_ram_used_peak_mib"] > 0
    assert list(run.history["epoch"]) == [1, 2]
    steps = pd.read_csv(run.path / "steps.csv")
    assert list(steps["step"]) == list(range(1, len(steps) + 1))
    assert len(steps) == 2 * (60 // 16)  # drop_remainder: 3 full batches of 16 from 60 images
    # the per-step losses average to the epoch's loss (Keras reports the running mean)
    first = steps[steps["epoch"] == 1]["loss"].mean()
    assert first == pytest.approx(run.history["loss"][0], rel=1e-4)
    config = json.loads((run.path / "config.json").read_text())
    assert config["solver"]["epochs"] == 2 and config["classes"] == [str(i) for i in range(10)]
    assert run.metrics["status"] == "completed"
    # the test numbers are the best model's on the test split, measured here (the loss too: a
    # model this young may predict one class, which scores 0.1 on any balanced split)
    data = load_splits(splits, image_size=16, progress="none")
    labels = data.labels["test"]
    predicted = models.load_model(run.path / "best.keras").predict(data.images["test"],
                                                                      verbose=0)
    assert run.metrics["test_accuracy"] == pytest.approx(
        np.mean(predicted.argmax(-1) == labels), abs=1e-6)
    assert run.metrics["test_loss"] == pytest.approx(
        -np.log(predicted[np.arange(len(labels)), labels]).mean(), rel=1e-4)
    assert run.metrics["test_images"] == len(labels)
    assert (run.path / "labels.txt").read_text().splitlines() == config["classes"]


def test_resume_after_a_kill_equals_an_uninterrupted_run(splits, source_model, two_stage,
                                                         tmp_path, monkeypatch):
    options = dict(start=source_model, **TWO_STAGE)
    whole = two_stage

    class Killed(Exception):
        pass

    real_save = checkpoint.save_checkpoint

    def save_then_die(run_dir, model, state):  # killed right after the checkpoint of epoch 3
        real_save(run_dir, model, state)
        if state["epoch"] == 3:
            raise Killed

    monkeypatch.setattr(checkpoint, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        finetune(splits, tmp_path / "resumed", **options)
    monkeypatch.setattr(checkpoint, "save_checkpoint", real_save)
    assert json.loads((tmp_path / "resumed" / "checkpoint.json").read_text())["epoch"] == 3
    resumed = finetune(splits, tmp_path / "resumed", resume=True, **options)

    for a, b in zip(weights_of(whole.path / "model.keras"),
                    weights_of(resumed.path / "model.keras")):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    pd.testing.assert_frame_equal(whole.history.drop(columns="seconds"),
                                  resumed.history.drop(columns="seconds"), rtol=1e-5)
    assert resumed.metrics["test_accuracy"] == pytest.approx(whole.metrics["test_accuracy"])


def test_resume_of_a_finished_run_returns_it(splits, finished, tmp_path):
    run_dir = copy_of(finished, tmp_path)
    first = RunDir(run_dir)
    stamp = (run_dir / "model.keras").stat().st_mtime_ns
    again = finetune(splits, run_dir, resume=True, **ONE_EPOCH)
    assert again.metrics == first.metrics
    assert (run_dir / "model.keras").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match=r"other settings \(seed\)"):
        finetune(splits, run_dir, resume=True, **{**ONE_EPOCH, "seed": 9})


def test_a_killed_checkpoint_write_keeps_the_previous_checkpoint(finished, tmp_path, monkeypatch):
    run_dir = copy_of(finished, tmp_path)
    model, state = checkpoint.load_checkpoint(run_dir)

    def die_half_way(self, path, *args, **kwargs):
        path.write_bytes(b"half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(keras.Model, "save", die_half_way)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_checkpoint(run_dir, model, {**state, "epoch": 2})
    monkeypatch.undo()
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".")) == []
    reloaded, reloaded_state = checkpoint.load_checkpoint(run_dir)
    assert reloaded_state["epoch"] == 1
    for a, b in zip(model.get_weights(), reloaded.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_divergence_stops_with_a_clear_message_and_keeps_the_checkpoint(splits, tmp_path,
                                                                         monkeypatch):
    run_dir = tmp_path / "run"
    calls = {"n": 0}
    real = cb.DivergenceGuard.on_train_batch_end

    def nan_in_second_epoch(self, batch, logs=None):
        calls["n"] += 1
        if calls["n"] > 3:  # the second epoch (3 steps per epoch)
            logs = {**(logs or {}), "loss": float("nan")}
        real(self, batch, logs)

    monkeypatch.setattr(cb.DivergenceGuard, "on_train_batch_end", nan_in_second_epoch)
    with pytest.raises(cb.TrainingDiverged, match=r"loss became nan .* epoch 2.*base_lr"):
        finetune(splits, run_dir, start=LENET, recipe="scratch",
                 image_size=16, solver=SOLVER, progress="none")
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "diverged"
    assert json.loads((run_dir / "checkpoint.json").read_text())["epoch"] == 1
    assert not (run_dir / "model.keras").exists()
    monkeypatch.undo()  # the NaN was a passing fault: resuming retries from the checkpoint
    run = finetune(splits, run_dir, start=LENET, recipe="scratch",
                   image_size=16, solver=SOLVER, progress="none", resume=True)
    assert run.metrics["status"] == "completed" and list(run.history["epoch"]) == [1, 2, 3, 4]


def test_feature_extraction_keeps_the_backbone_frozen(splits, source_model, tmp_path):
    run = finetune(splits, tmp_path / "run", start=source_model, recipe="feature_extraction",
                   image_size=16, solver=SOLVER.replace(epochs=2), progress="none")
    before = models.load_source(source_model).get_weights()
    tuned = models.load_model(run.path / "model.keras").get_layer("backbone").get_weights()
    for a, b in zip(before, tuned):
        np.testing.assert_array_equal(a, b)  # BN statistics too: inference mode
    assert set(run.lr_table.loc[run.lr_table["layer"] != "head", "multiplier"]) == {0.0}
    assert run.lr_table.loc[run.lr_table["layer"] == "head", "effective_lr"].item() > 0


def test_two_stage_unfreezes_with_discriminative_rates(two_stage):
    run = two_stage
    assert list(run.history["stage"]) == ["head", "all", "all", "all"]  # 30% of 4 epochs: 1
    second = run.lr_table[run.lr_table["stage"] == "all"].set_index("layer")
    assert second.loc["head", "multiplier"] == 1.0
    assert second.loc["conv1", "multiplier"] < second.loc["conv3", "multiplier"] < 1.0
    assert second.loc["conv3", "trainable"] and not second.loc["bn3", "trainable"]
    # the backbone really learns in the second stage, and only there
    stats = pd.read_csv(run.path / "weight_stats.csv")
    conv3 = stats[(stats["layer"] == "conv3") & (stats["weight"] == "kernel")]
    assert (conv3[conv3["epoch"] == 1]["update_ratio"] == 0).all()
    assert (conv3[conv3["epoch"] > 1]["update_ratio"] > 0).all()


def test_bad_arguments_are_named(splits, tmp_path):
    with pytest.raises(ValueError, match="recipe must be one of .* received: 'magic'"):
        finetune(splits, tmp_path / "r", recipe="magic")
    with pytest.raises(ValueError, match="backbone must be one of .* received: 'alexnet'"):
        finetune(splits, tmp_path / "r", start="alexnet")
    with pytest.raises(FileNotFoundError, match="splits must be a folder"):
        finetune(tmp_path / "nowhere", tmp_path / "r", start=LENET)
    with pytest.raises(ValueError, match=r"pattern 'conv9\*' matches no layer with weights"):
        finetune(splits, tmp_path / "r", start=LENET, recipe="scratch",
                 image_size=16, lr_mult_rules={"conv9*": 0}, progress="none")


def test_rundir_reads_a_finished_run(finished):
    run = RunDir(finished)
    assert run.metrics["epochs"] == 1 and len(run.history) == 1
    assert set(run.lr_table["stage"]) == {"all"}


@pytest.mark.slow
def test_seeded_runs_are_reproducible_and_seeds_differ(splits, tmp_path):
    options = dict(start=CIFAR, recipe="scratch", image_size=16,
                   dropout=0.3, solver=SOLVER.replace(epochs=1), progress="none", monitoring=Monitoring(resources=False))
    runs = {name: finetune(splits, tmp_path / name, seed=seed, **options).path / "model.keras"
            for name, seed in (("a", 5), ("b", 5), ("c", 6))}
    a, b, c = (weights_of(runs[name]) for name in "abc")
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, z) for x, z in zip(a, c))


def test_early_stopping_ends_the_run_and_says_so(splits, tmp_path):
    run = finetune(splits, tmp_path / "run", start=LENET, recipe="scratch",
                   image_size=16, progress="none", monitoring=Monitoring(resources=False),
                   solver=SOLVER.replace(epochs=6, base_lr=1e-9, early_stopping=1))
    assert run.metrics["status"] == "stopped_early"
    assert run.metrics["epochs"] == 2 and list(run.history["epoch"]) == [1, 2]


def test_max_iter_stops_at_that_iteration_and_decay_mult_reaches_the_optimizer(splits, tmp_path):
    # 60 training images at batch 16 give 3 batches an epoch: max_iter 7 ends inside epoch 3
    run = finetune(splits, tmp_path / "run", start=LENET, recipe="scratch",
                   image_size=16, progress="none", monitoring=Monitoring(resources=False),
                   decay_mult_rules={"*/bias": 0, "*": 2},
                   solver=SOLVER.replace(max_iter=7, lr_policy="constant"))
    steps = pd.read_csv(run.path / "steps.csv")
    assert list(steps["step"]) == list(range(1, 8)) and list(run.history["epoch"]) == [1, 2, 3]
    assert json.loads((run.path / "config.json").read_text())["decay_mult_rules"] == \
        {"*/bias": 0, "*": 2}
    optimizer = checkpoint.load_compiled(run.path / "model.keras").optimizer
    assert [list(rule) for rule in optimizer.decay_mult_rules] == [["*/bias", 0.0], ["*", 2.0]]



@pytest.mark.slow
@pytest.mark.parametrize("placement", ["model", "pipeline"])
def test_augmented_run_crops_from_a_larger_cache_and_resumes_exactly(tmp_path, monkeypatch,
                                                                      placement):
    # 24 px originals, a 16 px model: the training images are cached at 18 px (margin 1.15)
    tiny_data.write_digits(tmp_path / "data", per_class=12, size=24)
    from workbench.data.split import prepare

    prepare(tmp_path / "data", tmp_path / "splits", counts=(6, "rest", 3), progress="none")
    options = dict(start=LENET, recipe="scratch", image_size=16,  # killed after epoch 1 of 2
                   solver=SOLVER.replace(epochs=2), seed=2, progress="none",
                   augment=f"on+{placement}",
                   class_weight="balanced")
    whole = finetune(tmp_path / "splits", tmp_path / "whole", **options)
    config = json.loads((whole.path / "config.json").read_text())
    assert config["augment_placement"] == placement and config["train_stored_size"] == 18
    assert config["augment"]["scale"] == [0.5, 1.0] and config["class_weight"] == "balanced"
    assert config["class_weights"] == [1.0] * 10  # 6 images of each class
    network = models.load_model(whole.path / "model.keras")
    in_model = [layer for layer in network.layers if isinstance(layer, models.RandomAugment)]
    assert len(in_model) == (placement == "model")

    real_save = checkpoint.save_checkpoint

    def save_then_die(run_dir, model, state):
        real_save(run_dir, model, state)
        if state["epoch"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        finetune(tmp_path / "splits", tmp_path / "resumed", **options)
    monkeypatch.setattr(checkpoint, "save_checkpoint", real_save)
    assert json.loads((tmp_path / "resumed" / "checkpoint.json").read_text())["epoch"] == 1
    resumed = finetune(tmp_path / "splits", tmp_path / "resumed", resume=True, **options)
    for a, b in zip(weights_of(whole.path / "model.keras"),
                    weights_of(resumed.path / "model.keras")):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_auto_augments_few_images_only_and_balanced_weights_follow_the_counts(splits, finished,
                                                                            tmp_path):
    from workbench.training.train import balanced_class_weights

    config = json.loads((finished / "config.json").read_text())  # ONE_EPOCH: augment left "auto"
    assert config["augment"]["placement"] == "auto" and config["augment_placement"] in (
        "model", "pipeline")  # 6 images per class: augmented by default
    plain = finetune(splits, tmp_path / "plain", start=LENET,
                     recipe="scratch", image_size=16, solver=SOLVER.replace(epochs=1),
                     progress="none", augment="off")
    assert json.loads((plain.path / "config.json").read_text())["augment"] is None
    assert balanced_class_weights(np.array([0, 0, 0, 1]), 3) == {0: 4 / 6, 1: 2.0, 2: 1.0}
    with pytest.raises(ValueError, match="class_weight must be one of None, 'balanced'"):
        finetune(splits, tmp_path / "bad", start=LENET, image_size=16,
                 class_weight="inverse", progress="none")
