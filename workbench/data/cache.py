"""The decoded uint8 cache: every image of a split decoded and resized once, on disk.

Decoding and resizing a JPEG costs far more than reading the same pixels back, so each split is
decoded once by :func:`build_cache` into a memory-mapped ``.npy`` of shape (N, H, W, 3), reused
until its inputs change, and served by :class:`workbench.data.pipeline.Batches`. The cache is
written beside its final name and renamed into place, and a later build removes the
temporaries of a killed one.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from workbench._checks import MissingPath, UsageError, check_choice, check_int
from workbench._io import atomic_path, remove_stale_temporaries
from workbench._progress import progress as progress_bar
from workbench._progress import progress_argument
from workbench.data import images
from workbench.data.images import RESIZE_MODES, ImageRejected, check_image_size

CACHE_FORMAT = 3  # bump when the cache layout or the decoding changes, to invalidate old caches
# (3: JPEGs drafted for the resize mode, and resize near the exact area resize, not a box filter)
_CHUNK = 32  # images per thread task: large enough to amortise scheduling, small for progress


class CacheBuildError(UsageError):
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
                progress: str = "auto") -> np.memmap:
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
        progress: while building: ``"auto"`` (a bar where someone watches, plain lines
            headless), ``"lines"`` or ``"none"``.

    Returns:
        A read-only ``numpy.memmap`` of shape ``(len(paths), height, width, 3)``, dtype uint8,
        row ``i`` holding ``images.load_array(root / paths[i], image_size, resize_mode)``.

    Raises:
        ValueError: if an argument is invalid, ``paths`` is empty or ``root`` is not a folder.
        FileNotFoundError: if an image file does not exist.
        CacheBuildError: if some images cannot be decoded; it lists every one of them.
    """
    height, width = check_image_size(image_size)
    check_choice("resize_mode", resize_mode, RESIZE_MODES)
    progress = progress_argument(progress)
    workers = _default_workers() if workers is None else check_int("workers", workers, minimum=1)
    if isinstance(paths, (str, os.PathLike)) or len(paths) == 0:
        raise UsageError(f"paths must be a non-empty sequence of paths, received: {paths!r}")
    root = Path(root).resolve()
    if not root.is_dir():
        raise UsageError(f"root must be an existing folder, received: {str(root)!r}")
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
            raise MissingPath(f"image file not found: {str(file)!r}") from error
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
                 progress: str) -> None:
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
        per_image = progress_bar(per_image, total=len(files), desc="decoding images",
                                 mode=progress)
        for _ in per_image:  # waits for the chunks in order, re-raising any worker error
            pass
    finally:  # on Ctrl-C, drop the queued chunks instead of decoding them all first
        executor.shutdown(wait=True, cancel_futures=True)
        os.close(descriptor)
    if failures:
        raise CacheBuildError([(str(files[i]), failures[i]) for i in sorted(failures)])
