"""Augmentation: what it costs the host, and what it buys on the bundled task.

Speed, from a memory-mapped cache at batch 64 (the model's input 224 px; the augmented variants
read a cache stored 1.15x larger, 258 px, and serve 224 px crops), images per second:

* no augmentation (``Batches`` as training serves validation batches);
* the previous ``Augment(flip, zoom=0.1)`` (one PIL affine resampling per image, copied below
  as it was, since the library no longer has it);
* the new augmentation in the pipeline placement (crop, flip, rotation, colour in NumPy), and
  without rotation and colour;
* the model placement's host cost (the window copy ``Batches`` does; the rest runs in the
  model), and what its ``RandomAugment`` layer does per second on this machine's CPU, i.e. what
  it costs when there is no accelerator to run it on.

Each host variant runs through ``Batches.batch`` in one thread and through ``as_tf_dataset``
(tf.data, parallel).

Accuracy, on the bundled task as ``make demo`` runs it (notebooks 01-03): the small
``cifar_cnn`` pretrained on the rendered letters, then fine-tuned (recipe ``two_stage``, the
settings of notebook 03) on 5 images per digit, test accuracy on 50 held-out images per digit,
with augmentation off and on (no flips: digits are handed), over 3 seeds.

Prints the tables and writes them to ``benchmarks/results/augmentation.md``::

    .venv/bin/python benchmarks/augmentation.py               # both parts, ~6 min on 2 cores
    .venv/bin/python benchmarks/augmentation.py --no-accuracy  # the speed table only, ~1 min
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from input_pipeline import rate_for  # noqa: E402  (the same measurement as the cache rows)
from workbench.data.augment import Augment, stored_size  # noqa: E402
from workbench.data.pipeline import Batches  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "augmentation.md"
# --variants beyond finetune's texts ("off", "on", "on+model", ...): which part helps or hurts
PRESETS = {
    "crops-only": Augment(rotation=0.0, brightness=0.0, contrast=0.0, saturation=0.0),
    "mild-crops": Augment(scale=(0.8, 1.0)),
    "no-crops": Augment(scale=(1.0, 1.0), ratio=(1.0, 1.0)),
}
TARGET = 20_000  # images/s the host must serve at batch 64


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--images", type=int, default=512, help="images in the speed caches")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="time spent on each speed measurement")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds 0..N-1")
    parser.add_argument("--epochs", type=int, default=40, help="epochs of each target run")
    parser.add_argument("--source-per-class", type=int, default=400,
                        help="rendered letters per class for the source model (as make demo)")
    parser.add_argument("--source-model", type=Path, default=None,
                        help="a source .keras model to reuse (pretraining skipped)")
    parser.add_argument("--variants", default="off,on",
                        help="augment settings compared: finetune's augment texts ('on+model') "
                             f"or {', '.join(PRESETS)}")
    parser.add_argument("--no-accuracy", action="store_true", help="skip the accuracy part")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if min(args.images, args.image_size, args.batch_size, args.seeds, args.epochs) < 1 \
            or args.seconds <= 0:
        parser.error("--images, --image-size, --batch-size, --seeds, --epochs and --seconds "
                     "must be positive")
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    return args


# --- the previous pipeline augmentation, as it was, for comparison -----------------------------

def old_augment(batch: np.ndarray, rng: np.random.Generator, *, flip: bool = True,
                zoom: float = 0.1, translate: float = 0.0) -> np.ndarray:
    """The former ``Augment.apply``: one nearest-neighbour PIL affine resampling per image."""
    count, height, width = batch.shape[:3]
    scale = 1.0 - rng.uniform(0.0, zoom, count)
    x0, y0 = rng.uniform(0.0, 1.0 - scale, (2, count))
    dx, dy = rng.uniform(-translate, translate, (2, count))
    mirrored = rng.random(count) < 0.5 if flip else np.zeros(count, bool)
    out = np.empty_like(batch)
    for i in range(count):
        a, c = scale[i], (x0[i] - dx[i]) * width
        if mirrored[i]:
            a, c = -a, width - c
        e, f = scale[i], (y0[i] - dy[i]) * height
        image = Image.frombuffer("RGB", (width, height), np.ascontiguousarray(batch[i]),
                                 "raw", "RGB", 0, 1)
        out[i] = np.asarray(image.transform((width, height), Image.AFFINE, (a, 0, c, 0, e, f),
                                            resample=Image.NEAREST, fillcolor=(0, 0, 0)))
    return out


# --- speed ---------------------------------------------------------------------------------------

def photo_like_cache(folder: Path, count: int, side: int) -> np.memmap:
    """A memory-mapped uint8 cache of smooth random pictures (what build_cache would hold)."""
    rng = np.random.default_rng(0)
    cache = np.lib.format.open_memmap(folder / f"cache-{side}.npy", mode="w+", dtype=np.uint8,
                                      shape=(count, side, side, 3))
    for i in range(count):
        small = rng.integers(0, 256, (side // 16, side // 16, 3), dtype=np.uint8)
        cache[i] = np.asarray(Image.fromarray(small).resize((side, side), Image.BILINEAR))
    cache.flush()
    return np.load(folder / f"cache-{side}.npy", mmap_mode="r")


def batch_loop(batches: Batches, transform=None):
    """``Batches.batch`` over consecutive epochs in this thread, optionally transformed."""
    step = iter(range(10**9))

    def run_once():
        index = next(step)
        epoch, within = divmod(index, batches.steps_per_epoch)
        x, _ = batches.batch(epoch, within)
        if transform is not None:
            x = transform(x, np.random.default_rng([epoch, within]))
        return len(x)
    return run_once


def tf_stream(batches: Batches):
    stream = iter(batches.as_tf_dataset())

    def run_once():
        return len(next(stream)[1])
    return run_once


def layer_rate(seconds: float, augment: Augment, batch_size: int, side: int) -> float:
    """Images/s of the RandomAugment layer (training mode, compiled) on this machine's CPU."""
    import keras

    from workbench.models import RandomAugment

    layer = RandomAugment(augment, seed=0)
    batch = keras.ops.convert_to_tensor(
        np.random.default_rng(0).uniform(0, 255, (batch_size, side, side, 3)).astype("float32"))
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        step = tf.function(lambda x: layer(x, training=True), autograph=False)
    else:
        step = lambda x: layer(x, training=True)  # noqa: E731

    def run_once():
        keras.ops.convert_to_numpy(step(batch)[0, 0, 0])
        return batch_size
    return rate_for(seconds, run_once)


def measure_speed(args) -> list[tuple]:
    side = args.image_size
    stored = stored_size(side, 1.15)
    pipeline = Augment(flip=True, placement="pipeline")
    geometric = Augment(flip=True, rotation=0.0, brightness=0.0, contrast=0.0, saturation=0.0,
                        placement="pipeline")
    in_model = Augment(flip=True, placement="model")
    rows = []
    with tempfile.TemporaryDirectory(prefix="augmentation-bench-") as temp:
        print("writing the caches...", file=sys.stderr)
        plain_cache = photo_like_cache(Path(temp), args.images, side)
        large_cache = photo_like_cache(Path(temp), args.images, stored)
        labels = np.arange(args.images) % 10
        size = args.batch_size

        def batches(cache, augment=None):
            return Batches(cache, labels, batch_size=size, seed=0, augment=augment,
                           image_size=side, drop_remainder=True)

        variants = [
            ("no augmentation", side, batches(plain_cache), True),
            ("previous Augment(flip, zoom=0.1), PIL per image", side,
             (batches(plain_cache), lambda x, rng: old_augment(x, rng)), False),
            ("pipeline: crop + flip + rotation + colour (NumPy)", stored,
             batches(large_cache, pipeline), True),
            ("pipeline: crop + flip only (NumPy)", stored, batches(large_cache, geometric),
             True),
            ("model placement: host part (window copy)", stored,
             batches(large_cache, in_model), True),
        ]
        for name, stored_side, served, with_tf in variants:
            print(f"  {name}...", file=sys.stderr)
            loop = batch_loop(*served) if isinstance(served, tuple) else batch_loop(served)
            one_thread = rate_for(args.seconds, loop)
            parallel = rate_for(args.seconds, tf_stream(served)) if with_tf else None
            rows.append((name, stored_side, one_thread, parallel))
        print("  RandomAugment layer on the CPU...", file=sys.stderr)
        rows.append(("model placement: the RandomAugment layer itself, on this CPU", side,
                     None, layer_rate(args.seconds, in_model, size, side)))
    return rows


def speed_table(rows: list[tuple], args) -> str:
    baseline = rows[0][3] or rows[0][2]
    lines = ["| variant | stored px | img/s, Batches.batch (1 thread) | img/s, tf.data "
             "(parallel) | vs none (tf.data) | >= 20,000 |",
             "|---|---:|---:|---:|---:|---|"]
    for name, stored_side, one_thread, parallel in rows:
        best = max(value for value in (one_thread, parallel) if value is not None)
        lines.append(
            f"| {name} | {stored_side} | {'' if one_thread is None else f'{one_thread:,.0f}'} | "
            f"{'' if parallel is None else f'{parallel:,.0f}'} | "
            f"{'' if parallel is None else f'{parallel / baseline:.2f}x'} | "
            f"{'yes' if best >= TARGET else 'NO'} |")
    notes = (f"Batch {args.batch_size}, {args.images} smooth random pictures per cache, served "
             f"at {args.image_size} px; each rate over {args.seconds:g} s. The model "
             "placement's layer row is images/s through `RandomAugment` in training mode "
             "(bilinear crop + rotation + flip + colour, float32) on this machine's CPU: its "
             "cost inside a training step when no accelerator runs it. "
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
             f"Python {platform.python_version()}.")
    return "\n".join(lines) + "\n\n" + notes + "\n"


# --- accuracy ------------------------------------------------------------------------------------

def bundled_task(folder: Path, args) -> tuple[Path, Path]:
    """The demo's target split (5,rest,50 per digit) and its source model."""
    from workbench.data import sample
    from workbench.data.split import prepare
    from workbench.models import StartingPoint
    from workbench.training.solver import SolverConfig
    from workbench.training.train import finetune

    print("writing the bundled target task...", file=sys.stderr)
    sample.write_target(folder / "data")  # writes data/target/<digit>/
    prepare(folder / "data" / "target", folder / "splits" / "target", counts=(5, "rest", 50),
            min_per_class=10, progress="none")
    if args.source_model is not None and args.source_model.is_file():
        return folder / "splits" / "target", args.source_model
    print("pretraining the source model (notebook 02's settings)...", file=sys.stderr)
    sample.write_source(folder / "data", per_class=args.source_per_class)
    prepare(folder / "data" / "source", folder / "splits" / "source", val=0.1, test=0.1,
            progress="none")
    run = finetune(folder / "splits" / "source", folder / "source",
                   start=StartingPoint("cifar_cnn", weights=None), recipe="scratch",
                   image_size=32, augment="off",
                   solver=SolverConfig(optimizer="adam", base_lr=0.003, epochs=8,
                                       batch_size=32, lr_policy="cosine", weight_decay=5e-4),
                   progress="none")
    model = run.model_path("final")
    if args.source_model is not None:
        args.source_model.parent.mkdir(parents=True, exist_ok=True)
        args.source_model.write_bytes(model.read_bytes())
    return folder / "splits" / "target", model


def measure_accuracy(args) -> dict:
    from workbench.training.solver import SolverConfig
    from workbench.training.train import finetune

    solver = SolverConfig(optimizer="sgd", base_lr=0.01, epochs=args.epochs, batch_size=16,
                          lr_policy="cosine", weight_decay=5e-4, test_interval=5)
    results = {variant: [] for variant in args.variants}
    with tempfile.TemporaryDirectory(prefix="augmentation-task-") as temp:
        splits, source = bundled_task(Path(temp), args)
        for seed in range(args.seeds):
            for variant in args.variants:
                started = time.monotonic()
                run = finetune(splits, Path(temp) / "runs" / f"{variant}-{seed}", start=source,
                               recipe="two_stage", image_size=32, solver=solver, seed=seed,
                               augment=PRESETS.get(variant, variant), progress="none")
                results[variant].append((run.metrics["test_accuracy"],
                                         time.monotonic() - started))
                print(f"seed {seed}, augment {variant}: test accuracy "
                      f"{run.metrics['test_accuracy']:.3f}", file=sys.stderr, flush=True)
    return results


def accuracy_table(results: dict, args) -> str:
    lines = ["| augment | test accuracy (mean ± std) | per seed | seconds per run |",
             "|---|---|---|---:|"]
    for variant, runs in results.items():
        accuracy = np.array([a for a, _ in runs])
        seconds = np.mean([s for _, s in runs])
        lines.append(f"| `{variant}` | {accuracy.mean():.3f} ± {accuracy.std():.3f} | "
                     f"{', '.join(f'{a:.3f}' for a in accuracy)} | {seconds:.0f} |")
    notes = ("The bundled task as `make demo` runs it: `cifar_cnn` pretrained on the rendered "
             "letters (notebook 02's settings), fine-tuned with recipe `two_stage` at 32 px on "
             "5 training images per digit (split 5,rest,50), SGD 0.01 cosine, weight decay "
             f"5e-4, batch 16, {args.epochs} epochs (notebook 03's settings), test accuracy on "
             f"50 held-out images per digit; seeds 0..{args.seeds - 1} (initialisation, order, "
             "augmentation). `on`: `Augment()` (crops of 50-100% of the area, aspect 3/4-4/3, "
             "rotation up to 10 degrees, brightness/contrast/saturation up to 20%, no flips) "
             "in the pipeline; the sample images are 32 px files, so the cache is not stored "
             "larger (no upsampling) and the crops come from the 32 px images themselves.")
    return "\n".join(lines) + "\n\n" + notes + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    parts = ["# Augmentation", "", "Written by `benchmarks/augmentation.py`.", "",
             "## Speed: images/s from the cache", ""]
    parts.append(speed_table(measure_speed(args), args))
    if not args.no_accuracy:
        parts += ["## Accuracy: augmentation against none on the bundled task", "",
                  accuracy_table(measure_accuracy(args), args)]
    text = "\n".join(parts)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
