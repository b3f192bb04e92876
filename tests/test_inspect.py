"""Model inspection: filter and activation grids, before/after, weight statistics, gradient
check."""

import keras
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from PIL import Image

import tiny_data
from workbench import inspect, models, plots
from workbench.models import StartingPoint
from workbench.training.solver import SolverConfig
from workbench.training.callbacks import WEIGHT_STATS_COLUMNS, WeightStats
from workbench.training.train import finetune

SOLVER = SolverConfig(epochs=2, batch_size=16, base_lr=0.01)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A cifar_cnn source trained from scratch, and a two-stage fine-tuned run from it."""
    root = tmp_path_factory.mktemp("inspect")
    splits = tiny_data.write_splits(root, per_class=8, counts=(5, 1, "rest"))
    source = finetune(splits, root / "source", start=StartingPoint("cifar_cnn", weights=None),
                      recipe="scratch", solver=SOLVER.replace(epochs=1), image_size=16,
                      progress="none")
    tuned = finetune(splits, root / "tuned", start=source.model_path("final"),
                     recipe="two_stage", solver=SOLVER, image_size=16, progress="none")
    return {"source": source.path / "model.keras", "tuned": tuned.path / "model.keras"}


def test_vis_square_tiles_in_a_square_with_padding():
    tiles = np.stack([np.full((2, 3), value) for value in (0.0, 0.25, 0.5, 0.75, 1.0)])
    mosaic = inspect.vis_square(tiles, padding=1, pad_value=-1)
    assert mosaic.shape == (2 * 3 - 1, 3 * 4 - 1)  # 5 tiles: 3 per row, 2 rows
    assert mosaic[0, 0] == 0.0 and mosaic[0, 4] == 0.25 and mosaic[3, 4] == 1.0
    assert mosaic[2, 0] == -1 and mosaic[0, 3] == -1 and mosaic[3, 8] == -1  # padding, empty slot
    np.testing.assert_allclose(inspect.normalize([2.0, 4.0, 6.0]), [0, 0.5, 1])


def test_first_layer_filters_are_rgb_tiles(runs):
    grid = inspect.filters(runs["source"])
    assert grid.layer == "conv1" and grid.rgb and grid.kernel_shape == (3, 3, 3, 32)
    assert grid.count == 32 and grid.tiles.shape == (32, 3, 3, 3)
    assert grid.tiles.min() == 0.0 and grid.tiles.max() == 1.0  # normalised like vis_square
    assert grid.mosaic().shape == (6 * 4 - 1, 6 * 4 - 1, 3)  # ceil(sqrt(32)) = 6 per row
    drawn = grid.plot().axes[0].images[0].get_array()
    assert drawn.shape[-1] == 3  # drawn in colour


def test_deeper_layer_filters_are_one_grey_tile_per_filter_and_channel(runs):
    grid = inspect.filters(runs["source"], layer="conv2", max_filters=5, max_channels=4)
    assert not grid.rgb and grid.count == 5 * 4 and grid.columns == 4
    assert grid.tiles.shape == (20, 3, 3) and grid.mosaic().shape == (5 * 4 - 1, 4 * 4 - 1)
    kernel = keras.ops.convert_to_numpy(
        inspect.find_layer(models.load_model(runs["source"]), "conv2").kernel)
    # tile 1 is filter 0 seen from input channel 1
    np.testing.assert_allclose(grid.tiles[1], inspect.normalize(
        kernel[:, :, 1, 0], value_range=grid.value_range))
    with pytest.raises(ValueError, match="layer must be a 2-D convolution, received: 'bn1'"):
        inspect.filters(runs["source"], layer="bn1")
    with pytest.raises(ValueError, match="received: 'conv9'; layers: .*conv1"):
        inspect.filters(runs["source"], layer="conv9")


def test_filters_before_and_after_fine_tuning_side_by_side(runs):
    figure = inspect.compare_filters(runs["source"], runs["tuned"])
    panels = [ax for ax in figure.axes if ax.images]
    assert len(panels) == 2
    assert [ax.get_title() for ax in panels] == ["before fine-tuning", "after fine-tuning"]
    assert "conv1: mean |change|" in figure.get_suptitle()
    assert panels[0].images[0].get_array().shape == panels[1].images[0].get_array().shape


def test_activation_grid_has_one_tile_per_channel(runs):
    model = models.load_model(runs["tuned"])
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    result = inspect.activations(model, image, layers=["conv1", "conv3", "head"],
                                 max_channels=48)
    assert [g.layer for g in result.grids] == ["conv1", "conv3", "head"]
    assert result["conv1"].count == 32 and result["conv1"].values.shape == (32, 16, 16)
    assert result["conv3"].count == 48 and result["conv3"].channels == 128
    assert result["head"].channels == 10 and result["head"].count == 1
    # reaching into the nested backbone gives what the backbone itself computes
    backbone = model.get_layer("backbone")
    direct = keras.Model(backbone.input, backbone.get_layer("conv1").output)(image[None])
    np.testing.assert_allclose(result["conv1"].values,
                               keras.ops.convert_to_numpy(direct)[0].transpose(2, 0, 1),
                               rtol=1e-5, atol=1e-5)
    figure = result.plot()
    assert len([ax for ax in figure.axes if ax.images]) == 4  # the input and three layers


def small_conv(shape=(12, 20, 3)) -> keras.Model:
    """A tiny model on a non-square input: height 12, width 20."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape)
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    outputs = keras.layers.Dense(2, name="dense")(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, outputs)


def test_activations_of_an_image_file_on_a_non_square_model(tmp_path):
    path = tmp_path / "wide.png"
    Image.new("RGB", (50, 30), (200, 10, 10)).save(path)
    result = inspect.activations(small_conv(), path, layers=["conv"])
    assert result.image.shape == (12, 20, 3)  # resized to (height, width) of the input
    assert tuple(result.image[0, 0]) == (200, 10, 10)
    assert result["conv"].values.shape == (4, 12, 20)
    assert inspect.load_image(path, size=(12, 20)).shape == (12, 20, 3)


def test_result_objects_keep_what_they_drew():
    model = small_conv()
    grid = inspect.filters(model)
    figure = grid.plot()
    assert grid.figure_ is figure and grid.ax_ is figure.axes[0]
    np.testing.assert_array_equal(grid.ax_.images[0].get_array(), grid.mosaic())
    mine = Figure()
    ax = mine.add_subplot()
    assert grid.plot(ax=ax) is mine and grid.figure_ is mine and grid.ax_ is ax

    image = np.random.default_rng(0).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    result = inspect.activations(model, image, layers=["conv", "dense"])
    figure = result.plot()
    assert result.figure_ is figure and len(result.ax_) == 3
    np.testing.assert_array_equal(result.ax_[0].images[0].get_array(), image)
    np.testing.assert_array_equal(result.ax_[1].images[0].get_array(), result["conv"].mosaic())
    assert result.ax_[2].get_title() == result["dense"].title
    conv = result["conv"]
    conv.plot(ax=ax)
    assert conv.figure_ is mine and conv.ax_ is ax and conv.ax_.get_title() == conv.title

    check = inspect.gradient_check(float64_model(wrong_gradient=False), *check_data(),
                                   loss="sparse_categorical_crossentropy", samples=5, **CHECK)
    figure = check.plot()
    assert check.figure_ is figure and check.ax_ is figure.axes[0]
    np.testing.assert_allclose(check.ax_.lines[0].get_ydata(),
                               np.maximum(check.table["relative_error"], 1e-16))


# --- weight statistics ---------------------------------------------------------------------------

def tiny_dense(frozen: bool = True) -> keras.Model:
    inputs = keras.Input((4,))
    x = keras.layers.Dense(8, activation="relu", name="frozen_dense", trainable=not frozen)(inputs)
    outputs = keras.layers.Dense(3, activation="softmax", name="head")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    return model


def test_weight_stats_record_each_epoch_and_zero_for_a_frozen_layer(tmp_path):
    keras.utils.set_random_seed(0)
    model = tiny_dense()
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    y = np.arange(32) % 3
    path = tmp_path / "weight_stats.csv"
    model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[WeightStats(path)])
    table = inspect.read_weight_stats(path)
    assert list(table.columns) == WEIGHT_STATS_COLUMNS
    assert len(table) == 2 * 4  # 2 epochs x (kernel, bias) x 2 layers
    frozen = table[table["layer"] == "frozen_dense"]
    head = table[table["layer"] == "head"]
    assert (frozen["update_ratio"] == 0).all()
    kernels, biases = head[head["weight"] == "kernel"], head[head["weight"] == "bias"]
    assert (kernels["update_ratio"] > 0).all()
    # the bias starts at zero: no ratio in epoch 1, then a positive one
    assert np.isnan(biases["update_ratio"].iloc[0]) and biases["update_ratio"].iloc[1] > 0
    kernel = keras.ops.convert_to_numpy(model.get_layer("head").kernel)
    last = head[(head["epoch"] == 2) & (head["weight"] == "kernel")]
    assert last["mean_abs"].item() == pytest.approx(np.abs(kernel).mean(), rel=1e-6)

    # a second fit from epoch 1 (a resumed run) replaces epoch 2 and goes on
    model.fit(x, y, epochs=3, initial_epoch=1, batch_size=8, verbose=0,
              callbacks=[WeightStats(path)])
    again = inspect.read_weight_stats(path)
    assert sorted(again["epoch"].unique()) == [1, 2, 3] and len(again) == 3 * 4
    pd.testing.assert_frame_equal(again[again["epoch"] == 1], table[table["epoch"] == 1])

    figure = plots.weight_stats(again)
    mean_ax, ratio_ax = figure.axes[:2]
    assert ratio_ax.get_yscale() == "log"
    assert sorted(line.get_label() for line in ratio_ax.lines) == ["frozen_dense (frozen)",
                                                                   "head"]


# --- gradient check ------------------------------------------------------------------------------

class DoubledGradient(keras.layers.Layer):
    """The identity, with a deliberately wrong gradient (twice the true one)."""

    def call(self, x):
        @keras.ops.custom_gradient
        def identity(x):
            def grad(*args, upstream=None):
                if upstream is None:
                    (upstream,) = args
                return 2.0 * upstream
            return x * 1.0, grad

        return identity(x)


# Keras computes in float32 on JAX (no float64 without jax_enable_x64, which Keras does not
# follow everywhere), so there the check needs a larger step and tolerance.
FLOAT64 = keras.backend.backend() != "jax"
DTYPE = "float64" if FLOAT64 else "float32"
CHECK = dict(epsilon=1e-5, tolerance=1e-4) if FLOAT64 else dict(epsilon=1e-2, tolerance=5e-2)
AGREE = 1e-6 if FLOAT64 else 5e-2  # the largest error of a correct gradient


def float64_model(wrong_gradient: bool) -> keras.Model:
    keras.utils.set_random_seed(1)
    inputs = keras.Input((5,), dtype=DTYPE)
    x = keras.layers.Dense(6, activation="tanh", dtype=DTYPE, name="hidden")(inputs)
    if wrong_gradient:
        x = DoubledGradient(dtype=DTYPE, name="wrong")(x)
    outputs = keras.layers.Dense(3, activation="softmax", dtype=DTYPE, name="out")(x)
    return keras.Model(inputs, outputs)


def check_data():
    rng = np.random.default_rng(2)
    return rng.normal(size=(8, 5)), np.arange(8) % 3


def test_gradient_check_passes_for_a_correct_gradient():
    model = float64_model(wrong_gradient=False)
    before = [keras.ops.convert_to_numpy(w).copy() for w in model.weights]
    x, y = check_data()
    result = inspect.gradient_check(model, x, y, loss="sparse_categorical_crossentropy",
                                    samples=30, seed=0, **CHECK)
    assert len(result.table) == 30 and result.passed
    assert result.max_relative_error < AGREE
    assert "passed" in repr(result)
    for old, new in zip(before, model.weights):  # weights restored
        np.testing.assert_array_equal(old, keras.ops.convert_to_numpy(new))
    assert result.plot().axes[0].get_yscale() == "log"


def test_gradient_check_fails_for_a_wrong_gradient():
    model = float64_model(wrong_gradient=True)
    x, y = check_data()
    result = inspect.gradient_check(model, x, y, loss="sparse_categorical_crossentropy",
                                    samples=30, seed=0, **CHECK)
    assert not result.passed and "FAILED" in repr(result)
    hidden = result.table[result.table["variable"].str.startswith("hidden/")]
    below = result.table[result.table["variable"].str.startswith("out/")]
    assert len(hidden) and len(below)
    # the doubled gradient reaches only the layer before it: |2g - g| / |2g| = 0.5
    nonzero = hidden[hidden["numeric"].abs() > (1e-6 if FLOAT64 else 1e-2)]
    assert len(nonzero)
    np.testing.assert_allclose(nonzero["relative_error"], 0.5, atol=1e-4 if FLOAT64 else 0.05)
    assert below["relative_error"].max() < AGREE


def test_gradient_check_rejects_bad_arguments():
    model = float64_model(wrong_gradient=False)
    x, y = check_data()
    with pytest.raises(ValueError, match="epsilon must be > 0.0, received: 0"):
        inspect.gradient_check(model, x, y, loss="mse", epsilon=0)
    with pytest.raises(ValueError, match="loss is needed for a model that is not compiled"):
        inspect.gradient_check(model, x, y)
