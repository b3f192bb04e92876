"""Every notebook in notebooks/ runs headless under papermill.

Two ways, as users run them:

* **The demo.** A project folder made by the test (``$WORKBENCH_ROOT``) gets the sample data;
  the notebooks run in order with their default paths (the demo is one setting of their
  parameters) and tiny values for the rest, then 4, 5 and 6 with their defaults alone. A new
  notebook fails here until it has a ``parameters`` cell and an entry in ``TINY``.
* **Your own photos.** A photo-like folder goes through 1, 3, 4, 5 and 6 with the ``papermill``
  command typed from the repository root, with relative paths, a ``keras.applications`` backbone
  and a local weights file; a failed first run is followed by a corrected one, and list
  parameters are given as ``-p seeds 0,1`` and ``-y 'seeds: [0, 1]'``.
"""

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import keras
import nbformat
import numpy as np
import pandas as pd
import papermill
import pytest

import photo_folder
from workbench import inspect, models
from workbench.data import sample
from workbench.demo import DATA, DEMO_RUN, NOTEBOOKS, RUNS, demo_parameters, run_notebook

ALL = sorted(path.name for path in NOTEBOOKS.glob("*.ipynb"))
WORKFLOW = ALL[:6]  # 01 to 06: the demo's notebooks, every path relative to the project folder
REPO = NOTEBOOKS.parent
SANITIZE = Path(__file__).with_name("nbval_sanitize.cfg")  # durations differ between runs


def tiny_parameters() -> dict:
    """Every notebook takes its default paths, relative to the test's project folder."""
    return {
        "01_prepare_data.ipynb": {"split": "3,rest,5", "min_per_class": 5, "image_size": 16},
        "02_pretrain_source.ipynb": {"image_size": 16, "epochs": 1, "progress": "plot"},
        # find_lr: the range test in the same kernel and runs as the rest (not a second 03)
        "03_fine_tune.ipynb": {"seeds": [0], "epochs": 2, "progress": "plot", "find_lr": True},
        "04_inspect.ipynb": {},
        "05_evaluate.ipynb": {},
        "06_classify.ipynb": {"top_k": 3},
        "07_batch_size_study.ipynb": {"batch_sizes": [8, 16], "epochs": [1], "workers": 2,
                                      "image_size": 16, "throughput_models": ["cifar_cnn:16"],
                                      "throughput_steps": 2},
        "08_split_computing.ipynb": {"image_size": 16, "filters": [1, 4], "epochs": 1,
                                     "profile_images": 32, "repeats": 3},
    }


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    project = tmp_path_factory.mktemp("project")
    (project / "notebooks").symlink_to(NOTEBOOKS)  # a project keeps its notebooks beside runs/
    sample.write_sample_data(project / DATA, image_size=16, source_per_class=12, progress="none")
    return {"project": project, "data": project / DATA, "work": project / RUNS, "executed": {}}


def executed(workspace, name):
    """Runs the notebooks up to ``name`` in order (once each) and returns ``name``'s output."""
    parameters = tiny_parameters()
    for earlier in ALL[: ALL.index(name) + 1]:
        if earlier not in workspace["executed"]:
            with pytest.MonkeyPatch.context() as patch:  # what the kernels inherit
                patch.setenv("WORKBENCH_ROOT", str(workspace["project"]))
                patch.setenv("WORKBENCH_PROGRESS", "plain")
                workspace["executed"][earlier] = run_notebook(
                    earlier, parameters[earlier], workspace["project"] / "executed")
    return nbformat.read(workspace["executed"][name], as_version=4)


def outputs(cell, kind):
    return [output for output in cell.get("outputs", []) if kind in output.get("data", {})]


def text_of(cell) -> str:
    return "".join(output.get("text", "") for output in cell.get("outputs", []))


def defaults(name) -> dict:
    """The notebook's parameters and their default values."""
    declared = papermill.inspect_notebook(str(NOTEBOOKS / name))
    return {key: ast.literal_eval(value["default"]) for key, value in declared.items()}


def test_every_notebook_has_tiny_parameters():
    assert ALL, "no notebooks found"
    assert sorted(tiny_parameters()) == ALL


@pytest.mark.parametrize("name", ALL)
def test_notebook_is_committed_clean_with_typed_parameters(name):
    book = nbformat.read(NOTEBOOKS / name, as_version=4)
    tagged = [cell for cell in book.cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell must be tagged 'parameters'"
    lines = tagged[0].source.splitlines()
    for line in lines:  # name: type = literal  # what it means
        head, _, help_text = line.partition("  # ")
        target, value = head.split(" = ", 1)
        assert ":" in target and help_text.strip(), line
        ast.literal_eval(value)
        assert line.count("=") == 1, f"papermill --help-notebook skips this line: {line}"
    assert len(papermill.inspect_notebook(str(NOTEBOOKS / name))) == len(lines)
    code = [cell for cell in book.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code)
    assert len(code) < 20
    assert not any("def " in cell.source or "plt.show" in cell.source for cell in code)
    assert book.cells[0].cell_type == "markdown" and book.cells[0].source.startswith("# ")


@pytest.mark.parametrize("name", WORKFLOW)
def test_workflow_notebook_starts_quietly_with_project_relative_paths(name):
    book = nbformat.read(NOTEBOOKS / name, as_version=4)
    code = [cell.source for cell in book.cells if cell.cell_type == "code"]
    assert "notebook.quiet(" in code[1]  # the first cell after the parameters
    for parameter, value in defaults(name).items():
        if parameter.endswith(("_dir", "_model", "_path", "_file")):
            assert not str(value).startswith(".."), (parameter, value)
            assert any(re.search(rf"\b{parameter}\b", line) and "notebook.path" in line
                       for source in code for line in source.splitlines()), parameter
    assert defaults(name).get("progress", "auto") == "auto"


def test_the_demo_is_the_notebooks_defaults():
    for name, parameters in demo_parameters().items():
        assert parameters == {key: value for key, value in defaults(name).items()
                              if key in parameters}, name
    assert set(demo_parameters()) == set(WORKFLOW)


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
def test_notebook_runs_headless(workspace, name):
    book = executed(workspace, name)
    errors = [output for cell in book.cells for output in cell.get("outputs", [])
              if output.output_type == "error"]
    assert not errors
    images = [output for cell in book.cells for output in outputs(cell, "image/png")]
    assert images, "each notebook shows at least one figure"


@pytest.mark.slow
def test_prepare_notebook_writes_the_split(workspace):
    executed(workspace, "01_prepare_data.ipynb")
    splits = pd.read_csv(workspace["work"] / "splits" / "target" / "splits.csv")
    per_class = splits.groupby(["label", "split"]).size().unstack()
    assert (per_class["train"] == 3).all() and (per_class["test"] == 5).all()


@pytest.mark.slow
def test_fine_tune_notebook_compares_every_recipe_one_live_figure_per_run(workspace):
    book = executed(workspace, "03_fine_tune.ipynb")
    runs = sorted(p.name for p in (workspace["work"] / "fine_tune").iterdir())
    assert runs == ["caffe-seed0", "feature_extraction-seed0", "scratch-seed0", "two_stage-seed0"]
    for run in runs:
        metrics = json.loads((workspace["work"] / "fine_tune" / run / "metrics.json").read_text())
        assert metrics["status"] == "completed" and metrics["epochs"] == 2
        config = json.loads((workspace["work"] / "fine_tune" / run / "config.json").read_text())
        assert config["image_size"] == 16  # image_size=0: the source model's input
    training = next(cell for cell in book.cells if "compare_recipes(" in cell.source)
    said = text_of(training)
    for number, recipe in enumerate(["scratch", "feature_extraction", "two_stage", "caffe"], 1):
        assert f"run {number} of 4: {recipe}, seed 0\n" in said
    # one live figure (curves, resources) per run: two_stage's second stage replaced its first
    assert len(outputs(training, "image/png")) == 2 * 4


@pytest.mark.slow
def test_inspect_notebook_shows_the_run_against_its_starting_point(workspace):
    book = executed(workspace, "04_inspect.ipynb")
    first = next(cell for cell in book.cells if "default_layers(" in cell.source)
    assert "two_stage-seed0: fine-tuned from model.keras; convolutions shown: conv1, conv2, conv3" \
        in text_of(first)
    filters = next(cell for cell in book.cells if cell.source == "inspect.compare_filters(before, "
                   "tuned)")
    assert len(outputs(filters, "image/png")) == 1


@pytest.mark.slow
def test_rerunning_the_prepare_notebook_reproduces_its_split_table(workspace):
    """nbval re-executes the executed notebook and compares the tagged split-table output."""
    executed(workspace, "01_prepare_data.ipynb")
    path = workspace["executed"]["01_prepare_data.ipynb"]
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "--nbval-lax", "--nbval-sanitize-with", str(SANITIZE), str(path)],
                            capture_output=True, text=True, cwd=path.parent, timeout=600,
                            env={**os.environ, "WORKBENCH_ROOT": str(workspace["project"]),
                                 "WORKBENCH_PROGRESS": "plain"})
    assert result.returncode == 0, result.stdout[-3000:]
    assert " passed" in result.stdout


@pytest.mark.slow
def test_demo_leaves_the_inspection_figures_in_the_run_directory(workspace):
    from workbench.demo import save_run_figures

    executed(workspace, "03_fine_tune.ipynb")
    saved = save_run_figures(workspace["work"] / DEMO_RUN)
    assert [path.name for path in saved] == ["filters.png", "resources.png", "weight_stats.png"]
    assert all(path.stat().st_size > 5000 for path in saved)


@pytest.mark.slow
def test_classify_notebook_shows_the_top_k_table(workspace):
    book = executed(workspace, "06_classify.ipynb")
    cell = next(cell for cell in book.cells if "top_k_table(" in cell.source)
    html = next(output["data"]["text/html"] for output in outputs(cell, "text/html"))
    assert "<th>label</th>" in html and "<th>probability</th>" in html
    rows = re.findall(r"<tr>\s*<th>(\d+)</th>\s*<td>([^<]*)</td>\s*<td>([0-9.]+)</td>", html)
    assert [rank for rank, _, _ in rows] == ["1", "2", "3"]  # top_k=3 from the parameters
    probabilities = [float(p) for _, _, p in rows]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < probabilities[0] <= 1
    classes = json.loads((workspace["work"] / DEMO_RUN / "config.json").read_text())["classes"]
    assert {label for _, label, _ in rows} <= set(classes)


@pytest.mark.slow
def test_classify_notebook_classifies_a_whole_folder(workspace):
    book = executed(workspace, "06_classify.ipynb")
    cell = next(cell for cell in book.cells if "predict_to_file(" in cell.source)
    line = "".join(output.get("text", "") for output in cell.outputs)
    table = pd.read_csv(workspace["work"] / DEMO_RUN / "classified.csv")
    assert f"Wrote {len(table)} rows" in line and "images/s" in line
    assert len(table) > 10 and {"path", "label_1", "probability_1", "error"} <= set(table.columns)
    gallery = next(cell for cell in book.cells if "least_certain(" in cell.source)
    shown = "".join(output["data"].get("text/plain", "") for output in outputs(gallery,
                                                                              "image/png"))
    assert "with 8 Axes" in shown


@pytest.mark.slow
def test_evaluate_and_classify_notebooks_show_where_the_model_looked(workspace):
    # explain defaults to True: 05 draws the worst predictions with their Grad-CAM maps, 06 the
    # photo beside its map (from the run's Keras model: the LiteRT model has no gradients)
    for name, call, panels in (("05_evaluate.ipynb", "explain_worst(", 16),
                               ("06_classify.ipynb", "classifier.explain(", 2)):
        book = executed(workspace, name)
        cell = next(cell for cell in book.cells if call in cell.source)
        assert outputs(cell, "image/png"), name
        assert not any(output.get("output_type") == "error" for output in cell.outputs)
        shown = "".join(output["data"].get("text/plain", "") for output in outputs(cell,
                                                                                  "image/png"))
        assert f"with {panels} Axes" in shown, (name, shown)


@pytest.mark.slow
def test_batch_size_study_tabulates_every_combination(workspace):
    from workbench.studies.batch_size import batch_size_table
    from workbench.studies.sweep import SweepResult

    book = executed(workspace, "07_batch_size_study.ipynb")
    study = SweepResult.load(workspace["work"] / "batch_size_study")
    assert sorted(study.table["name"]) == ["batch_size=16,epochs=1", "batch_size=8,epochs=1"]
    assert (study.table["status"] == "ok").all(), study.table["error"].tolist()
    table = batch_size_table(study)
    assert list(table["batch_size"]) == [8, 16] and list(table["epochs"]) == [1, 1]
    assert (table["train_seconds"] > 0).all() and (table["images_per_second"] > 0).all()
    assert table["test_accuracy"].between(0, 1).all() and (table["peak_ram_mib"] > 0).all()
    throughput = next(cell for cell in book.cells if "throughput_table(" in cell.source)
    html = next(output["data"]["text/html"] for output in outputs(throughput, "text/html"))
    assert "cifar_cnn" in html and ("not measured: no GPU" in html) != _gpu_visible()


def _gpu_visible() -> bool:
    from workbench._device import gpu_count

    return gpu_count() > 0


@pytest.mark.slow
def test_live_training_plot_shows_curves_and_resources(workspace):
    book = executed(workspace, "02_pretrain_source.ipynb")
    training = next(cell for cell in book.cells if "finetune(" in cell.source)
    assert len(outputs(training, "image/png")) == 2  # the loss curves and the resource panels


@pytest.mark.slow
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
    assert list(study["method"]) == ["bottleneck"] * 2 + ["narrowed_conv"] * 2  # both methods
    assert list(study["filters"]) == [1, 4] * 2  # the tiny parameters
    for _, rows in study.groupby("method"):
        assert rows["bytes_float32"].is_monotonic_increasing and rows["bytes_uint8"].iloc[0] < \
            rows["bytes_uint8"].iloc[1]  # bytes at the split fall with k
    assert study[["accuracy", "accuracy_uint8"]].stack().between(0, 1).all()
    published = pd.read_csv(out / "published_comparison.csv")
    assert {1, 4, 8, 32} <= set(published["filters"])
    assert {"bottleneck_accuracy", "narrowed_conv_accuracy"} <= set(published.columns)


# --- your own photos, with the papermill command from the repository root ----------------------

IMAGE_SIZE = 48


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """The photo folder and a local weights file, as paths relative to the repository root."""
    root = tmp_path_factory.mktemp("own_photos")
    counts = photo_folder.write_photos(root / "photos")
    weights = root / "mobilenet_v3_small_48.weights.h5"  # a machine without internet
    backbone = keras.applications.MobileNetV3Small(include_top=False, weights=None,
                                                   input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3),
                                                   pooling="avg")
    backbone.save_weights(weights)
    (root / "out").mkdir()  # where the executed notebooks go
    relative = Path(os.path.relpath(root, REPO))
    return {"root": root, "rel": relative, "counts": counts, "weights": weights,
            "first_conv": keras.ops.convert_to_numpy(inspect.first_conv(backbone).kernel),
            "done": {}}


def papermill_cli(*arguments, cwd=REPO) -> subprocess.CompletedProcess:
    """``papermill ARGUMENTS`` as a user types it in the repository root (no test settings)."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("WORKBENCH_ROOT", "WORKBENCH_PROGRESS")}
    return subprocess.run([str(Path(sys.executable).with_name("papermill")), *arguments],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def fine_tune_arguments(photos, output, *more) -> list[str]:
    rel = photos["rel"]
    return ["notebooks/03_fine_tune.ipynb", str(rel / "out" / output),
            "-p", "splits_dir", str(rel / "splits"), "-p", "runs_dir", str(rel / "runs"),
            "-p", "source_model", "", "-p", "backbone", "mobilenet_v3_small",
            "-p", "image_size", str(IMAGE_SIZE), "-p", "recipes", "caffe", "-p", "epochs", "1",
            "-p", "batch_size", "4", "-p", "test_interval", "1", *more]


def photo_step(photos, step) -> nbformat.NotebookNode:
    """The photo workflow up to ``step`` (once each, in order); returns ``step``'s notebook."""
    rel, done = photos["rel"], photos["done"]
    run_dir = str(rel / "runs" / "caffe-seed0")
    steps = {
        "01": ["notebooks/01_prepare_data.ipynb", str(rel / "out" / "01.ipynb"),
               "-p", "data_dir", str(rel / "photos"), "-p", "out_dir", str(rel / "splits"),
               "-p", "split", "4,3,rest", "-p", "min_per_class", "5",
               "-p", "image_size", str(IMAGE_SIZE)],
        "03": fine_tune_arguments(photos, "03.ipynb", "-p", "seeds", "0,1",
                                  "-p", "weights", str(rel / photos["weights"].name)),
        "04": ["notebooks/04_inspect.ipynb", str(rel / "out" / "04.ipynb"),
               "-p", "run_dir", run_dir],
        # --cwd notebooks: the kernel starts where JupyterLab starts it; the paths stay the same
        "05": ["notebooks/05_evaluate.ipynb", str(rel / "out" / "05.ipynb"), "--cwd", "notebooks",
               "-p", "run_dir", run_dir, "-p", "worst_count", "4"],
        "06": ["notebooks/06_classify.ipynb", str(rel / "out" / "06.ipynb"),
               "-p", "run_dir", run_dir],
    }
    for name in list(steps)[: list(steps).index(step) + 1]:
        if name not in done:
            result = papermill_cli(*steps[name])
            assert result.returncode == 0, result.stderr[-4000:]
            done[name] = photos["root"] / "out" / f"{name}.ipynb"
    return nbformat.read(done[step], as_version=4)


@pytest.mark.slow
def test_own_photos_are_scanned_and_split(photos):
    photo_step(photos, "01")
    splits = pd.read_csv(photos["root"] / "splits" / "splits.csv")
    assert splits.groupby("label").size().to_dict() == photos["counts"]
    assert (splits[splits["split"] == "train"].groupby("label").size() == 4).all()
    assert splits["path"].str.contains("/2023/holiday/").any()  # nested sub-folders
    turned = splits[splits["path"] == "birds/2023/holiday/IMG_0001.JPG"].iloc[0]
    assert (turned["width"], turned["height"]) == (1200, 1600)  # EXIF orientation 6 applied
    rejected = pd.read_csv(photos["root"] / "splits" / "rejected.csv")
    assert rejected[["path", "reason"]].values.tolist() == [[photo_folder.BAD_FILE,
                                                            "truncated or corrupt"]]


@pytest.mark.slow
def test_a_failed_first_run_then_a_corrected_one(photos):
    photo_step(photos, "01")
    wrong = papermill_cli(*fine_tune_arguments(photos, "03-wrong.ipynb", "-p", "seeds", "0,1",
                                               "-p", "weights", str(photos["rel"] / "typo.h5")))
    assert wrong.returncode != 0
    assert "weights must be 'imagenet', None or an existing file" in wrong.stderr
    said = wrong.stderr[wrong.stderr.index("Exception encountered at"):]  # papermill's words
    assert len(said) < ERROR_CHARACTERS, said
    (_, error), = error_outputs(nbformat.read(photos["root"] / "out" / "03-wrong.ipynb",
                                              as_version=4))
    line, = error["traceback"]  # Jupyter's rendering: the message, not the traceback
    assert line.startswith("UsageError: weights must be 'imagenet', None or an existing file, "
                           "received: '") and line.endswith("typo.h5'")
    book = photo_step(photos, "03")  # the same command with the right path
    run_dir = photos["root"] / "runs" / "caffe-seed0"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["classes"] == 3
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["backbone"], config["image_size"]) == ("mobilenet_v3_small", IMAGE_SIZE)
    assert Path(config["weights"]) == photos["weights"].resolve()
    start = models.load_model(run_dir / "initial.keras")  # the local weights, as loaded
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(inspect.first_conv(start).kernel), photos["first_conv"])
    plot = next(cell for cell in book.cells if "compare_accuracy(" in cell.source)
    assert outputs(plot, "image/png")


@pytest.mark.slow
def test_list_parameters_as_users_type_them(photos):
    book = photo_step(photos, "03")  # -p seeds 0,1
    said = text_of(next(cell for cell in book.cells if "compare_recipes(" in cell.source))
    assert "run 1 of 2: caffe, seed 0\n" in said and "run 2 of 2: caffe, seed 1\n" in said
    with_yaml = papermill_cli(*fine_tune_arguments(
        photos, "03-yaml.ipynb", "-y", "seeds: [0, 1]",
        "-p", "weights", str(photos["rel"] / photos["weights"].name)))
    assert with_yaml.returncode == 0, with_yaml.stderr[-4000:]
    book = nbformat.read(photos["root"] / "out" / "03-yaml.ipynb", as_version=4)
    said = text_of(next(cell for cell in book.cells if "compare_recipes(" in cell.source))
    for seed in (0, 1):  # the same runs, trained by the command before: kept
        assert f"run {seed + 1} of 2: caffe, seed {seed}: finished earlier with the same " \
               f"settings, kept" in said
    bad = papermill_cli(*fine_tune_arguments(photos, "03-bad.ipynb", "-p", "seeds", "x"))
    assert bad.returncode != 0
    assert "seeds must be a list of which each item is an integer (in papermill: -p seeds a,b,c " \
           "or -y 'seeds: [a, b, c]'), received: 'x'" in bad.stderr


@pytest.mark.slow
def test_inspect_notebook_on_a_run_from_local_weights(photos):
    book = photo_step(photos, "04")
    first = next(cell for cell in book.cells if "default_layers(" in cell.source)
    assert "caffe-seed0: fine-tuned from mobilenet_v3_small; convolutions shown:" \
        in text_of(first)
    filters = next(cell for cell in book.cells if cell.source == "inspect.compare_filters(before, "
                   "tuned)")
    assert len(outputs(filters, "image/png")) == 1


@pytest.mark.slow
def test_evaluate_notebook_with_the_kernel_in_notebooks(photos):
    photo_step(photos, "05")
    saved = photos["root"] / "runs" / "caffe-seed0" / "evaluation" / "test"
    assert (saved / "predictions.csv").is_file()
    assert set(pd.read_csv(saved / "predictions.csv")["true"]) <= set(photo_folder.CLASSES)


@pytest.mark.slow
def test_classify_notebook_names_the_photo_classes(photos):
    book = photo_step(photos, "06")
    described = text_of(next(cell for cell in book.cells if "Classifier.load(" in cell.source))
    assert "3 classes: birds, cats, dogs" in described


@pytest.mark.slow
def test_fine_tune_notebook_can_find_the_learning_rate_first(workspace):
    book = executed(workspace, "03_fine_tune.ipynb")  # find_lr=True in the tiny parameters
    cell = next(cell for cell in book.cells if "range_test(" in cell.source)
    said = text_of(cell)
    found = re.search(r"suggested base_lr: (\S+) \((.+)\)\s+base_lr (\S+) for the runs below",
                      said)
    assert found, said
    assert found.group(1) == found.group(3) and "two_stage, stage head" in said
    assert len(outputs(cell, "image/png")) == 1  # the range test's plot
    # the runs used the suggestion, but caffe, which keeps its own caffe_base_lr
    for run, base_lr in (("two_stage-seed0", found.group(1)), ("caffe-seed0", "0.001")):
        config = json.loads((workspace["work"] / "fine_tune" / run / "config.json").read_text())
        assert f"{config['solver']['base_lr']:.2g}" == base_lr, run


@pytest.mark.slow
def test_evaluate_notebook_draws_the_reliability_diagram(workspace):
    from workbench.runs import RunDir

    book = executed(workspace, "05_evaluate.ipynb")
    cell = next(cell for cell in book.cells if cell.source == "report.plot_reliability()")
    assert len(outputs(cell, "image/png")) == 1
    run = RunDir(workspace["work"] / DEMO_RUN)
    folder = run.path / "evaluation" / "test"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["temperature"] == run.temperature("best") and summary["calibrated"] is True
    assert {"ece_raw", "ece"} <= set(summary) and (folder / "reliability.png").is_file()
    report = next(cell for cell in book.cells if cell.source.startswith("report = evaluate("))
    assert f"temperature {run.temperature('best'):.3g}" in text_of(report)


# --- the real reason, once (issue 19) ----------------------------------------------------------

ERROR_CHARACTERS = 1000  # a user's mistake reads as a message, not as a traceback (was 11,700)


def error_outputs(book) -> list:
    return [(index, output) for index, cell in enumerate(book.cells)
            for output in cell.get("outputs", []) if output.output_type == "error"]


@pytest.mark.slow
def test_prepare_notebook_stops_at_a_split_that_drops_every_class(tmp_path):
    import tiny_data

    data = tiny_data.write_digits(tmp_path / "photos", per_class=15, size=8)
    with pytest.raises(papermill.PapermillExecutionError) as raised:  # the README's split
        papermill.execute_notebook(
            str(NOTEBOOKS / "01_prepare_data.ipynb"), str(tmp_path / "01.ipynb"),
            parameters={"data_dir": str(data), "out_dir": str(tmp_path / "splits"),
                        "split": "10,10,rest", "min_per_class": 10},
            kernel_name="python3", progress_bar=False)
    said = str(raised.value)  # papermill's rendering: its error and the CLI's
    assert len(said) < ERROR_CHARACTERS, said
    assert "NoClassKept: no class was kept, so nothing was written: counts " \
           "10,10,rest (train, val, test) need 20 distinct images per class; 10 classes have " \
           "fewer: 0 15, 1 15" in said
    book = nbformat.read(tmp_path / "01.ipynb", as_version=4)
    (index, error), = error_outputs(book)  # Jupyter's rendering: what the cell shows
    assert "prepare(" in book.cells[index].source  # it stops at the split, with the reason
    assert len("\n".join(error["traceback"])) < ERROR_CHARACTERS
    assert "no class was kept" in error["traceback"][0]
    assert not any(cell.get("outputs") for cell in book.cells[index + 1:])


@pytest.mark.slow
def test_headless_notebooks_print_epoch_lines_and_leave_no_widgets(photos):
    """papermill (no WORKBENCH_PROGRESS): one line per epoch, no progress bars saved at 0%."""
    book = photo_step(photos, "03")  # progress "auto"
    said = text_of(next(cell for cell in book.cells if "compare_recipes(" in cell.source))
    assert re.search(r"^epoch 1/1 \[all\]  loss \d", said, re.MULTILINE), said
    for step in ("01", "03"):
        saved = photo_step(photos, step)
        kinds = {kind for cell in saved.cells for output in cell.get("outputs", [])
                 for kind in output.get("data", {})}
        assert "application/vnd.jupyter.widget-view+json" not in kinds, step
