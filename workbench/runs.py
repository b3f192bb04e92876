"""``RunDir``: the one owner of a run directory written by ``finetune``, reads and writes.

A run directory holds everything a training run produces. This module is the one place that
knows the names of its files and how each is written (atomically, through ``workbench._io``);
training, evaluation, export, prediction, the web page, the notebooks and the studies ask a
:class:`RunDir` for them:

====================  ======================================================================
file                  read / written through ``RunDir``
====================  ======================================================================
``config.json``       ``config`` / ``write_config``: every setting needed to reproduce the run
``history.csv``       ``history`` / ``history_path``: one row per epoch (loss, accuracy,
                      top-5, validation, lr, time), appended while training
``steps.csv``         ``steps`` / ``steps_path``: the loss of every training step
``lr_table.csv``      ``lr_table`` / ``write_lr_table``: layer, parameters, multiplier,
                      effective learning rate per stage
``labels.txt``        ``write_labels``: class names, line ``i`` for output ``i`` (``classes``
                      reads them from the config)
``initial.keras``     ``initial_model_path()`` / ``save_model(model, "initial")``: the model as
                      built, before training: the starting point (pretrained weights and a
                      new head) that notebook 4 compares the filters with
``model.keras``       ``model_path("final")`` / ``save_model(model, "final")``: the final model;
``best.keras``        ``model_path("best")`` / ``save_model(model, "best")``: the best by
                      validation accuracy
``checkpoint-*``      ``checkpoint_path(epoch)``, ``checkpoint_state`` /
                      ``write_checkpoint_state``: the last checkpoint (model with optimizer
                      state + ``checkpoint.json``; ``workbench.training.checkpoint``)
``metrics.json``      ``metrics`` / ``write_metrics``: final numbers for sweeps: status,
                      accuracies, time, images/s
``calibration.json``  ``calibration`` / ``write_calibration``: the temperature that calibrates
                      the probabilities (fitted on the validation split;
                      ``workbench.calibration``), before/after NLL and ECE
``curves.png``        ``write_figure("curves", ...)``: loss, accuracy and learning rate per
                      epoch (also ``resources``, ``filters``, ``weight_stats``: the figures of
                      ``workbench plot-resources`` and ``make demo``)
``resources.csv``     ``resources`` / ``resources_path``: GPU, CPU and RAM use over time
                      (``workbench.monitor``)
``weight_stats.csv``  ``weight_stats`` / ``weight_stats_path``: mean |w| and |dw|/|w| per
                      layer and epoch
``logs/``             ``tensorboard_dir``: TensorBoard's logs, when asked for
``evaluation/``       ``evaluation_dir(split)``: the evaluation reports
``export/``           ``export_dir``: the exported models and their sidecars
                      (``workbench.deploy.export``)
====================  ======================================================================

What a run may lack reads as None (``metrics`` of an unfinished run, ``resources`` of a run
that did not record them, ...), so a notebook needs no test of whether a file exists. Reading
the data imports pandas only when a table is read.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from workbench._checks import MissingPath, UsageError, check_choice, deprecated
from workbench._io import (atomic_path, remove_stale_temporaries, write_figure, write_json,
                           write_model, write_text)

if TYPE_CHECKING:
    import pandas as pd

    from workbench.data.splitdir import SplitData, SplitFolder

MODELS = ("best", "final")  # which model file of a run: the best checkpoint or the last epoch
_MODEL_FILES = {"initial": "initial.keras", "best": "best.keras", "final": "model.keras"}
_CONFIG, _LABELS, _METRICS, _CALIBRATION = ("config.json", "labels.txt", "metrics.json",
                                            "calibration.json")
_HISTORY, _STEPS, _LR_TABLE = "history.csv", "steps.csv", "lr_table.csv"
_RESOURCES, _WEIGHT_STATS = "resources.csv", "weight_stats.csv"
CHECKPOINT_STATE = "checkpoint.json"
_CHECKPOINT = "checkpoint-"  # + the epoch in 4 digits + .keras
FIGURES = ("curves", "resources", "filters", "weight_stats")  # ``<name>.png`` in the run
_TENSORBOARD, _EVALUATION, _EXPORT = "logs", "evaluation", "export"


def _figure_file(name: str) -> str:
    return f"{name}.png"


# the files of a run that clear() removes before a fresh start (the figures of
# plot-resources and make demo, and the folders, stay)
RUN_FILES = (_CONFIG, _HISTORY, _STEPS, _LR_TABLE, _LABELS, *_MODEL_FILES.values(), _METRICS,
             _figure_file("curves"), _RESOURCES, _WEIGHT_STATS, _CALIBRATION, CHECKPOINT_STATE)
# the columns of weight_stats.csv (written by workbench.training.callbacks.WeightStats)
WEIGHT_STATS_COLUMNS = ["epoch", "layer", "weight", "mean_abs", "update_ratio"]


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
    """A run directory: its settings, numbers, history, labels, model files and split folder,
    and the one writer of its files.

    Args:
        path: the run directory.

    The data are properties read afresh from the files; what the run lacks reads as None
    (``config`` alone raises ``FileNotFoundError`` when the folder holds no run).
    """

    def __init__(self, path: str | os.PathLike):
        if not isinstance(path, (str, os.PathLike)):
            raise UsageError(f"run_dir must be a path, received: {path!r}")
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __truediv__(self, name: str) -> Path:
        deprecated("RunDir / name is deprecated and will be removed in the next release: use "
                   "the RunDir property or method of the file (run.weight_stats, "
                   "run.model_path('best'), ...)")
        return self.path / name

    @property
    def run_dir(self) -> Path:
        """Deprecated: the folder is :attr:`path` (``finetune`` returned a ``Run`` whose
        ``run_dir`` it was)."""
        deprecated("run.run_dir is deprecated and will be removed in the next release: use "
                   "run.path")
        return self.path

    # --- reading -------------------------------------------------------------------------------

    @property
    def exists(self) -> bool:
        """Whether the folder holds a run (its ``config.json``)."""
        return (self.path / _CONFIG).is_file()

    @property
    def config(self) -> dict:
        """``config.json``: every setting of the run.

        Raises:
            FileNotFoundError: naming the folder when it holds no run.
        """
        if not self.exists:
            raise MissingPath(f"run_dir must be a run directory written by finetune "
                              f"(with {_CONFIG}), received: {str(self.path)!r}")
        return self._json(_CONFIG)

    @property
    def metrics(self) -> dict | None:
        """``metrics.json``, or None while the run has not finished."""
        return self._json(_METRICS)

    @property
    def calibration(self) -> dict | None:
        """``calibration.json``, or None for a run trained before runs were calibrated, or not
        finished."""
        return self._json(_CALIBRATION)

    @property
    def history(self) -> pd.DataFrame | None:
        """``history.csv``: one row per epoch; None before the first epoch."""
        return self._csv(self.history_path, "history")

    @property
    def steps(self) -> pd.DataFrame | None:
        """``steps.csv``: the loss of every training step; None before the first step."""
        return self._csv(self.steps_path, "steps")

    @property
    def lr_table(self) -> pd.DataFrame | None:
        """``lr_table.csv``: layer, parameters, multiplier and effective learning rate of every
        stage begun; None before the first stage."""
        return self._csv(self.path / _LR_TABLE, "lr_table")

    @property
    def weight_stats(self) -> pd.DataFrame | None:
        """``weight_stats.csv`` (see :func:`read_weight_stats`), or None for a run that did not
        record weight statistics."""
        path = self.weight_stats_path
        return read_weight_stats(path) if path.is_file() else None

    @property
    def resources(self) -> pd.DataFrame | None:
        """``resources.csv`` (see ``workbench.monitor.read_resources``), or None for a run that
        did not record resources."""
        from workbench.monitor import read_resources

        path = self.resources_path
        return read_resources(path) if path.is_file() else None

    @property
    def checkpoint_state(self) -> dict | None:
        """``checkpoint.json``: the state of the last checkpoint (its ``epoch``, and ``model``:
        the name of its model file), or None without one."""
        return self._json(CHECKPOINT_STATE)

    @property
    def checkpoint_epoch(self) -> int | None:
        """The epoch of the last checkpoint, or None without one."""
        state = self.checkpoint_state
        return int(state["epoch"]) if state is not None else None

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

    def temperature(self, model: str = "best") -> float:
        """The temperature that calibrates ``model``'s probabilities (see
        ``workbench.calibration``); 1.0 (none) when the run has no calibration for that file.

        Raises:
            FileNotFoundError: when the run has no finished model.
        """
        fitted = (self.calibration or {}).get("models", {})
        return float(fitted.get(self.model_path(model).name, {}).get("temperature", 1.0))

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

    # --- where the files are -------------------------------------------------------------------

    def model_path(self, model: str = "best") -> Path:
        """The model file: ``best.keras`` (falling back to ``model.keras`` when the run kept no
        best checkpoint) or ``model.keras`` for ``"final"``.

        Raises:
            FileNotFoundError: when the run has no finished model.
        """
        check_choice("model", model, MODELS)
        best = self.model_file("best")
        if model == "best" and best.is_file():
            return best
        path = self.model_file("final")
        if not path.is_file():
            raise MissingPath(f"run_dir holds no finished model ({path.name}), received: "
                              f"{str(self.path)!r}")
        return path

    def model_file(self, which: str) -> Path:
        """Where the run keeps its ``"initial"``, ``"best"`` or ``"final"`` model
        (``initial.keras``, ``best.keras``, ``model.keras``), there yet or not: to read a
        finished run's model use :meth:`model_path`, which checks and falls back."""
        check_choice("which", which, tuple(_MODEL_FILES))
        return self.path / _MODEL_FILES[which]

    def which_model(self, path: str | os.PathLike) -> str | None:
        """Which model of this run the file ``path`` is: ``"best"``, ``"final"``, or None for
        any other file (a checkpoint, ``initial.keras``, a file elsewhere)."""
        return next((model for model in MODELS if Path(path) == self.model_file(model)), None)

    def initial_model_path(self) -> Path:
        """``initial.keras``: the model as built before training (its pretrained weights).

        Raises:
            FileNotFoundError: for a run trained before runs recorded their starting point.
        """
        path = self.model_file("initial")
        if not path.is_file():
            raise MissingPath(f"run_dir holds no {path.name} (trained before runs "
                              f"recorded their starting point: compare with the model it "
                              f"started from instead), received: {str(self.path)!r}")
        return path

    def checkpoint_path(self, epoch: int) -> Path:
        """The model file of the checkpoint of ``epoch`` (``checkpoint-NNNN.keras``)."""
        return self.path / f"{_CHECKPOINT}{int(epoch):04d}.keras"

    @property
    def history_path(self) -> Path:
        """``history.csv``, which training appends to epoch by epoch."""
        return self.path / _HISTORY

    @property
    def steps_path(self) -> Path:
        """``steps.csv``, which training appends to step by step."""
        return self.path / _STEPS

    @property
    def weight_stats_path(self) -> Path:
        """``weight_stats.csv``, which ``training.callbacks.WeightStats`` appends to."""
        return self.path / _WEIGHT_STATS

    @property
    def resources_path(self) -> Path:
        """``resources.csv``, which ``workbench.monitor.ResourceMonitor`` appends to."""
        return self.path / _RESOURCES

    def figure_path(self, name: str) -> Path:
        """The PNG of one of the run's :data:`FIGURES` (``curves.png``, ...)."""
        check_choice("name", name, FIGURES)
        return self.path / _figure_file(name)

    @property
    def tensorboard_dir(self) -> Path:
        """The folder of TensorBoard's logs (``logs/``)."""
        return self.path / _TENSORBOARD

    def evaluation_dir(self, split: str) -> Path:
        """The folder of the evaluation report on ``split`` (``evaluation/<split>/``)."""
        return self.path / _EVALUATION / split

    @property
    def export_dir(self) -> Path:
        """The folder of the run's exports (``export/``; ``workbench.deploy.export``)."""
        return self.path / _EXPORT

    # --- writing (each file atomically) --------------------------------------------------------

    def write_config(self, config: dict) -> None:
        """Writes ``config.json``: every setting of the run."""
        write_json(self.path / _CONFIG, config)

    def write_labels(self, classes) -> None:
        """Writes ``labels.txt``: one class name a line, line ``i`` naming output ``i``."""
        write_text(self.path / _LABELS, "".join(f"{name}\n" for name in classes))

    def write_metrics(self, metrics: dict) -> None:
        """Writes ``metrics.json``: the run's final numbers (or that it diverged)."""
        write_json(self.path / _METRICS, metrics)

    def remove_metrics(self) -> None:
        """Removes ``metrics.json``, so that a stale one cannot pass for a new run's numbers."""
        (self.path / _METRICS).unlink(missing_ok=True)

    def write_calibration(self, record: dict) -> None:
        """Writes ``calibration.json``: ``record["models"]`` maps each model file's name to its
        fitted ``temperature`` (and the numbers before and after)."""
        if not isinstance(record, dict) or not isinstance(record.get("models"), dict):
            raise UsageError(f"record must be a dict with a 'models' dict, received: "
                             f"{record!r}"[:300])
        write_json(self.path / _CALIBRATION, record)

    def write_lr_table(self, table: pd.DataFrame) -> None:
        """Writes ``lr_table.csv`` (a frame of ``workbench.training.lr_mult.lr_table`` rows
        with their ``stage``)."""
        write_text(self.path / _LR_TABLE, table.to_csv(index=False, lineterminator="\n"))

    def write_checkpoint_state(self, state: dict) -> None:
        """Writes ``checkpoint.json``: the state of the checkpoint whose model file it names
        (``state["model"]``), once that file is complete."""
        write_json(self.path / CHECKPOINT_STATE, state)

    def save_model(self, model, which: str) -> Path:
        """Saves a Keras model as the run's ``"initial"``, ``"best"`` or ``"final"`` model
        (``initial.keras``, ``best.keras``, ``model.keras``) and returns its path."""
        path = self.model_file(which)
        write_model(path, model)
        return path

    def write_figure(self, name: str, figure, *, dpi: int = 100) -> Path:
        """Saves a matplotlib figure as the run's ``<name>.png`` (one of :data:`FIGURES`) and
        returns its path."""
        path = self.figure_path(name)
        write_figure(path, figure, dpi=dpi)
        return path

    # --- the folder ----------------------------------------------------------------------------

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

    def recover(self) -> list[Path]:
        """Clears what a killed :meth:`replacement` left beside this folder (the new run's
        folder; after a kill in the middle of the swap, the old run set aside is put back).
        Returns the paths cleared."""
        return remove_stale_temporaries(self.path.parent, name=self.path.name)

    def split_folder(self) -> SplitFolder:
        """The split folder the run was trained on."""
        from workbench.data.splitdir import SplitFolder

        return SplitFolder(self.config["splits"])

    def load_splits(self, *, progress: str = "none") -> SplitData:
        """The run's split folder decoded as training decoded it (same size and resize mode).

        Args:
            progress: while decoding: ``"none"`` (the default), ``"auto"`` or ``"lines"``.

        Raises:
            ValueError: when the split folder's classes changed since the run was trained.
        """
        data = self.split_folder().load(image_size=self.image_size,
                                        resize_mode=self.resize_mode, progress=progress)
        config = self.config
        if config.get("classes") and list(config["classes"]) != list(data.classes):
            raise UsageError(f"the classes of {config['splits']} changed since the run was "
                             f"trained: the run has {len(config['classes'])}, the split folder "
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
        for old in self.path.glob(f"{_CHECKPOINT}*.keras"):
            old.unlink()

    def remove_partial_files(self) -> list[Path]:
        """Deletes what a killed process left half-written (the temporary files of atomic
        writes); returns what was removed."""
        return remove_stale_temporaries(self.path)

    def _json(self, name: str) -> dict | None:
        path = self.path / name
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except ValueError as error:
            raise UsageError(f"{path} is not readable JSON ({error}); the run directory is "
                             "damaged: train it again") from None

    @staticmethod
    def _csv(path: Path, name: str | None = None) -> pd.DataFrame | None:
        if not path.is_file():
            return None
        import pandas as pd

        table = pd.read_csv(path)
        # history, steps and lr_table were methods until this release: a call still works
        return _called_table(table, name) if name else table


def _called_table(table: pd.DataFrame, name: str) -> pd.DataFrame:
    """``table`` as a DataFrame that may also be called, once a release, as the method
    ``RunDir.<name>()`` it was: the call warns and returns the table itself."""
    import pandas as pd

    class CalledTable(pd.DataFrame):
        def __call__(self):
            deprecated(f"RunDir.{name}() is deprecated and will be removed in the next release: "
                       f"RunDir.{name} is a property (None when the file is missing)")
            return pd.DataFrame(self)

    return CalledTable(table)


def read_weight_stats(path: str | os.PathLike) -> pd.DataFrame:
    """Reads a ``weight_stats.csv`` written by ``workbench.training.callbacks.WeightStats``.

    Args:
        path: the CSV file, or a run directory holding one.

    Returns:
        A DataFrame with the :data:`WEIGHT_STATS_COLUMNS` (``layer`` and ``weight`` as text).

    Raises:
        FileNotFoundError: when there is no such file.
        ValueError: when the file lacks the columns.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise UsageError(f"path must be a {_WEIGHT_STATS} file or a run directory, received: "
                         f"{path!r}")
    path = RunDir(path).weight_stats_path if Path(path).is_dir() else Path(path)
    if not path.is_file():
        raise MissingPath(f"path must be a {_WEIGHT_STATS} file or a run directory "
                          f"holding one, received: {str(path)!r} (not found)")
    import pandas as pd

    table = pd.read_csv(path, dtype={"layer": str, "weight": str})
    missing = [c for c in WEIGHT_STATS_COLUMNS if c not in table.columns]
    if missing:
        raise UsageError(f"path must have the columns {', '.join(WEIGHT_STATS_COLUMNS)}, "
                         f"received: {str(path)!r} without {', '.join(missing)}")
    return table
