"""``RunDir``: the one reader of a run directory written by ``finetune``.

A run directory holds everything a training run produces, each file written atomically:

====================  ======================================================================
``config.json``       every setting needed to reproduce the run
``history.csv``       one row per epoch (loss, accuracy, top-5, validation, lr, time)
``steps.csv``         the loss of every training step
``lr_table.csv``      layer, parameters, multiplier, effective learning rate per stage
``labels.txt``        class names, line ``i`` for output ``i``
``initial.keras``     the model as built, before training: the starting point (pretrained
                      weights and a new head) that notebook 4 compares the filters with
``model.keras``       the final model; ``best.keras`` the best by validation accuracy
``checkpoint.*``      the last checkpoint (model with optimizer state + ``checkpoint.json``)
``metrics.json``      final numbers for sweeps: status, accuracies, time, images/s
``calibration.json``  the temperature that calibrates the probabilities (fitted on the
                      validation split; ``workbench.calibration``), before/after NLL and ECE
``curves.png``        loss, accuracy and learning rate per epoch
``resources.csv``     GPU, CPU and RAM use over time (``workbench.monitor``)
``weight_stats.csv``  mean |w| and |dw|/|w| per layer and epoch
====================  ======================================================================

Training, evaluation, export, prediction, the web page, the notebooks and the studies read a
run through this class.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from workbench._checks import MissingPath, UsageError, check_choice
from workbench._io import atomic_path, remove_stale_temporaries, write_json
from workbench.data.splitdir import SplitFolder

if TYPE_CHECKING:  # imported where a table is read: prediction reads a run without pandas
    import pandas as pd

MODELS = ("best", "final")  # which model file of a run: the best checkpoint or the last epoch
CHECKPOINT_STATE = "checkpoint.json"
RUN_FILES = ("config.json", "history.csv", "steps.csv", "lr_table.csv", "labels.txt",
             "initial.keras", "model.keras", "best.keras", "metrics.json", "curves.png",
             "resources.csv", "weight_stats.csv", "calibration.json", CHECKPOINT_STATE)


class RunUnfinished(UsageError):
    """The run has not finished (interrupted, diverged, or stopped before its first checkpoint):
    its model files, if any, are of the middle of training, so it is neither evaluated nor
    exported.

    Attributes:
        run_dir: the run directory.
        what: what it holds, in a few words.
    """

    def __init__(self, run: RunDir):
        self.run_dir = run.path
        self.what = run.describe() if run.resumable else "stopped before its first checkpoint"
        super().__init__(self.advice(resume="finetune(..., resume=True)"))

    def advice(self, *, resume: str) -> str:
        """The message, naming the way to finish the run in the caller's words."""
        return (f"{self.run_dir} holds a run that has not finished ({self.what}), so its model "
                f"is one from the middle of training; finish the run first: {resume}")


class RunDir:
    """A run directory: its settings, numbers, history, labels, model files and split folder.

    Args:
        path: the run directory.

    Reading a file the run does not have raises ``FileNotFoundError`` naming the folder.
    """

    def __init__(self, path: str | os.PathLike):
        if not isinstance(path, (str, os.PathLike)):
            raise UsageError(f"run_dir must be a path, received: {path!r}")
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def exists(self) -> bool:
        """Whether the folder holds a run (its ``config.json``)."""
        return (self.path / "config.json").is_file()

    @functools.cached_property
    def config(self) -> dict:
        """``config.json``: every setting of the run.

        Raises:
            FileNotFoundError: naming the folder when it holds no run.
        """
        if not self.exists:
            raise MissingPath(f"run_dir must be a run directory written by finetune "
                              f"(with config.json), received: {str(self.path)!r}")
        return self._json("config.json")

    @property
    def metrics(self) -> dict | None:
        """``metrics.json`` (read afresh), or None while the run has not finished."""
        path = self.path / "metrics.json"
        return self._json("metrics.json") if path.is_file() else None

    @property
    def resumable(self) -> bool:
        """Whether there is anything to resume: a checkpoint, or a finished run. A folder that
        holds only a failed start (settings written, no checkpoint yet) is not."""
        return self.exists and ((self.path / CHECKPOINT_STATE).is_file() or
                                self.metrics is not None)

    @property
    def finished(self) -> bool:
        """Whether the run completed (or stopped early); a diverged run can still resume."""
        metrics = self.metrics
        return metrics is not None and metrics.get("status") != "diverged"

    def check_finished(self) -> None:
        """Fails unless the folder holds a finished run (completed or stopped early).

        Raises:
            FileNotFoundError: naming the folder when it holds no run.
            RunUnfinished: saying what it holds and how to finish it.
        """
        self.config  # noqa: B018 (fails first, naming the folder, when it holds no run)
        if not self.finished:
            raise RunUnfinished(self)

    @property
    def calibration(self) -> dict | None:
        """``calibration.json`` (read afresh), or None for a run trained before runs were
        calibrated, or not finished."""
        path = self.path / "calibration.json"
        return self._json("calibration.json") if path.is_file() else None

    def temperature(self, model: str = "best") -> float:
        """The temperature that calibrates ``model``'s probabilities (see
        ``workbench.calibration``); 1.0 (none) when the run has no calibration for that file.

        Raises:
            FileNotFoundError: when the run has no finished model.
        """
        fitted = (self.calibration or {}).get("models", {})
        return float(fitted.get(self.model_path(model).name, {}).get("temperature", 1.0))

    def write_calibration(self, record: dict) -> None:
        """Writes ``calibration.json`` atomically: ``record["models"]`` maps each model file's
        name to its fitted ``temperature`` (and the numbers before and after)."""
        if not isinstance(record, dict) or not isinstance(record.get("models"), dict):
            raise UsageError(f"record must be a dict with a 'models' dict, received: "
                             f"{record!r}"[:300])
        write_json(self.path / "calibration.json", record)

    @property
    def checkpoint_epoch(self) -> int | None:
        """The epoch of the last checkpoint (``checkpoint.json``), or None without one."""
        path = self.path / CHECKPOINT_STATE
        return int(self._json(CHECKPOINT_STATE)["epoch"]) if path.is_file() else None

    def describe(self) -> str:
        """What the folder holds, in a few words: ``"finished at epoch 30, test accuracy
        0.812"``, ``"diverged in epoch 4, last checkpoint at epoch 3"``, ``"interrupted at
        epoch 12"``, or ``"no run"``."""
        if not self.resumable:
            return "no run"
        metrics, epoch = self.metrics, self.checkpoint_epoch
        if metrics is None:
            return f"interrupted at epoch {epoch}"
        if metrics.get("status") == "diverged":
            kept = f", last checkpoint at epoch {epoch}" if epoch else ", no checkpoint"
            return f"diverged in epoch {int(metrics.get('epochs', 0)) + 1}{kept}"
        accuracy = next((f", {split} accuracy {metrics[f'{split}_accuracy']:.3f}"
                         for split in ("test", "val") if f"{split}_accuracy" in metrics), "")
        return f"finished at epoch {metrics.get('epochs')}{accuracy}"

    @contextlib.contextmanager
    def replacement(self):
        """Yields a :class:`RunDir` of a new folder beside this one, which replaces this folder
        in one step when the block succeeds. When the block raises (or the process is killed),
        this folder stays as it was; what the block wrote is removed (by :meth:`recover` after
        a kill)."""
        self.recover()
        with atomic_path(self.path) as temporary:
            temporary.mkdir()
            yield RunDir(temporary)
        self.__dict__.pop("config", None)

    def recover(self) -> list[Path]:
        """Clears what a killed :meth:`replacement` left beside this folder (the new run's
        folder; after a kill in the middle of the swap, the old run set aside is put back).
        Returns the paths cleared."""
        return remove_stale_temporaries(self.path.parent, name=self.path.name)

    def history(self) -> pd.DataFrame:
        """``history.csv``: one row per epoch."""
        import pandas as pd

        return pd.read_csv(self._file("history.csv"))

    def steps(self) -> pd.DataFrame:
        """``steps.csv``: the loss of every training step."""
        import pandas as pd

        return pd.read_csv(self._file("steps.csv"))

    def lr_table(self) -> pd.DataFrame:
        """``lr_table.csv`` (empty when the run has none)."""
        import pandas as pd

        path = self.path / "lr_table.csv"
        return pd.read_csv(path) if path.is_file() else pd.DataFrame()

    @property
    def classes(self) -> list[str]:
        """The class names, index ``i`` naming output ``i``."""
        return list(self.config["classes"])

    @property
    def image_size(self) -> int:
        return int(self.config["image_size"])

    @property
    def resize_mode(self) -> str:
        return self.config.get("resize_mode", "squash")

    @property
    def starting_point(self) -> str | None:
        """What the run was fine-tuned from: the backbone name, or the source model's file."""
        config = self.config
        return config.get("backbone") or (Path(config["source"]).name if config.get("source")
                                          else None)

    def model_path(self, model: str = "best") -> Path:
        """The model file: ``best.keras`` (falling back to ``model.keras`` when the run kept no
        best checkpoint) or ``model.keras`` for ``"final"``.

        Raises:
            FileNotFoundError: when the run has no finished model.
        """
        check_choice("model", model, MODELS)
        if model == "best" and (self.path / "best.keras").is_file():
            return self.path / "best.keras"
        path = self.path / "model.keras"
        if not path.is_file():
            raise MissingPath(f"run_dir holds no finished model (model.keras), received: "
                              f"{str(self.path)!r}")
        return path

    def initial_model_path(self) -> Path:
        """``initial.keras``: the model as built before training (its pretrained weights).

        Raises:
            FileNotFoundError: for a run trained before runs recorded their starting point.
        """
        path = self.path / "initial.keras"
        if not path.is_file():
            raise MissingPath(f"run_dir holds no initial.keras (trained before runs "
                              f"recorded their starting point: compare with the model it "
                              f"started from instead), received: {str(self.path)!r}")
        return path

    def split_folder(self) -> SplitFolder:
        """The split folder the run was trained on."""
        return SplitFolder(self.config["splits"])

    def load_splits(self, *, progress: str = "none"):
        """The run's split folder decoded as training decoded it (same size and resize mode).

        Args:
            progress: while decoding: ``"none"`` (the default), ``"auto"`` or ``"lines"``.

        Raises:
            ValueError: when the split folder's classes changed since the run was trained.
        """
        data = self.split_folder().load(image_size=self.image_size,
                                        resize_mode=self.resize_mode, progress=progress)
        if self.config.get("classes") and self.classes != list(data.classes):
            raise UsageError(f"the classes of {self.config['splits']} changed since the run was "
                             f"trained: the run has {len(self.classes)}, the split folder "
                             f"{len(data.classes)}")
        return data

    def example_image(self, *, split: str = "test", index: int = 0) -> Path:
        """An image file from the run's own dataset: the ``index``-th image of ``split``."""
        return self.split_folder().image_path(split, index)

    def clear(self) -> None:
        """Removes the files of an earlier run (only the workbench's own) before a fresh start;
        anything else in the folder (an ``export/``, the user's notes) stays."""
        if not self.path.is_dir():
            return
        for name in RUN_FILES:
            (self.path / name).unlink(missing_ok=True)
        for old in self.path.glob("checkpoint-*.keras"):
            old.unlink()
        self.__dict__.pop("config", None)

    def remove_partial_files(self) -> list[Path]:
        """Deletes what a killed process left half-written (the temporary files of atomic
        writes); returns what was removed."""
        return remove_stale_temporaries(self.path)

    def _file(self, name: str) -> Path:
        path = self.path / name
        if not path.is_file():
            raise MissingPath(f"the run directory {str(self.path)!r} has no {name}")
        return path

    def _json(self, name: str) -> dict:
        path = self._file(name)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except ValueError as error:
            raise UsageError(f"{path} is not readable JSON ({error}); the run directory is "
                             "damaged: train it again") from None
