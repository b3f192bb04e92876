"""Tiny image files of every kind a real dataset contains, good and bad, written into tmp_path.

Every image gets its own random pixels (from ``seed``), so no two files are accidental copies.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

SIDE = 16


def pixels(seed: int, size=(SIDE, SIDE), channels: int = 3) -> np.ndarray:
    """Random uint8 pixels, (height, width, channels) or (height, width) for one channel."""
    height, width = size[1], size[0]
    shape = (height, width) if channels == 1 else (height, width, channels)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def image_bytes(seed: int, fmt: str = "JPEG", size=(SIDE, SIDE), mode: str = "RGB",
                **save_args) -> bytes:
    """An encoded image with unique content."""
    channels = {"L": 1, "RGB": 3, "RGBA": 4, "CMYK": 4}[mode]
    image = Image.fromarray(pixels(seed, size, channels), mode if mode != "CMYK" else None)
    if mode == "CMYK":
        image = Image.frombytes("CMYK", size, pixels(seed, size, 4).tobytes())
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save_args)
    return buffer.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def sixteen_bit_png(value: int = 30000, size=(SIDE, SIDE)) -> bytes:
    """A 16-bit greyscale PNG, every pixel ``value`` (0..65535) plus a small gradient."""
    array = np.full((size[1], size[0]), value, dtype=np.uint16)
    array += np.arange(size[0], dtype=np.uint16)[None, :]
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def palette_png_with_transparency(seed: int) -> bytes:
    index = np.random.default_rng(seed).integers(0, 4, (SIDE, SIDE), dtype=np.uint8)
    image = Image.fromarray(index, "P")
    image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30] + [0] * (256 * 3 - 12))
    buffer = io.BytesIO()
    image.save(buffer, "PNG", transparency=0)
    return buffer.getvalue()


def exif_rotated_jpeg(seed: int, size=(24, 12), orientation: int = 6) -> bytes:
    """A JPEG stored ``size`` (width, height) whose EXIF orientation says to rotate it."""
    image = Image.fromarray(pixels(seed, size))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif.tobytes())
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid-looking PNG whose IHDR claims ``width`` x ``height`` pixels (8-bit RGB)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _chunk(b"IEND", b""))


def truncated(data: bytes, keep: float = 0.6) -> bytes:
    return data[: int(len(data) * keep)]


# What scan must say about each file of the messy dataset: path -> (status, reason).
def make_messy_dataset(root: Path) -> dict[str, tuple[str, str]]:
    """Writes a dataset with one file of each kind below ``root``; returns what scan should say."""
    expected: dict[str, tuple[str, str]] = {}

    def add(relative: str, data: bytes, status: str = "ok", reason: str = "") -> None:
        write(root / relative, data)
        expected[relative] = (status, reason)

    # Good images of every mode and format.
    add("cat/rgb.jpg", image_bytes(1))
    add("cat/cmyk.jpg", image_bytes(2, mode="CMYK"))
    add("cat/sixteen.png", sixteen_bit_png())
    add("cat/palette.png", palette_png_with_transparency(3))
    add("cat/grey.png", image_bytes(4, "PNG", mode="L"))
    add("cat/rgba.png", image_bytes(5, "PNG", mode="RGBA"))
    add("cat/rotated.jpg", exif_rotated_jpeg(6))
    add("cat/UPPER.JPG", image_bytes(7))
    add("cat/Shout.PNG", image_bytes(8, "PNG"))
    add("cat/deep/er/nested.jpeg", image_bytes(9))
    add("cat/pic.bmp", image_bytes(10, "BMP"))
    add("cat/pic.gif", image_bytes(11, "GIF"))
    add("cat/pic.webp", image_bytes(12, "WEBP", lossless=True))
    add("cat/pic.tif", image_bytes(13, "TIFF"))
    add("cat/pic.TIFF", image_bytes(14, "TIFF"))
    add("dog/a.jpg", image_bytes(20))
    add("dog/b.jpg", image_bytes(21))
    add("dog/with space.jpg", image_bytes(22))
    add("café ñ/日本語.jpg", image_bytes(30))
    add("café ñ/Ünïcödé.png", image_bytes(31, "PNG"))

    # Bad files.
    add("dog/empty.jpg", b"", "rejected", "zero bytes")
    add("dog/text.jpg", b"this is not a JPEG at all\n", "rejected", "not an image")
    add("dog/notes.txt", b"a note\n", "rejected", "not an image")
    add("dog/cut.jpg", truncated(image_bytes(23, size=(64, 64), quality=95)),
        "rejected", "truncated or corrupt")
    add("dog/cut.png", truncated(image_bytes(24, "PNG", size=(64, 64))),
        "rejected", "truncated or corrupt")
    add("dog/bomb.png", png_bomb(), "rejected", "decompression bomb")
    add("dog/tiny.png", image_bytes(25, "PNG", size=(4, 4)), "rejected", "too small")
    add("dog/.hidden.jpg", image_bytes(26), "rejected", "hidden or system file")
    add("dog/.DS_Store", b"\x00\x00\x00\x01Bud1", "rejected", "hidden or system file")
    add("dog/Thumbs.db", b"\xd0\xcf\x11\xe0", "rejected", "hidden or system file")
    add("dog/desktop.ini", b"[.ShellClassInfo]\n", "rejected", "hidden or system file")
    add("dog/.thumbs/a.jpg", image_bytes(27), "rejected", "hidden or system file")
    add("__MACOSX/dog/._a.jpg", b"\x00\x05\x16\x07", "rejected", "hidden or system file")
    add(".cache/x.jpg", image_bytes(28), "rejected", "hidden or system file")
    add("README.txt", b"about this dataset\n", "rejected", "not in a class folder")

    # Copies: a duplicate within a class keeps the first path in sorted order ...
    add("dog/copy_1.jpg", image_bytes(40))
    add("dog/copy_2.jpg", image_bytes(40), "rejected", "duplicate")
    add("dog/sub/copy_0.jpg", image_bytes(40), "rejected", "duplicate")
    # ... and the same content under two labels is rejected everywhere.
    add("cat/both.jpg", image_bytes(41), "rejected", "conflicting labels")
    add("dog/both.jpg", image_bytes(41), "rejected", "conflicting labels")
    return expected


def snapshot(root: Path) -> dict[str, tuple]:
    """Every file and folder below ``root`` with its size and modification time."""
    state = {}
    for folder, folders, names in os.walk(root):
        for name in folders + names:
            path = os.path.join(folder, name)
            info = os.stat(path)
            state[os.path.relpath(path, root)] = (info.st_size, info.st_mtime_ns)
    return state


def make_class_folders(root: Path, sizes: dict[str, int], *, start: int = 0,
                       fmt: str = "PNG") -> list[str]:
    """Writes ``sizes[label]`` unique tiny images per class; returns their relative paths."""
    paths = []
    for label, count in sorted(sizes.items()):
        for number in range(start, start + count):
            relative = f"{label}/img_{number:04d}.{fmt.lower()}"
            seed = zlib.crc32(label.encode()) * 100_000 + number
            write(root / relative, image_bytes(seed, fmt, size=(8, 8)))
            paths.append(relative)
    return paths
