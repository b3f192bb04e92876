"""Training throughput (images/s): the workbench's training path against plain Keras ``fit``.

For each model and image size, the same network is trained for a few steps two ways, one after
the other in the same process:

* ``workbench``: the classifier compiled with per-layer learning rates (the ``caffe`` rules,
  head at 10x) and fed from the uint8 cache through ``Batches.for_keras`` (tf.data on TF);
* ``keras fit``: the same architecture with a plain SGD optimizer, fed NumPy arrays.

Images/s are counted after warm-up steps (compilation excluded). Prints a table and writes it to
``benchmarks/results/training_throughput.md``. On a GPU machine run it with
``KERAS_BACKEND=jax`` and ``--mixed-precision``; no GPU figures are claimed without a run there.

    python benchmarks/training_throughput.py                        # CPU defaults
    python benchmarks/training_throughput.py --models cifar_cnn:32 --steps 5
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import keras
import numpy as np

from workbench import models
from workbench._device import gpu_count
from workbench.studies.throughput import training_images_per_second

RESULTS = Path(__file__).parent / "results" / "training_throughput.md"


class StepTimer(keras.callbacks.Callback):
    """Times the training batches after ``warmup`` of them, waiting for the device each time."""

    def __init__(self, warmup: int):
        super().__init__()
        self.warmup, self.start, self.end, self.batches = warmup, None, None, 0

    def on_train_batch_end(self, batch, logs=None):
        float((logs or {}).get("loss", 0.0))  # JAX dispatches asynchronously
        self.batches += 1
        if self.batches == self.warmup:
            self.start = time.perf_counter()
        self.end = time.perf_counter()


def plain_keras_fit(name: str, size: int, *, batch_size: int, steps: int, warmup: int,
                    precision: str) -> float:
    """The reference: the same network with plain SGD, fed NumPy arrays to ``fit``."""
    keras.mixed_precision.set_global_policy(precision)
    try:
        keras.utils.set_random_seed(0)
        images = np.random.default_rng(0).integers(
            0, 256, (batch_size * (steps + warmup), size, size, 3), dtype=np.uint8)
        labels = np.arange(len(images)) % 10
        model = models.classifier(models.backbone(name, weights=None,
                                                  input_shape=(size, size, 3)), 10)
        model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                      loss="sparse_categorical_crossentropy")
        timer = StepTimer(warmup)
        model.fit(images, labels, batch_size=batch_size, epochs=1, callbacks=[timer], verbose=0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return steps * batch_size / (timer.end - timer.start)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+",
                        default=["cifar_cnn:32", "mobilenet_v2:96", "mobilenet_v2:160",
                                 "mobilenet_v2:224"], help="NAME:SIZE pairs")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--mixed-precision", action="store_true")
    args = parser.parse_args(argv)
    precision = "mixed_float16" if args.mixed_precision else "float32"
    options = dict(batch_size=args.batch_size, steps=args.steps, warmup=args.warmup,
                   precision=precision)
    rows = []
    for spec in args.models:
        name, size = spec.split(":")
        speeds = {"keras fit": plain_keras_fit(name, int(size), **options),
                  "workbench": training_images_per_second(
                      name, image_size=int(size), device="gpu" if gpu_count() else "cpu",
                      lr_mult={"head*": 10.0}, **options)}
        rows.append((name, int(size), speeds["workbench"], speeds["keras fit"]))
        print(f"{name} {size}px: workbench {speeds['workbench']:.0f} img/s, "
              f"keras fit {speeds['keras fit']:.0f} img/s", flush=True)

    device = "GPU" if gpu_count() else "CPU"
    lines = [
        "# Training throughput",
        "",
        f"Keras {keras.__version__}, backend {keras.backend.backend()}, {device} "
        f"({platform.processor() or platform.machine()}), batch {args.batch_size}, "
        f"{args.steps} timed steps after {args.warmup} warm-up, "
        f"{'mixed float16' if args.mixed_precision else 'float32'}.",
        "",
        "| model | image size | workbench (lr_mult + cache) img/s | plain keras fit img/s | ratio |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, size, ours, peer in rows:
        lines.append(f"| {name} | {size} | {ours:,.0f} | {peer:,.0f} | {ours / peer:.2f}x |")
    table = "\n".join(lines) + "\n"
    print("\n" + table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(table)


if __name__ == "__main__":
    main()
