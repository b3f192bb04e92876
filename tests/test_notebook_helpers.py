"""The notebooks' shared helpers: project-relative paths and papermill-friendly lists."""

import os
import subprocess
import sys

import pytest

from workbench import notebook


@pytest.mark.parametrize("value,item_type,expected", [
    ("0,1,2", int, [0, 1, 2]), (0, int, [0]), ([0, 1], int, [0, 1]), ((3,), int, [3]),
    ("two_stage, scratch", str, ["two_stage", "scratch"]), ("caffe", str, ["caffe"]),
    ("0.1,1e-3", float, [0.1, 0.001]), (2, float, [2.0]),
])
def test_as_list_takes_what_papermill_injects(value, item_type, expected):
    assert notebook.as_list("seeds", value, item_type) == expected


@pytest.mark.parametrize("value", ["x", "1.5", [1.5], True, "", [], "0,,x"])
def test_as_list_names_the_parameter_and_how_to_pass_a_list(value):
    with pytest.raises(ValueError, match=r"seeds must .*received"):
        notebook.as_list("seeds", value, int)


def test_relative_paths_mean_the_same_from_the_root_and_from_notebooks(tmp_path, monkeypatch):
    (tmp_path / "notebooks").mkdir()
    monkeypatch.delenv(notebook.ROOT_VARIABLE, raising=False)
    monkeypatch.chdir(tmp_path)
    from_root = notebook.path("runs/demo")
    monkeypatch.chdir(tmp_path / "notebooks")
    assert notebook.path("runs/demo") == from_root == tmp_path.resolve() / "runs/demo"
    assert notebook.path("/abs/x") == notebook.Path("/abs/x") and notebook.path(None) is None
    monkeypatch.setenv(notebook.ROOT_VARIABLE, str(tmp_path / "elsewhere"))
    assert notebook.path("a") == (tmp_path / "elsewhere").resolve() / "a"
    with pytest.raises(ValueError, match="path parameter"):
        notebook.path(3)


def test_quiet_silences_the_cuda_probe_of_tensorflow():
    code = "from workbench import notebook; notebook.quiet(); import tensorflow"
    loud = subprocess.run([sys.executable, "-c", "import tensorflow"], capture_output=True,
                          text=True, env={k: v for k, v in os.environ.items()
                                          if k != "TF_CPP_MIN_LOG_LEVEL"})
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"})
    assert quiet.returncode == 0 and quiet.stderr.strip() == ""
    assert loud.stderr.strip() != ""  # what quiet() silences is really printed otherwise
