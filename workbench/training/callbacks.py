"""The small Keras callbacks a training run is made of, one job each.

They share a :class:`RunState` (epoch, stage, best value, patience) that is written with every
checkpoint, so a resumed run continues exactly where the killed one stopped.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import signal
import sys
import threading
import time
import zlib
from pathlib import Path

import keras
import numpy as np

from workbench import plots
from workbench._checks import UsageError
from workbench._compat import flatten_layers, is_seed_state
from workbench._io import atomic_path
from workbench.runs import WEIGHT_STATS_COLUMNS, RunDir
from workbench.training import checkpoint

_SKIPPED_WEIGHTS = ("moving_mean", "moving_variance")  # batch-norm statistics are not learned


@dataclasses.dataclass
class RunState:
    """What a resumed run must know beyond the model: saved in ``checkpoint.json``."""

    epoch: int = 0          # finished epochs
    stage: int = 0
    best: float | None = None
    best_epoch: int | None = None
    wait: int = 0           # validation passes without improvement
    step: int = 0           # finished iterations over all stages

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class TrainingDiverged(UsageError, RuntimeError):
    """The loss became NaN, infinite or exploded; the last good checkpoint is kept (or, when
    the run was replacing another, the run that was there). A ``RuntimeError`` too; a
    :class:`UsageError` as its cure is the user's (a lower learning rate), so it shows as one
    message in a notebook.

    Attributes:
        problem: what happened (``"the loss became nan at batch 3"``).
        run_dir: the run directory.
        epoch: the epoch in which it happened.
        base_lr: the solver's base learning rate.
        checkpoint_epoch: the epoch of the checkpoint kept, or None when there is none.
        replaced: whether the run was to replace one in ``run_dir`` (which stays as it was).
    """

    def __init__(self, problem: str, *, run_dir, epoch: int, base_lr: float,
                 checkpoint_epoch: int | None = None, replaced: bool = False):
        self.problem, self.run_dir, self.epoch, self.base_lr = problem, run_dir, epoch, base_lr
        self.checkpoint_epoch, self.replaced = checkpoint_epoch, replaced
        super().__init__(self.advice(resume="resume=True", base_lr="base_lr"))

    def advice(self, *, resume: str, base_lr: str) -> str:
        """The message, naming the options in the caller's words (``--resume``, ...)."""
        where = (f"; {self.run_dir} still holds the run that was there" if self.replaced else
                 f"; the last good checkpoint (epoch {self.checkpoint_epoch}) is in "
                 f"{self.run_dir}: {resume} retries from it" if self.checkpoint_epoch else
                 "; no checkpoint was written before it")
        return (f"Training stopped: {self.problem} in epoch {self.epoch}{where}. Train again "
                f"with a lower {base_lr} (now {self.base_lr:g}).")


class CsvAppender:
    """Appends rows to a CSV file, flushing each, so a crash keeps every finished row."""

    def __init__(self, path: Path, columns: list[str], *, keep_while=None):
        """Opens ``path``; with ``keep_while``, keeps only existing rows for which it is true."""
        self.path, self.columns = Path(path), columns
        rows = []
        if keep_while is not None and self.path.is_file():
            with open(self.path, newline="", encoding="utf-8") as handle:
                rows = [row for row in csv.DictReader(handle) if keep_while(row)]
        with atomic_path(self.path) as temporary:
            with open(temporary, "w", newline="", encoding="utf-8") as handle:
                writer = csv.DictWriter(handle, columns, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(rows)

    def append(self, row: dict) -> None:
        self.extend([row])

    def extend(self, rows: list[dict]) -> None:
        """Appends ``rows`` in one write."""
        with open(self.path, "a", newline="", encoding="utf-8") as handle:
            csv.DictWriter(handle, self.columns, extrasaction="ignore").writerows(rows)


def current_lr(model: keras.Model) -> float:
    """The base learning rate the optimizer uses at its current iteration."""
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


class HistoryLogger(keras.callbacks.Callback):
    """Writes ``history.csv`` (one row per epoch) and ``steps.csv`` (the loss of every step).

    Keras reports a running mean of the loss after each batch; the loss of the batch itself
    follows from two consecutive means (training batches all have the same size).
    """

    EPOCH_COLUMNS = ["epoch", "stage", "loss", "accuracy", "top5", "val_loss", "val_accuracy",
                     "val_top5", "lr", "seconds"]
    STEP_COLUMNS = ["step", "epoch", "loss"]

    def __init__(self, run_dir: Path, state: RunState, stage_name: str):
        super().__init__()
        def keep(row):  # rows of epochs after the checkpoint are trained again
            return int(row["epoch"]) <= state.epoch

        run = RunDir(run_dir)
        self.epochs = CsvAppender(run.history_path, self.EPOCH_COLUMNS, keep_while=keep)
        self.steps = CsvAppender(run.steps_path, self.STEP_COLUMNS, keep_while=keep)
        self.state, self.stage_name = state, stage_name

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch, self._started = epoch + 1, time.monotonic()
        self._last_batch, self._last_mean, self._first_step = 0, 0.0, self.state.step

    def on_train_batch_end(self, batch, logs=None):
        count, mean = batch + 1, float((logs or {}).get("loss", math.nan))
        loss = (count * mean - self._last_batch * self._last_mean) / (count - self._last_batch)
        self._last_batch, self._last_mean = count, mean
        # batch + 1 counts steps, also with steps_per_execution > 1
        self.state.step = self._first_step + count
        self.steps.append({"step": self.state.step, "epoch": self._epoch, "loss": loss})

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        row = {"epoch": epoch + 1, "stage": self.stage_name, "lr": current_lr(self.model),
               "seconds": round(time.monotonic() - self._started, 3)}
        row.update({name: logs.get(name, "") for name in self.EPOCH_COLUMNS if name in logs})
        self.epochs.append(row)


class ReseedRandomLayers(keras.callbacks.Callback):
    """Sets the state of every random layer (dropout, augmentation) from (seed, epoch).

    Keras does not save seed-generator states with a model, so without this a resumed run would
    draw different dropout masks than an uninterrupted one.
    """

    def __init__(self, seed: int):
        super().__init__()
        self.seed = seed

    def on_epoch_begin(self, epoch, logs=None):
        for index, variable in enumerate(self.model.variables):
            if is_seed_state(variable):
                value = zlib.crc32(f"{self.seed}:{epoch}:{index}".encode())
                variable.assign(np.array([value, 0], dtype=variable.dtype))


class DivergenceGuard(keras.callbacks.Callback):
    """Stops training when the loss is NaN/inf or exceeds ``factor`` times the first loss."""

    def __init__(self, factor: float = 100.0):
        super().__init__()
        self.factor, self.first, self.problem = factor, None, None

    def on_train_batch_end(self, batch, logs=None):
        loss = float((logs or {}).get("loss", math.nan))
        if self.first is None and math.isfinite(loss):
            self.first = max(loss, 1e-3)
        if not math.isfinite(loss) or (self.first is not None and loss > self.factor * self.first):
            self.problem = f"the loss became {loss:.4g} at batch {batch + 1}"
            self.model.stop_training = True


class BestModel(keras.callbacks.Callback):
    """Keeps ``best.keras``: the model of the epoch with the best validation value so far.

    Records the best value, its epoch and the validation passes since it in the shared state
    (what :class:`EarlyStop` reads). Nothing is saved after a diverged epoch.

    Where an epoch costs less than writing the model (the head trained on cached features,
    ``workbench.training.features``), ``keep`` names the few variables the epochs change: an
    improvement is then kept in memory, their values, and written by :meth:`write_kept`, which
    the :class:`Checkpointer` calls before the checkpoint that records it, and at the end of
    training. The file is the same; a kill before it is written also loses the checkpoint
    that would name it, so a resumed run trains those epochs again and writes it.

    Args:
        run_dir: the run directory.
        state: the shared run state (updated in place).
        guard: the divergence guard.
        monitor: the validation metric that decides (higher is better).
        keep: None to write every improvement at once, or a callable returning the variables
            that training changes (all others stay as they are until the file is written).
    """

    def __init__(self, run_dir: Path, state: RunState, *, guard: DivergenceGuard,
                 monitor: str = "val_accuracy", keep=None):
        super().__init__()
        self.run_dir, self.state, self.guard, self.monitor = run_dir, state, guard, monitor
        self.keep, self.kept = keep, None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if self.guard.problem or value is None:  # no validation pass in this epoch
            return
        if self.state.best is None or value > self.state.best:
            self.state.best, self.state.best_epoch, self.state.wait = float(value), epoch + 1, 0
            if self.keep is None:
                RunDir(self.run_dir).save_model(self.model, "best")
            else:
                self.kept = _values(self.keep())
        else:
            self.state.wait += 1

    def write_kept(self) -> None:
        """Writes the improvement kept in memory, if any, as ``best.keras``."""
        if self.kept is None:
            return
        variables = self.keep()
        now = _values(variables)
        for variable, value in zip(variables, self.kept, strict=True):
            variable.assign(value)
        try:
            RunDir(self.run_dir).save_model(self.model, "best")
        finally:
            for variable, value in zip(variables, now, strict=True):
                variable.assign(value)
        self.kept = None

    def on_train_end(self, logs=None):
        self.write_kept()


def _values(variables) -> list[np.ndarray]:
    """Copies of the variables' values."""
    return [np.array(keras.ops.convert_to_numpy(variable)) for variable in variables]


class StopAtStep(keras.callbacks.Callback):
    """Stops after ``total`` training batches over all stages (Caffe's ``max_iter`` need not
    fill whole epochs); counts with :class:`HistoryLogger`, which must come before it."""

    def __init__(self, state: RunState, total: int):
        super().__init__()
        self.state, self.total = state, total

    def on_train_batch_end(self, batch, logs=None):
        if self.state.step >= self.total:
            self.model.stop_training = True


class EarlyStop(keras.callbacks.Callback):
    """Stops training after ``patience`` validation passes without improvement (0: never).

    Counts with :class:`BestModel`, which must come before it in the callback list.
    """

    def __init__(self, state: RunState, *, patience: int):
        super().__init__()
        self.state, self.patience, self.stopped = state, patience, False

    def on_epoch_end(self, epoch, logs=None):
        if self.patience and self.state.wait >= self.patience and not self.stopped:
            self.stopped = True
            self.model.stop_training = True


class Checkpointer(keras.callbacks.Callback):
    """Saves a resumable checkpoint every ``interval`` epochs, at the end of a stage and when
    training stops; never after a diverged epoch, so the last checkpoint is a good one.

    Args:
        run_dir: the run directory.
        state: the shared run state (its ``epoch`` is set here and saved with the model).
        interval: epochs between checkpoints.
        stage_end: the epoch at which the current stage ends.
        guard: the divergence guard.
        best: the :class:`BestModel` whose kept improvement is written before each checkpoint
            (see its ``keep``), or None.
    """

    def __init__(self, run_dir: Path, state: RunState, *, interval: int, stage_end: int,
                 guard: DivergenceGuard, best: BestModel | None = None):
        super().__init__()
        self.run_dir, self.state = run_dir, state
        self.interval, self.stage_end, self.guard, self.best = interval, stage_end, guard, best

    def on_epoch_end(self, epoch, logs=None):
        if self.guard.problem:
            return
        self.state.epoch = epoch + 1
        if self.state.epoch % self.interval == 0 or self.state.epoch == self.stage_end \
                or self.model.stop_training:
            if self.best is not None:
                self.best.write_kept()
            checkpoint.save_checkpoint(self.run_dir, self.model, self.state.to_dict())


class StopOnInterrupt(keras.callbacks.Callback):
    """Turns Ctrl+C (in Jupyter, Kernel > Interrupt: a SIGINT) during ``fit`` into a
    ``KeyboardInterrupt`` raised here, at the end of the step in flight.

    Python raises ``KeyboardInterrupt`` wherever the main thread happens to be; inside a
    garbage-collection callback (JAX registers one) it is printed, ignored, and training goes
    on, so an interrupt took several presses. While this context is entered, the signal is
    only recorded, and the next end of a batch raises it; a second one before that raises at
    once. Use it as a context manager around ``fit`` (Keras does not call ``on_train_end`` when
    ``fit`` raises) and pass it as a callback::

        with StopOnInterrupt() as interrupt:
            model.fit(..., callbacks=[interrupt])
    """

    def __init__(self):
        super().__init__()
        self.pending, self._previous = False, None

    def __enter__(self) -> StopOnInterrupt:
        # only over Python's own handler, in the main thread (the only one that may set one)
        if threading.current_thread() is threading.main_thread() \
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, self._record)
        return self

    def __exit__(self, *exc_info) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _record(self, signum, frame):
        if self.pending:  # pressed again before a batch ended: stop now
            raise KeyboardInterrupt
        self.pending = True

    def _raise_if_pending(self):
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt

    def on_train_batch_end(self, batch, logs=None):
        self._raise_if_pending()

    def on_test_batch_end(self, batch, logs=None):
        self._raise_if_pending()

    def on_epoch_begin(self, epoch, logs=None):
        self._raise_if_pending()


class EpochLines(keras.callbacks.Callback):
    """One plain line per epoch on stdout: what headless runs (papermill, CLI, CI) show."""

    def __init__(self, total_epochs: int, stage_name: str):
        super().__init__()
        self.total, self.stage_name = total_epochs, stage_name

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        parts = [f"epoch {epoch + 1}/{self.total} [{self.stage_name}]"]
        for name in ("loss", "accuracy", "val_loss", "val_accuracy"):
            if name in logs:
                parts.append(f"{name} {logs[name]:.4f}")
        parts.append(f"lr {current_lr(self.model):.2e}")
        parts.append(f"{time.monotonic() - self._started:.1f}s")
        print("  ".join(parts), file=sys.stdout, flush=True)


class MonitorResources(keras.callbacks.Callback):
    """Runs a :class:`workbench.monitor.ResourceMonitor` during ``fit`` and tells it the epoch
    and step: it starts at ``on_train_begin`` and stops at ``on_train_end``. Keras does not call
    ``on_train_end`` when ``fit`` raises; to stop the thread then too, also use the monitor as a
    context manager around ``fit``. The same monitor passed to two ``fit`` calls appends both
    (``session`` 0 and 1)."""

    async_safe = True  # the batch hook only stores two ints: Keras may call it off-thread

    def __init__(self, monitor):
        super().__init__()
        self.monitor = monitor

    def on_train_begin(self, logs=None):
        self.monitor.epoch = self.monitor.step = None
        self.monitor.start()

    def on_epoch_begin(self, epoch, logs=None):
        self.monitor.epoch, self.monitor.step = int(epoch) + 1, 0

    def on_train_batch_end(self, batch, logs=None):
        self.monitor.step = int(batch) + 1

    def on_train_end(self, logs=None):
        self.monitor.stop()
        self.monitor.epoch = self.monitor.step = None


def _tracked_weights(model: keras.Model) -> list:
    """The learnable float weights (batch-norm moving statistics and seed states left out)."""
    chosen = []
    for variable in model.weights:
        name = variable.path.rpartition("/")[2]
        if name in _SKIPPED_WEIGHTS or "float" not in str(variable.dtype):
            continue
        chosen.append(variable)
    return chosen


class WeightStats(keras.callbacks.Callback):
    """Records per layer and epoch the mean |w| and the update-to-weight ratio |Δw| / |w|.

    At the end of every epoch one row per weight is appended to ``path``: ``epoch`` (1-based,
    as in ``history.csv``), ``layer``, ``weight`` (kernel, bias, gamma, ...), ``mean_abs`` and
    ``update_ratio = ||w_epoch - w_previous|| / ||w_previous||`` (NaN while a weight that
    started at zero, like a bias, has no norm yet). A layer that learns at a sane
    rate shows a ratio around 1e-3 per step (more per epoch); a frozen layer (learning-rate
    multiplier 0) shows exactly 0. Rows of epochs after the one ``fit`` starts at are dropped
    first, so a resumed run or a second stage continues the same file::

        model.fit(..., callbacks=[WeightStats(RunDir(run_dir).weight_stats_path)])

    Args:
        path: the CSV file.
        layers: optional layer names to record (default every layer with weights).
    """

    def __init__(self, path: str | Path, *, layers=None):
        super().__init__()
        self.path = Path(path)
        self.layers = None if layers is None else set(layers)
        self._previous: dict = {}
        self._opened = False

    def _weights(self) -> list:
        chosen = []
        for variable in _tracked_weights(self.model):
            layer, _, weight = variable.path.rpartition("/")
            if self.layers is None or layer.rpartition("/")[2] in self.layers or layer in self.layers:
                chosen.append((layer, weight, variable))
        return chosen

    def _open(self, first_epoch: int) -> None:
        """Starts the file, keeping the rows of epochs finished before ``first_epoch``."""
        self._appender = CsvAppender(self.path, WEIGHT_STATS_COLUMNS,
                                     keep_while=lambda row: int(row["epoch"]) <= first_epoch)
        self._opened = True

    def on_train_begin(self, logs=None):
        weights = self._weights()
        self._previous = {id(v): np.array(keras.ops.convert_to_numpy(v), dtype=np.float64)
                          for _, _, v in weights}
        # a weight this fit cannot change is read once: its mean |w| stays, its ratio is 0
        frozen = _frozen_weights(self.model)
        self._fixed = {id(v): float(np.abs(self._previous[id(v)]).mean())
                       for _, _, v in weights if id(v) in frozen}
        self._opened = False

    def on_epoch_begin(self, epoch, logs=None):
        if not self._opened:
            self._open(epoch)

    def on_epoch_end(self, epoch, logs=None):
        if not self._opened:
            self._open(epoch)
        rows = []
        for layer, weight, variable in self._weights():
            row = {"epoch": epoch + 1, "layer": layer, "weight": weight}
            if id(variable) in self._fixed:
                rows.append({**row, "mean_abs": self._fixed[id(variable)], "update_ratio": 0.0})
                continue
            now = np.array(keras.ops.convert_to_numpy(variable), dtype=np.float64)
            before = self._previous.get(id(variable))
            norm = float(np.linalg.norm(before)) if before is not None else 0.0
            change = float(np.linalg.norm(now - before)) if before is not None else math.nan
            # a weight starting at zero (a bias) has no ratio until it moves away from zero
            ratio = change / norm if norm > 0 else (0.0 if change == 0 else math.nan)
            rows.append({**row, "mean_abs": float(np.abs(now).mean()), "update_ratio": ratio})
            self._previous[id(variable)] = now
        self._appender.extend(rows)


def _frozen_weights(model: keras.Model) -> set[int]:
    """The ids of the weights that fitting ``model`` as it is now cannot change: the weights
    of frozen layers (a frozen batch norm keeps its statistics too) that are not trainable."""
    learning = {id(variable) for variable in model.trainable_variables}
    return {id(variable) for layer in flatten_layers(model) if not layer.trainable
            for variable in layer.weights if id(variable) not in learning}


class LivePlot(keras.callbacks.Callback):
    """Redraws the loss and accuracy curves in a notebook after every epoch, and under them the
    GPU / CPU / RAM panels when the run records ``resources.csv``."""

    def __init__(self, run_dir: Path, *, title: str | None = None):
        super().__init__()
        self.run_dir, self.handles = run_dir, {}
        self.title = title or Path(run_dir).name

    def on_epoch_end(self, epoch, logs=None):
        run = RunDir(self.run_dir)
        history = run.history  # HistoryLogger has written this epoch
        self._show("curves", plots.training_curves({self.title: history}))
        resources = run.resources
        if resources is not None:
            self._show("resources", plots.resource_dashboard(resources))

    def _show(self, name: str, figure) -> None:
        from IPython.display import display

        if name in self.handles:
            self.handles[name].update(figure)
        else:
            self.handles[name] = display(figure, display_id=True)
