"""Every figure the workbench draws. Each function returns a ``matplotlib.figure.Figure`` (or
draws on the ``ax`` it is given) and never calls ``plt.show()``: notebooks display what they
get, scripts save it.
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
        if "val_loss" in history and history["val_loss"].notna().any():
            loss_ax.plot(epochs, history["val_loss"], color=color, linestyle="--",
                         label=f"{name} val")
            acc_ax.plot(epochs, history["val_accuracy"], color=color, linestyle="--",
                        label=f"{name} val")
            best = history["val_accuracy"].idxmax()
            acc_ax.plot(epochs[best], history["val_accuracy"][best], marker="*", markersize=12,
                        color=color, linestyle="none", label=f"{name} best")
        lr_ax.plot(epochs, history["lr"], color=color, label=name)
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
