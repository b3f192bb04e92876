"""Figures of the studies: sweeps, the batch-size study, throughput, split computing."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from workbench.plots._axes import figure_and_axes, figure_to_fill, log2_axis


def split_profile(table: pd.DataFrame, *, ax=None, title: str | None = None) -> Figure:
    """Bytes sent per image at each split layer (bars, log scale) and the device and server
    compute time per image (lines, second axis), from ``SplitProfile.table``."""
    figure, ax = figure_and_axes(ax, figsize=(8, 3.6), layout="constrained")
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
    figure, ax = figure_and_axes(ax, figsize=(8, 3.8), layout="constrained")
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
        table: ``BottleneckStudy.table`` (filters, accuracy, accuracy_uint8, bytes_uint8, and
            optionally ``method``: one line per method, in the table's order, each labelled
            with its name; without it one line labelled ``ours``).
        reference: the unmodified model (``filters``, ``accuracy``, optionally
            ``accuracy_finetuned``), drawn as dotted lines.
        published: a published table (filters, accuracy), drawn dashed for its shape.
        ax: optional axes to draw on.
        title: the axes title.
    """
    figure, ax = figure_and_axes(ax, figsize=(7, 3.8), layout="constrained")
    groups = (table.groupby("method", sort=False) if "method" in table
              else [("ours", table)])
    colors = ("C0", "C1", "C4", "C5", "C6")  # C2: the reference, C3: the bytes
    for index, (method, rows) in enumerate(groups):
        color = colors[index % len(colors)]
        rows = rows.sort_values("filters")
        ax.plot(rows["filters"], rows["accuracy"], "o-", color=color,
                label=f"{method}, float32 sent")
        if "accuracy_uint8" in rows:
            ax.plot(rows["filters"], rows["accuracy_uint8"], "s--", color=color, alpha=0.6,
                    label=f"{method}, uint8 sent")
    if reference is not None:
        ax.axhline(reference["accuracy"], color="C7", linestyle=":",
                   label=f"ours unmodified ({reference['filters']} channels)")
        if "accuracy_finetuned" in reference:
            ax.axhline(reference["accuracy_finetuned"], color="C2", linestyle=":",
                       label="ours unmodified, fine-tuned alike")
    if published is not None:
        ax.plot(published["filters"], published["accuracy"], "^--", color="gray",
                label="published CIFAR-10 (other data)")
    sizes = table.drop_duplicates("filters").sort_values("filters")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes["filters"], [str(k) for k in sizes["filters"]])
    ax.set(xlabel="filters at the split", ylabel="accuracy", ylim=(0, 1.02),
           title=title or "Accuracy against filters kept")
    sent = ax.twinx()
    sent.plot(sizes["filters"], sizes["bytes_uint8"], "d-", color="C3", alpha=0.7,
              label="bytes sent (uint8)")
    sent.set(yscale="log")
    sent.set_ylabel("bytes sent per image (uint8)", color="C3")
    handles = ax.get_legend_handles_labels()
    more = sent.get_legend_handles_labels()
    ax.legend(handles[0] + more[0], handles[1] + more[1], fontsize=7, loc="lower right")
    return figure


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
    figure, ax = figure_and_axes(ax, figsize=(6, 3.5), layout="constrained")
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
        log2_axis(ax)
    if not numeric:
        ax.set_xticks(list(positions.values()), list(positions))
    failed = int((table["status"] != "ok").sum())
    title = f"{metric} by {x}" + (f" ({failed} failed run(s) not shown)" if failed else "")
    ax.set(xlabel=x, ylabel=metric, title=title)
    if by and ax.lines:
        ax.legend(fontsize=8)
    return figure


def batch_size_study(table: pd.DataFrame, published: pd.DataFrame, *,
                     figure=None) -> Figure:
    """Our batch-size study (top row) over the published ones (bottom row), panel for panel.

    Args:
        table: ``workbench.studies.batch_size.batch_size_table``: batch_size, epochs,
            train_seconds, test_accuracy, peak_ram_mib, peak_gpu_mib.
        published: ``published_batch_size_study()`` of the same module: study, batch_size,
            accuracy, train_seconds, peak_gpu_gb.
        figure: an empty Figure or SubFigure to draw into; None for a new figure.

    Returns:
        The figure: six panels, ours over the published.
    """
    figure = figure_to_fill(figure, figsize=(13, 6.5), layout="constrained")
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
        log2_axis(ax)
        if ax.lines:
            ax.legend(fontsize=7)
    return figure


def throughput(table: pd.DataFrame, *, ax=None) -> Figure:
    """Training images/s on CPU and GPU per model and image size (log scale), ratio on top.

    Args:
        table: ``ThroughputResult.table``: model, image_size, cpu_images_per_second,
            gpu_images_per_second (NaN when not measured), gpu_over_cpu.
        ax: optional axes to draw on.
    """
    figure, ax = figure_and_axes(ax, figsize=(7, 3.5), layout="constrained")
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
