"""Input pipeline throughput: decoding JPEG files, and serving shuffled batches from the cache.

Measured side by side in one run, on synthetic photo-like 500x375 JPEGs (quality 90) written to a
temporary folder and read once beforehand so the disk is out of the picture:

* from files, decode + resize to 224 px with 1 and 2 threads: ``build_cache`` (PIL, writes the
  memory-mapped cache) against the reference ``tf.io.read_file`` + ``tf.io.decode_jpeg`` +
  ``tf.image.resize`` in ``tf.data`` with ``num_parallel_calls`` 1 and 2;
* the same with bare Pillow (``Image.open``, ``load``, the Hamming resize ``images.load_array``
  uses here, ``np.asarray``, nothing written) in a thread pool: the peer floor that says how much
  of the cache build is Pillow's own decode and resize, and how much the workbench's;
* the CPU time per image of each file row (all threads of the process; it leaves out the waits
  for a core, so it still compares the decoders when other processes load the machine), and the
  PSNR of each decoder's 224 px output against the exact area resize of the full decode
  (``tests/photo_data.py``) on the first images: the quality each buys with its time;
* from the cache, shuffled batches of 64 and 128 at 224 px (``Batches.epoch``, with and without
  augmentation, and ``Batches.as_tf_dataset``) against plain random batches from the memmap;
* ``scan`` of 12-MP (4000x3000) photo-like JPEGs, files per second, validating each JPEG by a
  full decode against a draft decode at 1/8 scale (``decode_jpeg="full"`` / ``"draft"``).

Prints a table and writes it to ``benchmarks/results/input_pipeline.md``.

    .venv/bin/python benchmarks/input_pipeline.py               # 400 images, ~1 min on 2 cores
    .venv/bin/python benchmarks/input_pipeline.py --quick       # a quick look, ~15 s
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from PIL import Image, ImageDraw, ImageFilter  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import photo_data  # noqa: E402

from workbench._io import atomic_path  # noqa: E402
from workbench.data import images  # noqa: E402
from workbench.data.augment import Augment  # noqa: E402
from workbench.data.cache import build_cache  # noqa: E402
from workbench.data.pipeline import Batches  # noqa: E402
from workbench.data.scan import scan  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "input_pipeline.md"
FILE_TARGET = 0.9  # ours / reference, from files
CACHE_TARGET = 20_000  # images/s of shuffled batches from the cache
DRAFT_TARGET = 3.0  # scan of 12-MP JPEGs, draft / full validation
QUICK = {"images": 60, "repeats": 2, "seconds": 0.5, "photos": 4}  # --quick: a look, not a table
QUALITY_IMAGES = 16  # images whose PSNR against the exact area resize is measured


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--images", type=int, default=400, help="synthetic JPEGs to generate")
    parser.add_argument("--image-size", type=int, default=224, help="output side in pixels")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of each file measurement; the best is reported")
    parser.add_argument("--seconds", type=float, default=2.0,
                        help="minimum time spent on each cache measurement")
    parser.add_argument("--photos", type=int, default=24,
                        help="12-MP JPEGs to generate for the scan rows")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--quick", action="store_true",
                        help="defaults for a quick look: " + ", ".join(
                            f"--{name} {value:g}" for name, value in QUICK.items())
                        + " (options given explicitly still win)")
    if parser.parse_known_args(argv)[0].quick:
        parser.set_defaults(**QUICK)
    args = parser.parse_args(argv)
    if min(args.images, args.image_size, args.repeats, args.photos) < 1 or args.seconds <= 0:
        parser.error("--images, --image-size, --repeats, --photos and --seconds must be "
                     "positive")
    return args


def make_photos(folder: Path, count: int, *, seed: int = 0) -> list[str]:
    """Writes ``count`` 500x375 JPEGs that compress like photos: gradients, shapes, noise."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:375, 0:500].astype(np.float32)
    names = []
    for i in range(count):
        base = np.stack([rng.uniform(40, 200) + rng.uniform(-0.3, 0.3) * rows
                         + rng.uniform(-0.3, 0.3) * cols
                         + 30 * np.sin(cols / rng.uniform(20, 80) + rng.uniform(0, 6))
                         for _ in range(3)], axis=-1)
        image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(4, 10))):
            x0, y0 = rng.uniform(0, 450), rng.uniform(0, 330)
            box = [x0, y0, x0 + rng.uniform(20, 200), y0 + rng.uniform(20, 150)]
            color = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=color)
        image = image.filter(ImageFilter.GaussianBlur(1.2))
        noisy = np.asarray(image, np.float32) + rng.normal(0, 6, (375, 500, 3))
        name = f"photo{i:04d}.jpg"
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(folder / name, quality=90)
        names.append(name)
    return names


def make_12mp_photos(folder: Path, count: int, *, seed: int = 1) -> None:
    """Writes ``count`` 4000x3000 JPEGs (quality 90, ~3 MB like a phone's) into ``folder/a/``:
    a blurred random picture enlarged, plus sensor-like noise; every other one EXIF-rotated."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(-8, 9, (3000, 4000, 3), dtype=np.int16)  # shared: it is slow to draw
    (folder / "a").mkdir(parents=True)
    for i in range(count):
        small = rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)
        base = Image.fromarray(small).filter(ImageFilter.GaussianBlur(3)).resize((4000, 3000),
                                                                                 Image.BICUBIC)
        pixels = np.asarray(base, np.int16) + np.roll(noise, i, axis=1)
        exif = Image.Exif()
        exif[0x0112] = 6 if i % 2 else 1
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
            folder / f"a/photo{i:03d}.jpg", quality=90, exif=exif.tobytes())


def measure_scan(args, folder: Path) -> list[tuple]:
    """Files/s of ``scan`` over the 12-MP JPEGs, full against draft validation."""
    for file in (folder / "a").iterdir():  # into the page cache
        file.read_bytes()
    rows = []
    for threads in args.threads:
        rates = best_rates({how: (lambda how=how: scan(folder, decode_jpeg=how, workers=threads,
                                                      progress="none"))
                            for how in ("full", "draft")}, args.photos, args.repeats)
        (full, full_cpu), (draft, draft_cpu) = rates["full"], rates["draft"]
        ratio = draft / full
        rows.append(("scan: 12-MP JPEGs, full decode", threads, full, full_cpu, 1.0, "", ""))
        rows.append(("scan: 12-MP JPEGs, draft decode (1/8 scale)", threads, draft, draft_cpu,
                     ratio, f">= {DRAFT_TARGET:g}x full", "yes" if ratio >= DRAFT_TARGET else "NO"))
    return rows


def best_rates(runs: dict, count: int, repeats: int) -> dict:
    """``(images per second, CPU ms per image)`` of the fastest call of each ``run()``, taking
    turns so that load from other processes on the machine falls on all of them alike; the CPU
    time is the process's (all its threads) in that call."""
    best = dict.fromkeys(runs, (float("inf"), float("inf")))
    for _ in range(repeats):
        for name, run in runs.items():
            started, cpu = time.perf_counter(), time.process_time()
            run()
            best[name] = min(best[name], (time.perf_counter() - started,
                                          time.process_time() - cpu))
    return {name: (count / seconds, 1000 * cpu / count) for name, (seconds, cpu) in best.items()}


def rate_for(seconds: float, run_once) -> float:
    """Images per second of ``run_once()`` (which returns an image count), run for ``seconds``."""
    run_once()  # warm up
    images, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        images += run_once()
    return images / (time.perf_counter() - started)


def tf_decode(size: int):
    """The reference's decode of one file: ``tf.io.decode_jpeg`` then ``tf.image.resize``."""
    import tensorflow as tf

    def decode(path):
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        return tf.image.resize(image, (size, size))
    return decode


def tf_reference(files: list[str], size: int, threads: int):
    """The tf.data reference decoder with ``threads`` parallel calls and threads in all."""
    import tensorflow as tf

    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1
    dataset = (tf.data.Dataset.from_tensor_slices(files)
               .map(tf_decode(size), num_parallel_calls=threads).batch(32).with_options(options))

    def run():
        for _ in dataset:
            pass
    return run


def pillow_one(path: str, size: int) -> np.ndarray:
    """``load_array(path, size)``'s pixel work with bare Pillow: the same DCT scale
    (``images.draft_jpeg``) and resize, no validation, EXIF or message collection."""
    image = Image.open(path)
    box = images.draft_jpeg(image, size)
    image.load()
    if box is None and image.size == (size, size):
        return np.asarray(image)
    return np.asarray(images.resize(image, size, box=box))


def pillow_floor(files: list[str], size: int, threads: int):
    """:func:`pillow_one` over ``files`` in a pool of ``threads``."""
    def run():
        with ThreadPoolExecutor(max_workers=threads) as pool:
            for _ in pool.map(lambda path: pillow_one(path, size), files):
                pass
    return run


def psnr_note(files: list[str], size: int, cache: np.ndarray) -> str:
    """The PSNR of tf.data's and the cache's pixels against the exact area resize of the full
    decode, over the first images."""
    decode = tf_decode(size)
    ours, theirs = [], []
    for i, path in enumerate(files[:QUALITY_IMAGES]):
        full = np.asarray(Image.open(path).convert("RGB"))
        reference = photo_data.area_resize(full, (size, size))
        ours.append(photo_data.psnr(cache[i], reference))
        theirs.append(photo_data.psnr(np.asarray(decode(path)), reference))
    return (f"PSNR against the exact area resize of the full decode, over the first "
            f"{len(ours)} images: build_cache {np.mean(ours):.1f} dB (lowest {min(ours):.1f}), "
            f"tf.data {np.mean(theirs):.1f} dB (lowest {min(theirs):.1f}).")


def measure_files(args, folder: Path, names: list[str]) -> tuple[list[tuple], np.memmap, str]:
    files = [str(folder / name) for name in names]
    for file in files:  # into the page cache, so both sides measure decoding, not the disk
        Path(file).read_bytes()
    rows, cache = [], None
    for threads in args.threads:
        builds = iter(range(10**6))

        def build():
            nonlocal cache
            cache = build_cache(names, root=folder, image_size=args.image_size,
                                cache_dir=folder / f"cache{threads}-{next(builds)}",
                                workers=threads, progress="none")
        rates = best_rates({"reference": tf_reference(files, args.image_size, threads),
                            "ours": build,
                            "floor": pillow_floor(files, args.image_size, threads)},
                           len(files), args.repeats)
        (reference, reference_cpu), (ours, ours_cpu) = rates["reference"], rates["ours"]
        ratio = ours / reference
        rows.append(("files: tf.data read+decode_jpeg+resize (reference)", threads,
                     reference, reference_cpu, 1.0, "", ""))
        met = "yes" if ratio >= FILE_TARGET else "NO"
        rows.append(("files: build_cache (PIL, writes the memmap)", threads, ours, ours_cpu,
                     ratio, f">= {FILE_TARGET}x reference", met))
        rows.append(("files: bare Pillow decode+resize, same scale and filter (peer floor)",
                     threads, *rates["floor"], rates["floor"][0] / reference, "", ""))
    assert np.array_equal(cache[0], pillow_one(files[0], args.image_size))  # the same pixels
    return rows, cache, psnr_note(files, args.image_size, cache)


def measure_cache(args, cache: np.memmap) -> list[tuple]:
    labels = np.arange(len(cache)) % 10
    rng = np.random.default_rng(0)
    rows = []
    for batch_size in args.batch_sizes:
        def plain():  # the baseline: random indices straight from the memmap
            picked = np.sort(rng.choice(len(cache), min(batch_size, len(cache)), replace=False))
            return len(np.ascontiguousarray(cache[picked]))
        baseline = rate_for(args.seconds, plain)
        rows.append((f"cache: plain memmap random batch {batch_size} (baseline)", 1, baseline,
                     None, None, "", ""))
        variants = [("Batches.epoch", None, "epoch"),
                    ("Batches.epoch + Augment(flip, in the pipeline)",
                     Augment(flip=True, placement="pipeline"), "epoch"),
                    ("Batches.as_tf_dataset", None, "tf")]
        for label, augment, how in variants:
            batches = Batches(cache, labels, batch_size=batch_size, seed=0, augment=augment)
            epochs = iter(range(10**6))
            if how == "epoch":
                def run_once():
                    return sum(len(y) for _, y in batches.epoch(next(epochs)))
            else:
                stream = iter(batches.as_tf_dataset())

                def run_once():
                    return sum(len(next(stream)[1]) for _ in range(batches.steps_per_epoch))
            rate = rate_for(args.seconds, run_once)
            target_met = rate >= CACHE_TARGET
            rows.append((f"cache: {label}, batch {batch_size}", 1, rate, None, rate / baseline,
                         f">= {CACHE_TARGET:,} img/s", "yes" if target_met else "NO"))
    return rows


def format_table(rows: list[tuple], args, extra: str) -> str:
    lines = ["| measurement | threads | images/s | CPU ms/image | ratio | target | met |",
             "|---|---:|---:|---:|---:|---|---|"]
    for name, threads, rate, cpu_ms, ratio, target, met in rows:
        ratio_text = "" if ratio is None else f"{ratio:.2f}x"
        rate_text = f"{rate:,.0f}" if rate >= 100 else f"{rate:.1f}"  # 12-MP files: a few/s
        cpu_text = "" if cpu_ms is None else f"{cpu_ms:.2f}"
        lines.append(f"| {name} | {threads} | {rate_text} | {cpu_text} | {ratio_text} | {target} "
                     f"| {met} |")
    notes = (f"{args.images} synthetic 500x375 JPEGs (quality 90) resized to "
             f"{args.image_size}x{args.image_size}; file rows are the best of {args.repeats} "
             f"runs, ratio vs the tf.data reference with the same threads; CPU ms/image: the "
             f"process's CPU time (all threads) in that run, which leaves out waits for a core; "
             f"cache rows ran {args.seconds:g} s each, ratio vs the plain memmap baseline; scan "
             f"rows: files/s over {args.photos} synthetic 4000x3000 JPEGs (quality 90), best of "
             f"{args.repeats}, ratio vs the full decode with the same threads. {extra} "
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
             f"Python {platform.python_version()}, Pillow {Image.__version__}.")
    return "\n".join(lines) + "\n\n" + notes + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="input-pipeline-") as temp:
        folder = Path(temp)
        print(f"writing {args.images} synthetic JPEGs...", file=sys.stderr)
        names = make_photos(folder, args.images)
        print("decoding from files...", file=sys.stderr)
        rows, cache, quality = measure_files(args, folder, names)
        print("batches from the cache...", file=sys.stderr)
        rows += measure_cache(args, cache)
        del cache
    with tempfile.TemporaryDirectory(prefix="input-pipeline-scan-") as temp:
        print(f"writing {args.photos} 12-MP JPEGs...", file=sys.stderr)
        make_12mp_photos(Path(temp), args.photos)
        print("scanning them...", file=sys.stderr)
        rows += measure_scan(args, Path(temp))
    extra = (f"{quality} Load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the "
             "end (other processes share the CPUs).")
    table = format_table(rows, args, extra)
    print(table)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.output) as path:
        Path(path).write_text("# Input pipeline throughput\n\n"
                              "Written by `benchmarks/input_pipeline.py`.\n\n" + table)
    print(f"written to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
