"""Fewer channels at a split layer: fewer bytes sent, at what cost in accuracy.

Where a network is split between a device and a server (see
:mod:`workbench.studies.split_chain`), two ways to send ``k`` channels instead of ``C``
(:data:`METHODS`):

* ``"bottleneck"``: a 1x1 convolution with ``k`` filters compresses the activations on the
  device and a second 1x1 convolution restores the channels on the server
  (:func:`bottleneck_model`; it starts from the principal components of the activations).
* ``"narrowed_conv"``: the published method: the convolution before the split keeps ``k`` of
  its filters and the next layer reads ``k`` channels
  (:func:`workbench.studies.narrow.narrowed_model`; it starts from the ``k`` filters of the
  largest norm, the next layer taking over the dropped channels' part by least squares).

:func:`bottleneck_study` fine-tunes each method at each size (as one ``finetune`` stage, see
:func:`fine_tune`), then measures accuracy against the bytes sent, next to the published
CIFAR-10 table (:func:`published_cifar10`).
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import math
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from workbench import plots
from workbench._checks import UsageError, check_choice, check_int, check_number
from workbench._io import write_outputs
from workbench._progress import progress as progress_bar
from workbench._progress import progress_argument
from workbench.data import pipeline
from workbench.data.splitdir import SplitData, load_splits
from workbench.studies.narrow import KEEPS, narrowed_layers, narrowed_model
from workbench.studies.published import read_published
from workbench.studies.split_chain import (DECODE, ENCODE, Chain, as_model, check_images,
                                           split_functional)
from workbench.studies.split_profile import activation_bytes, quantize_roundtrip
from workbench.training import callbacks
from workbench.training.recipes import Recipe, Stage
from workbench.training.solver import SolverConfig
from workbench.training.train import train_stages

INITS = ("pca", "random")
METHODS = ("bottleneck", "narrowed_conv")


def published_cifar10() -> pd.DataFrame:
    """The published CIFAR-10 bottleneck table (from ``published.json``).

    Returns:
        Columns ``filters``, ``accuracy`` (a fraction) and ``fraction_of_raw``: the values sent
        (the split layer's height x width x filters) over the raw image's values.
        ``attrs["source"]`` says where the numbers come from, ``attrs["finding"]`` what the
        study concluded (also :func:`published_cifar10_finding`).
    """
    table = read_published("split_computing_cifar10")
    frame = pd.DataFrame(table["rows"], columns=table["columns"])
    filters = frame["filters"].to_numpy()
    frame = pd.DataFrame({"filters": filters,
                          "accuracy": frame["accuracy_percent"].to_numpy() / 100.0,
                          "fraction_of_raw": filters * math.prod(table["split_size"])
                          / math.prod(table["image_shape"])})
    frame.attrs.update(source=table["source"], finding=table["finding"])
    return frame


def published_cifar10_finding() -> str:
    """The published CIFAR-10 study's finding, in one sentence (from ``published.json``)."""
    return read_published("split_computing_cifar10")["finding"]


def bottleneck_model(model, at: str, filters: int, *, init_images: np.ndarray | None = None,
                     seed: int = 0):
    """A copy of ``model`` with a 1x1-convolution bottleneck of ``filters`` channels after ``at``.

    The device side compresses (``bottleneck_encode``: 1x1 conv to ``filters`` channels, linear),
    the server side restores (``bottleneck_decode``: 1x1 conv back to the original channels,
    ReLU); every other layer keeps its trained weights (copied; ``model`` is not changed). The
    result is one flat functional model (a nested ``backbone`` is expanded).

    Args:
        model: a chain-shaped ``keras.Model`` or a ``.keras`` path.
        at: a layer with a 4-D output (H, W, C), not the last one, e.g. ``"pool2"``.
        filters: channels at the split, 1 to C.
        init_images: uint8 images whose activations at ``at`` initialise the bottleneck to
            their top principal components (encode projects, decode restores the mean and the
            projection), a good start for short fine-tuning; None: random (seeded).
        seed: seeds the random initialisation.

    Returns:
        A ``keras.Model`` whose ``bottleneck_encode`` output has ``filters`` channels.

    Raises:
        ValueError: for an unknown layer (the message lists the candidates), a layer without a
            channel axis, or ``filters`` out of range.
    """
    chain = Chain(as_model(model))
    chain.check_layer(at, "at", allow_ends=False)
    shape = chain.shapes[at]
    if len(shape) != 3:
        raise UsageError(f"at must name a layer with an (H, W, C) output for a 1x1 bottleneck, "
                         f"received: {at!r} with output shape {shape}")
    check_int("filters", filters, minimum=1)
    if filters > shape[-1]:
        raise UsageError(f"filters must be <= {shape[-1]} (the channels at {at}), "
                         f"received: {filters}")
    check_int("seed", seed, minimum=0)
    keras.utils.set_random_seed(seed)
    built = chain.build(after=at, filters=filters)
    if init_images is not None:
        images = check_images(init_images, chain.input_shape)
        activations = keras.Model(built.inputs[0], built.get_layer(at).output).predict(
            images, batch_size=256, verbose=0)
        _pca_init(built, activations.reshape(-1, shape[-1]), filters, seed)
    return built


def _pca_init(model, values: np.ndarray, filters: int, seed: int) -> None:
    """Sets encode/decode to project on / restore from the top principal components."""
    rng = np.random.default_rng(seed)
    if len(values) > 20000:  # positions x images: a sample is plenty for a C x C covariance
        values = values[rng.choice(len(values), 20000, replace=False)]
    mean = values.mean(axis=0)
    _, _, components = np.linalg.svd(values - mean, full_matrices=False)
    if len(components) < filters:
        raise UsageError(f"init_images must give at least {filters} activation vectors for a "
                         f"PCA start, received: {len(values)}")
    basis = components[:filters].T.astype(np.float32)  # (C, k)
    model.get_layer(ENCODE).set_weights([basis[None, None], -(mean @ basis).astype(np.float32)])
    model.get_layer(DECODE).set_weights([basis.T[None, None], mean.astype(np.float32)])


@dataclasses.dataclass
class BottleneckStudy:
    """The result of :func:`bottleneck_study`.

    Attributes:
        table: one row per method and filter count: ``method`` (one of :data:`METHODS`),
            ``init`` (how it started: ``"pca"`` or ``"random"`` for the bottleneck,
            ``"norm+lstsq"`` or ``"random+lstsq"`` for the narrowed convolution),
            ``filters``, ``split_shape``, ``bytes_float32`` and ``bytes_uint8`` sent per image,
            ``fraction_of_raw`` (uint8 bytes over the raw uint8 image), ``accuracy`` (float32
            sent), ``accuracy_uint8`` (quantised sent), ``drop_vs_reference`` (against
            ``accuracy_finetuned`` of the reference) and ``train_seconds``. Both methods send
            the same shape for a ``k``.
        reference: the unmodified model split at the same layer: ``filters`` (its channels),
            ``bytes_float32``, ``bytes_uint8``, ``fraction_of_raw``, ``accuracy`` and
            ``accuracy_uint8`` as trained, and ``accuracy_finetuned``: after the same
            fine-tuning as the methods get (without a change), so that extra training is not
            mistaken for an effect of sending fewer channels.
        at: the split layer; split: the evaluated split of the data; raw_bytes: one raw image.
        figure_: the Figure :meth:`plot` drew last (set by it, like scikit-learn's Displays).
        ax_: its accuracy axes.
    """

    table: pd.DataFrame
    reference: dict
    at: str
    split: str
    raw_bytes: int

    def compare_published(self) -> pd.DataFrame:
        """Ours next to the published CIFAR-10 table, one row per filter count of either.

        Returns:
            Columns ``filters``, ``published_accuracy``, ``published_fraction_of_raw``,
            ``fraction_of_raw`` (ours), then ``<method>_accuracy`` and
            ``<method>_accuracy_uint8`` for each method of :attr:`table`, e.g.
            ``narrowed_conv_accuracy`` (NaN where one side did not try that count). The data
            differ (ours: the workbench's data; theirs: CIFAR-10), so compare the shape: how
            fast accuracy falls as filters shrink. Theirs is the narrowed convolution.
        """
        published = published_cifar10().rename(columns={
            "accuracy": "published_accuracy", "fraction_of_raw": "published_fraction_of_raw"})
        ours = self.table[["filters", "fraction_of_raw"]].drop_duplicates("filters")
        for method, rows in self.table.groupby("method", sort=False):
            ours = ours.merge(rows[["filters", "accuracy", "accuracy_uint8"]].rename(columns={
                "accuracy": f"{method}_accuracy",
                "accuracy_uint8": f"{method}_accuracy_uint8"}), on="filters", how="left")
        return published.merge(ours, on="filters", how="outer").sort_values("filters") \
            .reset_index(drop=True)

    def plot(self, ax=None):
        """Accuracy against filters, one line per method (float32 and uint8 sent), bytes sent
        on a second axis, the published curve dashed.

        Keeps the Figure and axes in ``figure_`` and ``ax_``.

        Returns:
            The matplotlib Figure.
        """
        figure = self._draw(ax)
        self.figure_, self.ax_ = figure, ax if ax is not None else figure.axes[0]
        return figure

    def save(self, folder: str | Path, *, prefix: str = "") -> Path:
        """Writes the study's files into ``folder``, each atomically.

        ``bottleneck.csv`` (:attr:`table`, every method), ``bottleneck_reference.csv``
        (:attr:`reference`, one row), ``published_comparison.csv`` (:meth:`compare_published`)
        and ``bottleneck.png`` (a fresh :meth:`plot`).

        Args:
            folder: the folder (created if missing).
            prefix: put before each file name, e.g. ``"pool1_"``.

        Returns:
            ``folder`` as a Path.

        Raises:
            ValueError: ``folder`` is not a path or ``prefix`` holds a path separator.
        """
        return write_outputs(folder, tables={
            "bottleneck.csv": self.table,
            "bottleneck_reference.csv": pd.DataFrame([self.reference]),
            "published_comparison.csv": self.compare_published()},
            figures={"bottleneck.png": self._draw(None)}, prefix=prefix)

    def _draw(self, ax):
        return plots.bottleneck_accuracy(self.table, reference=self.reference,
                                         published=published_cifar10(), ax=ax,
                                         title=f"Fewer channels at {self.at}: accuracy "
                                               f"({self.split}) against filters kept")


def bottleneck_study(model, data, *, at: str, filters: Sequence[int] = (1, 2, 4, 8, 16, 32),
                     methods: Sequence[str] = METHODS, epochs: int = 2, batch_size: int = 32,
                     base_lr: float = 1e-3, rest_lr_mult: float = 0.1, init: str = "pca",
                     keep: str = "norm", image_size: int | None = None, split: str = "test",
                     seed: int = 0, progress: str = "auto") -> BottleneckStudy:
    """Sends ``k`` channels at ``at`` by each method, fine-tunes, and measures accuracy.

    For each method and each ``k`` in ``filters``: ``"bottleneck"``, :func:`bottleneck_model`
    (a 1x1 encoder and decoder, PCA start by default), or ``"narrowed_conv"``,
    :func:`workbench.studies.narrow.narrowed_model` (the convolution before ``at`` keeps the
    ``k`` filters of the largest norm by default, the next layer reads ``k`` channels, its
    weights for the dropped ones folded into the kept ones' by least squares on the
    activations of 512 training images); then
    :func:`fine_tune` on the train split: Adam with a cosine schedule (``SolverConfig``),
    Caffe-style ``lr_mult`` (the new or narrowed layers at 1: the bottleneck's two, or the
    narrowed convolution and the layer after it; every other layer at ``rest_lr_mult``, 0
    freezes them), batch norm in inference mode, seeded batches. Accuracy is measured on
    ``split`` twice, through the device/server halves: with float32 activations sent and with
    uint8-quantised ones. The unmodified model is measured the same way, as trained and after
    the same fine-tuning without a change (the fair reference: the rest of the network trains
    too, which alone can raise accuracy).

    Args:
        model: the trained chain-shaped classifier, or its ``.keras`` path.
        data: a split directory (see ``workbench split``) or a ``SplitData``.
        at: the split layer, e.g. ``"pool2"``.
        filters: sizes to try, each 1 to the channels at ``at``.
        methods: which of :data:`METHODS` to run, in this order.
        epochs: fine-tuning epochs per method and size.
        batch_size: images per step.
        base_lr: Adam's peak learning rate.
        rest_lr_mult: learning-rate multiplier of the pretrained layers.
        init: the bottleneck's start: ``"pca"`` (the principal components of the training
            activations) or ``"random"``.
        keep: the filters the narrowed convolution keeps: ``"norm"`` (the largest norm, batch
            norm folded in) or ``"random"`` (see
            :func:`workbench.studies.narrow.narrowed_model`).
        image_size: side of the images; default the model's input size (must match it).
        split: ``"test"`` or ``"val"``.
        seed: seeds initialisation, batch order and dropout.
        progress: ``"auto"`` (a bar where someone watches, plain lines headless; also while
            decoding the images), ``"lines"`` or ``"none"``.

    Returns:
        A :class:`BottleneckStudy`.

    Raises:
        ValueError: for an invalid option, an unknown layer, a layer a method cannot change,
            or a split the data lacks.
    """
    model = as_model(model)
    chain = Chain(model)
    shape, filters, methods, narrowed, solver = _check_study(
        model, chain, at, filters, methods, epochs=epochs, batch_size=batch_size,
        base_lr=base_lr, rest_lr_mult=rest_lr_mult, init=init, keep=keep,
        image_size=image_size, split=split, seed=seed)
    progress = progress_argument(progress)
    data = _study_data(data, chain, split, progress)
    train_x, train_y = data.images["train"], data.labels["train"]
    raw_bytes = math.prod(chain.input_shape)
    tune = _fine_tuner(train_x, train_y, solver, batch_size, rest_lr_mult, seed)
    measure = functools.partial(_split_accuracy, images=data.images[split],
                                labels=data.labels[split], batch_size=batch_size)
    reference = _reference(chain, at, shape, raw_bytes, tune, measure, rest_lr_mult)
    init_images = train_x[np.random.default_rng(seed).permutation(len(train_x))[:512]]
    change = functools.partial(_changed_model, model, at, init=init, init_images=init_images,
                               keep=keep, narrowed=narrowed, seed=seed)
    runs = [(method, k) for method in methods for k in filters]
    rows = [_method_row(method, k, change, tune, measure, shape, raw_bytes, reference)
            for method, k in progress_bar(runs, desc=f"fewer channels at {at}", mode=progress)]
    return BottleneckStudy(pd.DataFrame(rows), reference, at, split, raw_bytes)


def _check_study(model, chain: Chain, at: str, filters, methods, *, epochs, batch_size, base_lr,
                 rest_lr_mult, init, keep, image_size, split, seed) -> tuple:
    """The output shape at ``at``, the filter counts (sorted, each once), the methods (in
    the order given, each once), the layers the narrowed convolution changes and the
    solver, after checking the study's other options."""
    chain.check_layer(at, "at", allow_ends=False)
    shape = chain.shapes[at]
    if len(shape) != 3:
        raise UsageError(f"at must name a layer with an (H, W, C) output, received: {at!r} "
                         f"with output shape {shape}")
    if isinstance(filters, (int, str)) or not len(filters):
        raise UsageError(f"filters must be a non-empty list of integers, received: {filters!r}")
    filters = sorted({check_int("filters", k, minimum=1) for k in filters})
    if filters[-1] > shape[-1]:
        raise UsageError(f"filters must be <= {shape[-1]} (the channels at {at}), "
                         f"received: {filters[-1]}")
    if isinstance(methods, str) or not len(methods):
        raise UsageError(f"methods must be a non-empty list of {', '.join(METHODS)}, "
                         f"received: {methods!r}")
    methods = list(dict.fromkeys(check_choice("methods", method, METHODS)
                                 for method in methods))
    check_int("epochs", epochs, minimum=1)
    check_int("batch_size", batch_size, minimum=1)
    check_number("rest_lr_mult", rest_lr_mult, minimum=0.0)
    check_choice("init", init, INITS)
    check_choice("keep", keep, KEEPS)
    check_choice("split", split, ("test", "val"))
    check_int("seed", seed, minimum=0)
    narrowed = narrowed_layers(model, at) if "narrowed_conv" in methods else ()
    size = chain.input_shape[0]
    if image_size is not None and check_int("image_size", image_size, minimum=1) != size:
        raise UsageError(f"image_size must match the model's input size {size}, "
                         f"received: {image_size}")
    solver = SolverConfig(optimizer="adam", base_lr=base_lr, epochs=epochs,
                          batch_size=batch_size, lr_policy="cosine", weight_decay=0.0)
    return shape, filters, methods, narrowed, solver


def _study_data(data, chain: Chain, split: str, progress: str) -> SplitData:
    """The split data (read from a split directory at the model's input size), checked to
    hold ``split`` and images of the model's input shape."""
    if not isinstance(data, SplitData):
        if not isinstance(data, (str, os.PathLike)):
            raise UsageError(f"data must be a split directory or SplitData, received: "
                             f"{type(data).__name__}")
        data = load_splits(Path(data), image_size=chain.input_shape[0], progress=progress)
    if split not in data.images:
        raise UsageError(f"split must be a split of the data ({', '.join(data.images)}), "
                         f"received: {split!r}")
    train_x = data.images["train"]
    if tuple(train_x.shape[1:]) != chain.input_shape:
        raise UsageError(f"data images must be {chain.input_shape}, received: {train_x.shape[1:]}")
    return data


def _fine_tuner(train_x, train_y, solver: SolverConfig, batch_size: int, rest_lr_mult: float,
                seed: int):
    """:func:`fine_tune` on seeded batches of the training images, waiting for a model and
    its ``rules``."""
    train = pipeline.Batches(train_x, train_y, batch_size=min(batch_size, len(train_y)),
                             seed=seed, drop_remainder=True)
    return functools.partial(fine_tune, train=train, solver=solver, rest_lr_mult=rest_lr_mult,
                             seed=seed)


def _reference(chain: Chain, at: str, shape: tuple, raw_bytes: int, tune, measure,
               rest_lr_mult: float) -> dict:
    """The unmodified model's row: bytes sent at ``at``, accuracy as trained and after the
    same fine-tuning as the methods get (as trained when ``rest_lr_mult`` is 0)."""
    accuracy, accuracy_uint8 = measure(chain.build(), at)
    reference = {"filters": int(shape[-1]), "bytes_float32": activation_bytes(shape, "float32"),
                 "bytes_uint8": activation_bytes(shape, "uint8"),
                 "fraction_of_raw": activation_bytes(shape, "uint8") / raw_bytes,
                 "accuracy": accuracy, "accuracy_uint8": accuracy_uint8}
    if rest_lr_mult > 0:  # the same fine-tuning without a change: the fair comparison
        control = tune(chain.build(), rules={})
        reference["accuracy_finetuned"] = measure(control, at)[0]
    else:
        reference["accuracy_finetuned"] = accuracy
    return reference


def _changed_model(model, at: str, method: str, k: int, *, init: str, init_images, keep: str,
                   narrowed, seed: int) -> tuple:
    """``model`` changed by ``method`` to send ``k`` channels (not yet fine-tuned), the
    ``lr_mult`` rules of its new or narrowed layers, the layer whose output is sent, and how
    it started (the table's ``init``)."""
    if method == "bottleneck":
        changed = bottleneck_model(model, at, k, seed=seed,
                                   init_images=init_images if init == "pca" else None)
        return changed, {"bottleneck_*": 1.0}, ENCODE, init
    changed = narrowed_model(model, at, k, keep=keep, init_images=init_images, seed=seed)
    return changed, {glob.escape(name): 1.0 for name in narrowed}, at, f"{keep}+lstsq"


def _method_row(method: str, k: int, change, tune, measure, shape: tuple, raw_bytes: int,
                reference: dict) -> dict:
    """The table's row of ``method`` sending ``k`` channels: the model changed, fine-tuned
    (both timed) and measured."""
    started = time.monotonic()
    changed, rules, sent_at, start = change(method, k)
    changed = tune(changed, rules=rules)
    seconds = time.monotonic() - started
    split_shape = (*shape[:-1], k)
    accuracy, accuracy_uint8 = measure(changed, sent_at)
    return {"method": method, "init": start, "filters": k,
            "split_shape": "x".join(map(str, split_shape)),
            "bytes_float32": activation_bytes(split_shape, "float32"),
            "bytes_uint8": activation_bytes(split_shape, "uint8"),
            "fraction_of_raw": activation_bytes(split_shape, "uint8") / raw_bytes,
            "accuracy": accuracy, "accuracy_uint8": accuracy_uint8,
            "drop_vs_reference": reference["accuracy_finetuned"] - accuracy,
            "train_seconds": round(seconds, 2)}


def fine_tune(model, train: pipeline.Batches, *, rules: dict, solver: SolverConfig,
              rest_lr_mult: float = 0.1, seed: int = 0):
    """Trains ``model`` in place as one ``finetune`` stage and returns it.

    The stage is trained by ``workbench.training.train.train_stages``, ``finetune``'s own
    stage loop (its run files go to a temporary folder): layers matching ``rules`` get their
    learning-rate multiplier (Caffe's ``lr_mult``), the others ``rest_lr_mult`` (0 freezes them), and batch norm stays in
    inference mode. Keras's random seed is set from ``seed`` first, and random layers are
    reseeded each epoch, so the same call trains the same way.

    Args:
        model: a flat ``keras.Model`` classifier (e.g. from :func:`bottleneck_model`).
        train: the training batches.
        rules: ``{layer-name pattern: multiplier}``, first match wins (``fnmatch``).
        solver: the optimiser, learning rate, schedule and epochs.
        rest_lr_mult: multiplier of the layers no rule matches, >= 0.
        seed: seeds Keras's random state and the random layers.

    Returns:
        ``model``, trained and compiled (its optimizer holds the multipliers).

    Raises:
        ValueError: for an argument of the wrong type or out of range.
        FloatingPointError: the loss diverged (NaN or exploding), as ``finetune`` reports it.
    """
    if not isinstance(model, keras.Model):
        raise UsageError(f"model must be a keras.Model, received: {type(model).__name__}")
    if not isinstance(train, pipeline.Batches):
        raise UsageError(f"train must be pipeline.Batches, received: {type(train).__name__}")
    if not isinstance(rules, dict):
        raise UsageError(f"rules must be a dict of layer pattern to multiplier, received: "
                         f"{type(rules).__name__}")
    if not isinstance(solver, SolverConfig):
        raise UsageError(f"solver must be a SolverConfig, received: {type(solver).__name__}")
    check_number("rest_lr_mult", rest_lr_mult, minimum=0.0)
    check_int("seed", seed, minimum=0)
    keras.utils.set_random_seed(seed)
    recipe = Recipe("split", (Stage("split", 1.0, rules, rest_lr_mult),), train_bn=False)
    # finetune's own stage loop; the run files it writes (history, best model, checkpoints)
    # are a study's scratch, so they go to a temporary folder
    with tempfile.TemporaryDirectory(prefix="workbench-study-") as scratch:
        problem, _ = train_stages(model, callbacks.RunState(), recipe, train=train, val=None,
                                  solver=solver, run_dir=Path(scratch), seed=seed,
                                  num_classes=int(model.output_shape[-1]))
    if problem:
        raise FloatingPointError(f"fine-tuning the split model diverged: {problem}")
    return model


def _split_accuracy(flat, at: str, images, labels, batch_size: int) -> tuple[float, float]:
    """Top-1 accuracy through the device/server halves: float32 sent, and uint8-quantised."""
    device, server = split_functional(flat, at)
    activations = device.predict(images, batch_size=batch_size, verbose=0)
    results = []
    for sent in (activations, quantize_roundtrip(activations)):
        predicted = server.predict(sent, batch_size=batch_size, verbose=0).argmax(axis=-1)
        results.append(float(np.mean(predicted == np.asarray(labels))))
    return results[0], results[1]
