"""``workbench.runs.RunDir``: the one owner of a run directory's file names, reads and writes."""

import ast
import json
import warnings
from pathlib import Path

import pandas as pd
import pytest

from workbench import monitor, runs
from workbench.runs import RunDir

PACKAGE = Path(runs.__file__).parent
# Where one of these names means another folder's file, not a run's.
ELSEWHERE = {
    ("data/split.py", "labels.txt"): "the split folder's own labels.txt",
    ("data/splitdir.py", "labels.txt"): "the split folder's own labels.txt",
    ("models.py", "config.json"): "the config.json inside a .keras archive",
    ("monitor.py", "resources.csv"): "read_resources(a folder), deprecated, for one release",
}


def _run_names() -> tuple[set, tuple]:
    """The names of a run's files (exact), and the prefixes of its numbered ones."""
    names = set(runs.RUN_FILES) | {f"{name}.png" for name in runs.FIGURES}
    return names, ("checkpoint-",)


def _docstrings(tree) -> set:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def _literals_naming_run_files(path: Path) -> list[str]:
    """The string literals of ``path`` (docstrings aside) that name a run file: the whole
    literal is the name, or it builds a path to it (``"x/history.csv"``, ``"checkpoint-..."``),
    and ``/ "export"``-style joins onto a run's folders. Prose that mentions a file (an error
    message, a help text) is not a name."""
    names, prefixes = _run_names()
    folders = {"export", "evaluation", "logs"}
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            text = node.value
            last = text.rsplit("/", 1)[-1]
            if " " not in text and (last in names or text.startswith(prefixes)):
                found.append(text)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and isinstance(
                node.right, ast.Constant) and node.right.value in folders:
            found.append(f"/ {node.right.value!r}")
    return found


def test_no_module_but_runs_names_a_run_file():
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative == "runs.py":
            continue
        names = [name for name in _literals_naming_run_files(path)
                 if (relative, name) not in ELSEWHERE]
        if names:
            found[relative] = names
    assert found == {}, f"ask workbench.runs.RunDir for these instead: {found}"


def test_the_check_finds_a_name(tmp_path):
    """The check above can fail: it finds a literal name, a path to one and a folder join."""
    module = tmp_path / "module.py"
    module.write_text('"""Reads metrics.json."""\n'
                      'A = run_dir / "metrics.json"\nB = "out/history.csv"\n'
                      'C = f"checkpoint-{epoch:04d}.keras"\nD = run_dir / "export"\n'
                      'E = "the notebook wrote no metrics.json"\n')
    assert sorted(_literals_naming_run_files(module)) == sorted(
        ["metrics.json", "out/history.csv", "checkpoint-", "/ 'export'"])


def _finished_run(folder: Path) -> RunDir:
    run = RunDir(folder)
    run.write_config({"classes": ["a", "b"], "image_size": 32, "splits": str(folder)})
    run.write_labels(["a", "b"])
    run.write_metrics({"status": "completed", "epochs": 1, "test_accuracy": 0.5})
    run.write_lr_table(pd.DataFrame({"layer": ["head"], "multiplier": [1.0],
                                     "stage": ["only"]}))
    pd.DataFrame({"epoch": [1], "loss": [0.5], "accuracy": [0.5], "seconds": [1.0]}).to_csv(
        run.history_path, index=False)
    pd.DataFrame({"step": [1, 2], "epoch": [1, 1], "loss": [0.6, 0.5]}).to_csv(
        run.steps_path, index=False)
    return run


def test_what_a_run_lacks_reads_as_none(tmp_path):
    run = RunDir(tmp_path)
    with pytest.raises(FileNotFoundError, match="run directory written by finetune"):
        run.config  # noqa: B018
    assert run.exists is False
    for name in ("metrics", "calibration", "history", "steps", "lr_table", "weight_stats",
                 "resources", "checkpoint_state", "checkpoint_epoch"):
        assert getattr(run, name) is None, name
    assert run.describe() == "no run"


def test_written_files_read_back_afresh(tmp_path):
    run = _finished_run(tmp_path / "run")
    assert run.config["classes"] == ["a", "b"] and run.classes == ["a", "b"]
    assert (run.path / "labels.txt").read_text() == "a\nb\n"
    assert run.metrics["test_accuracy"] == 0.5 and run.finished
    assert run.history["epoch"].tolist() == [1]
    assert len(run.steps) == 2
    assert run.lr_table["stage"].tolist() == ["only"]
    run.write_config({**run.config, "image_size": 64})  # a property reads the file again
    assert run.image_size == 64
    run.remove_metrics()
    assert run.metrics is None and not run.finished
    assert [p.name for p in (run.history_path, run.steps_path, run.weight_stats_path,
                             run.resources_path)] == ["history.csv", "steps.csv",
                                                      "weight_stats.csv", "resources.csv"]
    assert run.evaluation_dir("test") == run.path / "evaluation" / "test"
    assert run.export_dir == run.path / "export"
    assert run.checkpoint_path(7).name == "checkpoint-0007.keras"
    assert run.figure_path("curves").name == "curves.png"


def test_model_files_by_role(tmp_path):
    run = RunDir(tmp_path)
    with pytest.raises(FileNotFoundError, match="no finished model"):
        run.model_path("best")
    saved = []

    class Model:  # what save_model asks of a Keras model
        def save(self, path):
            saved.append(Path(path).name)
            Path(path).write_bytes(b"model")

    assert run.save_model(Model(), "final") == tmp_path / "model.keras"
    assert run.model_path("best") == tmp_path / "model.keras"  # no best.keras: the final one
    run.save_model(Model(), "best")
    assert run.model_path("best") == tmp_path / "best.keras"
    assert run.which_model(tmp_path / "best.keras") == "best"
    assert run.which_model(tmp_path / "model.keras") == "final"
    assert run.which_model(tmp_path / "initial.keras") is None
    assert all(name.endswith(".keras") and name.startswith(".") for name in saved)  # atomic
    assert not list(tmp_path.glob(".*"))
    with pytest.raises(ValueError, match="which must be one of"):
        run.save_model(Model(), "last")


def test_history_steps_and_lr_table_may_still_be_called_for_one_release(tmp_path):
    run = _finished_run(tmp_path / "run")
    for name in ("history", "steps", "lr_table"):
        table = getattr(run, name)
        with pytest.deprecated_call(match=rf"RunDir.{name}\(\) is deprecated"):
            called = table()
        assert type(called) is pd.DataFrame
        pd.testing.assert_frame_equal(called, pd.DataFrame(table))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reading the property warns nothing
        assert type(run.history.assign(x=1)) is pd.DataFrame


def test_checkpoint_state_and_clear(tmp_path):
    run = _finished_run(tmp_path)
    run.checkpoint_path(3).write_bytes(b"model")
    run.write_checkpoint_state({"epoch": 3, "model": run.checkpoint_path(3).name})
    assert run.checkpoint_epoch == 3 and run.resumable
    (tmp_path / "notes.txt").write_text("mine")
    run.clear()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_weight_stats_and_resources_read_through_the_run(tmp_path):
    run = RunDir(tmp_path)
    pd.DataFrame({"epoch": [1], "layer": ["dense"], "weight": ["kernel"], "mean_abs": [0.1],
                  "update_ratio": [0.01]}).to_csv(run.weight_stats_path, index=False)
    assert run.weight_stats["layer"].tolist() == ["dense"]
    with warnings.catch_warnings():  # "no GPU found" where there is none
        warnings.simplefilter("ignore", RuntimeWarning)
        with monitor.ResourceMonitor(run.resources_path, interval=0.05):
            pass
    assert run.resources is not None and len(run.resources) >= 1
    with pytest.warns(DeprecationWarning, match="RunDir"):
        assert len(monitor.read_resources(tmp_path)) == len(run.resources)


def test_run_is_a_deprecated_name_of_rundir(tmp_path):
    from workbench.training.train import Run

    _finished_run(tmp_path)
    with pytest.warns(DeprecationWarning, match="RunDir"):
        loaded = Run.load(tmp_path)
    with pytest.warns(DeprecationWarning, match="RunDir"):
        built = Run(tmp_path, {}, None, None)
    for run in (loaded, built):
        assert type(run) is RunDir and run.path == tmp_path
        assert run.metrics["status"] == "completed"
        assert run.history["epoch"].tolist() == [1]
    with pytest.warns(DeprecationWarning, match="run.path"):
        assert loaded.run_dir == tmp_path
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert loaded.path == tmp_path  # the new names do not warn


def test_a_damaged_file_is_named(tmp_path):
    run = _finished_run(tmp_path)
    (tmp_path / "metrics.json").write_text("{not json")
    with pytest.raises(ValueError, match="metrics.json is not readable JSON"):
        run.metrics  # noqa: B018
    assert json.loads((tmp_path / "config.json").read_text())["image_size"] == 32


def test_runs_imports_no_pandas():
    import subprocess
    import sys

    code = "import sys, workbench.runs; print('pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"
