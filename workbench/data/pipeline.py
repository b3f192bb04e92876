"""Input pipeline: shuffled, augmented batches from the decoded uint8 cache.

Each split is decoded once into a memory-mapped uint8 array
(:func:`workbench.data.cache.build_cache`); :class:`Batches` serves it: the order of epoch
``e`` and the augmentation of each batch depend only on ``(seed, e, batch)``, so a run resumed
at epoch ``k`` sees exactly the batches an uninterrupted run saw. Images stay uint8 until the
model, whose first layers rescale them (and, with ``workbench.models.RandomAugment``, augment
them on the device: see :class:`workbench.data.augment.Augment` for its two placements).

Typical use, the training images cached 15% larger than the model's input for crops::

    from workbench.data.augment import Augment, stored_size
    from workbench.data.cache import build_cache

    side = stored_size(224, 1.15)
    train = Batches(build_cache(paths, root=root, image_size=side, cache_dir=cache), labels,
                    batch_size=64, seed=0, augment=Augment(flip=True, placement="pipeline"),
                    image_size=224)
    model.fit(train.for_keras(start_epoch=k), steps_per_epoch=train.steps_per_epoch,
              initial_epoch=k, epochs=epochs, shuffle=False,
              validation_data=val.for_keras(epochs=1))
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from workbench._checks import UsageError, check_int, moved_names
from workbench.data.augment import Augment, augmented_rows, window_offsets, windows
from workbench.data.images import check_image_size

# Moved to workbench.data.cache and workbench.data.augment; the old names warn for one release.
__getattr__ = moved_names(__name__, {
    **dict.fromkeys(("CACHE_FORMAT", "CacheBuildError", "build_cache"), "workbench.data.cache"),
    **dict.fromkeys(("PLACEMENTS", "FEW_IMAGES_PER_CLASS", "AUGMENT_DRAWS", "stored_size",
                     "few_images", "augment_argument", "resolve_augment"),
                    "workbench.data.augment")})


class Batches:
    """Shuffled, optionally augmented batches from an in-memory or memory-mapped uint8 array.

    The order of epoch ``e`` is ``np.random.default_rng([seed, e]).permutation(n)`` and batch
    ``b`` of it is augmented with ``np.random.default_rng([seed, e, b])``, so every batch is a
    pure function of ``(seed, epoch, index)``: resuming at epoch ``k`` reproduces an
    uninterrupted run. For validation and test splits use ``shuffle=False`` and no augment.

    Images stored larger than ``image_size`` (see :attr:`Augment.margin`) are served as
    windows of ``image_size``: random ones with an ``augment``, the centred one without. With
    ``augment.placement == "model"`` that window is all the host does; the model's
    ``workbench.models.RandomAugment`` layer does the rest.

    Args:
        images: uint8 array of shape (N, H, W, 3), e.g. from
            :func:`workbench.data.cache.build_cache`.
        labels: N integer class indices.
        batch_size: images per batch.
        shuffle: shuffle the order each epoch.
        seed: non-negative seed for the order and the augmentation.
        augment: an :class:`Augment`, or ``None`` for none.
        drop_remainder: drop the last, smaller batch of each epoch.
        image_size: side (or ``(height, width)``) of the images served; default the stored
            size. It may not exceed the stored size.
        shard: ``(index, count)``: serve only part ``index`` of ``count`` equal parts of every
            batch, for one of ``count`` worker processes that train together (each feeds its
            part of the same batches). Default ``(0, 1)``: whole batches.
        pad_to: for evaluation on several devices, which split every batch evenly: a batch
            with fewer images (the last) is padded to a multiple of ``pad_to`` with copies
            weighted 0, and batches come as ``(x, y, weights)``. The real images weigh
            ``(N + padding) / N``, so that Keras's averages over padded batch sizes come out
            as the averages over the N images. Default 1: no padding, no weights.

    Raises:
        ValueError: if an argument is invalid.
    """

    def __init__(self, images: np.ndarray, labels, *, batch_size: int, shuffle: bool = True,
                 seed: int = 0, augment: Augment | None = None, drop_remainder: bool = False,
                 image_size: int | tuple[int, int] | None = None,
                 shard: tuple[int, int] = (0, 1), pad_to: int = 1):
        if not (isinstance(images, np.ndarray) and images.ndim == 4 and images.shape[-1] == 3
                and images.dtype == np.uint8):
            described = (f"{images.dtype} array of shape {images.shape}"
                         if isinstance(images, np.ndarray) else type(images).__name__)
            raise UsageError(f"images must be a uint8 array of shape (N, H, W, 3), "
                             f"received: {described}")
        labels = np.asarray(labels)
        if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
            raise UsageError(f"labels must be {len(images)} integers, one per image, received: "
                             f"{labels.dtype} array of shape {labels.shape}")
        self.images = images
        self.labels = labels.astype(np.int32)
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        self.seed = check_int("seed", seed, minimum=0)
        if augment is not None and not isinstance(augment, Augment):
            raise UsageError(f"augment must be an Augment or None, received: {augment!r}")
        self.shuffle = bool(shuffle)
        self.augment = augment
        self.drop_remainder = bool(drop_remainder)
        if drop_remainder and len(images) < batch_size:
            raise UsageError(f"batch_size must be <= the number of images ({len(images)}) when "
                             f"drop_remainder=True, received: {batch_size}")
        if len(images) == 0:
            raise UsageError("images must hold at least one image, received: 0 images")
        self.image_size = tuple(images.shape[1:3]) if image_size is None \
            else check_image_size(image_size)
        if self.image_size[0] > images.shape[1] or self.image_size[1] > images.shape[2]:
            raise UsageError(f"image_size must not exceed the stored images' "
                             f"{images.shape[1]}x{images.shape[2]}, received: {image_size!r}")
        self.shard = _check_shard(shard, self.batch_size, drop_remainder or pad_to > 1)
        self.pad_to = check_int("pad_to", pad_to, minimum=1)
        if pad_to > 1 and (self.batch_size % pad_to or pad_to % self.shard[1]):
            raise UsageError(f"pad_to must divide batch_size={self.batch_size} and be a "
                             f"multiple of the {self.shard[1]} shards, received: {pad_to}")
        rest = len(images) % self.batch_size  # the last batch's images, when it is smaller
        padding = -rest % pad_to if rest and not drop_remainder else 0
        self._weight = (len(images) + padding) / len(images)
        self._order_cache: tuple[int, np.ndarray] | None = None

    @property
    def steps_per_epoch(self) -> int:
        """Batches per epoch."""
        full, rest = divmod(len(self.images), self.batch_size)
        return full + (1 if rest and not self.drop_remainder else 0)

    def order(self, epoch: int) -> np.ndarray:
        """The image indices of ``epoch`` in the order they are served."""
        check_int("epoch", epoch, minimum=0)
        cached = self._order_cache  # one tuple read: safe with concurrent callers
        if cached is not None and cached[0] == epoch:
            return cached[1]
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.images))
        else:
            order = np.arange(len(self.images))
        self._order_cache = (epoch, order)
        return order

    def batch(self, epoch: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Batch ``index`` of ``epoch``.

        Args:
            epoch: the epoch, from 0.
            index: the batch within the epoch, ``0 <= index < steps_per_epoch``.

        Returns:
            ``(x, y)``: uint8 images (B, H, W, 3) and int32 labels (B,), this shard's part of
            them; with ``pad_to > 1``, ``(x, y, weights)`` (float32 (B,)).

        Raises:
            ValueError: if ``epoch`` or ``index`` is out of range.
        """
        picked, weights = self.rows(epoch, index)
        x, y = self._images_of(picked, epoch, index), self.labels[picked]
        return (x, y, weights) if self.pad_to > 1 else (x, y)

    def rows(self, epoch: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Which stored images batch ``index`` of ``epoch`` holds, in the order it serves them,
        and their weights: what :meth:`batch` gathers (``workbench.training.features`` serves
        the same rows of a feature array).

        Args:
            epoch: the epoch, from 0.
            index: the batch within the epoch, ``0 <= index < steps_per_epoch``.

        Returns:
            ``(rows, weights)``: int indices into ``images`` and float32 weights (0 for the
            padding of ``pad_to``), this shard's part of them.

        Raises:
            ValueError: if ``epoch`` or ``index`` is out of range.
        """
        check_int("index", index, minimum=0)
        if index >= self.steps_per_epoch:
            raise UsageError(f"index must be < steps_per_epoch={self.steps_per_epoch}, "
                             f"received: {index}")
        picked = self.order(epoch)[index * self.batch_size:(index + 1) * self.batch_size]
        # The order within a batch does not matter to training; file order reads a memmap
        # sequentially and needs one copy instead of two.
        picked = np.sort(picked)
        weights = np.full(len(picked), self._weight, np.float32)
        if self.pad_to > 1 and len(picked) % self.pad_to:
            padding = -len(picked) % self.pad_to
            picked = np.concatenate([picked, np.repeat(picked[:1], padding)])
            weights = np.concatenate([weights, np.zeros(padding, np.float32)])
        part, parts = self.shard
        if parts > 1:
            share = len(picked) // parts
            picked, weights = (a[part * share:(part + 1) * share] for a in (picked, weights))
        return picked, weights

    @property
    def _transforms(self) -> bool:
        """Whether batches are more than the stored images gathered."""
        on_host = self.augment is not None and self.augment.enabled \
            and self.augment.placement != "model"
        return on_host or self.image_size != tuple(self.images.shape[1:3])

    def _images_of(self, picked: np.ndarray, epoch: int, index: int) -> np.ndarray:
        """The images of batch ``index`` of ``epoch``: rows ``picked``, transformed."""
        if not self._transforms:
            return self.images[picked]
        stored = tuple(self.images.shape[1:3])
        stream = [self.seed, int(epoch), int(index)] + ([self.shard[0]] if self.shard[1] > 1
                                                         else [])  # shards draw apart
        rng = None if self.augment is None else np.random.default_rng(stream)
        if rng is not None and self.augment.enabled and self.augment.placement != "model":
            return augmented_rows(self.images, picked, self.augment, rng, self.image_size)
        top, left = window_offsets(rng, len(picked), stored, self.image_size)
        return windows(self.images, picked, top, left, self.image_size)

    def epoch(self, epoch: int, *, prefetch: int = 2) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Iterates over the batches of one epoch, preparing the next ones in a thread.

        Args:
            epoch: the epoch, from 0.
            prefetch: batches prepared ahead; 0 for none.

        Yields:
            ``(x, y)`` as :meth:`batch` returns them.
        """
        check_int("epoch", epoch, minimum=0)
        check_int("prefetch", prefetch, minimum=0)
        fetch = _Lookahead(functools.partial(self.batch, epoch), prefetch, self.steps_per_epoch)
        return (fetch(index) for index in range(self.steps_per_epoch))

    def _global_batch(self, start_epoch: int, step: int):
        """Batch ``step`` of the stream of consecutive epochs beginning at ``start_epoch``."""
        epoch, index = divmod(step, self.steps_per_epoch)
        return self.batch(start_epoch + epoch, index)

    def _stream_length(self, start_epoch: int, epochs: int | None) -> int | None:
        check_int("start_epoch", start_epoch, minimum=0)
        if epochs is None:
            return None
        return check_int("epochs", epochs, minimum=1) * self.steps_per_epoch

    def as_tf_dataset(self, start_epoch: int = 0, epochs: int | None = None):
        """A prefetched ``tf.data.Dataset`` of consecutive epochs from ``start_epoch``.

        Use with ``model.fit(ds, steps_per_epoch=self.steps_per_epoch, initial_epoch=
        start_epoch, ...)``; Keras then sees epoch ``e`` exactly as :meth:`epoch` yields it.
        Batches are gathered by TensorFlow in parallel from a copy of the images in memory,
        or, if they take more than a quarter of the RAM, from the array itself. tf.data's
        autotuning is off (one parallel call per core, a self-sizing prefetch buffer): its
        thread made releasing the iterator of a stopped fit freeze the process for seconds.

        Args:
            start_epoch: the first epoch served.
            epochs: how many epochs to serve, or ``None`` to repeat forever.

        Returns:
            A dataset of ``(uint8 images (B, H, W, 3), int32 labels (B,))``.
        """
        self._stream_length(start_epoch, epochs)
        if self.shard != (0, 1) or self.pad_to > 1:
            raise UsageError("as_tf_dataset serves whole batches: TensorFlow's strategies "
                             "split them between workers and devices themselves")
        import tensorflow as tf  # only here, so the JAX backend never loads TensorFlow

        # Not from_generator: it runs Python per batch under the GIL, and TensorFlow lowers
        # malloc's trim threshold for it, so every later batch allocation faults its pages in.
        count = len(self.images)

        def epoch_batches(epoch):  # the same slices of order(epoch) as batch() takes
            order = tf.numpy_function(lambda e: self.order(int(e)).astype(np.int64), [epoch],
                                      tf.int64, stateful=False)
            picks = tf.data.Dataset.from_tensor_slices(tf.ensure_shape(order, [count]))
            return tf.data.Dataset.zip(
                tf.data.Dataset.from_tensors(epoch).repeat(), tf.data.Dataset.counter(),
                picks.batch(self.batch_size, drop_remainder=self.drop_remainder))

        if self._transforms:  # windows and augmentation: NumPy, reading the array itself
            gather = None
        elif self.images.nbytes <= _memory_bytes() // 4:
            images = tf.constant(self.images)
            gather = functools.partial(tf.gather, images)
        else:  # too large to copy: read the rows from the (memory-mapped) array
            gather = lambda picked: tf.numpy_function(  # noqa: E731
                lambda p: self.images[p], [picked], tf.uint8, stateful=False)
        labels = tf.constant(self.labels)
        batch_dim = self.batch_size if count % self.batch_size == 0 or self.drop_remainder \
            else None

        def make_batch(epoch, index, picked):
            picked = tf.sort(picked)
            if gather is None:
                x = tf.numpy_function(self._images_of, [picked, epoch, index], tf.uint8,
                                      stateful=False)
            else:
                x = gather(picked)
            x = tf.ensure_shape(x, (batch_dim, *self.image_size, 3))
            return x, tf.ensure_shape(tf.gather(labels, picked), (batch_dim,))

        epochs_served = (tf.data.Dataset.counter(start_epoch) if epochs is None
                         else tf.data.Dataset.range(start_epoch, start_epoch + epochs))
        options = tf.data.Options()  # several workers: each takes its part of every batch
        policy = tf.data.experimental.AutoShardPolicy.DATA
        options.experimental_distribute.auto_shard_policy = policy
        return untuned(epochs_served.flat_map(epoch_batches)
                       .map(make_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
                       .prefetch(tf.data.AUTOTUNE).with_options(options))

    def as_py_dataset(self, start_epoch: int = 0, epochs: int | None = None, *,
                      prefetch: int = 2):
        """A ``keras.utils.PyDataset`` of consecutive epochs from ``start_epoch``.

        Item ``i`` is batch ``i % steps_per_epoch`` of epoch ``start_epoch + i //
        steps_per_epoch``: a pure function of ``i``, with no epoch counter, so Keras peeking at
        the first batch (and then calling ``on_epoch_end``, as ``fit`` does on JAX) changes
        nothing. With ``epochs=None`` it is infinite, so pass ``steps_per_epoch`` to ``fit``
        (and ``shuffle=False``, since Keras would otherwise warn that it ignores shuffling).

        Args:
            start_epoch: the first epoch served.
            epochs: how many epochs to serve, or ``None`` for no end. ``epochs=1`` suits
                validation data.
            prefetch: batches prepared ahead in a background thread; 0 for none.

        Returns:
            A ``keras.utils.PyDataset`` of ``(uint8 images, int32 labels)``.
        """
        length = self._stream_length(start_epoch, epochs)
        check_int("prefetch", prefetch, minimum=0)
        return _py_dataset_class()(self, start_epoch, length, prefetch)

    def for_keras(self, start_epoch: int = 0, epochs: int | None = None):
        """:meth:`as_tf_dataset` on the TensorFlow backend, :meth:`as_py_dataset` otherwise."""
        import keras

        if keras.backend.backend() == "tensorflow":
            return self.as_tf_dataset(start_epoch, epochs)
        return self.as_py_dataset(start_epoch, epochs)


def _check_shard(shard, batch_size: int, whole_batches: bool) -> tuple[int, int]:
    """``shard`` as ``(index, count)``, checked: every batch must split into equal parts."""
    if not (isinstance(shard, tuple) and len(shard) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in shard)
            and 0 <= shard[0] < shard[1]):
        raise UsageError(f"shard must be (index, count) with 0 <= index < count, "
                         f"received: {shard!r}")
    if shard[1] > 1 and (batch_size % shard[1] or not whole_batches):
        raise UsageError(f"batch_size must be a multiple of the {shard[1]} shards, and the "
                         f"last batch dropped or padded, received: batch_size={batch_size}")
    return shard


def _memory_bytes() -> int:
    """Physical memory of this machine in bytes, or 0 where it cannot be told."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not POSIX
        return 0


class _Lookahead:
    """Random-access ``fetch(i)`` that prepares ``i + 1 .. i + depth`` in a background thread."""

    def __init__(self, fetch, depth: int, length: int | None):
        self._fetch, self._depth, self._length = fetch, depth, length
        self._pending: dict[int, Future] = {}
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1) if depth else None

    def __call__(self, i: int):
        if self._executor is None:
            return self._fetch(i)
        with self._lock:
            future = self._pending.pop(i, None)
            wanted = range(i + 1, i + 1 + self._depth if self._length is None
                           else min(i + 1 + self._depth, self._length))
            for stale in [j for j in self._pending if j not in wanted]:
                self._pending.pop(stale).cancel()
            for j in wanted:
                if j not in self._pending:
                    self._pending[j] = self._executor.submit(self._fetch, j)
        return future.result() if future is not None else self._fetch(i)


def untuned(dataset):
    """``dataset`` without tf.data's autotuning thread: every ``tf.data.Dataset`` given to Keras.

    An iterator's destruction waits for that thread to wake (its period grows to a minute), and
    Keras leaves a stopped fit's iterator to the garbage collector, so a later collection froze
    the process for 10 s or more. Without it ``AUTOTUNE`` means one parallel call per core and
    a self-sizing prefetch buffer.
    """
    import tensorflow as tf  # only on the TensorFlow backend

    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


@functools.cache
def stream_dataset_class():
    """The ``keras.utils.PyDataset`` base of a stream of batches in which item ``i`` is a pure
    function of ``i`` (defined on first use, so that importing this module does not import Keras).

    A subclass passes the stream's length to ``__init__`` (``None``: no end) and defines
    ``item(index)``; the base serves it as ``num_batches`` and checks each index against it.
    It uses no Keras workers: their queue keeps what was fetched for its first peek at the data
    and serves it later, shifting the stream by a batch.
    """
    import keras

    class StreamDataset(keras.utils.PyDataset):
        def __init__(self, length: int | None):
            super().__init__(workers=1)
            self._length = length

        @property
        def num_batches(self):
            return self._length

        def __getitem__(self, index):
            if self._length is not None and not 0 <= index < self._length:
                raise IndexError(f"index must be in [0, {self._length}), received: {index}")
            return self.item(index)

        def item(self, index):
            raise NotImplementedError

    return StreamDataset


@functools.cache
def _py_dataset_class():
    """Defined on first use so that importing this module does not import Keras."""

    class BatchesPyDataset(stream_dataset_class()):
        def __init__(self, batches: Batches, start_epoch: int, length: int | None,
                     prefetch: int):
            super().__init__(length)
            self.batches = batches
            self.start_epoch = start_epoch
            self._fetch = _Lookahead(functools.partial(batches._global_batch, start_epoch),
                                     prefetch, length)

        def item(self, index):
            return self._fetch(index)

    return BatchesPyDataset
