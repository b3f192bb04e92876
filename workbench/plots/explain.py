"""Figures of where a model looked: a photo beside the photo with its heatmap blended in."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from workbench.plots._axes import figure_and_axes


def explanation(image, blended, *, title: str | None = None, beside: bool = True,
                ax=None) -> Figure:
    """A photo and the same photo with its heatmap (``workbench.explain.overlay``).

    Args:
        image: the photo, uint8 (H, W, 3).
        blended: the photo with the map blended in, the same shape.
        title: e.g. the class and its probability.
        beside: two panels, the photo then the blend; False (or an ``ax``) draws the blend only.
        ax: optional axes to draw the blend on.

    Returns:
        The figure.
    """
    image, blended = np.asarray(image), np.asarray(blended)
    if image.ndim != 3 or image.shape != blended.shape:
        raise ValueError(f"blended must have the photo's shape {image.shape}, received shape: "
                         f"{blended.shape}")
    aspect = image.shape[0] / max(image.shape[1], 1)
    if beside and ax is None:
        figure = Figure(figsize=(7, 3.5 * aspect + 0.5), layout="constrained")
        axes = figure.subplots(1, 2)
        for panel, shown, name in zip(axes, (image, blended), ("photo", "where it looked")):
            panel.imshow(shown)
            panel.set_axis_off()
            panel.set_title(name, fontsize=9)
        if title:
            figure.suptitle(title)
        return figure
    figure, ax = figure_and_axes(ax, figsize=(4, 4 * aspect + 0.4), layout="constrained")
    ax.imshow(blended)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=10)
    return figure
