"""Figures of predictions: a confusion matrix, and the top-k classes of one image."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from workbench._checks import UsageError, check_int
from workbench.plots._axes import check_one_place, figure_and_axes, figure_to_fill


def confusion_figure(matrix, classes, *, normalized: bool = True, ax=None,
                     title: str | None = None, max_labels: int = 30,
                     max_annotated: int = 20) -> Figure:
    """A confusion matrix (true classes down, predicted across), readable with many classes.

    It draws the matrix as given: normalise the rows beforehand (e.g.
    ``EvaluationReport.confusion_normalized``) to show fractions of each true class.

    Args:
        matrix: ``[true, predicted]``, shape (classes, classes): counts, or each row's
            fractions of its true class.
        classes: class names.
        normalized: whether ``matrix`` holds row fractions (coloured on 0..1 and annotated
            with two decimals) or counts (annotated as integers).
        ax: optional axes to draw on.
        title: the axes' title.
        max_labels: above this many classes, only every n-th tick is labelled.
        max_annotated: above this many classes, cells carry no numbers.

    Returns:
        The figure (the matrix on ``ax``, or on the new figure's first axes, and a colour bar).
    """
    values = np.asarray(matrix)
    count = len(classes)
    if values.shape != (count, count):
        raise UsageError(f"matrix must have shape ({count}, {count}) for {count} classes, "
                         f"received shape: {values.shape}")
    check_int("max_labels", max_labels, minimum=1)
    check_int("max_annotated", max_annotated, minimum=0)
    side = min(12.0, max(4.0, 0.35 * count + 2))
    figure, ax = figure_and_axes(ax, figsize=(side + 1, side), layout="constrained")
    image = ax.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalized else None,
                      interpolation="nearest")
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04,
                    label="fraction of the true class" if normalized else "images")
    step = max(1, -(-count // max_labels))
    ticks = np.arange(0, count, step)
    ax.set_xticks(ticks, [str(classes[i]) for i in ticks], rotation=90 if count > 10 else 0)
    ax.set_yticks(ticks, [str(classes[i]) for i in ticks])
    if count <= max_annotated:
        threshold = (values.max() if values.size else 0) / 2
        for (row, column), value in np.ndenumerate(values):
            if value == 0 and row != column:  # an empty cell stays blank
                continue
            ax.text(column, row, f"{value:.2f}" if normalized else f"{int(value)}",
                    ha="center", va="center", fontsize=8 if count <= 10 else 6,
                    color="white" if value > threshold else "black")
    ax.set(xlabel="predicted", ylabel="true", title=title or "Confusion matrix")
    return figure


def top_k_chart(predictions, *, image=None, ax=None, title: str | None = None,
                figure=None) -> Figure:
    """The top-k classes of one image as horizontal bars with percentages, best on top.

    One panel (the bars) or two (the image, then the bars): it takes ``ax`` for the first and
    ``figure`` for either (the rule of :mod:`workbench.plots`).

    Args:
        predictions: ``Classifier.predict``'s answer for one image: ``{"label",
            "probability"}`` dicts, best first.
        image: the classified image, decoded (a uint8 (H, W, 3) array or a PIL image), drawn
            left of the bars; only without ``ax``.
        ax: optional axes for the bars alone.
        title: the bars' title (default ``"Top-k"``).
        figure: an empty Figure or SubFigure to draw into; None for a new figure.

    Returns:
        The figure.
    """
    predictions = list(predictions)
    if not predictions:
        raise UsageError("predictions must hold at least one prediction, received: []")
    for entry in predictions:
        if not isinstance(entry, dict) or not {"label", "probability"} <= set(entry):
            raise UsageError(f"predictions must be dicts with 'label' and 'probability', "
                             f"received: {entry!r}")
    check_one_place(ax, figure)
    if ax is not None and image is not None:
        raise UsageError("image needs a figure of its own: pass ax=None to draw the image "
                         "beside the bars, received: both ax and image")
    picture = None if image is None else np.asarray(image)
    if picture is not None and (picture.ndim not in (2, 3) or picture.dtype.kind not in "uif"):
        raise UsageError(f"image must be a decoded image (an (H, W, 3) array or a PIL image), "
                         f"received: {type(image).__name__} of shape {picture.shape}")
    labels = [str(entry["label"]) for entry in predictions]
    probabilities = np.array([float(entry["probability"]) for entry in predictions])
    height = 0.45 * len(predictions) + 1.2
    if picture is not None:
        figure = figure_to_fill(figure, figsize=(7, max(2.6, height)), layout="constrained")
        picture_ax, ax = figure.subplots(1, 2, width_ratios=(1, 1.4))
        picture_ax.imshow(picture)
        picture_ax.set_axis_off()
    elif figure is not None:  # the bars alone, in the given figure
        ax = figure_to_fill(figure).add_subplot()
    figure, ax = figure_and_axes(ax, figsize=(4.5, max(2.6, height)), layout="constrained")
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


def reliability_diagram(curves: dict, *, ax=None, title: str | None = None) -> Figure:
    """Confidence against accuracy per bin, beside the diagonal of a calibrated model, with
    the number of images in each bin as light bars (right axis).

    Points below the diagonal are over-confident bins (sure, and wrong more often than they
    say); above it, timid ones.

    Args:
        curves: ``{name: table}``, each table one row per bin with columns ``lower``,
            ``upper``, ``count``, ``confidence`` and ``accuracy`` (as
            ``workbench.calibration.reliability_bins`` returns), e.g. the raw and the
            calibrated probabilities; the name is the legend's.
        ax: optional axes to draw on (the counts go on a twin axis).
        title: the title (default ``"Reliability diagram"``).

    Returns:
        The figure.
    """
    if not isinstance(curves, dict) or not curves:
        raise UsageError(f"curves must be a non-empty dict of name: table, received: "
                         f"{curves!r}"[:200])
    needed = {"lower", "upper", "count", "confidence", "accuracy"}
    for name, table in curves.items():
        if not needed <= set(getattr(table, "columns", ())):
            raise UsageError(f"curves[{name!r}] must have columns {sorted(needed)}, received: "
                             f"{list(getattr(table, 'columns', []))}")
    figure, ax = figure_and_axes(ax, figsize=(5.5, 4.5), layout="constrained")
    counts = ax.twinx()
    counts.set_zorder(ax.get_zorder() - 1)  # the bars behind the curves
    ax.patch.set_visible(False)
    width = None
    for index, (name, table) in enumerate(curves.items()):
        lower, upper = np.asarray(table["lower"], float), np.asarray(table["upper"], float)
        width = (upper - lower) / (len(curves) + 1)
        counts.bar(lower + width * (index + 1), np.asarray(table["count"]), width=width,
                   color=f"C{index}", alpha=0.25)
        used = np.asarray(table["count"]) > 0
        ax.plot(np.asarray(table["confidence"], float)[used],
                np.asarray(table["accuracy"], float)[used], "o-", color=f"C{index}",
                label=str(name))
    ax.plot([0, 1], [0, 1], "--", color="0.5", label="perfectly calibrated")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top-1 probability)",
           ylabel="accuracy", title=title or "Reliability diagram")
    counts.set_ylabel("images per bin (bars)")
    ax.legend(loc="upper left")
    return figure
