"""What every figure module of :mod:`workbench.plots` shares: where to draw, and a log-2 axis."""

from __future__ import annotations

from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter


def figure_and_axes(ax, **kwargs):
    """The figure and axes to draw on: the caller's ``ax``, or a new figure's only axes.

    Args:
        ax: axes to draw on, or None for a new figure.
        **kwargs: passed to ``Figure`` when a new one is made (``figsize``, ``layout``).

    Returns:
        ``(figure, ax)``.
    """
    if ax is not None:
        return ax.figure, ax
    figure = Figure(**kwargs)
    return figure, figure.add_subplot()


def log2_axis(ax) -> None:
    """A log-2 x axis labelled with plain numbers (16, 32, 64 rather than 2^4, 2^5, 2^6)."""
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
