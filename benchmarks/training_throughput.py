"""Training throughput (images/s): the workbench's training path, plain Keras ``fit`` and PyTorch.

For each model and image size, the same network is trained for a few steps three ways, taking
turns in each of ``--repeats`` repeats:

* ``workbench``: the classifier compiled with per-layer learning rates (the ``caffe`` rules,
  head at 10x) and fed from the uint8 cache through ``Batches.for_keras`` (tf.data on TF);
* ``keras fit``: the same architecture with a plain SGD optimizer, fed NumPy arrays;
* ``PyTorch``: the peer a user would pick instead, timm's network of the same name (MobileNetV2:
  ``mobilenetv2_100``, random weights, 10 classes) in PyTorch, channels-last, SGD with momentum,
  fed uint8 batches converted on the fly, eager and through ``torch.compile`` where it compiles
  (``--compile-sizes``: compiling the training step takes minutes on 2 cores). PyTorch runs in
  a child process, so that the two frameworks' thread pools never share the cores.

Images/s are counted after warm-up steps (compilation excluded). Prints a table (the median of
the repeats and their range) and writes it to ``benchmarks/results/training_throughput.md``. On
a GPU machine run it with ``KERAS_BACKEND=jax`` and ``--mixed-precision``; no GPU figures are
claimed without a run there. PyTorch needs the ``bench`` extra (``pip install -e ".[bench]"``).

    python benchmarks/training_throughput.py                        # CPU defaults, ~5 min
    python benchmarks/training_throughput.py --models cifar_cnn:32 --steps 5 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "training_throughput.md"
TIMM_NAMES = {"mobilenet_v2": "mobilenetv2_100"}  # our backbone -> the same network in timm


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+",
                        default=["cifar_cnn:32", "mobilenet_v2:96", "mobilenet_v2:224"],
                        help="NAME:SIZE pairs")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="PyTorch threads")
    parser.add_argument("--compile-sizes", type=int, nargs="*", default=[96],
                        help="image sizes at which torch.compile is measured too")
    parser.add_argument("--no-torch", action="store_true", help="leave out PyTorch")
    parser.add_argument("--mixed-precision", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--torch-worker", help=argparse.SUPPRESS)  # NAME:SIZE:COMPILE
    args = parser.parse_args(argv)
    if min(args.batch_size, args.steps, args.repeats, args.threads) < 1 or args.warmup < 0:
        parser.error("--batch-size, --steps, --repeats and --threads must be >= 1")
    return args


# --- Keras: the workbench path and plain fit -----------------------------------------------------

def plain_keras_fit(name: str, size: int, *, batch_size: int, steps: int, warmup: int,
                    precision: str) -> float:
    """The reference: the same network with plain SGD, fed NumPy arrays to ``fit``."""
    import keras
    import numpy as np

    from workbench import models

    class StepTimer(keras.callbacks.Callback):
        """Times the training batches after ``warmup`` of them, waiting for the device."""

        def __init__(self):
            super().__init__()
            self.start, self.end, self.batches = None, None, 0

        def on_train_batch_end(self, batch, logs=None):
            float((logs or {}).get("loss", 0.0))  # JAX dispatches asynchronously
            self.batches += 1
            if self.batches == warmup:
                self.start = time.perf_counter()
            self.end = time.perf_counter()

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
        timer = StepTimer()
        model.fit(images, labels, batch_size=batch_size, epochs=1, callbacks=[timer], verbose=0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return steps * batch_size / (timer.end - timer.start)


# --- PyTorch, in a child process -----------------------------------------------------------------

def torch_worker(spec: str, args) -> None:
    """Trains timm's network for ``--repeats`` measurements; prints one JSON line."""
    import numpy as np
    import timm
    import torch

    name, size, compile_ = spec.split(":")
    size, n = int(size), args.batch_size
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n * 4, size, size, 3), dtype=np.uint8)  # as from the cache
    labels = [torch.arange(n) % 10 for _ in range(4)]  # whole tensors: no views to recompile for
    result = {"notes": [f"PyTorch {torch.__version__} "
                        f"({'CUDA build' if torch.version.cuda else 'CPU build'}, on the CPU), "
                        f"timm {timm.__version__}, {torch.get_num_threads()} threads"]}

    def trainer(compiled: bool):
        network = timm.create_model(TIMM_NAMES[name], pretrained=False, num_classes=10)
        network = network.train().to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.9)
        loss_fn = torch.nn.CrossEntropyLoss()
        forward = torch.compile(network) if compiled else network  # the usual way to compile
        batch = [0]

        def run():
            i = batch[0] % 4
            batch[0] += 1
            x = torch.from_numpy(images[i * n:(i + 1) * n]).permute(0, 3, 1, 2)  # NHWC memory
            x = x.float().div_(127.5).sub_(1.0)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(forward(x), labels[i])
            loss.backward()
            optimizer.step()
            return float(loss)
        return run

    def images_per_second(run) -> float:
        for _ in range(args.warmup):
            run()
        started = time.perf_counter()
        for _ in range(args.steps):
            run()
        return args.steps * n / (time.perf_counter() - started)

    runs = {"eager": trainer(False)}
    if compile_ == "1":
        try:
            compiled = trainer(True)
            started = time.perf_counter()
            compiled()
            seconds = time.perf_counter() - started
            result["notes"].append(f"torch.compile at {size} px: the first step took "
                                   f"{seconds:.0f} s (compiling; less when inductor's cache "
                                   "holds an earlier run's kernels)")
            runs["compile"] = compiled
        except Exception as error:  # no compiler, an unsupported op: say so
            result["notes"].append(f"torch.compile at {size} px failed: "
                                   f"{type(error).__name__}: {str(error)[:200]}")
    for label, run in runs.items():
        result[label] = [images_per_second(run) for _ in range(args.repeats)]
    print(json.dumps(result), flush=True)


def torch_speeds(name: str, size: int, args) -> dict:
    """``{"eager": [...], "compile": [...], "notes": [...]}`` from a child process."""
    if args.no_torch:
        return {"notes": ["PyTorch left out (--no-torch)"]}
    if name not in TIMM_NAMES:
        return {"notes": [f"timm has no {name}: no PyTorch column for it"]}
    command = [sys.executable, __file__, "--torch-worker",
               f"{name}:{size}:{int(size in args.compile_sizes)}",
               "--batch-size", str(args.batch_size), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--repeats", str(args.repeats),
               "--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"notes": [f"PyTorch not measured at {size} px: {reason}"]}
    return json.loads(lines[-1])


# --- the table -----------------------------------------------------------------------------------

def _spread(values) -> str:
    """``"113 (108-117)"``: the median and the range, or ``"-"``."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:,.0f}"
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def _ratio(ours, theirs) -> str:
    return f"{statistics.median(ours) / statistics.median(theirs):.2f}x" if ours and theirs \
        else "-"


def main(argv=None) -> None:
    from workbench.deploy.runtime import instruction_sets, machine
    args = parse_args(argv)
    if args.torch_worker:
        torch_worker(args.torch_worker, args)
        return
    import keras

    from workbench._device import gpu_count
    from workbench.studies.throughput import training_images_per_second

    precision = "mixed_float16" if args.mixed_precision else "float32"
    options = dict(batch_size=args.batch_size, steps=args.steps, warmup=args.warmup,
                   precision=precision)
    load, rows, notes = os.getloadavg()[0], [], []
    for spec in args.models:
        name, size = spec.split(":")
        size = int(size)
        speeds = {"workbench": [], "keras fit": []}
        for _ in range(args.repeats):  # taking turns: load falls on both alike
            speeds["keras fit"].append(plain_keras_fit(name, size, **options))
            speeds["workbench"].append(training_images_per_second(
                name, image_size=size, device="gpu" if gpu_count() else "cpu",
                lr_mult={"head*": 10.0}, **options))
        peer = torch_speeds(name, size, args)
        notes += peer.pop("notes")
        rows.append((name, size, speeds, peer))
        print(f"{name} {size}px: workbench {_spread(speeds['workbench'])} img/s, keras fit "
              f"{_spread(speeds['keras fit'])}, PyTorch eager {_spread(peer.get('eager'))}, "
              f"compiled {_spread(peer.get('compile'))}", flush=True)

    device = "GPU" if gpu_count() else "CPU"
    lines = [
        "# Training throughput",
        "",
        f"Keras {keras.__version__}, backend {keras.backend.backend()}, {device} "
        f"({machine()}, {instruction_sets()}), batch "
        f"{args.batch_size}, {args.steps} timed steps after {args.warmup} warm-up, "
        f"{'mixed float16' if args.mixed_precision else 'float32'}; images/s, the median of "
        f"{args.repeats} repeats (range). 1-minute load average {load:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end.",
        "",
        "| model | image size | workbench (lr_mult + cache) | plain keras fit | workbench / "
        "fit | PyTorch timm eager | PyTorch torch.compile | workbench / PyTorch (best) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, size, speeds, peer in rows:
        best = max((peer.get(k) for k in ("eager", "compile") if peer.get(k)),
                   key=statistics.median, default=None)
        lines.append(f"| {name} | {size} | {_spread(speeds['workbench'])} | "
                     f"{_spread(speeds['keras fit'])} | "
                     f"{_ratio(speeds['workbench'], speeds['keras fit'])} | "
                     f"{_spread(peer.get('eager'))} | {_spread(peer.get('compile'))} | "
                     f"{_ratio(speeds['workbench'], best)} |")
    lines += ["", *(f"- {note}" for note in dict.fromkeys(notes))]
    table = "\n".join(lines) + "\n"
    print("\n" + table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)


if __name__ == "__main__":
    main()
