"""Figures of a model's insides: tiled filters and activations, weight statistics, gradients."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from workbench._checks import UsageError
from workbench.plots._axes import figure_and_axes, figure_to_fill

# what weight_stats draws: every column WeightStats writes
_WEIGHT_COLUMNS = ("epoch", "layer", "weight", "mean_abs", "update_ratio")


def mosaic(image, *, ax=None, title: str | None = None, cmap: str = "gray") -> Figure:
    """Shows one tiled image (filters or activations, see ``workbench.inspect``) without axes.

    Args:
        image: an (H, W) or (H, W, 3) array in [0, 1]; NaN pixels stay blank.
        ax: optional axes to draw on.
        title: the axes' title.
        cmap: the colour map of a grey (H, W) image.

    Returns:
        The figure.
    """
    image = np.asarray(image)
    if image.ndim not in (2, 3):
        raise UsageError(f"image must have shape (H, W) or (H, W, 3), received shape: "
                         f"{image.shape}")
    figure, ax = figure_and_axes(ax, figsize=(5, 5 * image.shape[0] / max(image.shape[1], 1)
                                              + 0.4), layout="constrained")
    ax.imshow(image, cmap=None if image.ndim == 3 else cmap, vmin=0, vmax=1,
              interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    return figure


def filter_comparison(mosaics, *, titles, title: str | None = None, figure=None) -> Figure:
    """Tiled filters of several models side by side, one panel each (e.g. before and after).

    Args:
        mosaics: one tiled image in [0, 1] per model (``FilterGrid.mosaic()``).
        titles: one title per mosaic.
        title: a title over the panels.
        figure: an empty Figure or SubFigure to draw into; None for a new figure.

    Returns:
        The figure: one axes per mosaic.
    """
    mosaics = list(mosaics)
    if len(titles) != len(mosaics) or not mosaics:
        raise UsageError(f"titles must hold one title per mosaic ({len(mosaics)}), "
                         f"received: {len(titles)}")
    figure = figure_to_fill(figure, figsize=(4.5 * len(mosaics), 4.8), layout="constrained")
    for ax, image, name in zip(figure.subplots(1, len(mosaics), squeeze=False)[0], mosaics,
                               titles):
        mosaic(image, ax=ax, title=name)
    if title:
        figure.suptitle(title)
    return figure


def activation_panels(image, mosaics, *, titles, cmap: str = "viridis",
                      figure=None) -> Figure:
    """An input image, then one tiled activation mosaic per layer, in a row.

    Args:
        image: the input image (uint8 (H, W, 3)).
        mosaics: one tiled image in [0, 1] per layer (``ActivationGrid.mosaic()``).
        titles: one title per mosaic.
        cmap: the colour map of the mosaics.
        figure: an empty Figure or SubFigure to draw into; None for a new figure.

    Returns:
        The figure: the input's axes, then one axes per mosaic.
    """
    mosaics = list(mosaics)
    if len(titles) != len(mosaics):
        raise UsageError(f"titles must hold one title per mosaic ({len(mosaics)}), "
                         f"received: {len(titles)}")
    figure = figure_to_fill(figure, figsize=(3.2 * (len(mosaics) + 1), 3.6),
                            layout="constrained")
    axes = figure.subplots(1, len(mosaics) + 1, squeeze=False)[0]
    axes[0].imshow(np.asarray(image))
    axes[0].set_axis_off()
    axes[0].set_title("input", fontsize=9)
    for ax, tiles, name in zip(axes[1:], mosaics, titles):
        mosaic(tiles, ax=ax, cmap=cmap, title=name)
    return figure


def weight_stats(table: pd.DataFrame, *, weight: str | None = "kernel",
                 figure=None) -> Figure:
    """Mean |w| and update-to-weight ratio |Δw|/|w| per layer over epochs (``WeightStats``).

    The ratio is on a log scale; a frozen layer (ratio exactly 0) is drawn dashed along the
    bottom of the panel and named "(frozen)" in the legend.

    Args:
        table: a frame from ``workbench.inspect.read_weight_stats``.
        weight: which weight of each layer (``"kernel"``, ``"bias"``, ...); None for all.
        figure: an empty Figure or SubFigure to draw into; None for a new figure.

    Returns:
        The figure: two panels (mean |w|, update ratio).
    """
    if not isinstance(table, pd.DataFrame) or not set(_WEIGHT_COLUMNS) <= set(table):
        raise UsageError(f"table must be a weight_stats.csv frame (workbench.inspect."
                         f"read_weight_stats) with the columns {', '.join(_WEIGHT_COLUMNS)}"
                         f", received: {type(table).__name__}")
    if weight is not None:
        table = table[table["weight"] == weight]
    if table.empty:
        raise UsageError(f"table has no rows for weight {weight!r}")
    figure = figure_to_fill(figure, figsize=(12, 4), layout="constrained")
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
    if len(groups) <= 12:
        ratio_ax.legend(fontsize=7)
    return figure


def gradient_check(table: pd.DataFrame, *, tolerance: float, ax=None) -> Figure:
    """Relative error of each sampled gradient entry (log scale) against the tolerance.

    Args:
        table: ``GradientCheck.table``, with a ``relative_error`` column.
        tolerance: drawn as a dashed line.
        ax: optional axes to draw on.

    Returns:
        The figure.
    """
    if not isinstance(table, pd.DataFrame) or "relative_error" not in table.columns:
        raise UsageError(f"table must be a GradientCheck.table with a 'relative_error' "
                         f"column, received: {type(table).__name__}")
    figure, ax = figure_and_axes(ax, figsize=(6, 3.2), layout="constrained")
    errors = table["relative_error"].to_numpy(dtype=float)
    ax.semilogy(np.arange(len(errors)), np.maximum(errors, 1e-16), "o")
    ax.axhline(tolerance, color="C3", linestyle="--", label=f"tolerance {tolerance:g}")
    ax.set(xlabel="sampled weight entry", ylabel="relative error",
           title="Gradient check: autodiff against finite differences")
    ax.legend(fontsize=8)
    return figure
