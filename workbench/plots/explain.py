"""Figures of where a model looked: a photo beside the photo with its heatmap blended in."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from workbench._checks import UsageError
from workbench.plots._axes import check_one_place, figure_and_axes, figure_to_fill


def explanation(image, blended, *, title: str | None = None, beside: bool = True,
                ax=None, figure=None) -> Figure:
    """A photo and the same photo with its heatmap (``workbench.explain.overlay``).

    Two panels, or one: it takes ``figure`` for the first and ``ax`` for the second (the rule
    of :mod:`workbench.plots`).

    Args:
        image: the photo, uint8 (H, W, 3).
        blended: the photo with the map blended in, the same shape.
        title: e.g. the class and its probability.
        beside: two panels, the photo then the blend; False (or an ``ax``) draws the blend only.
        ax: optional axes to draw the blend on.
        figure: an empty Figure or SubFigure to draw into; None for a new figure.

    Returns:
        The figure.
    """
    image, blended = np.asarray(image), np.asarray(blended)
    if image.ndim != 3 or image.shape != blended.shape:
        raise UsageError(f"blended must have the photo's shape {image.shape}, received shape: "
                         f"{blended.shape}")
    check_one_place(ax, figure)
    aspect = image.shape[0] / max(image.shape[1], 1)
    if beside and ax is None:
        figure = figure_to_fill(figure, figsize=(7, 3.5 * aspect + 0.5), layout="constrained")
        axes = figure.subplots(1, 2)
        for panel, shown, name in zip(axes, (image, blended), ("photo", "where it looked")):
            panel.imshow(shown)
            panel.set_axis_off()
            panel.set_title(name, fontsize=9)
        if title:
            figure.suptitle(title)
        return figure
    if figure is not None:  # the blend alone, in the given figure
        ax = figure_to_fill(figure).add_subplot()
    figure, ax = figure_and_axes(ax, figsize=(4, 4 * aspect + 0.4), layout="constrained")
    ax.imshow(blended)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=10)
    return figure
