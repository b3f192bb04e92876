"""Figures of training: the curves of one or several runs, and a metric compared across runs."""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd
from matplotlib.figure import Figure

from workbench._checks import UsageError
from workbench.plots._axes import figure_and_axes, figure_to_fill

_HISTORY_COLUMNS = ("epoch", "loss", "accuracy", "lr")  # what training_curves draws


def _named_histories(histories, names) -> dict:
    """``{name: frame}`` from a mapping, a sequence of frames with ``names``, or one frame."""
    if isinstance(histories, Mapping):
        if names is not None:
            raise UsageError("names must be None when histories is a mapping (its keys are "
                             f"the names), received: {names!r}")
        named = {str(name): frame for name, frame in histories.items()}
    else:
        frames = [histories] if isinstance(histories, pd.DataFrame) else list(histories)
        names = [f"run {i + 1}" for i in range(len(frames))] if names is None else list(names)
        if len(names) != len(frames):
            raise UsageError(f"names must hold one name per history ({len(frames)}), "
                             f"received: {len(names)}")
        named = dict(zip((str(name) for name in names), frames))
    for name, frame in named.items():
        if not isinstance(frame, pd.DataFrame):
            raise UsageError(f"histories must be history.csv frames (workbench.runs.RunDir."
                             f"history), received for {name!r}: {type(frame).__name__}")
        missing = [c for c in _HISTORY_COLUMNS if c not in frame.columns]
        if len(frame) and missing:
            raise UsageError(f"histories must have the columns {', '.join(_HISTORY_COLUMNS)}, "
                             f"received for {name!r}: a frame without {missing}")
    return named


def training_curves(histories, *, names=None, figure=None) -> Figure:
    """Loss, accuracy and learning rate per epoch for one or several runs, overlaid.

    The epoch of each run's best validation accuracy is marked on the accuracy panel. An empty
    history (a run that has not finished an epoch) draws nothing.

    Args:
        histories: ``history.csv`` frames (``workbench.runs.RunDir(path).history``): a dict
            ``{name: frame}``, a list of frames, or one frame. Columns ``epoch``, ``loss``,
            ``accuracy``, ``lr`` and optionally ``val_loss``, ``val_accuracy`` (NaN in epochs
            without validation).
        names: with a list, a legend name per frame; default ``run 1``, ``run 2``, ...
        figure: an empty Figure or SubFigure to draw into; None for a new figure.

    Returns:
        The figure: three panels (loss, accuracy, learning rate).
    """
    named = _named_histories(histories, names)
    figure = figure_to_fill(figure, figsize=(12, 3.6), layout="constrained")
    loss_ax, acc_ax, lr_ax = figure.subplots(1, 3)
    for index, (name, history) in enumerate(named.items()):
        if history.empty:
            continue
        color = f"C{index % 10}"
        history = history.reset_index(drop=True)
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
        lr_ax.plot(epochs, history["lr"], color=color, label=name)
    loss_ax.set(title="Loss", xlabel="epoch")
    acc_ax.set(title="Accuracy", xlabel="epoch", ylim=(0, 1.02))
    lr_ax.set(title="Learning rate (end of epoch)", xlabel="epoch")
    _lr_scale(lr_ax, [frame["lr"] for frame in named.values() if not frame.empty])
    for ax in (loss_ax, acc_ax, lr_ax):
        if ax.lines:
            ax.legend(fontsize=7)
    return figure


def _lr_scale(ax, rates) -> None:
    """A log axis for the learning rates; with a rate of 0 (a schedule's end, a frozen
    stage: no log), a symmetric log axis, linear below the smallest positive rate, so the
    zeros are drawn at 0 instead of left out."""
    values = pd.concat(rates).dropna() if rates else pd.Series(dtype=float)
    positive = values[values > 0]
    if (values <= 0).any():
        ax.set_yscale("symlog", linthresh=float(positive.min()) if len(positive) else 1e-6)
    elif len(positive):
        ax.set_yscale("log")


def compare_accuracy(results: pd.DataFrame, *, by: str = "recipe", value: str = "test_accuracy",
                     chance: float | None = None, ax=None) -> Figure:
    """Mean and spread of a metric per group (e.g. per recipe over seeds), as bars.

    Args:
        results: one row per run, with columns ``by`` and ``value``.
        by: the grouping column.
        value: the metric column.
        chance: draws a dashed line at the chance level if given.
        ax: optional axes to draw on.

    Returns:
        The figure.
    """
    if not isinstance(results, pd.DataFrame) or not {by, value} <= set(results.columns):
        received = (f"columns {list(results.columns)}" if isinstance(results, pd.DataFrame)
                    else type(results).__name__)
        raise UsageError(f"results must be a DataFrame with columns {by!r} and {value!r}, "
                         f"received: {received}")
    figure, ax = figure_and_axes(ax, figsize=(6, 3.5), layout="constrained")
    grouped = results.groupby(by, sort=False)[value]
    means, errors = grouped.mean(), grouped.std().fillna(0.0)
    ax.bar(means.index.astype(str), means.to_numpy(), yerr=errors.to_numpy(), capsize=4,
           color=[f"C{i}" for i in range(len(means))])
    for position, (_, rows) in enumerate(grouped):
        ax.plot([position] * len(rows), rows.to_numpy(), "k.", alpha=0.6)
    if chance is not None:
        ax.axhline(chance, color="gray", linestyle="--", label="chance")
        ax.legend()
    ax.set(ylabel=value.replace("_", " "), ylim=(0, 1), title=f"{value.replace('_', ' ')} by {by}")
    return figure
