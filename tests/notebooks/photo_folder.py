"""A folder of photos as a user has them: JPEGs of several sizes up to a few megapixels, some
turned by their EXIF orientation, in nested sub-folders, and one file that is no usable image."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = {"birds": (70, 120, 210), "cats": (210, 130, 60), "dogs": (90, 170, 80)}
# (width, height) as stored; 2400 x 1800 is 4.3 megapixels
SIZES = [(2400, 1800), (1600, 1200), (800, 600), (640, 480), (480, 640), (320, 240),
         (1200, 1600), (200, 150), (1024, 768), (96, 72)]
FOLDERS = ["", "2023/holiday", "phone", "2023/holiday", "phone/DCIM/100APPLE"]
ORIENTATIONS = {1: 6, 4: 8}  # image index -> EXIF orientation (6: turn 90° clockwise)
BAD_FILE = "dogs/phone/IMG_0099.jpg"  # cut off half way, as by an interrupted copy


def photo(seed: int, colour, size) -> Image.Image:
    """A smooth picture in ``colour`` with blobs of its own: compresses like a photo."""
    rng = np.random.default_rng(seed)
    blobs = rng.integers(0, 256, (6, 8, 3)) * 0.5 + np.asarray(colour) * 0.5
    return Image.fromarray(blobs.astype(np.uint8)).resize(size, Image.BICUBIC)


def jpeg(image: Image.Image, orientation: int | None = None) -> bytes:
    buffer = io.BytesIO()
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    image.save(buffer, "JPEG", quality=85, exif=exif.tobytes())
    return buffer.getvalue()


def write_photos(root: Path) -> dict[str, int]:
    """Writes the photos under ``root``; returns the number of good photos per class."""
    counts = {}
    for number, (label, colour) in enumerate(CLASSES.items()):
        for index, size in enumerate(SIZES):
            folder = root / label / FOLDERS[index % len(FOLDERS)]
            folder.mkdir(parents=True, exist_ok=True)
            data = jpeg(photo(100 * number + index, colour, size), ORIENTATIONS.get(index))
            (folder / f"IMG_{index:04d}.JPG").write_bytes(data)
        counts[label] = len(SIZES)
    whole = jpeg(photo(999, CLASSES["dogs"], (1600, 1200)))
    (root / BAD_FILE).parent.mkdir(parents=True, exist_ok=True)
    (root / BAD_FILE).write_bytes(whole[: len(whole) // 2])
    return counts
