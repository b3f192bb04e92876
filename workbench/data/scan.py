"""Finding every file of a dataset, validating it, and recording why a file is rejected.

A dataset is either a folder of class folders (``root/<class>/**/<image>``) or a Caffe-style list
file (``relative/path label_index`` per line) with a labels file (one class name per line, like
``synset_words.txt``). :func:`scan` reads every file once, decodes it with
:func:`workbench.data.images.decode` (a JPEG at 1/8 scale, which still reads and entropy-decodes
all of its data, so truncation and corruption are caught as by a full decode), hashes its bytes
and returns one row per file, accepted or rejected, with a short reason from :data:`REASONS` and a
sentence of detail. Nothing is ever written into the dataset.

Example::

    from workbench.data.scan import scan
    table = scan("data/flowers")
    table[table.status == "rejected"].groupby("reason").size()
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import numpy as np

from workbench._checks import MissingPath, UsageError, check_choice, check_int
from workbench._progress import progress as _progress_bar
from workbench._progress import progress_argument
from workbench.data.images import (DEFAULT_MAX_PIXELS, ImageRejected, decode, is_image_name,
                                   load_array, open_image)

if TYPE_CHECKING:  # imported where a table is made: listing files for a prediction needs none
    import pandas as pd

# Status of a row.
OK = "ok"
REJECTED = "rejected"

# Why a file is rejected: the ``reason`` column holds exactly one of these.
ZERO_BYTES = "zero bytes"
NOT_AN_IMAGE = "not an image"
UNSUPPORTED_FORMAT = "unsupported format"  # an image, but in none of images.ACCEPTED_FORMATS
TRUNCATED = "truncated or corrupt"
DECOMPRESSION_BOMB = "decompression bomb"
TOO_SMALL = "too small"
UNUSABLE_PIXELS = "unusable pixel values"
UNREADABLE = "unreadable"
HIDDEN = "hidden or system file"
DUPLICATE = "duplicate"
CONFLICTING_LABELS = "conflicting labels"
BAD_LIST_ENTRY = "bad list entry"
NOT_IN_CLASS_FOLDER = "not in a class folder"

REASONS = (ZERO_BYTES, NOT_AN_IMAGE, UNSUPPORTED_FORMAT, TRUNCATED, DECOMPRESSION_BOMB, TOO_SMALL,
           UNUSABLE_PIXELS, UNREADABLE, HIDDEN, DUPLICATE, CONFLICTING_LABELS, BAD_LIST_ENTRY,
           NOT_IN_CLASS_FOLDER)
JPEG_DECODES = ("draft", "full")  # how scan decodes a JPEG (its decode_jpeg argument)

COLUMNS = ("path", "label", "width", "height", "mode", "sha256", "status", "reason", "detail")

# Names (compared in lower case) that operating systems and archivers leave next to real files.
SYSTEM_FILES = frozenset({".ds_store", "thumbs.db", "ehthumbs.db", "desktop.ini", "icon\r"})
SYSTEM_FOLDERS = frozenset({"__macosx", "$recycle.bin", "system volume information"})

assert set(ImageRejected.REASONS) <= set(REASONS), "images.ImageRejected has a reason scan lacks"


def scan(root, *, list_file=None, labels_file=None, min_side: int = 8,
         max_pixels: int = DEFAULT_MAX_PIXELS, workers: int | None = None,
         progress: str = "auto", decode_jpeg: str = "draft") -> pd.DataFrame:
    """Lists, decodes and validates every file of a dataset.

    Args:
        root: the dataset folder. Without ``list_file`` every sub-folder of ``root`` is a class
            and every file at any depth below it an example of that class. With ``list_file``
            the paths in the list are relative to ``root``.
        list_file: a Caffe-style list, one ``path label_index`` per line; the path may contain
            spaces (the line is split on its last whitespace). Needs ``labels_file``.
        labels_file: one class name per line; line ``i`` (from 0) names label index ``i``.
        min_side: images whose shorter side has fewer pixels are rejected as ``"too small"``.
        max_pixels: images whose header claims more pixels are rejected as
            ``"decompression bomb"`` without being decoded.
        workers: threads that read and decode files; ``None`` means ``min(8, os.cpu_count())``.
        progress: ``"auto"`` (a bar where someone watches, plain lines headless; see
            :mod:`workbench._progress`), ``"lines"`` or ``"none"``.
        decode_jpeg: ``"draft"`` decodes a JPEG at 1/8 scale: all of its compressed data is
            still read and entropy-decoded, so truncated and corrupt files are rejected as by a
            full decode, several times faster on 12 MP photos (``benchmarks/input_pipeline.py``);
            ``"full"`` decodes it at full size. Other formats are always decoded in full.

    Returns:
        A DataFrame with columns ``path`` (relative to ``root``, as found or as listed),
        ``label``, ``width`` and ``height`` (the full size after EXIF orientation), ``mode``
        (the original PIL mode, e.g. ``"CMYK"`` or ``"I;16"``), ``sha256`` (of the file's bytes),
        ``status`` (``"ok"`` or ``"rejected"``), ``reason`` (one of :data:`REASONS`, empty when
        ok) and ``detail``; one row per file, sorted by path. Exact copies with the same label
        keep the first path in sorted order and reject the others as ``"duplicate"``; content
        found under two labels is rejected everywhere as ``"conflicting labels"``.

    Raises:
        FileNotFoundError: if ``root``, ``list_file`` or ``labels_file`` does not exist.
        ValueError: if an argument is invalid or the labels file cannot be used.
    """
    min_side = check_int("min_side", min_side, minimum=1)
    max_pixels = check_int("max_pixels", max_pixels, minimum=1)
    if workers is None:
        workers = min(8, os.cpu_count() or 1)
    workers = check_int("workers", workers, minimum=1)
    progress = progress_argument(progress)
    check_choice("decode_jpeg", decode_jpeg, JPEG_DECODES)
    draft_size = 1 if decode_jpeg == "draft" else None  # 1: the smallest scale libjpeg offers
    if list_file is not None and labels_file is None:
        raise UsageError(f"labels_file is required with list_file={os.fspath(list_file)!r}, "
                         "received: None")
    if labels_file is not None and list_file is None:
        raise UsageError(f"list_file is required with labels_file={os.fspath(labels_file)!r}, "
                         "received: None")
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise MissingPath(f"root folder not found: {root!r}")

    if list_file is None:
        entries = _folder_entries(root)
    else:
        entries = _list_entries(root, os.fspath(list_file), os.fspath(labels_file))

    to_check = [entry for entry in entries if entry["status"] is None]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="scan") as pool:
        results = pool.map(lambda entry: _check_file(entry["file"], min_side, max_pixels,
                                                     draft_size), to_check)
        results = _progress_bar(results, total=len(to_check), desc="scan", mode=progress)
        for index, result in enumerate(results):
            to_check[index].update(result)

    import pandas as pd

    entries.sort(key=lambda entry: (entry["path"], entry["order"]))
    _reject_copies(entries)
    table = pd.DataFrame([{column: entry.get(column) for column in COLUMNS} for entry in entries],
                         columns=list(COLUMNS))
    for column in ("width", "height"):
        table[column] = table[column].astype("Int64")
    for column in ("path", "label", "mode", "sha256", "status", "reason", "detail"):
        table[column] = table[column].fillna("").astype(str)
    table.attrs["root"] = root
    return table


def _entry(path: str, label: str, order: int, file: str | None = None, *, reason: str = "",
           detail: str = "") -> dict:
    """One row in the making; ``status`` None means the file still has to be read."""
    return {"path": path, "label": label, "order": order, "file": file,
            "status": REJECTED if reason else None, "reason": reason, "detail": detail}


def hidden_reason(parts) -> str:
    """Why a path is a hidden or system file, or ``""`` when it is not.

    Args:
        parts: the path's parts below the folder searched, e.g. ``("cats", ".DS_Store")``.
    """
    *folders, name = parts
    for folder in folders:
        if folder.lower() in SYSTEM_FOLDERS:
            return f"inside the system folder {folder}"
        if folder.startswith(".") and folder != "..":
            return f"inside the hidden folder {folder}"
    if name.lower() in SYSTEM_FILES:
        return f"{name} is an operating-system file"
    if name.startswith("."):
        return f"{name} is a hidden file"
    return ""


def walk(root: str):
    """Every file below ``root`` at any depth, in sorted order, with the rules of :func:`scan`.

    Symbolic links to folders are followed once (a link back to a folder already listed is
    not); hidden and system files, files without an image extension and folders that cannot be
    listed are yielded with the reason they are not read.

    Args:
        root: the folder.

    Yields:
        ``(path, file, reason, detail)``: ``path`` relative to ``root`` with ``/``; ``file``
        the path to open (None when the file is not to be read); ``reason`` one of
        :data:`REASONS` (``""`` for a file to read) and its ``detail``.
    """
    unreadable = []

    def note(error: OSError) -> None:
        unreadable.append(error)

    seen_folders = set()
    for folder, subfolders, names in os.walk(root, onerror=note, followlinks=True):
        while unreadable:
            error = unreadable.pop(0)
            yield (os.path.relpath(error.filename, root).replace(os.sep, "/"), None, UNREADABLE,
                   f"cannot list folder: {error.strerror or error}")
        real = os.path.realpath(folder)
        if real in seen_folders:  # a symbolic link back to a folder already listed
            subfolders[:] = []
            continue
        seen_folders.add(real)
        subfolders.sort()
        relative = os.path.relpath(folder, root)
        prefix = "" if relative == "." else relative.replace(os.sep, "/") + "/"
        for name in sorted(names):
            path = prefix + name
            why_hidden = hidden_reason(path.split("/"))
            if why_hidden:
                yield path, None, HIDDEN, why_hidden
            elif not is_image_name(name):
                suffix = PurePosixPath(name).suffix or "(none)"
                yield path, None, NOT_AN_IMAGE, f"extension {suffix} is not an image type"
            else:
                yield path, os.path.join(folder, name), "", ""
    for error in unreadable:
        yield (os.path.relpath(error.filename, root).replace(os.sep, "/"), None, UNREADABLE,
               f"cannot list folder: {error.strerror or error}")


def _folder_entries(root: str) -> list[dict]:
    """One entry per file below ``root``; class folders are its direct sub-folders."""
    entries = []
    for path, file, reason, detail in walk(root):
        parts = path.split("/")
        label = parts[0] if len(parts) > 1 or reason == UNREADABLE else ""
        if reason == HIDDEN and hidden_reason(parts[:1] + ["x"]):  # a hidden class folder
            label = ""
        if reason in (HIDDEN, UNREADABLE) or (reason and len(parts) > 1):
            entries.append(_entry(path, label, len(entries), reason=reason, detail=detail))
        elif len(parts) == 1:
            entries.append(_entry(path, "", len(entries), reason=NOT_IN_CLASS_FOLDER,
                                  detail="a file at the top of the dataset folder; images "
                                         "must be inside a folder named after their class"))
        else:
            entries.append(_entry(path, label, len(entries), file))
    return entries


def _read_lines(path: str, argument: str) -> list[str]:
    if not os.path.isfile(path):
        raise MissingPath(f"{argument} not found: {path!r}")
    try:
        with open(path, encoding="utf-8-sig") as stream:
            return stream.read().splitlines()
    except UnicodeDecodeError as error:
        raise UsageError(f"{argument} must be UTF-8 text, received: {path!r} ({error})") from error


def read_labels(labels_file) -> list[str]:
    """Reads a labels file: one class name per line, the whole stripped line being the name.

    Trailing blank lines are ignored; a blank or repeated name elsewhere is an error, since it
    would shift or merge label indices.
    """
    labels_file = os.fspath(labels_file)
    lines = [line.strip() for line in _read_lines(labels_file, "labels_file")]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise UsageError(f"labels_file has no class names, received: {labels_file!r}")
    seen = {}
    for number, name in enumerate(lines, start=1):
        if not name:
            raise UsageError(f"labels_file line {number} is blank, received: {labels_file!r}")
        if name in seen:
            raise UsageError(f"labels_file line {number} repeats the class {name!r} of line "
                             f"{seen[name]}, received: {labels_file!r}")
        seen[name] = number
    return lines


def list_paths(list_file) -> list[str]:
    """The paths a list file names: Caffe's ``path label_index`` lines (the path may contain
    spaces; the line is split on its last whitespace) or one path a line; blank lines skipped.

    Raises:
        FileNotFoundError: ``list_file`` does not exist.
        ValueError: it is not UTF-8 text.
    """
    paths = []
    for line in _read_lines(os.fspath(list_file), "list_file"):
        line = line.strip()
        if not line:
            continue
        parts = line.rsplit(None, 1)
        is_caffe = len(parts) == 2 and parts[1].lstrip("-").isdigit()
        paths.append(parts[0] if is_caffe else line)
    return paths


def _list_entries(root: str, list_file: str, labels_file: str) -> list[dict]:
    """One entry per non-blank line of a Caffe list file."""
    labels = read_labels(labels_file)
    lines = _read_lines(list_file, "list_file")
    entries = []
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line:
            continue
        where = f"{os.path.basename(list_file)} line {number}"
        parts = line.rsplit(None, 1)
        if len(parts) < 2:
            entries.append(_entry(line, "", len(entries), reason=BAD_LIST_ENTRY,
                                  detail=f"{where}: no label index after the path"))
            continue
        path, index = parts
        try:
            index = int(index)
        except ValueError:
            entries.append(_entry(path, "", len(entries), reason=BAD_LIST_ENTRY,
                                  detail=f"{where}: label index {index!r} is not an integer"))
            continue
        if not 0 <= index < len(labels):
            entries.append(_entry(path, "", len(entries), reason=BAD_LIST_ENTRY,
                                  detail=f"{where}: label index {index} is outside 0.."
                                         f"{len(labels) - 1} ({len(labels)} labels)"))
            continue
        why_hidden = hidden_reason(PurePosixPath(path).parts or ("",))
        if why_hidden:
            entries.append(_entry(path, labels[index], len(entries), reason=HIDDEN,
                                  detail=why_hidden))
        else:
            entries.append(_entry(path, labels[index], len(entries), os.path.join(root, path)))
    return entries


def _check_file(file: str, min_side: int, max_pixels: int, draft_size: int | None) -> dict:
    """Reads, hashes and decodes one file; returns the columns it fills."""
    try:
        with open(file, "rb") as stream:
            data = stream.read()
    except FileNotFoundError:
        return {"status": REJECTED, "reason": UNREADABLE, "detail": "file not found (missing)"}
    except OSError as error:
        return {"status": REJECTED, "reason": UNREADABLE,
                "detail": f"cannot read: {error.strerror or error}"}
    result = {"sha256": hashlib.sha256(data).hexdigest()}
    if not data:
        return {**result, "status": REJECTED, "reason": ZERO_BYTES, "detail": "the file is empty"}
    try:
        image = decode(data, max_pixels=max_pixels, min_side=min_side, draft_size=draft_size)
    except ImageRejected as error:
        return {**result, "status": REJECTED, "reason": error.reason, "detail": error.detail}
    except Exception as error:  # a decoder bug on a crafted file must not stop the whole scan
        return {**result, "status": REJECTED, "reason": TRUNCATED,
                "detail": f"decoding failed: {type(error).__name__}: {error}"}
    return {**result, "status": OK, "reason": "", "detail": "", "width": image.width,
            "height": image.height, "mode": image.mode}


def _reject_copies(entries: list[dict]) -> None:
    """Rejects exact copies among accepted files (``entries`` sorted by path)."""
    groups = defaultdict(list)
    for entry in entries:
        if entry["status"] == OK:
            groups[entry["sha256"]].append(entry)
    for group in groups.values():
        if len(group) < 2:
            continue
        if len({entry["label"] for entry in group}) > 1:
            for entry in group:
                others = [f"{other['path']} (label {other['label']!r})" for other in group
                          if other["label"] != entry["label"]]
                more = f" and {len(others) - 3} more" if len(others) > 3 else ""
                entry.update(status=REJECTED, reason=CONFLICTING_LABELS,
                             detail="same content also under another label: "
                                    + ", ".join(others[:3]) + more)
        else:
            kept = group[0]
            for entry in group[1:]:
                entry.update(status=REJECTED, reason=DUPLICATE,
                             detail=f"same content as {kept['path']} (kept)")


def sample_images(table: pd.DataFrame, root, *, per_class: int = 6, max_classes: int = 20,
                  image_size: int | None = None, seed: int = 0) -> tuple[list, list]:
    """A few images of each class, picked at random and decoded (for
    :func:`workbench.plots.samples_per_class`).

    Args:
        table: rows with ``path`` (relative to ``root``) and ``label``, e.g. a scan or split
            table; rows whose ``status`` is not ``"ok"`` are skipped.
        root: the dataset folder.
        per_class: at most this many images of each class, kept in table order.
        max_classes: at most this many classes, the first in sorted order.
        image_size: if given, images are squashed to this side, as the model sees them.
        seed: which images are picked.

    Returns:
        ``(images, labels)``: uint8 (H, W, 3) arrays and their classes, class by class.
    """
    import pandas as pd

    check_int("per_class", per_class, minimum=1)
    check_int("max_classes", max_classes, minimum=1)
    if image_size is not None:
        check_int("image_size", image_size, minimum=1)
    if not isinstance(table, pd.DataFrame) or not {"path", "label"} <= set(table.columns):
        raise UsageError(f"table must be a DataFrame with 'path' and 'label' columns, "
                         f"received: {type(table).__name__}")
    if "status" in table.columns:
        table = table[table["status"] == OK]
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label, rows in list(table.groupby("label", sort=True))[:max_classes]:
        picked = rows.iloc[np.sort(rng.permutation(len(rows))[:per_class])]
        for path in picked["path"]:
            file = Path(root) / path
            images.append(load_array(file, image_size) if image_size else
                          np.asarray(open_image(file)))
            labels.append(label)
    return images, labels
