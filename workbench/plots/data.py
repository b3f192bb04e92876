"""Figures of a dataset: images per class, a grid of images, a few samples of each class."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from workbench._checks import UsageError, check_int
from workbench.plots._axes import figure_and_axes, figure_to_fill


def class_counts(table: pd.DataFrame, *, ax=None) -> Figure:
    """Bar chart of images per class, stacked by split if the table has a ``split`` column.

    Args:
        table: rows with a ``label`` column (a scan table or a split table).
        ax: optional axes to draw on.

    Returns:
        The figure.
    """
    if not isinstance(table, pd.DataFrame) or "label" not in table.columns:
        received = (f"columns {list(table.columns)}" if isinstance(table, pd.DataFrame)
                    else type(table).__name__)
        raise UsageError(f"table must be a DataFrame with a 'label' column, received: "
                         f"{received}")
    figure, ax = figure_and_axes(ax, figsize=(8, 3.5), layout="constrained")
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
               size: float = 1.2, figure=None) -> Figure:
    """Tiles images (uint8 arrays or PIL images) in a grid, with optional titles.

    Args:
        images: a sequence of images.
        titles: one caption per image.
        columns: images per row.
        title: a title over the grid.
        size: inches per tile (of a new figure).
        figure: an empty Figure or SubFigure to draw into; None for a new figure.

    Returns:
        The figure: one axes per tile, empty tiles without axis lines.
    """
    check_int("columns", columns, minimum=1)
    images = list(images)
    if not images:
        raise UsageError("images must hold at least one image, received: 0")
    if titles is not None and len(titles) != len(images):
        raise UsageError(f"titles must hold one title per image ({len(images)}), received: "
                         f"{len(titles)}")
    rows = -(-len(images) // columns)
    columns = min(columns, len(images))
    height = rows * size + (0.4 if title else 0)
    figure = figure_to_fill(figure, figsize=(columns * size, height), layout="constrained")
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


def samples_per_class(images, labels, *, per_class: int | None = None, figure=None) -> Figure:
    """A grid with one row per class showing a few of its images, titled by class.

    The images are decoded by the caller, e.g. by :func:`workbench.data.scan.sample_images`,
    which picks a few of each class at random.

    Args:
        images: decoded images (uint8 arrays or PIL images).
        labels: the class of each image; rows follow the order in which classes first appear.
        per_class: images per row; default the most any class has. Further images of a class
            are left out; a class with fewer gets blank tiles.
        figure: an empty Figure or SubFigure to draw into; None for a new figure.

    Returns:
        The figure (see :func:`image_grid`).
    """
    images, labels = list(images), [str(label) for label in labels]
    if len(labels) != len(images):
        raise UsageError(f"labels must hold one label per image ({len(images)}), received: "
                         f"{len(labels)}")
    if not images:
        raise UsageError("images must hold at least one image, received: 0")
    by_class: dict[str, list] = {}
    for image, label in zip(images, labels):
        by_class.setdefault(label, []).append(image)
    if per_class is None:
        per_class = max(len(shown) for shown in by_class.values())
    check_int("per_class", per_class, minimum=1)
    blank = np.full((8, 8, 3), 255, np.uint8)
    tiles, titles = [], []
    for label, shown in by_class.items():
        shown = shown[:per_class]
        tiles += shown + [blank] * (per_class - len(shown))
        titles += [label] + [""] * (per_class - 1)
    return image_grid(tiles, titles=titles, columns=per_class, title="Samples per class",
                      figure=figure)
