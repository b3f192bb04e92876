"""Atomic writes of files and folders (a killed process leaves the old complete one or the new
one, never half).

Each file or folder is written at a temporary name in the same folder and then renamed onto
the final one (``os.replace`` is atomic on POSIX and Windows for a file; a folder that already
exists is first renamed aside, then removed). :func:`atomic_path` is the one mechanism the
workbench writes with: run files, checkpoints, the image cache, exports.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import uuid
from pathlib import Path


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
    """Renames the folder ``temporary`` onto ``path``, moving an old ``path`` aside first."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"path is a file and the block wrote a folder, received: {str(path)!r}")
    old = path.with_name(f".{path.name}.old.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    if path.exists():
        os.replace(path, old)
    try:
        os.replace(temporary, path)
    except BaseException:
        if old.exists():  # put the old folder back
            os.replace(old, path)
        raise
    remove(old)


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
        raise ValueError(f"folder must be a path, received: {folder!r}")
    if not isinstance(prefix, str) or "/" in prefix or os.sep in prefix:
        raise ValueError(f"prefix must be a file-name prefix without a path separator, "
                         f"received: {prefix!r}")
    folder = Path(folder)
    for name, frame in (tables or {}).items():
        write_text(folder / f"{prefix}{name}", frame.to_csv(index=False, lineterminator="\n"))
    for name, figure in (figures or {}).items():
        with atomic_path(folder / f"{prefix}{name}") as temporary:
            figure.savefig(temporary, dpi=dpi)
    return folder


def run_file(path, name: str) -> Path:
    """``path`` if it is a file, or ``path/name`` if ``path`` is a run directory holding one.

    Raises:
        ValueError: if ``path`` is not a path.
        FileNotFoundError: if neither exists.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"path must be a {name} file or a run directory, received: {path!r}")
    path = Path(path)
    if path.is_dir():
        path = path / name
    if not path.is_file():
        raise FileNotFoundError(f"path must be a {name} file or a run directory holding one, "
                                f"received: {str(path)!r} (not found)")
    return path
