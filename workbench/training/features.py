"""Fast feature extraction: a stage that trains only the head computes the frozen part once.

In ``feature_extraction``, and in the first stage of ``two_stage``, only the new head learns:
the backbone and its batch norms are frozen, so for a given image the backbone's pooled
features are the same in every epoch. Without augmentation, :func:`head_fit` computes them once
for every training and validation image, keeps them beside the image cache, and trains the head
on them (the Keras transfer-learning guide's "fast feature extraction"). The head it trains is
made of the classifier's own layers and compiled with the classifier's own optimizer, and the
run's callbacks see the classifier: the history, the checkpoints and ``best.keras`` are those of
the whole model, equal to what training the whole model gives up to float rounding, and a run
resumed from a checkpoint continues either way.

The features of a split are cached as ``features-KEY.npy`` (float32, one row per image, in the
image cache's order) with ``features-KEY.json`` describing them, in the folder of the split's
image cache. ``KEY`` hashes the frozen part (its layers' settings and every weight: the model's
starting point), the Keras backend and the split's decoded images (their size and resize mode
included), so another backbone, other weights or other images never read them.

It applies only where it changes no result: nothing before the head has a trainable weight, no
batch norm there updates its statistics, nothing there draws random numbers (augmentation in the
model, the stochastic-depth dropout of EfficientNet), the batches are the stored images as they
are (no augmentation in the pipeline) and one process trains on one device. Otherwise
:func:`head_fit` returns None and the stage trains the whole model.
"""

from __future__ import annotations

import hashlib
import json
import time
import typing
from pathlib import Path

import keras
import numpy as np

from workbench._compat import flatten_layers, is_seed_state
from workbench._io import atomic_path
from workbench._progress import progress as progress_bar
from workbench.data.pipeline import stream_dataset_class, untuned

FEATURES_FORMAT = 1  # bump when the features or their key change, to invalidate old ones
HEAD_LAYERS = ("head_dropout", "head")  # what models.classifier puts after the pooled features
_HASH_CHUNK = 1 << 26  # bytes of images hashed at a time


class HeadFit(typing.NamedTuple):
    """A stage's head on features, ready to fit (from :func:`head_fit`).

    Attributes:
        model: the head, a model from features to class probabilities made of the
            classifier's head layers, compiled as the classifier is, with its optimizer.
        train: the training :class:`FeatureBatches`.
        val: the validation :class:`FeatureBatches`, or None.
        classifier: the whole model, whose head the fit trains.
    """

    model: keras.Model
    train: FeatureBatches
    val: FeatureBatches | None
    classifier: keras.Model

    def changing(self) -> list:
        """The variables fitting the head changes: its layers' (weights, dropout's random
        state) and the optimizer's; every other variable of the classifier stays as it is."""
        return [*self.model.variables, *self.classifier.optimizer.variables]

    def on_classifier(self, callbacks: list) -> list:
        """The callbacks written for the classifier, to pass to the head's fit."""
        return [OnClassifier(callback, self.classifier) for callback in callbacks]


def head_fit(model: keras.Model, train, val, *, progress: str = "auto") -> HeadFit | None:
    """The head of ``model`` on the cached features of its frozen part, when that is exact.

    Call it once the stage is compiled (or resumed), and fit the returned head in place of
    ``model``, with :meth:`HeadFit.on_classifier` around the callbacks: that trains ``model``'s
    head as fitting ``model`` on ``train`` would (same batches, same dropout draws, same
    optimizer), and the callbacks act on ``model``.

    Args:
        model: the compiled classifier (``models.classifier``).
        train: the training ``pipeline.Batches``.
        val: the validation ``pipeline.Batches``, or None.
        progress: while features are computed: ``"auto"`` (a bar or plain lines, see
            ``workbench._progress``), ``"lines"`` or ``"none"``.

    Returns:
        A :class:`HeadFit`, or None when the stage must train the whole model (see the
        module's docstring for when).
    """
    if not _plain(train) or (val is not None and not _plain(val)):
        return None
    frozen = frozen_part(model)
    if frozen is None:
        return None
    splits = [train] if val is None else [train, val]
    features = [cached_features(frozen, batches.images, batch_size=batches.batch_size,
                                progress=progress) for batches in splits]
    return HeadFit(_head(model, features[0].shape[1]), FeatureBatches(train, features[0]),
                   None if val is None else FeatureBatches(val, features[1]), model)


def _plain(batches) -> bool:
    """Whether ``batches`` serve the stored images as they are, whole batches on one worker."""
    return (batches.augment is None and batches.shard == (0, 1) and batches.pad_to == 1
            and tuple(batches.images.shape[1:3]) == tuple(batches.image_size))


def frozen_part(model: keras.Model) -> keras.Model | None:
    """The part of a classifier before its head, when training cannot change what it computes.

    Args:
        model: a classifier of ``models.classifier``.

    Returns:
        A ``keras.Model`` from the classifier's images to the features its head takes, sharing
        the classifier's layers; None when it is not such a classifier, or when something in
        that part learns (a weight with a learning-rate multiplier above 0, a batch norm
        updating its statistics) or draws random numbers (a dropout, augmentation).
    """
    names = [layer.name for layer in model.layers]
    if "head" not in names or names[-1] != "head" or len(model.inputs) != 1:
        return None
    first = model.get_layer(next(name for name in HEAD_LAYERS if name in names))
    if names[names.index(first.name):] != [n for n in HEAD_LAYERS if n in names]:
        return None
    part = keras.Model(model.inputs, first.input, name="frozen_part")
    learns = part.trainable_weights or any(
        layer.trainable and isinstance(layer, keras.layers.BatchNormalization)
        for layer in flatten_layers(part, include_self=False))
    draws = any(is_seed_state(variable) for variable in part.variables)
    return None if learns or draws else part


def feature_key(frozen: keras.Model, images: np.ndarray) -> str:
    """The key of the features of ``images`` through ``frozen``: a hash of the Keras backend,
    the settings of each of its layers (names aside), all its weights and the images."""
    digest = hashlib.sha256(json.dumps(
        [FEATURES_FORMAT, keras.backend.backend(), list(images.shape), str(images.dtype)]
    ).encode())
    for layer in flatten_layers(frozen, include_self=False):
        if hasattr(layer, "layers"):  # a nested model: its layers are listed after it
            continue
        try:
            settings = {key: value for key, value in layer.get_config().items()
                        if key not in ("name", "trainable")}
        except NotImplementedError:  # a layer that cannot say its settings: its class
            settings = {}
        digest.update(json.dumps([type(layer).__name__, settings], sort_keys=True,
                                 default=str).encode())
    for variable in frozen.weights:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(variable))
        digest.update(f"{variable.path}:{value.dtype}:{value.shape}\n".encode())
        digest.update(value)
    flat = np.ascontiguousarray(images).reshape(-1)  # a memmap is read, not copied, in order
    for start in range(0, len(flat), _HASH_CHUNK):
        digest.update(flat[start:start + _HASH_CHUNK])
    return digest.hexdigest()


def cached_features(frozen: keras.Model, images: np.ndarray, *, batch_size: int = 32,
                    progress: str = "auto") -> np.ndarray:
    """The features of every image through ``frozen``, computed once.

    With ``images`` read from an image cache file (``workbench.data.cache.build_cache``),
    the features are kept beside it as ``features-KEY.npy`` and ``features-KEY.json``
    (:func:`feature_key`), written atomically, and read back by later calls; in-memory images
    get them computed.

    Args:
        frozen: the frozen part (:func:`frozen_part`).
        images: uint8 images (N, H, W, 3).
        batch_size: images per forward pass.
        progress: while computing: ``"auto"``, ``"lines"`` or ``"none"``.

    Returns:
        A float32 array (N, features).
    """
    folder = Path(images.filename).parent if getattr(images, "filename", None) else None
    if folder is None:
        return compute_features(frozen, images, batch_size=batch_size, progress=progress)
    key = feature_key(frozen, images)
    array_path = folder / f"features-{key[:20]}.npy"
    info_path = array_path.with_suffix(".json")
    cached = _open_if_valid(array_path, info_path, key, len(images))
    if cached is not None:
        return cached
    started = time.perf_counter()
    features = compute_features(frozen, images, batch_size=batch_size, progress=progress)
    with atomic_path(array_path, fsync=True) as temporary:  # on disk before it is trusted
        np.save(temporary, features)
    info = {"format": FEATURES_FORMAT, "key": key, "shape": list(features.shape),
            "dtype": "float32", "images": Path(images.filename).name,
            "seconds": round(time.perf_counter() - started, 3),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    with atomic_path(info_path, fsync=True) as temporary:
        temporary.write_text(json.dumps(info, indent=1))
    return features


def _open_if_valid(array_path: Path, info_path: Path, key: str, count: int) -> np.ndarray | None:
    """The features cached under ``key``, if their description and array match."""
    try:
        info = json.loads(info_path.read_text())
        if info.get("key") != key:
            return None
        array = np.load(array_path)
    except (OSError, ValueError):  # missing, unreadable or half-written: compute again
        return None
    ok = array.ndim == 2 and len(array) == count and array.dtype == np.float32
    return array if ok else None


def compute_features(frozen: keras.Model, images: np.ndarray, *, batch_size: int = 32,
                     progress: str = "auto") -> np.ndarray:
    """Runs ``frozen`` in inference mode over ``images``, ``batch_size`` at a time (the last
    batch padded to that size, so one compiled function serves them all).

    Returns:
        A float32 array (N, features).
    """
    count = len(images)
    batch_size = max(1, min(batch_size, count))
    out = None
    starts = range(0, count, batch_size)
    for start in progress_bar(starts, total=len(starts), desc="computing features",
                              mode=progress):
        batch = np.asarray(images[start:start + batch_size])
        real = len(batch)
        if real < batch_size:
            batch = np.concatenate([batch, np.repeat(batch[:1], batch_size - real, axis=0)])
        values = keras.ops.convert_to_numpy(frozen.predict_on_batch(batch))[:real]
        values = values.reshape(real, -1)
        if out is None:
            out = np.empty((count, values.shape[1]), np.float32)
        out[start:start + real] = values
    return out


def _head(model: keras.Model, width: int) -> keras.Model:
    """The classifier's head layers on a features input, compiled as the classifier is, with
    its optimizer (the same weights and the same optimizer state are trained)."""
    inputs = keras.Input((width,), name="features")
    x = inputs
    for name in HEAD_LAYERS:
        if name in [layer.name for layer in model.layers]:
            x = model.get_layer(name)(x)
    head = keras.Model(inputs, x, name="head_on_features")
    config = model.get_compile_config()
    metrics = {name: None if config[name] is None else
               [keras.saving.deserialize_keras_object(item) for item in config[name]]
               for name in ("metrics", "weighted_metrics")}
    head.compile(optimizer=model.optimizer, loss=model.loss, loss_weights=config["loss_weights"],
                 run_eagerly=config["run_eagerly"], jit_compile=config["jit_compile"],
                 steps_per_execution=config["steps_per_execution"], **metrics)
    return head


class FeatureBatches:
    """The batches of a ``pipeline.Batches`` with the features of its images in their place:
    the same rows in the same order, epoch by epoch.

    Args:
        batches: the ``pipeline.Batches`` of the images.
        features: one row per image of ``batches.images``.
    """

    def __init__(self, batches, features: np.ndarray):
        if len(features) != len(batches.images):
            raise ValueError(f"features must have one row per image ({len(batches.images)}), "
                             f"received: {len(features)} rows")
        self.batches, self.features = batches, features

    @property
    def steps_per_epoch(self) -> int:
        """Batches per epoch, as the images'."""
        return self.batches.steps_per_epoch

    def batch(self, epoch: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Batch ``index`` of ``epoch``: ``(features, labels)`` of the rows
        ``batches.rows(epoch, index)``."""
        rows, _ = self.batches.rows(epoch, index)
        return self.features[rows], self.batches.labels[rows]

    def for_keras(self, start_epoch: int = 0, epochs: int | None = None):
        """Consecutive epochs from ``start_epoch`` (``epochs`` None: no end), as
        ``pipeline.Batches.for_keras`` serves the images: a ``keras.utils.PyDataset``, or on
        the TensorFlow backend a ``tf.data.Dataset`` of the same items."""
        stream = _FeatureDataset(self, start_epoch, epochs)
        if keras.backend.backend() != "tensorflow":
            return stream
        return _untuned_tf_dataset(stream, self.features.shape[1])


class _FeatureDataset(stream_dataset_class()):
    """Item ``i``: batch ``i % steps`` of epoch ``start_epoch + i // steps``, a pure function
    of ``i``, so Keras peeking at the first item changes nothing."""

    def __init__(self, batches: FeatureBatches, start_epoch: int, epochs: int | None):
        super().__init__(None if epochs is None else epochs * batches.steps_per_epoch)
        self.batches, self.start_epoch = batches, start_epoch

    def item(self, index):
        epoch, step = divmod(index, self.batches.steps_per_epoch)
        return self.batches.batch(self.start_epoch + epoch, step)


def _untuned_tf_dataset(stream, width: int):
    """``stream``'s items as a ``tf.data.Dataset`` without tf.data's autotuning
    (``pipeline.untuned`` says why): Keras would wrap the PyDataset in an autotuned one."""
    import tensorflow as tf  # only on the TensorFlow backend

    indexes = (tf.data.Dataset.counter() if stream.num_batches is None
               else tf.data.Dataset.range(stream.num_batches))

    def fetch(index):
        x, y = tf.numpy_function(lambda i: stream[int(i)], [index], (tf.float32, tf.int32),
                                 stateful=False)
        return tf.ensure_shape(x, (None, width)), tf.ensure_shape(y, (None,))

    return untuned(indexes.map(fetch).prefetch(tf.data.AUTOTUNE))


class OnClassifier(keras.callbacks.Callback):
    """A callback written for the classifier, run while its head is fitted on features.

    The callback sees the classifier as its model (it saves it, reads its optimizer and its
    random layers); when it stops training, the fit of the head stops. On JAX each hook first
    brings the head's training state back into the weights the two models share.

    Args:
        callback: the callback.
        classifier: the whole model.
    """

    def __init__(self, callback: keras.callbacks.Callback, classifier: keras.Model):
        super().__init__()
        self.callback, self.classifier = callback, classifier
        self.async_safe = getattr(callback, "async_safe", False)

    def set_params(self, params):
        super().set_params(params)
        self.callback.set_params(params)

    def set_model(self, model):
        super().set_model(model)
        self.callback.set_model(self.classifier)

    def _forward(self, hook: str, *args) -> None:
        fitted = self.model  # on JAX, this syncs the head's state into the shared weights
        if hook == "on_train_begin":
            self.classifier.stop_training = False
        getattr(self.callback, hook)(*args)
        if getattr(self.classifier, "stop_training", False):
            fitted.stop_training = True

    def on_train_begin(self, logs=None):
        self._forward("on_train_begin", logs)

    def on_train_end(self, logs=None):
        self._forward("on_train_end", logs)

    def on_epoch_begin(self, epoch, logs=None):
        self._forward("on_epoch_begin", epoch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self._forward("on_epoch_end", epoch, logs)

    def on_train_batch_begin(self, batch, logs=None):
        self._forward("on_train_batch_begin", batch, logs)

    def on_train_batch_end(self, batch, logs=None):
        self._forward("on_train_batch_end", batch, logs)

    def on_test_begin(self, logs=None):
        self._forward("on_test_begin", logs)

    def on_test_end(self, logs=None):
        self._forward("on_test_end", logs)

    def on_test_batch_begin(self, batch, logs=None):
        self._forward("on_test_batch_begin", batch, logs)

    def on_test_batch_end(self, batch, logs=None):
        self._forward("on_test_batch_end", batch, logs)
