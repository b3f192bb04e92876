"""Photos to measure resizing on, and the exact area resize to measure it against.

* :func:`real_photos`: the three real photographs installed with the dependencies: scikit-learn's
  ``china.jpg`` and ``flower.jpg`` (640x427) and matplotlib's ``grace_hopper.jpg`` (512x600);
  small, and JPEG-compressed once already.
* :func:`photo`: a synthetic photo of any size with the statistics of a natural image rather
  than of an enlarged small one: texture whose amplitude falls as 1/frequency (octaves of noise,
  each twice as strong as the next finer one, down to single pixels), a few sharp-edged
  objects, a slow gradient of light, and sensor noise.
* :func:`area_resize`: the exact area (box) resize, in float64: each output pixel is the mean of
  the input area it covers, partial pixels weighted by the part covered (OpenCV's
  ``INTER_AREA`` when shrinking). The reference the draft decode's quality is measured against.

Used by tests/test_jpeg_draft.py and benchmarks/jpeg_decode.py.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def real_photo_paths() -> list[Path]:
    """The real photographs installed with scikit-learn and matplotlib (those found)."""
    import matplotlib
    import sklearn.datasets

    found = [Path(sklearn.datasets.__file__).parent / "images" / name
             for name in ("china.jpg", "flower.jpg")]
    found.append(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")
    return [path for path in found if path.is_file()]


def real_photos() -> dict[str, np.ndarray]:
    """``{name: uint8 (H, W, 3)}`` of :func:`real_photo_paths`."""
    return {path.stem: np.asarray(Image.open(path).convert("RGB"))
            for path in real_photo_paths()}


def photo(width: int, height: int, *, seed: int = 0) -> np.ndarray:
    """A synthetic photo, uint8 (height, width, 3) (see the module docstring)."""
    rng = np.random.default_rng(seed)
    texture = _octaves(width, height, 3, rng)  # brightness and two colour differences
    scene = 128 + 45 * texture[..., :1] + 12 * texture[..., 1:2] * np.array([1, -0.5, -0.5]) \
        + 12 * texture[..., 2:] * np.array([0, 0.7, -0.7])
    scene += np.linspace(rng.uniform(-30, 0), rng.uniform(0, 30), width)[None, :, None]
    labels = Image.new("L", (width, height))
    draw = ImageDraw.Draw(labels)
    for label in range(1, 13):  # objects with sharp edges and a texture of their own
        x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
        box = [x0, y0, x0 + rng.uniform(0.05, 0.3) * width, y0 + rng.uniform(0.05, 0.3) * height]
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=label)
    labels = np.asarray(labels)
    colours = rng.uniform(20, 235, (13, 3))
    inside = labels > 0
    scene[inside] = colours[labels[inside]] + 25 * np.roll(texture, width // 3, axis=1)[inside]
    lens = Image.fromarray(np.clip(scene, 0, 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(0.6))
    noisy = np.asarray(lens, np.float32) + rng.normal(0, 3, (height, width, 3)).astype(np.float32)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def _octaves(width: int, height: int, channels: int, rng) -> np.ndarray:
    """Noise whose amplitude falls as 1/frequency, float32 (height, width, channels) of unit
    variance: every octave, from single pixels up, holds the same energy."""
    levels = max(1, int(np.log2(min(width, height))) - 2)
    sizes = [(max(2, -(-width // 2 ** k)), max(2, -(-height // 2 ** k)))
             for k in range(levels, -1, -1)]  # coarsest first, the full size last
    total = np.zeros((sizes[0][1], sizes[0][0], channels), np.float32)
    for size in sizes:
        total = np.stack([np.asarray(Image.fromarray(total[..., c], "F").resize(
            size, Image.BICUBIC)) for c in range(channels)], axis=-1)
        total += rng.normal(0, 1, total.shape).astype(np.float32)
    return (total - total.mean()) / total.std()


def jpeg(pixels: np.ndarray, *, quality: int = 90, **save) -> bytes:
    """``pixels`` as JPEG bytes (Pillow's defaults: baseline, 4:2:0 below quality 95)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=quality, **save)
    return buffer.getvalue()


def _area_weights(length: int, start: float, stop: float, count: int):
    """The (count, length) matrix that averages [start, stop) of ``length`` input pixels into
    ``count`` equal output pixels, each input pixel weighted by the part of it covered."""
    from scipy import sparse

    step = (stop - start) / count
    rows, cols, values = [], [], []
    for j in range(count):
        low, high = start + j * step, start + (j + 1) * step
        for i in range(max(0, int(np.floor(low))), min(length, int(np.ceil(high)))):
            covered = min(high, i + 1) - max(low, i)
            if covered > 0:
                rows.append(j), cols.append(i), values.append(covered / step)
    return sparse.csr_matrix((values, (rows, cols)), shape=(count, length))


def area_resize(pixels: np.ndarray, size: tuple[int, int], box=None) -> np.ndarray:
    """The exact area resize of ``pixels`` (H, W, C) to ``size`` = (height, width), float64.

    Args:
        pixels: the image.
        size: the output (height, width).
        box: the part of ``pixels`` to resize, ``(left, top, right, bottom)`` in pixels (may be
            fractional); the whole image by default.
    """
    height, width, channels = pixels.shape
    left, top, right, bottom = box if box is not None else (0, 0, width, height)
    across = _area_weights(width, left, right, size[1])  # (out_w, W)
    down = _area_weights(height, top, bottom, size[0])  # (out_h, H)
    rows = down @ pixels.reshape(height, width * channels).astype(np.float64)
    rows = rows.reshape(size[0], width, channels).transpose(1, 0, 2).reshape(width, -1)
    return (across @ rows).reshape(size[1], size[0], channels).transpose(1, 0, 2)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two 8-bit images (``inf`` when equal)."""
    error = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float("inf") if error == 0 else float(10 * np.log10(255.0 ** 2 / error))
