"""Input pipeline: decode once into a uint8 cache, then serve shuffled, augmented batches.

Decoding and resizing a JPEG costs far more than reading the same pixels back, so each split is
decoded once by :func:`build_cache` into a memory-mapped ``.npy`` of shape (N, H, W, 3), reused
until its inputs change. :class:`Batches` serves it: the order of epoch ``e`` and the
augmentation of each batch depend only on ``(seed, e, batch)``, so a run resumed at epoch ``k``
sees exactly the batches an uninterrupted run saw. Images stay uint8 until the model, whose
first layers rescale them (and, with ``workbench.models.RandomAugment``, augment them on the
device: see :class:`Augment` for its two placements).

Typical use, the training images cached 15% larger than the model's input for crops::

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
import hashlib
import itertools
import json
import os
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workbench._checks import check_bool, check_choice, check_int, check_number
from workbench._io import atomic_path, remove_stale_temporaries
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
    never leaves a cache that is later trusted; the next build removes such a build's
    temporary files (those of processes still running stay).

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
    remove_stale_temporaries(cache_dir)  # half-built caches of killed processes (not live ones)

    key = _cache_key(files, (height, width), resize_mode)
    array_path = cache_dir / f"images-{key[:20]}.npy"
    info_path = array_path.with_suffix(".json")
    shape = (len(files), height, width, 3)
    cached = _open_if_valid(array_path, info_path, key, shape)
    if cached is not None:
        return cached

    started = time.perf_counter()
    with atomic_path(array_path, fsync=True) as temporary:  # on disk before it is trusted
        _decode_into(temporary, files, shape, resize_mode, workers, progress)
    info = {"format": CACHE_FORMAT, "key": key, "shape": list(shape), "dtype": "uint8",
            "image_size": [height, width], "resize_mode": resize_mode, "root": str(root),
            "count": len(files), "first": str(paths[0]), "last": str(paths[-1]),
            "build_seconds": round(time.perf_counter() - started, 3),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    with atomic_path(info_path, fsync=True) as temporary:
        temporary.write_text(json.dumps(info, indent=1))
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


def _decode_into(temp_path: Path, files: list[Path], shape: tuple, mode: str, workers: int,
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


PLACEMENTS = ("auto", "pipeline", "model")
FEW_IMAGES_PER_CLASS = 100  # fewer training images than this in the median class: augment
AUGMENT_DRAWS = 9  # uniform numbers drawn per image by Augment.params, in its order
_GREY = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma weights


@dataclass(frozen=True)
class Augment:
    """Random resized crops, flips, rotation and colour changes of training images.

    One definition, two placements that draw the same distribution of transforms:

    - ``"pipeline"``: :class:`Batches` applies it on the host in NumPy (nearest-neighbour
      resampling in one gather per batch), so any model can take the batches;
    - ``"model"``: :class:`Batches` only cuts the window described below (a copy of whole
      rows, as fast as serving plain batches) and the model's first layer,
      ``workbench.models.RandomAugment``, does the rest on the accelerator (bilinear).

    The training images are cached ``margin`` times larger than the model's input (never
    larger than the images themselves: see :func:`stored_size`). Each training image is then,
    in this order: a random window of the model's input size cut from the stored image at its
    stored resolution (a shift of up to ``margin - 1`` of the side), a random crop of that
    window (``scale`` of its area, aspect ratio in ``ratio``) rotated by up to ``rotation``
    degrees about its centre, resized to the model's input and mirrored (if ``flip``); then
    brightness, contrast and saturation change by random factors. Parameters are drawn per
    image from the batch's seed, so batches stay a pure function of ``(seed, epoch, batch)``.

    Attributes:
        scale: ``(min, max)`` area of the crop as a fraction of the window's.
        ratio: ``(min, max)`` aspect ratio (width / height) of the crop, drawn log-uniformly.
        flip: mirror half of the images left-right. Off by default: digits, letters, text and
            other handed things must not be flipped; switch it on for photos of objects.
        rotation: rotate by up to this many degrees either way (0 to 45).
        brightness: multiply the pixels by a factor in ``[1 - brightness, 1 + brightness]``.
        contrast: scale the distance to the image's mean grey by a factor in
            ``[1 - contrast, 1 + contrast]``.
        saturation: scale each pixel's distance to its own grey by a factor in
            ``[1 - saturation, 1 + saturation]`` (0 makes the image grey).
        margin: how much larger than the model's input the training images are cached
            (1 to 2; 1 for no shifts).
        placement: ``"pipeline"``, ``"model"`` or ``"auto"``: in the model when a GPU is
            visible, else in the pipeline (``finetune`` decides; :class:`Batches` treats
            ``"auto"`` as ``"pipeline"``).
    """

    scale: tuple = (0.5, 1.0)
    ratio: tuple = (3 / 4, 4 / 3)
    flip: bool = False
    rotation: float = 10.0
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    margin: float = 1.15
    placement: str = "auto"

    def __post_init__(self):
        set_field = functools.partial(object.__setattr__, self)  # frozen: normalise in place
        set_field("scale", _check_range("scale", self.scale, minimum=0.01, maximum=1.0))
        set_field("ratio", _check_range("ratio", self.ratio, minimum=0.1, maximum=10.0))
        check_bool("flip", self.flip)
        set_field("rotation", check_number("rotation", self.rotation, minimum=0.0, maximum=45.0))
        for name in ("brightness", "contrast", "saturation"):
            set_field(name, check_number(name, getattr(self, name), minimum=0.0, maximum=1.0))
        set_field("margin", check_number("margin", self.margin, minimum=1.0, maximum=2.0))
        check_choice("placement", self.placement, PLACEMENTS)

    @property
    def enabled(self) -> bool:
        """Whether anything but the window shift changes the images."""
        return (self.scale != (1.0, 1.0) or self.ratio != (1.0, 1.0) or self.flip
                or self.rotation > 0 or self.recolours)

    @property
    def recolours(self) -> bool:
        """Whether brightness, contrast or saturation change."""
        return self.brightness > 0 or self.contrast > 0 or self.saturation > 0

    def params(self, uniform, xp=np) -> dict:
        """The transform of each image, from ``AUGMENT_DRAWS`` uniform numbers per image.

        Both placements call this, with NumPy or with ``keras.ops`` as ``xp``: that is what
        makes them draw the same distribution.

        Args:
            uniform: numbers in [0, 1) of shape ``(AUGMENT_DRAWS, count)``.
            xp: ``numpy`` or ``keras.ops``.

        Returns:
            A dict of arrays of shape ``(count,)``: the crop's ``left``, ``top``, ``width`` and
            ``height`` as fractions of the window's sides; ``mirrored`` (1.0 or 0.0);
            ``angle`` in radians; ``brightness``, ``contrast`` and ``saturation`` factors.
        """
        u = [uniform[i] for i in range(AUGMENT_DRAWS)]
        (lowest, highest), (narrowest, widest) = self.scale, np.log(self.ratio)
        area = lowest + (highest - lowest) * u[0]
        ratio = xp.exp(narrowest + (widest - narrowest) * u[1])
        width = xp.minimum(xp.sqrt(area * ratio), 1.0)
        height = xp.minimum(xp.sqrt(area / ratio), 1.0)
        return {"left": (1.0 - width) * u[2], "top": (1.0 - height) * u[3],
                "width": width, "height": height,
                "mirrored": xp.floor(2.0 * u[4]) * (1.0 if self.flip else 0.0),
                "angle": (2.0 * u[5] - 1.0) * float(np.radians(self.rotation)),
                "brightness": 1.0 + (2.0 * u[6] - 1.0) * self.brightness,
                "contrast": 1.0 + (2.0 * u[7] - 1.0) * self.contrast,
                "saturation": 1.0 + (2.0 * u[8] - 1.0) * self.saturation}

    @staticmethod
    def affine(params: dict, window: tuple[int, int], size: tuple[int, int], xp=np) -> list:
        """Where each output pixel comes from in the window, for ``params``.

        Args:
            params: from :meth:`params`.
            window: ``(height, width)`` of the window the crop is cut from.
            size: ``(height, width)`` of the output.
            xp: ``numpy`` or ``keras.ops``.

        Returns:
            ``[a0, a1, a2, b0, b1, b2]``: output pixel ``(x, y)`` (column, row; pixel centres
            at integers) samples the window at ``(a0 x + a1 y + a2, b0 x + b1 y + b2)``, the
            convention of ``keras.ops.image.affine_transform``.
        """
        (window_h, window_w), (out_h, out_w) = window, size
        sign = 1.0 - 2.0 * params["mirrored"]
        cos, sin = xp.cos(params["angle"]), xp.sin(params["angle"])
        # offsets from the crop's centre in window pixels: du = kx x + ex, dv = ky y + ey
        kx = sign * params["width"] * (window_w / out_w)
        ex = sign * params["width"] * window_w * (0.5 / out_w - 0.5)
        ky = params["height"] * (window_h / out_h)
        ey = params["height"] * window_h * (0.5 / out_h - 0.5)
        cx = (params["left"] + 0.5 * params["width"]) * window_w - 0.5  # pixel-centre units
        cy = (params["top"] + 0.5 * params["height"]) * window_h - 0.5
        return [cos * kx, -sin * ky, cx + cos * ex - sin * ey,
                sin * kx, cos * ky, cy + sin * ex + cos * ey]

    @staticmethod
    def recolour_terms(params: dict, mean_grey, xp=np) -> tuple:
        """Brightness, contrast and saturation as ``out = a x + b grey(x) + c`` per image.

        Brightness multiplies by ``f_b``; contrast then scales the distance to the mean grey
        ``m`` (``f_b mean_grey``) by ``f_c``; saturation then scales each pixel's distance to
        its grey by ``f_s``. All three are linear, so together
        ``a = f_s f_c f_b``, ``b = (1 - f_s) f_c f_b`` and ``c = (1 - f_c) m``.

        Returns:
            ``(a, b, c)``, each of shape ``(count,)``.
        """
        scaled = params["contrast"] * params["brightness"]
        return (params["saturation"] * scaled, (1.0 - params["saturation"]) * scaled,
                (1.0 - params["contrast"]) * params["brightness"] * mean_grey)

    def apply(self, batch: np.ndarray, rng: np.random.Generator, *,
              size: int | tuple[int, int] | None = None) -> np.ndarray:
        """Augments a uint8 (B, H, W, 3) batch in the pipeline placement, drawing from ``rng``.

        Args:
            batch: the stored images.
            rng: the generator of this batch.
            size: the output side or ``(height, width)``; default the batch's own size.

        Returns:
            A new uint8 array of shape (B, height, width, 3).
        """
        size = tuple(batch.shape[1:3]) if size is None else _check_size(size)
        if size[0] > batch.shape[1] or size[1] > batch.shape[2]:
            raise ValueError(f"size must not exceed the batch's {batch.shape[1]}x"
                             f"{batch.shape[2]}, received: {size!r}")
        return _augmented_rows(batch, np.arange(len(batch)), self, rng, size)


def _check_range(name: str, value, *, minimum: float, maximum: float) -> tuple[float, float]:
    if not (isinstance(value, (tuple, list)) and len(value) == 2):
        raise ValueError(f"{name} must be a (min, max) pair, received: {value!r}")
    low = check_number(f"{name}[0]", value[0], minimum=minimum, maximum=maximum)
    high = check_number(f"{name}[1]", value[1], minimum=minimum, maximum=maximum)
    if low > high:
        raise ValueError(f"{name} must be (min, max) with min <= max, received: {value!r}")
    return low, high


def _window_offsets(rng: np.random.Generator | None, count: int, stored: tuple[int, int],
                    size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Top-left corners of the windows: uniform integers with ``rng``, else centred."""
    spare_h, spare_w = stored[0] - size[0], stored[1] - size[1]
    if rng is None:
        return np.full(count, spare_h // 2), np.full(count, spare_w // 2)
    return rng.integers(0, spare_h + 1, count), rng.integers(0, spare_w + 1, count)


def _windows(images: np.ndarray, rows: np.ndarray, top: np.ndarray, left: np.ndarray,
             size: tuple[int, int]) -> np.ndarray:
    """``images[rows[i], top[i]:top[i] + h, left[i]:left[i] + w]`` for every i, as one
    gather: a strided view lists every window of every image, and indexing it copies whole
    rows of pixels."""
    height, width = size
    count, stored_h, stored_w, channels = images.shape
    strides = images.strides
    every = np.lib.stride_tricks.as_strided(
        images, shape=(count, stored_h - height + 1, stored_w - width + 1, height, width,
                       channels),
        strides=(strides[0], strides[1], strides[2], strides[1], strides[2], strides[3]),
        writeable=False)
    return every[rows, top, left]


def _nearest(a, b, c, size: tuple[int, int], length: int, dtype) -> np.ndarray:
    """Nearest pixel index ``round(a x + b y + c)`` of every output pixel ``(x, y)`` of
    ``size``, clamped to ``[0, length)`` (the edge pixels fill what lies outside, as
    ``keras.ops.image.affine_transform(fill_mode="nearest")``); ``a``, ``b``, ``c`` hold one
    value per image."""
    height, width = size
    xs, ys = np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32)
    corners = a[:, None] * np.array([0, width - 1, 0, width - 1], np.float32) + \
        b[:, None] * np.array([0, 0, height - 1, height - 1], np.float32) + c[:, None] + 0.5
    inside = corners.min() >= 0 and corners.max() < length  # an affine map peaks at corners
    if not b.any():  # one index per column, the same in every row
        index = np.floor(a[:, None] * xs + (c[:, None] + 0.5)).astype(dtype)[:, None, :]
    elif not a.any():  # one index per row
        index = np.floor(b[:, None] * ys + (c[:, None] + 0.5)).astype(dtype)[:, :, None]
    else:
        coordinate = (a[:, None, None] * xs + (c[:, None, None] + 0.5)) + \
            (b[:, None, None] * ys[:, None])
        index = np.floor(coordinate, out=coordinate).astype(dtype)
    return index if inside else np.clip(index, 0, length - 1, out=index)


def _augmented_rows(images: np.ndarray, rows: np.ndarray, augment: Augment,
                    rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """The pipeline placement: ``augment`` applied to ``images[rows]`` in one nearest-neighbour
    gather from the stored images (window, crop, rotation and flip together), then colour."""
    count, (stored_h, stored_w) = len(rows), images.shape[1:3]
    top, left = _window_offsets(rng, count, (stored_h, stored_w), size)
    params = augment.params(rng.random((AUGMENT_DRAWS, count)))
    a0, a1, a2, b0, b1, b2 = (np.asarray(term, np.float32) * np.ones(count, np.float32)
                              for term in Augment.affine(params, size, size))
    dtype = np.int32 if images.size // 3 < 2 ** 31 else np.int64
    # pixel = (row * stored_h + line) * stored_w + column, each part broadcast (B, h, w)
    pixel = _nearest(b0, b1, b2 + top.astype(np.float32), size, stored_h, dtype)
    pixel = (pixel + (rows.astype(dtype) * stored_h)[:, None, None]) * stored_w
    pixel = pixel + _nearest(a0, a1, a2 + left.astype(np.float32), size, stored_w, dtype)
    # Pixels as 3-byte items: one take moves whole pixels, three times fewer items than bytes.
    as_pixels = np.ascontiguousarray(images).view(np.dtype((np.void, 3))).reshape(-1)
    out = np.take(as_pixels, pixel.reshape(-1)).view(np.uint8).reshape(count, *size, 3)
    return _recoloured(out, augment, params) if augment.recolours else out


def _recoloured(batch: np.ndarray, augment: Augment, params: dict) -> np.ndarray:
    count = len(batch)
    mean_grey = np.empty(count)
    for i in range(count):  # a few image means: a strided sample is enough and far cheaper
        mean_grey[i] = (batch[i, ::4, ::4].reshape(-1, 3) @ np.asarray(_GREY)).mean()
    a, b, c = (np.asarray(term, np.float32) * np.ones(count, np.float32)
               for term in Augment.recolour_terms(params, mean_grey))
    out = np.empty_like(batch)
    grey_weights = np.asarray(_GREY, np.float32)
    for i in range(count):  # image by image, so the float copies stay in the CPU's caches
        pixels = batch[i].astype(np.float32)
        grey = pixels @ grey_weights
        grey *= b[i]
        grey += c[i] + 0.5  # + 0.5: the conversion to uint8 below truncates, so this rounds
        pixels *= a[i]
        pixels += grey[..., None]
        out[i] = np.clip(pixels, 0, 255.0, out=pixels)
    return out


def stored_size(image_size: int, margin: float, short_sides=None) -> int:
    """The side training images are cached at for augmentation with ``margin``.

    ``round(margin * image_size)``, but no larger than the median shorter side of the
    original images (when given): a cache larger than the images would only hold upsampled
    pixels, and the crops would gain no detail. Never smaller than ``image_size``.

    Args:
        image_size: the model's input side.
        margin: see :attr:`Augment.margin`.
        short_sides: the shorter side of each original image, or None if unknown.

    Returns:
        The side in pixels.
    """
    check_int("image_size", image_size, minimum=1)
    check_number("margin", margin, minimum=1.0, maximum=2.0)
    side = int(round(margin * image_size))
    if short_sides is not None:
        sides = np.asarray(short_sides, dtype=np.float64)
        sides = sides[np.isfinite(sides)]
        if len(sides):
            side = min(side, int(np.median(sides)))
    return max(side, image_size)


def few_images(labels) -> bool:
    """Whether a training split is small enough that augmentation is on by default.

    The rule: fewer than ``FEW_IMAGES_PER_CLASS`` (100) training images in the median class.

    Args:
        labels: the class index of each training image.
    """
    counts = np.unique(np.asarray(labels), return_counts=True)[1]
    if len(counts) == 0:
        raise ValueError("labels must hold at least one label, received: none")
    return float(np.median(counts)) < FEW_IMAGES_PER_CLASS


def augment_argument(value) -> Augment | str | None:
    """What an ``augment`` option typed as text means (a notebook parameter, a command line).

    Args:
        value: ``"auto"`` (on when :func:`few_images`), ``"on"``, ``"off"`` (or ``"none"``,
            ``""``, None), optionally followed by ``+flip`` and/or ``+model`` / ``+pipeline``
            (``"on+flip"``, ``"auto+flip+model"``); or an :class:`Augment`, returned as is.

    Returns:
        An :class:`Augment` for ``"on"``; ``"auto"`` alone or ``("auto", Augment)`` as
        :func:`resolve_augment` takes it; None for off.

    Raises:
        ValueError: for any other value.
    """
    if value is None or isinstance(value, Augment):
        return value
    if not isinstance(value, str):
        raise ValueError(f"augment must be 'auto', 'on', 'off' or an Augment, received: "
                         f"{value!r}")
    words = [word.strip().lower() for word in value.replace(",", "+").split("+")]
    mode, options = words[0] or "off", words[1:]
    unknown = [word for word in options if word not in ("flip", "model", "pipeline")]
    if mode not in ("auto", "on", "off", "none") or unknown or len(set(options)) < len(options):
        raise ValueError(f"augment must be 'auto', 'on' or 'off', optionally followed by "
                         f"'+flip' and '+model' or '+pipeline', received: {value!r}")
    if mode in ("off", "none"):
        if options:
            raise ValueError(f"augment 'off' takes no options, received: {value!r}")
        return None
    placements = [word for word in options if word != "flip"]
    if len(placements) > 1:
        raise ValueError(f"augment takes one placement, received: {value!r}")
    augment = Augment(flip="flip" in options, placement=placements[0] if placements else "auto")
    if mode == "on":
        return augment
    return "auto" if augment == Augment() else ("auto", augment)


def resolve_augment(augment, labels) -> Augment | None:
    """The augmentation a training run uses.

    Args:
        augment: an :class:`Augment` or None (used as they are); ``"auto"`` (``Augment()``
            when :func:`few_images` says so, else None); ``("auto", Augment(...))`` (that
            augmentation when :func:`few_images`); or a text :func:`augment_argument` takes.
        labels: the class index of each training image.

    Returns:
        An :class:`Augment` or None.
    """
    augment = augment_argument(augment) if isinstance(augment, str) else augment
    if augment == "auto":
        augment = ("auto", Augment())
    if isinstance(augment, tuple) and len(augment) == 2 and augment[0] == "auto" \
            and isinstance(augment[1], Augment):
        return augment[1] if few_images(labels) else None
    if augment is None or isinstance(augment, Augment):
        return augment
    raise ValueError(f"augment must be an Augment, None, 'auto' or a text such as 'on+flip', "
                     f"received: {augment!r}")


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
        images: uint8 array of shape (N, H, W, 3), e.g. from :func:`build_cache`.
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
        self.image_size = tuple(images.shape[1:3]) if image_size is None \
            else _check_size(image_size)
        if self.image_size[0] > images.shape[1] or self.image_size[1] > images.shape[2]:
            raise ValueError(f"image_size must not exceed the stored images' "
                             f"{images.shape[1]}x{images.shape[2]}, received: {image_size!r}")
        self.shard = _check_shard(shard, self.batch_size, drop_remainder or pad_to > 1)
        self.pad_to = check_int("pad_to", pad_to, minimum=1)
        if pad_to > 1 and (self.batch_size % pad_to or pad_to % self.shard[1]):
            raise ValueError(f"pad_to must divide batch_size={self.batch_size} and be a "
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
        check_int("index", index, minimum=0)
        if index >= self.steps_per_epoch:
            raise ValueError(f"index must be < steps_per_epoch={self.steps_per_epoch}, "
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
        x, y = self._images_of(picked, epoch, index), self.labels[picked]
        return (x, y, weights) if self.pad_to > 1 else (x, y)

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
            return _augmented_rows(self.images, picked, self.augment, rng, self.image_size)
        top, left = _window_offsets(rng, len(picked), stored, self.image_size)
        return _windows(self.images, picked, top, left, self.image_size)

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
        if self.shard != (0, 1) or self.pad_to > 1:
            raise ValueError("as_tf_dataset serves whole batches: TensorFlow's strategies "
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
        return (epochs_served.flat_map(epoch_batches)
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
        raise ValueError(f"shard must be (index, count) with 0 <= index < count, "
                         f"received: {shard!r}")
    if shard[1] > 1 and (batch_size % shard[1] or not whole_batches):
        raise ValueError(f"batch_size must be a multiple of the {shard[1]} shards, and the "
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
