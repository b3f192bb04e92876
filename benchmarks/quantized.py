"""Quantized against float32: the ``Classifier`` on each export of MobileNetV2-224, beside the
float32 compute floor, and what quantizing costs in accuracy on the bundled task.

1. **Latency.** A MobileNetV2-224 run (random weights, one epoch on tiny digits:
   ``predict_latency.build_run``) exported with ``export_fast(quantize="auto")``: float32
   LiteRT and ONNX, and the LiteRT candidates float16, int8-dynamic (int8 weights, float
   activations) and int8-full (weights and activations, calibrated on training images). Then
   ``Classifier.load(<file>).predict(array)`` of each file (the top-5 of a decoded 224 px
   image), interleaved (``predict_latency.interleaved``), ``--repeats`` times: the median p50
   and the range. The compute floor is measured in the same run as in
   ``predict_latency.py``: the model's float32 FLOPs over the best NumPy sgemm GFLOP/s.
2. **Accuracy.** The bundled target task (``workbench.data.sample.write_target``: cluttered
   digits, ``--per-class`` training images per class, 50 validation and 50 test images per
   class) trained from scratch on a small CNN for ``--epochs``, then
   ``export_fast(quantize="auto")``: each candidate's validation top-1, its drop in points and
   the rise of the ECE of the calibrated probabilities against float32, and what the rule chose.
   (MobileNetV2's random-weight accuracy above would say nothing.)

Prints one table and writes it to ``benchmarks/results/quantized.md``; the CPU, its instruction
set and the load average are stated. Timings taken on a shared CPU compare only within one table.

    .venv/bin/python benchmarks/quantized.py               # 20 min at load 8 (nice 10)
    .venv/bin/python benchmarks/quantized.py --calls 40 --repeats 2 --epochs 5
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import predict_latency as latency  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "quantized.md"
FILES = {"float32 (LiteRT)": "model.tflite", "float32 (ONNX Runtime)": "model.onnx",
         "float16": "model_float16.tflite", "int8 dynamic-range": "model_int8_dynamic.tflite",
         "int8 full (calibrated)": "model_int8.tflite"}
CANDIDATES = {"float16": "float16", "int8 dynamic-range": "int8_dynamic",
              "int8 full (calibrated)": "int8"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--calls", type=int, default=100, help="timed calls per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=15, help="epochs on the bundled task")
    parser.add_argument("--per-class", type=int, default=20,
                        help="training images per class of the bundled task")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if min(args.calls, args.repeats, args.threads, args.epochs, args.per_class) < 1:
        parser.error("--calls, --repeats, --threads, --epochs and --per-class must be >= 1")
    return args


def latency_rows(root: Path, args) -> tuple[dict, dict, int]:
    """``{path: [p50 of each repeat]}`` of the Classifier on each export, the auto record,
    and the model's FLOPs."""
    from workbench.deploy.export import read_sidecar
    from workbench.deploy.predict import Classifier
    from workbench.models import load_model

    run_dir, _ = latency.build_run(root, "mobilenet_v2", 224, quantize="auto")
    record = read_sidecar(run_dir / "export" / "model.tflite")["runtime"]
    pixels = latency.sample_jpeg(run_dir, 224)[1]
    paths = {}
    for name, file in FILES.items():
        classifier = Classifier.load(run_dir / "export" / file, threads=args.threads)
        paths[name] = (classifier.predict, pixels)
    auto = Classifier.load(run_dir, threads=args.threads)
    paths["Classifier.load(run), auto"] = (auto.predict, pixels)
    record["auto_file"] = Path(auto.info["model_file"]).name  # the file auto really runs
    p50s = {name: [] for name in paths}
    for _ in range(args.repeats):
        for name, (p50, _p95) in latency.interleaved(paths, args.calls).items():
            p50s[name].append(p50)
    return p50s, record, latency.model_flops(load_model(run_dir / "best.keras"))


def task_record(root: Path, args) -> dict:
    """The quantized record of a small CNN trained on the bundled target task."""
    from workbench.data.sample import write_target
    from workbench.data.split import prepare
    from workbench.deploy.export import export_fast
    from workbench.training.options import Monitoring
    from workbench.training.solver import SolverConfig
    from workbench.training.train import finetune

    write_target(root / "data", image_size=32)
    prepare(root / "data" / "target", root / "splits", counts=(args.per_class, 50, 50),
            progress="none")
    finetune(root / "splits", root / "run", backbone="cifar_cnn", weights=None,
             recipe="scratch", image_size=32, progress="none",
             solver=SolverConfig(epochs=args.epochs, batch_size=32),
             monitoring=Monitoring(resources=False))
    return export_fast(root / "run", quantize="auto").info["runtime"]["quantized"]


def table(*, p50s: dict, record: dict, flops: int, peak: float, task: dict, loads: tuple,
          blas: str) -> str:
    floor = flops / (peak * 1e9) * 1e3
    ours = {name: float(np.median(values)) for name, values in p50s.items()}
    quantized = record["quantized"]
    lines = [
        "# Quantized against float32",
        "",
        f"CPU: {latency._cpu()}; {_isa()}. 1-minute load average {loads[0]:.1f} at the start, "
        f"{loads[1]:.1f} at the end: the cores are shared, so only ratios within this table "
        "count; re-run on a quiet machine for absolute numbers. MobileNetV2-224 (random "
        "weights), `Classifier.predict` of a decoded 224 px image (top-5), one image per call, "
        f"interleaved, median p50 of {len(next(iter(p50s.values())))} repeats (range). Compute "
        f"floor: {flops / 1e6:.0f} MFLOPs (float32) over {peak:.0f} GFLOP/s (best float32 "
        f"2048x2048 NumPy matmul, {blas}) = {floor:.2f} ms.",
        "",
        "| export | p50 (ms) | vs float32 LiteRT | vs the floor | bundled task top-1 "
        "(change, points) | ECE rise | chosen by auto |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    base = ours["float32 (LiteRT)"]
    for name, values in p50s.items():
        key = CANDIDATES.get(name)
        c = task.get("candidates", {}).get(key, {}) if key else {}
        if name.startswith("float32"):
            accuracy = f"{task['float32']['top1']:.2%} (reference)" if "float32" in task else ""
            rise = ""
        elif key is None:  # the run loaded as a user would: its accuracy is the chosen one's
            accuracy = rise = ""
        else:
            accuracy = f"{c['top1']:.2%} ({-c['top1_drop_points']:+.2f})" if "top1" in c \
                else f"not made: {c.get('reason', '')[:60]}"
            rise = f"{c['ece_rise']:+.3f}" if "ece_rise" in c else ""
        chosen = "yes" if key and quantized.get("chosen") == key else ""
        if name.endswith("auto"):
            chosen = f"runs {record.get('auto_file') or quantized.get('chosen') or 'float32'}"
        lines.append(f"| {name} | {ours[name]:.2f} ({min(values):.2f}-{max(values):.2f}) | "
                     f"{ours[name] / base:.2f}x | {ours[name] / floor:.2f}x | {accuracy} | "
                     f"{rise} | {chosen} |")
    lines += ["", f"- MobileNetV2 auto chose: {quantized.get('chosen') or 'float32'} "
              f"(rule: {quantized['rule']}); its own timing at export: "
              + ", ".join(f"{k} {v.get('p50_ms', '-')} ms" for k, v in
                          quantized.get("candidates", {}).items())
              + f", float32 {quantized.get('float32', {}).get('p50_ms', '-')} ms.",
              f"- Bundled task (cluttered digits, small CNN from scratch, "
              f"{task.get('images', 0)} validation images): auto chose "
              f"{task.get('chosen') or 'float32'}.",
              f"- Target (issue 23): the Classifier at or below the float32 floor "
              f"({floor:.2f} ms): "
              + ("met by " + ", ".join(n for n in ours if ours[n] <= floor)
                 if any(v <= floor for v in ours.values()) else "MISSED") + "."]
    return "\n".join(lines) + "\n"


def _isa() -> str:
    """The vector instruction sets of this CPU that matter for these kernels."""
    try:
        flags = next(line for line in open("/proc/cpuinfo", encoding="utf-8")
                     if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "instruction set unknown"
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
    return "instruction sets: " + ", ".join(f for f in wanted if f in flags)


def main(argv=None) -> None:
    args = parse_args(argv)
    start_load = os.getloadavg()[0]
    peak, blas = latency.peak_gflops()
    with tempfile.TemporaryDirectory(prefix="quantized-") as folder:
        p50s, record, flops = latency_rows(Path(folder) / "mobilenet", args)
        peak = max(peak, latency.peak_gflops()[0])
        task = task_record(Path(folder) / "task", args)
    measured = {"p50s": p50s, "record": record, "flops": flops, "peak": peak, "task": task,
                "loads": (start_load, os.getloadavg()[0]), "blas": blas}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(measured, indent=1))  # the raw numbers
    text = table(**measured)
    print("\n" + text)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
