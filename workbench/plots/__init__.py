"""Every figure the workbench draws. Each function returns a ``matplotlib.figure.Figure`` (or
draws on the ``ax`` it is given) and never shows it through pyplot: notebooks display what
they get, scripts save it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from workbench._checks import check_int


def _figure(ax, **kwargs):
    """The figure and axes to draw on: the caller's ``ax``, or a new figure's."""
    if ax is not None:
        return ax.figure, ax
    figure = Figure(**kwargs)
    return figure, figure.add_subplot()


def class_counts(table: pd.DataFrame, *, ax=None) -> Figure:
    """Bar chart of images per class, stacked by split if the table has a ``split`` column.

    Args:
        table: rows with a ``label`` column (a scan table or a split table).
        ax: optional axes to draw on.
    """
    figure, ax = _figure(ax, figsize=(8, 3.5), layout="constrained")
    if "split" in table.columns:
        counts = table.groupby(["label", "split"]).size().unstack(fill_value=0)
        counts = counts[[s for s in ("train", "val", "test") if s in counts.columns]]
    else:
        counts = table.groupby("label").size().to_frame("images")
    bottom = np.zeros(len(counts))
    for column in counts.columns:
        ax.bar(counts.index.astype(str), counts[column], bottom=bottom, label=str(column))
        bottom += counts[column].to_numpy()
    ax.set_xlabel("class")
    ax.set_ylabel("images")
    ax.set_title("Images per class")
    if len(counts.columns) > 1:
        ax.legend()
    if len(counts) > 20:
        ax.tick_params(axis="x", labelrotation=90)
    return figure


def image_grid(images, *, titles=None, columns: int = 8, title: str | None = None,
               size: float = 1.2) -> Figure:
    """Tiles images (uint8 arrays or PIL images) in a grid, with optional titles.

    Args:
        images: a sequence of images.
        titles: one caption per image.
        columns: images per row.
        title: a title over the grid.
        size: inches per tile.
    """
    check_int("columns", columns, minimum=1)
    images = list(images)
    if not images:
        raise ValueError("images must hold at least one image, received: 0")
    rows = -(-len(images) // columns)
    columns = min(columns, len(images))
    figure = Figure(figsize=(columns * size, rows * size + (0.4 if title else 0)),
                    layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    for index, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if index < len(images):
            ax.imshow(np.asarray(images[index]))
            if titles is not None:
                ax.set_title(str(titles[index]), fontsize=8)
    if title:
        figure.suptitle(title)
    return figure


def samples_per_class(table: pd.DataFrame, root: str | Path, *, per_class: int = 6,
                      max_classes: int = 20, image_size: int | None = None,
                      seed: int = 0) -> Figure:
    """A grid with one row per class showing a few of its images.

    Args:
        table: rows with ``path`` (relative to ``root``) and ``label``; rejected rows are skipped.
        root: the dataset folder.
        per_class: images per row.
        max_classes: at most this many classes (rows).
        image_size: if given, images are resized as the model sees them.
        seed: which images are picked.
    """
    from workbench.data.images import load_array, open_image

    if "status" in table.columns:
        table = table[table["status"] == "ok"]
    rng = np.random.default_rng(seed)
    images, titles = [], []
    for label, rows in list(table.groupby("label", sort=True))[:max_classes]:
        picked = rows.iloc[np.sort(rng.permutation(len(rows))[:per_class])]
        for position, path in enumerate(picked["path"]):
            file = Path(root) / path
            images.append(load_array(file, image_size) if image_size else
                          np.asarray(open_image(file)))
            titles.append(label if position == 0 else "")
        for _ in range(per_class - len(picked)):
            images.append(np.full((8, 8, 3), 255, np.uint8))
            titles.append("")
    return image_grid(images, titles=titles, columns=per_class, title="Samples per class")


def training_curves(runs, *, names=None) -> Figure:
    """Loss, accuracy and learning rate per epoch for one or several runs, overlaid.

    The epoch of each run's best checkpoint is marked on the accuracy panel.

    Args:
        runs: run directories (or paths to their ``history.csv``).
        names: a legend name per run; default the run directory names.
    """
    runs = [Path(run) for run in runs]
    figure = Figure(figsize=(12, 3.6), layout="constrained")
    loss_ax, acc_ax, lr_ax = figure.subplots(1, 3)
    for index, run in enumerate(runs):
        history_path = run if run.suffix == ".csv" else run / "history.csv"
        run_dir = history_path.parent
        name = names[index] if names else run_dir.name
        color = f"C{index % 10}"
        history = pd.read_csv(history_path) if history_path.is_file() else pd.DataFrame()
        if history.empty:
            continue
        epochs = history["epoch"]
        loss_ax.plot(epochs, history["loss"], color=color, label=f"{name} train")
        acc_ax.plot(epochs, history["accuracy"], color=color, label=f"{name} train")
        validated = history[history["val_loss"].notna()] if "val_loss" in history else []
        if len(validated):  # validation may run every few epochs only: join those points
            loss_ax.plot(validated["epoch"], validated["val_loss"], color=color, linestyle="--",
                         label=f"{name} val")
            acc_ax.plot(validated["epoch"], validated["val_accuracy"], color=color,
                        linestyle="--", label=f"{name} val")
            best = validated["val_accuracy"].idxmax()
            acc_ax.plot(epochs[best], history["val_accuracy"][best], marker="*", markersize=12,
                        color=color, linestyle="none", label=f"{name} best")
        lr = history["lr"].where(history["lr"] > 0)  # a schedule's final 0 has no log
        lr_ax.plot(epochs, lr, color=color, label=name)
    loss_ax.set(title="Loss", xlabel="epoch")
    acc_ax.set(title="Accuracy", xlabel="epoch", ylim=(0, 1.02))
    lr_ax.set(title="Learning rate (end of epoch)", xlabel="epoch", yscale="log")
    for ax in (loss_ax, acc_ax, lr_ax):
        if ax.lines:
            ax.legend(fontsize=7)
    return figure


def compare_accuracy(results: pd.DataFrame, *, by: str = "recipe", value: str = "test_accuracy",
                     chance: float | None = None, ax=None) -> Figure:
    """Mean and spread of a metric per group (e.g. per recipe over seeds), as bars.

    Args:
        results: one row per run, with columns ``by`` and ``value``.
        by: the grouping column.
        value: the metric column.
        chance: draws a dashed line at the chance level if given.
        ax: optional axes to draw on.
    """
    figure, ax = _figure(ax, figsize=(6, 3.5), layout="constrained")
    grouped = results.groupby(by, sort=False)[value]
    means, errors = grouped.mean(), grouped.std().fillna(0.0)
    ax.bar(means.index.astype(str), means.to_numpy(), yerr=errors.to_numpy(), capsize=4,
           color=[f"C{i}" for i in range(len(means))])
    for position, (name, rows) in enumerate(grouped):
        ax.plot([position] * len(rows), rows.to_numpy(), "k.", alpha=0.6)
    if chance is not None:
        ax.axhline(chance, color="gray", linestyle="--", label="chance")
        ax.legend()
    ax.set(ylabel=value.replace("_", " "), ylim=(0, 1), title=f"{value.replace('_', ' ')} by {by}")
    return figure


# --- resources (workbench.monitor)

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


def resource_dashboard(frame_or_path, *, history=None) -> Figure:
    """An nvidia-smi-style dashboard of a ``resources.csv``: stacked panels over time.

    Panels, sharing the time axis: GPU utilisation %, GPU memory MiB (total dashed), power W
    (limit dashed), CPU % (system and the monitored process), RAM MiB (system used, total
    dashed, process RSS). One line per GPU. Without GPU rows the three GPU panels are left out
    and the title says so. The start of each epoch (from the ``epoch`` column) is a dotted
    vertical line on every panel, labelled on the top one (up to 30 epochs). Separate sessions
    (e.g. two training stages) are not joined by lines.

    Args:
        frame_or_path: a frame from :func:`workbench.monitor.read_resources`, a
            ``resources.csv`` path, or a run directory holding one.
        history: optional ``history.csv`` frame (or path) with ``epoch``, ``loss``,
            ``accuracy`` and optionally ``val_loss``, ``val_accuracy``; drawn as two extra
            axes (loss, accuracy per epoch) in a column to the right.

    Returns:
        The figure: 5 time panels with GPU data, 2 without, plus 2 with ``history``.

    Raises:
        ValueError: the frame has no rows or lacks the monitor's columns, or ``history`` lacks
            ``epoch``/``loss``/``accuracy``.
        FileNotFoundError: a path that does not exist.
    """
    from workbench.monitor import COLUMNS, read_resources

    frame = (frame_or_path if isinstance(frame_or_path, pd.DataFrame)
             else read_resources(frame_or_path))
    needed = [c for c in COLUMNS if c not in ("gpu_name", "gpu_temperature_c", "gpu_sm_clock_mhz")]
    missing = [c for c in needed if c not in frame.columns]
    if missing or frame.empty:
        raise ValueError(f"frame_or_path must hold rows of a resources.csv, received: a frame "
                         f"with {len(frame)} rows" + (f", without columns {missing}" if missing
                                                      else ""))
    if history is not None and not isinstance(history, pd.DataFrame):
        history = pd.read_csv(history)
    if history is not None:
        absent = [c for c in ("epoch", "loss", "accuracy") if c not in history.columns]
        if absent:
            raise ValueError(f"history must be a history.csv frame with epoch, loss and accuracy, "
                             f"received: a frame without {absent}")

    x, unit = _time_axis(frame)
    frame = frame.assign(_x=x).sort_values(["_x", "gpu"], kind="stable")
    gpu_rows = frame[frame["gpu"].notna()]
    host = frame.drop_duplicates(subset=["session", "elapsed_s"])
    has_gpu = not gpu_rows.empty
    panels = 5 if has_gpu else 2
    columns = 2 if history is not None else 1
    figure = Figure(figsize=(9 + 4 * (columns - 1), 1.9 * panels + 0.6), layout="constrained")
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

    summary = f"{gpu_rows['gpu'].nunique()} GPU" if has_gpu else "no GPU recorded"
    figure.suptitle(f"Resources ({summary}, {len(host)} samples)")
    return figure


# --- evaluation and inspection (workbench.evaluation, workbench.inspect)

def confusion_matrix(confusion, classes, *, normalize: bool = True, ax=None,
                     title: str | None = None, max_labels: int = 30,
                     max_annotated: int = 20) -> Figure:
    """A confusion matrix (true classes down, predicted across), readable with many classes.

    Args:
        confusion: counts ``[true, predicted]``, shape (classes, classes).
        classes: class names.
        normalize: colour and annotate each row as fractions of its true class.
        ax: optional axes to draw on.
        title: the axes' title.
        max_labels: above this many classes, only every n-th tick is labelled.
        max_annotated: above this many classes, cells carry no numbers.
    """
    confusion = np.asarray(confusion)
    count = len(classes)
    if confusion.shape != (count, count):
        raise ValueError(f"confusion must have shape ({count}, {count}) for {count} classes, "
                         f"received shape: {confusion.shape}")
    side = min(12.0, max(4.0, 0.35 * count + 2))
    figure, ax = _figure(ax, figsize=(side + 1, side), layout="constrained")
    if normalize:
        totals = confusion.sum(axis=1, keepdims=True)
        values = np.divide(confusion, totals, out=np.zeros(confusion.shape), where=totals > 0)
    else:
        values = confusion
    image = ax.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalize else None,
                      interpolation="nearest")
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04,
                    label="fraction of the true class" if normalize else "images")
    step = max(1, -(-count // max_labels))
    ticks = np.arange(0, count, step)
    ax.set_xticks(ticks, [str(classes[i]) for i in ticks], rotation=90 if count > 10 else 0)
    ax.set_yticks(ticks, [str(classes[i]) for i in ticks])
    if count <= max_annotated:
        threshold = (values.max() if values.size else 0) / 2
        for (row, column), value in np.ndenumerate(values):
            if confusion[row, column] == 0 and row != column:
                continue
            ax.text(column, row, f"{value:.2f}" if normalize else f"{int(value)}",
                    ha="center", va="center", fontsize=8 if count <= 10 else 6,
                    color="white" if value > threshold else "black")
    ax.set(xlabel="predicted", ylabel="true", title=title or "Confusion matrix")
    return figure


def mosaic(image, *, ax=None, title: str | None = None, cmap: str = "gray") -> Figure:
    """Shows one tiled image (filters or activations, see ``workbench.inspect``) without axes."""
    image = np.asarray(image)
    figure, ax = _figure(ax, figsize=(5, 5 * image.shape[0] / max(image.shape[1], 1) + 0.4),
                         layout="constrained")
    ax.imshow(image, cmap=None if image.ndim == 3 else cmap, vmin=0, vmax=1,
              interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    return figure


def filter_comparison(mosaics, *, titles, title: str | None = None) -> Figure:
    """Tiled filters of several models side by side, one panel each (e.g. before and after)."""
    mosaics = list(mosaics)
    if len(titles) != len(mosaics):
        raise ValueError(f"titles must hold one title per mosaic ({len(mosaics)}), "
                         f"received: {len(titles)}")
    figure = Figure(figsize=(4.5 * len(mosaics), 4.8), layout="constrained")
    for ax, image, name in zip(figure.subplots(1, len(mosaics), squeeze=False)[0], mosaics,
                               titles):
        mosaic(image, ax=ax, title=name)
    if title:
        figure.suptitle(title)
    return figure


def activation_panels(image, grids) -> Figure:
    """An input image, then the activation mosaic of each layer (``inspect.activations``)."""
    grids = list(grids)
    figure = Figure(figsize=(3.2 * (len(grids) + 1), 3.6), layout="constrained")
    axes = figure.subplots(1, len(grids) + 1, squeeze=False)[0]
    axes[0].imshow(np.asarray(image))
    axes[0].set_axis_off()
    axes[0].set_title("input", fontsize=9)
    for ax, grid in zip(axes[1:], grids):
        grid.plot(ax=ax)
    return figure


def weight_stats(table, *, weight: str | None = "kernel") -> Figure:
    """Mean |w| and update-to-weight ratio |Δw|/|w| per layer over epochs (``WeightStats``).

    The ratio is on a log scale; a frozen layer (ratio exactly 0) is drawn dashed along the
    bottom of the panel and named "(frozen)" in the legend.

    Args:
        table: a frame from ``workbench.inspect.read_weight_stats``, or a CSV / run directory.
        weight: which weight of each layer (``"kernel"``, ``"bias"``, ...); None for all.
    """
    if not isinstance(table, pd.DataFrame):
        from workbench.inspect import read_weight_stats

        table = read_weight_stats(table)
    if weight is not None:
        table = table[table["weight"] == weight]
    if table.empty:
        raise ValueError(f"table has no rows for weight {weight!r}")
    figure = Figure(figsize=(12, 4), layout="constrained")
    mean_ax, ratio_ax = figure.subplots(1, 2)
    positive = table["update_ratio"][table["update_ratio"] > 0]
    floor = positive.min() / 10 if len(positive) else 1e-8
    groups = list(table.groupby(["layer", "weight"], sort=False))
    for index, ((layer, name), rows) in enumerate(groups):
        label = layer if weight is not None else f"{layer}/{name}"
        color = f"C{index % 10}"
        mean_ax.plot(rows["epoch"], rows["mean_abs"], marker=".", color=color, label=label)
        ratio = rows["update_ratio"].to_numpy(dtype=float)
        frozen = bool(np.all(ratio[~np.isnan(ratio)] == 0))
        ratio_ax.plot(rows["epoch"], np.where(ratio == 0, floor, ratio), marker=".",
                      color=color, linestyle="--" if frozen else "-",
                      label=f"{label} (frozen)" if frozen else label)
    mean_ax.set(title="Mean |w| per layer", xlabel="epoch")
    ratio_ax.set(title="Update / weight ratio |Δw|/|w| per epoch", xlabel="epoch", yscale="log")
    legend_ax = ratio_ax if len(groups) <= 12 else None
    if legend_ax is not None:
        legend_ax.legend(fontsize=7)
    return figure


def gradient_check(table: pd.DataFrame, *, tolerance: float, ax=None) -> Figure:
    """Relative error of each sampled gradient entry (log scale) against the tolerance."""
    figure, ax = _figure(ax, figsize=(6, 3.2), layout="constrained")
    errors = table["relative_error"].to_numpy(dtype=float)
    ax.semilogy(np.arange(len(errors)), np.maximum(errors, 1e-16), "o")
    ax.axhline(tolerance, color="C3", linestyle="--", label=f"tolerance {tolerance:g}")
    ax.set(xlabel="sampled weight entry", ylabel="relative error",
           title="Gradient check: autodiff against finite differences")
    ax.legend(fontsize=8)
    return figure


# --- split computing (workbench.studies.split_computing)

def split_profile(table: pd.DataFrame, *, ax=None, title: str | None = None) -> Figure:
    """Bytes sent per image at each split layer (bars, log scale) and the device and server
    compute time per image (lines, second axis), from ``SplitProfile.table``."""
    figure, ax = _figure(ax, figsize=(8, 3.6), layout="constrained")
    positions = np.arange(len(table))
    ax.bar(positions, table["bytes"], color="C0", alpha=0.6, label="bytes sent")
    ax.set(yscale="log", ylabel="bytes per image", xlabel="split after layer",
           title=title or "Split points", ylim=(None, 20 * table["bytes"].max()))
    ax.set_xticks(positions, table["layer"], rotation=45, ha="right")
    times = ax.twinx()
    times.plot(positions, table["device_ms"], "o-", color="C1", label="device ms")
    times.plot(positions, table["server_ms"], "s-", color="C2", label="server ms")
    times.set_ylabel("compute ms per image")
    times.set_ylim(0, 1.4 * max(table["device_ms"].max(), table["server_ms"].max(), 1e-6))
    handles = ax.get_legend_handles_labels()
    more = times.get_legend_handles_labels()
    ax.legend(handles[0] + more[0], handles[1] + more[1], fontsize=8, loc="upper center",
              ncol=3)
    return figure


def split_latency(table: pd.DataFrame, best: pd.DataFrame, *, ax=None,
                  title: str | None = None) -> Figure:
    """End-to-end latency against the split layer, one line per bandwidth, the best starred.

    Args:
        table: ``SplitLatency.table`` (layer, bandwidth_mbps, latency_ms).
        best: ``SplitLatency.best`` (bandwidth_mbps, best_layer, latency_ms).
        ax: optional axes to draw on.
        title: the axes title.
    """
    figure, ax = _figure(ax, figsize=(8, 3.8), layout="constrained")
    layers = list(dict.fromkeys(table["layer"]))
    for index, (bandwidth, rows) in enumerate(table.groupby("bandwidth_mbps", sort=False)):
        color = f"C{index % 10}"
        ax.plot([layers.index(name) for name in rows["layer"]], rows["latency_ms"], "o-",
                color=color, label=f"{bandwidth:g} Mbps")
        winner = best[best["bandwidth_mbps"] == bandwidth].iloc[0]
        ax.plot(layers.index(winner["best_layer"]), winner["latency_ms"], marker="*",
                markersize=16, color=color, linestyle="none")
    ax.set_xticks(range(len(layers)), layers, rotation=45, ha="right")
    ax.set(yscale="log", xlabel="split after layer", ylabel="latency per image (ms)",
           title=title or "End-to-end latency (star: best split)")
    ax.legend(fontsize=8)
    return figure


def bottleneck_accuracy(table: pd.DataFrame, *, reference: dict | None = None,
                        published: pd.DataFrame | None = None, ax=None,
                        title: str | None = None) -> Figure:
    """Accuracy against the filters kept at the split, bytes sent on a second axis.

    Args:
        table: ``BottleneckStudy.table`` (filters, accuracy, accuracy_uint8, bytes_uint8).
        reference: the unmodified model (``filters``, ``accuracy``, optionally
            ``accuracy_finetuned``), drawn as dotted lines.
        published: a published table (filters, accuracy), drawn dashed for its shape.
        ax: optional axes to draw on.
        title: the axes title.
    """
    figure, ax = _figure(ax, figsize=(7, 3.8), layout="constrained")
    ax.plot(table["filters"], table["accuracy"], "o-", color="C0", label="ours, float32 sent")
    if "accuracy_uint8" in table:
        ax.plot(table["filters"], table["accuracy_uint8"], "s--", color="C0", alpha=0.6,
                label="ours, uint8 sent")
    if reference is not None:
        ax.axhline(reference["accuracy"], color="C0", linestyle=":",
                   label=f"ours unmodified ({reference['filters']} channels)")
        if "accuracy_finetuned" in reference:
            ax.axhline(reference["accuracy_finetuned"], color="C2", linestyle=":",
                       label="ours unmodified, fine-tuned alike")
    if published is not None:
        ax.plot(published["filters"], published["accuracy"], "^--", color="gray",
                label="published CIFAR-10 (other data)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(table["filters"], [str(k) for k in table["filters"]])
    ax.set(xlabel="filters at the split", ylabel="accuracy", ylim=(0, 1.02),
           title=title or "Accuracy against filters kept")
    sent = ax.twinx()
    sent.plot(table["filters"], table["bytes_uint8"], "d-", color="C3", alpha=0.7,
              label="bytes sent (uint8)")
    sent.set(yscale="log")
    sent.set_ylabel("bytes sent per image (uint8)", color="C3")
    handles = ax.get_legend_handles_labels()
    more = sent.get_legend_handles_labels()
    ax.legend(handles[0] + more[0], handles[1] + more[1], fontsize=7, loc="lower right")
    return figure


def top_k_chart(predictions, *, image=None, ax=None, title: str | None = None) -> Figure:
    """The top-k classes of one image as horizontal bars with percentages, best on top.

    Args:
        predictions: ``Classifier.predict``'s answer for one image: ``{"label",
            "probability"}`` dicts, best first.
        image: the classified image (a path, bytes, a PIL image or a uint8 array), drawn left of
            the bars; only without ``ax``.
        ax: optional axes for the bars alone.
        title: the bars' title (default ``"Top-k"``).

    Returns:
        The figure.
    """
    predictions = list(predictions)
    if not predictions:
        raise ValueError("predictions must hold at least one prediction, received: []")
    for entry in predictions:
        if not isinstance(entry, dict) or not {"label", "probability"} <= set(entry):
            raise ValueError(f"predictions must be dicts with 'label' and 'probability', "
                             f"received: {entry!r}")
    if ax is not None and image is not None:
        raise ValueError("image needs a figure of its own: pass ax=None to draw the image "
                         "beside the bars, received: both ax and image")
    labels = [str(entry["label"]) for entry in predictions]
    probabilities = np.array([float(entry["probability"]) for entry in predictions])
    height = 0.45 * len(predictions) + 1.2
    if ax is None:
        figure = Figure(figsize=(7 if image is not None else 4.5, max(2.6, height)),
                        layout="constrained")
        if image is not None:
            from workbench.data.images import open_image

            picture_ax, ax = figure.subplots(1, 2, width_ratios=(1, 1.4))
            picture = image if isinstance(image, np.ndarray) else np.asarray(open_image(image))
            picture_ax.imshow(picture)
            picture_ax.set_axis_off()
        else:
            ax = figure.add_subplot()
    else:
        figure = ax.figure
    rows = np.arange(len(predictions))
    colors = ["C2"] + ["C0"] * (len(predictions) - 1)
    bars = ax.barh(rows, probabilities * 100, color=colors)
    ax.bar_label(bars, labels=[f"{p:.1%}" for p in probabilities], padding=3)
    ax.set_yticks(rows, labels)
    ax.invert_yaxis()  # best on top
    ax.set_xlim(0, 118)  # room for the percentages right of a full bar
    ax.set_xticks(range(0, 101, 20))
    ax.set_xlabel("probability (%)")
    ax.set_title(title or f"Top-{len(predictions)}")
    return figure


# --- sweeps and studies (workbench.studies.sweep, workbench.studies.throughput)

def sweep_results(table: pd.DataFrame, *, metric: str, x: str, by=(), ax=None) -> Figure:
    """One line of ``metric`` against parameter ``x`` per combination of the parameters ``by``.

    Failed runs are left out; the title says how many. A numeric ``x`` spanning a factor of 8
    or more (batch sizes, learning rates) is drawn on a log-2 axis.

    Args:
        table: a sweep's table (``SweepResult.table``), with columns ``status``, ``x``,
            ``metric`` and ``by``.
        metric: the metric column drawn on the y axis.
        x: the parameter on the x axis.
        by: parameters that tell the lines apart.
        ax: optional axes to draw on.
    """
    figure, ax = _figure(ax, figsize=(6, 3.5), layout="constrained")
    ok = table[table["status"] == "ok"]
    by = [name for name in by if name in ok.columns]
    numeric = pd.api.types.is_numeric_dtype(ok[x])
    positions = {value: index for index, value in enumerate(dict.fromkeys(ok[x].astype(str)))}
    groups = ok.groupby(by, sort=False, dropna=False) if by else [((), ok)]
    for key, rows in groups:
        key = key if isinstance(key, tuple) else (key,)
        rows = rows.sort_values(x) if numeric else rows
        xs = rows[x].to_numpy(dtype=float) if numeric else [positions[v] for v in
                                                             rows[x].astype(str)]
        label = ", ".join(f"{name}={value}" for name, value in zip(by, key)) or None
        ax.plot(xs, pd.to_numeric(rows[metric], errors="coerce"), marker="o", label=label)
    if numeric and len(ok) and ok[x].min() > 0 and ok[x].max() / ok[x].min() >= 8:
        _log2_axis(ax)
    if not numeric:
        ax.set_xticks(list(positions.values()), list(positions))
    failed = int((table["status"] != "ok").sum())
    title = f"{metric} by {x}" + (f" ({failed} failed run(s) not shown)" if failed else "")
    ax.set(xlabel=x, ylabel=metric, title=title)
    if by and ax.lines:
        ax.legend(fontsize=8)
    return figure


def batch_size_study(table: pd.DataFrame, published: pd.DataFrame) -> Figure:
    """Our batch-size study (top row) over the published ones (bottom row), panel for panel.

    Args:
        table: ``experiments.batch_size_table``: batch_size, epochs, train_seconds,
            test_accuracy, peak_ram_mib, peak_gpu_mib.
        published: ``experiments.published_batch_size_study()``: study, batch_size, accuracy,
            train_seconds, peak_gpu_gb.
    """
    figure = Figure(figsize=(13, 6.5), layout="constrained")
    axes = figure.subplots(2, 3)
    ours = [("train_seconds", "training time (s)"), ("test_accuracy", "test accuracy"),
            ("peak_ram_mib", "peak memory (MiB)")]
    for ax, (column, label) in zip(axes[0], ours):
        for epochs, rows in table.sort_values("batch_size").groupby("epochs", sort=True):
            ax.plot(rows["batch_size"], rows[column], marker="o", label=f"epochs={epochs}, RAM"
                    if column == "peak_ram_mib" else f"epochs={epochs}")
            if column == "peak_ram_mib" and rows["peak_gpu_mib"].notna().any():
                ax.plot(rows["batch_size"], rows["peak_gpu_mib"], marker="s", linestyle="--",
                        label=f"epochs={epochs}, GPU")
        ax.set(title=f"Ours: {label}", xlabel="batch size", ylabel=label)
    axes[0][1].set_ylim(0, 1.02)
    if table["peak_gpu_mib"].isna().all():
        axes[0][2].set_title("Ours: peak RAM (MiB); GPU not measured")
    theirs = [("train_seconds", "training time (s)"), ("accuracy", "accuracy"),
              ("peak_gpu_gb", "peak GPU memory (GB)")]
    for ax, (column, label) in zip(axes[1], theirs):
        for study, rows in published.dropna(subset=[column]).groupby("study", sort=False):
            ax.plot(rows["batch_size"], rows[column], marker="o", label=study)
        ax.set(title=f"Published: {label}", xlabel="batch size", ylabel=label)
    for ax in axes.flat:
        _log2_axis(ax)
        if ax.lines:
            ax.legend(fontsize=7)
    return figure


def _log2_axis(ax) -> None:
    """A log-2 x axis labelled with plain numbers (16, 32, 64 rather than 2^4, 2^5, 2^6)."""
    from matplotlib.ticker import FuncFormatter

    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))


def throughput(table: pd.DataFrame, *, ax=None) -> Figure:
    """Training images/s on CPU and GPU per model and image size (log scale), ratio on top.

    Args:
        table: ``ThroughputResult.table``: model, image_size, cpu_images_per_second,
            gpu_images_per_second (NaN when not measured), gpu_over_cpu.
        ax: optional axes to draw on.
    """
    figure, ax = _figure(ax, figsize=(7, 3.5), layout="constrained")
    labels = [f"{model} {size}px" for model, size in zip(table["model"], table["image_size"])]
    positions = np.arange(len(table))
    cpu = table["cpu_images_per_second"].to_numpy(dtype=float)
    gpu = pd.to_numeric(table["gpu_images_per_second"], errors="coerce").to_numpy(dtype=float)
    measured = not np.isnan(gpu).all()
    offset = 0.2 if measured else 0.0
    ax.bar(positions - offset, cpu, width=0.4, label="CPU")
    if measured:
        ax.bar(positions + offset, np.nan_to_num(gpu), width=0.4, label="GPU")
    tops = np.fmax(cpu, np.nan_to_num(gpu))
    for position, top, ratio in zip(positions, tops, table["gpu_over_cpu"]):
        text = f"GPU {ratio:.1f}x" if isinstance(ratio, (int, float)) else "GPU not measured"
        ax.annotate(text, (position, top * 1.1), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(positions, labels)
    ax.set(yscale="log", ylabel="training images/s", title="Training throughput: GPU over CPU",
           ylim=(np.nanmin(cpu) / 10, np.nanmax(tops) * 5))
    ax.legend(fontsize=8)
    return figure
