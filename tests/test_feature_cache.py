"""Fast feature extraction: a stage that trains only the head computes the frozen backbone once,
and the run it writes is the one training the whole model writes (to float rounding)."""

import json

import keras
import numpy as np
import pandas as pd
import pytest

import tiny_data
from workbench import models
from workbench.data import pipeline
from workbench.data.augment import Augment
from workbench.training import checkpoint, features, lr_mult
from workbench.training.options import Execution, Monitoring
from workbench.training.solver import SolverConfig
from workbench.training.train import finetune

# Float tolerance of "the same run": the features are computed in batches of another size
# and in inference mode, so a convolution may round differently in the last bit; over a few
# epochs of SGD that stays far below these bounds, while a different batch order, dropout mask
# or optimizer state moves losses and weights by 1e-2 or more.
RTOL, ATOL = 1e-4, 1e-5
SOLVER = SolverConfig(epochs=4, batch_size=16, base_lr=0.05, lr_policy="cosine")
# dropout > 0: the head must draw the same dropout masks on features as in the whole model;
# augment=None: the few digits would turn augmentation on, which needs the whole model
OPTIONS = dict(start=models.StartingPoint("cifar_cnn", weights=None), image_size=16,
               augment=None, dropout=0.3, seed=5, progress="none")
SLOW = Execution(cache_features=False)


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    return tiny_data.write_splits(tmp_path_factory.mktemp("digits"), per_class=10,
                                  counts=(6, "rest", 2))


def feature_files(splits):
    return sorted((splits / "cache").glob("features-*.npy"))


def weights_of(path):
    return [np.array(w) for w in models.load_model(path).get_weights()]


def assert_same_run(slow, fast):
    """Same history, weights and weight statistics, to the float tolerance."""
    assert list(slow.history.columns) == list(fast.history.columns)
    numbers = [c for c in slow.history.columns if c not in ("seconds", "stage", "epoch")]
    np.testing.assert_allclose(fast.history[numbers].to_numpy(float),
                               slow.history[numbers].to_numpy(float), rtol=RTOL, atol=ATOL)
    assert list(fast.history["stage"]) == list(slow.history["stage"])
    for name in ("model.keras", "best.keras"):
        for a, b in zip(weights_of(slow.path / name), weights_of(fast.path / name),
                        strict=True):
            np.testing.assert_allclose(b, a, rtol=RTOL, atol=ATOL)
    if (slow.path / "weight_stats.csv").is_file():
        stats = [pd.read_csv(run.path / "weight_stats.csv") for run in (slow, fast)]
        columns = ["epoch", "layer", "weight"]
        assert stats[0][columns].equals(stats[1][columns])
        np.testing.assert_allclose(stats[1]["mean_abs"], stats[0]["mean_abs"], rtol=RTOL,
                                   atol=ATOL)
    assert fast.metrics["best_epoch"] == slow.metrics["best_epoch"]
    assert fast.metrics["test_loss"] == pytest.approx(slow.metrics["test_loss"], rel=RTOL)


def test_feature_extraction_on_cached_features_is_the_whole_models_run(splits, tmp_path):
    slow = finetune(splits, tmp_path / "slow", recipe="feature_extraction", solver=SOLVER,
                    execution=SLOW, **OPTIONS)
    assert feature_files(splits) == []  # the slow path computed no features
    fast = finetune(splits, tmp_path / "fast", recipe="feature_extraction", solver=SOLVER,
                    **OPTIONS)
    cached = feature_files(splits)
    assert len(cached) == 2  # train and val, computed once each
    train_info = json.loads(cached[0].with_suffix(".json").read_text())
    assert train_info["shape"][1] == 128  # cifar_cnn's pooled features
    assert_same_run(slow, fast)
    # the best epoch is not the last: best.keras was kept in memory, then written
    assert fast.metrics["best_epoch"] < len(fast.history)
    # the head did learn: the run is not equal only because nothing moved
    first = weights_of(fast.path / "initial.keras")[-2]
    assert not np.allclose(first, weights_of(fast.path / "model.keras")[-2])
    assert json.loads((fast.path / "config.json").read_text()) == \
        json.loads((slow.path / "config.json").read_text())


class Killed(Exception):
    pass


def kill_after_checkpoint(monkeypatch, epoch):
    """Makes the next run die right after writing its checkpoint of ``epoch``; returns the
    epochs of the checkpoints it writes."""
    real_save, written = checkpoint.save_checkpoint, []

    def save_then_die(run_dir, model, state):
        real_save(run_dir, model, state)
        written.append(state["epoch"])
        if state["epoch"] == epoch:
            monkeypatch.setattr(checkpoint, "save_checkpoint", real_save)
            raise Killed

    monkeypatch.setattr(checkpoint, "save_checkpoint", save_then_die)
    return written


@pytest.mark.slow  # five trainings: 25 s on a quiet 2-core CPU
def test_two_stage_resumed_in_or_after_its_head_stage_is_the_slow_run(splits, tmp_path,
                                                                      monkeypatch):
    solver = SOLVER.replace(epochs=5)  # the head stage: round(0.3 * 5) = 2 epochs
    options = dict(recipe="two_stage", solver=solver, monitoring=Monitoring(resources=False),
                   **OPTIONS)
    slow = finetune(splits, tmp_path / "slow", execution=SLOW, **options)
    computed = []
    real_compute = features.compute_features
    monkeypatch.setattr(features, "compute_features",
                        lambda *args, **kwargs: computed.append(1) or real_compute(*args,
                                                                                  **kwargs))
    # killed inside the head stage (the whole model's run checkpoints every epoch), resumed on
    # features: the stage goes on from the checkpoint's optimizer state
    kill_after_checkpoint(monkeypatch, 1)
    with pytest.raises(Killed):
        finetune(splits, tmp_path / "inside", execution=SLOW, **options)
    inside = finetune(splits, tmp_path / "inside", resume=True, **options)
    assert_same_run(slow, inside)
    # on features the head stage writes one checkpoint, at its end; killed there, resumed
    written = kill_after_checkpoint(monkeypatch, 2)
    with pytest.raises(Killed):
        finetune(splits, tmp_path / "after", **options)
    assert written == [2]
    before = len(computed)
    after = finetune(splits, tmp_path / "after", resume=True, **options)
    assert len(computed) == before  # the second stage trains the whole model
    assert list(after.history["stage"]) == ["head", "head", "all", "all", "all"]
    assert_same_run(slow, after)


def frozen_classifier(backbone, **kwargs):
    """A classifier whose backbone has multiplier 0 (the head stage), compiled."""
    model = models.classifier(backbone, 3, dropout=0.2, **kwargs)
    optimizer = lr_mult.with_lr_multipliers(keras.optimizers.SGD(0.1), model, {"head*": 1.0},
                                            default=0.0)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    return model


def test_only_a_frozen_deterministic_backbone_is_computed_once():
    backbone = models.backbone("cifar_cnn", input_shape=(16, 16, 3))
    assert features.frozen_part(frozen_classifier(backbone)) is not None
    # every layer learning (the second stage of two_stage, caffe, scratch)
    learning = models.classifier(models.backbone("cifar_cnn", input_shape=(16, 16, 3)), 3)
    assert features.frozen_part(learning) is None
    # batch norm updating its statistics, though its weights have multiplier 0
    statistics = frozen_classifier(models.backbone("cifar_cnn", input_shape=(16, 16, 3)))
    for layer in statistics.get_layer("backbone").layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = True
    assert features.frozen_part(statistics) is None
    # a backbone that draws random numbers (EfficientNet's stochastic depth, a dropout)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Dropout(0.2)(keras.layers.Conv2D(4, 3)(inputs))
    dropping = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x), name="backbone")
    assert features.frozen_part(frozen_classifier(dropping)) is None
    # augmentation in the model
    augmented = frozen_classifier(models.backbone("cifar_cnn", input_shape=(16, 16, 3)),
                                  augmentation=models.RandomAugment(Augment()))
    assert features.frozen_part(augmented) is None


def test_augmented_batches_train_the_whole_model(splits, tmp_path):
    images = np.zeros((8, 18, 18, 3), np.uint8)
    labels = np.arange(8) % 3
    model = frozen_classifier(models.backbone("cifar_cnn", input_shape=(16, 16, 3)))
    augmented = pipeline.Batches(images, labels, batch_size=4, image_size=16,
                                 augment=Augment(placement="pipeline"))
    assert features.head_fit(model, augmented, None) is None
    plain = pipeline.Batches(images[:, :16, :16], labels, batch_size=4)
    fit = features.head_fit(model, plain, None, progress="none")
    assert fit is not None and fit.model.input_shape == (None, 128)
    x, y = fit.train.batch(2, 1)
    rows, _ = plain.rows(2, 1)
    assert x.shape == (4, 128) and list(y) == list(labels[rows])


def test_feature_batches_reach_keras_as_the_same_stream_without_autotuning():
    labels = np.arange(10) % 3
    batches = features.FeatureBatches(pipeline.Batches(np.zeros((10, 4, 4, 3), np.uint8), labels,
                                                       batch_size=4, seed=2),
                                      np.arange(30, dtype=np.float32).reshape(10, 3))
    served = batches.for_keras(start_epoch=1, epochs=2)
    expected = [batches.batch(1 + i // 3, i % 3) for i in range(6)]  # 3 steps per epoch
    if keras.backend.backend() != "tensorflow":
        assert [served[i][0].tolist() for i in range(6)] == [x.tolist() for x, _ in expected]
        return
    # a PyDataset would be wrapped by Keras in an autotuned dataset, whose thread freezes the
    # release of a stopped fit's iterator (as in pipeline.Batches.as_tf_dataset)
    assert served.options().autotune.enabled is False
    assert served.map(lambda x, y: (x, y)).options().autotune.enabled is False
    got = [(x.numpy(), y.numpy()) for x, y in served]
    assert len(got) == 6 and got[2][0].shape == (2, 3)  # the last batch of an epoch is short
    for (x, y), (x0, y0) in zip(got, expected, strict=True):
        np.testing.assert_array_equal(x, x0)
        np.testing.assert_array_equal(y, y0)
    endless = batches.for_keras()
    assert [x.numpy().tolist() for x, _ in endless.take(7)][6] == batches.batch(2, 0)[0].tolist()


def test_features_are_kept_by_weights_and_images(tmp_path, monkeypatch):
    array = np.random.default_rng(0).integers(0, 255, (6, 16, 16, 3), dtype=np.uint8)
    np.save(tmp_path / "images-test.npy", array)  # as an image cache: read from its file
    stored = np.load(tmp_path / "images-test.npy", mmap_mode="r")
    model = frozen_classifier(models.backbone("cifar_cnn", input_shape=(16, 16, 3)))
    frozen = features.frozen_part(model)
    computed = []
    real_compute = features.compute_features
    monkeypatch.setattr(features, "compute_features",
                        lambda *args, **kwargs: computed.append(1) or real_compute(*args,
                                                                                  **kwargs))
    first = features.cached_features(frozen, stored, batch_size=4, progress="none")
    np.testing.assert_allclose(first, frozen.predict(array, verbose=0), rtol=1e-5,
                               atol=1e-6)  # the last batch of 2 was padded, then cut
    np.testing.assert_array_equal(
        features.cached_features(frozen, stored, batch_size=4, progress="none"), first)
    assert len(computed) == 1 and len(list(tmp_path.glob("features-*.npy"))) == 1
    key = features.feature_key(frozen, stored)
    assert features.feature_key(frozen, stored[::-1]) != key  # other images
    conv = model.get_layer("backbone").get_layer("conv1")
    conv.kernel.assign(conv.kernel * 2.0)
    changed = features.feature_key(frozen, stored)
    assert changed != key  # other starting weights
    second = features.cached_features(frozen, stored, batch_size=4, progress="none")
    assert len(computed) == 2 and not np.allclose(first, second)
    # a description that does not match: computed again, never trusted
    info = tmp_path / f"features-{changed[:20]}.json"
    info.write_text(json.dumps({**json.loads(info.read_text()), "key": "another"}))
    features.cached_features(frozen, stored, batch_size=4, progress="none")
    assert len(computed) == 3


def test_weight_stats_read_a_frozen_weight_once_and_record_it_as_it_is(tmp_path, monkeypatch):
    from workbench.training.callbacks import WeightStats

    model = frozen_classifier(models.backbone("cifar_cnn", input_shape=(16, 16, 3)))
    x = np.random.default_rng(0).integers(0, 255, (8, 16, 16, 3)).astype("uint8")
    reads = []
    real = keras.ops.convert_to_numpy
    monkeypatch.setattr(keras.ops, "convert_to_numpy",
                        lambda value: reads.append(1) or real(value))
    model.fit(x, np.arange(8) % 3, epochs=3, batch_size=4, verbose=0,
              callbacks=[WeightStats(tmp_path / "stats.csv")])
    monkeypatch.undo()
    stats = pd.read_csv(tmp_path / "stats.csv")
    conv = stats[stats["layer"].str.endswith("conv2") & (stats["epoch"] == 3)]
    kernel = model.get_layer("backbone").get_layer("conv2").kernel
    # WeightStats computes in float64, as the other rows' mean |w| (a float32 mean differs
    # from it in the 8th digit, by how the random initial kernel happens to round)
    expected = np.abs(real(kernel).astype(np.float64)).mean()
    assert conv["mean_abs"].item() == pytest.approx(expected, rel=1e-12)
    assert (stats[~stats["layer"].str.startswith("head")]["update_ratio"] == 0).all()
    assert (stats[stats["layer"] == "head"]["update_ratio"] > 0).any()
    # every weight read at the start, then only the head's kernel and bias in each epoch
    tracked = len(stats) // 3
    assert len(reads) == tracked + 3 * 2
