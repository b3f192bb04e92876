"""Splitting a CNN between a device and a server: split points, bytes, latency, bottleneck."""

import math

import keras
import matplotlib
import numpy as np
import pandas as pd
import pytest

import tiny_data
from workbench import models
from workbench.models import StartingPoint
from workbench.studies.bottleneck import (METHODS, bottleneck_model, bottleneck_study,
                                          fine_tune, published_cifar10,
                                          published_cifar10_finding)
from workbench.studies.narrow import kept_channels, narrowed_layers, narrowed_model
from workbench.studies.split_chain import (DECODE, ENCODE, Chain, candidate_layers,
                                           split_functional, split_model)
from workbench.studies.split_profile import (QUANT_HEADER_BYTES, SplitProfile, profile_splits,
                                             quantize_roundtrip, split_latency)
from workbench.training.solver import SolverConfig
from workbench.data.pipeline import Batches
from workbench.data.splitdir import load_splits
from workbench.training.lr_mult import lr_table
from workbench.training.options import Monitoring
from workbench.training.train import finetune

matplotlib.use("Agg")


def tiny(name):
    return models.classifier(models.backbone(name, input_shape=(16, 16, 3)), 10)


def split(model, at):
    """The device and server parts of ``model`` at ``at``."""
    return split_functional(Chain(model).build(), at)


def kept_by(narrowed, model, conv: str) -> list[int]:
    """The filters of ``model``'s layer ``conv`` (in a nested backbone or not) that the
    narrowed model's ``conv`` kept, in its order."""
    inside = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    old = next((sub.get_layer(conv) for sub in inside if conv in [l.name for l in sub.layers]),
               None)
    old = model.get_layer(conv) if old is None else old
    old, new = old.get_weights()[0], narrowed.get_layer(conv).get_weights()[0]
    return [next(i for i in range(old.shape[-1]) if np.array_equal(old[..., i], new[..., j]))
            for j in range(new.shape[-1])]


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
    run = finetune(splits, root / "source", start=StartingPoint("cifar_cnn", weights=None),
                   recipe="scratch",
                   solver=SolverConfig(epochs=1, batch_size=16, optimizer="adam", base_lr=0.003),
                   image_size=16, progress="none", monitoring=Monitoring(resources=False))
    return run.path / "model.keras", splits


@pytest.fixture(scope="module")
def study(trained):
    model_path, splits = trained
    # the whole model fine-tuned at 1e-2: enough to change the reference's predictions
    return bottleneck_study(model_path, splits, at="pool2", filters=(4, 1), epochs=1,
                            batch_size=16, base_lr=0.01, rest_lr_mult=1.0, progress="none")


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
    device, server = split(model, at)
    assert device.output.shape[1:] == model.get_layer("backbone").get_layer(at).output.shape[1:]
    whole = model.predict(images, verbose=0)
    assert np.allclose(server.predict(device.predict(images, verbose=0), verbose=0), whole,
                       atol=1e-5)


def test_splitting_refuses_the_ends(cnn):
    for at in ("image", "head"):
        with pytest.raises(ValueError, match="at must name a layer of the model other than"):
            split(cnn, at)


def test_split_model_and_kept_channels_are_deprecated_and_still_work(cnn, images):
    with pytest.warns(DeprecationWarning, match="split_model is deprecated"):
        device, server = split_model(cnn, "pool2")
    assert np.allclose(server.predict(device.predict(images, verbose=0), verbose=0),
                       cnn.predict(images, verbose=0), atol=1e-5)
    with pytest.warns(DeprecationWarning, match="kept_channels is deprecated"):
        kept = kept_channels(cnn, "pool2", 3)
    assert list(kept) == kept_by(narrowed_model(cnn, "pool2", 3), cnn, "conv2")


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


def test_narrowed_conv_has_k_channels_at_the_split_and_keeps_the_other_weights(cnn):
    assert narrowed_layers(cnn, "pool2") == ("conv2", "conv3")
    model = narrowed_model(cnn, "pool2", 3)
    kept = kept_by(model, cnn, "conv2")
    assert kept == sorted(kept)  # the kept channels keep their order
    assert model.get_layer("pool2").output.shape[1:] == (4, 4, 3)
    backbone = cnn.get_layer("backbone")
    conv2, conv3 = backbone.get_layer("conv2").get_weights(), backbone.get_layer("conv3")
    assert np.array_equal(model.get_layer("conv2").get_weights()[0], conv2[0][..., kept])
    assert np.array_equal(model.get_layer("conv3").get_weights()[0],
                          conv3.get_weights()[0][:, :, kept, :])
    for new, old in zip(model.get_layer("bn2").get_weights(),
                        backbone.get_layer("bn2").get_weights()):  # gamma, beta, mean, var
        assert np.array_equal(new, old[kept])
    for name in ("conv1", "bn1", "bn3"):  # the untouched layers keep their trained weights
        for new, old in zip(model.get_layer(name).get_weights(),
                            backbone.get_layer(name).get_weights()):
            assert np.array_equal(new, old)
    for new, old in zip(model.get_layer("head").get_weights(), cnn.get_layer("head").get_weights()):
        assert np.array_equal(new, old)
    model.get_layer("conv1").set_weights([np.zeros_like(w)
                                          for w in model.get_layer("conv1").get_weights()])
    assert np.abs(backbone.get_layer("conv1").get_weights()[0]).sum() > 0  # copies, not shared
    device, _ = split(model, "pool2")
    assert device.output.shape[1:] == (4, 4, 3)  # what crosses the network


@pytest.mark.parametrize("name, at, consumer", [("cifar_cnn", "pool2", "conv3"),
                                                ("cifar_cnn", "pool3", "head"),
                                                ("lenet", "pool2", "ip1")])
def test_narrowing_drops_exactly_the_other_channels(name, at, consumer):
    """The narrowed model computes what the original computes when the layer reading the split
    ignores the dropped channels (its weights for them zeroed): the right rows are kept, also
    after lenet's flatten of 4x4x50 and cifar_cnn's global pooling."""
    keras.utils.set_random_seed(2)
    model = models.classifier(models.backbone(name, input_shape=(28, 28, 3)), 10)
    images = np.random.default_rng(1).integers(0, 256, (4, 28, 28, 3), dtype=np.uint8)
    assert narrowed_layers(model, at)[1] == consumer
    channels = model.get_layer("backbone").get_layer(at).output.shape[-1]
    everything = narrowed_model(model, at, channels)
    assert np.array_equal(everything.predict(images, verbose=0), model.predict(images, verbose=0))
    conv = narrowed_layers(model, at)[0]
    narrowed_five = narrowed_model(model, at, 5)
    kept = kept_by(narrowed_five, model, conv)
    narrowed = narrowed_five.predict(images, verbose=0)
    layer = (model.get_layer(consumer) if consumer == "head"
             else model.get_layer("backbone").get_layer(consumer))
    kernel, *rest = layer.get_weights()
    dropped = np.setdiff1d(np.arange(channels), kept)
    if kernel.ndim == 4:
        kernel[:, :, dropped, :] = 0
    else:  # a Dense layer: its rows are (H, W, C) positions flattened
        rows = kernel.reshape(-1, channels, kernel.shape[-1])
        rows[:, dropped, :] = 0
        kernel = rows.reshape(kernel.shape)
    layer.set_weights([kernel, *rest])
    assert np.allclose(narrowed, model.predict(images, verbose=0), atol=1e-5)
    assert not np.allclose(narrowed, everything.predict(images, verbose=0), atol=1e-3)


def test_least_squares_start_folds_the_dropped_channels_into_the_next_layer():
    """Two of four channels are affine in the other two, so the next layer, given images, takes
    them over exactly (a 'valid' convolution: no padding at the borders); without images their
    part is lost."""
    inputs = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Conv2D(4, 1, name="conv")(inputs)
    x = keras.layers.Conv2D(2, 3, use_bias=False, name="next")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(x))
    rng = np.random.default_rng(0)
    v0, v1, b = rng.normal(size=3), rng.normal(size=3), rng.normal(size=2)
    kernel = np.stack([v0, v1, 0.1 * (v0 + v1), 0.1 * (v0 - 2 * v1)], axis=-1)
    bias = [b[0], b[1], 0.1 * (b[0] + b[1]), 0.1 * (b[0] - 2 * b[1]) + 0.5]
    model.get_layer("conv").set_weights([kernel[None, None].astype(np.float32),
                                         np.asarray(bias, np.float32)])
    images = rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
    fitted = narrowed_model(model, "conv", 2, init_images=images)
    assert kept_by(fitted, model, "conv") == [0, 1]
    assert fitted.get_layer("next").get_weights()[0].shape == (3, 3, 2, 2)
    assert len(fitted.get_layer("next").get_weights()) == 2  # it got a bias for the constant
    whole = model.predict(images, verbose=0)
    assert np.allclose(fitted.predict(images, verbose=0), whole, rtol=1e-4, atol=1e-3)
    lost = narrowed_model(model, "conv", 2).predict(images, verbose=0)
    assert not np.allclose(lost, whole, rtol=1e-2, atol=1e-1)
    with pytest.raises(ValueError, match="images must be a uint8 array"):
        narrowed_model(model, "conv", 2, init_images=images.astype(np.float32))


def test_kept_filters_are_the_largest_norm_with_batch_norm_folded_in():
    keras.utils.set_random_seed(3)
    model = tiny("cifar_cnn")
    backbone = model.get_layer("backbone")
    kernel = np.ones((3, 3, 32, 64), np.float32) * np.arange(1, 65, dtype=np.float32)
    backbone.get_layer("conv2").set_weights([kernel])  # norm grows with the channel index
    assert kept_by(narrowed_model(model, "pool2", 3), model, "conv2") == [61, 62, 63]
    gamma, beta, mean, variance = backbone.get_layer("bn2").get_weights()
    gamma = np.full(64, 0.01, np.float32)
    gamma[[5, 9]] = -100.0  # |gamma| counts, not its sign
    variance = np.ones(64, np.float32)
    variance[40] = 1e-6  # a tiny variance: a large scale
    backbone.get_layer("bn2").set_weights([gamma, beta, mean, variance])
    assert kept_by(narrowed_model(model, "pool2", 3), model, "conv2") == [5, 9, 40]

    def drawn(seed):
        return kept_by(narrowed_model(model, "pool2", 6, keep="random", seed=seed), model,
                       "conv2")

    assert drawn(4) == drawn(4) and drawn(4) != drawn(5)
    assert drawn(4) == sorted(set(drawn(4))) and len(drawn(4)) == 6


def test_narrowing_refuses_what_it_cannot_narrow(cnn):
    with pytest.raises(ValueError, match=r"filters must be <= 64 \(the filters of conv2\)"):
        narrowed_model(cnn, "pool2", 65)
    with pytest.raises(ValueError, match="filters must be >= 1"):
        narrowed_model(cnn, "pool2", 0)
    with pytest.raises(ValueError, match="keep must be one of 'norm', 'random'"):
        narrowed_model(cnn, "pool2", 4, keep="l1")
    with pytest.raises(ValueError, match="an \\(H, W, C\\) output"):
        narrowed_model(cnn, "gap", 4)
    with pytest.raises(ValueError, match="whose channels come from 'preprocess'"):
        narrowed_model(cnn, "preprocess", 4)
    inputs = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.MaxPooling2D(2, name="pool")(x)
    x = keras.layers.DepthwiseConv2D(1, name="depthwise")(x)  # mixes no channels: no reader
    outputs = keras.layers.Dense(2, name="head")(keras.layers.Flatten(name="flat")(x))
    with pytest.raises(ValueError, match=r"reach 'depthwise' \(DepthwiseConv2D\)"):
        narrowed_layers(keras.Model(inputs, outputs), "pool")


def test_fine_tune_trains_through_the_per_layer_learning_rates(trained):
    model_path, splits = trained
    data = load_splits(splits, image_size=16, progress="none")
    train = Batches(data.images["train"], data.labels["train"], batch_size=16,
                    drop_remainder=True)
    solver = SolverConfig(epochs=1, batch_size=16, optimizer="adam", base_lr=0.01)
    narrowed = narrowed_model(model_path, "pool2", 4)
    before = {layer.name: layer.get_weights() for layer in narrowed.layers}
    fine_tune(narrowed, train, rules={"conv2": 1.0, "conv3": 1.0}, solver=solver,
              rest_lr_mult=0.0)
    rates = lr_table(narrowed, narrowed.optimizer).set_index("layer")["multiplier"]
    assert rates["conv2"] == 1 and rates["conv3"] == 1
    assert rates["conv1"] == 0 and rates["head"] == 0
    for layer in narrowed.layers:
        changed = any(not np.array_equal(new, old)
                      for new, old in zip(layer.get_weights(), before[layer.name]))
        assert changed == (layer.name in ("conv2", "conv3")), layer.name
    with pytest.raises(ValueError, match="train must be pipeline.Batches"):
        fine_tune(narrowed, data.images["train"], rules={}, solver=solver)
    with pytest.raises(ValueError, match="rest_lr_mult must be >= 0"):
        fine_tune(narrowed, train, rules={}, solver=solver, rest_lr_mult=-1)


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
    assert list(table["method"]) == ["bottleneck", "bottleneck", "narrowed_conv",
                                     "narrowed_conv"]  # both methods for every k
    assert list(table["init"]) == ["pca", "pca", "norm+lstsq", "norm+lstsq"]
    assert list(table["filters"]) == [1, 4, 1, 4]
    assert list(table["split_shape"]) == ["4x4x1", "4x4x4"] * 2
    assert list(table["bytes_float32"]) == [4 * 4 * 1 * 4, 4 * 4 * 4 * 4] * 2
    assert list(table["bytes_uint8"]) == [16 + 8, 64 + 8] * 2
    assert np.allclose(table["fraction_of_raw"], [24 / 768, 72 / 768] * 2)
    assert table[["accuracy", "accuracy_uint8"]].stack().between(0, 1).all()
    assert study.reference["filters"] == 64 and study.reference["bytes_float32"] == 4096
    # the reference is the unmodified model's own accuracy on the test split
    model_path, splits = trained
    data = load_splits(splits, image_size=16, progress="none")
    predicted = models.load_model(model_path).predict(data.images["test"], verbose=0)
    assert study.reference["accuracy"] == pytest.approx(
        np.mean(predicted.argmax(-1) == data.labels["test"]))
    # accuracy_finetuned: the unmodified model after the same fine-tuning as the methods get
    # (the fixture's Adam at 1e-2 on every layer, cosine, seed 0), measured here
    control = fine_tune(
        Chain(models.load_model(model_path)).build(),
        Batches(data.images["train"], data.labels["train"], batch_size=16, seed=0,
                drop_remainder=True),
        rules={}, solver=SolverConfig(optimizer="adam", base_lr=0.01, epochs=1, batch_size=16,
                                      lr_policy="cosine", weight_decay=0.0),
        rest_lr_mult=1.0, seed=0)
    tuned = np.mean(control.predict(data.images["test"], verbose=0).argmax(-1)
                    == data.labels["test"])
    assert study.reference["accuracy_finetuned"] == pytest.approx(tuned)
    assert tuned != pytest.approx(study.reference["accuracy"]), "the check must tell them apart"
    assert np.allclose(table["drop_vs_reference"],
                       study.reference["accuracy_finetuned"] - table["accuracy"])


def test_study_runs_one_method_alone(trained):
    model_path, splits = trained
    alone = bottleneck_study(model_path, splits, at="pool2", filters=[2], epochs=1,
                             batch_size=16, methods=["narrowed_conv"], keep="random",
                             progress="none")
    assert list(alone.table["method"]) == ["narrowed_conv"]
    assert list(alone.table["init"]) == ["random+lstsq"]
    assert alone.table["split_shape"].item() == "4x4x2"


def test_study_next_to_the_published_table(study):
    both = study.compare_published()
    assert list(both["filters"]) == [1, 4, 8, 12, 16, 20, 24, 28, 32]
    assert list(both.columns) == [
        "filters", "published_accuracy", "published_fraction_of_raw", "fraction_of_raw",
        "bottleneck_accuracy", "bottleneck_accuracy_uint8", "narrowed_conv_accuracy",
        "narrowed_conv_accuracy_uint8"]
    row = both.set_index("filters").loc[8]
    assert row["published_accuracy"] == pytest.approx(0.766)
    assert row["published_fraction_of_raw"] == pytest.approx(1 / 6)
    assert np.isnan(row["bottleneck_accuracy"]) and np.isnan(row["narrowed_conv_accuracy"])
    table = study.table.set_index(["method", "filters"])
    four = both.set_index("filters").loc[4]
    for method in METHODS:
        assert four[f"{method}_accuracy"] == table.loc[(method, 4), "accuracy"]
        assert four[f"{method}_accuracy_uint8"] == table.loc[(method, 4), "accuracy_uint8"]
    assert four["fraction_of_raw"] == pytest.approx(72 / 768)


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
    with pytest.raises(ValueError, match=r"filters must be <= 64 \(the channels at pool2\)"):
        bottleneck_study(model_path, splits, at="pool2", filters=[4, 65])
    with pytest.raises(ValueError, match="methods must be a non-empty list"):
        bottleneck_study(model_path, splits, at="pool2", methods="bottleneck")
    with pytest.raises(ValueError, match="methods must be one of 'bottleneck', 'narrowed_conv'"):
        bottleneck_study(model_path, splits, at="pool2", methods=["bottleneck", "pruned"])
    with pytest.raises(ValueError, match="keep must be one of 'norm', 'random'"):
        bottleneck_study(model_path, splits, at="pool2", keep="l1")
    with pytest.raises(ValueError, match="an \\(H, W, C\\) output"):
        bottleneck_study(model_path, splits, at="gap")


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
    assert labels[:4] == ["bottleneck, float32 sent", "bottleneck, uint8 sent",
                          "narrowed_conv, float32 sent", "narrowed_conv, uint8 sent"]
    assert "published CIFAR-10 (other data)" in labels
    assert "ours unmodified, fine-tuned alike" in labels
    table = study.table
    for line, method in zip(accuracy_ax.lines[:4:2], METHODS):  # one line per method
        rows = table[table["method"] == method]
        assert list(line.get_xdata()) == list(rows["filters"])
        assert list(line.get_ydata()) == list(rows["accuracy"])
    published = accuracy_ax.lines[labels.index("published CIFAR-10 (other data)")]
    assert list(published.get_ydata()) == list(published_cifar10()["accuracy"])
    assert list(bytes_ax.lines[0].get_xdata()) == [1, 4]  # the same bytes for both methods
    assert list(bytes_ax.lines[0].get_ydata()) == [16 + 8, 64 + 8]
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
    assert set(pd.read_csv(out / "bottleneck.csv")["method"]) == set(METHODS)
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
