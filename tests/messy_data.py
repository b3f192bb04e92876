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
    """A 16-bit greyscale PNG: a gradient around ``value`` (0..65535), 500 a column, so that it
    spans levels in 8 bits too (a flat one is rejected as having no contrast left)."""
    steps = (np.arange(size[0], dtype=np.int64) - size[0] // 2) * 500
    array = np.clip(value + steps, 0, 65535).astype(np.uint16)[None, :].repeat(size[1], 0)
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
    add("cat/twelve_bit.tif", tiff_bytes(np.random.default_rng(32).integers(
        0, 4096, (SIDE, SIDE), dtype=np.uint16), bits=12))
    add("dog/bad_exif.jpg", jpeg_with_bad_exif(33))  # Pillow warns per tag; the pixels are fine

    # Bad files.
    add("dog/empty.jpg", b"", "rejected", "zero bytes")
    add("dog/text.jpg", b"this is not a JPEG at all\n", "rejected", "not an image")
    add("dog/notes.txt", b"a note\n", "rejected", "not an image")
    add("dog/cut.jpg", truncated(image_bytes(23, size=(64, 64), quality=95)),
        "rejected", "truncated or corrupt")
    add("dog/cut.png", truncated(image_bytes(24, "PNG", size=(64, 64))),
        "rejected", "truncated or corrupt")
    add("dog/bomb.png", png_bomb(), "rejected", "decompression bomb")
    add("dog/broken_lzw.tif", corrupt_compressed_tiff(34), "rejected", "truncated or corrupt")
    add("dog/cut_tags.tif", truncated(tiff_with_bad_tags(35), keep=0.9),
        "rejected", "truncated or corrupt")
    add("cat/dark16.tif", tiff_bytes(np.random.default_rng(36).integers(
        291, 695, (SIDE, SIDE), dtype=np.uint16)), "rejected", "unusable pixel values")
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


# --- Images whose pixels are not 8-bit, written the way cameras, microscopes and scientific
# software write them, so that the conversion to 8-bit RGB can be checked against numpy. ---

_TIFF_TYPES = {3: ("H", 2), 4: ("I", 4), 12: ("d", 8)}  # SHORT, LONG, DOUBLE


def tiff_bytes(samples: np.ndarray, *, bits: int | None = None, sample_format: int | None = None,
               photometric: int | None = None, extra_samples=(), big_endian: bool = False,
               tags: dict | None = None) -> bytes:
    """An uncompressed one-strip TIFF of ``samples``, (H, W) or (H, W, C), written by hand.

    Pillow writes only some of what the TIFF format allows; this declares any bit depth (12 packs
    uint16 values MSB first), sample format (1 unsigned, 2 signed, 3 float), photometric
    interpretation (0 white is zero, 1 black is zero, 2 RGB), extra samples (alpha) and byte
    order. ``tags`` adds ``{tag: (type, values)}`` entries, e.g. ``{281: (3, [4095])}``.
    """
    array = np.asarray(samples)
    if array.ndim == 2:
        array = array[..., None]
    height, width, channels = array.shape
    order = ">" if big_endian else "<"
    bits = bits or array.dtype.itemsize * 8
    if sample_format is None:
        sample_format = {"u": 1, "i": 2, "f": 3}[array.dtype.kind]
    if photometric is None:
        photometric = 2 if channels >= 3 else 1
    if bits == 12:  # two 12-bit samples in three bytes, most significant bits first
        pairs = array.reshape(height, -1, 2).astype(np.uint32)
        data = np.stack([pairs[..., 0] >> 4, ((pairs[..., 0] & 0xF) << 4) | (pairs[..., 1] >> 8),
                         pairs[..., 1] & 0xFF], axis=-1).astype(np.uint8).tobytes()
    else:
        data = array.astype(array.dtype.newbyteorder(order)).tobytes()
    entries = {256: (4, [width]), 257: (4, [height]), 258: (3, [bits] * channels),
               259: (3, [1]), 262: (3, [photometric]), 273: (4, [0]), 277: (3, [channels]),
               278: (4, [height]), 279: (4, [len(data)]), 284: (3, [1]),
               339: (3, [sample_format] * channels)}
    if extra_samples:
        entries[338] = (3, list(extra_samples))
    entries.update(tags or {})
    ifd_size = 2 + 12 * len(entries) + 4
    values_at = 8 + ifd_size  # values longer than 4 bytes follow the IFD, then the pixels
    values = b""
    packed = {}
    for tag, (kind, items) in entries.items():
        code, _ = _TIFF_TYPES[kind]
        raw = struct.pack(order + code * len(items), *items)
        if len(raw) > 4:
            packed[tag] = struct.pack(order + "I", values_at + len(values))
            values += raw
        else:
            packed[tag] = raw.ljust(4, b"\0")
    packed[273] = struct.pack(order + "I", values_at + len(values))  # the strip's offset
    ifd = struct.pack(order + "H", len(entries))
    for tag in sorted(entries):
        kind, items = entries[tag]
        ifd += struct.pack(order + "HHI", tag, kind, len(items)) + packed[tag]
    ifd += struct.pack(order + "I", 0)
    header = (b"MM\x00\x2a" if big_endian else b"II\x2a\x00") + struct.pack(order + "I", 8)
    return header + ifd + values + data


def png_bytes(image: Image.Image, **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **save_args)
    return buffer.getvalue()


# --- Damaged files that make Pillow and libtiff talk: Python warnings from Pillow's TIFF tag
# reader (also used for EXIF blocks) and libtiff's own messages on the C stderr. ---

def _ifd_with_bad_tags(count: int, order: str = "<") -> bytes:
    """A TIFF structure (as in an EXIF block) whose ``count`` tags claim more data than it has."""
    ifd = struct.pack(order + "H", count)
    for tag in range(count):
        ifd += struct.pack(order + "HHII", 0x9000 + tag, 4, 100_000, 8)  # 100,000 LONGs
    return (b"II\x2a\x00" if order == "<" else b"MM\x00\x2a") + struct.pack(order + "I", 8) \
        + ifd + struct.pack(order + "I", 0)


def tiff_with_bad_tags(seed: int, count: int = 150) -> bytes:
    """A readable TIFF with ``count`` more private tags, each claiming more data than the file."""
    good = tiff_bytes(pixels(seed))
    (entries,) = struct.unpack("<H", good[8:10])
    tags = struct.pack("<H", entries + count) + good[10:10 + 12 * entries]
    for tag in range(count):
        tags += struct.pack("<HHII", 0xC000 + tag, 4, 100_000, 8)  # 400 kB of a small file
    # the pixels and long values move along with the bigger IFD
    shift = 12 * count
    body = bytearray(tags + good[10 + 12 * entries:])
    for index in range(entries):
        at = 2 + 12 * index
        tag, kind, number = struct.unpack("<HHI", body[at:at + 8])
        if tag == 273 or (number * _TIFF_TYPES[kind][1] > 4):
            (offset,) = struct.unpack("<I", body[at + 8:at + 12])
            body[at + 8:at + 12] = struct.pack("<I", offset + shift)
    return good[:8] + bytes(body)


def png_with_bad_exif(seed: int, count: int = 150) -> bytes:
    """A good PNG whose eXIf chunk (with a correct CRC, before the pixels) holds ``count`` broken
    EXIF tags."""
    data = image_bytes(seed, "PNG")
    start = data.index(b"IDAT") - 4
    return data[:start] + _chunk(b"eXIf", _ifd_with_bad_tags(count)) + data[start:]


def jpeg_with_bad_exif(seed: int, count: int = 150) -> bytes:
    """A good JPEG whose EXIF block holds ``count`` broken tags; its pixels are fine."""
    buffer = io.BytesIO()
    Image.fromarray(pixels(seed)).save(buffer, "JPEG", exif=b"Exif\0\0" + _ifd_with_bad_tags(count))
    return buffer.getvalue()


def corrupt_compressed_tiff(seed: int, compression: str = "tiff_lzw") -> bytes:
    """An LZW (or deflate) TIFF whose compressed strip is overwritten with noise: libtiff fails."""
    buffer = io.BytesIO()
    Image.fromarray(pixels(seed, (64, 64))).save(buffer, "TIFF", compression=compression)
    data = bytearray(buffer.getvalue())
    noise = np.random.default_rng(seed).integers(0, 256, 200, dtype=np.uint8).tobytes()
    data[16:216] = noise  # the strip follows the 8-byte header in Pillow's files
    return bytes(data)


def corrupt_jpeg(seed: int, size=(64, 64)) -> bytes:
    """A JPEG whose Huffman table is bogus (more codes than a table can hold): libjpeg fails."""
    data = bytearray(image_bytes(seed, size=size))
    table = data.index(b"\xff\xc4") + 5  # after the marker, the length and the class/id byte
    data[table:table + 16] = b"\xff" * 16
    return bytes(data)
