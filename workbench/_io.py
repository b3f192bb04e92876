"""Atomic file writes (a killed process leaves the old complete file or the new one, never half)
and the files of a run directory.

Each file goes to a temporary name in the same folder and is then renamed over the old one
(``os.replace`` is atomic on POSIX and Windows).
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from pathlib import Path

from workbench._checks import check_choice

MODELS = ("best", "final")  # which model file of a run: the best checkpoint or the last epoch


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


def read_config(run_dir: str | Path) -> dict:
    """The ``config.json`` of a run directory.

    Raises:
        FileNotFoundError: naming the folder when it holds no run.
    """
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"run_dir must be a run directory written by finetune "
                                f"(with config.json), received: {str(run_dir)!r}")
    return json.loads(path.read_text(encoding="utf-8"))


def model_path(run_dir: str | Path, model: str = "best") -> Path:
    """The model file of a run: ``best.keras`` (falling back to ``model.keras`` when the run kept
    no best checkpoint) or ``model.keras`` for ``"final"``.

    Raises:
        FileNotFoundError: when the run has no finished model.
    """
    check_choice("model", model, MODELS)
    run_dir = Path(run_dir)
    if model == "best" and (run_dir / "best.keras").is_file():
        return run_dir / "best.keras"
    path = run_dir / "model.keras"
    if not path.is_file():
        raise FileNotFoundError(f"run_dir holds no finished model (model.keras), received: "
                                f"{str(run_dir)!r}")
    return path
