"""Overhead of ``ResourceMonitor`` on training throughput (images/s), and its cost per sample.

Two measurements in one process:

* training throughput of the small ``cifar_cnn`` classifier (32x32x3, 10 classes, batch 64,
  random uint8 data) without the monitor and with it at ``--intervals`` (default 1.0 and 0.1
  s). The model is built and compiled once; each measurement is one ``fit`` of
  ``--warmup + --steps`` batches, images/s counted after the warm-up batches. The modes are
  interleaved in a rotating order for ``--repeats`` rounds, so slow drifts of a shared machine
  hit every mode alike; overhead % is the median of the per-round paired differences against
  the run without the monitor (positive = slower), with the spread of the baseline's own rounds
  as the noise floor;
* the cost of one sample (CPU and RAM through psutil, the GPUs through NVML when present, one
  CSV row formatted), timed over ``--samples`` calls: the expected overhead is this cost divided
  by the interval (the share of one core the sampling thread takes).

Prints a table and writes it to ``benchmarks/results/monitor_overhead.md``.

    .venv/bin/python benchmarks/monitor_overhead.py                      # ~2-3 min on 2 cores
    .venv/bin/python benchmarks/monitor_overhead.py --repeats 2 --steps 10   # a quick look
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from workbench import models, monitor  # noqa: E402
from workbench.training.callbacks import MonitorResources  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "monitor_overhead.md"
TARGET = 1.0  # % overhead


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--intervals", type=float, nargs="+", default=[1.0, 0.1])
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--steps", type=int, default=60, help="timed batches per measurement")
    parser.add_argument("--warmup", type=int, default=5, help="untimed batches first")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--samples", type=int, default=300, help="calls timed for cost/sample")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


class StepTimer(keras.callbacks.Callback):
    """Times the training batches after ``warmup`` of them."""

    def __init__(self, warmup: int):
        super().__init__()
        self.warmup = warmup

    def on_train_begin(self, logs=None):
        self.batches, self.start, self.end = 0, None, None

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1
        if self.batches == self.warmup:
            self.start = time.perf_counter()
        self.end = time.perf_counter()


def throughput(model, images, labels, *, args, interval, folder) -> float:
    timer = StepTimer(args.warmup)
    callbacks = [timer]
    if interval is not None:
        callbacks.insert(0, MonitorResources(monitor.ResourceMonitor(
            Path(folder) / f"r{interval}.csv", interval=interval)))
    model.fit(images, labels, batch_size=args.batch_size, epochs=1, shuffle=False, verbose=0,
              callbacks=callbacks)
    return (timer.batches - args.warmup) * args.batch_size / (timer.end - timer.start)


def sample_cost(samples: int) -> tuple[float, float, bool]:
    """Milliseconds of wall and CPU time per sample, and whether a GPU was read."""
    recorder = monitor.ResourceMonitor(os.devnull)
    recorder._t0 = time.monotonic()
    recorder._open_process()
    nvml, handles, names, _ = monitor._start_nvml()
    writer = csv.writer(io.StringIO())
    gpus = list(zip(handles, names))
    recorder._write_sample(writer, 0, nvml, gpus, cpu_valid=False)  # warm caches
    wall, cpu = time.perf_counter(), time.thread_time()
    for _ in range(samples):
        recorder._write_sample(writer, 0, nvml, gpus, cpu_valid=True)
    wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
    if nvml is not None:
        monitor._stop_nvml(nvml)
    return 1000 * wall / samples, 1000 * cpu / samples, bool(handles)


def main(argv=None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", message="ResourceMonitor: no GPU found")
    keras.utils.set_random_seed(0)
    count = args.batch_size * (args.warmup + args.steps)
    images = np.random.default_rng(0).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(count) % 10
    model = models.classifier(models.backbone("cifar_cnn", input_shape=(32, 32, 3)), 10)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                  loss="sparse_categorical_crossentropy")
    modes = [None, *args.intervals]
    rates = {mode: [] for mode in modes}
    with tempfile.TemporaryDirectory() as folder:
        throughput(model, images, labels, args=args, interval=None, folder=folder)  # compile
        for round_ in range(args.repeats):
            order = modes[round_ % len(modes):] + modes[:round_ % len(modes)]
            for mode in order:
                rates[mode].append(throughput(model, images, labels, args=args, interval=mode,
                                              folder=folder))
            print(f"round {round_ + 1}/{args.repeats}: " + "  ".join(
                f"{'off' if m is None else f'{m:g} s'} {rates[m][-1]:.0f}" for m in modes),
                file=sys.stderr)
    wall_ms, cpu_ms, gpu = sample_cost(args.samples)

    base = rates[None]
    noise = 100 * (max(base) - min(base)) / statistics.median(base)
    lines = [
        "# ResourceMonitor overhead on training throughput",
        "",
        f"`cifar_cnn` classifier, 32x32x3, batch {args.batch_size}, {args.steps} timed batches "
        f"after {args.warmup} warm-up per measurement, {args.repeats} interleaved rounds, "
        f"Keras {keras.__version__} ({keras.backend.backend()}), "
        f"{platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPU cores, {'with' if gpu else 'no'} GPU.",
        "",
        "| monitor | images/s (median) | min-max | overhead % (median of paired rounds) "
        "| expected from cost/sample |",
        "|---|---|---|---|---|",
    ]
    for mode in modes:
        values = rates[mode]
        if mode is None:
            paired, expected = "(baseline)", ""
        else:
            diffs = [100 * (b - v) / b for b, v in zip(base, values)]
            paired = f"{statistics.median(diffs):+.2f}"
            expected = f"{100 * cpu_ms / 1000 / mode:.3f} %"
        lines.append(f"| {'off' if mode is None else f'interval {mode:g} s'} "
                     f"| {statistics.median(values):.0f} | {min(values):.0f}-{max(values):.0f} "
                     f"| {paired} | {expected} |")
    lines += [
        "",
        f"Cost of one sample ({'NVML + ' if gpu else ''}psutil + one CSV row): "
        f"{wall_ms:.3f} ms wall, {cpu_ms:.3f} ms CPU (mean over {args.samples} calls). "
        f"At interval 1 s that is {cpu_ms / 10:.3f} % of one core, at 0.1 s "
        f"{cpu_ms:.2f} %.",
        "",
        f"Noise floor: the baseline's own rounds spread over {noise:.1f} % (max-min over "
        f"median). Paired overheads smaller than that are not distinguishable from zero on "
        f"this machine; the cost per sample is the precise estimate. Target: < {TARGET:g} %.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
