"""Input pipeline: decode once into a uint8 cache, then serve shuffled, augmented batches.

Decoding and resizing a JPEG costs far more than reading the same pixels back, so each split is
decoded once by :func:`build_cache` into a memory-mapped ``.npy`` of shape (N, H, W, 3), reused
until its inputs change. :class:`Batches` serves it: the order of epoch ``e`` and the
augmentation of each batch depend only on ``(seed, e, batch)``, so a run resumed at epoch ``k``
sees exactly the batches an uninterrupted run saw. Images stay uint8 until the model, whose
first layers rescale them (and, with :func:`augmentation_layers`, augment them on the device).

Typical use::

    train = Batches(build_cache(paths, root=root, image_size=224, cache_dir=cache), labels,
                    batch_size=64, seed=0, augment=Augment(zoom=0.1))
    model.fit(train.for_keras(start_epoch=k), steps_per_epoch=train.steps_per_epoch,
              initial_epoch=k, epochs=epochs, shuffle=False,
              validation_data=val.for_keras(epochs=1))
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import os
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from workbench._checks import check_choice, check_int, check_number
from workbench._progress import progress as progress_bar
from workbench.data import images
from workbench.data.images import RESIZE_MODES, ImageRejected

CACHE_FORMAT = 2  # bump when the cache layout or the decoding changes, to invalidate old caches
_CHUNK = 32  # images per thread task: large enough to amortise scheduling, small for progress


class CacheBuildError(ValueError):
    """Some images could not be decoded while building a cache; nothing was cached.

    Attributes:
        failures: ``(path, reason)`` for every image that failed, in input order.
    """

    def __init__(self, failures: list[tuple[str, str]]):
        self.failures = failures
        shown = "; ".join(f"{path}: {reason}" for path, reason in failures[:5])
        more = f" (and {len(failures) - 5} more)" if len(failures) > 5 else ""
        super().__init__(f"{len(failures)} image(s) could not be decoded: {shown}{more}")


def build_cache(paths: Sequence[str | os.PathLike], *, root: str | os.PathLike,
                image_size: int | tuple[int, int], resize_mode: str = "squash",
                cache_dir: str | os.PathLike, workers: int | None = None,
                progress: bool = True) -> np.memmap:
    """Decodes and resizes every image once into a memory-mapped uint8 ``.npy`` cache.

    The cache is keyed by a hash of the resolved file paths, their sizes and modification
    times, the image size and the resize mode, and reused while all of them are unchanged.
    Next to ``images-KEY.npy`` lies ``images-KEY.json`` describing it. Both are written to
    temporary files in ``cache_dir`` and renamed into place, the JSON last, so a killed build
    never leaves a cache that is later trusted.

    Args:
        paths: image paths, relative to ``root`` (absolute paths are used as they are).
        root: the folder the paths are relative to.
        image_size: the output side, or ``(height, width)``.
        resize_mode: one of ``images.RESIZE_MODES``: ``"squash"``, ``"crop"`` (center crop)
            or ``"pad"`` (keep the whole image, pad with black).
        cache_dir: folder for the cache files; created if missing.
        workers: decoding threads; defaults to the number of usable CPU cores. Decoding
            releases the GIL, so threads run in parallel.
        progress: show a progress bar while building.

    Returns:
        A read-only ``numpy.memmap`` of shape ``(len(paths), height, width, 3)``, dtype uint8,
        row ``i`` holding ``images.load_array(root / paths[i], image_size, resize_mode)``.

    Raises:
        ValueError: if an argument is invalid, ``paths`` is empty or ``root`` is not a folder.
        FileNotFoundError: if an image file does not exist.
        CacheBuildError: if some images cannot be decoded; it lists every one of them.
    """
    height, width = _check_size(image_size)
    check_choice("resize_mode", resize_mode, RESIZE_MODES)
    workers = _default_workers() if workers is None else check_int("workers", workers, minimum=1)
    if isinstance(paths, (str, os.PathLike)) or len(paths) == 0:
        raise ValueError(f"paths must be a non-empty sequence of paths, received: {paths!r}")
    root = Path(root).resolve()
    if not root.is_dir():
        raise ValueError(f"root must be an existing folder, received: {str(root)!r}")
    files = [root / path for path in paths]
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)

    key = _cache_key(files, (height, width), resize_mode)
    array_path = cache_dir / f"images-{key[:20]}.npy"
    info_path = array_path.with_suffix(".json")
    shape = (len(files), height, width, 3)
    cached = _open_if_valid(array_path, info_path, key, shape)
    if cached is not None:
        return cached

    started = time.perf_counter()
    _write_atomically(array_path, lambda tmp: _decode_into(
        tmp, files, shape, resize_mode, workers, progress))
    info = {"format": CACHE_FORMAT, "key": key, "shape": list(shape), "dtype": "uint8",
            "image_size": [height, width], "resize_mode": resize_mode, "root": str(root),
            "count": len(files), "first": str(paths[0]), "last": str(paths[-1]),
            "build_seconds": round(time.perf_counter() - started, 3),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    _write_atomically(info_path, lambda tmp: Path(tmp).write_text(json.dumps(info, indent=1)))
    return np.load(array_path, mmap_mode="r")


def _check_size(image_size) -> tuple[int, int]:
    if isinstance(image_size, (tuple, list)) and len(image_size) == 2:
        return (check_int("image_size[0]", image_size[0], minimum=1),
                check_int("image_size[1]", image_size[1], minimum=1))
    if isinstance(image_size, (tuple, list)):
        raise ValueError(f"image_size must be an int or (height, width), received: {image_size!r}")
    side = check_int("image_size", image_size, minimum=1)
    return side, side


def _default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _cache_key(files: list[Path], size: tuple[int, int], mode: str) -> str:
    digest = hashlib.sha256(json.dumps([CACHE_FORMAT, list(size), mode]).encode())
    for file in files:
        try:
            stat = os.stat(file)
        except FileNotFoundError as error:
            raise FileNotFoundError(f"image file not found: {str(file)!r}") from error
        digest.update(f"{file}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _open_if_valid(array_path: Path, info_path: Path, key: str, shape: tuple) -> np.memmap | None:
    """The existing cache if its description matches ``key`` and its array ``shape``."""
    try:
        info = json.loads(info_path.read_text())
        if info.get("key") != key:
            return None
        array = np.load(array_path, mmap_mode="r")
    except (OSError, ValueError):  # missing, unreadable or half-written: rebuild
        return None
    return array if array.shape == shape and array.dtype == np.uint8 else None


def _write_atomically(final_path: Path, write) -> None:
    """Calls ``write(temp_path)``, then renames the temp file to ``final_path``."""
    descriptor, temp = tempfile.mkstemp(dir=final_path.parent, prefix=f".{final_path.name}.",
                                        suffix=".tmp")
    os.close(descriptor)
    try:
        write(temp)
        with open(temp, "rb+") as file:  # on disk before the rename makes it trusted
            os.fsync(file.fileno())
        os.replace(temp, final_path)
    except BaseException:
        os.unlink(temp)
        raise


def _decode_into(temp_path: str, files: list[Path], shape: tuple, mode: str, workers: int,
                 show_progress: bool) -> None:
    # Rows go in with pwrite rather than through a memmap, whose page faults and final msync
    # cost a third of a decode; finished chunks are flushed to disk while the workers decode on,
    # so the fsync before the rename finds little left to write.
    offset = np.lib.format.open_memmap(temp_path, mode="w+", dtype=np.uint8, shape=shape).offset
    row_bytes = int(np.prod(shape[1:]))
    failures: dict[int, str] = {}
    descriptor = os.open(temp_path, os.O_WRONLY)

    def decode_chunk(start: int) -> int:
        stop = min(start + _CHUNK, len(files))
        for i in range(start, stop):
            try:
                row = images.load_array(files[i], shape[1:3], mode)
            except ImageRejected as error:
                failures[i] = str(error)
                continue
            if os.pwrite(descriptor, row, offset + i * row_bytes) != row_bytes:
                raise OSError(f"short write to {temp_path}")
        return stop - start

    def flushed(done_counts):
        for count in done_counts:
            os.fdatasync(descriptor)
            yield from itertools.repeat(None, count)

    executor = ThreadPoolExecutor(max_workers=workers)
    try:
        per_image = flushed(executor.map(decode_chunk, range(0, len(files), _CHUNK)))
        if show_progress:
            per_image = progress_bar(per_image, total=len(files), desc="decoding images")
        for _ in per_image:  # waits for the chunks in order, re-raising any worker error
            pass
    finally:  # on Ctrl-C, drop the queued chunks instead of decoding them all first
        executor.shutdown(wait=True, cancel_futures=True)
        os.close(descriptor)
    if failures:
        raise CacheBuildError([(str(files[i]), failures[i]) for i in sorted(failures)])


@dataclass(frozen=True)
class Augment:
    """Cheap augmentation of uint8 batches on the host, seeded by the caller.

    Each image gets one affine resampling (nearest neighbour, in C via PIL) that combines all
    the transforms, so it costs little more than a copy. For heavier or on-device augmentation
    use :func:`augmentation_layers` in the model instead.

    Attributes:
        flip: mirror half of the images left-right. Off by default: digits, letters and other
            handed things must not be flipped.
        zoom: zoom in by up to this fraction: a random window whose side is between
            ``1 - zoom`` and 1 times the image side is resized to the full image.
        translate: shift by up to this fraction of each side, filling with black.
    """

    flip: bool = False
    zoom: float = 0.0
    translate: float = 0.0

    def __post_init__(self):
        if not isinstance(self.flip, bool):
            raise ValueError(f"flip must be True or False, received: {self.flip!r}")
        check_number("zoom", self.zoom, minimum=0.0, maximum=0.9)
        check_number("translate", self.translate, minimum=0.0, maximum=0.9)

    @property
    def enabled(self) -> bool:
        """Whether any transform is switched on."""
        return self.flip or self.zoom > 0 or self.translate > 0

    def apply(self, batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Returns an augmented copy of a uint8 (B, H, W, 3) batch, drawing from ``rng``."""
        if not self.enabled:
            return batch
        count, height, width = batch.shape[:3]
        # Every parameter is drawn for every image, so the draws never depend on the settings
        # of the other transforms.
        scale = 1.0 - rng.uniform(0.0, self.zoom, count)  # window side / image side
        x0, y0 = rng.uniform(0.0, 1.0 - scale, (2, count))  # window corner, fraction of side
        dx, dy = rng.uniform(-self.translate, self.translate, (2, count))
        mirrored = rng.random(count) < 0.5 if self.flip else np.zeros(count, bool)
        out = np.empty_like(batch)
        for i in range(count):
            # PIL maps each output pixel centre (u, v) to the input point (a u + c, e v + f).
            a, c = scale[i], (x0[i] - dx[i]) * width
            if mirrored[i]:
                a, c = -a, width - c
            e, f = scale[i], (y0[i] - dy[i]) * height
            image = Image.frombuffer("RGB", (width, height), np.ascontiguousarray(batch[i]),
                                     "raw", "RGB", 0, 1)
            out[i] = np.asarray(image.transform((width, height), Image.AFFINE, (a, 0, c, 0, e, f),
                                                resample=Image.NEAREST, fillcolor=(0, 0, 0)))
        return out


class Batches:
    """Shuffled, optionally augmented batches from an in-memory or memory-mapped uint8 array.

    The order of epoch ``e`` is ``np.random.default_rng([seed, e]).permutation(n)`` and batch
    ``b`` of it is augmented with ``np.random.default_rng([seed, e, b])``, so every batch is a
    pure function of ``(seed, epoch, index)``: resuming at epoch ``k`` reproduces an
    uninterrupted run. For validation and test splits use ``shuffle=False`` and no augment.

    Args:
        images: uint8 array of shape (N, H, W, 3), e.g. from :func:`build_cache`.
        labels: N integer class indices.
        batch_size: images per batch.
        shuffle: shuffle the order each epoch.
        seed: non-negative seed for the order and the augmentation.
        augment: an :class:`Augment`, or ``None`` for none.
        drop_remainder: drop the last, smaller batch of each epoch.

    Raises:
        ValueError: if an argument is invalid.
    """

    def __init__(self, images: np.ndarray, labels, *, batch_size: int, shuffle: bool = True,
                 seed: int = 0, augment: Augment | None = None, drop_remainder: bool = False):
        if not (isinstance(images, np.ndarray) and images.ndim == 4 and images.shape[-1] == 3
                and images.dtype == np.uint8):
            described = (f"{images.dtype} array of shape {images.shape}"
                         if isinstance(images, np.ndarray) else type(images).__name__)
            raise ValueError(f"images must be a uint8 array of shape (N, H, W, 3), "
                             f"received: {described}")
        labels = np.asarray(labels)
        if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be {len(images)} integers, one per image, received: "
                             f"{labels.dtype} array of shape {labels.shape}")
        self.images = images
        self.labels = labels.astype(np.int32)
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        self.seed = check_int("seed", seed, minimum=0)
        if augment is not None and not isinstance(augment, Augment):
            raise ValueError(f"augment must be an Augment or None, received: {augment!r}")
        self.shuffle = bool(shuffle)
        self.augment = augment
        self.drop_remainder = bool(drop_remainder)
        if drop_remainder and len(images) < batch_size:
            raise ValueError(f"batch_size must be <= the number of images ({len(images)}) when "
                             f"drop_remainder=True, received: {batch_size}")
        if len(images) == 0:
            raise ValueError("images must hold at least one image, received: 0 images")
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
            ``(x, y)``: uint8 images (B, H, W, 3) and int32 labels (B,).

        Raises:
            ValueError: if ``epoch`` or ``index`` is out of range.
        """
        check_int("index", index, minimum=0)
        if index >= self.steps_per_epoch:
            raise ValueError(f"index must be < steps_per_epoch={self.steps_per_epoch}, "
                             f"received: {index}")
        picked = self.order(epoch)[index * self.batch_size:(index + 1) * self.batch_size]
        # The order within a batch does not matter to training; file order reads a memmap
        # sequentially and needs one copy instead of two.
        picked = np.sort(picked)
        return self._augmented(self.images[picked], epoch, index), self.labels[picked]

    def _augmented(self, x: np.ndarray, epoch: int, index: int) -> np.ndarray:
        """Batch ``index`` of ``epoch`` augmented, or ``x`` itself without augmentation."""
        if self.augment is None or not self.augment.enabled:
            return x
        return self.augment.apply(x, np.random.default_rng([self.seed, int(epoch), int(index)]))

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
        or, if they take more than a quarter of the RAM, from the array itself.

        Args:
            start_epoch: the first epoch served.
            epochs: how many epochs to serve, or ``None`` to repeat forever.

        Returns:
            A dataset of ``(uint8 images (B, H, W, 3), int32 labels (B,))``.
        """
        self._stream_length(start_epoch, epochs)
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

        if self.images.nbytes <= _memory_bytes() // 4:
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
            x = gather(picked)
            if self.augment is not None and self.augment.enabled:
                x = tf.numpy_function(self._augmented, [x, epoch, index], tf.uint8,
                                      stateful=False)
            x = tf.ensure_shape(x, (batch_dim,) + self.images.shape[1:])
            return x, tf.ensure_shape(tf.gather(labels, picked), (batch_dim,))

        epochs_served = (tf.data.Dataset.counter(start_epoch) if epochs is None
                         else tf.data.Dataset.range(start_epoch, start_epoch + epochs))
        return (epochs_served.flat_map(epoch_batches)
                .map(make_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
                .prefetch(tf.data.AUTOTUNE))

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


@functools.cache
def _py_dataset_class():
    """Defined on first use so that importing this module does not import Keras."""
    import keras

    class BatchesPyDataset(keras.utils.PyDataset):
        def __init__(self, batches: Batches, start_epoch: int, length: int | None,
                     prefetch: int):
            # Not Keras's workers: their queue keeps what was fetched for its first peek at
            # the data and serves it later, shifting the stream by a batch.
            super().__init__(workers=1)
            self.batches = batches
            self.start_epoch = start_epoch
            self._length = length
            self._fetch = _Lookahead(functools.partial(batches._global_batch, start_epoch),
                                     prefetch, length)

        @property
        def num_batches(self):
            return self._length

        def __getitem__(self, index):
            if self._length is not None and not 0 <= index < self._length:
                raise IndexError(f"index must be in [0, {self._length}), received: {index}")
            return self._fetch(index)

    return BatchesPyDataset


def augmentation_layers(*, flip: bool = False, zoom: float = 0.0, rotation: float = 0.0,
                        translate: float = 0.0, seed: int = 0):
    """Keras preprocessing layers that augment inside the model, on the device.

    Put them right after the model's input so the host only moves uint8 batches. They are
    active only in training (``training=True``); at inference they pass images through.

    Args:
        flip: random horizontal flips (never for digits, letters or other handed images).
        zoom: zoom in by up to this fraction of the side.
        rotation: rotate by up to this fraction of a full turn, either way.
        translate: shift by up to this fraction of each side, either way.
        seed: non-negative seed; each layer gets its own seed derived from it.

    Returns:
        A ``keras.Sequential`` named ``"augmentation"``; empty (identity) if all are off.

    Raises:
        ValueError: if an argument is out of range.
    """
    if not isinstance(flip, bool):
        raise ValueError(f"flip must be True or False, received: {flip!r}")
    zoom = check_number("zoom", zoom, minimum=0.0, maximum=0.9)
    rotation = check_number("rotation", rotation, minimum=0.0, maximum=0.5)
    translate = check_number("translate", translate, minimum=0.0, maximum=0.9)
    seed = check_int("seed", seed, minimum=0)
    import keras

    layers = []
    if flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if zoom:  # a negative factor zooms in, so no border has to be invented
        layers.append(keras.layers.RandomZoom((-zoom, 0.0), seed=seed + 1))
    if rotation:
        layers.append(keras.layers.RandomRotation(rotation, seed=seed + 2))
    if translate:
        layers.append(keras.layers.RandomTranslation(translate, translate, seed=seed + 3))
    return keras.Sequential(layers, name="augmentation")
