"""The data and training figures: checked for what they draw (Agg)."""

import numpy as np
import pandas as pd
from PIL import Image

from workbench import plots


def test_class_counts_stacks_splits():
    table = pd.DataFrame({"label": ["a"] * 5 + ["b"] * 3,
                          "split": ["train", "train", "val", "test", "test", "train", "val", "test"]})
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
    figure = plots.samples_per_class(pd.DataFrame(rows), tmp_path, per_class=4, image_size=6)
    axes = np.array(figure.axes).reshape(2, 4)
    assert [ax.get_title() for ax in axes[:, 0]] == ["cat", "dog"]
    assert axes[0, 0].images[0].get_array().shape == (6, 6, 3)  # resized as the model sees it
    assert sum(len(ax.images) for ax in figure.axes) == 8  # 3 images + 1 blank per class


def write_history(run_dir, val):
    run_dir.mkdir()
    pd.DataFrame({"epoch": [1, 2, 3], "loss": [2.0, 1.0, 0.5], "accuracy": [0.2, 0.5, 0.7],
                  "val_loss": [2.1, 1.2, 0.9], "val_accuracy": val,
                  "lr": [0.1, 0.05, 0.0]}).to_csv(run_dir / "history.csv", index=False)
    return run_dir


def test_training_curves_overlay_runs_and_mark_the_best_epoch(tmp_path):
    runs = [write_history(tmp_path / "a", [0.3, 0.6, 0.5]),
            write_history(tmp_path / "b", [0.1, 0.2, 0.4])]
    loss_ax, acc_ax, lr_ax = plots.training_curves(runs, names=["A", "B"]).axes
    assert len(loss_ax.lines) == 4 and len(lr_ax.lines) == 2
    stars = [line for line in acc_ax.lines if line.get_marker() == "*"]
    assert [(line.get_xdata()[0], line.get_ydata()[0]) for line in stars] == [(2, 0.6), (3, 0.4)]
    assert lr_ax.get_yscale() == "log" and np.isnan(lr_ax.lines[0].get_ydata()[-1])


def test_compare_accuracy_bars_are_means_with_chance_line():
    results = pd.DataFrame({"recipe": ["scratch", "scratch", "caffe", "caffe"],
                            "test_accuracy": [0.1, 0.2, 0.6, 0.8]})
    ax = plots.compare_accuracy(results, chance=0.1).axes[0]
    assert np.allclose([bar.get_height() for bar in ax.patches], [0.15, 0.7])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["scratch", "caffe"]
    assert any(line.get_linestyle() == "--" and line.get_ydata()[0] == 0.1 for line in ax.lines)


def test_training_curves_join_sparse_validation_points(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    pd.DataFrame({"epoch": [1, 2, 3, 4], "loss": [2.0, 1.5, 1.0, 0.8],
                  "accuracy": [0.2, 0.4, 0.6, 0.7], "val_loss": [None, 1.6, None, 1.1],
                  "val_accuracy": [None, 0.3, None, 0.5], "lr": [0.1] * 4}).to_csv(
        run / "history.csv", index=False)
    loss_ax = plots.training_curves([run]).axes[0]
    val = next(line for line in loss_ax.lines if line.get_label().endswith("val"))
    assert list(val.get_xdata()) == [2, 4] and list(val.get_ydata()) == [1.6, 1.1]
