"""benchmarks/gpu/check.py, the one-call GPU check, run with --tiny on the CPU.

The script runs as the GPU machine runs it: Keras on JAX and no TensorFlow (a stub package on
PYTHONPATH makes ``import tensorflow`` fail). Its tables must hold every expected row, with the
rows only a GPU can fill saying so.
"""

import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu" / "check.py"


def load_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


@pytest.fixture(scope="module")
def tiny_check(tmp_path_factory):
    pytest.importorskip("jax")
    root = tmp_path_factory.mktemp("gpu_check")
    stub = root / "no_tensorflow" / "tensorflow"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text('raise ImportError("no TensorFlow, as on the GPU machine")')
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([str(stub.parent), str(ROOT)])}
    # a budget far above what --tiny takes (which also stretches each step's own limit): on a
    # busy CPU (other tests beside it under pytest-xdist) its default would skip steps or time
    # them out, which this test is not about
    result = subprocess.run([sys.executable, str(SCRIPT), "--out", str(root / "out"), "--tiny",
                             "--budget", "3000"], env=env, capture_output=True, text=True,
                            timeout=3600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root / "out"


@pytest.mark.slow
def test_every_step_ran_and_the_report_holds_every_table(tiny_check):
    steps = {row["step"]: row for row in rows(tiny_check / "steps.csv")}
    assert list(steps) == ["environment", "data", "throughput:cifar_cnn", "timm", "finetune",
                           "resume", "cpu_gpu", "features", "quantized",
                           "timm_compiled:cifar_cnn"]
    failed = {name: row for name, row in steps.items()
              if name not in ("quantized", "timm_compiled:cifar_cnn") and row["status"] != "ok"}
    assert not failed, failed
    assert steps["timm_compiled:cifar_cnn"]["status"].startswith("skipped: --tiny")
    # without TensorFlow (as on the GPU machine) the step finds its converter missing, and says so
    quantized = steps["quantized"]["status"]
    assert quantized.startswith("skipped: quantized candidates not measured here: they are made "
                                "by TensorFlow's LiteRT converter, missing here (no TensorFlow"), \
        quantized
    assert "never on the GPU" in quantized and not steps["quantized"]["error"]
    report = (tiny_check / "report.md").read_text()
    for title in ("## Steps", "## Environment", "## Checks against the targets",
                  "## Training throughput per model", "## Fine-tuning on the bundled digits",
                  "## Reproducibility", "## The batch-size study's throughput column",
                  "## Cached features", f"## Quantized candidates\n\n{quantized}\n"):
        assert title in report
    for figure in ("throughput.png", "finetune_dashboard.png", "finetune_curves.png",
                   "cpu_gpu.png"):
        assert (tiny_check / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", figure


@pytest.mark.slow
def test_throughput_has_a_row_per_way_and_gpu_targets_say_not_measured(tiny_check):
    from workbench.studies.throughput import NOT_MEASURED

    check = load_check()
    assert check.NO_GPU == NOT_MEASURED
    table = {row["way"]: row for row in rows(tiny_check / "throughput.csv")
             if row["model"] == "cifar_cnn"}
    assert list(table) == ["workbench cached", "synthetic tensors", "keras fit", "timm eager",
                           "timm compiled"]
    for way in ("workbench cached", "synthetic tensors", "keras fit"):
        assert float(table[way]["images_per_second"]) > 0 and table[way]["device"] == "cpu"
    missing = [name for name in ("torch", "timm") if importlib.util.find_spec(name) is None]
    assert table["timm eager"]["note"] == (f"skipped: {missing[0]} not installed" if missing
                                           else "no timm model for cifar_cnn")
    checks = {row["check"]: row for row in rows(tiny_check / "checks.csv")}
    on_h200 = [row for name, row in checks.items() if name.endswith("on an H200")]
    assert len(on_h200) == 3 and all(row["verdict"] == NOT_MEASURED for row in on_h200)
    share = checks["cifar_cnn: cached >= 95% of synthetic"]
    assert share["verdict"] in ("met", "missed") and float(share["measured"]) > 0
    cpu_gpu = rows(tiny_check / "cpu_gpu.csv")
    assert [row["model"] for row in cpu_gpu] == ["cifar_cnn"]
    assert cpu_gpu[0]["gpu_over_cpu"] == NOT_MEASURED
    assert float(cpu_gpu[0]["cpu_images_per_second"]) > 0


@pytest.mark.slow
def test_finetune_reports_per_layer_rates_and_leaves_gpu_rows_to_a_gpu(tiny_check):
    from workbench.studies.throughput import NOT_MEASURED

    table = {row["item"]: row["value"] for row in rows(tiny_check / "finetune.csv")}
    assert table["status"] == "completed" and table["device"] == "cpu"
    # the table reports the run's own numbers (its metrics.json, copied beside the table)
    metrics = json.loads((tiny_check / "finetune_metrics.json").read_text())
    assert float(table["test accuracy"]) == pytest.approx(metrics["test_accuracy"], abs=1e-4)
    assert float(table["val accuracy"]) == pytest.approx(metrics["val_accuracy"], abs=1e-4)
    assert table["train / val / test images"] == " / ".join(
        str(metrics[f"{split}_images"]) for split in ("train", "val", "test"))
    stages = table["learning-rate multipliers per stage"]
    assert stages.startswith("head: x0 (") and "all: x0.01 (" in stages and "x0.3 (" in stages
    for item in ("GPU utilisation, mean %", "GPU memory peak MiB", "GPU power mean W"):
        assert table[item] == NOT_MEASURED
    resources = rows(tiny_check / "finetune_resources.csv")
    assert int(table["resource samples"]) == len(resources) > 0
    assert {row["stage"] for row in rows(tiny_check / "finetune_history.csv")} == {"head", "all"}


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_result_on_the_cpu(tiny_check):
    table = {row["comparison"]: row for row in rows(tiny_check / "reproducibility.csv")}
    same = table["same seed, two processes (A vs B)"]
    resumed = table["killed mid-run, then resume=True (A vs C)"]
    assert resumed["note"].startswith("SIGKILL"), resumed["note"]
    assert "status when killed: none" in resumed["note"]
    for row in (same, resumed):  # on the CPU a seeded run repeats (the GPU reports distances)
        assert math.isfinite(float(row["history_max_abs_diff"]))
        assert float(row["history_max_abs_diff"]) <= 1e-5
        assert float(row["weights_max_abs_diff"]) <= 1e-5


@pytest.mark.slow
def test_cached_features_give_the_whole_models_results_and_say_what_they_cost(tiny_check):
    columns = ("cache off", "cache on")
    table = {row["item"]: row for row in rows(tiny_check / "features.csv")}
    # the cache-on run computed the features of its training and validation images (one pass
    # each); the cache-off run none: each path ran as its column says
    passes = table["passes over a split to compute features"]
    assert [int(passes[column]) for column in columns] == [0, 2]
    assert table["features computed, s"]["cache off"] == ""
    assert float(table["features computed, s"]["cache on"]) > 0
    for column in columns:
        epochs = [float(table[item][column]) for item in
                  ("first epoch s", "later epochs, mean s", "epochs total s", "whole call s")]
        assert all(value > 0 for value in epochs), (column, epochs)
        assert epochs[2] <= epochs[3]  # the epochs are part of the whole call
    off, on = (table["test accuracy"][column] for column in columns)
    assert float(off) == pytest.approx(float(on), abs=1e-6)
    assert float(table["history max |diff|"]["cache on"]) <= 1e-4
    assert float(table["final weights max |diff|"]["cache on"]) <= 1e-4
    assert table["results agree"]["cache on"] == "yes"
