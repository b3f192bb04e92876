"""The nvidia-smi-style dashboard of a ``resources.csv`` (see :mod:`workbench.monitor`)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from workbench._checks import UsageError
from workbench.plots._axes import figure_to_fill

# The columns of workbench.monitor.COLUMNS the dashboard draws (``time``, ``gpu_name``, the
# temperature and the clock are optional).
_RESOURCE_COLUMNS = (
    "elapsed_s", "session", "epoch", "gpu", "gpu_util_percent", "gpu_memory_used_mib",
    "gpu_memory_total_mib", "gpu_power_w", "gpu_power_limit_w", "process_cpu_percent",
    "cpu_percent", "process_rss_mib", "ram_used_mib", "ram_total_mib",
)


def _time_axis(frame: pd.DataFrame) -> tuple[np.ndarray, str]:
    """Seconds since the first sample (from the wall clock, so sessions line up), scaled."""
    if "time" in frame.columns and frame["time"].notna().all():
        stamps = pd.to_datetime(frame["time"], format="ISO8601", utc=True)
        seconds = (stamps - stamps.min()).dt.total_seconds().to_numpy()
    else:
        seconds = frame["elapsed_s"].to_numpy(float) - frame["elapsed_s"].min()
    span = float(np.nanmax(seconds)) if len(seconds) else 0.0
    for limit, unit, scale in ((600, "s", 1.0), (3 * 3600, "min", 60.0)):
        if span <= limit:
            return seconds / scale, unit
    return seconds / 3600.0, "h"


def _session_breaks(x, y, session) -> tuple[np.ndarray, np.ndarray]:
    """x and y with a NaN between sessions, so no line bridges a time nothing was recorded."""
    x, y, session = (np.asarray(v) for v in (x, y, session))
    cut = np.flatnonzero(session[1:] != session[:-1]) + 1
    return (np.insert(x.astype(float), cut, np.nan),
            np.insert(pd.to_numeric(pd.Series(y), errors="coerce").to_numpy(float), cut, np.nan))


def _check_frames(frame, history) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise UsageError(f"frame must be a resources.csv frame (workbench.monitor."
                         f"read_resources), received: {type(frame).__name__}")
    missing = [c for c in _RESOURCE_COLUMNS if c not in frame.columns]
    if missing or frame.empty:
        raise UsageError(f"frame must hold rows of a resources.csv, received: a frame with "
                         f"{len(frame)} rows" + (f", without columns {missing}" if missing
                                                 else ""))
    if history is None:
        return
    if not isinstance(history, pd.DataFrame):
        raise UsageError(f"history must be a history.csv frame (workbench.runs.RunDir."
                         f"history), received: {type(history).__name__}")
    absent = [c for c in ("epoch", "loss", "accuracy") if c not in history.columns]
    if absent:
        raise UsageError(f"history must be a history.csv frame with epoch, loss and accuracy, "
                         f"received: a frame without {absent}")


def resource_dashboard(frame: pd.DataFrame, *, history: pd.DataFrame | None = None,
                       figure=None) -> Figure:
    """An nvidia-smi-style dashboard of a ``resources.csv``: stacked panels over time.

    Panels, sharing the time axis: GPU utilisation %, GPU memory MiB (total dashed), power W
    (limit dashed), CPU % (system and the monitored process), RAM MiB (system used, total
    dashed, process RSS). One line per GPU. Without GPU rows the three GPU panels are left out
    and the title says so. The start of each epoch (from the ``epoch`` column) is a dotted
    vertical line on every panel, labelled on the top one (up to 30 epochs). Separate sessions
    (e.g. two training stages) are not joined by lines.

    Args:
        frame: the samples, from :func:`workbench.monitor.read_resources`.
        history: optional ``history.csv`` frame (``workbench.runs.RunDir(path).history``)
            with ``epoch``, ``loss``, ``accuracy`` and optionally ``val_loss``,
            ``val_accuracy``; drawn as two extra axes (loss, accuracy per epoch) in a column
            to the right.
        figure: an empty Figure or SubFigure to draw into; None for a new figure.

    Returns:
        The figure: 5 time panels with GPU data, 2 without, plus 2 with ``history``.

    Raises:
        ValueError: ``frame`` has no rows or lacks the monitor's columns, or ``history`` lacks
            ``epoch``/``loss``/``accuracy``, or ``figure`` is not an empty figure.
    """
    _check_frames(frame, history)
    x, unit = _time_axis(frame)
    frame = frame.assign(_x=x).sort_values(["_x", "gpu"], kind="stable")
    gpu_rows = frame[frame["gpu"].notna()]
    host = frame.drop_duplicates(subset=["session", "elapsed_s"])
    has_gpu = not gpu_rows.empty
    panels = 5 if has_gpu else 2
    columns = 2 if history is not None else 1
    figure = figure_to_fill(figure, figsize=(9 + 4 * (columns - 1), 1.9 * panels + 0.6),
                            layout="constrained")
    grid = figure.add_gridspec(panels, columns, width_ratios=[2.2, 1][:columns])
    axes = [figure.add_subplot(grid[0, 0])]
    axes += [figure.add_subplot(grid[row, 0], sharex=axes[0]) for row in range(1, panels)]

    def line(ax, rows, column, **kwargs):
        x, y = _session_breaks(rows["_x"], rows[column], rows["session"])
        ax.plot(x, y, **kwargs)

    if has_gpu:
        util_ax, memory_ax, power_ax = axes[:3]
        for index, (gpu, rows) in enumerate(gpu_rows.groupby("gpu", sort=True)):
            color = f"C{index % 10}"
            names = rows["gpu_name"].dropna().astype(str) if "gpu_name" in rows else ()
            name = names.iloc[0] if len(names) else ""
            label = f"GPU {gpu}" + (f" {name}" if name else "")
            line(util_ax, rows, "gpu_util_percent", color=color, label=label)
            line(memory_ax, rows, "gpu_memory_used_mib", color=color, label=f"{label} used")
            line(memory_ax, rows, "gpu_memory_total_mib", color=color, linestyle="--",
                 label=f"{label} total")
            line(power_ax, rows, "gpu_power_w", color=color, label=f"{label} draw")
            line(power_ax, rows, "gpu_power_limit_w", color=color, linestyle="--",
                 label=f"{label} limit")
        util_ax.set(ylabel="GPU util %", ylim=(0, 105), title="GPU utilisation")
        memory_ax.set(ylabel="MiB", title="GPU memory", ylim=(0, None))
        power_ax.set(ylabel="W", title="GPU power", ylim=(0, None))
    cpu_ax, ram_ax = axes[-2:]
    line(cpu_ax, host, "cpu_percent", color="C0", label="system")
    line(cpu_ax, host, "process_cpu_percent", color="C1", label="process")
    cpu_ax.set(ylabel="CPU %", ylim=(0, 105), title="CPU (% of all cores)")
    line(ram_ax, host, "ram_used_mib", color="C0", label="system used")
    line(ram_ax, host, "ram_total_mib", color="C0", linestyle="--", label="system total")
    line(ram_ax, host, "process_rss_mib", color="C1", label="process RSS")
    ram_ax.set(ylabel="MiB", title="Host memory (RAM)", ylim=(0, None))
    axes[-1].set_xlabel(f"time since the first sample ({unit})")
    for ax in axes[:-1]:
        ax.tick_params(labelbottom=False)

    epochs = host[["_x", "session", "epoch"]].dropna(subset=["epoch"])
    epoch, session = (pd.to_numeric(epochs[c]).astype(float) for c in ("epoch", "session"))
    starts = epochs[(epoch.ne(epoch.shift()) | session.ne(session.shift())).to_numpy(bool)]
    for x, epoch in zip(starts["_x"], starts["epoch"].astype(int)):
        for ax in axes:
            ax.axvline(x, color="0.55", linestyle=":", linewidth=0.9, label=f"_epoch {epoch}")
        if len(starts) <= 30:
            axes[0].annotate(str(epoch), (x, 1.0), xycoords=("data", "axes fraction"),
                             xytext=(2, -10), textcoords="offset points", fontsize=7,
                             color="0.4")
    for ax in axes:
        ax.grid(alpha=0.3)
        if any(not str(l.get_label()).startswith("_") for l in ax.lines):
            ax.legend(fontsize=7, loc="upper left")

    if history is not None:
        _draw_history(figure, grid, history, panels)
    summary = f"{gpu_rows['gpu'].nunique()} GPU" if has_gpu else "no GPU recorded"
    figure.suptitle(f"Resources ({summary}, {len(host)} samples)")
    return figure


def _draw_history(figure, grid, history: pd.DataFrame, panels: int) -> None:
    """Loss and accuracy per epoch in the right-hand column of the dashboard's grid."""
    split = -(-panels // 2)
    loss_ax = figure.add_subplot(grid[:split, 1])
    acc_ax = figure.add_subplot(grid[split:, 1], sharex=loss_ax)
    for ax, metric in ((loss_ax, "loss"), (acc_ax, "accuracy")):
        ax.plot(history["epoch"], history[metric], color="C0", marker=".", label="train")
        val = f"val_{metric}"
        if val in history.columns and history[val].notna().any():
            ax.plot(history["epoch"], history[val], color="C1", linestyle="--",
                    marker=".", label="val")
        ax.set(title=f"Training {metric}", ylabel=metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    acc_ax.set_xlabel("epoch")
