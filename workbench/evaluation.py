"""Evaluation report of a finished run: top-1/top-5, per-class report, confusion, worst predictions.

Compute, then plot: :func:`evaluate` runs a run directory's model over one split and returns an
:class:`EvaluationReport` that holds the numbers and draws them. The metrics themselves are pure
functions of ``(probabilities, labels, classes)`` (:meth:`EvaluationReport.from_probabilities`
and the helpers below), so they can be checked by hand and reused on any predictions.

:func:`evaluate` also saves everything under ``<run_dir>/evaluation/<split>/``, each file written
atomically:

===================  ==============================================================
``summary.json``     split, model, runtime, images, top-1, top-k and k, macro averages, the
                     temperature and the expected calibration error before and after it
                     (``ece_raw``, ``ece``; 15 bins)
``per_class.csv``    class, precision, recall, f1, support
``confusion.csv``    counts: one row per true class, one column per predicted class
``most_confused.csv``  true, predicted, count of the most frequent mistakes
``worst.csv``        the predictions with the lowest probability of the true class
``predictions.csv``  path, true, predicted, probability of the true class, top-k labels and
                     probabilities of every image
``confusion.png``    the row-normalised confusion matrix; ``worst.png`` the worst predictions
``reliability.csv``  confidence against accuracy per bin, raw and calibrated
``reliability.png``  the reliability diagram of both, with the images per bin
===================  ==============================================================

The probabilities are calibrated by the run's temperature (``calibration.json``, fitted on the
validation split when the run finished; ``workbench.calibration``) unless ``calibrated=False``;
a run without one is shown as it is (temperature 1). Scaling never changes a ranking, so the
accuracies are the same either way.

Typical use::

    report = evaluate("runs/fine_tune/two_stage-seed0", split="test")
    print(report)
    report.plot_confusion()
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn import metrics

from workbench import calibration, plots
from workbench._checks import (MissingPath, UsageError, check_bool, check_choice, check_int,
                               check_number, deprecated, renamed_arguments)
from workbench._io import atomic_path, remove_stale_temporaries, write_json, write_text
from workbench.deploy import export as exporting
from workbench.deploy.predict import RUNTIME_CHOICES
from workbench.runs import MODELS, RunDir

SPLITS = ("train", "val", "test")
BACKENDS = RUNTIME_CHOICES  # the old name of the values of evaluate's runtime, for one release
TOP_K = 5
FILES = ("summary.json", "per_class.csv", "confusion.csv", "most_confused.csv", "worst.csv",
         "predictions.csv", "confusion.png", "worst.png", "reliability.csv", "reliability.png")


# --- pure metrics ------------------------------------------------------------------------------

def _check_predictions(probabilities, labels, classes) -> tuple[np.ndarray, np.ndarray, list]:
    """Validates ``(probabilities, labels, classes)`` and returns them as arrays and a list."""
    classes = [str(c) for c in classes]
    if len(classes) < 2:
        raise UsageError(f"classes must name at least 2 classes, received: {classes!r}")
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or probabilities.shape[1] != len(classes):
        raise UsageError(f"probabilities must have shape (images, {len(classes)}) for "
                         f"{len(classes)} classes, received shape: {probabilities.shape}")
    labels = np.asarray(labels)
    if labels.shape != (len(probabilities),) or not np.issubdtype(labels.dtype, np.integer):
        raise UsageError(f"labels must be {len(probabilities)} integer class indices, one per "
                         f"row of probabilities, received: shape {labels.shape}, "
                         f"dtype {labels.dtype}")
    if len(labels) == 0:
        raise UsageError("probabilities must hold at least one image, received: 0")
    if labels.min() < 0 or labels.max() >= len(classes):
        raise UsageError(f"labels must be between 0 and {len(classes) - 1}, received: "
                         f"{int(labels.min())}..{int(labels.max())}")
    return probabilities, labels.astype(np.int64), classes


def ranked(probabilities) -> np.ndarray:
    """Class indices of each row from the most to the least probable (ties: lower index first)."""
    return np.argsort(-np.asarray(probabilities), axis=1, kind="stable")


def top_k_accuracy(probabilities, labels, *, k: int) -> float:
    """Fraction of images whose true class is among the ``k`` most probable.

    ``k`` larger than the number of classes counts every image as correct (it is clipped), so
    top-5 of a 3-class task is 1.0.
    """
    check_int("k", k, minimum=1)
    order = ranked(probabilities)[:, :k]
    return float(np.mean(np.any(order == np.asarray(labels)[:, None], axis=1)))


def confusion_matrix(labels, predicted, *, num_classes: int) -> np.ndarray:
    """Counts ``[true, predicted]`` as an int array of shape (num_classes, num_classes).

    Args:
        labels: true class index per image.
        predicted: predicted class index per image.
        num_classes: the number of classes (rows and columns, present or not).

    Returns:
        The matrix, computed by ``sklearn.metrics.confusion_matrix``.
    """
    check_int("num_classes", num_classes, minimum=1)
    labels, predicted = np.asarray(labels), np.asarray(predicted)
    for name, values in (("labels", labels), ("predicted", predicted)):
        integers = np.issubdtype(values.dtype, np.integer) or values.size == 0
        if values.ndim != 1 or not integers:
            raise UsageError(f"{name} must be a 1-D array of class indices, received: shape "
                             f"{values.shape}, dtype {values.dtype}")
        if len(values) and (values.min() < 0 or values.max() >= num_classes):
            raise UsageError(f"{name} must be between 0 and {num_classes - 1}, received: "
                             f"{int(values.min())}..{int(values.max())}")
    if len(labels) != len(predicted):
        raise UsageError(f"predicted must hold one class per label ({len(labels)}), received: "
                         f"{len(predicted)}")
    return metrics.confusion_matrix(labels, predicted,
                                    labels=np.arange(num_classes)).astype(np.int64)


def normalize_rows(confusion) -> np.ndarray:
    """Each row divided by its sum (the recall of each class on the diagonal); empty rows stay 0."""
    confusion = np.asarray(confusion, dtype=np.float64)
    totals = confusion.sum(axis=1, keepdims=True)
    return np.divide(confusion, totals, out=np.zeros_like(confusion), where=totals > 0)


def per_class_report(confusion, classes) -> pd.DataFrame:
    """Precision, recall, F1 and support per class from a confusion matrix.

    ``sklearn.metrics.precision_recall_fscore_support`` computes them, each cell of the matrix
    counting as its (true, predicted) pair weighted by the count. A class never predicted has
    precision 0; a class without images has recall 0 (``zero_division=0``).

    Args:
        confusion: counts ``[true, predicted]``, shape (classes, classes).
        classes: class names.

    Returns:
        A DataFrame with columns class, precision, recall, f1, support.
    """
    confusion = np.asarray(confusion)
    count = len(classes)
    if confusion.shape != (count, count) or count == 0:
        raise UsageError(f"confusion must have shape ({count}, {count}) for {count} classes, "
                         f"received shape: {confusion.shape}")
    true, predicted = np.indices(confusion.shape).reshape(2, -1)
    precision, recall, f1, support = metrics.precision_recall_fscore_support(
        true, predicted, labels=np.arange(count), sample_weight=confusion.reshape(-1),
        zero_division=0)
    return pd.DataFrame({"class": [str(c) for c in classes], "precision": precision,
                         "recall": recall, "f1": f1,
                         "support": np.rint(support).astype(np.int64)})


def most_confused(confusion, classes, *, count: int = 10, min_count: int = 1) -> pd.DataFrame:
    """The most frequent mistakes: off-diagonal cells of the confusion matrix, largest first.

    Args:
        confusion: counts ``[true, predicted]``.
        classes: class names.
        count: at most this many pairs.
        min_count: leave out pairs seen fewer times.

    Returns:
        A DataFrame with columns true, predicted, count (ties: by true, then predicted index).
    """
    check_int("count", count, minimum=0)
    check_int("min_count", min_count, minimum=1)
    confusion = np.asarray(confusion)
    true, predicted = np.nonzero(confusion >= min_count)
    keep = true != predicted
    true, predicted = true[keep], predicted[keep]
    counts = confusion[true, predicted]
    order = np.lexsort((predicted, true, -counts))[:count]
    return pd.DataFrame({"true": [str(classes[i]) for i in true[order]],
                         "predicted": [str(classes[i]) for i in predicted[order]],
                         "count": counts[order].astype(np.int64)})


def worst_predictions(probabilities, labels, classes, *, count: int = 16,
                      paths=None) -> pd.DataFrame:
    """The images whose true class got the lowest probability (fastai's top losses).

    Args:
        probabilities: (images, classes) predicted probabilities.
        labels: true class index per image.
        classes: class names.
        count: at most this many images.
        paths: optional path per image.

    Returns:
        A DataFrame with columns index (row in the inputs), path, true, predicted,
        probability_true, probability_predicted; lowest probability_true first (ties: by index).
    """
    probabilities, labels, classes = _check_predictions(probabilities, labels, classes)
    check_int("count", count, minimum=0)
    rows = np.arange(len(labels))
    true_probability = probabilities[rows, labels]
    predicted = ranked(probabilities)[:, 0]
    order = np.argsort(true_probability, kind="stable")[:count]
    return pd.DataFrame({
        "index": order.astype(np.int64),
        "path": [str(paths[i]) for i in order] if paths is not None else [""] * len(order),
        "true": [classes[labels[i]] for i in order],
        "predicted": [classes[predicted[i]] for i in order],
        "probability_true": true_probability[order],
        "probability_predicted": probabilities[order, predicted[order]],
    })


def predictions_table(probabilities, labels, classes, *, k: int = TOP_K,
                      paths=None) -> pd.DataFrame:
    """One row per image: path, true, predicted, correct, probability_true, and the top-k.

    The top-k columns are ``label_1, probability_1, ..., label_k, probability_k`` with
    ``k = min(k, classes)``.
    """
    probabilities, labels, classes = _check_predictions(probabilities, labels, classes)
    k = min(check_int("k", k, minimum=1), len(classes))
    order = ranked(probabilities)[:, :k]
    rows = np.arange(len(labels))
    table = pd.DataFrame({
        "path": [str(p) for p in paths] if paths is not None else [""] * len(labels),
        "true": [classes[i] for i in labels],
        "predicted": [classes[i] for i in order[:, 0]],
        "correct": order[:, 0] == labels,
        "probability_true": probabilities[rows, labels],
    })
    for rank in range(k):
        table[f"label_{rank + 1}"] = [classes[i] for i in order[:, rank]]
        table[f"probability_{rank + 1}"] = probabilities[rows, order[:, rank]]
    return table


# --- the report --------------------------------------------------------------------------------

@dataclasses.dataclass
class EvaluationReport:
    """The numbers of one evaluation, and the figures that show them.

    Build it with :func:`evaluate` (a run directory) or :meth:`from_probabilities` (any
    predictions).

    Attributes:
        classes: class names; index ``i`` is output ``i``.
        probabilities: (images, classes) predicted probabilities, calibrated by
            ``temperature`` when ``calibrated``; every table and figure shows these.
        labels: true class index per image.
        k: the k of top-k accuracy, ``min(5, classes)``.
        top1: top-1 accuracy.
        topk: top-k accuracy.
        per_class: class, precision, recall, f1, support.
        confusion: counts ``[true, predicted]``.
        most_confused: true, predicted, count of the most frequent mistakes.
        predictions: one row per image (see :func:`predictions_table`).
        split: the split evaluated, if known.
        model: which model of the run (``"best"`` or ``"final"``), if known.
        run_dir: the run directory, if any.
        runtime: what computed the probabilities, if known: ``"litert"`` or ``"onnx"`` (the
            run's export) or ``"keras"`` (``backend``, its old name, still works for one release
            with a ``DeprecationWarning``).
        temperature: the run's temperature (1: none).
        calibrated: whether :attr:`probabilities` are scaled by ``temperature``.
        raw_probabilities: the model's own softmax probabilities.
        ece_raw: expected calibration error (15 bins) of the raw probabilities.
        ece: the same after scaling by ``temperature``.
        images: uint8 images (images, H, W, 3), if known, for :meth:`plot_worst`.
        paths: image paths relative to the dataset folder, if known.
        figure_: the ``matplotlib.figure.Figure`` last drawn by :meth:`plot_confusion` or
            :meth:`plot_worst` (None before).
        ax_: its axes: the matrix's for :meth:`plot_confusion`; for :meth:`plot_worst` an
            array (rows, columns) of the tiles' axes.
    """

    classes: list
    probabilities: np.ndarray
    labels: np.ndarray
    k: int
    top1: float
    topk: float
    per_class: pd.DataFrame
    confusion: np.ndarray
    most_confused: pd.DataFrame
    predictions: pd.DataFrame
    split: str | None = None
    model: str | None = None
    run_dir: Path | None = None
    runtime: str | None = None
    temperature: float = 1.0
    calibrated: bool = True
    raw_probabilities: np.ndarray | None = dataclasses.field(default=None, repr=False)
    ece_raw: float | None = None
    ece: float | None = None
    images: np.ndarray | None = dataclasses.field(default=None, repr=False)
    paths: list | None = dataclasses.field(default=None, repr=False)
    figure_: object = dataclasses.field(default=None, init=False, repr=False, compare=False)
    ax_: object = dataclasses.field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def from_probabilities(cls, probabilities, labels, classes, *, paths=None, images=None,
                           split: str | None = None, model: str | None = None,
                           run_dir: str | Path | None = None, temperature: float = 1.0,
                           calibrated: bool = True) -> EvaluationReport:
        """Computes every metric from predicted probabilities and true labels.

        Args:
            probabilities: (images, classes) probabilities as the model gave them (its
                softmax, before any temperature).
            labels: true class index per image.
            classes: class names, one per column of ``probabilities``.
            paths: optional path per image (for ``predictions.csv`` and the worst predictions).
            images: optional uint8 images, one per row, for :meth:`plot_worst`.
            split: the split's name, for titles and the summary.
            model: which model made the predictions, for the summary.
            run_dir: the run directory, for the summary.
            temperature: the run's temperature (``RunDir.temperature``); the expected
                calibration error is reported before and after it.
            calibrated: show (and rank, and tabulate) the probabilities scaled by
                ``temperature``; False shows the raw softmax.

        Returns:
            An :class:`EvaluationReport`.

        Raises:
            ValueError: when shapes, labels or classes do not agree.
        """
        probabilities, labels, classes = _check_predictions(probabilities, labels, classes)
        check_number("temperature", temperature, minimum=0.0, exclusive_minimum=True)
        check_bool("calibrated", calibrated)
        raw = probabilities
        scaled = calibration.apply_temperature(raw, temperature)
        probabilities = scaled if calibrated else raw
        if paths is not None and len(paths) != len(labels):
            raise UsageError(f"paths must hold one path per image ({len(labels)}), "
                             f"received: {len(paths)}")
        if images is not None and len(images) != len(labels):
            raise UsageError(f"images must hold one image per row of probabilities "
                             f"({len(labels)}), received: {len(images)}")
        k = min(TOP_K, len(classes))
        predicted = ranked(probabilities)[:, 0]
        confusion = confusion_matrix(labels, predicted, num_classes=len(classes))
        return cls(
            classes=classes, probabilities=probabilities, labels=labels, k=k,
            top1=top_k_accuracy(probabilities, labels, k=1),
            topk=top_k_accuracy(probabilities, labels, k=k),
            per_class=per_class_report(confusion, classes), confusion=confusion,
            most_confused=most_confused(confusion, classes),
            predictions=predictions_table(probabilities, labels, classes, paths=paths),
            split=split, model=model, run_dir=Path(run_dir) if run_dir is not None else None,
            temperature=float(temperature), calibrated=calibrated, raw_probabilities=raw,
            ece_raw=calibration.expected_calibration_error(raw, labels),
            ece=calibration.expected_calibration_error(scaled, labels),
            images=images, paths=list(paths) if paths is not None else None)

    @property
    def backend(self) -> str | None:
        """The old name of :attr:`runtime`, for one release."""
        deprecated("EvaluationReport.backend is deprecated and will be removed in the next "
                   "release, use EvaluationReport.runtime")
        return self.runtime

    @property
    def confusion_normalized(self) -> np.ndarray:
        """The confusion matrix with each row divided by its sum."""
        return normalize_rows(self.confusion)

    def worst(self, count: int = 16) -> pd.DataFrame:
        """The ``count`` predictions with the lowest probability of the true class."""
        return worst_predictions(self.probabilities, self.labels, self.classes, count=count,
                                 paths=self.paths)

    def summary(self) -> dict:
        """The headline numbers as a JSON-ready dict (``backend`` repeats ``runtime`` for one
        release)."""
        return {
            "split": self.split, "model": self.model, "runtime": self.runtime,
            "backend": self.runtime,
            "run_dir": str(self.run_dir) if self.run_dir is not None else None,
            "images": int(len(self.labels)), "classes": len(self.classes),
            "top1": round(self.top1, 6), "top5": round(self.topk, 6), "k": self.k,
            "macro_precision": round(float(self.per_class["precision"].mean()), 6),
            "macro_recall": round(float(self.per_class["recall"].mean()), 6),
            "macro_f1": round(float(self.per_class["f1"].mean()), 6),
            "temperature": self.temperature, "calibrated": self.calibrated,
            "ece_raw": None if self.ece_raw is None else round(self.ece_raw, 6),
            "ece": None if self.ece is None else round(self.ece, 6),
            "ece_bins": calibration.BINS,
        }

    def format(self, *, max_confused: int = 5) -> str:
        """The summary, the per-class table and the most confused pairs as text."""
        summary = self.summary()
        lines = [f"split {summary['split'] or '-'}  model {summary['model'] or '-'}  "
                 f"images {summary['images']}  classes {summary['classes']}"
                 f"{'  run by ' + self.runtime if self.runtime else ''}",
                 f"top-1 {self.top1:.4f}  top-{self.k} {self.topk:.4f}  "
                 f"macro F1 {summary['macro_f1']:.4f}"]
        if self.ece is not None:
            lines.append(f"temperature {self.temperature:.3g}  ECE raw {self.ece_raw:.4f}  "
                         f"calibrated {self.ece:.4f}  (probabilities shown: "
                         f"{'calibrated' if self.calibrated else 'raw'})")
        lines.append("")
        lines.append(self.per_class.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        confused = self.most_confused.head(max_confused)
        if len(confused):
            lines += ["", "most confused (true -> predicted: count)"]
            lines += [f"  {row.true} -> {row.predicted}: {row.count}"
                      for row in confused.itertuples()]
        return "\n".join(lines) + "\n"

    def __str__(self) -> str:
        return self.format()

    def plot_confusion(self, ax=None, *, normalize: bool = True):
        """Draws the confusion matrix (see :func:`workbench.plots.confusion_figure`).

        Sets :attr:`figure_` and :attr:`ax_`.

        Args:
            ax: optional axes to draw on.
            normalize: rows as fractions of each true class (:attr:`confusion_normalized`)
                or raw counts.

        Returns:
            The ``matplotlib.figure.Figure``.
        """
        figure = self._confusion_figure(ax, normalize=normalize)
        self.figure_, self.ax_ = figure, ax if ax is not None else figure.axes[0]
        return figure

    def plot_worst(self, count: int = 16, *, columns: int = 8, figure=None):
        """A gallery of the worst predictions: each image titled true / predicted / p(true).

        Sets :attr:`figure_` and :attr:`ax_` (the tiles' axes).

        Args:
            count: at most this many images.
            columns: images per row.
            figure: an empty Figure or SubFigure to draw into; None for a new figure.

        Returns:
            The ``matplotlib.figure.Figure``.

        Raises:
            ValueError: if the report holds no images.
        """
        figure = self._worst_figure(count, columns=columns, figure=figure)
        grid = figure.axes[0].get_subplotspec().get_gridspec()
        self.figure_, self.ax_ = figure, np.array(figure.axes).reshape(grid.nrows, grid.ncols)
        return figure

    def reliability(self, *, bins: int = calibration.BINS) -> pd.DataFrame:
        """Confidence against accuracy per bin (``workbench.calibration.reliability_bins``),
        for the raw and the calibrated probabilities.

        Returns:
            One row per bin and kind: ``probabilities`` (``"raw"`` or ``"calibrated"``),
            ``lower``, ``upper``, ``count``, ``confidence``, ``accuracy``.
        """
        raw = self._raw()
        tables = {"raw": raw, "calibrated": calibration.apply_temperature(raw, self.temperature)}
        return pd.concat([calibration.reliability_bins(values, self.labels, bins=bins)
                          .assign(probabilities=name) for name, values in tables.items()],
                         ignore_index=True)[["probabilities", "lower", "upper", "count",
                                             "confidence", "accuracy"]]

    def plot_reliability(self, ax=None):
        """The reliability diagram of the raw and the calibrated probabilities (see
        :func:`workbench.plots.reliability_diagram`), their ECE in the legend.

        Sets :attr:`figure_` and :attr:`ax_`.

        Returns:
            The ``matplotlib.figure.Figure``.
        """
        figure = self._reliability_figure(ax)
        self.figure_, self.ax_ = figure, ax if ax is not None else figure.axes[0]
        return figure

    def _raw(self) -> np.ndarray:
        """The model's own probabilities (those shown, for a report built without them)."""
        return self.raw_probabilities if self.raw_probabilities is not None \
            else self.probabilities

    def _reliability_figure(self, ax):
        table = self.reliability()
        raw = self._raw()
        ece = {"raw": calibration.expected_calibration_error(raw, self.labels),
               "calibrated": calibration.expected_calibration_error(
                   calibration.apply_temperature(raw, self.temperature), self.labels)}
        names = {"raw": "raw softmax", "calibrated": f"T = {self.temperature:.3g}"}
        curves = {f"{names[kind]} (ECE {ece[kind]:.3f})": table[table["probabilities"] == kind]
                  for kind in ("raw", "calibrated")}
        title = f"Reliability ({self.split})" if self.split else "Reliability"
        return plots.reliability_diagram(curves, ax=ax, title=title)

    def _confusion_figure(self, ax, *, normalize: bool):
        title = f"Confusion matrix ({self.split})" if self.split else "Confusion matrix"
        matrix = self.confusion_normalized if normalize else self.confusion
        return plots.confusion_figure(matrix, self.classes, normalized=normalize, ax=ax,
                                      title=title)

    def _worst_figure(self, count: int, *, columns: int, figure=None):
        check_int("count", count, minimum=1)
        check_int("columns", columns, minimum=1)
        if self.images is None:
            raise UsageError("plot_worst needs the images: build the report with images=..., "
                             "or with evaluate(run_dir)")
        worst = self.worst(count)
        titles = [f"{row.true} → {row.predicted}\np={row.probability_true:.2f}"
                  for row in worst.itertuples()]
        return plots.image_grid([self.images[i] for i in worst["index"]], titles=titles,
                                columns=min(columns, len(worst)), size=1.4,
                                title=f"Worst predictions ({self.split or 'all'}): "
                                      "true → predicted, p(true)", figure=figure)

    @renamed_arguments(directory="out")
    def save(self, out: str | Path, *, worst_count: int = 16) -> Path:
        """Writes the report's CSV, JSON and PNG files (see the module doc) into the folder
        ``out`` (``directory``, its old name, still works for one release).

        Returns:
            ``out`` as a ``Path``.
        """
        directory = Path(out)
        directory.mkdir(parents=True, exist_ok=True)
        csv = {"lineterminator": "\n"}
        write_json(directory / "summary.json", self.summary())
        write_text(directory / "per_class.csv", self.per_class.to_csv(index=False, **csv))
        confusion = pd.DataFrame(self.confusion, index=pd.Index(self.classes, name="true"),
                                 columns=self.classes)
        write_text(directory / "confusion.csv", confusion.to_csv(**csv))
        write_text(directory / "most_confused.csv", self.most_confused.to_csv(index=False, **csv))
        write_text(directory / "worst.csv", self.worst(worst_count).to_csv(index=False, **csv))
        write_text(directory / "predictions.csv", self.predictions.to_csv(index=False, **csv))
        with atomic_path(directory / "confusion.png") as temporary:
            self._confusion_figure(None, normalize=True).savefig(temporary, dpi=100)
        write_text(directory / "reliability.csv", self.reliability().to_csv(index=False, **csv))
        with atomic_path(directory / "reliability.png") as temporary:
            self._reliability_figure(None).savefig(temporary, dpi=100)
        if self.images is not None:
            with atomic_path(directory / "worst.png") as temporary:
                self._worst_figure(worst_count, columns=8).savefig(temporary, dpi=100)
        return directory


# --- a run directory ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class SplitImages:
    """The images of one split of a run's dataset, decoded as in training."""

    classes: list
    images: np.ndarray    # uint8 (N, H, W, 3)
    labels: np.ndarray    # (N,) class indices
    paths: list           # relative to the dataset folder


def split_images(run_dir: str | Path, *, split: str = "test") -> SplitImages:
    """Decodes one split of the run's dataset exactly as training did (same size, same resize).

    Args:
        run_dir: a run directory written by :func:`workbench.training.train.finetune`.
        split: ``"train"``, ``"val"`` or ``"test"``.

    Returns:
        A :class:`SplitImages`.

    Raises:
        ValueError: for an unknown split or one the dataset does not have.
        FileNotFoundError: when ``run_dir`` is not a run directory.
    """
    check_choice("split", split, SPLITS)
    run = RunDir(run_dir)
    data = run.load_splits()
    if split not in data.images:
        raise UsageError(f"split must be one the dataset has ({', '.join(data.images)}), "
                         f"received: {split!r}")
    paths = run.split_folder().paths(split)
    return SplitImages(list(data.classes), data.images[split], data.labels[split], paths)


@renamed_arguments(backend="runtime")
def evaluate(run_dir: str | Path, *, split: str = "test", model: str = "best",
             batch_size: int = 64, save: bool = True, tta: bool = False,
             runtime: str = "auto", calibrated: bool = True) -> EvaluationReport:
    """Evaluates a run's model on one split of its dataset and saves the report in the run.

    The images are decoded exactly as in training (the run's image size and resize mode, the
    same cache), so the accuracy matches ``metrics.json``. When the run has an up-to-date
    export (``workbench.deploy.export``: made by ``workbench export`` or on the first
    prediction), the images run through it in batches, on the runtime chosen for this machine
    (about 5x Keras ``predict`` for MobileNetV2 on a 2-core CPU), with the same probabilities
    to 1e-3 (every float32 export is checked to that); otherwise through the Keras model.

    Args:
        run_dir: a run directory written by :func:`workbench.training.train.finetune`.
        split: ``"train"``, ``"val"`` or ``"test"``.
        model: ``"best"`` (the best checkpoint by validation accuracy) or ``"final"``.
        batch_size: images per forward pass.
        save: write the files of the module doc into ``<run_dir>/evaluation/<split>/``.
        tta: test-time augmentation: average the probabilities of each image and its mirror
            image (only for tasks whose images may be flipped: not digits or text).
        runtime: what runs the model: ``"auto"`` (the run's export when it has an up-to-date
            one, else Keras), ``"litert"`` or ``"onnx"`` (that export, or an error) or
            ``"keras"``. Called ``backend`` before: that name still works for one release,
            with a ``DeprecationWarning``.
        calibrated: show the probabilities scaled by the run's temperature (fitted on the
            validation split: ``calibration.json``; 1 for a run without one), or False for
            the raw softmax. The ECE is reported before and after either way.

    Returns:
        An :class:`EvaluationReport`; its ``runtime`` says what ran.

    Raises:
        ValueError: for an unknown split or model, or a split the dataset does not have.
        FileNotFoundError: when ``run_dir`` holds no run.
        RunUnfinished: when the run has not finished (interrupted or diverged).
    """
    check_choice("split", split, SPLITS)
    check_choice("model", model, MODELS)
    check_int("batch_size", batch_size, minimum=1)
    check_bool("tta", tta)
    check_choice("runtime", runtime, RUNTIME_CHOICES)
    check_bool("calibrated", calibrated)
    run_dir = Path(run_dir)
    run = RunDir(run_dir)
    run.check_finished()  # an interrupted run's best.keras is a checkpoint, not its result
    path = run.model_path(model)
    data = split_images(run_dir, split=split)
    predict, used = _predictor(run_dir, path, model=model, runtime=runtime,
                               batch_size=batch_size)
    probabilities = predict(data.images)
    if tta:
        probabilities = (probabilities + predict(np.asarray(data.images)[:, :, ::-1])) / 2
    report = EvaluationReport.from_probabilities(
        probabilities, data.labels, data.classes, paths=data.paths, images=data.images,
        split=split, model=model, run_dir=run_dir, temperature=run.temperature(model),
        calibrated=calibrated)
    report.runtime = used
    if save:  # the folder whole: a kill leaves the previous evaluation or this one, not a mix
        folder = run.evaluation_dir(split)
        remove_stale_temporaries(folder.parent, name=split)  # a killed evaluation's
        with atomic_path(folder) as temporary:
            report.save(temporary)
    return report


def _predictor(run_dir: Path, path: Path, *, model: str, runtime: str, batch_size: int):
    """A function from uint8 images to probabilities, and the name of what runs it: the run's
    export (LiteRT or ONNX Runtime, batch by batch) when there is one, else the Keras model."""
    if runtime != "keras":
        try:
            fast = exporting.load_fast(run_dir, model=model,
                                       runtime_name=None if runtime == "auto" else runtime)
        except exporting.ExportError as error:  # an export is there but loads nowhere
            if runtime != "auto":
                raise
            warnings.warn(f"evaluate: {error}; using the Keras model", RuntimeWarning,
                          stacklevel=3)
            fast = None
        if fast is not None:
            def run(images):
                return np.concatenate([
                    np.asarray(fast(np.asarray(images[i:i + batch_size], np.float32)))
                    for i in range(0, len(images), batch_size)])
            return run, fast.runtime
        if runtime != "auto":
            raise MissingPath(f"runtime={runtime!r} needs an up-to-date {runtime} export "
                              f"of {run_dir} ('workbench export {run_dir} --format "
                              f"{runtime}'), received: none")
    from workbench.models import load_model

    network = load_model(path)
    return (lambda images: network.predict(np.asarray(images), batch_size=batch_size,
                                           verbose=0)), "keras"
