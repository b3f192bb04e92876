"""Atomic file writes (a killed process leaves the old complete file or the new one, never half).

Each file goes to a temporary name in the same folder and is then renamed over the old one
(``os.replace`` is atomic on POSIX and Windows).
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from pathlib import Path

@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None):
    """Yields a temporary path next to ``path``; renames it onto ``path`` if the block succeeds.

    Args:
        path: the final file.
        suffix: suffix of the temporary file (some writers, like Keras, insist on one);
            defaults to ``path``'s own.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique name rather than mkstemp, whose 0600 mode would stick to the final file.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
                               f"{path.suffix if suffix is None else suffix}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def write_text(path: str | Path, text: str) -> None:
    """Writes a text file atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8", newline="\n")


def write_json(path: str | Path, value) -> None:
    """Writes JSON atomically, keys sorted so equal values give equal files."""
    write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


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
