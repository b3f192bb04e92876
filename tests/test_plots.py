"""The data and training figures: checked for what they draw (Agg)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from workbench import plots
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
