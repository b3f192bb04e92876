"""Evaluation report: metrics checked by hand, files of a real (tiny) run, figures, the CLI."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_fscore_support

import tiny_data
from workbench import cli
from workbench.evaluation import (FILES, EvaluationReport, confusion_matrix, evaluate,
                                most_confused, per_class_report, split_images, top_k_accuracy,
                                worst_predictions)
from workbench.models import StartingPoint
from workbench.training.solver import SolverConfig
from workbench.training.train import finetune

CLASSES = ["a", "b", "c"]
#                 a     b     c          true  predicted  p(true)
PROBABILITIES = [[0.70, 0.20, 0.10],   # a     a          0.70
                 [0.10, 0.60, 0.30],   # a     b          0.10
                 [0.20, 0.50, 0.30],   # b     b          0.50
                 [0.50, 0.30, 0.20],   # b     a          0.30
                 [0.10, 0.20, 0.70],   # c     c          0.70
                 [0.25, 0.60, 0.15],   # c     b          0.15
                 [0.10, 0.80, 0.10]]   # c     b          0.10
LABELS = [0, 0, 1, 1, 2, 2, 2]


@pytest.fixture
def report():
    images = np.arange(7, dtype=np.uint8)[:, None, None, None] * np.ones((7, 4, 4, 3), np.uint8)
    return EvaluationReport.from_probabilities(PROBABILITIES, LABELS, CLASSES, images=images,
                                               paths=[f"img{i}.png" for i in range(7)],
                                               split="test")


def test_metrics_match_the_hand_computed_case(report):
    assert report.top1 == pytest.approx(3 / 7)
    assert report.k == 3 and report.topk == 1.0  # top-5 of 3 classes: k = 3, always right
    # top-2: rows 1, 5 and 6 miss (row 6's tie a/c at 0.1 ranks a, the lower index, first)
    assert top_k_accuracy(PROBABILITIES, LABELS, k=2) == pytest.approx(4 / 7)
    np.testing.assert_array_equal(report.confusion, [[1, 1, 0], [1, 1, 0], [0, 2, 1]])
    np.testing.assert_allclose(report.confusion_normalized,
                               [[.5, .5, 0], [.5, .5, 0], [0, 2 / 3, 1 / 3]])
    table = report.per_class.set_index("class")
    np.testing.assert_allclose(table["precision"], [1 / 2, 1 / 4, 1])
    np.testing.assert_allclose(table["recall"], [1 / 2, 1 / 2, 1 / 3])
    np.testing.assert_allclose(table["f1"], [1 / 2, 1 / 3, 1 / 2])
    assert list(table["support"]) == [2, 2, 3]
    assert report.most_confused.values.tolist() == [["c", "b", 2], ["a", "b", 1], ["b", "a", 1]]
    worst = report.worst(4)
    assert list(worst["index"]) == [1, 6, 5, 3]  # p(true) 0.10, 0.10 (tie: by index), 0.15, 0.30
    assert list(worst["true"]) == ["a", "c", "c", "b"]
    assert list(worst["predicted"]) == ["b", "b", "b", "a"]
    np.testing.assert_allclose(worst["probability_true"], [0.1, 0.1, 0.15, 0.3])
    assert list(worst["path"]) == ["img1.png", "img6.png", "img5.png", "img3.png"]
    summary = report.summary()
    assert summary["images"] == 7 and summary["top1"] == pytest.approx(3 / 7, abs=1e-6)


def test_predictions_table_holds_the_ranked_top_k(report):
    table = report.predictions
    assert list(table.columns) == ["path", "true", "predicted", "correct", "probability_true",
                                   "label_1", "probability_1", "label_2", "probability_2",
                                   "label_3", "probability_3"]
    assert table.loc[5, ["label_1", "label_2", "label_3"]].tolist() == ["b", "a", "c"]
    np.testing.assert_allclose(table.loc[5, ["probability_1", "probability_2",
                                             "probability_3"]].astype(float), [.6, .25, .15])
    assert table["correct"].tolist() == [True, False, True, False, True, False, False]


def test_pure_functions_agree_with_scikit_learn():
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(6), size=200)
    labels = rng.integers(0, 6, size=200)
    predicted = probabilities.argmax(axis=1)
    confusion = confusion_matrix(labels, predicted, num_classes=6)
    ours = per_class_report(confusion, list("uvwxyz"))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=range(6), zero_division=0)
    np.testing.assert_allclose(ours["precision"], precision)
    np.testing.assert_allclose(ours["recall"], recall)
    np.testing.assert_allclose(ours["f1"], f1)
    np.testing.assert_array_equal(ours["support"], support)
    assert most_confused(confusion, list("uvwxyz"), count=3)["count"].is_monotonic_decreasing


def test_bad_predictions_are_rejected_naming_the_argument():
    with pytest.raises(ValueError, match=r"probabilities must have shape \(images, 3\)"):
        EvaluationReport.from_probabilities([[0.5, 0.5]], [0], CLASSES)
    with pytest.raises(ValueError, match="labels must be between 0 and 2, received: 0..3"):
        EvaluationReport.from_probabilities(PROBABILITIES[:2], [0, 3], CLASSES)
    with pytest.raises(ValueError, match="count must be >= 0, received: -1"):
        worst_predictions(PROBABILITIES, LABELS, CLASSES, count=-1)


def test_confusion_figure_labels_every_class_and_annotates_cells(report):
    figure = report.plot_confusion()
    ax = figure.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == CLASSES
    assert [t.get_text() for t in ax.get_yticklabels()] == CLASSES
    texts = [t.get_text() for t in ax.texts]
    assert "0.67" in texts and "0.33" in texts  # the normalised row of c
    counts = report.plot_confusion(normalize=False).axes[0]
    assert "2" in [t.get_text() for t in counts.texts]


def test_confusion_figure_stays_readable_with_many_classes():
    rng = np.random.default_rng(1)
    classes = [f"class{i:02d}" for i in range(50)]
    probabilities = rng.dirichlet(np.ones(50), size=300)
    report = EvaluationReport.from_probabilities(probabilities, rng.integers(0, 50, 300), classes)
    ax = report.plot_confusion().axes[0]
    assert not ax.texts  # no numbers in 2500 cells
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == classes[::2]  # thinned to at most 30 labels


def test_report_keeps_the_figure_and_axes_it_drew(report):
    assert report.figure_ is None and report.ax_ is None
    figure = report.plot_confusion()
    assert report.figure_ is figure and report.ax_ is figure.axes[0]
    np.testing.assert_allclose(report.ax_.images[0].get_array(), report.confusion_normalized)
    mine = Figure()
    ax = mine.add_subplot()
    assert report.plot_confusion(ax, normalize=False) is mine
    assert report.figure_ is mine and report.ax_ is ax
    np.testing.assert_array_equal(ax.images[0].get_array(), report.confusion)
    figure = report.plot_worst(count=3, columns=2)
    assert report.figure_ is figure and report.ax_.shape == (2, 2)
    assert [int(ax.images[0].get_array()[0, 0, 0]) for ax in report.ax_.flat[:3]] == [1, 6, 5]
    assert not report.ax_[1, 1].images  # an empty tile


def test_worst_gallery_shows_the_worst_images(report):
    figure = report.plot_worst(count=4)
    drawn = [ax for ax in figure.axes if ax.images]
    assert len(drawn) == 4
    assert [int(ax.images[0].get_array()[0, 0, 0]) for ax in drawn] == [1, 6, 5, 3]
    assert drawn[0].get_title() == "a → b\np=0.10"
    with pytest.raises(ValueError, match="plot_worst needs the images"):
        EvaluationReport.from_probabilities(PROBABILITIES, LABELS, CLASSES).plot_worst()


# --- a real run ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    splits = tiny_data.write_splits(root, per_class=10, counts=(5, 2, "rest"))
    run = finetune(splits, root / "run", start=StartingPoint("lenet", weights=None),
                   recipe="scratch", solver=SolverConfig(epochs=2, batch_size=16, base_lr=0.01),
                   image_size=16, progress="none")
    return run.path


def test_evaluate_a_run_writes_every_file_and_matches_training(run_dir):
    report = evaluate(run_dir, split="test")
    folder = run_dir / "evaluation" / "test"
    for name in FILES:
        assert (folder / name).is_file(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # the same pixels and the same model as training's own test evaluation
    assert report.top1 == pytest.approx(metrics["test_accuracy"], abs=1e-6)
    assert report.topk == pytest.approx(metrics["test_top5"], abs=1e-6)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["images"] == 30 and summary["k"] == 5 and summary["split"] == "test"
    predictions = pd.read_csv(folder / "predictions.csv", dtype={"true": str, "label_1": str})
    assert len(predictions) == 30 and predictions["path"].str.endswith(".png").all()
    assert {"label_5", "probability_5"} <= set(predictions.columns)
    confusion = pd.read_csv(folder / "confusion.csv", index_col=0)
    assert confusion.shape == (10, 10) and confusion.to_numpy().sum() == 30
    per_class = pd.read_csv(folder / "per_class.csv")
    assert list(per_class.columns) == ["class", "precision", "recall", "f1", "support"]
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []


def test_test_time_augmentation_averages_each_image_and_its_mirror_image(run_dir):
    from workbench.evaluation import split_images
    from workbench.models import load_model

    plain = evaluate(run_dir, split="test", save=False, runtime="keras")
    both = evaluate(run_dir, split="test", save=False, tta=True, runtime="keras")
    images = split_images(run_dir, split="test").images
    network = load_model(run_dir / "best.keras")
    mirrored = network.predict(np.asarray(images)[:, :, ::-1], verbose=0)
    # the model's own probabilities are averaged (the temperature applies to the average)
    np.testing.assert_allclose(both.raw_probabilities, (plain.raw_probabilities + mirrored) / 2,
                               rtol=1e-5, atol=1e-6)
    assert not np.allclose(both.probabilities, plain.probabilities)
    with pytest.raises(ValueError, match="tta must be True or False, received: 'yes'"):
        evaluate(run_dir, tta="yes")


def test_evaluation_through_the_export_equals_the_keras_path(run_dir, tmp_path):
    import shutil

    from workbench.deploy.export import export_fast

    copy = tmp_path / "run"  # its own copy: the other tests here evaluate with Keras
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("export", "evaluation"))
    with pytest.raises(FileNotFoundError, match="runtime='onnx' needs an up-to-date onnx "
                                                "export"):
        evaluate(copy, runtime="onnx", save=False)
    assert evaluate(copy, save=False).runtime == "keras"  # no export yet
    chosen = export_fast(copy, max_images=4).info["runtime"]["chosen"]
    slow = evaluate(copy, split="test", runtime="keras", save=False)
    fast = evaluate(copy, split="test")
    assert fast.runtime == chosen and slow.runtime == "keras"
    for runtime in ("litert", "onnx", "auto"):
        report = fast if runtime == "auto" else evaluate(copy, runtime=runtime, save=False,
                                                         batch_size=7)
        np.testing.assert_allclose(report.probabilities, slow.probabilities, atol=1e-3)
        assert report.top1 == pytest.approx(slow.top1, abs=1e-3)
        assert report.topk == pytest.approx(slow.topk, abs=1e-3)
        np.testing.assert_array_equal(report.confusion, slow.confusion)
    summary = json.loads((copy / "evaluation" / "test" / "summary.json").read_text())
    assert summary["runtime"] == chosen and "run by " + chosen in fast.format()
    mirrored = evaluate(copy, save=False, tta=True)
    np.testing.assert_allclose(mirrored.probabilities,
                               evaluate(copy, save=False, tta=True, runtime="keras").probabilities,
                               atol=1e-3)


def test_backend_the_old_name_of_runtime_still_works_for_one_release(run_dir):
    with pytest.warns(DeprecationWarning, match="evaluate: backend= .* use runtime="):
        old = evaluate(run_dir, split="val", save=False, backend="keras")
    new = evaluate(run_dir, split="val", save=False, runtime="keras")
    assert old.runtime == new.runtime == "keras"
    np.testing.assert_array_equal(old.probabilities, new.probabilities)


def test_evaluate_rejects_bad_arguments(run_dir, tmp_path):
    with pytest.raises(ValueError, match="split must be one of 'train', 'val', 'test', "
                                         "received: 'tset'"):
        evaluate(run_dir, split="tset")
    with pytest.raises(ValueError, match="model must be one of 'best', 'final'"):
        evaluate(run_dir, model="last")
    with pytest.raises(ValueError, match="runtime must be one of .*received: 'tflite'"):
        evaluate(run_dir, runtime="tflite")
    with pytest.raises(FileNotFoundError, match="run_dir must be a run directory"):
        evaluate(tmp_path, split="val")


def test_cli_prints_the_summary_and_the_per_class_table(run_dir, capsys):
    assert cli.main(["evaluate", str(run_dir), "--split", "val", "--model", "final"]) == 0
    out = capsys.readouterr().out
    assert "split val  model final  images 20  classes 10" in out
    assert "top-1 " in out and "top-5 " in out
    assert "precision" in out and "recall" in out and "support" in out
    assert (run_dir / "evaluation" / "val" / "summary.json").is_file()


def test_cli_tta_writes_the_averaged_predictions(run_dir, capsys):
    assert cli.main(["evaluate", str(run_dir), "--split", "val", "--tta"]) == 0
    written = pd.read_csv(run_dir / "evaluation" / "val" / "predictions.csv")
    expected = evaluate(run_dir, split="val", save=False, tta=True).predictions
    np.testing.assert_allclose(written["probability_1"], expected["probability_1"], rtol=1e-5)


def test_cli_rejects_a_bad_split_in_one_line(run_dir, capsys):
    assert cli.main(["evaluate", str(run_dir), "--split", "tset"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --split must be one of") and "'tset'" in err
    assert len(err.strip().splitlines()) == 1


# --- calibration ---------------------------------------------------------------------------------

def test_a_temperature_changes_the_probabilities_shown_but_no_answer():
    from workbench import calibration

    raw = EvaluationReport.from_probabilities(PROBABILITIES, LABELS, CLASSES)
    scaled = EvaluationReport.from_probabilities(PROBABILITIES, LABELS, CLASSES, temperature=2.5)
    np.testing.assert_allclose(scaled.probabilities,
                               calibration.apply_temperature(PROBABILITIES, 2.5))
    np.testing.assert_allclose(scaled.raw_probabilities, PROBABILITIES)
    assert not np.allclose(scaled.probabilities, raw.probabilities)
    assert scaled.top1 == raw.top1 and scaled.topk == raw.topk
    np.testing.assert_array_equal(scaled.confusion, raw.confusion)
    assert list(scaled.predictions["predicted"]) == list(raw.predictions["predicted"])
    summary = scaled.summary()
    assert summary["temperature"] == 2.5 and summary["calibrated"] is True
    assert summary["ece_raw"] == pytest.approx(
        calibration.expected_calibration_error(PROBABILITIES, LABELS), abs=1e-6)
    assert summary["ece"] == pytest.approx(calibration.expected_calibration_error(
        scaled.probabilities, LABELS), abs=1e-6)
    assert summary["ece"] != summary["ece_raw"] and summary["ece_bins"] == 15
    assert "temperature 2.5" in scaled.format()
    shown_raw = EvaluationReport.from_probabilities(PROBABILITIES, LABELS, CLASSES,
                                                    temperature=2.5, calibrated=False)
    np.testing.assert_allclose(shown_raw.probabilities, PROBABILITIES)
    assert shown_raw.ece == pytest.approx(scaled.ece)  # the ECE after scaling, still reported
    with pytest.raises(ValueError, match="temperature must be > 0.0, received: 0"):
        EvaluationReport.from_probabilities(PROBABILITIES, LABELS, CLASSES, temperature=0)


def test_reliability_diagram_draws_raw_and_calibrated_with_counts():
    report = EvaluationReport.from_probabilities(PROBABILITIES, LABELS, CLASSES, temperature=2.5,
                                                 split="test")
    table = report.reliability()
    assert len(table) == 30 and set(table["probabilities"]) == {"raw", "calibrated"}
    assert table.groupby("probabilities")["count"].sum().tolist() == [7, 7]
    figure = report.plot_reliability()
    assert report.figure_ is figure
    ax = report.ax_
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[0].startswith("raw softmax (ECE ") and legend[1].startswith("T = 2.5 (ECE ")
    raw_line = ax.lines[0]  # the raw curve: one point per non-empty bin
    raw = table[(table["probabilities"] == "raw") & (table["count"] > 0)]
    np.testing.assert_allclose(raw_line.get_xdata(), raw["confidence"])
    np.testing.assert_allclose(raw_line.get_ydata(), raw["accuracy"])
    bars = [patch.get_height() for other in figure.axes if other is not ax
            for patch in other.patches]
    assert sum(bars) == 14  # the images per bin of both


def test_evaluate_applies_the_runs_temperature_and_calibrated_false_the_raw_softmax(run_dir,
                                                                                  tmp_path):
    import shutil

    from workbench import calibration
    from workbench.models import load_model
    from workbench.runs import RunDir

    temperature = RunDir(run_dir).temperature("best")
    assert temperature != 1.0  # fitted when training finished
    report = evaluate(run_dir, split="val", runtime="keras")
    raw = evaluate(run_dir, split="val", runtime="keras", save=False, calibrated=False)
    images = split_images(run_dir, split="val").images
    softmax = load_model(run_dir / "best.keras").predict(np.asarray(images), verbose=0)
    np.testing.assert_allclose(raw.probabilities, softmax, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(report.probabilities,
                               calibration.apply_temperature(softmax, temperature), atol=1e-5)
    assert report.top1 == raw.top1
    summary = json.loads((run_dir / "evaluation" / "val" / "summary.json").read_text())
    assert summary["temperature"] == temperature and summary["calibrated"] is True
    # on the split it was fitted on, the temperature lowers the likelihood's loss
    assert calibration.negative_log_likelihood(report.probabilities, report.labels) <= \
        calibration.negative_log_likelihood(raw.probabilities, raw.labels)
    old = tmp_path / "old"  # a run trained before runs were calibrated
    shutil.copytree(run_dir, old, ignore=shutil.ignore_patterns("calibration.json", "export"))
    np.testing.assert_allclose(evaluate(old, split="val", save=False, runtime="keras")
                               .probabilities, raw.probabilities)


def test_the_evaluation_folder_is_replaced_whole_or_not_at_all(run_dir, tmp_path, monkeypatch):
    import shutil
    import subprocess
    import sys

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("export", "evaluation"))
    evaluate(copy, split="val")
    folder = copy / "evaluation" / "val"
    before = {path.name: path.read_bytes() for path in folder.iterdir()}

    def killed_half_way(self, directory, **options):
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "summary.json").write_text("half")
        raise RuntimeError("killed half way")

    with monkeypatch.context() as patch:
        patch.setattr(EvaluationReport, "save", killed_half_way)
        with pytest.raises(RuntimeError, match="killed half way"):
            evaluate(copy, split="val")
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before

    dead_pid = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                                  capture_output=True, text=True, check=True).stdout)
    left = copy / "evaluation" / f".val.{dead_pid}.0a1b2c3d"  # a killed evaluation's folder
    left.mkdir()
    (folder / "extra.txt").write_text("from an older version")
    evaluate(copy, split="val")
    assert sorted(path.name for path in (copy / "evaluation").iterdir()) == ["val"]
    assert sorted(path.name for path in folder.iterdir()) == sorted(before)  # nothing merged


def test_cli_evaluate_raw_tabulates_the_softmax_and_says_so(run_dir, capsys):
    assert cli.main(["evaluate", str(run_dir), "--split", "val", "--raw"]) == 0
    out = capsys.readouterr().out
    assert "ECE raw" in out and "(probabilities shown: raw)" in out
    summary = json.loads((run_dir / "evaluation" / "val" / "summary.json").read_text())
    assert summary["calibrated"] is False
