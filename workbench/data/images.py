"""Decoding, validating and resizing one image: the single place that turns bytes into pixels.

Scanning, the input pipeline and prediction all call :func:`open_image` and :func:`resize`, so an
image is read the same way in training and in use: fully decoded (truncation is caught), EXIF
orientation applied, any mode (CMYK, 16-bit, palette, grey, alpha) converted to 8-bit RGB.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from workbench._checks import check_choice, check_int

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
RESIZE_MODES = ("squash", "crop", "pad")
DEFAULT_MAX_PIXELS = 64_000_000  # 8000 x 8000; larger headers are treated as decompression bombs


class ImageRejected(ValueError):
    """An input that is not a usable image.

    Attributes:
        reason: a short machine-readable reason, one of ``REASONS``.
        detail: a human-readable sentence.
    """

    REASONS = ("zero bytes", "not an image", "truncated or corrupt", "decompression bomb",
               "too small", "unreadable")

    def __init__(self, reason: str, detail: str = ""):
        assert reason in self.REASONS, reason
        self.reason = reason
        self.detail = detail or reason
        super().__init__(f"{reason}: {self.detail}" if detail else reason)


def open_image(source, *, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = 1,
               draft_size: int | None = None) -> Image.Image:
    """Opens, fully decodes and normalises one image to 8-bit RGB.

    Args:
        source: a path, ``bytes``, a binary file object, a ``PIL.Image`` or a uint8 NumPy array
            (H, W), (H, W, 3) or (H, W, 4).
        max_pixels: images whose header claims more pixels are rejected before decoding.
        min_side: images whose shorter side is smaller are rejected.
        draft_size: if given, JPEGs may be decoded at a reduced scale (a power of two) that still
            leaves both sides at least this large; the whole stream is still decoded.

    Returns:
        An RGB ``PIL.Image`` with EXIF orientation applied.

    Raises:
        ImageRejected: with a ``reason`` saying why the input is not a usable image.
        TypeError: if ``source`` is of an unsupported type.
    """
    if isinstance(source, np.ndarray):
        return _from_array(source)
    if isinstance(source, Image.Image):
        return _to_rgb(ImageOps.exif_transpose(source))
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageRejected("zero bytes", "the data is empty")
        stream = io.BytesIO(source)
    elif isinstance(source, (str, os.PathLike)):
        try:
            if os.path.getsize(source) == 0:
                raise ImageRejected("zero bytes", f"{source} is empty")
            stream = open(source, "rb")
        except OSError as error:
            raise ImageRejected("unreadable", str(error)) from error
    elif hasattr(source, "read"):
        stream = source
    else:
        raise TypeError("source must be a path, bytes, a file object, a PIL image or a NumPy "
                        f"array, received: {type(source).__name__}")
    with stream:
        try:
            image = Image.open(stream)
        except Image.DecompressionBombError as error:
            raise ImageRejected("decompression bomb", str(error)) from error
        except (OSError, ValueError, SyntaxError) as error:  # PIL's "cannot identify image file"
            raise ImageRejected("not an image", str(error)) from error
        if image.width * image.height > max_pixels:
            raise ImageRejected("decompression bomb",
                                f"{image.width}x{image.height} exceeds max_pixels={max_pixels}")
        if min(image.width, image.height) < min_side:
            raise ImageRejected("too small",
                                f"{image.width}x{image.height} is below min_side={min_side}")
        if draft_size and image.format == "JPEG":
            image.draft("RGB", (draft_size, draft_size))
        try:
            image.load()
        except Image.DecompressionBombError as error:
            raise ImageRejected("decompression bomb", str(error)) from error
        except (OSError, ValueError, SyntaxError, EOFError) as error:
            raise ImageRejected("truncated or corrupt", str(error)) from error
    try:  # in place: the copy exif_transpose otherwise makes costs a fifth of a decode
        ImageOps.exif_transpose(image, in_place=True)
    except (OSError, ValueError, SyntaxError) as error:  # a broken EXIF block
        raise ImageRejected("truncated or corrupt", f"bad EXIF data: {error}") from error
    return _to_rgb(image)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Converts any PIL mode to 8-bit RGB; transparency is composited on white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or pixels.max(initial=0) > 255 else 255.0
        grey = np.clip(pixels * (255.0 / top), 0, 255).round().astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _from_array(array: np.ndarray) -> Image.Image:
    if array.dtype != np.uint8:
        raise TypeError(f"a NumPy image must be uint8, received dtype: {array.dtype}")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4)):
        return _to_rgb(Image.fromarray(array))
    raise TypeError(f"a NumPy image must be (H, W), (H, W, 3) or (H, W, 4), "
                    f"received shape: {array.shape}")


def resize(image: Image.Image, size: int | tuple[int, int], mode: str = "squash") -> Image.Image:
    """Resizes to exactly ``size`` the way DIGITS did.

    Args:
        image: an RGB image.
        size: the output side, or ``(height, width)``.
        mode: ``"squash"`` (stretch to size, ignoring aspect), ``"crop"`` (scale the shorter side
            to fit, then center-crop) or ``"pad"`` (scale the longer side to fit, then pad with
            black, keeping the whole image).

    Returns:
        An image of exactly ``size``. Shrinking averages the pixels each output pixel covers (a
        box or area filter, antialiased like OpenCV's ``INTER_AREA``); enlarging is bilinear.
    """
    check_choice("mode", mode, RESIZE_MODES)
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    check_int("size", height, minimum=1), check_int("size", width, minimum=1)
    x_scale, y_scale = width / image.width, height / image.height  # output / input per axis
    if mode != "squash":  # one scale for both axes: fit the shorter side (crop) or longer (pad)
        x_scale = y_scale = (max if mode == "crop" else min)(x_scale, y_scale)
    # Box costs ~60% of Pillow's antialiased bilinear (the largest cost after decoding); it
    # leaves a little more aliasing below 2x shrinking. Enlarging, it is nearest neighbour.
    method = Image.BOX if max(x_scale, y_scale) <= 1 else Image.BILINEAR
    if mode == "squash":
        return image.resize((width, height), method, reducing_gap=3.0)
    if mode == "crop":
        return ImageOps.fit(image, (width, height), method)
    return ImageOps.pad(image, (width, height), method, color=(0, 0, 0))


def load_array(source, size: int | tuple[int, int], mode: str = "squash", *,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Opens, validates and resizes an image to a uint8 array of shape (height, width, 3)."""
    side = size if isinstance(size, int) else max(size)
    image = open_image(source, max_pixels=max_pixels, draft_size=side)
    return np.asarray(resize(image, size, mode), dtype=np.uint8)


def is_image_name(path: str | Path) -> bool:
    """Whether a file name has one of the image extensions, in any case."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS
