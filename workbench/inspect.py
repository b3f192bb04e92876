"""Looking inside a model: filters, activations, weight statistics, and a gradient check.

Compute, then plot: each function returns an object holding the numbers, with ``.plot(ax=None)``
drawing them (the figures themselves live in :mod:`workbench.plots`) and keeping what it drew
in ``figure_`` and ``ax_``, like scikit-learn's Display objects.

* :func:`filters` tiles the kernels of a convolution like Caffe's ``vis_square`` (first-layer RGB
  filters in colour; deeper layers one grey tile per (filter, input channel));
  :func:`compare_filters` shows the same filters before and after fine-tuning side by side.
* :func:`activations` shows what chosen layers output for one image, one tile per channel.
* The training callback ``WeightStats`` records, per layer and epoch, the mean absolute
  weight and the update-to-weight ratio ``|Δw| / |w|`` (around 1e-3 is healthy; 0 means frozen)
  into a CSV; ``RunDir(path).weight_stats`` (or :func:`read_weight_stats`, the same reader of a
  file) reads it for :func:`workbench.plots.weight_stats`.
* :func:`gradient_check` compares automatic differentiation with central finite differences.
* :func:`grad_cam` and :func:`occlusion` say where the model looked in one image (from
  :mod:`workbench.explain`, where the web service and ``workbench predict --explain`` reach
  them); :func:`explain` draws the photo beside its map, :func:`explain_worst` the worst
  predictions of an evaluation with theirs (fastai's top losses with heatmaps).

Training curves of one or several runs are :func:`workbench.plots.training_curves` (of
``workbench.runs.RunDir(path).history``).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from workbench import models, plots
from workbench._checks import UsageError, check_choice, check_int, check_number
from workbench._compat import inbound_nodes
from workbench.data.images import load_array
from workbench.explain import (METHODS, Explainer, Explanation, all_layers, grad_cam,
                               last_feature_layer, occlusion)
from workbench.runs import read_weight_stats  # noqa: F401 (a reader of this module's CSV)


# --- finding layers ----------------------------------------------------------------------------

def _as_model(model, name: str = "model") -> keras.Model:
    """A ``keras.Model``, loading it first if given a path."""
    if isinstance(model, (str, Path)):
        return models.load_model(model)
    if not isinstance(model, keras.Model):
        raise UsageError(f"{name} must be a keras.Model or the path of a .keras file, "
                         f"received: {type(model).__name__}")
    return model


def find_layer(model: keras.Model, name: str):
    """The layer called ``name`` in ``model`` or in a model nested in it (e.g. the backbone).

    Raises:
        ValueError: naming the layer and listing the layers there are.
    """
    for layer in all_layers(model):
        if layer.name == name:
            return layer
    names = [layer.name for layer in all_layers(model) if not isinstance(layer, keras.Model)]
    raise UsageError(f"layer must name a layer of {model.name}, received: {name!r}; layers: "
                     f"{', '.join(names)}")


def first_conv(model: keras.Model):
    """The first 2-D convolution of ``model``, nested models included."""
    for layer in all_layers(model):
        kernel = getattr(layer, "kernel", None)
        if kernel is not None and len(kernel.shape) == 4:
            return layer
    raise UsageError(f"model must have a 2-D convolution, received: {model.name} without one")


def default_layers(model) -> list[str]:
    """The layers worth looking at in a model of any family: its first, middle and last 2-D
    convolution (depthwise ones left out: their kernels mix no channels), in order, without
    repeats; fewer when the model has fewer convolutions.

    Args:
        model: a ``keras.Model`` (nested models included) or the path of a ``.keras`` file.

    Returns:
        One to three layer names.

    Raises:
        ValueError: when the model has no 2-D convolution.
    """
    model = _as_model(model)
    convolutions = [layer.name for layer in all_layers(model)
                    if len(getattr(getattr(layer, "kernel", None), "shape", ())) == 4
                    and not isinstance(layer, keras.layers.DepthwiseConv2D)]
    if not convolutions:
        raise UsageError(f"model must have a 2-D convolution, received: {model.name} without one")
    picked = (convolutions[0], convolutions[(len(convolutions) - 1) // 2], convolutions[-1])
    return list(dict.fromkeys(picked))


def _inputs(model: keras.Model):
    return model.inputs[0] if len(model.inputs) == 1 else model.inputs


def _output_model(model: keras.Model, name: str) -> keras.Model:
    """A model from ``model``'s input to the output of layer ``name``, reaching into nested
    models (the backbone of a classifier) through the tensors they are called on."""
    direct = {layer.name: layer for layer in model.layers}
    if name in direct:
        return keras.Model(_inputs(model), direct[name].output)
    for sub in model.layers:
        if not isinstance(sub, keras.Model) or name not in {l.name for l in all_layers(sub)}:
            continue
        inner = _output_model(sub, name)
        for node in inbound_nodes(sub):
            inputs = node.input_tensors
            if len(inputs) != 1:
                continue
            if inputs[0] is model.inputs[0]:
                return inner
            try:
                prefix = keras.Model(_inputs(model), inputs[0])
            except ValueError:  # a node of another graph
                continue
            image = keras.Input(model.inputs[0].shape[1:], dtype=model.inputs[0].dtype)
            return keras.Model(image, inner(prefix(image)))
    find_layer(model, name)  # raises, listing the layers
    raise UsageError(f"layer {name!r} is not reachable from the input of {model.name}")


# --- tiling (Caffe's vis_square) ---------------------------------------------------------------

def normalize(data, *, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Scales ``data`` to [0, 1] over its global minimum and maximum (or ``value_range``)."""
    data = np.asarray(data, dtype=np.float64)
    low, high = value_range if value_range is not None else (data.min(), data.max())
    if high <= low:
        return np.zeros_like(data)
    return np.clip((data - low) / (high - low), 0.0, 1.0)


def vis_square(tiles, *, columns: int | None = None, padding: int = 1,
               pad_value: float = 1.0) -> np.ndarray:
    """Tiles ``(n, h, w)`` or ``(n, h, w, 3)`` arrays, already in [0, 1], into one mosaic.

    As Caffe's ``vis_square``: about ``sqrt(n)`` tiles per row (or ``columns``), separated by
    ``padding`` pixels of ``pad_value``.

    Returns:
        An array of shape (rows * (h + padding) - padding, columns * (w + padding) - padding[, 3]).
    """
    tiles = np.asarray(tiles, dtype=np.float64)
    if tiles.ndim not in (3, 4) or len(tiles) == 0:
        raise UsageError(f"tiles must have shape (n, h, w) or (n, h, w, 3) with n >= 1, "
                         f"received shape: {tiles.shape}")
    check_int("padding", padding, minimum=0)
    count = len(tiles)
    columns = check_int("columns", columns, minimum=1) if columns is not None else \
        int(math.ceil(math.sqrt(count)))
    rows = -(-count // columns)
    height, width = tiles.shape[1:3]
    mosaic = np.full((rows * (height + padding) - padding, columns * (width + padding) - padding)
                     + tiles.shape[3:], float(pad_value), dtype=np.float64)
    for index, tile in enumerate(tiles):
        row, column = divmod(index, columns)
        top, left = row * (height + padding), column * (width + padding)
        mosaic[top:top + height, left:left + width] = tile
    return mosaic


@dataclasses.dataclass
class FilterGrid:
    """The kernels of one convolution, normalised to [0, 1] and ready to tile.

    Attributes:
        layer: the layer's name.
        tiles: (n, h, w, 3) colour tiles for a layer on RGB input, else (n, h, w) grey tiles,
            one per (filter, input channel), filter by filter.
        rgb: whether the tiles are colour.
        columns: tiles per row (input channels shown per filter for grey tiles).
        kernel_shape: the full kernel's shape (h, w, input channels, filters).
        value_range: the kernel values mapped to 0 and 1.
        figure_: the ``Figure`` last drawn by :meth:`plot` (None before).
        ax_: the axes it drew the mosaic on.
    """

    layer: str
    tiles: np.ndarray
    rgb: bool
    columns: int
    kernel_shape: tuple
    value_range: tuple
    figure_: object = dataclasses.field(default=None, init=False, repr=False, compare=False)
    ax_: object = dataclasses.field(default=None, init=False, repr=False, compare=False)

    @property
    def count(self) -> int:
        """Number of tiles."""
        return len(self.tiles)

    def mosaic(self, *, padding: int = 1) -> np.ndarray:
        """The tiles as one image (see :func:`vis_square`)."""
        return vis_square(self.tiles, columns=self.columns, padding=padding)

    def plot(self, ax=None, *, title: str | None = None):
        """Draws the mosaic, keeping ``figure_`` and ``ax_``; returns the ``Figure``."""
        h, w, channels, filters = self.kernel_shape
        shown = "RGB" if self.rgb else f"rows: filters, columns: of {channels} input channels"
        figure = plots.mosaic(self.mosaic(), ax=ax, title=title or
                              f"{self.layer}: {filters} filters {h}x{w} ({shown})")
        self.figure_, self.ax_ = figure, ax if ax is not None else figure.axes[0]
        return figure


def filters(model, *, layer: str | None = None, max_filters: int = 64, max_channels: int = 8,
            value_range: tuple[float, float] | None = None) -> FilterGrid:
    """The filters of a convolution, tiled like Caffe's ``vis_square``.

    A layer whose kernels see 3 input channels (the first layer, on RGB images) gives one colour
    tile per filter; a deeper layer one grey tile per (filter, input channel), a row per filter.

    Args:
        model: a ``keras.Model`` or the path of a ``.keras`` file.
        layer: the layer's name (looked up in nested models too); default the first convolution.
        max_filters: show at most this many filters.
        max_channels: for grey tiles, at most this many input channels per filter.
        value_range: the kernel values mapped to black and white; default the shown kernels'
            own minimum and maximum.

    Returns:
        A :class:`FilterGrid`.
    """
    model = _as_model(model)
    check_int("max_filters", max_filters, minimum=1)
    check_int("max_channels", max_channels, minimum=1)
    found = first_conv(model) if layer is None else find_layer(model, layer)
    kernel = getattr(found, "kernel", None)
    if kernel is None or len(kernel.shape) != 4:
        raise UsageError(f"layer must be a 2-D convolution, received: {found.name!r} "
                         f"({type(found).__name__})")
    kernel = keras.ops.convert_to_numpy(kernel).astype(np.float64)
    shape = tuple(int(d) for d in kernel.shape)
    if shape[2] == 3:
        tiles = kernel[..., :max_filters].transpose(3, 0, 1, 2)
        columns = int(math.ceil(math.sqrt(len(tiles))))
    else:
        shown = kernel[:, :, :max_channels, :max_filters].transpose(3, 2, 0, 1)
        columns = shown.shape[1]
        tiles = shown.reshape(-1, shape[0], shape[1])
    if value_range is None:
        value_range = (float(tiles.min()), float(tiles.max()))
    return FilterGrid(found.name, normalize(tiles, value_range=value_range), shape[2] == 3,
                      columns, shape, tuple(value_range))


def compare_filters(before, after, *, layer: str | None = None, max_filters: int = 64,
                    max_channels: int = 8, shared_scale: bool = True,
                    names: tuple[str, str] = ("before fine-tuning", "after fine-tuning"),
                    figure=None):
    """The same filters of two models side by side, e.g. a source model and its fine-tuned run.

    Args:
        before: a ``keras.Model`` or ``.keras`` path (e.g. the source model).
        after: the same for the other model (e.g. a run's ``model.keras``).
        layer: the layer, present in both; default the first convolution of ``after``.
        max_filters: at most this many filters.
        max_channels: for deeper layers, at most this many input channels per filter.
        shared_scale: map the same kernel values to the same grey in both panels, so a change
            in magnitude shows; False normalises each panel on its own.
        names: the panels' titles.
        figure: an empty Figure or SubFigure to draw into; None for a new figure.

    Returns:
        A ``matplotlib.figure.Figure`` with two panels.
    """
    before, after = _as_model(before, "before"), _as_model(after, "after")
    if len(names) != 2:
        raise UsageError(f"names must hold 2 titles, received: {names!r}")
    layer = layer or first_conv(after).name
    options = dict(layer=layer, max_filters=max_filters, max_channels=max_channels)
    grids = [filters(before, **options), filters(after, **options)]
    if shared_scale:
        kernels = [keras.ops.convert_to_numpy(find_layer(m, layer).kernel) for m in (before, after)]
        value_range = (float(min(k.min() for k in kernels)), float(max(k.max() for k in kernels)))
        grids = [filters(m, value_range=value_range, **options) for m in (before, after)]
    change = float(np.abs(keras.ops.convert_to_numpy(find_layer(after, layer).kernel)
                          - keras.ops.convert_to_numpy(find_layer(before, layer).kernel)).mean())
    return plots.filter_comparison([grid.mosaic() for grid in grids], titles=list(names),
                                   title=f"{layer}: mean |change| {change:.3g}", figure=figure)


# --- activations -------------------------------------------------------------------------------

@dataclasses.dataclass
class ActivationGrid:
    """What one layer outputs for one image.

    Attributes:
        layer: the layer's name.
        values: (channels shown, h, w) outputs; a dense layer's units as one (1, rows, cols)
            tile, padded with NaN.
        channels: the layer's number of channels (or units).
        figure_: the ``Figure`` last drawn by :meth:`plot` (None before).
        ax_: the axes it drew the mosaic on.
    """

    layer: str
    values: np.ndarray
    channels: int
    figure_: object = dataclasses.field(default=None, init=False, repr=False, compare=False)
    ax_: object = dataclasses.field(default=None, init=False, repr=False, compare=False)

    @property
    def count(self) -> int:
        """Number of tiles (channels shown)."""
        return len(self.values)

    def mosaic(self, *, padding: int = 1) -> np.ndarray:
        """The channels normalised together (dead channels stay dark), tiled."""
        values = np.nan_to_num(self.values, nan=np.nanmin(self.values))
        return vis_square(normalize(values), padding=padding, pad_value=np.nan)  # blank gaps

    @property
    def title(self) -> str:
        """The layer and how many of its channels are shown."""
        shown = f"{self.count} of {self.channels}" if self.count < self.channels else \
            str(self.channels)
        return f"{self.layer} ({shown} channels)"

    def plot(self, ax=None, *, title: str | None = None):
        """Draws the mosaic, keeping ``figure_`` and ``ax_``; returns the ``Figure``."""
        figure = plots.mosaic(self.mosaic(), ax=ax, cmap="viridis", title=title or self.title)
        self.figure_, self.ax_ = figure, ax if ax is not None else figure.axes[0]
        return figure


@dataclasses.dataclass
class Activations:
    """The activations of several layers for one image; ``plot()`` shows them in a row.

    Attributes:
        image: the (H, W, 3) uint8 input.
        grids: one :class:`ActivationGrid` per layer.
        figure_: the ``Figure`` last drawn by :meth:`plot` (None before).
        ax_: its axes, an array: the input's, then one per layer.
    """

    image: np.ndarray
    grids: list
    figure_: object = dataclasses.field(default=None, init=False, repr=False, compare=False)
    ax_: object = dataclasses.field(default=None, init=False, repr=False, compare=False)

    def __getitem__(self, layer: str) -> ActivationGrid:
        for grid in self.grids:
            if grid.layer == layer:
                return grid
        raise KeyError(layer)

    def plot(self, *, figure=None):
        """The image, then one panel per layer (into ``figure``, an empty Figure or SubFigure,
        or a new one), keeping ``figure_`` and ``ax_``; returns the ``Figure``."""
        figure = plots.activation_panels(self.image, [grid.mosaic() for grid in self.grids],
                                         titles=[grid.title for grid in self.grids],
                                         figure=figure)
        self.figure_, self.ax_ = figure, np.array(figure.axes)
        return figure


def load_image(image, *, size: int | tuple[int, int], resize_mode: str = "squash") -> np.ndarray:
    """A uint8 (H, W, 3) image from an array or a file path, resized as in training.

    Args:
        image: an (H, W, 3) array (returned as it is) or an image file.
        size: the side, or ``(height, width)``, a file is resized to.
        resize_mode: how a file is resized (``"squash"``, ``"crop"`` or ``"pad"``).
    """
    if isinstance(image, (str, Path)):
        return load_array(image, size, resize_mode)
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise UsageError(f"image must be a path or an (H, W, 3) array, received shape: "
                         f"{image.shape}")
    return image


def activations(model, image, *, layers, max_channels: int = 64,
                resize_mode: str = "squash") -> Activations:
    """The outputs of chosen layers for one image, one tile per channel.

    Args:
        model: a ``keras.Model`` (a classifier, a backbone) or a ``.keras`` path.
        image: an (H, W, 3) uint8 array, or an image file (resized to the model's input).
        layers: layer names (looked up in nested models too), e.g. ``["conv1", "conv2"]``.
        max_channels: show at most this many channels per layer.
        resize_mode: how a file is resized (use the run's ``resize_mode``).

    Returns:
        :class:`Activations`.
    """
    model = _as_model(model)
    check_int("max_channels", max_channels, minimum=1)
    if isinstance(layers, str):
        layers = [layers]
    if not layers:
        raise UsageError("layers must name at least one layer, received: []")
    size = tuple(int(d) for d in model.inputs[0].shape[1:3])  # (height, width)
    image = load_image(image, size=size, resize_mode=resize_mode)
    if image.shape[:2] != size:
        raise UsageError(f"image must be {size[0]}x{size[1]} like the model's input, received "
                         f"shape: {image.shape}")
    grids = []
    for name in layers:
        output = keras.ops.convert_to_numpy(_output_model(model, name)(image[None]))[0]
        output = np.asarray(output, dtype=np.float64)
        if output.ndim == 3:
            values, channels = output.transpose(2, 0, 1)[:max_channels], output.shape[-1]
        else:
            flat = output.reshape(-1)
            side = int(math.ceil(math.sqrt(len(flat))))
            padded = np.full(side * side, np.nan)
            padded[:len(flat)] = flat
            values, channels = padded.reshape(1, side, side), len(flat)
        grids.append(ActivationGrid(name, values, int(channels)))
    return Activations(image, grids)


# --- gradient check ----------------------------------------------------------------------------

@dataclasses.dataclass
class GradientCheck:
    """Automatic against numerical gradients at sampled weights.

    Attributes:
        table: one row per sampled weight entry: variable, index, analytic, numeric,
            relative_error = |a - n| / max(|a|, |n|) (absolute error where both are tiny).
        epsilon: the finite-difference step.
        tolerance: the largest relative error that passes.
        figure_: the ``Figure`` last drawn by :meth:`plot` (None before).
        ax_: the axes it drew on.
    """

    table: pd.DataFrame
    epsilon: float
    tolerance: float
    figure_: object = dataclasses.field(default=None, init=False, repr=False, compare=False)
    ax_: object = dataclasses.field(default=None, init=False, repr=False, compare=False)

    @property
    def max_relative_error(self) -> float:
        return float(self.table["relative_error"].max())

    @property
    def passed(self) -> bool:
        """True when every sampled entry agrees within ``tolerance``."""
        return self.max_relative_error <= self.tolerance

    def __repr__(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        return (f"GradientCheck({verdict}: max relative error {self.max_relative_error:.3g} "
                f"over {len(self.table)} entries, tolerance {self.tolerance:g}, "
                f"epsilon {self.epsilon:g})")

    def plot(self, ax=None):
        """Relative error per sampled entry (log scale) against the tolerance, keeping
        ``figure_`` and ``ax_``; returns the ``Figure``."""
        figure = plots.gradient_check(self.table, tolerance=self.tolerance, ax=ax)
        self.figure_, self.ax_ = figure, ax if ax is not None else figure.axes[0]
        return figure


def _loss_function(model: keras.Model, loss):
    if loss is None:
        loss = getattr(model, "loss", None)
        if loss is None:
            raise UsageError("loss is needed for a model that is not compiled, received: None")
    function = keras.losses.get(loss) if isinstance(loss, str) else loss
    if not callable(function):
        raise UsageError(f"loss must be a loss name or a callable (y_true, y_pred), "
                         f"received: {loss!r}")

    def scalar(y, x):
        return keras.ops.mean(function(y, x))

    return scalar


def _analytic_gradients(model: keras.Model, x, y, loss) -> list[np.ndarray]:
    """d loss / d trainable weight, by the backend's automatic differentiation."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            value = loss(y, model(x, training=False))
        gradients = tape.gradient(value, [v.value for v in model.trainable_variables])
    elif backend == "jax":
        import jax

        trainable = [v.value for v in model.trainable_variables]
        frozen = [v.value for v in model.non_trainable_variables]

        def value_of(weights):
            output, _ = model.stateless_call(weights, frozen, x, training=False)
            return loss(y, output)

        gradients = jax.grad(value_of)(trainable)
    else:
        raise NotImplementedError(f"gradient_check supports the tensorflow and jax backends, "
                                  f"received: KERAS_BACKEND={backend!r}")
    return [np.zeros(v.shape) if g is None else np.asarray(keras.ops.convert_to_numpy(g),
                                                           dtype=np.float64)
            for v, g in zip(model.trainable_variables, gradients)]


def gradient_check(model: keras.Model, x, y, *, loss=None, epsilon: float = 1e-3,
                   samples: int = 20, seed: int = 0, tolerance: float = 1e-4) -> GradientCheck:
    """Checks automatic differentiation against central finite differences, as in CS231n.

    For ``samples`` weight entries drawn at random (uniformly over all trainable weights) it
    compares ``d loss / d w`` from the backend with ``(L(w + ε) - L(w - ε)) / 2ε``. A custom
    layer or loss with a wrong gradient shows a relative error far above ``tolerance``. Use a
    small model in float64 (``keras.config.set_floatx("float64")`` or ``dtype="float64"``
    layers): in float32 round-off alone gives errors around 1e-3. The model runs with
    ``training=False`` (no dropout); weights are restored afterwards.

    Args:
        model: a built ``keras.Model``.
        x: a batch of inputs.
        y: the matching targets.
        loss: a loss name, ``keras.losses.Loss`` or callable ``(y_true, y_pred)``; default the
            model's compiled loss. Per-sample losses are averaged.
        epsilon: the finite-difference step.
        samples: number of weight entries checked.
        seed: which entries are drawn.
        tolerance: the largest relative error that passes.

    Returns:
        A :class:`GradientCheck`; its ``passed`` and ``max_relative_error`` give the verdict.

    Raises:
        NotImplementedError: on a backend other than TensorFlow or JAX.
    """
    if not isinstance(model, keras.Model):
        raise UsageError(f"model must be a keras.Model, received: {type(model).__name__}")
    check_number("epsilon", epsilon, minimum=0.0, exclusive_minimum=True)
    check_int("samples", samples, minimum=1)
    check_int("seed", seed, minimum=0)
    check_number("tolerance", tolerance, minimum=0.0)
    variables = model.trainable_variables
    if not variables:
        raise UsageError(f"model must have trainable weights, received: {model.name} with none")
    loss = _loss_function(model, loss)
    dtype = model.inputs[0].dtype if getattr(model, "inputs", None) else keras.config.floatx()
    x = keras.ops.convert_to_tensor(np.asarray(x), dtype=dtype)
    y = keras.ops.convert_to_tensor(np.asarray(y))
    analytic = _analytic_gradients(model, x, y, loss)

    sizes = np.array([int(np.prod(v.shape)) for v in variables])
    rng = np.random.default_rng(seed)
    picks = rng.choice(int(sizes.sum()), size=min(samples, int(sizes.sum())), replace=False)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    rows = []
    for pick in np.sort(picks):
        which = int(np.searchsorted(offsets, pick, side="right") - 1)
        variable, flat = variables[which], int(pick - offsets[which])
        original = np.array(keras.ops.convert_to_numpy(variable))
        values = []
        try:
            for sign in (1.0, -1.0):
                moved = original.copy().reshape(-1)
                moved[flat] += sign * epsilon
                variable.assign(moved.reshape(original.shape))
                values.append(float(keras.ops.convert_to_numpy(
                    loss(y, model(x, training=False)))))
        finally:
            variable.assign(original)
        numeric = (values[0] - values[1]) / (2 * epsilon)
        exact = float(analytic[which].reshape(-1)[flat])
        scale = max(abs(exact), abs(numeric))
        error = abs(exact - numeric) / scale if scale > 1e-8 else abs(exact - numeric)
        index = np.unravel_index(flat, original.shape) if original.shape else ()
        rows.append({"variable": variable.path, "index": tuple(int(i) for i in index),
                     "analytic": exact, "numeric": numeric, "relative_error": error})
    return GradientCheck(pd.DataFrame(rows), float(epsilon), float(tolerance))


# --- where the model looked --------------------------------------------------------------------

def explain(model, image, class_index: int | None = None, *, method: str = "grad_cam",
            max_side: int | None = 512) -> Explanation:
    """Where the model looked in one image: ``.plot()`` shows the photo beside it.

    Args:
        model: a run directory, a ``.keras`` file, a ``keras.Model`` or an
            :class:`~workbench.explain.Explainer` (reused: no reloading).
        image: a path or a uint8 (H, W, 3) array (or anything ``images.decode`` reads).
        class_index: the class to explain; None for the predicted one.
        method: ``"grad_cam"`` (:func:`grad_cam`) or ``"occlusion"`` (:func:`occlusion`).
        max_side: draw at most this many pixels a side; None for the image's own size.

    Returns:
        An :class:`~workbench.explain.Explanation` (map, class, probability).
    """
    explainer = model if isinstance(model, Explainer) else Explainer.load(model)
    return explainer.explain(image, class_index, method=method, max_side=max_side)


@dataclasses.dataclass
class ExplainedImages:
    """Several images, each with where the model looked; ``plot()`` tiles them.

    Attributes:
        explanations: one :class:`~workbench.explain.Explanation` per image.
        titles: one caption per image.
        title: the figure's title.
        figure_: the ``Figure`` last drawn by :meth:`plot` (None before).
        ax_: its axes, one per tile.
    """

    explanations: list
    titles: list
    title: str = ""
    figure_: object = dataclasses.field(default=None, init=False, repr=False, compare=False)
    ax_: object = dataclasses.field(default=None, init=False, repr=False, compare=False)

    def plot(self, *, columns: int = 8, alpha: float = 0.5, figure=None):
        """Each photo with its map blended in (into ``figure``, an empty Figure or SubFigure,
        or a new one), keeping ``figure_`` and ``ax_``; returns the ``Figure``."""
        figure = plots.image_grid([item.overlay(alpha=alpha) for item in self.explanations],
                                  titles=self.titles, columns=min(columns, len(self.titles)),
                                  size=1.6, title=self.title or None, figure=figure)
        self.figure_, self.ax_ = figure, np.array(figure.axes)
        return figure


def explain_worst(report, run_dir, *, count: int = 16, model: str = "best",
                  method: str = "grad_cam") -> ExplainedImages:
    """The worst predictions of an evaluation, each with the map of the class it predicted.

    Args:
        report: a ``workbench.evaluation.EvaluationReport`` of ``run_dir`` with its images
            (what ``evaluate(run_dir)`` returns).
        run_dir: the run it evaluated.
        count: how many of the worst predictions.
        model: ``"best"`` or ``"final"``: the model the report evaluated.
        method: ``"grad_cam"`` or ``"occlusion"``.

    Returns:
        :class:`ExplainedImages` titled true → predicted, p(true), as ``report.plot_worst``.
    """
    check_int("count", count, minimum=1)
    check_choice("method", method, METHODS)
    images = getattr(report, "images", None)
    if images is None or not hasattr(report, "worst"):
        raise UsageError(f"report must be an EvaluationReport with its images (evaluate("
                         f"run_dir)), received: {type(report).__name__}")
    explainer = Explainer.load(run_dir, model=model)
    worst = report.worst(count)
    index = {label: i for i, label in enumerate(explainer.labels)}
    explanations = explainer.explain_batch(
        np.stack([images[row.index] for row in worst.itertuples()]),
        [index[row.predicted] for row in worst.itertuples()], method=method)
    titles = [f"{row.true} → {row.predicted}\np={row.probability_true:.2f}"
              for row in worst.itertuples()]
    name = "Grad-CAM" if method == "grad_cam" else "occlusion"
    return ExplainedImages(explanations, titles,
                           f"Worst predictions: true → predicted, p(true); {name} of the "
                           f"predicted class")
