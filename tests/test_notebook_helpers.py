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


def fake_keras(folder, start: str) -> dict:
    """The environment of a process whose ``import keras`` runs ``start`` and writes a start-up
    line to file descriptor 2, as TensorFlow's C++ logging does, whatever TensorFlow prints."""
    package = folder / "keras"
    package.mkdir()
    (package / "__init__.py").write_text(
        "import os, types\n"
        "os.write(2, b'I0000 cuda_dnn.cc:8310] a C++ start-up line\\n')\n"
        f"{start}\n"
        "backend = types.SimpleNamespace(backend=lambda: 'numpy')\n")
    return {**{k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"},
            "PYTHONPATH": os.pathsep.join(filter(None, [str(folder),
                                                        os.environ.get("PYTHONPATH")]))}


def test_quiet_silences_what_the_backend_writes_to_stderr_while_it_starts(tmp_path):
    env = fake_keras(tmp_path, "pass")
    loud = subprocess.run([sys.executable, "-c", "import keras"], capture_output=True,
                          text=True, env=env)
    assert loud.returncode == 0 and "a C++ start-up line" in loud.stderr
    code = ("import os, sys; from workbench import notebook; notebook.quiet(); "
            "print(os.environ['TF_CPP_MIN_LOG_LEVEL'], 'keras' in sys.modules); "
            "sys.stderr.write('said after the start\\n')")
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.split() == ["3", "True"]  # Keras started, TensorFlow's C++ log level 3
    assert quiet.stderr == "said after the start\n"  # stderr is back once Keras has started


def test_quiet_still_shows_an_error_of_the_start(tmp_path):
    env = fake_keras(tmp_path, "raise ImportError('no backend could start')")
    result = subprocess.run([sys.executable, "-c", "from workbench import notebook; "
                             "notebook.quiet()"], capture_output=True, text=True, env=env)
    assert result.returncode != 0 and "ImportError: no backend could start" in result.stderr
    assert "a C++ start-up line" not in result.stderr


def test_quiet_starts_the_real_tensorflow_without_a_line_on_stderr():
    code = "from workbench import notebook; notebook.quiet(); import tensorflow"
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"})
    assert quiet.returncode == 0 and quiet.stderr.strip() == ""
