"""Training throughput (images/s) on the CPU and, when one is visible, on the GPU.

The number cloud users weigh before renting a GPU: how many times faster one training step runs
there. :func:`training_images_per_second` trains a freshly built classifier (the network
``workbench.training`` builds, random weights) for a few batches on one device and times them
after warm-up, so compilation is excluded. :func:`throughput_table` measures several models and
image sizes on both devices and returns a :class:`ThroughputResult`; without a GPU its ratio
column says so instead of guessing. ``benchmarks/throughput.py`` and notebook 07 both call it::

    result = throughput_table(["cifar_cnn:32", "mobilenet_v2:96"], steps=10)
    result.table            # model, image_size, cpu/gpu images per second, gpu_over_cpu
    print(result.to_markdown())
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass

import keras
import numpy as np
import pandas as pd

from workbench import models, plots
from workbench._checks import UsageError, check_choice, check_int
from workbench._device import execution_context, gpu_count, gpu_name
from workbench._progress import progress as progress_bar
from workbench._progress import progress_argument
from workbench.data.pipeline import Batches
from workbench.training.lr_mult import with_lr_multipliers

DEVICES = ("cpu", "gpu")
DEFAULT_MODELS = ("cifar_cnn:32", "mobilenet_v2:96", "mobilenet_v2:224")
NOT_MEASURED = "not measured: no GPU"


def training_images_per_second(backbone: str = "cifar_cnn", *, image_size: int = 32,
                               device: str = "cpu", batch_size: int = 32, steps: int = 10,
                               warmup: int = 3, precision: str = "float32",
                               num_classes: int = 10, lr_mult: dict | None = None,
                               seed: int = 0) -> float:
    """Times training steps of a freshly built classifier on one device.

    The model is ``models.classifier(models.backbone(backbone, weights=None))`` compiled with
    SGD and fed uint8 batches through ``pipeline.Batches`` as ``finetune`` does; the clock runs
    from the end of the ``warmup``-th batch to the end of the last one, waiting for the device
    at both ends (JAX dispatches asynchronously).

    Args:
        backbone: a name from ``workbench.models.BACKBONES``.
        image_size: side of the square input images.
        device: ``"cpu"`` or ``"gpu"`` (the first GPU of the Keras backend).
        batch_size: images per step.
        steps: timed steps.
        warmup: untimed steps first (compilation, caches).
        precision: ``"float32"``, ``"mixed_float16"`` or ``"mixed_bfloat16"``.
        num_classes: classes of the head.
        lr_mult: per-layer learning-rate multipliers as ``finetune`` applies them (e.g.
            ``{"head*": 10.0}``); None trains with plain SGD.
        seed: seeds the weights and the random images.

    Returns:
        Training images per second over the timed steps.

    Raises:
        ValueError: a bad argument, or ``device="gpu"`` when the backend sees no GPU.
    """
    check_choice("backbone", backbone, models.BACKBONES)
    check_int("image_size", image_size, minimum=8)
    check_choice("device", device, DEVICES)
    check_int("batch_size", batch_size, minimum=1)
    check_int("steps", steps, minimum=1)
    check_int("warmup", warmup, minimum=1)
    check_choice("precision", precision, ("float32", "mixed_float16", "mixed_bfloat16"))
    check_int("num_classes", num_classes, minimum=2)
    if device == "gpu" and not gpu_count():
        raise UsageError(f"device must be 'cpu' when the {keras.backend.backend()} backend sees "
                         f"no GPU, received: {device!r}")
    total = warmup + steps
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (batch_size * total, image_size, image_size, 3), dtype=np.uint8)
    labels = np.arange(len(images)) % num_classes
    stamps = {}

    def on_batch_end(batch, logs=None):
        if batch + 1 in (warmup, total):
            float((logs or {}).get("loss", 0.0))  # waits for the step to finish on the device
            stamps[batch + 1] = time.perf_counter()

    with execution_context(precision, None):  # the dtype policy finetune sets, then restored
        with keras.device(f"{device}:0"):
            keras.utils.set_random_seed(seed)
            model = models.classifier(models.backbone(backbone, weights=None,
                                                      input_shape=(image_size, image_size, 3)),
                                      num_classes)
            optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
            if lr_mult is not None:
                optimizer = with_lr_multipliers(optimizer, model, lr_mult)
            model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
            batches = Batches(images, labels, batch_size=batch_size, seed=seed,
                              drop_remainder=True)
            model.fit(batches.for_keras(), steps_per_epoch=total, epochs=1, shuffle=False,
                      verbose=0, callbacks=[keras.callbacks.LambdaCallback(
                          on_train_batch_end=on_batch_end)])
    return steps * batch_size / (stamps[total] - stamps[warmup])


@dataclass
class ThroughputResult:
    """Training images/s per model on CPU and GPU.

    Attributes:
        table: one row per model and image size: model, image_size, batch_size,
            cpu_images_per_second, gpu_images_per_second (NaN when not measured),
            gpu_precision, gpu_over_cpu (the GPU's speed-up, or ``"not measured: no GPU"``).
        environment: Keras version, backend, CPU and GPU the numbers were measured on.
        steps: timed steps per measurement.
        warmup: untimed steps before them.
        figure_: the Figure :meth:`plot` drew last (set by it, like scikit-learn's Displays).
        ax_: its axes.
    """

    table: pd.DataFrame
    environment: str
    steps: int
    warmup: int

    def plot(self, ax=None):
        """Bars of CPU and GPU images/s per model (log scale) with the ratio on top.

        Keeps the Figure and axes in ``figure_`` and ``ax_``.

        Returns:
            The matplotlib Figure.
        """
        figure = plots.throughput(self.table, ax=ax)
        self.figure_, self.ax_ = figure, ax if ax is not None else figure.axes[0]
        return figure

    def to_markdown(self) -> str:
        """The table as Markdown, under a line saying where it was measured."""
        lines = ["# Training throughput: CPU against GPU", "",
                 f"{self.environment}; {self.steps} timed steps after {self.warmup} warm-up "
                 f"steps, float32 on the CPU.", "",
                 "| model | image size | batch | CPU img/s | GPU img/s | GPU precision "
                 "| GPU over CPU |", "|---|---:|---:|---:|---:|---|---:|"]
        for row in self.table.itertuples(index=False):
            gpu = row.gpu_images_per_second
            ratio = row.gpu_over_cpu
            lines.append(f"| {row.model} | {row.image_size} | {row.batch_size} "
                         f"| {row.cpu_images_per_second:,.1f} "
                         f"| {'not measured' if gpu != gpu else f'{gpu:,.1f}'} "
                         f"| {row.gpu_precision} "
                         f"| {ratio if isinstance(ratio, str) else f'{ratio:.1f}x'} |")
        return "\n".join(lines) + "\n"


def throughput_table(models=DEFAULT_MODELS, *, batch_size: int = 32, steps: int = 10,
                     warmup: int = 3, gpu_precision: str = "mixed_float16",
                     progress: str = "auto") -> ThroughputResult:
    """Measures training images/s of each model on the CPU and, when visible, the GPU.

    Args:
        models: ``"name:size"`` strings or ``(name, size)`` pairs, e.g. ``"cifar_cnn:32"``.
        batch_size: images per step.
        steps: timed steps per measurement.
        warmup: untimed steps before them.
        gpu_precision: the GPU's precision; ``"mixed_float16"`` is what ``finetune`` uses on a
            GPU (``precision="auto"``). The CPU always runs float32, as ``finetune`` does there.
        progress: over the models: ``"auto"`` (a bar where someone watches, plain lines
            headless), ``"lines"`` or ``"none"``.

    Returns:
        A :class:`ThroughputResult`.

    Raises:
        ValueError: a bad model spec or argument.
    """
    if not isinstance(models, (list, tuple)) or not models:
        raise UsageError(f"models must be a non-empty list of 'name:size' strings, received: "
                         f"{models!r}")
    specs = [_spec(model) for model in models]
    progress = progress_argument(progress)
    gpus = gpu_count()
    rows = []
    for name, size in progress_bar(specs, desc="throughput", mode=progress):
        options = {"image_size": size, "batch_size": batch_size, "steps": steps,
                   "warmup": warmup}
        cpu = training_images_per_second(name, device="cpu", **options)
        gpu = training_images_per_second(name, device="gpu", precision=gpu_precision,
                                         **options) if gpus else float("nan")
        rows.append({"model": name, "image_size": size, "batch_size": batch_size,
                     "cpu_images_per_second": round(cpu, 1),
                     "gpu_images_per_second": round(gpu, 1) if gpus else gpu,
                     "gpu_precision": gpu_precision if gpus else "",
                     "gpu_over_cpu": round(gpu / cpu, 1) if gpus else NOT_MEASURED})
    environment = (f"Keras {keras.__version__}, {keras.backend.backend()} backend; CPU: "
                   f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
                   f"GPU: {gpu_name() if gpus else 'none visible'}")
    return ThroughputResult(pd.DataFrame(rows), environment, steps, warmup)


def _spec(model) -> tuple[str, int]:
    """``"cifar_cnn:32"`` or ``("cifar_cnn", 32)`` -> ``("cifar_cnn", 32)``."""
    if isinstance(model, str):
        name, _, size = model.partition(":")
        if size.strip().isdigit():
            return name.strip(), int(size)
    elif isinstance(model, (list, tuple)) and len(model) == 2 and isinstance(model[0], str):
        return model[0], check_int("image_size", model[1], minimum=8)
    raise UsageError(f"models must be 'name:size' strings or (name, size) pairs, "
                     f"received: {model!r}")
