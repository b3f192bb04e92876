"""The files a batch job classifies: what a user names, listed as :class:`Source` rows, and
classified by a ``Classifier`` with decoding in threads (the row pipeline under
``Classifier.predict_files`` and ``workbench.deploy.batch``).

:func:`list_files` turns image files, folders (searched at every depth with the file rules of
``workbench.data.scan``) and list files (Caffe's ``path label`` format or one path a line) into
:class:`Source` rows. :func:`predict_rows` classifies them: a pool of threads decodes and
resizes the files (a large JPEG at a reduced scale: libjpeg's DCT scaling) into a bounded queue
while the model runs batches, so memory stays flat for any number of files and the model rarely
waits. A file that cannot be used gets a row with its reason (scan's reasons).
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from workbench._checks import MissingPath, UsageError, check_bool, check_int
from workbench._progress import progress as progress_bar
from workbench._progress import progress_argument
from workbench.data import scan as scanning
from workbench.data.images import DEFAULT_MAX_PIXELS, ImageRejected, load_array


@dataclasses.dataclass(frozen=True)
class Source:
    """One file to classify.

    Attributes:
        path: the path as the output shows it: as given, or relative to the folder given.
        file: the path to open; None when the file is not to be read (``reason`` says why).
        reason: ``""``, or why the file is not read (one of ``workbench.data.scan.REASONS``).
        detail: a sentence about ``reason``.
    """

    path: str
    file: str | None
    reason: str = ""
    detail: str = ""


def list_files(paths=(), *, list_file=None, list_root=None) -> list[Source]:
    """The files named by image paths, folders and a list file, each once, in order.

    Args:
        paths: image files and folders. A folder is searched at every depth with the rules of
            ``workbench.data.scan.walk`` (hidden and system files, files without an image
            extension and unlistable folders get a row with their reason). Its files are shown
            relative to it when it is the only path given, else joined to it as given.
        list_file: a list file: Caffe's ``path label_index`` lines or one path a line.
        list_root: the folder the list's relative paths are relative to (default the list
            file's own folder).

    Returns:
        :class:`Source` rows; a path named twice is kept once, at its first place.

    Raises:
        ValueError: nothing is named.
        FileNotFoundError: ``list_file`` or ``list_root`` does not exist.
    """
    paths = [os.fspath(path) for path in ([paths] if isinstance(paths, (str, os.PathLike))
                                          else paths)]
    if not paths and list_file is None:
        raise UsageError("paths must name at least one image or folder, or list_file a list, "
                         "received: nothing")
    sources = []
    for given in paths:
        if os.path.isdir(given):
            prefix = "" if len(paths) == 1 and list_file is None else given.rstrip("/") + "/"
            sources += [Source(prefix + path, file, reason, detail)
                        for path, file, reason, detail in scanning.walk(given)]
        elif os.path.exists(given):
            sources.append(Source(given, given))
        else:
            sources.append(Source(given, None, scanning.UNREADABLE, "file not found (missing)"))
    if list_file is not None:
        root = os.fspath(list_root) if list_root is not None else \
            os.path.dirname(os.path.abspath(os.fspath(list_file)))
        if not os.path.isdir(root):
            raise MissingPath(f"list_root must be an existing folder, received: {root!r}")
        for path in scanning.list_paths(list_file):
            why_hidden = scanning.hidden_reason(Path(path).parts or ("",))
            sources.append(Source(path, None, scanning.HIDDEN, why_hidden) if why_hidden
                           else Source(path, os.path.join(root, path)))
    seen, unique = set(), []
    for source in sources:
        if source.path not in seen:
            seen.add(source.path)
            unique.append(source)
    return unique


def as_sources(paths) -> list[Source]:
    return [path if isinstance(path, Source) else Source(os.fspath(path), os.fspath(path))
            for path in paths]


def _load(source: Source, side: int, mode: str, max_pixels: int) -> dict:
    """Decodes one file for the model: ``pixels`` or its ``error``, with its size and mtime."""
    loaded = {"source": source, "pixels": None, "error": source.reason, "detail": source.detail,
              "size": None, "mtime_ns": None}
    if source.file is None:
        return loaded
    try:
        stat = os.stat(source.file)
        loaded.update(size=stat.st_size, mtime_ns=stat.st_mtime_ns)
    except FileNotFoundError:
        return {**loaded, "error": scanning.UNREADABLE, "detail": "file not found (missing)"}
    except OSError as error:
        return {**loaded, "error": scanning.UNREADABLE,
                "detail": f"cannot read: {error.strerror or error}"}
    try:
        loaded["pixels"] = load_array(source.file, side, mode, max_pixels=max_pixels)
    except ImageRejected as error:
        loaded.update(error=error.reason, detail=error.detail)
    except Exception as error:  # a decoder bug on a crafted file must not stop the job
        loaded.update(error=scanning.TRUNCATED,
                      detail=f"decoding failed: {type(error).__name__}: {error}")
    return loaded


class _Embedder:
    """The run's Keras model with two outputs: the pooled features (the input of its last
    layer, the classifier head) and the probabilities."""

    def __init__(self, classifier):
        import keras

        network = classifier.keras_model(needed_by="features need")
        head = network.layers[-1]
        self.model = keras.Model(network.inputs, [head.input, network.output])
        self.temperature = classifier.temperature
        self._lock = threading.Lock()
        self._rows = 0  # calls are padded to the largest batch seen: one trace, not one a size

    def _run(self, pixels: np.ndarray):
        count = len(pixels)
        self._rows = max(self._rows, count)
        padded = np.zeros((self._rows, *pixels.shape[1:]), np.float32)
        padded[:count] = pixels
        features, probabilities = self.model.predict_on_batch(padded)
        return np.asarray(features)[:count], np.asarray(probabilities)[:count]

    def __call__(self, pixels: np.ndarray, *, tta: bool, calibrated: bool):
        from workbench.calibration import apply_temperature

        with self._lock:
            features, probabilities = self._run(pixels)
            if tta:
                mirrored = np.ascontiguousarray(pixels[:, :, ::-1])
                probabilities = (probabilities + self._run(mirrored)[1]) / 2
        probabilities = np.asarray(probabilities, dtype=np.float32)
        if calibrated and self.temperature != 1.0:
            probabilities = apply_temperature(probabilities, self.temperature)
        return np.asarray(features, dtype=np.float32), probabilities


def predict_rows(classifier, paths, *, top_k: int = 5, batch_size: int = 64,
                 threads: int | None = None, tta: bool = False, calibrated: bool = True,
                 features: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS,
                 progress: str = "none", queue_size: int | None = None):
    """Classifies files, decoding in threads while the model runs batches; yields a row each.

    ``Classifier.predict_files`` is this function; see it for the arguments and the rows.
    ``queue_size`` bounds the files decoded or being decoded ahead of the model (default
    ``2 * batch_size + threads``): what memory the job holds, whatever the number of files.
    """
    check_int("top_k", top_k, minimum=1)
    check_int("batch_size", batch_size, minimum=1)
    threads = check_int("threads", threads if threads is not None else
                        min(8, os.cpu_count() or 1), minimum=1)
    check_bool("tta", tta), check_bool("calibrated", calibrated)
    check_bool("features", features)
    progress = progress_argument(progress)
    queue_size = check_int("queue_size", queue_size if queue_size is not None
                           else 2 * batch_size + threads, minimum=1)
    sources = as_sources(paths)
    embed = _Embedder(classifier) if features else None
    rows = _rows(classifier, sources, embed, top_k=top_k, batch_size=batch_size,
                 threads=threads, tta=tta, calibrated=calibrated, max_pixels=max_pixels,
                 queue_size=queue_size)
    return progress_bar(rows, total=len(sources), desc="predict", unit="images", mode=progress)


def _rows(classifier, sources, embed, *, top_k, batch_size, threads, tta, calibrated,
          max_pixels, queue_size):
    side, mode = classifier.image_size, classifier.resize_mode
    k = min(top_k, len(classifier.labels))
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="predict-decode") as pool:
        pending, upcoming = deque(), iter(sources)

        def fill() -> None:  # keep at most queue_size files decoded or in decoding
            while len(pending) < queue_size:
                source = next(upcoming, None)
                if source is None:
                    return
                pending.append(pool.submit(_load, source, side, mode, max_pixels))

        fill()
        batch = []
        try:
            while pending:
                batch.append(pending.popleft().result())
                fill()
                ready = sum(loaded["pixels"] is not None for loaded in batch)
                if ready == batch_size or not pending:
                    yield from _classified(classifier, embed, batch, k, batch_size, tta,
                                           calibrated)
                    batch = []
        finally:  # a consumer that stops early: the files not started are not decoded
            for future in pending:
                future.cancel()


def _classified(classifier, embed, batch, k, batch_size, tta, calibrated):
    """The rows of one batch of decoded files, in order."""
    usable = [loaded for loaded in batch if loaded["pixels"] is not None]
    features = None
    if usable:
        pixels = np.stack([loaded["pixels"] for loaded in usable])
        if embed is not None:
            features, probabilities = embed(pixels, tta=tta, calibrated=calibrated)
        else:
            probabilities = classifier.probabilities(pixels, batch_size=batch_size, tta=tta,
                                                     calibrated=calibrated)
    index, ranked = 0, classifier.top_rows(probabilities, k) if usable else []
    for loaded in batch:
        row = {"path": loaded["source"].path}
        top = []
        if loaded["pixels"] is not None:
            top = ranked[index]
        for rank in range(k):
            row[f"label_{rank + 1}"] = top[rank]["label"] if top else None
            row[f"probability_{rank + 1}"] = top[rank]["probability"] if top else np.nan
        row.update(error=loaded["error"] if not top else "",
                   detail=loaded["detail"] if not top else "",
                   size=loaded["size"], mtime_ns=loaded["mtime_ns"])
        if embed is not None:
            row["features"] = features[index] if top else None
        index += bool(top)
        yield row
