"""Decoding, validating and resizing one image: the single place that turns bytes into pixels.

Scanning, the input pipeline and prediction all call :func:`decode` (or :func:`open_image`) and
:func:`resize` (the cache build and prediction through :func:`load_array`), so an image is read
the same way in training and in use: fully decoded (truncation is caught), EXIF orientation
applied, any mode (CMYK, 16-bit, float, palette, grey, alpha) converted to 8-bit RGB.

**JPEGs at the size they are used.** A JPEG is decoded by libjpeg at 1/2, 1/4 or 1/8 scale when
the resize that follows needs no more (:func:`draft_jpeg`: the smallest such scale for the
output size and resize mode, turned with the EXIF orientation), then resized once; every byte
is still entropy-decoded, so damage is caught as by a full decode. :func:`resize` approaches
the exact area resize: measured against it (``benchmarks/jpeg_decode.py``: synthetic photos of
500x375 to 4000x3000 px and three real ones, quality 90, at 160-448 px), the draft decode then
the resize keeps 41-54 dB of PSNR, within 1.2 dB of the full decode then the same resize on
the synthetic photos and at most 6.2 dB below it on the real ones (grace_hopper at 160 px: 42.0
dB against 48.2), where the box filter used before kept 33-47 dB at non-integer shrinks.
Progressive, greyscale and CMYK JPEGs are drafted alike (libjpeg scales them too).

**Formats.** Only :data:`ACCEPTED_FORMATS` are read: JPEG, PNG, WebP, GIF, BMP and TIFF. Every
file from outside is opened by :func:`open_header` (scan, the cache build, prediction, the web
service's memory estimate), which hands Pillow that list, so none of the forty other formats
Pillow knows is ever parsed: some allocate whatever their header claims (BLP, DDS), EPS runs
Ghostscript. Such a file is rejected as ``"unsupported format"``, naming its format.

**Images deeper than 8 bits** (PIL modes ``I;16*``, ``I``, ``F``: 12/16/32-bit integer and
32-bit float greyscale; 16-bit colour is reduced by Pillow itself) are mapped linearly from the
range the file declares to 0..255, so that what the file says is kept:

=====================================  ====================================================
the file holds                         maps to 0..255 (black..white)
=====================================  ====================================================
unsigned N-bit integers                0..2**N - 1 (N from the TIFF's BitsPerSample, so 12-bit
                                       data is 0..4095), or the TIFF's Min/MaxSampleValue
signed N-bit integers                  0..2**(N-1) - 1 (negative values have no brightness)
32-bit floats                          0..1 (the only range a float image is taken to have)
a TIFF with SMin/SMaxSampleValue       that declared range
``I`` without a declared depth         0..65535 (as Pillow scales 16-bit PPM/PGM; also an
                                       ``I`` image made in memory)
=====================================  ====================================================

A TIFF with WhiteIsZero photometry is inverted; a grey value declared transparent (PNG tRNS) is
composited on white, as for every other mode. An image is rejected as ``"unusable pixel values"``
rather than trained on as a black or clipped picture when its values are not finite, lie more than
1% of the range outside it (a float image in -3.14..3.14, a signed image with negative values),
or when 99.9% of its pixels fall in the darkest 1/16 of the range (16-bit values 291..694 would
all be 8-bit levels 1..3), or when its values vary but the middle 99.8% of them spans fewer than
8 of the 256 levels (16-bit values 7301..8206 would all be levels 28..32: flat grey). Such images
need a deliberate conversion (a contrast stretch, a chosen window) before the workbench can use
them: stretching each image by its own minimum and maximum would give the same value another
grey in every image, and another at prediction than in training.

**What the decoders say.** Pillow reports a damaged TIFF tag or EXIF block with a Python
warning per tag, and libtiff prints its errors on the C ``stderr``; for a damaged file that could
be hundreds of lines before its one-line reason. While a thread decodes, both are collected for
that thread instead and folded into the :class:`ImageRejected` detail; a file that is accepted
drops them. Other threads, and code outside a decode, see their warnings as before.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import math
import os
import platform
import struct
import sys
import threading
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from workbench._checks import UsageError, check_choice, check_int, one_line

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
# The formats read from outside, by Pillow's names (a multi-picture JPEG, MPO, is a JPEG), and as
# messages name them; the memory estimates of workbench.deploy.limits are measured for these.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
ACCEPTED_FORMAT_NAMES = "JPEG, PNG, WebP, GIF, BMP, TIFF"
_PREFIX_BYTES = 16  # what Pillow reads to pick a format
RESIZE_MODES = ("squash", "crop", "pad")
# Shrinking by this much or more, resize uses Pillow's Hamming filter, below it (and enlarging)
# its bilinear one: the closer to the exact area resize on each side of it, measured on photos
# (benchmarks/jpeg_decode.py). Pillow's box filter, used before, weighs each input pixel 0 or 1
# by where its centre falls: 6-12 dB further from the area resize at shrinks below 3x.
SHARP_SHRINK = 1.5
DEFAULT_MAX_PIXELS = 64_000_000  # 8000 x 8000; larger headers are treated as decompression bombs

# Images deeper than 8 bits (see the module docstring).
DEEP_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})
DARK_LEVEL = 16  # of 255: 99.9% of the pixels below it is a nearly black image ...
DARK_QUANTILE = 0.999  # ... (a quantile, so a few hot pixels do not hide it)
# Values whose middle 99.8% (between the 0.1% and 99.9% quantiles, as above) spans fewer 8-bit
# levels than this in the declared range make a flat grey picture of an image with contrast.
FLAT_LEVELS = 8
RANGE_TOLERANCE = 0.01  # values this far (a fraction of the range) outside it are clipped
_ORIENTATION = 0x0112  # the EXIF tag
_TRANSPOSES = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
               4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
               6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
               8: Image.Transpose.ROTATE_90}  # as in ImageOps.exif_transpose
_SWAPS_SIDES = (5, 6, 7, 8)  # the orientations that turn the picture by 90 degrees
_TIFF_BITS, _TIFF_PHOTOMETRIC, _TIFF_SAMPLE_FORMAT = 258, 262, 339
_TIFF_MIN_SAMPLE, _TIFF_MAX_SAMPLE, _TIFF_S_MIN_SAMPLE, _TIFF_S_MAX_SAMPLE = 280, 281, 340, 341


class ImageRejected(UsageError):
    """An input that is not a usable image.

    Attributes:
        reason: a short machine-readable reason, one of ``REASONS``.
        detail: a human-readable sentence, ending with what the decoder said, if anything.
        messages: the warnings and libtiff errors the decoder gave, one string each.
    """

    REASONS = ("zero bytes", "not an image", "unsupported format", "truncated or corrupt",
               "decompression bomb", "too small", "unusable pixel values", "unreadable")

    def __init__(self, reason: str, detail: str = "", messages=()):
        assert reason in self.REASONS, reason
        self.reason = reason
        self.messages = tuple(messages)
        self.detail = (detail or reason) + _said(self.messages)
        super().__init__(f"{reason}: {self.detail}" if detail or messages else reason)


def _said(messages, shown: int = 3) -> str:
    """``messages`` as the end of a detail sentence: the first few distinct ones and a count."""
    distinct = list(dict.fromkeys(one_line(message) for message in messages))
    if not distinct:
        return ""
    more = f" (and {len(distinct) - shown} more)" if len(distinct) > shown else ""
    return "; the decoder said: " + " | ".join(distinct[:shown]) + more


class Decoded(NamedTuple):
    """An image as :func:`decode` read it.

    Attributes:
        image: the picture as 8-bit RGB, EXIF orientation applied; smaller than ``width`` x
            ``height`` when a JPEG was decoded at a reduced scale (``draft_size``).
        mode: the PIL mode the file declares, e.g. ``"RGB"``, ``"CMYK"`` or ``"I;16"``.
        width: the full width after EXIF orientation.
        height: the full height after EXIF orientation.
        box: where the whole picture lies in ``image``, ``(left, top, right, bottom)``, when
            a reduced-scale decode ends in a partial pixel (a side that the scale does not
            divide: 375 px at 1/2 is 187.5 px, decoded as 188); None when it fills ``image``.
            Hand it to :func:`resize`.
    """

    image: Image.Image
    mode: str
    width: int
    height: int
    box: tuple[float, float, float, float] | None = None


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
    return decode(source, max_pixels=max_pixels, min_side=min_side, draft_size=draft_size).image


def decode(source, *, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = 1,
           draft_size: int | tuple[int, int] | None = None,
           resize_mode: str = "squash") -> Decoded:
    """Like :func:`open_image`, but also says the file's mode and full size.

    With ``draft_size`` (the size the image is resized to next: a side, or ``(height,
    width)``) and ``resize_mode`` (how: see :func:`resize`), a JPEG is decoded by libjpeg at
    the smallest of the scales 1/2, 1/4 and 1/8 that still leaves that resize full detail
    (:func:`draft_jpeg`): every byte of its compressed data is still read and entropy-decoded
    (only the inverse DCT is smaller), so a truncated or corrupt JPEG is rejected exactly as by
    a full decode, about four times faster for a 12 MP photo. ``draft_size=1`` is the smallest
    scale: validation only. Other formats are always decoded at full size.

    Returns:
        A :class:`Decoded` (RGB image, declared mode, full width and height, and the ``box``
        to resize when a reduced scale ends in a partial pixel).

    Raises:
        ImageRejected: with a ``reason`` saying why the input is not a usable image.
        TypeError: if ``source`` is of an unsupported type.
    """
    max_pixels = check_int("max_pixels", max_pixels, minimum=1)
    min_side = check_int("min_side", min_side, minimum=1)
    target = None
    if draft_size is not None:
        check_choice("resize_mode", resize_mode, RESIZE_MODES)
        target = (check_image_size(draft_size, "draft_size"), resize_mode)
    with _collect_messages() as messages:
        try:
            return _decode(source, max_pixels, min_side, target)
        except ImageRejected as error:
            if not messages:
                raise
            raise ImageRejected(error.reason, error.detail, messages) from error


def _decode(source, max_pixels: int, min_side: int, target: tuple | None) -> Decoded:
    if isinstance(source, np.ndarray):
        image = _from_array(source)
        return Decoded(image, image.mode, image.width, image.height)
    if isinstance(source, Image.Image):  # converted first: a copy would lose a TIFF's tags
        image = _orient(_to_rgb(source), _orientation(source))
        return Decoded(image, source.mode, image.width, image.height)
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageRejected("zero bytes", "the data is empty")
        stream = io.BytesIO(source)
    elif isinstance(source, (str, os.PathLike)):
        try:
            if os.path.getsize(source) == 0:
                raise ImageRejected("zero bytes", f"{source} is empty")
            stream = open(source, "rb")
        except OSError as error:  # in words, not "[Errno 2] No such file or directory: ..."
            raise ImageRejected("unreadable", _unreadable(source, error)) from error
    elif hasattr(source, "read"):
        stream = source
    else:
        raise TypeError("source must be a path, bytes, a file object, a PIL image or a NumPy "
                        f"array, received: {type(source).__name__}")
    with stream:
        image = open_header(stream)
        mode, (width, height) = image.mode, image.size
        if width * height > max_pixels:
            raise ImageRejected("decompression bomb",
                                f"{width}x{height} exceeds max_pixels={max_pixels}")
        if min(width, height) < min_side:
            raise ImageRejected("too small", f"{width}x{height} is below min_side={min_side}")
        # EXIF in the header is read before the pixels, so that what Pillow says about a broken
        # block also explains a truncated file; a PNG may keep its eXIf after the pixels.
        early = image.format != "PNG" or "exif" in image.info
        orientation = _orientation(image) if early else None
        box = draft_jpeg(image, *target, orientation=orientation) if target else None
        try:
            image.load()
        except Image.DecompressionBombError as error:
            raise ImageRejected("decompression bomb", str(error)) from error
        except (OSError, ValueError, SyntaxError, EOFError) as error:
            raise ImageRejected("truncated or corrupt", str(error)) from error
        if not early:
            orientation = _orientation(image)
    if box is not None:
        box = _oriented_box(box, image.size, orientation)
    if orientation in _SWAPS_SIDES:
        width, height = height, width
    return Decoded(_orient(_to_rgb(image), orientation), mode, width, height, box)


def draft_jpeg(image: Image.Image, size: int | tuple[int, int], mode: str = "squash", *,
               orientation: int | None = None) -> tuple[float, float, float, float] | None:
    """Asks a JPEG not yet decoded for the smallest DCT scale that the resize to come needs.

    libjpeg can decode at 1/2, 1/4 or 1/8 scale (the inverse DCT of each 8x8 block gives 4x4,
    2x2 or 1x1 pixels: the block's lowest frequencies, so the result is already smoothed like
    an area downscale) at a fraction of the cost. The scale chosen is the smallest that leaves
    the image at least :func:`needed_size` on both sides, so that detail the model could see is
    never thrown away, and that leaves :func:`resize` either nothing to do on a side (the
    scale hits the size exactly, as a 448 px photo for a 224 px model at 1/2) or a shrink of
    at least :data:`SHARP_SHRINK` there: resampling the smoothed image again by less, say
    500 to 448 px, loses 6-12 dB of PSNR against the exact area resize of the full decode
    (measured by ``benchmarks/jpeg_decode.py``), where this rule stays within 1.2 dB of the
    full decode followed by the same resize on synthetic photos (6.2 dB, at 42 dB, on one real
    photo). The decode of scan, the cache build,
    ``Classifier.predict`` and batch prediction (:func:`load_array`), and the web service's
    memory estimate, all ask here.

    Args:
        image: a lazy image from :func:`open_header`; any format but JPEG is left alone.
        size: the size of the resize to come: a side, or ``(height, width)`` upright.
        mode: the mode of that resize (see :func:`resize`).
        orientation: the image's EXIF orientation: the needed size is turned to the file's.

    Returns:
        Where the whole picture lies in the reduced image, ``(left, top, right, bottom)`` in
        the file's orientation, when a scale that does not divide a side leaves a partial
        pixel at its end; None when not reduced or when nothing is partial.
    """
    if image.format != "JPEG":
        return None
    width, height = image.size
    if orientation in _SWAPS_SIDES:  # the needed size is upright; the file lies on its side
        needed = needed_size(height, width, size, mode)[::-1]
    else:
        needed = needed_size(width, height, size, mode)
    scale = next((scale for scale in (8, 4, 2) if all(
        math.isclose(side / scale, need) or side / scale >= SHARP_SHRINK * need
        for side, need in zip((width, height), needed))), 1)
    if scale == 1:
        return None
    # asking for (width // scale, height // scale) makes Pillow pick exactly this scale; None:
    # not a single-tile JPEG, or a scale asked for before
    drafted = image.draft("RGB", (max(1, width // scale), max(1, height // scale)))
    if drafted is None or drafted[1][2:] == image.size:
        return None
    return drafted[1]


def needed_size(width: int, height: int, size: int | tuple[int, int],
                mode: str = "squash") -> tuple[int, int]:
    """The ``(width, height)`` an image must keep for its resize to lose no detail.

    ``squash`` stretches each side to the output's, so needs the output's size; ``crop``
    scales both sides to cover the output (the shorter side fits, the longer is cut), ``pad``
    to fit inside it (the longer side fits): each needs the image at that one scale.

    Args:
        width: the image's width (upright, as it will be resized).
        height: its height.
        size: the output: a side, or ``(height, width)``.
        mode: ``"squash"``, ``"crop"`` or ``"pad"`` (see :func:`resize`).

    Returns:
        ``(width, height)`` in pixels, at least 1 each; no larger than the output's
        longer side allows for ``crop`` and ``pad``.
    """
    out_height, out_width = check_image_size(size, "size")
    check_choice("mode", mode, RESIZE_MODES)
    if mode == "squash":
        return out_width, out_height
    scale = (max if mode == "crop" else min)(out_width / width, out_height / height)
    # a hair under the exact product, so that a side that fits exactly is not rounded up
    return (max(1, math.ceil(width * scale - 1e-6)), max(1, math.ceil(height * scale - 1e-6)))


def _oriented_box(box, size: tuple[int, int], orientation: int | None):
    """``box`` of an image of ``size`` where it lies once ``_orient`` has turned the image."""
    (left, top, right, bottom), (width, height) = box, size
    corners = {  # where the corners (x, y) go, by the orientation's transpose
        2: lambda x, y: (width - x, y), 3: lambda x, y: (width - x, height - y),
        4: lambda x, y: (x, height - y), 5: lambda x, y: (y, x),
        6: lambda x, y: (height - y, x), 7: lambda x, y: (height - y, width - x),
        8: lambda x, y: (y, width - x)}.get(orientation, lambda x, y: (x, y))
    (x0, y0), (x1, y1) = corners(left, top), corners(right, bottom)
    return (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def _unreadable(path, error: OSError) -> str:
    """Why the file at ``path`` could not be opened, in words."""
    if isinstance(error, FileNotFoundError):
        return f"{os.fsdecode(path)} does not exist" + (
            " (a link to a file that is gone)" if os.path.islink(path) else "")
    if isinstance(error, IsADirectoryError):
        return f"{os.fsdecode(path)} is a folder, not an image file"
    if isinstance(error, PermissionError):
        return f"{os.fsdecode(path)} may not be read (permission denied)"
    return f"{os.fsdecode(path)} could not be opened: {(error.strerror or str(error)).lower()}"


def open_header(source) -> Image.Image:
    """Opens an image from outside, reading its header only, if it is in an accepted format.

    The one place a file or upload is handed to Pillow: only :data:`ACCEPTED_FORMATS` are tried,
    so no other format's parser runs, and nothing is decoded until the image is loaded.

    Args:
        source: a path, ``bytes`` or a binary file object (read from its current position;
            the caller closes it).

    Returns:
        A lazy ``PIL.Image``: size, mode, format and metadata known, pixels not yet decoded.

    Raises:
        ImageRejected: ``"unsupported format"`` (a format Pillow recognises by its first
            bytes, named in the detail with the accepted ones), ``"not an image"``,
            ``"decompression bomb"`` (a header over Pillow's own pixel limit) or ``"truncated or
            corrupt"`` (a header that cannot be read).
        TypeError: if ``source`` is of an unsupported type.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(source)
    elif not isinstance(source, (str, os.PathLike)) and not hasattr(source, "read"):
        raise TypeError("source must be a path, bytes or a binary file object, received: "
                        f"{type(source).__name__}")
    start = _position(source)
    try:
        return Image.open(source, formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError as error:
        raise ImageRejected("decompression bomb", str(error)) from error
    except UnidentifiedImageError as error:  # its message names a memory address
        prefix = _prefix(source, start)
        known = _format_of(prefix)
        if known is not None and known not in ACCEPTED_FORMATS:
            # named by its signature alone, which some formats share (a TGA reads as CUR)
            raise ImageRejected("unsupported format", f"format {known} (by its first bytes) "
                                f"is not one of {ACCEPTED_FORMAT_NAMES}") from error
        shown = f"; it starts with {prefix[:12]!r}" if prefix is not None else ""
        raise ImageRejected("not an image", "not a recognised image format (the formats read "
                            f"are {ACCEPTED_FORMAT_NAMES}){shown}") from error
    except (OSError, ValueError, SyntaxError, EOFError) as error:  # a known format, broken
        raise ImageRejected("truncated or corrupt", f"cannot read the header: {error}") from error


def _position(source) -> int | None:
    """Where a file object is (0 for a path), or None if it cannot say (not seekable)."""
    if isinstance(source, (str, os.PathLike)):
        return 0
    try:
        return source.tell()
    except (OSError, ValueError, AttributeError):
        return None


def _prefix(source, start: int | None) -> bytes | None:
    """The first bytes Pillow looked at, or None if they cannot be read again."""
    if start is None:
        return None
    try:
        if isinstance(source, (str, os.PathLike)):
            with open(source, "rb") as stream:
                return stream.read(_PREFIX_BYTES)
        source.seek(start)
        return source.read(_PREFIX_BYTES)
    except (OSError, ValueError, AttributeError):
        return None


def _format_of(prefix: bytes | None) -> str | None:
    """The format Pillow takes a file starting with ``prefix`` for, by the signature checks of
    its plugins (nothing is parsed), or None when none recognises it."""
    if not prefix:
        return None
    Image.init()
    for name in Image.ID:  # in the order Image.open tries them
        accept = Image.OPEN[name][1]
        if accept is None:  # a format told only by parsing (TGA, ...): not named
            continue
        try:
            if accept(prefix):  # a string means "recognised, but not readable here"
                return name
        except (struct.error, IndexError, ValueError, TypeError):  # a check of a short prefix
            continue
    return None


def _orientation(image: Image.Image) -> int | None:
    """The EXIF (or XMP) orientation, 1..8, or None; ImageRejected if the EXIF is broken."""
    try:
        orientation = image.getexif().get(_ORIENTATION)
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        raise ImageRejected("truncated or corrupt", f"bad EXIF data: {error}") from error
    return orientation if isinstance(orientation, int) else None


def _orient(image: Image.Image, orientation: int | None) -> Image.Image:
    """``image`` turned upright, as ``ImageOps.exif_transpose`` does (a new image if turned)."""
    method = _TRANSPOSES.get(orientation)
    return image if method is None else image.transpose(method)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Converts any PIL mode to 8-bit RGB; transparency is composited on white."""
    if image.mode == "RGB" and "transparency" not in image.info:
        return image
    if image.mode in DEEP_MODES:
        return Image.fromarray(_deep_to_grey(image), "L").convert("RGB")
    if image.mode in ("P", "1", "L", "RGB") and "transparency" in image.info:
        image = image.convert("RGBA")  # a palette entry, grey value or colour made transparent
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


class _Range(NamedTuple):
    """The values of a deep image that map to black and white, and how to name them."""

    black: float
    white: float
    kind: str  # e.g. "16-bit", "signed 16-bit", "32-bit float"
    invert: bool  # TIFF WhiteIsZero
    unsigned_32: bool  # Pillow keeps unsigned 32-bit TIFF samples in int32


def _tag(tags, tag: int):
    """The first value of a TIFF tag, or None."""
    value = tags.get(tag) if tags is not None else None
    if isinstance(value, (tuple, list)):
        value = value[0] if value else None
    return value


def _declared_range(image: Image.Image) -> _Range:
    """What the file says about the range of a deep image (see the module docstring)."""
    tags = getattr(image, "tag_v2", None)  # only TIFF files say more than their PIL mode
    kind = "float" if image.mode == "F" else "unsigned"
    bits = 32 if image.mode == "F" else 16
    if _tag(tags, _TIFF_BITS) is not None:
        bits = int(_tag(tags, _TIFF_BITS))
        kind = {1: "unsigned", 2: "signed", 3: "float"}.get(_tag(tags, _TIFF_SAMPLE_FORMAT) or 1,
                                                            kind)
    if image.mode.startswith("I;16"):  # Pillow's 16-bit modes hold unsigned values
        kind, bits = "unsigned", min(bits, 16)
    black, white = {"float": (0.0, 1.0), "signed": (0.0, 2.0 ** (bits - 1) - 1),
                    "unsigned": (0.0, 2.0 ** bits - 1)}[kind]
    declared = (_tag(tags, _TIFF_S_MIN_SAMPLE), _tag(tags, _TIFF_S_MAX_SAMPLE))
    if None in declared and kind != "float" and _tag(tags, _TIFF_MAX_SAMPLE) is not None:
        declared = (_tag(tags, _TIFF_MIN_SAMPLE) or 0, _tag(tags, _TIFF_MAX_SAMPLE))
    if None not in declared:
        low, high = (float(value) for value in declared)
        if np.isfinite(low) and np.isfinite(high) and low < high:  # else the tag is nonsense
            black, white = low, high
    name = {"float": f"{bits}-bit float", "signed": f"signed {bits}-bit",
            "unsigned": f"{bits}-bit"}[kind]
    return _Range(black, white, name, _tag(tags, _TIFF_PHOTOMETRIC) == 0,
                  kind == "unsigned" and bits == 32 and image.mode == "I")


def _deep_to_grey(image: Image.Image) -> np.ndarray:
    """The 8-bit grey levels of a deep image, or :class:`ImageRejected` if they would lie."""
    declared = _declared_range(image)
    raw = np.asarray(image)
    if declared.unsigned_32:
        raw = raw.view(np.uint32)
    values = raw.astype(np.float64)
    opaque = np.ones(values.shape, bool)
    key = image.info.get("transparency")
    if isinstance(key, int) and not isinstance(key, bool):  # a PNG's transparent grey value
        opaque = raw != key
    seen = values[opaque]
    if seen.size == 0:  # nothing is visible: white, like any transparent image
        return np.full(values.shape, 255, np.uint8)
    low, high = float(seen.min()), float(seen.max())
    said = f"{declared.kind} values {_number(low)}..{_number(high)}"
    black_to_white = f"{_number(declared.black)}..{_number(declared.white)}"
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ImageRejected("unusable pixel values",
                            f"{declared.kind} values include NaN or infinity")
    span = declared.white - declared.black
    if low < declared.black - RANGE_TOLERANCE * span \
            or high > declared.white + RANGE_TOLERANCE * span:
        raise ImageRejected("unusable pixel values",
                            f"{said} lie outside {black_to_white}, the range that maps to "
                            "black..white; convert them to a chosen window first")
    levels = (values - declared.black) * (255.0 / span)
    if declared.invert:  # TIFF WhiteIsZero
        levels = 255.0 - levels
    step = max(1, seen.size // 1_000_000)  # the quantile of a sample: fast on 12 MP images
    bright = float(np.quantile(levels[opaque][::step], DARK_QUANTILE))
    if bright < DARK_LEVEL:
        raise ImageRejected("unusable pixel values",
                            f"{said} sit in the darkest {bright / 2.55:.2g}% of {black_to_white}:"
                            f" in 8 bits the image is nearly black ({DARK_QUANTILE:.1%} of its "
                            f"pixels at level {round(bright)} of 255 or darker); stretch its "
                            "contrast first")
    # Rejected rather than stretched by the image's own min..max: that would map one value to
    # a different grey in every image (and at prediction than in training), and blow a sensor's
    # noise on a blank field up into full contrast. The declared range is what the file says.
    dark, light = np.quantile(levels[opaque][::step], (1 - DARK_QUANTILE, DARK_QUANTILE))
    if light - dark < FLAT_LEVELS and high > low:
        share = (high - low) / span
        raise ImageRejected("unusable pixel values",
                            f"{said} span {share:.2%} of {black_to_white}: in 8 bits the image "
                            f"is flat grey ({1 - 2 * (1 - DARK_QUANTILE):.1%} of its pixels "
                            f"within {light - dark:.2g} of 255 levels, around level "
                            f"{round((dark + light) / 2)}); stretch its contrast first")
    grey = np.clip(np.rint(levels), 0, 255).astype(np.uint8)
    grey[~opaque] = 255  # transparency composited on white
    return grey


def _number(value: float) -> str:
    return f"{value:.6g}"


# --- What the decoders say, collected per thread (see the module docstring). ---
#
# ``warnings.catch_warnings`` swaps module-wide state and is not thread-safe before Python 3.14,
# and redirecting file descriptor 2 would swallow whatever other threads print meanwhile. So one
# ``catch_warnings`` is shared by all the threads that decode at a time (the first one in enters
# it, the last one out leaves it); inside it, Pillow's warnings are always shown (not once per
# message) and ``showwarning`` hands each one to the list of the thread that raised it, or, for a
# thread that is not decoding, to whatever showed warnings before. libtiff's error handler is
# replaced, once, by one that does the same with libtiff's messages.

_local = threading.local()
_lock = threading.Lock()
_shared: dict = {"users": 0, "catcher": None, "libtiff": None}
_PILLOW_MODULES = r"PIL\."


@contextlib.contextmanager
def _collect_messages():
    """Collects what Pillow and libtiff say in this thread while the block runs; yields the list."""
    with _lock:
        if _shared["libtiff"] is None:
            _shared["libtiff"] = _route_libtiff_errors()
        if _shared["users"] == 0:
            catcher = warnings.catch_warnings()
            catcher.__enter__()
            show = warnings.showwarning
            warnings.filterwarnings("always", module=_PILLOW_MODULES)
            warnings.showwarning = lambda *args, **kwargs: _show_warning(show, *args, **kwargs)
            _shared["catcher"] = catcher
        _shared["users"] += 1
    messages: list[str] = []
    outer = getattr(_local, "messages", None)
    _local.messages = messages
    try:
        yield messages
    finally:
        _local.messages = outer
        with _lock:
            _shared["users"] -= 1
            if _shared["users"] == 0:
                catcher, _shared["catcher"] = _shared["catcher"], None
                catcher.__exit__(None, None, None)


def _show_warning(show, message, category, filename, lineno, file=None, line=None) -> None:
    messages = getattr(_local, "messages", None)
    if messages is None:  # a thread that is not decoding: as before
        show(message, category, filename, lineno, file, line)
    else:
        messages.append(str(message))


_LIBTIFF_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p)
_LIBTIFF_MACHINES = {"x86_64", "amd64", "aarch64", "arm64"}  # a va_list passes as a pointer


def _route_libtiff_errors():
    """Replaces the error handler of Pillow's libtiff, which prints on the C stderr.

    Returns the installed handler (kept so that it is not garbage collected), or ``False`` where
    it cannot be done: no libtiff, a libtiff linked into Pillow without exporting its functions
    (Windows), or a platform where passing a ``va_list`` on is not known to be safe. There
    libtiff goes on printing, as it did before.
    """
    if os.name != "posix" or platform.machine().lower() not in _LIBTIFF_MACHINES:
        return False
    try:  # Image.core is Pillow's C extension, which links libtiff; dlsym on its handle also
        # searches the libraries it links (Pillow's own copy of libtiff, in a wheel)
        set_handler = ctypes.CDLL(Image.core.__file__).TIFFSetErrorHandler
        format_message = ctypes.CDLL(None).vsnprintf
    except (OSError, AttributeError):
        return False
    format_message.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p,
                               ctypes.c_void_p]
    set_handler.argtypes = [_LIBTIFF_HANDLER]
    set_handler.restype = ctypes.c_void_p

    def on_error(module, text_format, arguments) -> None:
        buffer = ctypes.create_string_buffer(512)
        format_message(buffer, len(buffer), text_format, arguments)
        text = buffer.value.decode("utf-8", "replace")
        module = (module or b"").decode("utf-8", "replace")
        if module and module != "tempfile.tif":  # the name Pillow gives every file
            text = f"{module}: {text}"
        messages = getattr(_local, "messages", None)
        if messages is None:  # not decoding: print, as libtiff's own handler does
            print(f"libtiff: {text}.", file=sys.stderr)
        else:
            messages.append(f"libtiff: {text}")

    handler = _LIBTIFF_HANDLER(on_error)
    set_handler(handler)
    return handler


def _from_array(array: np.ndarray) -> Image.Image:
    if array.dtype != np.uint8:
        raise TypeError(f"a NumPy image must be uint8, received dtype: {array.dtype}")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4)):
        return _to_rgb(Image.fromarray(array))
    raise TypeError(f"a NumPy image must be (H, W), (H, W, 3) or (H, W, 4), "
                    f"received shape: {array.shape}")


def check_image_size(image_size, name: str = "image_size") -> tuple[int, int]:
    """``image_size`` (a side, or ``(height, width)``) as ``(height, width)``, checked; ``name``
    is the argument's name in the error."""
    if isinstance(image_size, (tuple, list)) and len(image_size) == 2:
        return (check_int(f"{name}[0]", image_size[0], minimum=1),
                check_int(f"{name}[1]", image_size[1], minimum=1))
    if isinstance(image_size, (tuple, list)):
        raise UsageError(f"{name} must be an int or (height, width), received: {image_size!r}")
    side = check_int(name, image_size, minimum=1)
    return side, side


def resize(image: Image.Image, size: int | tuple[int, int], mode: str = "squash", *,
           box: tuple[float, float, float, float] | None = None) -> Image.Image:
    """Resizes to exactly ``size`` the way DIGITS did.

    Args:
        image: an RGB image.
        size: the output side, or ``(height, width)``.
        mode: ``"squash"`` (stretch to size, ignoring aspect), ``"crop"`` (scale the shorter side
            to fit, then center-crop) or ``"pad"`` (scale the longer side to fit, then pad with
            black, keeping the whole image).
        box: the part of ``image`` that holds the picture, ``(left, top, right, bottom)`` in
            pixels (fractional edges allowed): :attr:`Decoded.box`. Default: all of it.

    Returns:
        An image of exactly ``size``, each output pixel close to the mean of the input area it
        covers (the exact area resize, OpenCV's ``INTER_AREA`` when shrinking): shrinking by
        1.5x or more uses Pillow's Hamming filter, after an exact integer reduction to within
        2x of the output (``reducing_gap=2``); shrinking less, or enlarging, its antialiased
        bilinear filter (see :data:`SHARP_SHRINK`). Without ``box``, the crop and the padding
        are those of ``ImageOps.fit`` and ``ImageOps.pad``.
    """
    check_choice("mode", mode, RESIZE_MODES)
    height, width = check_image_size(size, "size")
    left, top, right, bottom = box = box or (0, 0, image.width, image.height)
    x_scale, y_scale = width / (right - left), height / (bottom - top)  # output / input
    if mode != "squash":  # one scale for both axes: fit the shorter side (crop) or longer (pad)
        x_scale = y_scale = (max if mode == "crop" else min)(x_scale, y_scale)
    sharp = max(x_scale, y_scale) * SHARP_SHRINK <= 1  # both sides shrink at least that much
    method = Image.HAMMING if sharp else Image.BILINEAR
    if mode == "squash":
        return image.resize((width, height), method, box=box, reducing_gap=2.0)
    if mode == "crop":
        return image.resize((width, height), method, box=_centred(box, width / height),
                            reducing_gap=2.0)
    return _padded(image, box, (width, height), method)


def _centred(box, ratio: float) -> tuple[float, float, float, float]:
    """The largest part of ``box`` with width / height ``ratio``, in its centre (as
    ``ImageOps.fit`` crops)."""
    left, top, right, bottom = box
    width, height = right - left, bottom - top
    if width / height == ratio:
        return box
    if width / height > ratio:  # wider than needed: the sides are cut
        cut_width, cut_height = ratio * height, height
    else:
        cut_width, cut_height = width, width / ratio
    left, top = left + (width - cut_width) * 0.5, top + (height - cut_height) * 0.5
    return (left, top, left + cut_width, top + cut_height)


def _padded(image: Image.Image, box, size: tuple[int, int], method) -> Image.Image:
    """``box`` of ``image`` scaled to fit inside ``size``, centred on black (as ``ImageOps.pad``
    with ``ImageOps.contain``)."""
    left, top, right, bottom = box
    width, height = right - left, bottom - top
    fitted = size
    if width / height > size[0] / size[1]:
        fitted = (size[0], max(1, round(height / width * size[0])))
    elif width / height < size[0] / size[1]:
        fitted = (max(1, round(width / height * size[1])), size[1])
    resized = image.resize(fitted, method, box=box, reducing_gap=2.0)
    if fitted == size:
        return resized
    padded = Image.new(image.mode, size, (0, 0, 0))
    padded.paste(resized, (round((size[0] - fitted[0]) * 0.5), round((size[1] - fitted[1]) * 0.5)))
    return padded


def load_array(source, size: int | tuple[int, int], mode: str = "squash", *,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Opens, validates and resizes an image to a uint8 array of shape (height, width, 3).

    The one decode of an image for a model: the cache build, ``Classifier.predict`` and batch
    prediction all call it. A JPEG is decoded at the smallest scale the resize needs
    (:func:`draft_jpeg`), then resized once (:func:`resize`).
    """
    decoded = decode(source, max_pixels=max_pixels, draft_size=size, resize_mode=mode)
    image = decoded.image
    if decoded.box is not None or image.size != check_image_size(size, "size")[::-1]:
        image = resize(image, size, mode, box=decoded.box)
    return np.asarray(image, dtype=np.uint8)


def is_image_name(path: str | Path) -> bool:
    """Whether a file name has one of the image extensions, in any case."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS
