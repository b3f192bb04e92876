"""Cold start: from a new process to the first top-5, ``workbench predict`` beside the bare runtimes.

For each model (default: MobileNetV2 at 224 px and the small ``cifar_cnn`` at 32 px, random
weights), a real run directory is made and exported as ``benchmarks/predict_latency.py`` makes
it (a few digits, one epoch, ``export_fast``: LiteRT and ONNX, the faster one on this machine
chosen); ``--run RUN_DIR`` measures a run that is already exported instead. The image is a JPEG
at twice the model's side. Each path starts a new Python process, which ends once it has
printed the top-5:

=============================  ===================================================================
``python -c pass``             the interpreter alone: what no Python path can go below
``workbench predict RUN IMG``  the command line as a user types it (the console script): parse,
                               load the run's export, decode, predict, print the top-5 table
``Classifier.load + predict``  the Python API: ``Classifier.load(RUN).predict(IMAGE)``, printed
``bare LiteRT``                a minimal script: PIL decode and resize, ``ai_edge_litert``
                               ``Interpreter`` on the run's ``model.tflite``, top-5 printed
``bare ONNX Runtime``          the same with an ``onnxruntime.InferenceSession`` on ``model.onnx``
=============================  ===================================================================

The time is the wall time from starting the process to the fifth line of its top-5 on its
standard output (unbuffered), the median of ``--runs`` rounds after one unrecorded round that
warms the OS file cache and writes the bytecode (into a temporary ``PYTHONPYCACHEPREFIX``, as an
installed package has its ``.pyc`` files; this checkout's sources would otherwise be compiled
anew by every process where ``PYTHONDONTWRITEBYTECODE`` is set). The paths take turns within
each round, so that load from other processes falls on all alike. Beside it, the CPU seconds
(user + system) the process used, median, which load from other processes inflates less; and
which of pandas, SciPy, TensorFlow, Keras and JAX it imported (none is the point).

Prints one table and writes it to ``benchmarks/results/cold_start.md``, with the CPU, its
instruction set and the load average. Cold starts are short and load stretches them: a table
measured on a busy machine says so, and is to be re-run on a quiet one.

    .venv/bin/python benchmarks/cold_start.py                       # ~3 min on 2 cores
    .venv/bin/python benchmarks/cold_start.py --models cifar_cnn:32 --runs 3
    .venv/bin/python benchmarks/cold_start.py --run runs/flowers --image photo.jpg
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from predict_latency import build_run, sample_jpeg  # noqa: E402  (the same run as its table)

RESULTS = Path(__file__).resolve().parent / "results" / "cold_start.md"
TARGET_S = 0.5  # issue 23: `workbench predict RUN IMAGE`, a new process to the first top-5
HEAVY = ("pandas", "scipy", "tensorflow", "keras", "jax")

# Each script prints the top-5, one line each, then (after the timed part) what it imported.
_REPORT = """
import sys
print("IMPORTED", ",".join(sorted({m.split(".")[0] for m in sys.modules} & set(HEAVY))))
"""
_API = """
from workbench import Classifier
for row in Classifier.load(RUN).predict(IMAGE, top_k=5):
    print(row["label"], row["probability"])
"""
_BARE_LITERT = """
import numpy as np
from PIL import Image
from ai_edge_litert.interpreter import Interpreter
labels = open(RUN + "/labels.txt", encoding="utf-8").read().splitlines()
interpreter = Interpreter(model_path=RUN + "/export/model.tflite", num_threads=2)
source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
if source["shape"][0] != 1:
    interpreter.resize_tensor_input(source["index"], [1, *source["shape"][1:]])
interpreter.allocate_tensors()
side = int(source["shape"][1])
pixels = Image.open(IMAGE).convert("RGB").resize((side, side), Image.BILINEAR)
interpreter.set_tensor(source["index"], np.asarray(pixels, np.float32)[None])
interpreter.invoke()
probabilities = interpreter.get_tensor(target["index"])[0]
for index in np.argsort(-probabilities)[:5]:
    print(labels[index], probabilities[index])
"""
_BARE_ONNX = """
import numpy as np
import onnxruntime
from PIL import Image
labels = open(RUN + "/labels.txt", encoding="utf-8").read().splitlines()
options = onnxruntime.SessionOptions()
options.intra_op_num_threads, options.inter_op_num_threads = 2, 1
session = onnxruntime.InferenceSession(RUN + "/export/model.onnx", options,
                                       providers=["CPUExecutionProvider"])
source = session.get_inputs()[0]
side = int(source.shape[1])
pixels = Image.open(IMAGE).convert("RGB").resize((side, side), Image.BILINEAR)
probabilities = session.run(None, {source.name: np.asarray(pixels, np.float32)[None]})[0][0]
for index in np.argsort(-probabilities)[:5]:
    print(labels[index], probabilities[index])
"""
PATHS = ("python -c pass", "workbench predict RUN IMG", "Classifier.load + predict",
         "bare LiteRT", "bare ONNX Runtime")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["mobilenet_v2:224", "cifar_cnn:32"],
                        help="BACKBONE:SIZE pairs, each trained and exported here")
    parser.add_argument("--run", type=Path, help="an exported run directory to measure instead")
    parser.add_argument("--image", type=Path, help="with --run: the image (default: a JPEG "
                                                   "made from the run's first test image)")
    parser.add_argument("--runs", type=int, default=7, help="timed new processes per path")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error(f"--runs must be >= 1, received: {args.runs}")
    if args.image is not None and args.run is None:
        parser.error("--image needs --run")
    return args


def command(path: str, run_dir: Path, image: Path) -> list[str]:
    """The command line of one path."""
    if path == "python -c pass":
        return [sys.executable, "-c", "pass"]
    if path == "workbench predict RUN IMG":
        script = Path(sys.executable).with_name("workbench")  # the console script, if installed
        start = [str(script)] if script.is_file() else [sys.executable, "-m", "workbench.cli"]
        return [*start, "predict", str(run_dir), str(image)]
    body = {"Classifier.load + predict": _API, "bare LiteRT": _BARE_LITERT,
            "bare ONNX Runtime": _BARE_ONNX}[path]
    setup = f"HEAVY = {HEAVY!r}\nRUN, IMAGE = {str(run_dir)!r}, {str(image)!r}\n"
    return [sys.executable, "-c", setup + body + _REPORT]


def start_once(argv: list[str], env: dict, lines: int) -> tuple[float, float, str]:
    """Seconds from starting ``argv`` to its ``lines``-th line of output (to its end for 0),
    the CPU seconds it used (user + system, to its end), and what it says it imported."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryFile("w+") as errors:  # a file: a full pipe would stall the child
        started = time.perf_counter()
        child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errors, text=True,
                                 env=env, cwd=tempfile.gettempdir())
        for _ in range(lines):
            if not child.stdout.readline():
                break
        if not lines:  # nothing to wait for but its end
            child.wait()
        elapsed = time.perf_counter() - started
        rest = child.stdout.read()  # the lines after the top-5, through the same buffer
        child.wait(timeout=300)
        errors.seek(0)
        if child.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:3])} failed (exit {child.returncode}): "
                               f"{errors.read()[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    imported = next((line.split(" ", 1)[1] if " " in line else "" for line in
                     rest.splitlines() if line.startswith("IMPORTED")), None)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu, imported


def measure(run_dir: Path, image: Path, runs: int, pycache: Path) -> dict:
    """``{path: {"wall": [...], "cpu": [...], "imported": str | None}}``, the paths taking turns
    for ``runs`` rounds after one unrecorded round."""
    env = {key: value for key, value in os.environ.items()
           if key != "PYTHONDONTWRITEBYTECODE"}
    env.update(PYTHONPYCACHEPREFIX=str(pycache), PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")
    found = {path: {"wall": [], "cpu": [], "imported": None} for path in PATHS}
    for round_ in range(runs + 1):
        for path in PATHS:
            # the CLI prints the image's path, then the top-5; a bare interpreter prints nothing
            lines = {"python -c pass": 0, "workbench predict RUN IMG": 6}.get(path, 5)
            wall, cpu, imported = start_once(command(path, run_dir, image), env, lines)
            if round_:  # the first round warms the file cache and writes the bytecode
                found[path]["wall"].append(wall)
                found[path]["cpu"].append(cpu)
            found[path]["imported"] = imported
    return found


def imported_by_cli(run_dir: Path, image: Path, pycache: Path) -> str:
    """What ``workbench predict`` imports of :data:`HEAVY`, run in a new process (the console
    script prints only the table)."""
    script = (f"HEAVY = {HEAVY!r}\nfrom workbench.cli import main\n"
              f"main(['predict', {str(run_dir)!r}, {str(image)!r}])\n{_REPORT}")
    env = {**os.environ, "PYTHONPYCACHEPREFIX": str(pycache), "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, cwd=tempfile.gettempdir(), timeout=300, check=True)
    return next(line.split(" ", 1)[1] if " " in line else "" for line in
                done.stdout.splitlines() if line.startswith("IMPORTED"))


def runtime_chosen(run_dir: Path) -> str:
    from workbench.deploy.export import read_sidecar
    from workbench.runs import RunDir

    side = read_sidecar(RunDir(run_dir).export_dir / "model.tflite")
    return (side.get("runtime") or {}).get("chosen", "litert")


def rows_of(name: str, run_dir: Path, found: dict, cli_imported: str) -> list[tuple]:
    rows = []
    for path in PATHS:
        entry = found[path]
        wall, cpu = entry["wall"], entry["cpu"]
        imported = cli_imported if path == "workbench predict RUN IMG" else entry["imported"]
        shown = "" if imported is None else (imported.replace(",", ", ") or "none of them")
        rows.append((name, path if path != "workbench predict RUN IMG" else
                     f"workbench predict RUN IMG ({runtime_chosen(run_dir)})",
                     f"{statistics.median(wall):.3f}", f"{min(wall):.3f}-{max(wall):.3f}",
                     f"{statistics.median(cpu):.3f}", shown))
    return rows


def main(argv=None) -> None:
    from workbench.deploy.runtime import instruction_sets, machine
    from workbench.runs import RunDir

    args = parse_args(argv)
    load, rows, verdicts = os.getloadavg()[0], [], []
    with tempfile.TemporaryDirectory(prefix="cold_start-") as folder:
        pycache = Path(folder) / "pycache"
        targets = [(str(args.run), args.run, args.image)] if args.run else []
        for spec in [] if args.run else args.models:
            backbone, size = spec.split(":")
            print(f"{spec}: training one epoch and exporting ...", flush=True)
            run_dir, _ = build_run(Path(folder) / spec.replace(":", "-"), backbone, int(size))
            targets.append((f"{backbone} {size}", run_dir, None))
        for name, run_dir, image in targets:
            if image is None:
                side = RunDir(run_dir).image_size
                image = Path(folder) / f"{name.replace(' ', '-')}.jpg"
                image.write_bytes(sample_jpeg(run_dir, side)[0])
            found = measure(run_dir, image, args.runs, pycache)
            rows += rows_of(name, run_dir, found, imported_by_cli(run_dir, image, pycache))
            cli = statistics.median(found["workbench predict RUN IMG"]["wall"])
            verdicts.append(f"- {name}: `workbench predict RUN IMG` {cli:.3f} s (target <= "
                            f"{TARGET_S:g} s): {'met' if cli <= TARGET_S else 'MISSED'}")
            for row in rows[-len(PATHS):]:
                print(f"  {row[1]:40s} {row[2]} s ({row[3]})  cpu {row[4]} s  {row[5]}",
                      flush=True)
        shutil.rmtree(pycache, ignore_errors=True)
    end_load = os.getloadavg()[0]
    busy = max(load, end_load) > 0.5 * (os.cpu_count() or 1)
    lines = [
        "# Cold start",
        "",
        f"CPU: {machine()}, {instruction_sets()}; Python {sys.version.split()[0]}. A new process "
        f"to its first top-5 printed (JPEG at 2x the model's side), median of {args.runs} "
        "rounds (range), the paths taking turns, after one unrecorded round (file cache, "
        "bytecode); CPU = user + system seconds of the process, median. 'imported' = which of "
        f"{', '.join(HEAVY)} the process loaded. 1-minute load average {load:.1f} at the start, "
        f"{end_load:.1f} at the end" + (
            ": the machine was busy, so these times are stretched; re-run on a quiet machine "
            "before quoting them." if busy else "."),
        "",
        "| model | path | cold start (s) | range (s) | CPU (s) | imported |",
        "|---|---|---:|---:|---:|---|",
        *(f"| {' | '.join(row)} |" for row in rows),
        "",
        "Target (issue 23):",
        *verdicts,
    ]
    table = "\n".join(lines) + "\n"
    print("\n" + table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)


if __name__ == "__main__":
    main()
