"""Every notebook in notebooks/ runs headless under papermill with tiny parameters.

A new notebook fails here until it has a ``parameters`` cell and an entry in ``TINY``. The
notebooks run in order in one shared workspace, as a user runs them (3 needs 1's split and 2's
source model).
"""

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from workbench.data import sample
from workbench.demo import NOTEBOOKS, run_notebook

ALL = sorted(path.name for path in NOTEBOOKS.glob("*.ipynb"))
SANITIZE = Path(__file__).with_name("nbval_sanitize.cfg")  # durations differ between runs


def tiny_parameters(data: Path, work: Path) -> dict:
    return {
        "01_prepare_data.ipynb": {"data_dir": str(data / "target"),
                                  "out_dir": str(work / "splits" / "target"),
                                  "split": "3,rest,5", "min_per_class": 5, "image_size": 16},
        "02_pretrain_source.ipynb": {"source_dir": str(data / "source"),
                                     "splits_dir": str(work / "splits" / "source"),
                                     "run_dir": str(work / "source"), "image_size": 16,
                                     "epochs": 1, "progress": "plot"},
        "03_fine_tune.ipynb": {"splits_dir": str(work / "splits" / "target"),
                               "source_model": str(work / "source" / "model.keras"),
                               "runs_dir": str(work / "fine_tune"), "seeds": [0],
                               "image_size": 16, "epochs": 2},
        "04_inspect.ipynb": {"run_dir": str(work / "fine_tune" / "two_stage-seed0"),
                             "source_model": str(work / "source" / "model.keras"),
                             "layers": ["conv1", "conv3"]},
        "05_evaluate.ipynb": {"run_dir": str(work / "fine_tune" / "two_stage-seed0"),
                              "split": "test", "worst_count": 8},
        "06_classify.ipynb": {"run_dir": str(work / "fine_tune" / "two_stage-seed0"),
                              "top_k": 3},
        "07_batch_size_study.ipynb": {"source_dir": str(data / "source"),
                                      "splits_dir": str(work / "splits" / "source"),
                                      "out_dir": str(work / "batch_size_study"),
                                      "batch_sizes": [8, 16], "epochs": [1], "workers": 2,
                                      "image_size": 16, "throughput_models": ["cifar_cnn:16"],
                                      "throughput_steps": 2},
        "08_split_computing.ipynb": {"model_path": str(work / "source" / "model.keras"),
                                     "splits_dir": str(work / "splits" / "source"),
                                     "image_size": 16, "filters": [1, 4], "epochs": 1,
                                     "profile_images": 32, "repeats": 3,
                                     "out_dir": str(work / "split_computing")},
    }


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("notebooks")
    sample.write_sample_data(root / "data", image_size=16, source_per_class=12, progress=False)
    os.environ["WORKBENCH_PROGRESS"] = "plain"
    return {"data": root / "data", "work": root / "work", "executed": {}}


def executed(workspace, name):
    """Runs the notebooks up to ``name`` in order (once each) and returns ``name``'s output."""
    parameters = tiny_parameters(workspace["data"], workspace["work"])
    for earlier in ALL[: ALL.index(name) + 1]:
        if earlier not in workspace["executed"]:
            workspace["executed"][earlier] = run_notebook(
                earlier, parameters[earlier], workspace["work"] / "executed")
    return nbformat.read(workspace["executed"][name], as_version=4)


def test_every_notebook_has_tiny_parameters():
    assert ALL, "no notebooks found"
    assert sorted(tiny_parameters(Path("d"), Path("w"))) == ALL


@pytest.mark.parametrize("name", ALL)
def test_notebook_is_committed_clean_with_typed_parameters(name):
    book = nbformat.read(NOTEBOOKS / name, as_version=4)
    tagged = [cell for cell in book.cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell must be tagged 'parameters'"
    for line in tagged[0].source.splitlines():  # name: type = literal  # what it means
        head, _, help_text = line.partition("  # ")
        target, value = head.split(" = ", 1)
        assert ":" in target and help_text.strip(), line
        ast.literal_eval(value)
    code = [cell for cell in book.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code)
    assert len(code) < 20
    assert not any("def " in cell.source or "plt.show" in cell.source for cell in code)
    assert book.cells[0].cell_type == "markdown" and book.cells[0].source.startswith("# ")


@pytest.mark.parametrize("name", ALL)
def test_notebook_runs_headless(workspace, name):
    book = executed(workspace, name)
    errors = [output for cell in book.cells for output in cell.get("outputs", [])
              if output.output_type == "error"]
    assert not errors
    images = [output for cell in book.cells for output in cell.get("outputs", [])
              if "image/png" in output.get("data", {})]
    assert images, "each notebook shows at least one figure"


def test_prepare_notebook_writes_the_split(workspace):
    executed(workspace, "01_prepare_data.ipynb")
    splits = pd.read_csv(workspace["work"] / "splits" / "target" / "splits.csv")
    per_class = splits.groupby(["label", "split"]).size().unstack()
    assert (per_class["train"] == 3).all() and (per_class["test"] == 5).all()


def test_fine_tune_notebook_compares_every_recipe(workspace):
    executed(workspace, "03_fine_tune.ipynb")
    runs = sorted(p.name for p in (workspace["work"] / "fine_tune").iterdir())
    assert runs == ["caffe-seed0", "feature_extraction-seed0", "scratch-seed0", "two_stage-seed0"]
    for run in runs:
        metrics = json.loads((workspace["work"] / "fine_tune" / run / "metrics.json").read_text())
        assert metrics["status"] == "completed" and metrics["epochs"] == 2


def test_rerunning_the_prepare_notebook_reproduces_its_split_table(workspace):
    """nbval re-executes the executed notebook and compares the tagged split-table output."""
    path = executed(workspace, "01_prepare_data.ipynb") and \
        workspace["executed"]["01_prepare_data.ipynb"]
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "--nbval-lax", "--nbval-sanitize-with", str(SANITIZE), str(path)],
                            capture_output=True, text=True,
                            cwd=path.parent, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:]
    assert " passed" in result.stdout


def test_demo_leaves_the_inspection_figures_in_the_run_directory(workspace):
    from workbench.demo import save_run_figures

    executed(workspace, "03_fine_tune.ipynb")
    work = workspace["work"]
    saved = save_run_figures(work / "fine_tune" / "two_stage-seed0", work / "source" / "model.keras")
    assert [path.name for path in saved] == ["filters.png", "resources.png", "weight_stats.png"]
    assert all(path.stat().st_size > 5000 for path in saved)


def test_classify_notebook_shows_the_top_k_table(workspace):
    book = executed(workspace, "06_classify.ipynb")
    cell = next(cell for cell in book.cells if "top_k_table(" in cell.source)
    html = next(output["data"]["text/html"] for output in cell.outputs
                if "text/html" in output.get("data", {}))
    assert "<th>label</th>" in html and "<th>probability</th>" in html
    rows = re.findall(r"<tr>\s*<th>(\d+)</th>\s*<td>([^<]*)</td>\s*<td>([0-9.]+)</td>", html)
    assert [rank for rank, _, _ in rows] == ["1", "2", "3"]  # top_k=3 from the parameters
    probabilities = [float(p) for _, _, p in rows]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < probabilities[0] <= 1
    classes = json.loads((workspace["work"] / "fine_tune" / "two_stage-seed0" /
                          "config.json").read_text())["classes"]
    assert {label for _, label, _ in rows} <= set(classes)


def test_batch_size_study_tabulates_every_combination(workspace):
    from workbench.studies.sweep import SweepResult, batch_size_table

    book = executed(workspace, "07_batch_size_study.ipynb")
    study = SweepResult.load(workspace["work"] / "batch_size_study")
    assert sorted(study.table["name"]) == ["batch_size=16,epochs=1", "batch_size=8,epochs=1"]
    assert (study.table["status"] == "ok").all(), study.table["error"].tolist()
    table = batch_size_table(study)
    assert list(table["batch_size"]) == [8, 16] and list(table["epochs"]) == [1, 1]
    assert (table["train_seconds"] > 0).all() and (table["images_per_second"] > 0).all()
    assert table["test_accuracy"].between(0, 1).all() and (table["peak_ram_mib"] > 0).all()
    throughput = next(cell for cell in book.cells if "throughput_table(" in cell.source)
    html = next(output["data"]["text/html"] for output in throughput.outputs
                if "text/html" in output.get("data", {}))
    assert "cifar_cnn" in html and ("not measured: no GPU" in html) != _gpu_visible()


def _gpu_visible() -> bool:
    from workbench._device import gpu_count

    return gpu_count() > 0


def test_live_training_plot_shows_curves_and_resources(workspace):
    book = executed(workspace, "02_pretrain_source.ipynb")
    training = next(cell for cell in book.cells if "finetune(" in cell.source)
    images = [output for output in training.outputs if "image/png" in output.get("data", {})]
    assert len(images) == 2  # the loss curves and, under them, the resource panels


def test_split_computing_notebook_writes_sane_tables(workspace):
    executed(workspace, "08_split_computing.ipynb")
    out = workspace["work"] / "split_computing"
    profile = pd.read_csv(out / "profile.csv")
    assert profile["layer"].iloc[0] == "image" and profile["bytes"].iloc[0] == 16 * 16 * 3
    assert (profile[["device_ms", "server_ms"]] >= 0).all().all()
    best = pd.read_csv(out / "best_split.csv")
    assert list(best["bandwidth_mbps"]) == [10, 100, 1000]
    assert set(best["best_layer"]) <= set(profile["layer"])
    study = pd.read_csv(out / "bottleneck.csv")
    assert list(study["filters"]) == [1, 4]  # the tiny parameters
    assert study["bytes_float32"].is_monotonic_increasing and study["bytes_uint8"].iloc[0] < \
        study["bytes_uint8"].iloc[1]  # bytes at the split fall with k
    assert study[["accuracy", "accuracy_uint8"]].stack().between(0, 1).all()
    published = pd.read_csv(out / "published_comparison.csv")
    assert {1, 4, 8, 32} <= set(published["filters"])
