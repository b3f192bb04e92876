"""Where a classifier looked: Grad-CAM and occlusion-sensitivity maps of one image.

:func:`grad_cam` weighs the last convolutional feature map by the gradient of the class score
(the logit before the softmax) averaged over each channel, keeps the positive part and scales
it to [0, 1] (Selvaraju et al., 2017). :func:`occlusion` slides a patch of the image's mean
colour over the model's input and records how much the class probability drops (Zeiler and
Fergus, 2014): slower (hundreds of forward passes), but it needs no gradients and no knowledge
of the architecture, so it serves as a check of the first.

Both return a float map in [0, 1] at the image's own size after EXIF orientation, aligned with
the photo whatever the run's ``resize_mode`` (with ``crop``, what the model never saw is 0).
The image is decoded and resized exactly as :class:`workbench.deploy.predict.Classifier`
does (``images.decode`` and ``images.resize`` with the run's size and resize mode, as
``images.load_array`` composes them).

The feature map is found by walking the model, nested models included (the classifier's
``backbone``, and the ``keras.applications`` network inside it): the output of its last layer
that produces a 4-D map after the first 2-D convolution, pooling layers skipped. The model is
then traced anew, flattened, into two models sharing its weights: image to feature map, and
feature map to class scores, so the gradient is one call on either backend (TensorFlow's
``GradientTape`` or ``jax.grad``).

An :class:`Explainer` holds those models for repeated use (a web service, a gallery);
:class:`Explanation` is one image's answer, with ``plot()`` and ``png()``.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import keras
import numpy as np
from PIL import Image

from workbench import plots
from workbench._checks import UsageError, check_choice, check_int, check_number
from workbench._compat import is_graph_model, producing_operation, run_through_graph
from workbench._io import atomic_path
from workbench.calibration import apply_temperature
from workbench.data.images import DEFAULT_MAX_PIXELS, RESIZE_MODES, decode, resize
from workbench.models import load_model
from workbench.runs import MODELS, RunDir

METHODS = ("grad_cam", "occlusion")
_POOLING = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)


# --- walking the model -------------------------------------------------------------------------

def all_layers(model: keras.Model) -> list:
    """Every layer of ``model`` and of the models nested in it, depth first, in order."""
    found = []
    for layer in model.layers:
        found.append(layer)
        if isinstance(layer, keras.Model):
            found.extend(all_layers(layer))
    return found


def _output_rank(layer) -> int | None:
    try:
        return len(layer.output.shape)
    except (AttributeError, ValueError):  # a layer called more than once has no one output
        return None


def _operations(model: keras.Model) -> list:
    """The layers and operations (``keras.ops`` calls such as a residual add) of ``model`` and
    of the models nested in it, in the order they run."""
    found = []
    for operation in getattr(model, "operations", None) or model.layers:
        found.append(operation)
        if isinstance(operation, keras.Model):
            found.extend(_operations(operation))
    return found


def last_feature_layer(model: keras.Model) -> str:
    """The name of the layer whose output is the model's last convolutional feature map.

    The last layer or operation (nested models included) with a 4-D output at or after the
    first 2-D convolution, pooling layers left out: ``out_relu`` of MobileNetV2,
    ``conv5_block3_out`` of ResNet50, ``block5_conv3`` of VGG16, the last residual add of
    ConvNeXt, ``relu3`` of the small CIFAR network.

    Raises:
        ValueError: when the model has no 2-D convolution.
    """
    found, convolved = None, False
    for layer in _operations(model):
        if isinstance(layer, keras.Model):
            continue
        convolved = convolved or len(getattr(getattr(layer, "kernel", None), "shape", ())) == 4
        if convolved and not isinstance(layer, _POOLING) and _output_rank(layer) == 4:
            found = layer.name
    if found is None:
        raise UsageError(f"model must have a 2-D convolution, received: {model.name} without one")
    return found


def _output_layer(model: keras.Model):
    """The layer that computes the model's output, looking inside a nested model."""
    if isinstance(model, keras.Sequential):
        layer = model.layers[-1]
    else:
        layer = producing_operation(model.outputs[0])
    return _output_layer(layer) if isinstance(layer, keras.Model) else layer


class _Logits(keras.layers.Layer):
    """The scores of a softmax ``Dense`` layer before its softmax, with its weights."""

    def __init__(self, dense, **kwargs):
        super().__init__(dtype=dense.dtype_policy, **kwargs)
        self.dense = dense

    def call(self, x):
        x = keras.ops.matmul(keras.ops.cast(x, self.dense.compute_dtype), self.dense.kernel)
        return x + self.dense.bias if self.dense.use_bias else x


def _is_softmax(function) -> bool:
    return function is keras.activations.softmax


def _trace(model: keras.Model, inputs, visit):
    """Calls ``model``'s layers anew on ``inputs``, nested models flattened into their layers;
    ``visit(layer, args, kwargs)`` makes each call (and may capture or replace it)."""
    def call(layer, args, kwargs):
        if isinstance(layer, keras.Model):
            return _trace(layer, args[0], visit)
        return visit(layer, args, kwargs)

    if isinstance(model, keras.Sequential):
        x = inputs
        for layer in model.layers:
            x = call(layer, (x,), {})
        return x
    if not is_graph_model(model):
        raise UsageError(f"model must be a functional or Sequential Keras model, received: "
                         f"{type(model).__name__} (a subclassed model cannot be looked into)")
    # Functional's own graph walk (what Model.call runs), with our call at each layer
    return run_through_graph(model, inputs, lambda op: (
        lambda *args, **kwargs: call(op, args, kwargs)))


def split_at(model: keras.Model, layer: str) -> tuple[keras.Model, keras.Model]:
    """Two models sharing ``model``'s weights: image to ``layer``'s output, and that output to
    the class scores (the logits when the model ends in a softmax).

    Args:
        model: a functional or Sequential ``keras.Model`` with one image input.
        layer: the name of a layer with a 4-D output (nested models included).

    Returns:
        ``(features, head)``.

    Raises:
        ValueError: when ``layer`` is not in the model, or the scores depend on more than it.
    """
    names = {found.name for found in _operations(model)}
    if layer not in names:
        raise UsageError(f"layer must name a layer of {model.name}, received: {layer!r}")
    last = _output_layer(model)
    image = keras.Input(model.inputs[0].shape[1:], dtype=model.inputs[0].dtype)
    captured = {}

    def capture(found, args, kwargs):
        output = found(*args, **kwargs)
        if found.name == layer:
            captured["features"] = output
        return output

    _trace(model, image, capture)
    features = captured["features"]
    feature_input = keras.Input(features.shape[1:], dtype=features.dtype)

    def replace(found, args, kwargs):
        if found.name == layer:
            return feature_input
        if found is last and _is_softmax(getattr(found, "activation", None)):
            if isinstance(found, keras.layers.Dense):
                return _Logits(found)(*args)
            return args[0]  # an Activation("softmax") layer: its input is the logits
        if found is last and isinstance(found, keras.layers.Softmax):
            return args[0]
        return found(*args, **kwargs)

    scores = _trace(model, keras.Input(model.inputs[0].shape[1:], dtype=model.inputs[0].dtype),
                    replace)
    try:
        head = keras.Model(feature_input, scores, name=f"{model.name}_head")
    except ValueError as error:  # a path around the feature map (e.g. a skip connection)
        raise UsageError(f"layer must be a layer every path to the output goes through, "
                         f"received: {layer!r} ({error})") from error
    return keras.Model(image, features, name=f"{model.name}_features"), head


def _gradients(features_model, head, pixels, classes):
    """The feature maps of a batch, and the gradients of each image's chosen class score with
    respect to them, as float32 arrays."""
    backend = keras.backend.backend()
    x = keras.ops.convert_to_tensor(pixels, dtype="float32")
    features = features_model(x, training=False)
    rows = np.arange(len(pixels))
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(features)
            scores = head(features, training=False)
            # images are independent in inference mode: one gradient of the sum is all of them
            chosen = tf.reduce_sum(tf.gather_nd(scores, np.stack([rows, classes], axis=1)))
        gradients = tape.gradient(chosen, features)
    elif backend == "jax":
        import jax

        trainable = [v.value for v in head.trainable_variables]
        frozen = [v.value for v in head.non_trainable_variables]

        def chosen(maps):
            scores, _ = head.stateless_call(trainable, frozen, maps, training=False)
            return scores[rows, classes].sum()

        gradients = jax.grad(chosen)(features)
    else:
        raise NotImplementedError(f"grad_cam supports the tensorflow and jax backends, "
                                  f"received: KERAS_BACKEND={backend!r}")
    as_array = keras.ops.convert_to_numpy
    return (np.asarray(as_array(features), np.float32),
            np.asarray(as_array(gradients), np.float32))


# --- maps --------------------------------------------------------------------------------------

def _normalized(maps: np.ndarray) -> np.ndarray:
    """Each map's positive part over its maximum; an all-zero map stays zero."""
    maps = np.maximum(maps, 0.0)
    peak = maps.reshape(len(maps), -1).max(axis=1)
    return np.where(peak[:, None, None] > 0,
                    maps / np.where(peak > 0, peak, 1.0)[:, None, None], 0.0).astype(np.float32)


def _resized(heatmap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A float map resized bilinearly to ``(height, width)``."""
    if heatmap.shape == tuple(size):
        return heatmap.astype(np.float32)
    image = Image.fromarray(np.asarray(heatmap, np.float32), mode="F")
    return np.asarray(image.resize((size[1], size[0]), Image.BILINEAR), np.float32)


def to_image_frame(heatmap, size: tuple[int, int], *, resize_mode: str = "squash") -> np.ndarray:
    """A map over the model's square input, carried back onto the image it was made from.

    Undoes ``images.resize``: with ``squash`` the map is stretched back, with ``crop`` it
    covers the centre the crop kept (0 elsewhere: the model never saw it), with ``pad`` the
    padding is cut off.

    Args:
        heatmap: an (S, S) map over the model's input.
        size: the image's ``(height, width)`` (or any size of the same shape to draw it at).
        resize_mode: how the image was resized to the input (the run's ``resize_mode``).

    Returns:
        A float32 ``(height, width)`` map.
    """
    check_choice("resize_mode", resize_mode, RESIZE_MODES)
    heatmap = np.asarray(heatmap, np.float32)
    height, width = (check_int("size", side, minimum=1) for side in size)
    side_y, side_x = heatmap.shape
    if resize_mode == "squash" or (height, width) == heatmap.shape:
        return _resized(heatmap, (height, width))
    # input = scale * image + offset on each axis, one scale: fit the shorter side (crop) or the
    # longer (pad), the image centred; the same centring as ImageOps.fit and ImageOps.pad
    scale = (max if resize_mode == "crop" else min)(side_x / width, side_y / height)
    offset_x, offset_y = (side_x - width * scale) / 2, (side_y - height * scale) / 2
    image = Image.fromarray(heatmap, mode="F")
    carried = image.transform((width, height), Image.AFFINE,
                              (scale, 0, offset_x, 0, scale, offset_y),
                              resample=Image.BILINEAR, fillcolor=0.0)
    return np.asarray(carried, np.float32)


def colorize(heatmap, *, cmap: str = "jet") -> np.ndarray:
    """A map in [0, 1] as a uint8 RGB image in a matplotlib colour map."""
    from matplotlib import colormaps

    colours = colormaps[cmap](np.clip(np.asarray(heatmap, np.float64), 0.0, 1.0))[..., :3]
    return np.round(colours * 255).astype(np.uint8)


def overlay(image, heatmap, *, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """The photo with its coloured map blended in: ``(1 - alpha * m) * photo + alpha * m *
    colour``, so where the map is 0 the photo shows unchanged.

    Args:
        image: a uint8 (H, W, 3) photo.
        heatmap: an (H, W) map in [0, 1].
        alpha: the map's opacity where it is 1.
        cmap: the colour map.

    Returns:
        A uint8 (H, W, 3) image.
    """
    check_number("alpha", alpha, minimum=0.0, maximum=1.0)
    image, heatmap = np.asarray(image), np.asarray(heatmap, np.float32)
    if image.shape[:2] != heatmap.shape:
        raise UsageError(f"heatmap must have the image's size {image.shape[:2]}, received "
                         f"shape: {heatmap.shape}")
    weight = alpha * np.clip(heatmap, 0.0, 1.0)[..., None]
    blended = (1 - weight) * image + weight * colorize(heatmap, cmap=cmap)
    return np.round(blended).astype(np.uint8)


# --- the explainer -----------------------------------------------------------------------------

@dataclasses.dataclass
class Explanation:
    """Where the model looked in one image, for one class.

    Attributes:
        image: the photo, uint8 (H, W, 3), at the map's size.
        heatmap: float32 (H, W) in [0, 1]: the image's own size after EXIF orientation (or
            that shape scaled down to ``max_side``).
        class_index: the class explained.
        label: its name.
        probability: the model's probability of it (calibrated by the run's temperature).
        method: ``"grad_cam"`` or ``"occlusion"``.
        figure_: the ``Figure`` last drawn by :meth:`plot` (None before).
        ax_: its axes.
    """

    image: np.ndarray
    heatmap: np.ndarray
    class_index: int
    label: str
    probability: float
    method: str
    figure_: object = dataclasses.field(default=None, init=False, repr=False, compare=False)
    ax_: object = dataclasses.field(default=None, init=False, repr=False, compare=False)

    @property
    def title(self) -> str:
        return f"{self.label} {self.probability:.1%}"

    def overlay(self, *, alpha: float = 0.5) -> np.ndarray:
        """The photo with the map blended in (see :func:`overlay`)."""
        return overlay(self.image, self.heatmap, alpha=alpha)

    def png(self, *, max_side: int = 224) -> bytes:
        """The coloured map (no photo) as PNG bytes, at most ``max_side`` pixels a side."""
        check_int("max_side", max_side, minimum=1)
        height, width = _fitted(self.heatmap.shape, max_side)
        buffer = io.BytesIO()
        Image.fromarray(colorize(_resized(self.heatmap, (height, width)))).save(
            buffer, format="PNG", optimize=True)
        return buffer.getvalue()

    def save(self, path: str | Path, *, beside: bool = False, dpi: int = 100) -> Path:
        """Writes :meth:`plot`'s figure as a PNG (the photo with its map, titled with the
        class and probability; ``beside`` adds the photo alone), atomically; returns the
        path."""
        path = Path(path)
        figure = self.plot(beside=beside)
        with atomic_path(path) as temporary:
            figure.savefig(temporary, dpi=check_int("dpi", dpi, minimum=1), format="png")
        return path

    def plot(self, ax=None, *, beside: bool = True, alpha: float = 0.5, figure=None):
        """The photo beside the photo with its map (or only the latter on ``ax`` or with
        ``beside=False``), titled with the class and its probability, into ``figure`` (an
        empty Figure or SubFigure) when given; keeps ``figure_`` and ``ax_``; returns the
        ``Figure``."""
        figure = plots.explanation(self.image, self.overlay(alpha=alpha),
                                   title=f"{self.title} ({_METHOD_NAMES[self.method]})",
                                   beside=beside and ax is None, ax=ax, figure=figure)
        self.figure_, self.ax_ = figure, ax if ax is not None else figure.axes
        return figure


_METHOD_NAMES = {"grad_cam": "Grad-CAM", "occlusion": "occlusion"}


def _fitted(shape, max_side: int | None) -> tuple[int, int]:
    """``(height, width)`` scaled down to fit ``max_side``, the aspect kept."""
    height, width = int(shape[0]), int(shape[1])
    if max_side is None or max(height, width) <= max_side:
        return height, width
    scale = max_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


class Explainer:
    """A Keras classifier ready to say where it looked, image after image.

    Args:
        model: a functional or Sequential ``keras.Model`` taking raw 0-255 pixels (a
            workbench classifier; any ``keras.applications`` backbone, the small networks or a
            cut source model inside it).
        labels: the class names (default ``"0"``, ``"1"``, ...).
        resize_mode: how images are resized to the model's input (the run's).
        layer: the feature map's layer (default :func:`last_feature_layer`).
        temperature: calibrates the probability an :class:`Explanation` reports (the run's,
            ``workbench.calibration``); the maps use the network's own scores.

    Attributes:
        layer: the feature map's layer name.
        image_size: the side of the model's square input.
    """

    def __init__(self, model: keras.Model, *, labels=None, resize_mode: str = "squash",
                 layer: str | None = None, temperature: float = 1.0):
        if not isinstance(model, keras.Model):
            raise UsageError(f"model must be a keras.Model, a run directory or a .keras file, "
                             f"received: {type(model).__name__}")
        height, width = model.inputs[0].shape[1:3]
        if height is None or height != width:
            raise UsageError(f"model must take square images of a fixed size, received: input "
                             f"{height}x{width}")
        self.model, self.image_size = model, int(height)
        self.resize_mode = check_choice("resize_mode", resize_mode, RESIZE_MODES)
        classes = int(model.outputs[0].shape[-1])
        self.labels = [str(i) for i in range(classes)] if labels is None else \
            [str(label) for label in labels]
        if len(self.labels) != classes:
            raise UsageError(f"labels must name each of the model's {classes} outputs, "
                             f"received: {len(self.labels)} labels")
        self.temperature = check_number("temperature", temperature, minimum=0.0,
                                        exclusive_minimum=True)
        self.layer = last_feature_layer(model) if layer is None else layer
        self._features, self._head = split_at(model, self.layer)

    @classmethod
    def load(cls, source, *, model: str = "best", layer: str | None = None) -> Explainer:
        """An explainer of a run directory (its labels, size, resize mode and calibration) or
        a ``.keras`` file, or of a ``keras.Model`` as it is."""
        if isinstance(source, keras.Model):
            return cls(source, layer=layer)
        if not isinstance(source, (str, Path)):
            raise UsageError(f"model must be a keras.Model, a run directory or a .keras file, "
                             f"received: {type(source).__name__}")
        check_choice("model", model, MODELS)
        path = Path(source)
        if path.is_dir():
            run = RunDir(path)
            return cls(load_model(run.model_path(model)), labels=run.classes,
                       resize_mode=run.resize_mode, layer=layer,
                       temperature=run.temperature(model))
        return cls(load_model(path), layer=layer)

    def pixels(self, image, *, max_pixels: int = DEFAULT_MAX_PIXELS):
        """The model's input for ``image`` and the photo it came from.

        Returns:
            ``(pixels, photo, (height, width))``: the uint8 input, the decoded photo (a JPEG
            possibly at a reduced scale) and the photo's full size after EXIF orientation.
        """
        side = self.image_size
        if isinstance(image, np.ndarray) and image.dtype == np.uint8 and \
                image.shape == (side, side, 3):  # what the Classifier passes on as it is
            return image, image, (side, side)
        decoded = decode(image, max_pixels=max_pixels, draft_size=side,
                         resize_mode=self.resize_mode)
        pixels = np.asarray(resize(decoded.image, side, self.resize_mode, box=decoded.box),
                            np.uint8)
        return pixels, np.asarray(decoded.image, np.uint8), (decoded.height, decoded.width)

    def probabilities(self, pixels) -> np.ndarray:
        """The model's outputs for a uint8 batch at its input size."""
        return np.asarray(self.model.predict_on_batch(np.asarray(pixels, np.float32)))

    def maps(self, pixels, *, method: str = "grad_cam", class_index=None, **options):
        """Maps of a batch over the model's input: the core of :meth:`explain`.

        Args:
            pixels: uint8 (N, S, S, 3) at the model's input size.
            method: ``"grad_cam"`` or ``"occlusion"``.
            class_index: one class for all, one per image, or None for each image's predicted
                class.
            **options: :func:`occlusion`'s ``patch``, ``stride`` and ``batch_size``.

        Returns:
            ``(maps, classes, probabilities)``: float32 (N, S, S) in [0, 1], the class index
            of each map, and the model's (N, classes) probabilities.
        """
        check_choice("method", method, METHODS)
        pixels = np.asarray(pixels)
        side = self.image_size
        if pixels.ndim != 4 or pixels.shape[1:] != (side, side, 3):
            raise UsageError(f"pixels must have shape (N, {side}, {side}, 3), received shape: "
                             f"{pixels.shape}")
        probabilities = self.probabilities(pixels)
        classes = self._classes(class_index, probabilities)
        if method == "grad_cam":
            if options:
                raise UsageError(f"options apply to occlusion, received: {sorted(options)} "
                                 f"for grad_cam")
            features, gradients = _gradients(self._features, self._head, pixels, classes)
            weights = gradients.mean(axis=(1, 2), keepdims=True)  # one weight per channel
            cams = _normalized((weights * features).sum(axis=-1))
            maps = np.stack([_resized(cam, (side, side)) for cam in cams])
        else:
            maps = self._occlusion(pixels, classes, probabilities, **options)
        return _normalized(maps), classes, probabilities

    def _classes(self, class_index, probabilities) -> np.ndarray:
        count, classes = probabilities.shape
        if class_index is None:
            return probabilities.argmax(axis=1)
        values = np.asarray(class_index).reshape(-1).tolist()  # Python numbers, for the checks
        for value in values:
            check_int("class_index", value, minimum=0, maximum=classes - 1)
        if len(values) not in (1, count):
            raise UsageError(f"class_index must be one class or one per image ({count}), "
                             f"received: {len(values)}")
        return np.broadcast_to(np.asarray(values, np.int64), (count,))

    def _occlusion(self, pixels, classes, probabilities, *, patch: int | None = None,
                   stride: int | None = None, batch_size: int = 256) -> np.ndarray:
        side = self.image_size
        patch = check_int("patch", patch, minimum=1, maximum=side) if patch is not None else \
            max(2, side // 6)
        stride = check_int("stride", stride, minimum=1) if stride is not None else \
            max(1, patch // 4)
        check_int("batch_size", batch_size, minimum=1)
        starts = list(range(0, side - patch + 1, stride))
        if starts[-1] != side - patch:  # the last row and column of patches reach the edge
            starts.append(side - patch)
        corners = [(top, left) for top in starts for left in starts]
        maps = np.zeros((len(pixels), side, side), np.float32)
        for index, image in enumerate(pixels):
            fill = image.reshape(-1, 3).mean(axis=0)
            drops = np.zeros((side, side), np.float32)
            covered = np.zeros((side, side), np.float32)
            for first in range(0, len(corners), batch_size):
                chunk = corners[first:first + batch_size]
                occluded = np.repeat(image[None].astype(np.float32), len(chunk), axis=0)
                for row, (top, left) in enumerate(chunk):
                    occluded[row, top:top + patch, left:left + patch] = fill
                scores = self.probabilities(occluded)[:, classes[index]]
                for (top, left), score in zip(chunk, scores):
                    drops[top:top + patch, left:left + patch] += \
                        probabilities[index, classes[index]] - score
                    covered[top:top + patch, left:left + patch] += 1
            maps[index] = drops / np.maximum(covered, 1)
        return maps

    def explain(self, image, class_index: int | None = None, *, method: str = "grad_cam",
                max_side: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                **options) -> Explanation:
        """Where the model looked in one image.

        Args:
            image: a path, ``bytes``, a file object, a PIL image or a uint8 (H, W, 3) array.
            class_index: the class to explain; None for the predicted one.
            method: ``"grad_cam"`` or ``"occlusion"``.
            max_side: draw the map at most this many pixels a side (the aspect kept); None for
                the image's own size.
            max_pixels: larger images are refused before decoding.
            **options: for occlusion: ``patch``, ``stride``, ``batch_size``.

        Returns:
            An :class:`Explanation`.

        Raises:
            workbench.data.images.ImageRejected: ``image`` is not a usable image.
        """
        if max_side is not None:
            check_int("max_side", max_side, minimum=1)
        pixels, photo, size = self.pixels(image, max_pixels=max_pixels)
        maps, classes, probabilities = self.maps(pixels[None], method=method,
                                                 class_index=class_index, **options)
        return self._explanation(photo, _fitted(size, max_side), maps[0], classes[0],
                                 probabilities[0], method)

    def explain_batch(self, pixels, class_index=None, *, method: str = "grad_cam",
                      **options) -> list[Explanation]:
        """Where the model looked in each image of a batch at its input size, in one pass
        (what :func:`workbench.inspect.explain_worst` draws): the same maps as :meth:`explain`
        of each image, in a fraction of the time.

        Args:
            pixels: uint8 (N, S, S, 3) at the model's input size (as an evaluation keeps its
                images).
            class_index: one class for all, one per image, or None for each image's predicted
                class.
            method: ``"grad_cam"`` or ``"occlusion"``.
            **options: for occlusion: ``patch``, ``stride``, ``batch_size``.

        Returns:
            One :class:`Explanation` per image, at the input size.
        """
        maps, classes, probabilities = self.maps(pixels, method=method,
                                                 class_index=class_index, **options)
        side = (self.image_size, self.image_size)
        return [self._explanation(photo, side, heatmap, chosen, row, method) for
                photo, heatmap, chosen, row in zip(np.asarray(pixels, np.uint8), maps, classes,
                                                   probabilities)]

    def _explanation(self, photo, size: tuple[int, int], heatmap, chosen, probabilities,
                     method: str) -> Explanation:
        """One image's :class:`Explanation` drawn at ``size``, from its map over the model's
        input and its row of probabilities."""
        heatmap = _normalized(to_image_frame(heatmap, size,
                                             resize_mode=self.resize_mode)[None])[0]
        if photo.shape[:2] != size:
            photo = np.asarray(Image.fromarray(photo).resize((size[1], size[0]), Image.BILINEAR))
        chosen = int(chosen)
        probability = apply_temperature(probabilities[None], self.temperature)[0, chosen]
        return Explanation(photo, heatmap, chosen, self.labels[chosen], float(probability),
                           method)


def grad_cam(model, image, class_index: int | None = None, layer: str | None = None) -> np.ndarray:
    """The Grad-CAM map of one image: where the evidence for a class lies.

    Args:
        model: a run directory (its best model, labels, size and resize mode), a ``.keras``
            file or a ``keras.Model`` taking raw 0-255 pixels (images squashed to its input).
        image: a path or a uint8 (H, W, 3) array (or anything ``images.decode`` reads).
        class_index: the class; None for the predicted class.
        layer: the feature map's layer (default: the last convolutional one, found by walking
            the model, nested backbones included).

    Returns:
        A float32 (H, W) map in [0, 1] at the image's own size after EXIF orientation.
    """
    return Explainer.load(model, layer=layer).explain(image, class_index).heatmap


def occlusion(model, image, class_index: int | None = None, *, patch: int | None = None,
              stride: int | None = None) -> np.ndarray:
    """The occlusion-sensitivity map of one image: how much hiding each place lowers the class
    probability.

    A patch of the image's mean colour slides over the model's input; each pixel's value is the
    mean drop of the class probability over the patches covering it, its positive part scaled
    to [0, 1].

    Args:
        model: as :func:`grad_cam`.
        image: as :func:`grad_cam`.
        class_index: the class; None for the predicted class.
        patch: the patch's side in input pixels (default a sixth of the input, at least 2).
        stride: its step (default a quarter of the patch, at least 1).

    Returns:
        A float32 (H, W) map in [0, 1] at the image's own size after EXIF orientation.
    """
    return Explainer.load(model).explain(image, class_index, method="occlusion", patch=patch,
                                         stride=stride).heatmap
