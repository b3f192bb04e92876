"""The data and training figures: checked for what they draw (Agg)."""

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from workbench import plots
from workbench._checks import UsageError
from workbench.data.scan import sample_images


def test_plots_is_a_leaf_that_imports_nothing_of_the_workbench_but_checks():
    code = ("import sys, workbench.plots; print(sorted(m for m in sys.modules if "
            "m.startswith('workbench') and not m.startswith('workbench.plots')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout.strip()
    assert loaded == "['workbench', 'workbench._checks']"


def test_class_counts_stacks_splits():
    table = pd.DataFrame({"label": ["a"] * 5 + ["b"] * 3,
                          "split": ["train", "train", "val", "test", "test",
                                    "train", "val", "test"]})
    ax = plots.class_counts(table).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["train", "val", "test"]
    heights = [[bar.get_height() for bar in container] for container in ax.containers]
    assert heights == [[2, 1], [1, 1], [2, 1]]


def test_image_grid_tiles_and_titles():
    images = [np.full((4, 4, 3), i * 20, np.uint8) for i in range(5)]
    figure = plots.image_grid(images, titles=list("abcde"), columns=3, title="grid")
    shown = [ax for ax in figure.axes if ax.images]
    assert len(figure.axes) == 6 and len(shown) == 5
    assert [ax.get_title() for ax in shown] == list("abcde")
    assert figure._suptitle.get_text() == "grid"


def test_samples_per_class_one_row_per_class(tmp_path):
    rows = []
    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        for i in range(3):
            Image.new("RGB", (10, 8), (i * 50, 0, 0)).save(tmp_path / label / f"{i}.png")
            rows.append({"path": f"{label}/{i}.png", "label": label, "status": "ok"})
    rows.append({"path": "cat/missing.png", "label": "cat", "status": "rejected"})
    images, labels = sample_images(pd.DataFrame(rows), tmp_path, per_class=4, image_size=6)
    assert labels == ["cat"] * 3 + ["dog"] * 3  # the rejected row is skipped
    assert all(image.shape == (6, 6, 3) for image in images)  # resized as the model sees it
    figure = plots.samples_per_class(images, labels, per_class=4)
    axes = np.array(figure.axes).reshape(2, 4)
    assert [ax.get_title() for ax in axes[:, 0]] == ["cat", "dog"]
    assert axes[0, 0].images[0].get_array().shape == (6, 6, 3)
    assert sum(len(ax.images) for ax in figure.axes) == 8  # 3 images + 1 blank per class
    assert np.array_equal(axes[1, 2].images[0].get_array(), images[5])
    two = plots.samples_per_class(images, labels)  # default: as many columns as a class has
    assert len(two.axes) == 6
    with pytest.raises(ValueError, match="labels must hold one label per image \\(6\\), "
                                         "received: 2"):
        plots.samples_per_class(images, labels[:2])


def history(val):
    return pd.DataFrame({"epoch": [1, 2, 3], "loss": [2.0, 1.0, 0.5], "accuracy": [0.2, 0.5, 0.7],
                         "val_loss": [2.1, 1.2, 0.9], "val_accuracy": val,
                         "lr": [0.1, 0.05, 0.0]})


def test_training_curves_overlay_runs_and_mark_the_best_epoch():
    histories = {"A": history([0.3, 0.6, 0.5]), "B": history([0.1, 0.2, 0.4])}
    loss_ax, acc_ax, lr_ax = plots.training_curves(histories).axes
    assert len(loss_ax.lines) == 4 and len(lr_ax.lines) == 2
    assert [line.get_label() for line in lr_ax.lines] == ["A", "B"]
    stars = [line for line in acc_ax.lines if line.get_marker() == "*"]
    assert [(line.get_xdata()[0], line.get_ydata()[0]) for line in stars] == [(2, 0.6), (3, 0.4)]
    # the schedule's final 0 is drawn, at 0 on a symmetric log axis (a log axis leaves it out)
    assert lr_ax.get_yscale() == "symlog"
    assert list(lr_ax.lines[0].get_ydata()) == [0.1, 0.05, 0.0]
    assert lr_ax.get_ylim()[0] <= 0.0


def test_training_curves_draw_learning_rates_of_zero():
    """A two-stage run of 2 epochs ends each stage's schedule at 0: every rate is 0."""
    only_zeros = history([0.3, 0.6, 0.5]).assign(lr=0.0)
    lr_ax = plots.training_curves({"A": only_zeros}).axes[2]
    line = lr_ax.lines[0]
    assert list(line.get_ydata()) == [0.0, 0.0, 0.0]
    low, high = lr_ax.get_ylim()
    assert low <= 0.0 <= high  # on the axis, not outside it
    positive = plots.training_curves({"A": history([0.3, 0.6, 0.5]).assign(lr=[0.1, 0.05, 0.01])})
    assert positive.axes[2].get_yscale() == "log"  # no zero: the usual log axis


def test_training_curves_take_a_list_with_names_and_skip_empty_histories():
    frames = [history([0.3, 0.6, 0.5]), pd.DataFrame(), history([0.1, 0.2, 0.4]).iloc[1:]]
    lr_ax = plots.training_curves(frames, names=["A", "empty", "B"]).axes[2]
    assert [line.get_label() for line in lr_ax.lines] == ["A", "B"]
    acc_ax = plots.training_curves(frames[2]).axes[1]  # one frame; its index starts at 1
    star = next(line for line in acc_ax.lines if line.get_marker() == "*")
    assert (star.get_xdata()[0], star.get_ydata()[0]) == (3, 0.4)
    assert acc_ax.lines[0].get_label() == "run 1 train"
    with pytest.raises(ValueError, match="names must hold one name per history \\(3\\), "
                                         "received: 1"):
        plots.training_curves(frames, names=["A"])
    with pytest.raises(ValueError, match="received for 'run 1': PosixPath"):
        plots.training_curves([Path("history.csv")])
    with pytest.raises(ValueError, match="received for 'x': a frame without \\['lr'\\]"):
        plots.training_curves({"x": history([0.1, 0.2, 0.3]).drop(columns="lr")})


def test_compare_accuracy_bars_are_means_with_chance_line():
    results = pd.DataFrame({"recipe": ["scratch", "scratch", "caffe", "caffe"],
                            "test_accuracy": [0.1, 0.2, 0.6, 0.8]})
    ax = plots.compare_accuracy(results, chance=0.1).axes[0]
    assert np.allclose([bar.get_height() for bar in ax.patches], [0.15, 0.7])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["scratch", "caffe"]
    assert any(line.get_linestyle() == "--" and line.get_ydata()[0] == 0.1 for line in ax.lines)


def test_training_curves_join_sparse_validation_points():
    sparse = pd.DataFrame({"epoch": [1, 2, 3, 4], "loss": [2.0, 1.5, 1.0, 0.8],
                           "accuracy": [0.2, 0.4, 0.6, 0.7], "val_loss": [None, 1.6, None, 1.1],
                           "val_accuracy": [None, 0.3, None, 0.5], "lr": [0.1] * 4})
    loss_ax = plots.training_curves({"run": sparse}).axes[0]
    val = next(line for line in loss_ax.lines if line.get_label().endswith("val"))
    assert list(val.get_xdata()) == [2, 4] and list(val.get_ydata()) == [1.6, 1.1]


def test_figures_take_decoded_data_not_paths(tmp_path):
    with pytest.raises(ValueError, match="image must be a decoded image .*received: str"):
        plots.top_k_chart([{"label": "a", "probability": 1.0}], image=str(tmp_path / "x.png"))
    with pytest.raises(ValueError, match="image must be a decoded image .*received: bytes"):
        plots.top_k_chart([{"label": "a", "probability": 1.0}], image=b"\x89PNG")
    with pytest.raises(ValueError, match="table must be a weight_stats.csv frame .*PosixPath"):
        plots.weight_stats(tmp_path / "weight_stats.csv")
    with pytest.raises(ValueError, match="frame must be a resources.csv frame .*PosixPath"):
        plots.resource_dashboard(tmp_path / "resources.csv")


def test_confusion_figure_draws_the_matrix_it_is_given():
    fractions = np.array([[0.75, 0.25], [0.0, 1.0]])
    figure = plots.confusion_figure(fractions, ["x", "y"])
    ax = figure.axes[0]
    np.testing.assert_array_equal(ax.images[0].get_array(), fractions)  # not normalised again
    assert [t.get_text() for t in ax.texts] == ["0.75", "0.25", "1.00"]  # the empty cell blank
    counts = plots.confusion_figure([[3, 1], [0, 4]], ["x", "y"], normalized=False).axes[0]
    assert [t.get_text() for t in counts.texts] == ["3", "1", "4"]
    with pytest.raises(ValueError, match="matrix must have shape \\(3, 3\\) for 3 classes"):
        plots.confusion_figure(fractions, ["x", "y", "z"])


# --- where a plot draws: one panel into an ax, several into a figure (plots/__init__.py) -------

_IMAGE = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
_TOP = [{"label": "cat", "probability": 0.7}, {"label": "dog", "probability": 0.2},
        {"label": "fox", "probability": 0.1}]
_CURVE = pd.DataFrame({"lower": [0.0, 0.5], "upper": [0.5, 1.0], "count": [3, 5],
                       "confidence": [0.4, 0.8], "accuracy": [0.3, 0.9]})
_SPLITS = pd.DataFrame({"layer": ["conv1", "conv2"], "bytes": [4096, 512],
                        "device_ms": [1.0, 2.0], "server_ms": [3.0, 1.0]})
_LATENCY = pd.DataFrame({"layer": ["conv1", "conv2"] * 2, "bandwidth_mbps": [1, 1, 10, 10],
                         "latency_ms": [40.0, 12.0, 6.0, 5.0]})
_BEST = pd.DataFrame({"bandwidth_mbps": [1, 10], "best_layer": ["conv2", "conv2"],
                      "latency_ms": [12.0, 5.0]})
_BOTTLENECK = pd.DataFrame({"filters": [4, 8, 16], "accuracy": [0.5, 0.7, 0.8],
                            "accuracy_uint8": [0.5, 0.69, 0.8], "bytes_uint8": [64, 128, 256]})
_SWEEP = pd.DataFrame({"status": ["ok", "ok", "failed"], "batch_size": [16, 32, 64],
                       "test_accuracy": [0.5, 0.6, None]})
_THROUGHPUT = pd.DataFrame({"model": ["lenet", "mobilenet_v2"], "image_size": [28, 224],
                            "cpu_images_per_second": [900.0, 40.0],
                            "gpu_images_per_second": [9000.0, 800.0], "gpu_over_cpu": [10.0, 20.0]})
_RESULTS = pd.DataFrame({"recipe": ["scratch", "scratch", "caffe"],
                         "test_accuracy": [0.2, 0.3, 0.7]})

# one-panel plots: name -> (the call with ax, what it must have put into that ax)
SINGLE_PANEL = {
    "class_counts": (lambda ax: plots.class_counts(pd.DataFrame({"label": list("aab")}), ax=ax),
                     lambda ax: [bar.get_height() for bar in ax.patches] == [2, 1]),
    "confusion_figure": (lambda ax: plots.confusion_figure([[2, 0], [1, 3]], ["x", "y"],
                                                           normalized=False, ax=ax),
                         lambda ax: ax.images[0].get_array().tolist() == [[2, 0], [1, 3]]),
    "top_k_chart": (lambda ax: plots.top_k_chart(_TOP, ax=ax),
                    lambda ax: [t.get_text() for t in ax.get_yticklabels()]
                    == ["cat", "dog", "fox"] and len(ax.patches) == 3),
    "reliability_diagram": (lambda ax: plots.reliability_diagram({"raw": _CURVE}, ax=ax),
                            lambda ax: list(ax.lines[0].get_ydata()) == [0.3, 0.9]),
    "mosaic": (lambda ax: plots.mosaic(np.eye(3), ax=ax),
               lambda ax: np.array_equal(ax.images[0].get_array(), np.eye(3))),
    "gradient_check": (lambda ax: plots.gradient_check(
        pd.DataFrame({"relative_error": [1e-6, 1e-3]}), tolerance=1e-4, ax=ax),
        lambda ax: list(ax.lines[0].get_ydata()) == [1e-6, 1e-3]),
    "explanation": (lambda ax: plots.explanation(_IMAGE, 255 - _IMAGE, ax=ax),
                    lambda ax: np.array_equal(ax.images[0].get_array(), 255 - _IMAGE)),
    "split_profile": (lambda ax: plots.split_profile(_SPLITS, ax=ax),
                      lambda ax: [bar.get_height() for bar in ax.patches] == [4096, 512]),
    "split_latency": (lambda ax: plots.split_latency(_LATENCY, _BEST, ax=ax),
                      lambda ax: list(ax.lines[0].get_ydata()) == [40.0, 12.0]),
    "bottleneck_accuracy": (lambda ax: plots.bottleneck_accuracy(_BOTTLENECK, ax=ax),
                            lambda ax: list(ax.lines[0].get_ydata()) == [0.5, 0.7, 0.8]),
    "sweep_results": (lambda ax: plots.sweep_results(_SWEEP, metric="test_accuracy",
                                                     x="batch_size", ax=ax),
                      lambda ax: list(ax.lines[0].get_ydata()) == [0.5, 0.6]),
    "throughput": (lambda ax: plots.throughput(_THROUGHPUT, ax=ax),
                   lambda ax: [bar.get_height() for bar in ax.patches][:2] == [900.0, 40.0]),
    "compare_accuracy": (lambda ax: plots.compare_accuracy(_RESULTS, ax=ax),
                         lambda ax: np.allclose([b.get_height() for b in ax.patches],
                                                [0.25, 0.7])),
}


def _history():
    return pd.DataFrame({"epoch": [1, 2], "loss": [1.0, 0.5], "accuracy": [0.4, 0.6],
                         "lr": [0.1, 0.01]})


def _resources():
    from workbench.monitor import COLUMNS

    rows = [{"time": f"2025-01-01T00:00:0{t}Z", "elapsed_s": float(t), "session": 0,
             "epoch": 1, "process_cpu_percent": 10.0, "cpu_percent": 50.0,
             "process_rss_mib": 100.0, "ram_used_mib": 1000.0, "ram_total_mib": 4000.0}
            for t in range(3)]
    return pd.DataFrame(rows, columns=COLUMNS)


# plots of several panels: name -> (the call with figure, the number of axes it draws)
MULTI_PANEL = {
    "image_grid": (lambda f: plots.image_grid([_IMAGE] * 3, columns=2, figure=f), 4),
    "samples_per_class": (lambda f: plots.samples_per_class([_IMAGE] * 2, ["a", "b"],
                                                            figure=f), 2),
    "filter_comparison": (lambda f: plots.filter_comparison([np.eye(3)] * 2, titles=["a", "b"],
                                                            figure=f), 2),
    "activation_panels": (lambda f: plots.activation_panels(_IMAGE, [np.eye(3)], titles=["c"],
                                                            figure=f), 2),
    "weight_stats": (lambda f: plots.weight_stats(pd.DataFrame(
        {"epoch": [1, 2], "layer": ["d", "d"], "weight": ["kernel"] * 2, "mean_abs": [0.1, 0.2],
         "update_ratio": [0.01, 0.02]}), figure=f), 2),
    "training_curves": (lambda f: plots.training_curves(_history(), figure=f), 3),
    "batch_size_study": (lambda f: plots.batch_size_study(
        pd.DataFrame({"batch_size": [16, 32], "epochs": [1, 1], "train_seconds": [2.0, 1.0],
                      "test_accuracy": [0.5, 0.6], "peak_ram_mib": [100.0, 120.0],
                      "peak_gpu_mib": [np.nan, np.nan]}),
        pd.DataFrame({"study": ["x", "x"], "batch_size": [16, 32], "accuracy": [0.9, 0.8],
                      "train_seconds": [10.0, 6.0], "peak_gpu_gb": [1.0, 2.0]}), figure=f), 6),
    "resource_dashboard": (lambda f: plots.resource_dashboard(_resources(), figure=f), 2),
    "explanation": (lambda f: plots.explanation(_IMAGE, 255 - _IMAGE, figure=f), 2),
    "top_k_chart": (lambda f: plots.top_k_chart(_TOP, image=_IMAGE, figure=f), 2),
}


def test_every_plot_takes_ax_for_one_panel_or_figure_for_several():
    import inspect

    takes = {name: {"ax", "figure"} & set(inspect.signature(getattr(plots, name)).parameters)
             for name in plots.__all__}
    assert all(takes.values()), [name for name, given in takes.items() if not given]
    assert {name for name, given in takes.items() if "ax" in given} == set(SINGLE_PANEL)
    assert {name for name, given in takes.items() if "figure" in given} == set(MULTI_PANEL)


@pytest.mark.parametrize("name", sorted(SINGLE_PANEL))
def test_a_one_panel_plot_draws_into_the_ax_it_is_given(name):
    from matplotlib.figure import Figure

    draw, drawn = SINGLE_PANEL[name]
    figure = Figure()
    left, right = figure.subplots(1, 2)
    assert draw(right) is figure
    assert drawn(right), f"{name} did not draw its data into the given ax"
    assert not (left.lines or left.patches or left.images or left.collections)
    # only twin axes or a colour bar beside it, never a new figure or panel of its own
    assert all(ax in (left, right) or ax.bbox.bounds == right.bbox.bounds
               or ax.get_label() == "<colorbar>" for ax in figure.axes)


@pytest.mark.parametrize("name", sorted(MULTI_PANEL))
def test_a_plot_of_several_panels_fills_the_figure_it_is_given(name):
    from matplotlib.figure import Figure

    draw, panels = MULTI_PANEL[name]
    figure = Figure(layout="constrained")
    left, right = figure.subfigures(1, 2)
    assert draw(right) is right
    assert len(right.axes) == panels and left.axes == []
    figure.savefig(io.BytesIO(), format="png")  # the layout of the two sides resolves
    with pytest.raises(UsageError, match="figure must be empty .*received: a figure with"):
        draw(right)
    assert len(draw(None).axes) == panels  # and without one, a new figure


def test_where_to_draw_is_checked():
    with pytest.raises(UsageError, match="ax must be a matplotlib Axes or None, received: str"):
        plots.mosaic(np.eye(3), ax="left")
    with pytest.raises(UsageError, match="figure must be a matplotlib Figure or SubFigure or "
                                         "None, received: int"):
        plots.training_curves(_history(), figure=1)
    with pytest.raises(UsageError, match="ax and figure are two places to draw"):
        plots.explanation(_IMAGE, _IMAGE, ax=plots.mosaic(np.eye(3)).axes[0],
                          figure=plots.mosaic(np.eye(3)))
