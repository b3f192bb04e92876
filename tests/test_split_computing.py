"""Splitting a CNN between a device and a server: split points, bytes, latency, bottleneck."""

import math

import keras
import matplotlib
import numpy as np
import pandas as pd
import pytest

import tiny_data
from workbench import models
from workbench.studies.bottleneck import (bottleneck_model, bottleneck_study, published_cifar10,
                                          published_cifar10_finding)
from workbench.studies.split_chain import DECODE, ENCODE, candidate_layers, split_model
from workbench.studies.split_profile import (QUANT_HEADER_BYTES, SplitProfile, profile_splits,
                                             quantize_roundtrip, split_latency)
from workbench.training.solver import SolverConfig
from workbench.data.splitdir import load_splits
from workbench.training.options import Monitoring
from workbench.training.train import finetune

matplotlib.use("Agg")


def tiny(name):
    return models.classifier(models.backbone(name, input_shape=(16, 16, 3)), 10)


@pytest.fixture(scope="module")
def cnn():
    keras.utils.set_random_seed(0)
    return tiny("cifar_cnn")


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """cifar_cnn trained one epoch on the tiny digits, as notebook 2 trains its source model."""
    root = tmp_path_factory.mktemp("split_computing")
    splits = tiny_data.write_splits(root, per_class=10, counts=(6, "rest", 2))
    run = finetune(splits, root / "source", backbone="cifar_cnn", weights=None, recipe="scratch",
                   solver=SolverConfig(epochs=1, batch_size=16, optimizer="adam", base_lr=0.003),
                   image_size=16, progress="none", monitoring=Monitoring(resources=False))
    return run.run_dir / "model.keras", splits


@pytest.fixture(scope="module")
def study(trained):
    model_path, splits = trained
    return bottleneck_study(model_path, splits, at="pool2", filters=(4, 1), epochs=1,
                            batch_size=16, progress=False)


def hand_profile(slowdown=10.0):
    """Three split points with round numbers: raw image, a split, everything on the device."""
    table = pd.DataFrame({"layer": ["image", "mid", "head"],
                          "role": ["raw image (server runs all)", "split", "all on device"],
                          "bytes": [1000, 100, 10], "prefix_cpu_ms": [0.0, 0.5, 1.0],
                          "suffix_cpu_ms": [1.0, 0.2, 0.0]})
    return SplitProfile(table, "float32", slowdown, images=1, repeats=1, raw_bytes=1000)


def test_candidate_layers_are_the_input_each_block_the_features_and_the_output():
    assert candidate_layers(tiny("cifar_cnn")) == ["image", "pool1", "pool2", "pool3", "gap",
                                                   "head"]
    assert candidate_layers(tiny("lenet")) == ["image", "pool1", "pool2", "ip1", "head"]


def test_a_model_with_a_skip_connection_is_refused():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(3, 1, name="a")(inputs)
    outputs = keras.layers.Add(name="skip")([x, inputs])
    with pytest.raises(ValueError, match="chain of layers"):
        candidate_layers(keras.Model(inputs, outputs))


def test_profile_counts_exact_bytes_per_image(cnn, images):
    profile = profile_splits(cnn, images, repeats=1, warmup=1)
    table = profile.table.set_index("layer")
    assert list(table.index) == ["image", "pool1", "pool2", "pool3", "gap", "head"]
    assert table.loc["image", "bytes"] == 16 * 16 * 3  # the raw image as uint8
    assert table.loc["pool1", "output_shape"] == "8x8x32"
    assert table.loc["pool1", "bytes"] == 8 * 8 * 32 * 4
    assert table.loc["pool2", "bytes"] == 4 * 4 * 64 * 4
    assert table.loc["gap", "bytes"] == 128 * 4 and table.loc["head", "bytes"] == 10 * 4
    half = profile_splits(cnn, images, layers=["pool2", "image"], repeats=1, dtype="float16")
    assert list(half.table["layer"]) == ["image", "pool2"]  # in model order
    assert list(half.table["bytes"]) == [768, 4 * 4 * 64 * 2]
    quantised = profile_splits(cnn, images, layers=["pool2"], repeats=1, dtype="uint8")
    assert quantised.table["bytes"].item() == 4 * 4 * 64 + QUANT_HEADER_BYTES


def test_profile_times_and_states_the_device_assumption(cnn, images):
    profile = profile_splits(cnn, images, layers=["image", "pool2", "head"], repeats=2,
                             device_slowdown=7.0)
    table = profile.table.set_index("layer")
    assert table.loc["image", "prefix_cpu_ms"] == 0 and table.loc["head", "suffix_cpu_ms"] == 0
    assert (table.loc["pool2", ["prefix_cpu_ms", "suffix_cpu_ms"]] > 0).all()
    assert np.allclose(table["device_ms"], 7.0 * table["prefix_cpu_ms"])
    assert (table["server_ms"] == table["suffix_cpu_ms"]).all()
    assert "device_slowdown=7" in profile.note and "not measured" in profile.note


def test_unknown_layer_is_refused_with_the_candidates(cnn, images):
    with pytest.raises(ValueError, match=r"received: 'conv9'; candidates: image, pool1, pool2"):
        profile_splits(cnn, images, layers=["conv9"])
    with pytest.raises(ValueError, match="images must be a uint8 array of shape"):
        profile_splits(cnn, images.astype(np.float32))
    with pytest.raises(ValueError, match="dtype must be one of"):
        profile_splits(cnn, images, dtype="int4")
    with pytest.raises(ValueError, match="device_slowdown must be > 0"):
        profile_splits(cnn, images, device_slowdown=0)


@pytest.mark.parametrize("name, at", [("cifar_cnn", "pool1"), ("cifar_cnn", "relu2"),
                                      ("cifar_cnn", "gap"), ("lenet", "pool2"),
                                      ("lenet", "preprocess")])
def test_device_then_server_equals_the_whole_model(name, at, images):
    keras.utils.set_random_seed(1)
    model = tiny(name)
    device, server = split_model(model, at)
    assert device.output.shape[1:] == model.get_layer("backbone").get_layer(at).output.shape[1:]
    whole = model.predict(images, verbose=0)
    assert np.allclose(server.predict(device.predict(images, verbose=0), verbose=0), whole,
                       atol=1e-5)


def test_split_model_refuses_the_ends(cnn):
    for at in ("image", "head"):
        with pytest.raises(ValueError, match="at must name a split point"):
            split_model(cnn, at)


def test_bottleneck_has_k_channels_at_the_split_and_keeps_the_other_weights(cnn):
    model = bottleneck_model(cnn, "pool2", 3)
    assert model.get_layer(ENCODE).output.shape[1:] == (4, 4, 3)
    assert model.get_layer(DECODE).output.shape[1:] == (4, 4, 64)
    backbone = cnn.get_layer("backbone")
    for name in ("conv1", "bn2", "conv3", "bn3"):
        for new, old in zip(model.get_layer(name).get_weights(),
                            backbone.get_layer(name).get_weights()):
            assert np.array_equal(new, old)
    assert np.array_equal(model.get_layer("head").get_weights()[0],
                          cnn.get_layer("head").get_weights()[0])
    model.get_layer("conv1").set_weights([np.zeros_like(w)
                                          for w in model.get_layer("conv1").get_weights()])
    assert np.abs(backbone.get_layer("conv1").get_weights()[0]).sum() > 0  # copies, not shared
    assert ENCODE in candidate_layers(model)


def test_random_bottleneck_start_is_seeded(cnn):
    def encoder(seed):
        return bottleneck_model(cnn, "pool2", 4, seed=seed).get_layer(ENCODE).get_weights()[0]

    assert np.array_equal(encoder(3), encoder(3)) and not np.array_equal(encoder(3), encoder(4))


def test_bottleneck_refuses_bad_sizes_and_layers(cnn):
    with pytest.raises(ValueError, match=r"filters must be <= 64 \(the channels at pool2\)"):
        bottleneck_model(cnn, "pool2", 65)
    with pytest.raises(ValueError, match="filters must be >= 1"):
        bottleneck_model(cnn, "pool2", 0)
    with pytest.raises(ValueError, match="an \\(H, W, C\\) output"):
        bottleneck_model(cnn, "gap", 4)
    with pytest.raises(ValueError, match="candidates"):
        bottleneck_model(cnn, "image", 4)


def test_pca_start_with_every_channel_reproduces_the_model(cnn, images):
    """k = C principal components restore the activations exactly, so the outputs agree."""
    model = bottleneck_model(cnn, "pool2", 64, init_images=images)
    assert np.allclose(model.predict(images, verbose=0), cnn.predict(images, verbose=0),
                       atol=1e-4)
    few = bottleneck_model(cnn, "pool2", 2, init_images=images)
    encoder = few.get_layer(ENCODE).get_weights()[0][0, 0]  # (C, k): orthonormal columns
    assert np.allclose(encoder.T @ encoder, np.eye(2), atol=1e-5)


def test_quantize_roundtrip_is_within_half_a_step():
    values = np.random.default_rng(0).normal(size=(3, 4, 4, 2)).astype(np.float32)
    back = quantize_roundtrip(values)
    step = (values.reshape(3, -1).max(1) - values.reshape(3, -1).min(1)) / 255
    assert np.all(np.abs(back - values).reshape(3, -1).max(1) <= step / 2 + 1e-6)
    assert not np.array_equal(back, values)


def test_latency_arithmetic_by_hand():
    latency = split_latency(hand_profile(), [1, 1e6], rtt_ms=2.0)
    at_1 = latency.table[latency.table["bandwidth_mbps"] == 1].set_index("layer")
    # device = prefix x 10; transfer = bytes * 8 bits / 1 Mbps = bytes * 8 / 1000 ms
    assert at_1.loc["image", "latency_ms"] == pytest.approx(0 + 8.0 + 1.0 + 2.0)
    assert at_1.loc["mid", "latency_ms"] == pytest.approx(5.0 + 0.8 + 0.2 + 2.0)
    assert at_1.loc["head", "latency_ms"] == pytest.approx(10.0 + 0.08 + 0.0 + 2.0)
    best = latency.best.set_index("bandwidth_mbps")
    assert best.loc[1, "best_layer"] == "mid" and best.loc[1e6, "best_layer"] == "image"
    assert best.loc[1, "speedup_vs_raw"] == pytest.approx(11.0 / 8.0)
    assert list(latency.wide().index) == ["image", "mid", "head"]
    assert list(latency.wide().columns) == ["1 Mbps", "1e+06 Mbps"]
    # mid beats the raw image below (1000 - 100) * 8 bits / (5.2 - 1.0) ms
    wins = latency.break_even.set_index("layer")["wins_below_mbps"]
    assert wins["mid"] == pytest.approx(7200 / 4200) and np.isnan(wins["image"])
    fast_device = split_latency(hand_profile(), [1e6], device_slowdown=0.1)
    # a device faster than the server runs everything: 0.1 < 0.05 + 0.2 < 1.0
    assert fast_device.best["best_layer"].item() == "head"


def test_latency_refuses_bad_input():
    with pytest.raises(ValueError, match="bandwidths_mbps must be > 0"):
        split_latency(hand_profile(), [0])
    with pytest.raises(ValueError, match="profile must be a SplitProfile"):
        split_latency(pd.DataFrame())
    with pytest.raises(ValueError, match="rtt_ms must be >= 0"):
        split_latency(hand_profile(), rtt_ms=-1)


def test_a_slow_device_on_a_fast_link_sends_the_raw_image(cnn, images):
    profile = profile_splits(cnn, images, repeats=3, device_slowdown=1000.0)
    best = split_latency(profile, [1e6]).best
    assert best["best_layer"].item() == "image"


def test_study_bytes_fall_with_filters_and_accuracies_are_fractions(study, trained):
    table = study.table
    assert list(table["filters"]) == [1, 4]
    assert list(table["split_shape"]) == ["4x4x1", "4x4x4"]
    assert list(table["bytes_float32"]) == [4 * 4 * 1 * 4, 4 * 4 * 4 * 4]
    assert list(table["bytes_uint8"]) == [16 + 8, 64 + 8]
    assert np.allclose(table["fraction_of_raw"], [24 / 768, 72 / 768])
    assert table[["accuracy", "accuracy_uint8"]].stack().between(0, 1).all()
    assert study.reference["filters"] == 64 and study.reference["bytes_float32"] == 4096
    # the reference is the unmodified model's own accuracy on the test split
    model_path, splits = trained
    data = load_splits(splits, image_size=16, progress=False)
    predicted = models.load_model(model_path).predict(data.images["test"], verbose=0)
    assert study.reference["accuracy"] == pytest.approx(
        np.mean(predicted.argmax(-1) == data.labels["test"]))
    assert 0 <= study.reference["accuracy_finetuned"] <= 1
    assert np.allclose(table["drop_vs_reference"],
                       study.reference["accuracy_finetuned"] - table["accuracy"])


def test_study_next_to_the_published_table(study):
    both = study.compare_published()
    assert list(both["filters"]) == [1, 4, 8, 12, 16, 20, 24, 28, 32]
    row = both.set_index("filters").loc[8]
    assert row["published_accuracy"] == pytest.approx(0.766)
    assert row["published_fraction_of_raw"] == pytest.approx(1 / 6)
    assert np.isnan(row["accuracy"]) and not np.isnan(both.set_index("filters").loc[4, "accuracy"])


def test_the_published_table_comes_with_its_source_and_finding():
    published = published_cifar10()
    assert list(published.columns) == ["filters", "accuracy", "fraction_of_raw"]
    assert published.set_index("filters").loc[1, "accuracy"] == pytest.approx(0.566)
    assert published.set_index("filters").loc[32, "fraction_of_raw"] == pytest.approx(2 / 3)
    assert {"authors", "title", "venue", "year", "description"} <= set(
        published.attrs["source"])
    assert "CIFAR-10" in published.attrs["source"]["description"]
    assert published.attrs["finding"] == published_cifar10_finding()
    assert "one sixth of the raw image" in published_cifar10_finding()
    published.loc[0, "accuracy"] = 0.0  # a caller's change does not reach the next reader
    assert published_cifar10().loc[0, "accuracy"] == pytest.approx(0.566)


def test_study_refuses_bad_options(trained):
    model_path, splits = trained
    with pytest.raises(ValueError, match="image_size must match the model's input size 16"):
        bottleneck_study(model_path, splits, at="pool2", image_size=32)
    with pytest.raises(ValueError, match="candidates"):
        bottleneck_study(model_path, splits, at="nope")
    with pytest.raises(ValueError, match="filters must be a non-empty list"):
        bottleneck_study(model_path, splits, at="pool2", filters=[])


def test_plots_draw_bytes_times_latency_and_accuracy(cnn, images, study):
    profile = profile_splits(cnn, images, repeats=1, warmup=1)
    figure = profile.plot()
    bytes_ax, times_ax = figure.axes
    assert [bar.get_height() for bar in bytes_ax.patches] == list(profile.table["bytes"])
    assert [line.get_label() for line in times_ax.lines] == ["device ms", "server ms"]

    latency = split_latency(profile, [10, 1000])
    ax = latency.plot().axes[0]
    assert [tick.get_text() for tick in ax.get_xticklabels()] == list(profile.table["layer"])
    drawn = [line for line in ax.lines if line.get_marker() == "o"]
    assert [line.get_label() for line in drawn] == ["10 Mbps", "1000 Mbps"]
    stars = [line for line in ax.lines if line.get_marker() == "*"]
    assert [star.get_ydata()[0] for star in stars] == list(latency.best["latency_ms"])

    accuracy_ax, bytes_ax = study.plot().axes
    labels = [line.get_label() for line in accuracy_ax.lines]
    assert labels[:2] == ["ours, float32 sent", "ours, uint8 sent"]
    assert "published CIFAR-10 (other data)" in labels
    assert "ours unmodified, fine-tuned alike" in labels
    assert list(accuracy_ax.lines[0].get_ydata()) == list(study.table["accuracy"])
    assert list(bytes_ax.lines[0].get_ydata()) == list(study.table["bytes_uint8"])
    assert math.isclose(accuracy_ax.get_ylim()[1], 1.02)


def test_plot_keeps_its_figure_and_axes_like_a_display(cnn, images, study):
    from matplotlib.figure import Figure

    profile = profile_splits(cnn, images, layers=["image", "pool2"], repeats=1, warmup=1)
    figure = profile.plot()
    assert profile.figure_ is figure and profile.ax_ is figure.axes[0]
    latency = split_latency(profile, [10])
    given = Figure().add_subplot()
    assert latency.plot(ax=given) is given.figure
    assert latency.figure_ is given.figure and latency.ax_ is given
    figure = study.plot()
    assert study.figure_ is figure and study.ax_ is figure.axes[0]


def test_save_writes_every_table_and_figure_atomically(cnn, images, study, tmp_path):
    profile = profile_splits(cnn, images, layers=["image", "pool2", "head"], repeats=1,
                             warmup=1)
    latency = split_latency(profile, [10, 1000])
    out = tmp_path / "out"
    assert profile.save(out) == out and latency.save(out) == out and study.save(out) == out
    assert latency.save(str(out), prefix="bottleneck_") == out
    assert sorted(path.name for path in out.iterdir()) == sorted([
        "profile.csv", "profile.png", "latency.csv", "best_split.csv", "break_even.csv",
        "latency.png", "bottleneck.csv", "bottleneck_reference.csv",
        "published_comparison.csv", "bottleneck.png", "bottleneck_latency.csv",
        "bottleneck_best_split.csv", "bottleneck_break_even.csv", "bottleneck_latency.png"])
    pd.testing.assert_frame_equal(pd.read_csv(out / "profile.csv"), profile.table,
                                  check_dtype=False)
    pd.testing.assert_frame_equal(pd.read_csv(out / "best_split.csv"), latency.best,
                                  check_dtype=False)
    pd.testing.assert_frame_equal(pd.read_csv(out / "bottleneck.csv"), study.table,
                                  check_dtype=False)
    assert pd.read_csv(out / "bottleneck_reference.csv").iloc[0].to_dict() == pytest.approx(
        study.reference)
    assert list(pd.read_csv(out / "published_comparison.csv")["filters"]) == \
        list(study.compare_published()["filters"])
    for name in ("profile.png", "latency.png", "bottleneck.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="prefix must be a file-name prefix"):
        profile.save(out, prefix="sub/")
    with pytest.raises(ValueError, match="folder must be a path"):
        study.save(None)
