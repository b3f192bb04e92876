"""The GPU check of the issue "On a GPU, for real", as one script for one device call.

    python benchmarks/gpu/check.py --out DIR           # the full check: GPU machine, < 8 minutes
    python benchmarks/gpu/check.py --out DIR --tiny    # the same steps at tiny sizes: CPU

Each step runs in its own Python process under its own time limit, and all of them under one
budget (``--budget`` seconds); a step that fails or runs out of time is recorded with its error
and the next one starts. The steps, most important first:

``environment``        versions, devices, ``nvidia-smi``
``data``               the bundled digits as a split folder; a uint8 cache of random images
``throughput:MODEL``   images/s at 224 px in mixed precision, three ways: the workbench's
                       training path (per-layer learning rates, ``Batches`` over the memory-mapped
                       uint8 cache), the same compiled model fed one batch already on the device
                       ("synthetic"), and plain Keras ``fit`` on NumPy arrays with default settings
``timm``               the same networks in PyTorch (timm, channels-last, autocast), eager
``finetune``           a real ``two_stage`` fine-tuning run with per-layer learning rates and the
                       resource monitor: its resources.csv, dashboard and curves
``resume``             the same seeded run in two processes, and a run killed (SIGKILL) mid-epoch
                       then resumed: how far their histories and weights are apart
``cpu_gpu``            ``studies.throughput.throughput_table``: the batch-size study's throughput
                       column on the CPU and the GPU
``features``           ``feature_extraction`` on the digits with the feature cache off (the whole
                       model in every epoch) and on (the frozen backbone's features computed
                       once, the head trained on them): seconds per epoch and in all, and
                       whether the two runs' results agree
``quantized``          says why the quantized LiteRT candidates are not measured here: they run
                       on the CPU only, and their converter needs TensorFlow
``timm_compiled:MODEL``  timm under ``torch.compile``, last, with the time that is left

Everything lands in ``--out``: ``report.md`` (every table, rewritten after each step), each table
as ``.md`` and ``.csv``, PNG figures, ``logs/`` (one log per step) and ``parts/`` (each step's raw
result). Rows that only a GPU can fill say ``not measured: no GPU``; timm rows say why they are
empty when PyTorch is missing. Timings are reported, never asserted.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import importlib.metadata
import importlib.util
import io
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import traceback
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
NO_GPU = "not measured: no GPU"  # the same words as workbench.studies.throughput.NOT_MEASURED
MODELS = ("mobilenet_v2", "efficientnet_b0", "resnet50")
TIMM_NAMES = {"mobilenet_v2": "mobilenetv2_100", "efficientnet_b0": "efficientnet_b0",
              "resnet50": "resnet50"}
H200_TARGETS = {"mobilenet_v2": 5000, "efficientnet_b0": 4000, "resnet50": 3000}
KERAS_WAYS = ("workbench cached", "synthetic tensors", "keras fit")
TIMM_WAYS = ("timm eager", "timm compiled")
PEERS = ("keras fit", "timm eager", "timm compiled")
SYNTHETIC_SHARE = 0.95  # the cached path should reach this share of the synthetic one
WEIGHTS_GLOB = "mobilenet_v2_weights_*_224_no_top.h5"
RESERVE_S = 8  # kept back from the budget for the report
MIN_STEP_S = 20  # a step is not started with less time than this


@dataclasses.dataclass(frozen=True)
class Settings:
    """Sizes of one check: the full one for a GPU, or the tiny one for a CPU test."""

    models: tuple = MODELS
    image_size: int = 224
    batch_size: int = 256
    warmup: int = 3
    steps: int = 30
    precision: str = "mixed_bfloat16"
    cache_images: int = 2048
    classes: int = 10
    split_counts: tuple | None = None  # None: the splitter's default fractions
    finetune_backbone: str = "mobilenet_v2"
    finetune_size: int = 224
    finetune_epochs: int = 4
    finetune_batch: int = 64
    resume_backbone: str = "cifar_cnn"
    resume_size: int = 32
    resume_epochs: int = 8
    resume_kill_after: int = 3
    resume_batch: int = 64
    resume_parallel: bool = True  # runs A, B and C of the resume step side by side
    cpu_gpu_models: tuple = ("cifar_cnn:32", "mobilenet_v2:96")
    cpu_gpu_batch: int = 32
    cpu_gpu_steps: int = 10
    cpu_gpu_warmup: int = 3
    features_backbone: str = "mobilenet_v2"
    features_size: int = 224
    features_epochs: int = 10
    features_batch: int = 64
    timm_compile: bool = True
    # JAX's persistent compilation cache shared by the steps' processes: on the CPU it only
    # saves time; on a GPU it is left off, so that the resume step's runs A and B compile
    # (and autotune) each for itself, as two separate runs would
    compile_cache: bool = False
    # added to $XLA_FLAGS of the steps: --tiny compiles with LLVM's optimizations off, which
    # takes a third of the CPU time (the tiny steps are mostly compilation) for the same numbers
    xla_flags: str = ""
    budget_s: int = 430
    # seconds per step kind, or per step (EfficientNet compiles the slowest)
    boxes: tuple = (("environment", 60), ("data", 60), ("throughput", 110),
                    ("throughput:efficientnet_b0", 150), ("timm", 90), ("finetune", 150),
                    ("resume", 150), ("cpu_gpu", 120), ("features", 150), ("quantized", 30),
                    ("timm_compiled", 120))


TINY = Settings(models=("cifar_cnn",), image_size=16, batch_size=8, warmup=2, steps=3,
                cache_images=32, split_counts=(6, 2, 2), finetune_backbone="cifar_cnn",
                finetune_size=16, finetune_epochs=2, finetune_batch=8, resume_size=16,
                resume_epochs=4, resume_kill_after=2, resume_batch=8, resume_parallel=False,
                cpu_gpu_models=("cifar_cnn:16",), cpu_gpu_batch=8, cpu_gpu_steps=2,
                cpu_gpu_warmup=1, features_backbone="cifar_cnn", features_size=16,
                features_epochs=3, features_batch=8, timm_compile=False, compile_cache=True,
                xla_flags="--xla_backend_optimization_level=0", budget_s=420,
                boxes=(("environment", 60), ("data", 60), ("throughput", 90), ("timm", 60),
                       ("finetune", 120), ("resume", 150), ("cpu_gpu", 90), ("features", 120),
                       ("quantized", 30), ("timm_compiled", 60)))


# ----------------------------------------------------------------------------------------------
# Tables: CSV and Markdown, without pandas (the orchestrator stays light)
# ----------------------------------------------------------------------------------------------

def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if value != 0 and (abs(value) >= 100 or abs(value) < 1e-3):
            return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2e}"
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A Markdown table; numbers right-aligned."""
    numeric = [all(isinstance(row[i], (int, float)) or row[i] in (None, "") for row in rows)
               and any(isinstance(row[i], (int, float)) for row in rows)
               for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---:" if is_number else "---" for is_number in numeric) + "|"]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_table(out: Path, name: str, title: str, header: list[str], rows: list[list],
                note: str = "") -> str:
    """Writes ``name.csv`` and ``name.md``; returns the Markdown section."""
    with open(out / f"{name}.csv", "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file, lineterminator="\n")
        writer.writerow(header)
        writer.writerows([["" if v is None else v for v in row] for row in rows])
    section = f"## {title}\n\n" + (f"{note}\n\n" if note else "") + markdown_table(header, rows)
    (out / f"{name}.md").write_text(section, encoding="utf-8")
    return section


def read_table(path: Path) -> list[dict]:
    """Rows of a CSV written by :func:`write_table`."""
    with open(path, newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def _file_name(step: str) -> str:
    return step.replace(":", "-")


# ----------------------------------------------------------------------------------------------
# Shared helpers of the steps (run inside step processes)
# ----------------------------------------------------------------------------------------------

def _device_name() -> tuple[bool, str]:
    """Whether the Keras backend sees a GPU, and its name (or "cpu")."""
    from workbench._device import gpu_count, gpu_name

    return (True, gpu_name()) if gpu_count() else (False, "cpu")


def _step_clock():
    """A Keras callback that stamps the time at which each training step's loss was ready.

    It is marked ``async_safe``, so Keras keeps dispatching steps without waiting for the
    previous one (as plain ``fit`` does); the stamps are taken in Keras's callback threads as
    each step's loss arrives on the host.
    """
    import keras

    class StepClock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.async_safe = True
            self.done = {}

        def on_train_batch_end(self, batch, logs=None):
            float((logs or {}).get("loss", 0.0))  # waits for this step on the device
            self.done[batch] = time.perf_counter()

    return StepClock()


def timed_fit(model, data, *, warmup: int, steps: int, batch_size: int, **fit_options) -> float:
    """Images/s of ``model.fit`` over the ``steps`` steps after ``warmup`` (compile excluded)."""
    clock = _step_clock()
    total = warmup + steps
    if isinstance(data, tuple):  # arrays: plain fit batches and shuffles them itself
        model.fit(*data, batch_size=batch_size, epochs=1, verbose=0, callbacks=[clock],
                  **fit_options)
    else:
        model.fit(data, steps_per_epoch=total, epochs=1, verbose=0, callbacks=[clock],
                  shuffle=False, **fit_options)
    if len(clock.done) < total:
        raise RuntimeError(f"fit ran {len(clock.done)} of {total} steps")
    return steps * batch_size / (clock.done[total - 1] - clock.done[warmup - 1])


def _repeat(x, y):
    while True:
        yield x, y


def _cache_paths(work: Path, size: int) -> tuple[Path, Path]:
    return work / "cache" / f"images-{size}.npy", work / "cache" / f"labels-{size}.npy"


def _weights_file(args) -> Path | None:
    if args.weights:
        path = Path(args.weights)
        return path if path.is_file() else None
    found = sorted((ROOT / "build" / "gpu-wheels").glob(f"**/{WEIGHTS_GLOB}"))
    return found[0] if found else None


def _starting_weights(args, backbone: str) -> tuple[Path | None, str]:
    """The carried ImageNet weights file for ``backbone`` (MobileNetV2 only), and a note."""
    weights = _weights_file(args) if backbone == "mobilenet_v2" else None
    note = (f"ImageNet, carried file {weights.name}" if weights else
            "none (random init): no ImageNet weights file was carried"
            if backbone == "mobilenet_v2" else "none (small network)")
    return weights, note


def _history_numbers(path: Path) -> dict[str, list[float]]:
    """The numeric columns of a history.csv (without the wall-clock ``seconds``)."""
    rows = read_table(path)
    columns = {}
    for name in (rows[0] if rows else {}):
        if name in ("seconds", "stage"):
            continue
        try:
            columns[name] = [float(row[name]) if row[name] != "" else math.nan for row in rows]
        except ValueError:
            continue
    return columns


def _max_history_diff(a: Path, b: Path) -> tuple[float, str]:
    """Max |a - b| over the numeric columns of two history files, and the column it is in."""
    first, second = _history_numbers(a), _history_numbers(b)
    worst, where = 0.0, ""
    for name in sorted(set(first) & set(second)):
        if len(first[name]) != len(second[name]):
            return math.inf, f"{name} (rows {len(first[name])} vs {len(second[name])})"
        for u, v in zip(first[name], second[name]):
            if math.isnan(u) and math.isnan(v):
                continue
            gap = abs(u - v) if not (math.isnan(u) or math.isnan(v)) else math.inf
            if gap > worst:
                worst, where = gap, name
    return worst, where


def _keras_weights(path: Path) -> dict:
    """The weight arrays of a ``.keras`` file by their path inside it (h5py, no Keras)."""
    import h5py
    import numpy as np

    with zipfile.ZipFile(path) as archive:
        data = io.BytesIO(archive.read("model.weights.h5"))
    arrays = {}
    with h5py.File(data, "r") as file:
        file.visititems(lambda name, item: arrays.__setitem__(name, np.asarray(item))
                        if isinstance(item, h5py.Dataset) else None)
    return arrays


def _max_weight_diff(a: Path, b: Path) -> float:
    import numpy as np

    first, second = _keras_weights(a), _keras_weights(b)
    if set(first) != set(second):
        return math.inf
    return max((float(np.max(np.abs(first[k].astype(np.float64) - second[k])))
                for k in first if first[k].size), default=0.0)


# ----------------------------------------------------------------------------------------------
# The steps. Each returns a JSON-able dict, saved as parts/<step>.json.
# ----------------------------------------------------------------------------------------------

def step_environment(s: Settings, args, arg: str | None) -> dict:
    import keras

    from workbench._device import gpu_count, local_device_count

    info = {"python": platform.python_version(), "platform": platform.platform(),
            "cpu cores": os.cpu_count(), "keras": keras.__version__,
            "keras backend": keras.backend.backend()}
    for package in ("jax", "jaxlib", "numpy", "torch", "timm", "tensorflow"):
        try:
            info[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            info[package] = "not installed"
    if keras.backend.backend() == "jax":
        import jax

        info["jax devices"] = ", ".join(str(device) for device in jax.devices())
    gpus = gpu_count()
    info["gpus (Keras backend)"] = gpus
    info["local devices (data-parallel)"] = local_device_count()
    info["gpu name"] = _device_name()[1] if gpus else NO_GPU
    for variable in ("XLA_FLAGS", "XLA_PYTHON_CLIENT_PREALLOCATE", "JAX_PLATFORMS",
                     "JAX_COMPILATION_CACHE_DIR", "WORKBENCH_GPU_MEMORY_GROWTH"):
        info[f"${variable}"] = os.environ.get(variable, "")
    smi = shutil.which("nvidia-smi")
    if smi:
        query = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total,"
                                "power.limit,clocks.max.sm", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=30)
        info["nvidia-smi"] = (query.stdout or query.stderr).strip()
    else:
        info["nvidia-smi"] = "not found"
    return {"info": info, "gpu": bool(gpus)}


def step_data(s: Settings, args, arg: str | None) -> dict:
    import numpy as np

    from workbench.data import sample
    from workbench.data.split import prepare

    work = Path(args.work)
    summary = sample.write_digits(work / "data", image_size=32, overwrite=True)
    options = {"counts": s.split_counts} if s.split_counts else {}
    result = prepare(work / "data" / "digits", work / "splits", progress="none",
                     overwrite=True, **options)  # the check's own folder, remade each time
    counts = {split: int(count) for split, count in result.table["split"].value_counts().items()}
    images_path, labels_path = _cache_paths(work, s.image_size)
    images_path.parent.mkdir(parents=True, exist_ok=True)
    shape = (s.cache_images, s.image_size, s.image_size, 3)
    cache = np.lib.format.open_memmap(images_path, mode="w+", dtype=np.uint8, shape=shape)
    rng = np.random.default_rng(0)
    for start in range(0, s.cache_images, 256):
        stop = min(start + 256, s.cache_images)
        cache[start:stop] = rng.integers(0, 256, (stop - start, *shape[1:]), dtype=np.uint8)
    cache.flush()
    del cache
    np.save(labels_path, np.arange(s.cache_images) % s.classes)
    return {"digits": summary["images"], "splits": counts,
            "cache": f"{s.cache_images} images of {s.image_size} px, "
                     f"{images_path.stat().st_size / 2**20:,.0f} MiB"}


def step_throughput(s: Settings, args, model_name: str) -> dict:
    import keras
    import numpy as np

    from workbench import models
    from workbench._device import execution_context
    from workbench.data.pipeline import Batches
    from workbench.training.lr_mult import with_lr_multipliers

    gpu, device = _device_name()
    images_path, labels_path = _cache_paths(Path(args.work), s.image_size)
    cache = np.load(images_path, mmap_mode="r")  # what cache.build_cache returns
    labels = np.load(labels_path)
    total = s.warmup + s.steps
    shape = (s.image_size, s.image_size, 3)
    common = {"model": model_name, "image_size": s.image_size, "batch_size": s.batch_size,
              "precision": s.precision, "device": device,
              "framework": f"keras {keras.__version__} ({keras.backend.backend()})"}
    timing = {"warmup": s.warmup, "steps": s.steps, "batch_size": s.batch_size}
    rows = []

    def build():
        keras.utils.set_random_seed(0)
        return models.classifier(models.backbone(model_name, weights=None, input_shape=shape),
                                 s.classes)

    with execution_context(s.precision, None):
        model = build()  # the workbench's path: per-layer learning rates, as finetune compiles
        optimizer = with_lr_multipliers(keras.optimizers.SGD(0.01, momentum=0.9), model,
                                        {"head*": 10.0})
        model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
        batches = Batches(cache, labels, batch_size=s.batch_size, seed=0, drop_remainder=True)
        speed = timed_fit(model, batches.for_keras(), **timing)
        rows.append({**common, "way": "workbench cached", "images_per_second": speed,
                     "note": "Batches over the memory-mapped uint8 cache, lr_mult head x10"})
        x = keras.ops.convert_to_tensor(np.asarray(cache[:s.batch_size]))
        y = keras.ops.convert_to_tensor(labels[:s.batch_size].astype("int32"))
        speed = timed_fit(model, _repeat(x, y), **timing)  # same compiled step, no input path
        rows.append({**common, "way": "synthetic tensors", "images_per_second": speed,
                     "note": "the same compiled model, one batch already on the device"})
        del model, batches, x, y

        plain = build()
        plain.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                      loss="sparse_categorical_crossentropy")
        picks = np.arange(s.batch_size * total) % len(cache)
        speed = timed_fit(plain, (np.asarray(cache[picks]), labels[picks]), **timing)
        rows.append({**common, "way": "keras fit", "images_per_second": speed,
                     "note": "NumPy arrays, fit's defaults (shuffle), plain SGD"})
    return {"rows": rows, "gpu": gpu}


def _timm_images_per_second(torch, model, s: Settings, *, device, dtype, compiled: bool) -> float:
    """Images/s of SGD steps on one batch of random tensors already on ``device``."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    forward = torch.compile(model) if compiled else model
    x = torch.randn(s.batch_size, 3, s.image_size, s.image_size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, s.classes, (s.batch_size,), device=device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype):
            loss = torch.nn.functional.cross_entropy(forward(x), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss

    def wait():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(s.warmup + (2 if compiled else 0)):  # torch.compile compiles in the first
        step()
    wait()
    start = time.perf_counter()
    for _ in range(s.steps):
        loss = step()
    float(loss)
    wait()
    return s.steps * s.batch_size / (time.perf_counter() - start)


def step_timm(s: Settings, args, model_name: str | None) -> dict:
    """timm in PyTorch: every model eagerly (``model_name`` None), or one model compiled."""
    way = "timm eager" if model_name is None else "timm compiled"
    names = s.models if model_name is None else (model_name,)
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("timm") is None:
        missing = "torch" if importlib.util.find_spec("torch") is None else "timm"
        return {"rows": [{"model": name, "way": way, "images_per_second": None,
                          "note": f"skipped: {missing} not installed"} for name in names]}
    import timm
    import torch

    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    dtype = torch.bfloat16 if s.precision != "mixed_float16" else torch.float16
    torch.backends.cudnn.benchmark = True
    common = {"image_size": s.image_size, "batch_size": s.batch_size,
              "precision": f"autocast {str(dtype).replace('torch.', '')}, channels-last",
              "device": torch.cuda.get_device_name(0) if gpu else "cpu",
              "framework": f"torch {torch.__version__}, timm {timm.__version__}"}
    rows = []
    for name in names:
        row = {**common, "model": name, "way": way, "images_per_second": None, "note": ""}
        rows.append(row)
        if name not in TIMM_NAMES:
            row["note"] = f"no timm model for {name}"
            continue
        torch.manual_seed(0)
        model = timm.create_model(TIMM_NAMES[name], pretrained=False, num_classes=s.classes)
        model = model.to(device, memory_format=torch.channels_last).train()
        row["images_per_second"] = _timm_images_per_second(
            torch, model, s, device=device, dtype=dtype, compiled=model_name is not None)
        row["note"] = f"timm {TIMM_NAMES[name]}, synthetic tensors on the device, SGD"
        del model
        if gpu:
            torch.cuda.empty_cache()
    return {"rows": rows, "gpu": gpu}


def step_finetune(s: Settings, args, arg: str | None) -> dict:
    import keras

    from workbench import plots
    from workbench.models import StartingPoint
    from workbench.runs import RunDir
    from workbench.training.solver import SolverConfig
    from workbench.training.train import finetune

    out, work = Path(args.out), Path(args.work)
    gpu, device = _device_name()
    weights, weights_note = _starting_weights(args, s.finetune_backbone)
    run_dir = work / "runs" / "finetune"
    started = time.perf_counter()
    finetune(work / "splits", run_dir, start=StartingPoint(s.finetune_backbone, weights=weights),
             recipe="two_stage", image_size=s.finetune_size, seed=0, progress="lines",
             solver=SolverConfig(epochs=s.finetune_epochs, batch_size=s.finetune_batch),
             overwrite=True)  # a measurement: a second check with the same --work trains anew
    seconds = time.perf_counter() - started
    run = RunDir(run_dir)
    metrics, config, history, lr_table = run.metrics, run.config, run.history, run.lr_table
    resources = run.resources
    for name in ("history.csv", "resources.csv", "lr_table.csv", "metrics.json", "config.json"):
        if (run_dir / name).is_file():
            shutil.copyfile(run_dir / name, out / f"finetune_{name}")
    figure = plots.resource_dashboard(resources, history=history)
    figure.suptitle(f"Fine-tuning {s.finetune_backbone} ({device}): resources")
    figure.savefig(out / "finetune_dashboard.png", dpi=90)
    plots.training_curves({"finetune": history}).savefig(out / "finetune_curves.png", dpi=90)

    def gpu_value(key, digits=1):
        value = metrics.get(f"resources_{key}")
        if not gpu:
            return NO_GPU
        return round(value, digits) if isinstance(value, (int, float)) else "not recorded"

    multipliers = []
    for stage, rows in lr_table.groupby("stage", sort=False):
        counts = rows.groupby("multiplier").size()
        multipliers.append(f"{stage}: " + ", ".join(f"x{value:g} ({count} layers)"
                                                    for value, count in counts.items()))
    rows = [
        ["device", device],
        ["backbone", f"{s.finetune_backbone}, {s.finetune_size} px"],
        ["starting weights", weights_note],
        ["recipe", f"two_stage, {s.finetune_epochs} epochs, batch {s.finetune_batch}"],
        ["dtype policy", config.get("dtype_policy")],
        ["distribution", config.get("distribution") or "one device"],
        ["train / val / test images", " / ".join(str(metrics.get(f"{split}_images"))
                                                 for split in ("train", "val", "test"))],
        ["status", metrics.get("status")],
        ["test accuracy", metrics.get("test_accuracy")],
        ["val accuracy", metrics.get("val_accuracy")],
        ["training images/s (finetune, all callbacks)", metrics.get("images_per_second")],
        ["train seconds", metrics.get("train_seconds")],
        ["whole call seconds (cache, compile, evaluation)", round(seconds, 1)],
        ["learning-rate multipliers per stage", "; ".join(multipliers)],
        ["GPU utilisation, mean %", gpu_value("gpu_util_mean_percent")],
        ["GPU memory peak MiB", gpu_value("gpu_memory_peak_mib", 0)],
        ["GPU power mean W", gpu_value("gpu_power_mean_w")],
        ["GPU energy Wh", gpu_value("gpu_energy_wh", 3)],
        ["process RSS peak MiB", metrics.get("resources_process_rss_peak_mib")],
        ["CPU mean %", metrics.get("resources_cpu_mean_percent")],
        ["resource samples", len(resources)],
    ]
    return {"rows": [[key, value if not isinstance(value, float) else round(value, 4)]
                     for key, value in rows], "gpu": gpu,
            "keras": keras.__version__}


def _child_command(args, options: dict) -> list[str]:
    command = [sys.executable, str(Path(__file__).resolve()), "--out", args.out, "--work",
               args.work, "--child", json.dumps(options)]
    return command + (["--tiny"] if args.tiny else [])


def child_train(options: dict) -> None:
    """One training run for the resume step (a separate process so that it can be killed)."""
    from workbench.models import StartingPoint
    from workbench.training.solver import SolverConfig
    from workbench.training.train import finetune

    finetune(options["splits"], options["run_dir"],
             start=StartingPoint(options["backbone"], weights=None), recipe="caffe",
             image_size=options["image_size"], seed=options["seed"], progress="none",
             resume=options["resume"], overwrite=not options["resume"],
             solver=SolverConfig(epochs=options["epochs"], batch_size=options["batch_size"]))


def _checkpoint_epoch(run_dir: Path) -> int:
    from workbench.runs import RunDir

    try:
        return RunDir(run_dir).checkpoint_epoch or 0
    except (OSError, ValueError, KeyError):
        return 0


def step_resume(s: Settings, args, arg: str | None) -> dict:
    """Runs A and B (same seed, two processes) and C (killed mid-epoch, then resumed)."""
    from workbench.runs import RunDir

    work = Path(args.work)
    runs = work / "runs" / "resume"
    shutil.rmtree(runs, ignore_errors=True)
    base = {"splits": str(work / "splits"), "backbone": s.resume_backbone,
            "image_size": s.resume_size, "epochs": s.resume_epochs,
            "batch_size": s.resume_batch, "seed": 7, "resume": False}
    logs = Path(args.out) / "logs"

    def start(name, log_name=None, **extra):
        log = open(logs / f"resume-{log_name or name}.log", "w")
        process = subprocess.Popen(
            _child_command(args, {**base, "run_dir": str(runs / name), **extra}), stdout=log,
            stderr=subprocess.STDOUT)
        log.close()  # the child holds its own copy
        return process

    def finish(name, process):
        if process.wait() != 0:
            raise RuntimeError(f"resume run {name!r} failed (exit code {process.returncode}): "
                               f"see its log in logs/")

    # C is killed with SIGKILL half an epoch after its checkpoint of epoch kill_after, then
    # resumed in a fresh process. With a GPU, A and B run beside C (they share only the device
    # and each compiles for itself); on a CPU they would fight over the cores, so they follow.
    killed_dir = runs / "killed"
    child = start("killed")
    runs_a_b = {name: start(name) for name in ("a", "b")} if s.resume_parallel else {}
    seen, kill_note = {}, ""
    while child.poll() is None:
        epoch = _checkpoint_epoch(killed_dir)
        seen.setdefault(epoch, time.perf_counter())
        if epoch >= s.resume_kill_after:
            epoch_s = seen[epoch] - seen.get(epoch - 1, seen[epoch])
            time.sleep(0.5 * epoch_s)
            if child.poll() is None:
                child.send_signal(signal.SIGKILL)
                child.wait()
                kill_note = (f"SIGKILL {0.5 * epoch_s:.2f} s into epoch "
                             f"{_checkpoint_epoch(killed_dir) + 1} (last checkpoint: epoch "
                             f"{_checkpoint_epoch(killed_dir)})")
            break
        time.sleep(0.005)
    child.wait()
    if not kill_note:
        kill_note = f"not killed: the run ended first (exit code {child.returncode})"
    killed_metrics = RunDir(killed_dir).metrics
    killed_status = killed_metrics.get("status") if killed_metrics is not None \
        else "none (killed before the end)"
    for name in ("a", "b"):
        finish(name, runs_a_b[name] if name in runs_a_b else start(name))
    finish("killed", start("killed", "resumed", resume=True))

    def compare(name, other):
        first, second = RunDir(runs / "a"), RunDir(runs / other)
        history, column = _max_history_diff(first.history_path, second.history_path)
        weights = _max_weight_diff(first.model_file("final"), second.model_file("final"))
        accuracy = [run.metrics.get("test_accuracy") for run in (first, second)]
        return {"comparison": name, "history_max_abs_diff": history, "worst_column": column,
                "weights_max_abs_diff": weights, "test_accuracy_a": accuracy[0],
                "test_accuracy_other": accuracy[1]}

    config = json.loads((runs / "a" / "config.json").read_text())
    same = compare("same seed, two processes (A vs B)", "b")
    same["note"] = f"dtype policy {config.get('dtype_policy')}"
    resumed = compare("killed mid-run, then resume=True (A vs C)", "killed")
    resumed["note"] = f"{kill_note}; status when killed: {killed_status}"
    gpu = bool(config.get("dtype_policy", "").startswith("mixed"))
    return {"rows": [same, resumed], "gpu": gpu,
            "setup": f"{s.resume_backbone} {s.resume_size} px, recipe caffe (head lr_mult 10), "
                     f"{s.resume_epochs} epochs, batch {s.resume_batch}, seed 7"}


def step_cpu_gpu(s: Settings, args, arg: str | None) -> dict:
    from workbench.studies.throughput import throughput_table

    out = Path(args.out)
    result = throughput_table(list(s.cpu_gpu_models), batch_size=s.cpu_gpu_batch,
                              steps=s.cpu_gpu_steps, warmup=s.cpu_gpu_warmup, progress="none")
    result.table.to_csv(out / "cpu_gpu.csv", index=False, lineterminator="\n")
    (out / "cpu_gpu.md").write_text(result.to_markdown(), encoding="utf-8")
    result.plot().savefig(out / "cpu_gpu.png", dpi=90)
    return {"markdown": result.to_markdown()}


FEATURE_PATHS = (("cache off", "the whole model in every epoch"),
                 ("cache on", "the frozen backbone's features computed once, the head on them"))
AGREE_ACCURACY = 1e-4  # the two paths agree: accuracies this close, histories within the next
AGREE_HISTORY = 1e-3


def _count_feature_passes() -> dict:
    """Counts and times the passes of the frozen backbone over a split that the feature cache
    makes (``features.compute_features``) from now on in this process."""
    from workbench.training import features

    record, compute = {"passes": 0, "seconds": 0.0}, features.compute_features

    def counted(*args, **kwargs):
        started = time.perf_counter()
        try:
            return compute(*args, **kwargs)
        finally:
            record["passes"] += 1
            record["seconds"] += time.perf_counter() - started

    features.compute_features = counted
    return record


def _feature_run(s: Settings, args, name: str, weights: Path | None, passes: dict) -> dict:
    """One ``feature_extraction`` run on the digits, with the feature cache on or off."""
    from workbench.data.splitdir import SplitFolder
    from workbench.models import StartingPoint
    from workbench.runs import RunDir
    from workbench.training.options import Execution
    from workbench.training.solver import SolverConfig
    from workbench.training.train import finetune

    work = Path(args.work)
    for old in SplitFolder(work / "splits").cache_dir.glob("features-*"):
        old.unlink()  # kept by the finetune step's head stage: computed in this run instead
    passes.update(passes=0, seconds=0.0)
    run_dir = work / "runs" / f"features-{name.replace(' ', '-')}"
    started = time.perf_counter()
    finetune(work / "splits", run_dir, start=StartingPoint(s.features_backbone, weights=weights),
             recipe="feature_extraction", image_size=s.features_size, seed=0, progress="lines",
             augment="off",  # the cache applies only without (--tiny's few images turn it on)
             solver=SolverConfig(epochs=s.features_epochs, batch_size=s.features_batch),
             execution=Execution(cache_features=name == "cache on"), overwrite=True)
    seconds = time.perf_counter() - started
    run = RunDir(run_dir)
    epochs = [float(value) for value in run.history["seconds"]]
    return {"run_dir": str(run_dir), "whole call s": round(seconds, 2),
            "first epoch s": epochs[0], "later epochs, mean s":
                round(sum(epochs[1:]) / len(epochs[1:]), 3) if len(epochs) > 1 else None,
            "epochs total s": round(sum(epochs), 3),
            "features computed, s": round(passes["seconds"], 3) if passes["passes"] else None,
            "passes over a split to compute features": passes["passes"],
            "val accuracy": run.metrics.get("val_accuracy"),
            "test accuracy": run.metrics.get("test_accuracy"),
            "dtype policy": run.config.get("dtype_policy")}


def step_features(s: Settings, args, arg: str | None) -> dict:
    """``feature_extraction`` on the digits twice: the feature cache off, then on."""
    from workbench.runs import RunDir

    gpu, device = _device_name()
    weights, weights_note = _starting_weights(args, s.features_backbone)
    passes = _count_feature_passes()
    runs = {name: _feature_run(s, args, name, weights, passes) for name, _ in FEATURE_PATHS}
    slow, fast = (RunDir(runs[name]["run_dir"]) for name, _ in FEATURE_PATHS)
    history, column = _max_history_diff(slow.history_path, fast.history_path)
    weights_diff = _max_weight_diff(slow.model_file("final"), fast.model_file("final"))
    accuracy = max(abs((runs["cache on"][key] or 0.0) - (runs["cache off"][key] or 0.0))
                   for key in ("val accuracy", "test accuracy"))
    agree = accuracy <= AGREE_ACCURACY and history <= AGREE_HISTORY
    return {"gpu": gpu, "runs": runs, "agree": agree,
            "comparison": {"accuracy max |diff| (val, test)": accuracy,
                           "history max |diff|": history, "history worst column": column,
                           "final weights max |diff|": weights_diff},
            "setup": f"{device}, {s.features_backbone} at {s.features_size} px (weights: "
                     f"{weights_note}), recipe feature_extraction, no augmentation, "
                     f"{s.features_epochs} epochs, "
                     f"batch {s.features_batch}, seed 0, dtype policy "
                     f"{runs['cache on']['dtype policy']}"}


QUANTIZED_NOT_HERE = ("the quantized candidates (LiteRT float16, int8 dynamic-range, full int8) "
                      "run on the CPU's LiteRT interpreter, never on the GPU; "
                      "benchmarks/quantized.py measures them on a CPU with TensorFlow")


def step_quantized(s: Settings, args, arg: str | None) -> dict:
    """Why the quantized path is not measured here: its models run on the CPU only
    (:data:`QUANTIZED_NOT_HERE`), and without TensorFlow they cannot even be made."""
    try:
        import tensorflow as tf

        tf.lite.TFLiteConverter  # noqa: B018 (the converter that export_fast uses)
    except (ImportError, AttributeError) as error:
        return {"skipped": "skipped: quantized candidates not measured here: they are made by "
                           f"TensorFlow's LiteRT converter, missing here ({error}); and "
                           f"{QUANTIZED_NOT_HERE}"}
    return {"skipped": f"skipped: quantized candidates not measured here: {QUANTIZED_NOT_HERE}"}


STEPS = {"environment": step_environment, "data": step_data, "throughput": step_throughput,
         "timm": step_timm, "finetune": step_finetune, "resume": step_resume,
         "cpu_gpu": step_cpu_gpu, "features": step_features, "quantized": step_quantized,
         "timm_compiled": step_timm}
NEEDS = {"throughput": "data", "finetune": "data", "resume": "data", "features": "data"}


def run_step(args, settings: Settings) -> None:
    kind, _, arg = args.step.partition(":")
    result = STEPS[kind](settings, args, arg or None)
    part = Path(args.out) / "parts" / f"{_file_name(args.step)}.json"
    temporary = part.with_suffix(".tmp")
    temporary.write_text(json.dumps(result, indent=1, default=str), encoding="utf-8")
    os.replace(temporary, part)


# ----------------------------------------------------------------------------------------------
# The orchestrator: runs the steps under the budget, then writes the tables and the report
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Outcome:
    step: str
    status: str
    seconds: float = 0.0
    error: str = ""
    cpu_seconds: float = 0.0  # user + system time of the step's processes (its children too)


def _children_cpu() -> float:
    """CPU seconds (user + system) of this process's finished children and theirs."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _plan(settings: Settings) -> list[tuple[str, int]]:
    steps = ["environment", "data", *[f"throughput:{model}" for model in settings.models],
             "timm", "finetune", "resume", "cpu_gpu", "features", "quantized",
             *[f"timm_compiled:{model}" for model in settings.models]]
    boxes = dict(settings.boxes)
    return [(step, boxes.get(step, boxes[step.split(":")[0]])) for step in steps]


def _last_error(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines()
             if line.strip()] if log.is_file() else []
    errors = [line for line in lines if "Error" in line or "Exception" in line
              or line.startswith("Killed")]
    return (errors[-1] if errors else lines[-1] if lines else "no output")[:300]


def _step_env(step: str, settings: Settings, work: Path) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    if step.split(":")[0] in ("finetune", "resume"):
        # JAX otherwise takes 75% of the card at start, and the dashboard would show only that
        env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if settings.compile_cache:  # the steps' processes (and the resume runs) share compilations
        env.setdefault("JAX_COMPILATION_CACHE_DIR", str(work / "jax-cache"))
        env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    if settings.xla_flags:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {settings.xla_flags}".strip()
    return env


def _skip_reason(step: str, settings: Settings, selected, outcomes: dict,
                 out: Path) -> str | None:
    kind = step.split(":")[0]
    if selected and kind not in selected and step not in selected:
        return "skipped: not selected (--steps)"
    environment = _load_part(out, "environment")
    if settings is not TINY and kind != "environment" and not (environment or {}).get("gpu"):
        return "skipped: the Keras backend sees no GPU (the full sizes need one; see --tiny)"
    if kind == "timm_compiled":
        if not settings.timm_compile:
            return "skipped: --tiny (torch.compile takes minutes)"
        if importlib.util.find_spec("torch") is None:
            return "skipped: torch not installed"
    needed = NEEDS.get(kind)
    if needed and needed in outcomes and outcomes[needed].status != "ok":
        return f"skipped: the {needed} step did not finish"
    return None


def orchestrate(args, settings: Settings) -> int:
    out, work = Path(args.out), Path(args.work)
    for folder in (out / "logs", out / "parts", work):
        folder.mkdir(parents=True, exist_ok=True)
    budget = args.budget if args.budget is not None else settings.budget_s
    deadline = time.monotonic() + budget
    # a budget above the default stretches each step's limit alike (a busy CPU, a slow card)
    stretch = max(1.0, budget / settings.budget_s)
    selected = set(args.steps.split(",")) if args.steps else None
    if selected:
        selected |= {"environment", "data"}
    outcomes: dict[str, Outcome] = {}
    for step, box in _plan(settings):
        reason = _skip_reason(step, settings, selected, outcomes, out)
        left = deadline - time.monotonic() - RESERVE_S
        if reason is None and left < MIN_STEP_S:
            reason = f"skipped: out of time (budget {budget} s)"
        if reason is not None:
            outcomes[step] = Outcome(step, reason)
            print(f"[gpu-check] {step}: {reason}", flush=True)
            continue
        limit = int(min(box * stretch, left))
        command = [sys.executable, str(Path(__file__).resolve()), "--step", step, "--out",
                   str(out), "--work", str(work)] + (["--tiny"] if args.tiny else [])
        if args.weights:
            command += ["--weights", args.weights]
        log_path = out / "logs" / f"{_file_name(step)}.log"
        print(f"[gpu-check] {step}: running (limit {limit} s)", flush=True)
        started, cpu_before = time.monotonic(), _children_cpu()
        with open(log_path, "w") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                       env=_step_env(step, settings, work),
                                       start_new_session=True)
            try:
                code = process.wait(timeout=limit)
                status = "ok" if code == 0 else f"failed (exit code {code})"
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)  # the step and any process it started
                process.wait()
                status = f"timed out after {limit} s"
        seconds = time.monotonic() - started
        if status == "ok":  # a step may find that it does not apply here, and say why
            status = (_load_part(out, step) or {}).get("skipped", status)
        error = "" if status == "ok" or status.startswith("skipped") else _last_error(log_path)
        cpu = _children_cpu() - cpu_before
        outcomes[step] = Outcome(step, status, round(seconds, 1), error, round(cpu, 1))
        print(f"[gpu-check] {step}: {status} in {seconds:.1f} s ({cpu:.1f} CPU s)"
              + (f": {error}" if error else ""), flush=True)
        # the figure only when its numbers may have changed (drawing it takes a second)
        write_report(out, settings, outcomes, budget,
                     figure=step.split(":")[0] in ("throughput", "timm", "timm_compiled"))
    report = write_report(out, settings, outcomes, budget)
    print(report, flush=True)
    return 0


def _load_part(out: Path, step: str) -> dict | None:
    path = out / "parts" / f"{_file_name(step)}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _not_run(outcome: Outcome | None) -> str:
    if outcome is None:
        return "not run"
    if outcome.status.startswith("skipped"):
        return outcome.status
    return f"{outcome.status}: {outcome.error}" if outcome.error else outcome.status


def _throughput_rows(out: Path, settings: Settings, outcomes: dict) -> list[dict]:
    """One row per model and way, measured or saying why not."""
    rows = []
    for model in settings.models:
        for way in KERAS_WAYS + TIMM_WAYS:
            step = {"timm eager": "timm", "timm compiled": f"timm_compiled:{model}"}.get(
                way, f"throughput:{model}")
            part = _load_part(out, step) or {}
            found = [row for row in part.get("rows", [])
                     if row["model"] == model and row["way"] == way]
            if found:
                rows.append(found[0])
            else:
                rows.append({"model": model, "way": way, "images_per_second": None,
                             "note": _not_run(outcomes.get(step))})
    return rows


def _speed(rows: list[dict], model: str, way: str) -> float | None:
    for row in rows:
        if row["model"] == model and row["way"] == way:
            value = row.get("images_per_second")
            return float(value) if isinstance(value, (int, float)) else None
    return None


def _verdict(measured, target, *, higher_is_better=True) -> str:
    if measured is None:
        return "not measured"
    return "met" if (measured >= target if higher_is_better else measured <= target) else "missed"


def _throughput_sections(out: Path, settings: Settings, outcomes: dict, gpu: bool,
                         gpu_name: str, figure: bool = True) -> list[str]:
    rows = _throughput_rows(out, settings, outcomes)
    long_header = ["model", "way", "images_per_second", "framework", "device", "precision",
                   "image_size", "batch_size", "note"]
    sections = [write_table(
        out, "throughput", "Training throughput, every measurement", long_header,
        [[row.get(column) if not isinstance(row.get(column), float)
          else round(row[column], 1) for column in long_header] for row in rows],
        note=f"Images/s over {settings.steps} timed steps after {settings.warmup} warm-up steps "
             "(compilation excluded); each way in its own fit call.")]

    summary, checks = [], []
    for model in settings.models:
        speeds = {way: _speed(rows, model, way) for way in KERAS_WAYS + TIMM_WAYS}
        peers = {way: speeds[way] for way in PEERS if speeds[way] is not None}
        peer_way = max(peers, key=peers.get) if peers else None
        cached, synthetic = speeds["workbench cached"], speeds["synthetic tensors"]
        share = cached / synthetic if cached and synthetic else None
        over_peer = cached / peers[peer_way] if cached and peer_way else None
        summary.append([model, *[round(speeds[way], 1) if speeds[way] else "" for way in
                                 KERAS_WAYS + TIMM_WAYS],
                        round(share, 3) if share else "", peer_way or "",
                        round(over_peer, 3) if over_peer else ""])
        checks.append([f"{model}: workbench cached >= the faster peer", "ratio >= 1.00",
                       round(over_peer, 3) if over_peer else "",
                       _verdict(over_peer, 1.0) + (f" (peer: {peer_way})" if peer_way else
                                                   ": no peer measured")])
        checks.append([f"{model}: cached >= {SYNTHETIC_SHARE:.0%} of synthetic",
                       f"share >= {SYNTHETIC_SHARE}", round(share, 3) if share else "",
                       _verdict(share, SYNTHETIC_SHARE)])
    for model, target in H200_TARGETS.items():
        name = f"{model}: >= {target:,} img/s (workbench cached) on an H200"
        measured = _speed(rows, model, "workbench cached")
        if not gpu:
            checks.append([name, f">= {target}", "", NO_GPU])
        elif model not in settings.models:
            checks.append([name, f">= {target}", "", "not measured: model not in this run"])
        else:
            verdict = _verdict(measured, target)
            if "H200" not in gpu_name:
                verdict += f" (measured on {gpu_name}, not an H200)"
            checks.append([name, f">= {target}", round(measured, 1) if measured else "",
                           verdict])
    sections.append(write_table(
        out, "throughput_summary", "Training throughput per model (images/s)",
        ["model", *KERAS_WAYS, *TIMM_WAYS, "cached / synthetic", "faster peer",
         "cached / faster peer"], summary,
        note=f"{settings.image_size} px, batch {settings.batch_size}, {settings.precision} "
             "(timm: autocast). Empty cells: see the table of every measurement below."))
    sections.insert(0, write_table(out, "checks", "Checks against the targets",
                                   ["check", "target", "measured", "verdict"], checks))
    if figure:
        _plot_throughput(out, settings, rows)
    return sections


def _plot_throughput(out: Path, settings: Settings, rows: list[dict]) -> None:
    try:
        import numpy as np
        from matplotlib.figure import Figure
    except ImportError:
        return
    ways = KERAS_WAYS + TIMM_WAYS
    figure = Figure(figsize=(8, 3.6), layout="constrained")
    ax = figure.subplots()
    positions = np.arange(len(settings.models))
    width = 0.8 / len(ways)
    for index, way in enumerate(ways):
        values = [_speed(rows, model, way) or 0.0 for model in settings.models]
        ax.bar(positions + (index - (len(ways) - 1) / 2) * width, values, width, label=way)
    for model, target in H200_TARGETS.items():
        if model in settings.models:
            position = settings.models.index(model)
            ax.hlines(target, position - 0.4, position + 0.4, colors="black", linestyles=":")
    ax.set_xticks(positions, settings.models)
    ax.set(ylabel="training images/s", title=f"Training throughput, {settings.image_size} px, "
                                              f"batch {settings.batch_size} (dotted: H200 target)")
    ax.legend(fontsize=7, ncols=2)
    figure.savefig(out / "throughput.png", dpi=90)


def _features_sections(out: Path, outcomes: dict) -> list[str]:
    """The cached-features table (cache off against on) and the quantized path's line."""
    part = _load_part(out, "features")
    header = ["item", *[name for name, _ in FEATURE_PATHS]]
    if part:
        items = [key for key in part["runs"]["cache on"] if key not in ("run_dir", "dtype policy")]
        rows = [[item, *[part["runs"][name][item] for name, _ in FEATURE_PATHS]]
                for item in items]
        rows += [[item, "", value] for item, value in part["comparison"].items()]
        rows.append(["results agree", "", "yes" if part["agree"] else "NO"])
        note = (f"{part['setup']}. {'; '.join(f'{name}: {what}' for name, what in FEATURE_PATHS)}"
                f". Agree: accuracies within {AGREE_ACCURACY:g} and every history column within "
                f"{AGREE_HISTORY:g}. Both runs in one process, cache off first. Passes: the "
                "frozen backbone over the training and the validation images, once each (0: the "
                "stage trained the whole model).")
    else:
        rows, note = [["result", _not_run(outcomes.get("features")), ""]], ""
    sections = [write_table(out, "features", "Cached features: feature_extraction with the "
                            "frozen backbone computed once", header, rows, note=note)]
    sections.append("## Quantized candidates\n\n" + _not_run(outcomes.get("quantized")) + "\n")
    return sections


def write_report(out: Path, settings: Settings, outcomes: dict, budget: int, *,
                 figure: bool = True) -> str:
    """Writes every table from the parts so far, and report.md with all of them (and, with
    ``figure``, throughput.png)."""
    environment = _load_part(out, "environment")
    gpu = bool(environment and environment.get("gpu"))
    gpu_name = str(environment["info"].get("gpu name", "")) if environment else ""
    sections = []
    steps = [[o.step, o.status, o.seconds or "", o.cpu_seconds or "", o.error]
             for o in outcomes.values()]
    sections.append(write_table(out, "steps", "Steps",
                                ["step", "status", "seconds", "cpu_seconds", "error"], steps,
                                note=f"Budget {budget} s; each step in its own process; "
                                     "cpu_seconds: user + system time of its processes."))
    if environment:
        sections.append(write_table(out, "environment", "Environment", ["item", "value"],
                                    [[k, v] for k, v in environment["info"].items()]))
    sections += _throughput_sections(out, settings, outcomes, gpu, gpu_name, figure)

    finetune = _load_part(out, "finetune")
    rows = finetune["rows"] if finetune else [["result", _not_run(outcomes.get("finetune"))]]
    sections.append(write_table(
        out, "finetune", "Fine-tuning on the bundled digits (two_stage, per-layer rates)",
        ["item", "value"], rows,
        note="Files: finetune_history.csv, finetune_resources.csv, finetune_lr_table.csv, "
             "finetune_dashboard.png, finetune_curves.png."))

    resume = _load_part(out, "resume")
    header = ["comparison", "history_max_abs_diff", "worst_column", "weights_max_abs_diff",
              "test_accuracy_a", "test_accuracy_other", "note"]
    rows = ([[row.get(column) for column in header] for row in resume["rows"]] if resume else
            [[name, None, "", None, None, None, _not_run(outcomes.get("resume"))] for name in
             ("same seed, two processes (A vs B)",
              "killed mid-run, then resume=True (A vs C)")])
    note = (f"{resume['setup']}. " if resume else "") + \
        "No promise of bit-identity on a GPU; these are the distances."
    sections.append(write_table(
        out, "reproducibility", "Reproducibility: the same seed twice, and resume after a kill",
        header, rows, note=note))

    sections += _features_sections(out, outcomes)
    cpu_gpu = out / "cpu_gpu.md"
    if (out / "parts" / "cpu_gpu.json").is_file() and cpu_gpu.is_file():
        sections.append("## The batch-size study's throughput column: CPU against GPU\n\n"
                        + cpu_gpu.read_text(encoding="utf-8").split("\n", 2)[-1])
    else:
        sections.append("## The batch-size study's throughput column: CPU against GPU\n\n"
                        + _not_run(outcomes.get("cpu_gpu")) + "\n")
    title = (f"# GPU check: {gpu_name}" if gpu else "# GPU check: no GPU (CPU run)") + \
        (" (--tiny)" if settings is TINY else "")
    report = title + "\n\n" + "\n".join(sections)
    (out / "report.md").write_text(report, encoding="utf-8")
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder for the tables, figures and logs")
    parser.add_argument("--work", help="folder for data, caches and run directories "
                                       "(default: OUT/work)")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: the CPU test")
    parser.add_argument("--budget", type=int, help="seconds for all steps (default 430; "
                                                   "--tiny 420); a larger one stretches each "
                                                   "step's own limit alike")
    parser.add_argument("--steps", help="comma-separated step kinds to run (environment and "
                                        "data always run), e.g. throughput,timm")
    parser.add_argument("--weights", help="MobileNetV2 ImageNet no-top weights file for the "
                                          f"finetune step (default: build/gpu-wheels/**/"
                                          f"{WEIGHTS_GLOB})")
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.out = str(Path(args.out).resolve())
    args.work = str(Path(args.work).resolve()) if args.work else str(Path(args.out) / "work")
    settings = TINY if args.tiny else Settings()
    if args.child:
        child_train(json.loads(args.child))
        return 0
    if args.step:
        try:
            run_step(args, settings)
        except BaseException:
            traceback.print_exc()
            return 1
        return 0
    return orchestrate(args, settings)


if __name__ == "__main__":
    sys.exit(main())
