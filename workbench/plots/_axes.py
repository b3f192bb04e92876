"""What every figure module of :mod:`workbench.plots` shares: where to draw, and a log-2 axis.

Where a plot draws follows one rule (see :mod:`workbench.plots`): a plot of one panel takes
``ax=None`` (:func:`figure_and_axes`), a plot of several takes ``figure=None``
(:func:`figure_to_fill`).
"""

from __future__ import annotations

from matplotlib.axes import Axes
from matplotlib.figure import Figure, FigureBase
from matplotlib.ticker import FuncFormatter

from workbench._checks import UsageError


def figure_and_axes(ax, **kwargs):
    """The figure and axes to draw on: the caller's ``ax``, or a new figure's only axes.

    Args:
        ax: axes to draw on, or None for a new figure.
        **kwargs: passed to ``Figure`` when a new one is made (``figsize``, ``layout``).

    Returns:
        ``(figure, ax)``: ``ax.figure`` (a Figure, or the SubFigure holding ``ax``) and ``ax``.

    Raises:
        UsageError: ``ax`` is neither None nor a matplotlib ``Axes``.
    """
    if ax is not None:
        if not isinstance(ax, Axes):
            raise UsageError(f"ax must be a matplotlib Axes or None, received: "
                             f"{type(ax).__name__}")
        return ax.figure, ax
    figure = Figure(**kwargs)
    return figure, figure.add_subplot()


def figure_to_fill(figure, **kwargs):
    """The figure a plot of several panels draws into: the caller's, or a new one.

    Args:
        figure: an empty ``Figure`` or ``SubFigure`` (e.g. one of ``fig.subfigures(1, 2)``,
            to put two such plots side by side), or None for a new figure.
        **kwargs: passed to ``Figure`` when a new one is made (``figsize``, ``layout``); a
            given figure keeps its own size and layout.

    Returns:
        ``figure``, or the new ``Figure``.

    Raises:
        UsageError: ``figure`` is not a matplotlib figure, or already holds axes.
    """
    if figure is None:
        return Figure(**kwargs)
    if not isinstance(figure, FigureBase):
        raise UsageError(f"figure must be a matplotlib Figure or SubFigure or None, received: "
                         f"{type(figure).__name__}")
    if figure.axes:
        raise UsageError(f"figure must be empty (a new Figure, or one of fig.subfigures()), "
                         f"received: a figure with {len(figure.axes)} axes")
    return figure


def check_one_place(ax, figure) -> None:
    """For a plot that draws one panel or several (taking ``ax`` and ``figure``): not both.

    Raises:
        UsageError: both ``ax`` and ``figure`` are given.
    """
    if ax is not None and figure is not None:
        raise UsageError("ax and figure are two places to draw: pass one of them, received: "
                         "both")


def log2_axis(ax) -> None:
    """A log-2 x axis labelled with plain numbers (16, 32, 64 rather than 2^4, 2^5, 2^6)."""
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
