"""Backbones, classifier heads, and cutting a saved model at a layer.

Every backbone takes raw pixels (0-255, any numeric dtype) and carries its own preprocessing as
its first layer, so training, evaluation, prediction and export can never disagree about it. A
classifier is ``Input -> [augmentation] -> backbone -> head_dropout -> head``; the new layers are
named ``head*`` so learning-rate rules such as ``{"head*": 10}`` find them.
"""

from __future__ import annotations

import dataclasses
import re
import zipfile
from pathlib import Path

import keras
from keras import layers, ops

from workbench._checks import (MissingPath, UsageError, check_choice, check_int, check_number,
                               deprecated, one_line)
from workbench._compat import flatten_layers
from workbench.backbones import (  # the table of names, without Keras; models.BACKBONES too
    APPLICATIONS, BACKBONES, NATURAL_SIZES, SMALL_NETWORKS, check_backbone)
from workbench.data.augment import AUGMENT_DRAWS, Augment

PREPROCESS_MODES = ("scale", "tf", "caffe", "torch", "none")
DEFAULT_BACKBONE, DEFAULT_WEIGHTS = "mobilenet_v2", "imagenet"
START_KEYWORDS = ("backbone", "weights", "source", "cut_at")  # StartingPoint's fields
_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
_TORCH_MEAN, _TORCH_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class StartingPoint:
    """What a classifier starts from: a named backbone with its weights, or a saved model cut
    at a layer. ``finetune``, ``range_test``, ``compare_recipes`` and ``workbench train`` take
    one as ``start=`` (or its text, read by :meth:`parse`).

    It checks itself when made: a ``source`` together with a backbone or weights other than
    the defaults is refused (one of them would be silently ignored), and so is ``cut_at``
    without a ``source``.

    Attributes:
        backbone: one of ``BACKBONES`` (default ``"mobilenet_v2"``), which brings its family's
            preprocessing; unused with a ``source``.
        weights: ``"imagenet"`` (the default, downloaded and cached by Keras), a local weights
            file (for machines without internet), or None for random initialisation.
        source: a saved ``.keras`` model to transfer from, instead of a backbone.
        cut_at: the layer of ``source`` whose output becomes the features (default: the output
            of its nested backbone, else the input of its last layer; see :func:`load_source`).

    Raises:
        UsageError: for an unknown backbone, weights that cannot load, a missing ``source``
            file (:class:`~workbench._checks.MissingPath`), or the combinations above.
    """

    backbone: str = DEFAULT_BACKBONE
    weights: str | Path | None = DEFAULT_WEIGHTS
    source: str | Path | None = None
    cut_at: str | None = None

    def __post_init__(self):
        if self.cut_at is not None and (not isinstance(self.cut_at, str) or not self.cut_at):
            raise UsageError(f"cut_at must be a layer name, received: {self.cut_at!r}")
        if self.source is None:
            check_backbone(self.backbone)
            check_weights(self.weights)
            if self.cut_at is not None:
                raise UsageError(f"cut_at needs a source model to cut, received: "
                                 f"cut_at={self.cut_at!r} and no source")
            return
        if not isinstance(self.source, (str, Path)) or not Path(self.source).is_file():
            raise MissingPath(f"source must be a saved .keras model, received: "
                              f"{str(self.source)!r}")
        beside = [f"{name}={_shown(value)!r}" for name, value, default in (
            ("backbone", self.backbone, DEFAULT_BACKBONE),
            ("weights", self.weights, DEFAULT_WEIGHTS)) if value != default]
        if beside:
            raise UsageError(f"give either a backbone (with weights) or a source model, not "
                             f"both; received: {', '.join(beside)} and "
                             f"source={str(self.source)!r}")

    @classmethod
    def parse(cls, value: StartingPoint | str | Path | None) -> StartingPoint:
        """The starting point a short value means: a ``StartingPoint`` as it is; None the
        default; a path, a text ending in ``.keras`` or naming an existing file a source
        model; any other text a backbone name (with ImageNet weights).

        Raises:
            UsageError: for anything else, or what the starting point itself refuses.
        """
        if isinstance(value, StartingPoint):
            return value
        if value is None:
            return cls()
        if isinstance(value, Path) or (isinstance(value, str) and (
                value.endswith(".keras") or Path(value).is_file())):
            return cls(source=value)
        if isinstance(value, str):
            return cls(backbone=value)
        raise UsageError(f"start must be a StartingPoint, a backbone name or a saved .keras "
                         f"model, received: {value!r}")

    @classmethod
    def from_arguments(cls, start, old: dict, *, caller: str) -> StartingPoint:
        """The starting point of a call that takes ``start=`` and, for one release, the
        keywords ``backbone``, ``weights``, ``source`` and ``cut_at`` (each still working,
        with a ``DeprecationWarning``; a conflicting combination is refused, never ignored).

        Args:
            start: the call's ``start`` (see :meth:`parse`).
            old: the other keyword arguments the call received (its ``**deprecated``).
            caller: the function's name, for the messages.

        Raises:
            TypeError: for a keyword that is none of these, as Python does.
            UsageError: for ``start`` together with the old keywords, or a bad combination.
        """
        old, unknown = dict(old), sorted(set(old) - set(START_KEYWORDS))
        if unknown:
            raise TypeError(f"{caller}() got an unexpected keyword argument {unknown[0]!r}")
        if not old:
            return cls.parse(start)
        deprecated(f"{caller}({'=..., '.join(old)}=...) is deprecated and will be removed in "
                   "the next release: use start=StartingPoint(...), or start='NAME' or "
                   "'MODEL.keras'")
        if start is not None:
            raise UsageError(f"give start or the deprecated {', '.join(old)}, not both; "
                             f"received: start={start!r} and {', '.join(old)}")
        if old.get("source") is not None and old.get("backbone", DEFAULT_BACKBONE) is None:
            del old["backbone"]  # the old way to say "no backbone" beside a source
        return cls(**old)

    def settings(self) -> dict:
        """What ``config.json`` records of it: ``backbone`` (None with a source), ``weights``
        and ``source`` (files as absolute paths) and ``cut_at``."""
        weights = self.weights
        return {"backbone": None if self.source else self.backbone,
                "weights": str(Path(weights).resolve()) if weights not in (None, "imagenet")
                else weights,
                "source": str(Path(self.source).resolve()) if self.source else None,
                "cut_at": self.cut_at}

    def image_size(self) -> int:
        """The side to train at when none is given (:func:`natural_image_size`)."""
        return natural_image_size(self.backbone, source=self.source)

    def fetch_weights(self, image_size: int) -> None:
        """Downloads the ImageNet weights now when they are needed (:func:`fetch_weights`)."""
        if self.source is None:
            fetch_weights(self.backbone, self.weights, input_shape=(image_size, image_size, 3))

    def features(self, image_size: int, *, pretrained: bool = True) -> keras.Model:
        """The feature extractor: the source model cut at ``cut_at``, or the backbone with its
        weights; with ``pretrained=False`` the same network with fresh random weights.

        Raises:
            UsageError: when a source model's input is not ``image_size`` square.
        """
        if self.source is None:
            return backbone(self.backbone, weights=self.weights if pretrained else None,
                            input_shape=(image_size, image_size, 3))
        features = load_source(self.source, cut_at=self.cut_at)
        if not pretrained:  # same architecture, fresh random weights
            features = keras.models.clone_model(features)
        if tuple(features.input_shape[1:3]) != (image_size, image_size):
            raise UsageError(f"image_size must match the source model's input "
                             f"{features.input_shape[1:3]}, received: {image_size}")
        return features


def _shown(value):
    return str(value) if isinstance(value, Path) else value  # 'x.h5', not PosixPath('x.h5')


@keras.saving.register_keras_serializable(package="workbench")
class Preprocess(layers.Layer):
    """Maps raw 0-255 pixels to what a backbone expects; part of the saved model.

    Args:
        mode: ``"scale"`` (to [0, 1]), ``"tf"`` (to [-1, 1]), ``"caffe"`` (RGB to BGR, minus the
            ImageNet mean), ``"torch"`` (to [0, 1], minus the ImageNet mean, divided by its
            standard deviation) or ``"none"`` (cast only).
    """

    def __init__(self, mode: str = "scale", **kwargs):
        super().__init__(**kwargs)
        self.mode = check_choice("mode", mode, PREPROCESS_MODES)

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        if self.mode == "scale":
            return x / 255.0
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "caffe":
            return ops.flip(x, axis=-1) - ops.convert_to_tensor(_CAFFE_BGR_MEAN, self.compute_dtype)
        if self.mode == "torch":
            mean = ops.convert_to_tensor(_TORCH_MEAN, self.compute_dtype)
            return (x / 255.0 - mean) / ops.convert_to_tensor(_TORCH_STD, self.compute_dtype)
        return x

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def backbone(name: str, *, weights: str | Path | None = None,
             input_shape: tuple[int, int, int] = (224, 224, 3)) -> keras.Model:
    """Builds a feature extractor: raw pixels in, one pooled feature vector per image out.

    Args:
        name: one of ``BACKBONES``: any keras.applications constructor by its snake-case name
            (``"mobilenet_v2"``, ``"efficientnet_b3"``, ``"resnet101v2"``, ``"convnext_small"``,
            ...; see :data:`FAMILIES`), which brings its family's preprocessing, or a small
            built-in network (``"lenet"``, ``"cifar_cnn"``) for pretraining a source model on
            the sample data.
        weights: ``"imagenet"`` (downloaded and cached by Keras), a path to a local weights file
            (for machines without internet), or ``None`` for random initialisation.
        input_shape: ``(height, width, channels)`` of the images.

    Returns:
        A ``keras.Model`` named ``"backbone"``.

    Raises:
        ValueError: for an unknown name, a missing weights file, or weights for a small network.
        WeightsUnavailable: when ImageNet weights cannot be downloaded, saying how to supply a
            file (a ``RuntimeError``).
    """
    check_backbone(name, argument="name")
    if len(input_shape) != 3:
        raise UsageError(f"input_shape must be (height, width, channels), "
                         f"received: {input_shape!r}")
    check_weights(weights)
    inputs = keras.Input(input_shape, name="image")
    if name in SMALL_NETWORKS:
        if weights is not None:
            raise UsageError(f"{name} has no pretrained weights: pretrain it on the sample data "
                             f"and pass the saved model as a source, received weights={weights!r}")
        features = _small_network(name, inputs)
    else:
        constructor, mode, kwargs = APPLICATIONS[name]
        network = _load_application(constructor, weights, input_shape, kwargs)
        features = network(Preprocess(mode, name="preprocess")(inputs))
    return keras.Model(inputs, features, name="backbone")


def check_weights(weights) -> None:
    """Fails fast on a weights setting that cannot load: ``"imagenet"``, None or a file.

    Raises:
        ValueError: naming the value when it is none of these.
    """
    if weights is not None and weights != "imagenet" and not Path(weights).is_file():
        raise UsageError(f"weights must be 'imagenet', None or an existing file, "
                         f"received: {_shown(weights)!r}")


def natural_image_size(backbone: str | None = "mobilenet_v2", *,
                       source: str | Path | None = None) -> int:
    """The image side to train at when none is given: the source model's input side, or the
    side the backbone was designed for (:data:`NATURAL_SIZES`).

    Args:
        backbone: one of ``BACKBONES``; ignored when ``source`` is given.
        source: a saved ``.keras`` model to transfer from.

    Returns:
        The side in pixels.

    Raises:
        ValueError: for an unknown backbone, or a source whose input is not square.
    """
    if source is None:
        return NATURAL_SIZES[check_backbone(backbone)]
    height, width = load_model(source).input_shape[1:3]
    if height is None or width is None:  # a model that takes any size: its family's size
        return 224
    if height != width:
        raise UsageError(f"source must take square images (image_size is one side), received: "
                         f"{Path(source).name} with input {height}x{width}")
    return int(height)


def weights_argument(value: str | Path | None, *,
                     relative_to: str | Path | None = None) -> str | Path | None:
    """What a ``weights`` option typed as text means (a notebook parameter, a command line).

    Args:
        value: ``"imagenet"``; ``"none"``, ``""`` or None for random initialisation; anything
            else is a local weights file.
        relative_to: the folder a relative file path is relative to (default: as it is).

    Returns:
        ``"imagenet"``, None or the weights file's ``Path``.
    """
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    if not isinstance(value, (str, Path)):
        raise UsageError(f"weights must be 'imagenet', 'none' or a file path, received: "
                         f"{value!r}")
    if value == "imagenet":
        return value
    path = Path(value).expanduser()
    return Path(relative_to) / path if relative_to is not None and not path.is_absolute() \
        else path


class WeightsUnavailable(UsageError, RuntimeError):
    """The ImageNet weights could not be downloaded (no internet here?); the message says how to
    supply them as a file (the README's way, or the file Keras downloads)."""


def fetch_weights(name: str, weights, *, input_shape: tuple[int, int, int] = (224, 224, 3)
                  ) -> None:
    """Downloads a backbone's ImageNet weights now (or finds them in Keras's cache,
    ``~/.keras/models/``), so that a machine without internet says so before any long work,
    such as decoding the images, and not after it. Other weights need no download.

    Args:
        name: one of ``BACKBONES``.
        weights: ``"imagenet"``, a file or None.
        input_shape: the input the backbone will be built for (some files depend on it).

    Raises:
        WeightsUnavailable: when they cannot be downloaded.
    """
    if weights != "imagenet" or check_choice("backbone", name, BACKBONES) not in APPLICATIONS:
        return
    constructor, _, kwargs = APPLICATIONS[name]
    _load_application(constructor, weights, tuple(input_shape), kwargs)  # built, then dropped


def _load_application(constructor: str, weights, input_shape, kwargs) -> keras.Model:
    build = getattr(keras.applications, constructor)
    try:
        return build(include_top=False, weights=str(weights) if weights else None,
                     input_shape=input_shape, pooling="avg", **kwargs)
    except Exception as error:  # Keras raises a bare Exception when a download fails
        if weights != "imagenet" or "fetch" not in str(error).lower():
            raise
        raise WeightsUnavailable(_offline_advice(constructor, str(error))) from error


def _offline_advice(constructor: str, said: str) -> str:
    """How to supply the weights as a file, naming the file Keras tried to download (its
    message reads ``URL fetch failure on URL: code -- reason``)."""
    name = next(key for key, value in APPLICATIONS.items() if value[0] == constructor)
    found = re.search(r"URL fetch failure on (\S+): (?:\S+ -- )?(.*)", said)
    keras_file = (f" (or the one Keras downloads there, "
                  f"~/.keras/models/{found.group(1).rsplit('/', 1)[-1]})") if found else ""
    return (f"Could not download the ImageNet weights for {constructor} (no internet here?). "
            f"Where there is internet, save them: keras.applications.{constructor}("
            f"include_top=False, weights='imagenet', pooling='avg').save_weights("
            f"'{name}.weights.h5'), copy that file{keras_file} to this machine and pass "
            f"its path as the weights (weights=PATH). Keras said: "
            f"{found.group(2) if found else said}")


def _small_network(name: str, inputs):
    """LeNet (Caffe's MNIST net) or a small batch-normalised CIFAR-style CNN."""
    x = Preprocess("scale", name="preprocess")(inputs)
    if name == "lenet":
        x = layers.Conv2D(20, 5, activation="relu", name="conv1")(x)
        x = layers.MaxPooling2D(2, name="pool1")(x)
        x = layers.Conv2D(50, 5, activation="relu", name="conv2")(x)
        x = layers.MaxPooling2D(2, name="pool2")(x)
        x = layers.Flatten(name="flatten")(x)
        return layers.Dense(500, activation="relu", name="ip1")(x)
    for block, filters in enumerate((32, 64, 128), start=1):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{block}")(x)
        x = layers.BatchNormalization(name=f"bn{block}")(x)
        x = layers.ReLU(name=f"relu{block}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{block}")(x)
    return layers.GlobalAveragePooling2D(name="gap")(x)


@keras.saving.register_keras_serializable(package="workbench")
class RandomAugment(layers.Layer):
    """An :class:`~workbench.data.augment.Augment` inside the model: its ``"model"`` placement.

    In training it crops, rotates, flips (bilinear resampling, edge pixels filling what lies
    outside) and recolours each image, drawing from the same distribution as the pipeline
    placement (both compute the transforms with ``Augment.params``); at inference it passes
    images through. Put it right after the model's input (``classifier(augmentation=...)``) and
    serve it windows of the stored images (``Batches`` with ``placement="model"``): the host
    then only copies rows of pixels and the accelerator does the rest. It computes in float32
    under any dtype policy and returns float32 pixels in [0, 255].

    Its random state is a Keras seed generator, which ``training.callbacks.ReseedRandomLayers``
    sets from (seed, epoch), so a resumed run draws what an uninterrupted one drew.

    Args:
        augment: the :class:`Augment` (or its fields as a dict); its ``margin`` and
            ``placement`` do not matter here.
        seed: non-negative seed of the layer's draws.
    """

    def __init__(self, augment: Augment | dict | None = None, seed: int = 0, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        if isinstance(augment, dict):
            augment = Augment(**augment)
        if augment is not None and not isinstance(augment, Augment):
            raise UsageError(f"augment must be an Augment, a dict of its fields or None, "
                             f"received: {augment!r}")
        self.augment = augment or Augment()
        self.seed = check_int("seed", seed, minimum=0)
        self.seed_generator = keras.random.SeedGenerator(self.seed)

    def draw(self, count):
        """The transforms of ``count`` images, as ``Augment.params`` returns them (tensors)."""
        uniform = keras.random.uniform((AUGMENT_DRAWS, count), seed=self.seed_generator)
        return self.augment.params(uniform, xp=ops)

    def call(self, inputs, training=False):
        if not training or not self.augment.enabled:
            return inputs
        x = ops.cast(inputs, "float32")
        height, width = x.shape[1], x.shape[2]
        params = self.draw(ops.shape(x)[0])
        terms = Augment.affine(params, (height, width), (height, width), xp=ops)
        zeros = ops.zeros_like(terms[0])
        x = ops.image.affine_transform(x, ops.stack([*terms, zeros, zeros], axis=1),
                                       interpolation="bilinear", fill_mode="nearest",
                                       data_format="channels_last")
        if self.augment.recolours:
            grey_weights = ops.convert_to_tensor([0.299, 0.587, 0.114], "float32")
            sample = x[:, ::4, ::4, :]  # the mean grey from every 4th pixel, as the pipeline
            mean_grey = ops.mean(ops.sum(sample * grey_weights, axis=-1), axis=(1, 2))
            a, b, c = Augment.recolour_terms(params, mean_grey, xp=ops)
            grey = ops.sum(x * grey_weights, axis=-1, keepdims=True)
            x = a[:, None, None, None] * x + b[:, None, None, None] * grey + \
                c[:, None, None, None]
            x = ops.clip(x, 0.0, 255.0)
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        fields = dataclasses.asdict(self.augment)
        return {**super().get_config(), "augment": fields, "seed": self.seed}


def classifier(features: keras.Model, num_classes: int, *, dropout: float = 0.0,
               train_bn: bool = False, augmentation: keras.Layer | None = None) -> keras.Model:
    """Puts a new classifier head for ``num_classes`` on a backbone.

    Args:
        features: a backbone (see :func:`backbone` and :func:`load_source`).
        num_classes: number of classes of the new task.
        dropout: dropout rate before the new head.
        train_bn: see :func:`set_trainable`; False (the default, as the Keras fine-tuning guide
            advises) keeps batch norm in inference mode with its pretrained statistics.
        augmentation: optional Keras preprocessing layers applied to the raw pixels before the
            backbone (active in training only), so augmentation runs on the accelerator.

    Returns:
        A ``keras.Model`` mapping images to class probabilities.
    """
    check_int("num_classes", num_classes, minimum=2)
    check_number("dropout", dropout, minimum=0.0, maximum=0.99)
    inputs = keras.Input(features.input_shape[1:], name="image")
    x = augmentation(inputs) if augmentation is not None else inputs
    x = features(x)
    if len(x.shape) == 4:
        x = layers.GlobalAveragePooling2D(name="head_pool")(x)
    elif len(x.shape) != 2:
        x = layers.Flatten(name="head_flatten")(x)
    if dropout:
        x = layers.Dropout(dropout, name="head_dropout")(x)
    # float32 probabilities keep the loss stable under mixed precision.
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="head")(x)
    model = keras.Model(inputs, outputs, name="classifier")
    set_trainable(model, train_bn=train_bn)
    return model


def set_trainable(model: keras.Model, *, train_bn: bool) -> None:
    """Makes every layer trainable (undoing any freezing), except batch norm unless ``train_bn``.

    A Keras 3 batch-norm layer that is not trainable runs in inference mode: it normalises with
    its moving statistics and neither they nor its scale and offset change. That is what
    fine-tuning a pretrained backbone on a small dataset needs: batch statistics of a few images
    would wreck the pretrained ones (the caveat in the Keras transfer-learning guide). Passing
    ``training=False`` when calling the backbone is not enough: Keras 3 does not keep that
    argument in a functional graph, so ``fit`` would still update the statistics.

    Args:
        model: the classifier.
        train_bn: True for training from scratch or on large datasets, where batch norm should
            learn the statistics of the new data.
    """
    # Every layer explicitly: in Keras 3.15, model.trainable = True does not reach a layer that
    # was frozen on its own inside a nested model, so a frozen backbone would stay frozen.
    for layer in flatten_layers(model):
        layer.trainable = train_bn or not isinstance(layer, layers.BatchNormalization)


def load_model(path: str | Path) -> keras.Model:
    """Loads a ``.keras`` model in safe mode for inference and inspection, uncompiled.

    The optimizer state a run saved with its model is left in the file: resuming training loads
    it with ``workbench.training.checkpoint.load_compiled``.

    Raises:
        FileNotFoundError: when there is no file at ``path``.
        ValueError: when the file is not a ``.keras`` model (Keras itself says "File not found"
            for a file that is there but damaged or of another kind).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingPath(f"no model file at {path}")
    check_model_file(path)
    return keras.models.load_model(path, compile=False, safe_mode=True)


def check_model_file(path: str | Path) -> None:
    """Fails with the reason when ``path`` cannot be a ``.keras`` model: such a file is a zip
    archive holding ``config.json``; this checks that much without loading it. Other suffixes
    (a legacy ``.h5``) are left to Keras.

    Raises:
        ValueError: naming the file and what it is instead.
    """
    path = Path(path)
    if path.suffix != ".keras":
        return
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except (zipfile.BadZipFile, OSError) as error:
        size = path.stat().st_size if path.is_file() else 0
        raise UsageError(f"{path} is not a Keras model: a .keras file is a zip archive and this "
                         f"one ({size} bytes) is not ({one_line(error) or 'unreadable'}); it is "
                         "damaged or of another kind: save the model again") from None
    if "config.json" not in names:
        raise UsageError(f"{path} is not a Keras model: the zip archive holds no config.json; "
                         "save the model again with model.save('NAME.keras')")


def load_source(path: str | Path, *, cut_at: str | None = None) -> keras.Model:
    """Loads a saved model and cuts it at a layer to serve as a backbone.

    Args:
        path: a ``.keras`` file, e.g. a source model pretrained with the workbench.
        cut_at: the layer whose output becomes the features. By default: the output of the
            model's nested ``backbone`` if it has one (a workbench classifier), otherwise the
            input of its last layer. Layers inside a nested backbone may be named too.

    Returns:
        A ``keras.Model`` named ``"backbone"`` sharing the loaded weights.
    """
    model = load_model(path)
    nested = _nested_backbone(model)
    if cut_at is None:
        if nested is not None:
            return keras.Model(nested.input, nested.output, name="backbone")
        return keras.Model(model.input, model.layers[-1].input, name="backbone")
    for owner in (model, nested):
        if owner is not None and cut_at in {layer.name for layer in owner.layers}:
            return keras.Model(owner.input, owner.get_layer(cut_at).output, name="backbone")
    names = [layer.name for layer in (nested or model).layers]
    raise UsageError(f"cut_at must name a layer of {Path(path).name}, received: {cut_at!r}; "
                     f"layers: {', '.join(names)}")


def _nested_backbone(model: keras.Model) -> keras.Model | None:
    for layer in model.layers:
        if isinstance(layer, keras.Model) and layer.name == "backbone":
            return layer
    return None
