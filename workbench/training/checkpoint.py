"""Resumable checkpoints of a run directory, written atomically (see ``workbench._io``); the
names of their files are the run's (:class:`workbench.runs.RunDir`)."""

from __future__ import annotations

from pathlib import Path

import keras

from workbench._checks import MissingPath
from workbench._io import write_model
# Imported for their registration: the optimizers, schedule and loss a run compiles with.
from workbench.training import lr_mult, solver  # noqa: F401
from workbench.runs import RunDir


def save_model(model: keras.Model, path: str | Path) -> None:
    """Saves a ``.keras`` model (with its compiled optimizer state) atomically."""
    write_model(path, model)


def save_checkpoint(run_dir: str | Path, model: keras.Model, state: dict) -> Path:
    """Saves the model with its optimizer state, then the training state that points at it.

    The model goes to a file named after the epoch and the state names that file, so whenever
    the process is killed the state on disk refers to a complete model of the same epoch; the
    previous checkpoint is deleted only after the new state is in place.

    Args:
        run_dir: the run directory.
        model: the compiled model being trained.
        state: JSON-serialisable training state; must hold the finished ``epoch``.

    Returns:
        The path of the new checkpoint model.
    """
    run = RunDir(run_dir)
    previous = run.checkpoint_state
    model_path = run.checkpoint_path(state["epoch"])
    save_model(model, model_path)
    run.write_checkpoint_state({**state, "model": model_path.name})
    if previous is not None and previous["model"] != model_path.name:
        (run.path / previous["model"]).unlink(missing_ok=True)
    return model_path


def load_checkpoint(run_dir: str | Path) -> tuple[keras.Model, dict] | None:
    """Returns ``(model, state)`` from the last checkpoint of a run, or None if it has none.

    ``state`` is what was passed to :func:`save_checkpoint`.
    """
    run = RunDir(run_dir)
    state = run.checkpoint_state
    if state is None:
        return None
    model_path = run.path / state.pop("model")
    return load_compiled(model_path), state


def load_compiled(path: str | Path) -> keras.Model:
    """Loads a ``.keras`` model saved during training with its optimizer state, in safe mode.

    Raises:
        FileNotFoundError: when there is no file at ``path``.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingPath(f"no model file at {path}")
    return keras.models.load_model(path, safe_mode=True)
