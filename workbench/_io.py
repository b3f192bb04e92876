"""Atomic writes of files and folders (a killed process leaves the old complete one or the new
one, never half).

Each file or folder is written at a temporary name in the same folder and then renamed onto
the final one (``os.replace`` is atomic on POSIX and Windows for a file; a folder that already
exists is swapped with the new one in one step where the system can (Linux ``renameat2``),
otherwise renamed aside first, then removed). :func:`atomic_path` is the one mechanism the
workbench writes with: split folders, run files, checkpoints, the image cache, exports.
:func:`remove_stale_temporaries` clears what a killed writer left behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shutil
import uuid
from pathlib import Path

from workbench._checks import MissingPath, UsageError


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None, *, fsync: bool = False):
    """Yields a temporary path next to ``path``; renames it onto ``path`` if the block succeeds.

    The block writes a file or creates a folder at the temporary path. Whatever it leaves there
    is removed when the block raises (or when it ends without the rename).

    Args:
        path: the final file or folder.
        suffix: suffix of the temporary name (some writers, like Keras, insist on one);
            defaults to ``path``'s own.
        fsync: flush a file's contents to disk before the rename, so that after a power cut
            the name never points at a file whose blocks were not written (for files that
            are trusted later without being checked, like the image cache). Folders are not
            flushed.

    Raises:
        ValueError: ``path`` is an existing folder and the block wrote a file, or the reverse.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique name rather than mkstemp, whose 0600 mode would stick to the final file.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
                               f"{path.suffix if suffix is None else suffix}")
    try:
        yield temporary
        if temporary.is_dir() and not temporary.is_symlink():
            _replace_folder(temporary, path)
        else:
            if path.is_dir() and not path.is_symlink():
                raise ValueError(f"path is a folder and the block wrote a file, received: "
                                 f"{str(path)!r}")
            if fsync:
                with open(temporary, "rb+") as stream:
                    os.fsync(stream.fileno())
            os.replace(temporary, path)
    finally:
        remove(temporary)


def _replace_folder(temporary: Path, path: Path) -> None:
    """Renames the folder ``temporary`` onto ``path``: an old ``path`` is swapped with it in one
    step (it ends up at ``temporary``, which the caller removes), or, where the system cannot
    swap, moved aside first (a kill between the two renames leaves it set aside, and
    :func:`remove_stale_temporaries` puts it back)."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"path is a file and the block wrote a folder, received: {str(path)!r}")
    if path.is_dir() and not path.is_symlink() and _exchange(temporary, path):
        return
    old = path.with_name(f".{path.name}.old.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    if path.exists():
        os.replace(path, old)
    try:
        os.replace(temporary, path)
    except BaseException:
        if old.exists() and not path.exists():  # the rename failed: put the old folder back
            os.replace(old, path)
        raise
    remove(old)


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _exchange(first: Path, second: Path) -> bool:
    """Swaps two existing paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where
    the system or the file system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):  # not Linux, or a C library without it
        return False
    return renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second),
                     _RENAME_EXCHANGE) == 0


def remove(path: str | Path) -> None:
    """Removes a file or a folder tree if there is one (a symbolic link itself, not its target)."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


# the names atomic_path gives its temporaries (and _replace_folder the old folder it sets aside)
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}(\.[^.]*)?$")


def stale_temporaries(folder: str | Path) -> list[Path]:
    """The temporaries :func:`atomic_path` left in ``folder`` when its process was killed:
    those named after a process that is no longer running."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = []
    for path in folder.iterdir():
        match = _TEMPORARY.match(path.name)
        if match and not _running(int(match["pid"])):
            stale.append(path)
    return sorted(stale)


def remove_stale_temporaries(folder: str | Path, *, name: str | None = None) -> list[Path]:
    """Clears what killed :func:`atomic_path` writers left in ``folder`` (see
    :func:`stale_temporaries`; those of running processes stay).

    A folder that a killed replace had set aside while its successor was not yet in place is
    renamed back to its name (the old one is whole; the new one may not be); everything else
    is removed.

    Args:
        folder: the folder to clear.
        name: only the temporaries of this file or folder of ``folder``; all by default.

    Returns:
        The temporaries removed or put back.
    """
    cleared = []
    for path in stale_temporaries(folder):
        base = _TEMPORARY.match(path.name)["name"]
        if name is not None and base not in (name, f"{name}.old"):
            continue
        original = path.with_name(base.removesuffix(".old") or base)
        if base.endswith(".old") and path.is_dir() and not original.exists():
            os.replace(path, original)
        else:
            remove(path)
        cleared.append(path)
    return cleared


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # running, as another user
        return True
    return True


def write_text(path: str | Path, text: str) -> None:
    """Writes a text file atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8", newline="\n")


def write_json(path: str | Path, value) -> None:
    """Writes JSON atomically, keys sorted so equal values give equal files."""
    write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def write_figure(path: str | Path, figure, *, dpi: int = 100) -> None:
    """Saves a matplotlib figure atomically, the format from ``path``'s suffix."""
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=dpi)


def write_model(path: str | Path, model) -> None:
    """Saves a Keras model (``model.save``, with its compiled optimizer state) atomically."""
    with atomic_path(path) as temporary:
        model.save(temporary)


def write_outputs(folder, *, tables: dict | None = None, figures: dict | None = None,
                  prefix: str = "", dpi: int = 100) -> Path:
    """Writes tables as CSV and figures as images into ``folder``, each file atomically.

    Args:
        folder: the folder (created if missing).
        tables: ``{file name: pandas DataFrame}``, written without the index, ``\\n`` line ends.
        figures: ``{file name: matplotlib Figure}``, the format from the name's suffix.
        prefix: put before every file name, e.g. ``"bottleneck_"``.
        dpi: resolution of the figures.

    Returns:
        ``folder`` as a Path.

    Raises:
        ValueError: ``folder`` is not a path, or ``prefix`` is not a string without a path
            separator.
    """
    if not isinstance(folder, (str, os.PathLike)):
        raise UsageError(f"folder must be a path, received: {folder!r}")
    if not isinstance(prefix, str) or "/" in prefix or os.sep in prefix:
        raise UsageError(f"prefix must be a file-name prefix without a path separator, "
                         f"received: {prefix!r}")
    folder = Path(folder)
    for name, frame in (tables or {}).items():
        write_text(folder / f"{prefix}{name}", frame.to_csv(index=False, lineterminator="\n"))
    for name, figure in (figures or {}).items():
        write_figure(folder / f"{prefix}{name}", figure, dpi=dpi)
    return folder


def run_file(path, name: str) -> Path:
    """``path`` if it is a file, or ``path/name`` if ``path`` is a run directory holding one.

    Raises:
        ValueError: if ``path`` is not a path.
        FileNotFoundError: if neither exists.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise UsageError(f"path must be a {name} file or a run directory, received: {path!r}")
    path = Path(path)
    if path.is_dir():
        path = path / name
    if not path.is_file():
        raise MissingPath(f"path must be a {name} file or a run directory holding one, "
                          f"received: {str(path)!r} (not found)")
    return path
