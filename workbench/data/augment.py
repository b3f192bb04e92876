"""Augmentation of training images: :class:`Augment`, its pipeline placement, and the rules.

One definition, two placements: :class:`Augment` applied on the host in NumPy (the batches of
:class:`workbench.data.pipeline.Batches`) or inside the model
(``workbench.models.RandomAugment``), both drawing the same distribution of transforms.
:func:`augment_argument` reads the option as typed (``"auto"``, ``"on+flip"``, ...) and
:func:`resolve_augment` decides what a training run uses (:func:`few_images`: augment small
training sets by default).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from workbench._checks import UsageError, check_bool, check_choice, check_int, check_number
from workbench.data.images import check_image_size

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
        size = tuple(batch.shape[1:3]) if size is None else check_image_size(size)
        if size[0] > batch.shape[1] or size[1] > batch.shape[2]:
            raise UsageError(f"size must not exceed the batch's {batch.shape[1]}x"
                             f"{batch.shape[2]}, received: {size!r}")
        return augmented_rows(batch, np.arange(len(batch)), self, rng, size)


def _check_range(name: str, value, *, minimum: float, maximum: float) -> tuple[float, float]:
    if not (isinstance(value, (tuple, list)) and len(value) == 2):
        raise UsageError(f"{name} must be a (min, max) pair, received: {value!r}")
    low = check_number(f"{name}[0]", value[0], minimum=minimum, maximum=maximum)
    high = check_number(f"{name}[1]", value[1], minimum=minimum, maximum=maximum)
    if low > high:
        raise UsageError(f"{name} must be (min, max) with min <= max, received: {value!r}")
    return low, high


def window_offsets(rng: np.random.Generator | None, count: int, stored: tuple[int, int],
                    size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Top-left corners of the windows: uniform integers with ``rng``, else centred."""
    spare_h, spare_w = stored[0] - size[0], stored[1] - size[1]
    if rng is None:
        return np.full(count, spare_h // 2), np.full(count, spare_w // 2)
    return rng.integers(0, spare_h + 1, count), rng.integers(0, spare_w + 1, count)


def windows(images: np.ndarray, rows: np.ndarray, top: np.ndarray, left: np.ndarray,
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


def augmented_rows(images: np.ndarray, rows: np.ndarray, augment: Augment,
                    rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """The pipeline placement: ``augment`` applied to ``images[rows]`` in one nearest-neighbour
    gather from the stored images (window, crop, rotation and flip together), then colour."""
    count, (stored_h, stored_w) = len(rows), images.shape[1:3]
    top, left = window_offsets(rng, count, (stored_h, stored_w), size)
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
        raise UsageError("labels must hold at least one label, received: none")
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
        raise UsageError(f"augment must be 'auto', 'on', 'off' or an Augment, received: "
                         f"{value!r}")
    words = [word.strip().lower() for word in value.replace(",", "+").split("+")]
    mode, options = words[0] or "off", words[1:]
    unknown = [word for word in options if word not in ("flip", "model", "pipeline")]
    if mode not in ("auto", "on", "off", "none") or unknown or len(set(options)) < len(options):
        raise UsageError(f"augment must be 'auto', 'on' or 'off', optionally followed by "
                         f"'+flip' and '+model' or '+pipeline', received: {value!r}")
    if mode in ("off", "none"):
        if options:
            raise UsageError(f"augment 'off' takes no options, received: {value!r}")
        return None
    placements = [word for word in options if word != "flip"]
    if len(placements) > 1:
        raise UsageError(f"augment takes one placement, received: {value!r}")
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
    raise UsageError(f"augment must be an Augment, None, 'auto' or a text such as 'on+flip', "
                     f"received: {augment!r}")
