"""A 1x1-convolution bottleneck at a split layer: fewer bytes sent, at what cost in accuracy.

Where a network is split between a device and a server (see
:mod:`workbench.studies.split_chain`), a bottleneck with ``k`` filters compresses the
activations on the device and a second 1x1 convolution restores the channels on the server.

* :func:`bottleneck_model`: a copy of a trained model with a bottleneck at a layer.
* :func:`bottleneck_study`: each size fine-tuned (as one ``finetune`` stage), then accuracy
  against the bytes it sends, next to the published CIFAR-10 table
  (:func:`published_cifar10`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from workbench import plots
from workbench._checks import check_choice, check_int, check_number
from workbench._io import write_outputs
from workbench._progress import progress as progress_bar
from workbench.data import pipeline
from workbench.data.splitdir import SplitData, load_splits
from workbench.studies.published import read_published
from workbench.studies.split_chain import (DECODE, ENCODE, Chain, as_model, check_images,
                                           split_functional)
from workbench.studies.split_profile import activation_bytes, quantize_roundtrip
from workbench.training import callbacks
from workbench.training.recipes import Stage
from workbench.training.solver import SolverConfig
from workbench.training.train import compile_stage

INITS = ("pca", "random")


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
        raise ValueError(f"at must name a layer with an (H, W, C) output for a 1x1 bottleneck, "
                         f"received: {at!r} with output shape {shape}")
    check_int("filters", filters, minimum=1)
    if filters > shape[-1]:
        raise ValueError(f"filters must be <= {shape[-1]} (the channels at {at}), "
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
        raise ValueError(f"init_images must give at least {filters} activation vectors for a "
                         f"PCA start, received: {len(values)}")
    basis = components[:filters].T.astype(np.float32)  # (C, k)
    model.get_layer(ENCODE).set_weights([basis[None, None], -(mean @ basis).astype(np.float32)])
    model.get_layer(DECODE).set_weights([basis.T[None, None], mean.astype(np.float32)])


@dataclasses.dataclass
class BottleneckStudy:
    """The result of :func:`bottleneck_study`.

    Attributes:
        table: one row per filter count: ``filters``, ``split_shape``, ``bytes_float32`` and
            ``bytes_uint8`` sent per image, ``fraction_of_raw`` (uint8 bytes over the raw uint8
            image), ``accuracy`` (float32 sent), ``accuracy_uint8`` (quantised sent),
            ``drop_vs_reference`` (against ``accuracy_finetuned`` of the reference) and
            ``train_seconds``.
        reference: the unmodified model split at the same layer: ``filters`` (its channels),
            ``bytes_float32``, ``bytes_uint8``, ``fraction_of_raw``, ``accuracy`` and
            ``accuracy_uint8`` as trained, and ``accuracy_finetuned``: after the same
            fine-tuning as the bottlenecks get (without one), so that extra training is not
            mistaken for an effect of the bottleneck.
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
            ``accuracy``, ``accuracy_uint8``, ``fraction_of_raw`` (NaN where one side did not
            try that count). The data differ (ours: the workbench's data; theirs: CIFAR-10), so
            compare the shape: how fast accuracy falls as filters shrink.
        """
        published = published_cifar10().rename(columns={
            "accuracy": "published_accuracy", "fraction_of_raw": "published_fraction_of_raw"})
        ours = self.table[["filters", "accuracy", "accuracy_uint8", "fraction_of_raw"]]
        return published.merge(ours, on="filters", how="outer").sort_values("filters") \
            .reset_index(drop=True)

    def plot(self, ax=None):
        """Accuracy against filters, bytes sent on a second axis, the published curve dashed.

        Keeps the Figure and axes in ``figure_`` and ``ax_``.

        Returns:
            The matplotlib Figure.
        """
        figure = self._draw(ax)
        self.figure_, self.ax_ = figure, ax if ax is not None else figure.axes[0]
        return figure

    def save(self, folder: str | Path, *, prefix: str = "") -> Path:
        """Writes the study's files into ``folder``, each atomically.

        ``bottleneck.csv`` (:attr:`table`), ``bottleneck_reference.csv`` (:attr:`reference`,
        one row), ``published_comparison.csv`` (:meth:`compare_published`) and
        ``bottleneck.png`` (a fresh :meth:`plot`).

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
                                         title=f"Bottleneck at {self.at}: accuracy ({self.split})"
                                               " against filters kept")


def bottleneck_study(model, data, *, at: str, filters: Sequence[int] = (1, 2, 4, 8, 16, 32),
                     epochs: int = 2, batch_size: int = 32, base_lr: float = 1e-3,
                     rest_lr_mult: float = 0.1, init: str = "pca", image_size: int | None = None,
                     split: str = "test", seed: int = 0, progress: bool = True
                     ) -> BottleneckStudy:
    """Inserts a bottleneck of each size at ``at``, fine-tunes it, and measures accuracy.

    For each ``k`` in ``filters``: :func:`bottleneck_model` (PCA start by default), then
    training on the train split with the workbench's solver pieces: Adam with a cosine schedule
    (``SolverConfig``), Caffe-style ``lr_mult`` (the bottleneck at 1, every other layer at
    ``rest_lr_mult``; 0 freezes them), batch norm in inference mode, seeded batches. Accuracy
    is measured on ``split`` twice, through the device/server halves: with float32 activations
    sent and with uint8-quantised ones. The unmodified model is measured the same way, as
    trained and after the same fine-tuning without a bottleneck (the fair reference: the rest of
    the network trains too, which alone can raise accuracy).

    Args:
        model: the trained chain-shaped classifier, or its ``.keras`` path.
        data: a split directory (see ``workbench split``) or a ``SplitData``.
        at: the split layer, e.g. ``"pool2"``.
        filters: bottleneck sizes to try, each 1 to the channels at ``at``.
        epochs: fine-tuning epochs per size.
        batch_size: images per step.
        base_lr: Adam's peak learning rate.
        rest_lr_mult: learning-rate multiplier of the pretrained layers.
        init: ``"pca"`` (start from the principal components of the training activations) or
            ``"random"``.
        image_size: side of the images; default the model's input size (must match it).
        split: ``"test"`` or ``"val"``.
        seed: seeds initialisation, batch order and dropout.
        progress: show a progress bar (also while decoding the images).

    Returns:
        A :class:`BottleneckStudy`.

    Raises:
        ValueError: for an invalid option, an unknown layer, or a split the data lacks.
    """

    model = as_model(model)
    chain = Chain(model)
    chain.check_layer(at, "at", allow_ends=False)
    if isinstance(filters, (int, str)) or not len(filters):
        raise ValueError(f"filters must be a non-empty list of integers, received: {filters!r}")
    filters = sorted({check_int("filters", k, minimum=1) for k in filters})
    check_int("epochs", epochs, minimum=1)
    check_int("batch_size", batch_size, minimum=1)
    check_number("rest_lr_mult", rest_lr_mult, minimum=0.0)
    check_choice("init", init, INITS)
    check_choice("split", split, ("test", "val"))
    check_int("seed", seed, minimum=0)
    size = chain.input_shape[0]
    if image_size is not None and check_int("image_size", image_size, minimum=1) != size:
        raise ValueError(f"image_size must match the model's input size {size}, "
                         f"received: {image_size}")
    solver = SolverConfig(optimizer="adam", base_lr=base_lr, epochs=epochs,
                          batch_size=batch_size, lr_policy="cosine", weight_decay=0.0)
    if not isinstance(data, SplitData):
        if not isinstance(data, (str, os.PathLike)):
            raise ValueError(f"data must be a split directory or SplitData, received: "
                             f"{type(data).__name__}")
        data = load_splits(Path(data), image_size=size, progress=progress)
    if split not in data.images:
        raise ValueError(f"split must be a split of the data ({', '.join(data.images)}), "
                         f"received: {split!r}")
    train_x, train_y = data.images["train"], data.labels["train"]
    test_x, test_y = data.images[split], data.labels[split]
    if tuple(train_x.shape[1:]) != chain.input_shape:
        raise ValueError(f"data images must be {chain.input_shape}, received: {train_x.shape[1:]}")

    shape = chain.shapes[at]
    raw_bytes = math.prod(chain.input_shape)
    train = pipeline.Batches(train_x, train_y, batch_size=min(batch_size, len(train_y)),
                             seed=seed, drop_remainder=True)
    fine_tune = functools.partial(_fine_tune, train=train, solver=solver,
                                  rest_lr_mult=rest_lr_mult, seed=seed)
    accuracy, accuracy_uint8 = _split_accuracy(chain.build(), at, test_x, test_y, batch_size)
    reference = {"filters": int(shape[-1]), "bytes_float32": activation_bytes(shape, "float32"),
                 "bytes_uint8": activation_bytes(shape, "uint8"),
                 "fraction_of_raw": activation_bytes(shape, "uint8") / raw_bytes,
                 "accuracy": accuracy, "accuracy_uint8": accuracy_uint8}
    if rest_lr_mult > 0:  # the same fine-tuning without a bottleneck: the fair comparison
        keras.utils.set_random_seed(seed)
        control = fine_tune(chain.build(), rules={})
        reference["accuracy_finetuned"] = _split_accuracy(control, at, test_x, test_y,
                                                          batch_size)[0]
    else:
        reference["accuracy_finetuned"] = accuracy
    init_images = train_x[np.random.default_rng(seed).permutation(len(train_x))[:512]] \
        if init == "pca" else None
    rows = []
    for k in (progress_bar(filters, desc=f"bottleneck at {at}") if progress else filters):
        started = time.monotonic()
        bottlenecked = fine_tune(bottleneck_model(model, at, k, init_images=init_images,
                                                  seed=seed), rules={"bottleneck_*": 1.0})
        seconds = time.monotonic() - started
        split_shape = (*shape[:-1], k)
        accuracy, accuracy_uint8 = _split_accuracy(bottlenecked, ENCODE, test_x, test_y,
                                                   batch_size)
        rows.append({"filters": k, "split_shape": "x".join(map(str, split_shape)),
                     "bytes_float32": activation_bytes(split_shape, "float32"),
                     "bytes_uint8": activation_bytes(split_shape, "uint8"),
                     "fraction_of_raw": activation_bytes(split_shape, "uint8") / raw_bytes,
                     "accuracy": accuracy, "accuracy_uint8": accuracy_uint8,
                     "drop_vs_reference": reference["accuracy_finetuned"] - accuracy,
                     "train_seconds": round(seconds, 2)})
    return BottleneckStudy(pd.DataFrame(rows), reference, at, split, raw_bytes)


def _fine_tune(model, *, rules: dict, train, solver, rest_lr_mult: float, seed: int):
    """Trains ``model`` in place as one ``finetune`` stage; returns it.

    Batch norm stays in inference mode; layers matching ``rules`` get their multiplier, the
    others ``rest_lr_mult`` (0 freezes them).
    """

    stage = Stage("bottleneck", 1.0, rules, rest_lr_mult)
    compile_stage(model, stage, None, solver, train_bn=False,
                   total_steps=solver.epochs * train.steps_per_epoch,
                   num_classes=int(model.output_shape[-1]))
    model.fit(train.for_keras(), steps_per_epoch=train.steps_per_epoch, epochs=solver.epochs,
              callbacks=[callbacks.ReseedRandomLayers(seed)], shuffle=False, verbose=0)
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
