"""The bundled offline sample data: real digits, a synthetic source task and a hard target task.

Nothing here downloads anything. Three image-folder datasets (``<out>/<dataset>/<class>/*.png``)
are made from what is already installed:

* ``digits``: the 1,797 real handwritten digits that scikit-learn ships (8x8, 17 grey levels),
  upscaled to ``image_size`` as dark ink on white RGB.
* ``source``: capital letters rendered with the TrueType fonts that ship with matplotlib, many
  per class, for **pretraining**. Each letter is drawn the way the UCI digits were made (a 32x32
  bitmap summed over 4x4 blocks into an 8x8 image with 17 levels), then shown like a target
  image: scaled, placed at random and painted over a cluttered, coloured background. The source
  and the target therefore share their low-level look and differ only in what is drawn.
* ``target``: every real digit, once, made hard the same way (random size, position, colours,
  line clutter and noise). With a few images per class a network trained from scratch does
  poorly; one pretrained on ``source`` does much better (see ``benchmarks/transfer_task.py``).

Every image has its own random generator seeded by ``(seed, dataset, class, index)``, so the
files are byte-identical for the same arguments however many threads render them. The
``make_*`` functions return arrays (for experiments); the ``write_*`` functions write PNG files
into a sibling temporary folder that then takes the dataset folder's place in one step, so an
interrupted call leaves the old dataset or the new one, never half (and the next call removes
its temporary folder).
"""

from __future__ import annotations

import concurrent.futures
import os
import string
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from workbench._checks import (PathInTheWay, UsageError, check_int, check_number,
                               renamed_arguments)
from workbench._io import atomic_path, remove_stale_temporaries
from workbench._progress import progress, progress_argument

DATASETS = ("digits", "source", "target")
LETTERS = string.ascii_uppercase
DEFAULT_SOURCE_PER_CLASS = 400
# Fonts that draw symbols, not letters, at the ASCII code points, or a box for every character.
_SYMBOL_FONTS = frozenset({"cmex10.ttf", "cmsy10.ttf", "LastResortHE-Regular.ttf"})
_BITMAP = 32  # the UCI digits were 32x32 bitmaps summed over 4x4 blocks
_RENDER = 64  # font size used to draw a glyph before it is fitted into the bitmap
_STREAMS = {"source": 1, "target": 2}
_thread_fonts = threading.local()


# ----------------------------------------------------------------------------------------------
# Fonts and glyphs
# ----------------------------------------------------------------------------------------------

def font_paths(characters: Sequence[str] = LETTERS) -> list[Path]:
    """Lists the TrueType fonts shipped with matplotlib that can draw every one of ``characters``.

    A font qualifies when each character renders to some ink that differs from the font's
    "missing glyph" box. Symbol fonts (``cmex10``, ``cmsy10``) and the last-resort font are left
    out by name because they draw something else at the letters' code points.

    Args:
        characters: the characters every font must be able to draw.

    Returns:
        The font files, sorted by name.

    Raises:
        ValueError: if ``characters`` is empty or no shipped font draws all of them.
    """
    characters = _check_characters(characters)
    import matplotlib  # only for the location of its bundled fonts

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    usable = []
    for path in sorted(folder.glob("*.ttf")):
        if path.name in _SYMBOL_FONTS:
            continue
        font = ImageFont.truetype(str(path), 32)
        missing = _draw_plain(font, "\uffff")
        if all(_has_ink_unlike(font, char, missing) for char in characters):
            usable.append(path)
    if not usable:
        raise UsageError(f"characters must be drawable by a font shipped with matplotlib, "
                         f"received: {''.join(characters)!r}")
    return usable


def _draw_plain(font, char: str) -> np.ndarray:
    image = Image.new("L", (48, 48))
    ImageDraw.Draw(image).text((4, 4), char, font=font, fill=255)
    return np.asarray(image)


def _has_ink_unlike(font, char: str, missing: np.ndarray) -> bool:
    drawn = _draw_plain(font, char)
    return bool(drawn.any()) and not np.array_equal(drawn, missing)


def _font(path: Path):
    """One FreeType face per thread and file: faces are not safe to share between threads."""
    cache = getattr(_thread_fonts, "cache", None)
    if cache is None:
        cache = _thread_fonts.cache = {}
    key = str(path)
    if key not in cache:
        cache[key] = ImageFont.truetype(key, _RENDER)
    return cache[key]


def glyph_bitmap(char: str, *, font_path: str | Path, rng: np.random.Generator,
                 stroke_width: int | None = None, max_rotation: float = 12.0,
                 max_shear: float = 0.25) -> np.ndarray:
    """Draws one character as a binary 32x32 bitmap, normalised like the UCI digits.

    The character is drawn large with a random stroke width, rotated and sheared at random,
    cropped to its ink, and scaled so that its longer side fills the 32x32 box (the digits fill
    the height and about three quarters of the width), centred.

    Args:
        char: the single character to draw.
        font_path: a TrueType font file.
        rng: the random generator that picks the variations.
        stroke_width: extra outline width in pixels at the drawing size (64); random in 0..4
            if None.
        max_rotation: the largest rotation, in degrees, either way.
        max_shear: the largest horizontal shear factor, either way.

    Returns:
        A ``(32, 32)`` bool array, True where there is ink.

    Raises:
        ValueError: for a string that is not one character or an option out of range.
    """
    if not isinstance(char, str) or len(char) != 1:
        raise UsageError(f"char must be a single character, received: {char!r}")
    max_rotation = check_number("max_rotation", max_rotation, minimum=0.0, maximum=180.0)
    max_shear = check_number("max_shear", max_shear, minimum=0.0, maximum=1.0)
    if stroke_width is None:
        stroke_width = int(rng.integers(0, 5))
    stroke_width = check_int("stroke_width", stroke_width, minimum=0)
    font = _font(Path(font_path))
    side = 3 * _RENDER
    canvas = Image.new("L", (side, side))
    ImageDraw.Draw(canvas).text((side // 2, side // 2), char, font=font, fill=255, anchor="mm",
                                stroke_width=stroke_width, stroke_fill=255)
    angle = float(rng.uniform(-max_rotation, max_rotation))
    shear = float(rng.uniform(-max_shear, max_shear))
    centre = side / 2
    # Inverse affine map (output -> input) for a horizontal shear about the centre.
    canvas = canvas.transform(canvas.size, Image.AFFINE,
                              (1.0, shear, -shear * centre, 0.0, 1.0, 0.0), Image.BILINEAR)
    canvas = canvas.rotate(angle, Image.BILINEAR)
    box = canvas.getbbox()
    if box is None:
        raise ValueError(f"font {Path(font_path).name} draws no ink for {char!r}")
    glyph = canvas.crop(box)
    width, height = glyph.size
    # Random aspect change, like handwriting that is narrower or wider than the font.
    width = max(1.0, width * float(rng.uniform(0.75, 1.25)))
    scale = _BITMAP / max(width, height)
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    glyph = glyph.resize(new_size, Image.BILINEAR)
    bitmap = Image.new("L", (_BITMAP, _BITMAP))
    bitmap.paste(glyph, ((_BITMAP - new_size[0]) // 2, (_BITMAP - new_size[1]) // 2))
    return np.asarray(bitmap) >= 128


def block_counts(bitmap: np.ndarray) -> np.ndarray:
    """Sums a 32x32 binary bitmap over 4x4 blocks into an 8x8 image with values 0..16.

    This is how the UCI/scikit-learn digits were made from the NIST bitmaps, which gives them
    their blurry look.

    Args:
        bitmap: a ``(32, 32)`` array of 0/1 or bool.

    Returns:
        An ``(8, 8)`` float array with integer values 0..16.

    Raises:
        ValueError: for a bitmap of another shape.
    """
    bitmap = np.asarray(bitmap)
    if bitmap.shape != (_BITMAP, _BITMAP):
        raise UsageError(f"bitmap must have shape (32, 32), received: {bitmap.shape}")
    return bitmap.astype(np.float64).reshape(8, 4, 8, 4).sum(axis=(1, 3))


# ----------------------------------------------------------------------------------------------
# Scenes: a glyph on a cluttered background
# ----------------------------------------------------------------------------------------------

def clutter(image_size: int, *, rng: np.random.Generator, background=None,
            lines: tuple[int, int] = (2, 5)) -> np.ndarray:
    """Paints a background: a flat random colour crossed by a few random lines.

    Args:
        image_size: the side of the square image in pixels.
        rng: the random generator.
        background: an RGB triple for the base colour; random if None.
        lines: the smallest and largest number of lines (inclusive).

    Returns:
        A ``(image_size, image_size, 3)`` uint8 array.

    Raises:
        ValueError: for a size below 8 or a bad ``lines`` range.
    """
    image_size = check_int("image_size", image_size, minimum=8)
    if len(lines) != 2 or lines[0] < 0 or lines[1] < lines[0]:
        raise UsageError(f"lines must be (minimum, maximum) with 0 <= minimum <= maximum, "
                         f"received: {lines!r}")
    if background is None:
        background = rng.integers(0, 256, size=3)
    image = Image.new("RGB", (image_size, image_size), tuple(int(v) for v in background))
    draw = ImageDraw.Draw(image)
    reach = image_size * 0.25  # lines may start and end off the image
    for _ in range(int(rng.integers(lines[0], lines[1] + 1))):
        ends = rng.uniform(-reach, image_size + reach, size=4)
        colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
        width = int(rng.integers(1, max(2, image_size // 16) + 1))
        draw.line([(ends[0], ends[1]), (ends[2], ends[3])], fill=colour, width=width)
    return np.asarray(image)


def compose(glyph: np.ndarray, *, image_size: int, rng: np.random.Generator,
            min_scale: float = 0.5, noise: float = 8.0, lines: tuple[int, int] = (2, 5)
            ) -> np.ndarray:
    """Shows an 8x8 glyph (0..16) at a random size and place on a cluttered background.

    The ink and background colours are random, but the ink is always darker than the
    background by at least 96 grey levels of luminance (ink on paper), so the glyph is readable;
    the clutter lines are not constrained. (With random polarity as well, the source task learns
    several times slower: at 150 renders per letter and 6 epochs the network stayed near chance.)

    Args:
        glyph: an ``(8, 8)`` array with values 0..16, e.g. a scikit-learn digit or the
            :func:`block_counts` of a rendered character.
        image_size: the side of the square output image.
        rng: the random generator.
        min_scale: the smallest glyph side as a fraction of ``image_size`` (the largest is 1).
        noise: standard deviation of the Gaussian pixel noise, in grey levels.
        lines: the smallest and largest number of clutter lines.

    Returns:
        A ``(image_size, image_size, 3)`` uint8 array.

    Raises:
        ValueError: for a glyph of another shape or an option out of range.
    """
    glyph = np.asarray(glyph, dtype=np.float64)
    if glyph.shape != (8, 8):
        raise UsageError(f"glyph must have shape (8, 8), received: {glyph.shape}")
    image_size = check_int("image_size", image_size, minimum=8)
    min_scale = check_number("min_scale", min_scale, minimum=0.125, maximum=1.0)
    noise = check_number("noise", noise, minimum=0.0)
    background, ink = _contrasting_colours(rng)
    canvas = clutter(image_size, rng=rng, background=background, lines=lines).astype(np.float64)
    side = int(rng.integers(max(8, round(min_scale * image_size)), image_size + 1))
    top, left = (int(v) for v in rng.integers(0, image_size - side + 1, size=2))
    alpha = np.asarray(Image.fromarray((glyph / 16.0).astype(np.float32), "F")
                       .resize((side, side), Image.BILINEAR), dtype=np.float64)
    alpha = np.clip(alpha, 0.0, 1.0)[..., None]
    patch = canvas[top:top + side, left:left + side]
    canvas[top:top + side, left:left + side] = patch * (1.0 - alpha) + ink * alpha
    if noise:
        canvas += rng.normal(0.0, noise, size=canvas.shape)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def _contrasting_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    weights = np.array([0.299, 0.587, 0.114])
    while True:
        background, ink = rng.integers(0, 256, size=(2, 3)).astype(np.float64)
        if weights @ background - weights @ ink >= 96:
            return background, ink


def render_character(char: str, *, font_path: str | Path, image_size: int = 32,
                     rng: np.random.Generator) -> np.ndarray:
    """Renders one source image: a character in a random style, degraded and cluttered.

    The character goes through :func:`glyph_bitmap` (font, stroke, rotation, shear, aspect),
    :func:`block_counts` (the digits' 8x8 look) and :func:`compose` (size, place, colours,
    clutter, noise), exactly the path a target digit takes after its own 8x8 stage.

    Args:
        char: the single character to draw.
        font_path: a TrueType font file, e.g. one of :func:`font_paths`.
        image_size: the side of the square output image.
        rng: the random generator.

    Returns:
        An ``(image_size, image_size, 3)`` uint8 array.
    """
    return compose(block_counts(glyph_bitmap(char, font_path=font_path, rng=rng)),
                   image_size=image_size, rng=rng)


# ----------------------------------------------------------------------------------------------
# Datasets as arrays
# ----------------------------------------------------------------------------------------------

def load_digit_glyphs() -> tuple[np.ndarray, np.ndarray]:
    """The scikit-learn digits (bundled with the package, no download).

    Returns:
        ``(images, labels)``: a ``(1797, 8, 8)`` float array with values 0..16 and the digits.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images.astype(np.float64), digits.target.astype(np.int64)


def make_digits(*, image_size: int = 32) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The real digits, upscaled (bilinear) to ``image_size`` as dark ink on white RGB.

    Args:
        image_size: the side of the square output images.

    Returns:
        ``(images, labels, class_names)``: uint8 ``(1797, size, size, 3)``, int labels 0..9 and
        the names ``"0"`` .. ``"9"``.
    """
    image_size = check_int("image_size", image_size, minimum=8)
    glyphs, labels = load_digit_glyphs()
    images = np.empty((len(glyphs), image_size, image_size, 3), np.uint8)
    for i, glyph in enumerate(glyphs):
        ink = np.asarray(Image.fromarray((glyph / 16.0).astype(np.float32), "F")
                         .resize((image_size, image_size), Image.BILINEAR))
        grey = np.clip(np.rint(255.0 * (1.0 - ink)), 0, 255).astype(np.uint8)
        images[i] = grey[..., None]
    return images, labels, [str(d) for d in range(10)]


def make_target(*, image_size: int = 32, seed: int = 0, workers: int | None = None,
                progress: str = "none") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Every real digit once, made hard: random size, place, colours, line clutter and noise.

    Args:
        image_size: the side of the square output images.
        seed: seeds the clutter; the digits themselves are always the same 1,797.
        workers: threads that compose the images; all CPU cores if None.
        progress: ``"none"`` (the default), ``"auto"`` (a bar where someone watches, plain
            lines headless) or ``"lines"``.

    Returns:
        ``(images, labels, class_names)`` as for :func:`make_digits`, in scikit-learn's order.
    """
    image_size = check_int("image_size", image_size, minimum=8)
    seed = check_int("seed", seed, minimum=0)
    progress = progress_argument(progress)
    glyphs, labels = load_digit_glyphs()

    def one(index: int) -> np.ndarray:
        rng = np.random.default_rng([seed, _STREAMS["target"], int(labels[index]), index])
        return compose(glyphs[index], image_size=image_size, rng=rng)

    images = _run(one, range(len(glyphs)), workers, progress, "target")
    return np.stack(images), labels, [str(d) for d in range(10)]


def make_source(per_class: int, *, image_size: int = 32, seed: int = 0,
                characters: Sequence[str] = LETTERS, workers: int | None = None,
                progress: str = "none") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Renders ``per_class`` images of each character, cycling through the usable fonts.

    Args:
        per_class: images per character.
        image_size: the side of the square output images.
        seed: seeds every random choice.
        characters: the classes, one character each (default: the 26 capital letters).
        workers: threads that render; all CPU cores if None.
        progress: ``"none"`` (the default), ``"auto"`` (a bar where someone watches, plain
            lines headless) or ``"lines"``.

    Returns:
        ``(images, labels, class_names)``: uint8 ``(len(characters) * per_class, size, size, 3)``
        ordered by class, int labels, and the folder names of the classes.

    Raises:
        ValueError: for a bad option or characters no shipped font can draw.
    """
    per_class = check_int("per_class", per_class, minimum=1)
    image_size = check_int("image_size", image_size, minimum=8)
    seed = check_int("seed", seed, minimum=0)
    characters = _check_characters(characters)
    progress = progress_argument(progress)
    fonts = font_paths(characters)

    def one(job: tuple[int, int]) -> np.ndarray:
        label, index = job
        rng = np.random.default_rng([seed, _STREAMS["source"], label, index])
        # Fonts cycle from a random start per class, so every font is used about equally.
        font = fonts[(index + label * 7) % len(fonts)]
        return render_character(characters[label], font_path=font, image_size=image_size, rng=rng)

    jobs = [(label, index) for label in range(len(characters)) for index in range(per_class)]
    images = _run(one, jobs, workers, progress, "source")
    labels = np.repeat(np.arange(len(characters), dtype=np.int64), per_class)
    return np.stack(images), labels, [class_folder(c) for c in characters]


def class_folder(char: str) -> str:
    """The folder name for a character class, safe on case-insensitive file systems.

    Capital letters and digits name themselves; small letters become ``"lower_a"``; anything
    else becomes its code point, ``"U+0021"``.

    Args:
        char: one character.

    Returns:
        The folder name.
    """
    if not isinstance(char, str) or len(char) != 1:
        raise UsageError(f"char must be a single character, received: {char!r}")
    if char in LETTERS or char in string.digits:
        return char
    if char in string.ascii_lowercase:
        return f"lower_{char}"
    return f"U+{ord(char):04X}"


def _check_characters(characters) -> tuple[str, ...]:
    if isinstance(characters, str):
        characters = tuple(characters)
    characters = tuple(characters)
    if not characters or not all(isinstance(c, str) and len(c) == 1 and not c.isspace()
                                 for c in characters):
        raise UsageError(f"characters must be a non-empty sequence of single visible characters, "
                         f"received: {characters!r}")
    if len(set(characters)) != len(characters):
        raise UsageError(f"characters must not repeat, received: {''.join(characters)!r}")
    return characters


def _run(function, jobs, workers, mode: str, desc: str) -> list:
    """Maps ``function`` over ``jobs`` on a thread pool, keeping the order of ``jobs``."""
    jobs = list(jobs)
    if workers is None:
        workers = os.cpu_count() or 1
    workers = check_int("workers", workers, minimum=1)
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(function, jobs, chunksize=1)
        results = progress(results, total=len(jobs), desc=desc, mode=mode)
        return list(results)


# ----------------------------------------------------------------------------------------------
# Writing image folders
# ----------------------------------------------------------------------------------------------

@renamed_arguments(out_dir="out")
def write_digits(out: str | Path, *, image_size: int = 32, overwrite: bool = False,
                 progress: str = "none") -> dict:
    """Writes ``<out>/digits/<digit>/digit_<index>.png``: the real digits, upscaled.

    Args:
        out: the parent folder; ``digits/`` is created inside it.
        image_size: the side of the square images.
        overwrite: replace an existing ``digits/`` folder; otherwise a non-empty one is an error.
        progress: while writing: ``"none"`` (the default), ``"auto"`` or ``"lines"``.

    Returns:
        A summary: ``{"path", "classes", "images", "image_size"}``.

    Raises:
        FileExistsError: if the folder exists, is not empty and ``overwrite`` is False.
    """
    progress = progress_argument(progress)
    images, labels, names = make_digits(image_size=image_size)
    files = [f"digit_{i:04d}.png" for i in range(len(images))]
    return _write_folder(Path(out), "digits", images, labels, names, files,
                         overwrite=overwrite, progress=progress, image_size=image_size)


@renamed_arguments(out_dir="out")
def write_target(out: str | Path, *, image_size: int = 32, seed: int = 0,
                 overwrite: bool = False, progress: str = "none") -> dict:
    """Writes ``<out>/target/<digit>/digit_<index>.png``: every digit once, made hard.

    All 1,797 images are written (about 180 per class); pick the few training images per class
    with the splitter, e.g. ``counts=(5, "rest", 50)`` for 5 train, 50 test per class. The
    ``index`` in a file name is the digit's index in ``sklearn.datasets.load_digits()``, the
    same as in ``digits/``, so the clean version of any target image can be looked up.

    Args:
        out: the parent folder; ``target/`` is created inside it.
        image_size: the side of the square images.
        seed: seeds the clutter.
        overwrite: replace an existing ``target/`` folder; otherwise a non-empty one is an error.
        progress: while rendering and writing: ``"none"`` (the default), ``"auto"`` or
            ``"lines"``.

    Returns:
        A summary: ``{"path", "classes", "images", "image_size"}``.

    Raises:
        FileExistsError: if the folder exists, is not empty and ``overwrite`` is False.
    """
    progress = progress_argument(progress)
    images, labels, names = make_target(image_size=image_size, seed=seed, progress=progress)
    files = [f"digit_{i:04d}.png" for i in range(len(images))]
    return _write_folder(Path(out), "target", images, labels, names, files,
                         overwrite=overwrite, progress=progress, image_size=image_size)


@renamed_arguments(out_dir="out")
def write_source(out: str | Path, *, per_class: int = DEFAULT_SOURCE_PER_CLASS,
                 image_size: int = 32, seed: int = 0, characters: Sequence[str] = LETTERS,
                 overwrite: bool = False, progress: str = "none") -> dict:
    """Writes ``<out>/source/<class>/<class>_<index>.png``: rendered characters.

    Args:
        out: the parent folder; ``source/`` is created inside it.
        per_class: images per character.
        image_size: the side of the square images.
        seed: seeds every random choice.
        characters: the classes, one character each (default: the 26 capital letters).
        overwrite: replace an existing ``source/`` folder; otherwise a non-empty one is an error.
        progress: while rendering and writing: ``"none"`` (the default), ``"auto"`` or
            ``"lines"``.

    Returns:
        A summary: ``{"path", "classes", "images", "image_size", "fonts"}``.

    Raises:
        FileExistsError: if the folder exists, is not empty and ``overwrite`` is False.
    """
    progress = progress_argument(progress)
    images, labels, names = make_source(per_class, image_size=image_size, seed=seed,
                                        characters=characters, progress=progress)
    files = [f"{names[label]}_{i % per_class:05d}.png" for i, label in enumerate(labels)]
    summary = _write_folder(Path(out), "source", images, labels, names, files,
                            overwrite=overwrite, progress=progress, image_size=image_size)
    summary["fonts"] = len(font_paths(characters))
    return summary


@renamed_arguments(out_dir="out")
def write_sample_data(out: str | Path, *, image_size: int = 32,
                      source_per_class: int = DEFAULT_SOURCE_PER_CLASS, seed: int = 0,
                      datasets: Sequence[str] = DATASETS, overwrite: bool = False,
                      progress: str = "auto") -> dict:
    """Writes the offline sample datasets as image folders under ``out``.

    Args:
        out: the folder to write into, e.g. ``data/sample``; created if needed.
        image_size: the side of the square images.
        source_per_class: rendered images per source character.
        seed: seeds the source renders and the target clutter.
        datasets: which of ``"digits"``, ``"source"``, ``"target"`` to write.
        overwrite: replace dataset folders that already exist.
        progress: ``"auto"`` (bars where someone watches, plain lines headless), ``"lines"``
            or ``"none"``.

    Returns:
        ``{dataset: summary}`` with the summaries of :func:`write_digits`,
        :func:`write_source` and :func:`write_target`.

    Raises:
        ValueError: for an unknown dataset name or a bad option.
        FileExistsError: if a dataset folder exists, is not empty and ``overwrite`` is False.
    """
    if isinstance(datasets, str):
        datasets = (datasets,)
    datasets = tuple(datasets)
    unknown = [name for name in datasets if name not in DATASETS]
    if not datasets or unknown:
        raise UsageError(f"datasets must be a non-empty selection of {', '.join(DATASETS)}, "
                         f"received: {datasets!r}")
    image_size = check_int("image_size", image_size, minimum=8)
    source_per_class = check_int("source_per_class", source_per_class, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    progress = progress_argument(progress)
    out = Path(out)
    for name in datasets:  # fail before any work, not half way
        _check_free(out / name, overwrite)
    summary = {}
    if "digits" in datasets:
        summary["digits"] = write_digits(out, image_size=image_size, overwrite=overwrite,
                                         progress=progress)
    if "source" in datasets:
        summary["source"] = write_source(out, per_class=source_per_class,
                                         image_size=image_size, seed=seed, overwrite=overwrite,
                                         progress=progress)
    if "target" in datasets:
        summary["target"] = write_target(out, image_size=image_size, seed=seed,
                                         overwrite=overwrite, progress=progress)
    return summary


class SampleFolderExists(PathInTheWay):
    """A dataset folder exists, is not empty, and ``overwrite`` was not given; ``str(error)``
    names the keyword, :meth:`message` can name a command's flag."""

    def __init__(self, folder: Path):
        self.folder = folder
        super().__init__(self.message())

    def message(self, *, overwrite: str = "overwrite=True") -> str:
        """The one-line error, naming ``overwrite`` as the caller spells it."""
        return f"{self.folder} already exists and is not empty; pass {overwrite} to replace it"


def _check_free(folder: Path, overwrite: bool) -> None:
    if folder.exists() and not overwrite and (not folder.is_dir() or any(folder.iterdir())):
        raise SampleFolderExists(folder)


def _write_folder(out_dir: Path, dataset: str, images: np.ndarray, labels: np.ndarray,
                  names: list[str], files: list[str], *, overwrite: bool, progress: str,
                  image_size: int) -> dict:
    """Writes the PNG files into a sibling temporary folder that then takes the dataset
    folder's place in one step (:func:`workbench._io.atomic_path`)."""
    final = out_dir / dataset
    _check_free(final, overwrite)
    remove_stale_temporaries(out_dir, name=dataset)  # left by a killed call
    if final.exists() and not final.is_dir():
        final.unlink()  # overwrite=True replaces a file standing in the folder's place

    with atomic_path(final) as partial:
        for name in names:
            (partial / name).mkdir(parents=True)

        def save(i: int) -> None:
            path = partial / names[labels[i]] / files[i]
            Image.fromarray(images[i], "RGB").save(path, format="PNG")

        _run(save, range(len(images)), None, progress, f"write {dataset}")
    return {"path": str(final), "classes": len(names), "images": int(len(images)),
            "image_size": image_size}
