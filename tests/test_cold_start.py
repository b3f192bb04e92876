"""A prediction starts light: `Classifier.load` + predict, `workbench predict RUN IMAGE` and the
start of `workbench serve`, each in a fresh interpreter, import neither pandas, SciPy nor
TensorFlow, Keras or JAX once the run is exported (issue 23, "Cold start, again": pandas alone
was half of the start-up). The time itself is measured by benchmarks/cold_start.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import workbench
from serving import digit

# What the fast path must not load: each costs a tenth of a second to seconds of a cold start.
HEAVY = ("pandas", "scipy", "tensorflow", "keras", "jax", "matplotlib", "sklearn")
SOURCE = str(Path(workbench.__file__).resolve().parent.parent)  # the workbench under test

_PRELUDE = """
import json, sys
def heavy():
    return sorted({name.split(".")[0] for name in sys.modules} & set(HEAVY))
"""
_REPORT = """
print(json.dumps({"result": result, "loaded": heavy()}))
"""


def _fresh(code: str, tmp_path: Path) -> dict:
    """Runs ``code`` (which sets ``result``) in a new interpreter outside the repository, so
    nothing is imported before it; returns ``{"result", "loaded"}`` (the packages of
    :data:`HEAVY` it imported)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [SOURCE, *filter(None, [os.environ.get("PYTHONPATH")])])}
    script = f"HEAVY = {HEAVY!r}\n{_PRELUDE}\n{code}\n{_REPORT}"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def image(served_run, tmp_path_factory):
    path = tmp_path_factory.mktemp("cold") / "three.png"
    path.write_bytes(digit(served_run, 3))
    return path


@pytest.mark.parametrize("asked", ["auto", "litert", "onnx"])
def test_classifier_load_and_predict_import_no_heavy_library(served_run, image, asked,
                                                             tmp_path):
    found = _fresh(f"""
from workbench import Classifier
classifier = Classifier.load({str(served_run.run)!r}, runtime={asked!r})
result = [classifier.runtime, classifier.predict({str(image)!r}, top_k=3)]
""", tmp_path)
    runtime, top = found["result"]
    assert runtime in ("litert", "onnx") and (asked == "auto" or runtime == asked)
    assert found["loaded"] == [], f"{asked}: imported {found['loaded']}"
    expected = served_run.classifier.predict(image, top_k=3)  # the same answer, in this process
    assert [row["label"] for row in top] == [row["label"] for row in expected]
    assert [row["probability"] for row in top] == pytest.approx(
        [row["probability"] for row in expected], abs=1e-4)


def test_cli_predict_imports_no_heavy_library(served_run, image, tmp_path):
    found = _fresh(f"""
import contextlib, io
import workbench.cli
before = heavy()
out = io.StringIO()
with contextlib.redirect_stdout(out):
    status = workbench.cli.main(["predict", {str(served_run.run)!r}, {str(image)!r}])
result = [before, status, out.getvalue()]
""", tmp_path)
    before, status, printed = found["result"]
    assert before == [], f"import workbench.cli imported {before}"
    assert status == 0, printed
    assert found["loaded"] == [], f"workbench predict imported {found['loaded']}"
    top = served_run.classifier.predict(image, top_k=5)[0]["label"]
    assert printed.splitlines()[1].split()[:2] == ["1.", top]  # it printed the top-5


def test_serve_start_imports_no_heavy_library(served_run, tmp_path):
    found = _fresh(f"""
import uvicorn
from workbench.deploy.serve import create_app
app = create_app({str(served_run.run)!r})
result = app.state.classifier.runtime
""", tmp_path)
    assert found["result"] in ("litert", "onnx")
    assert found["loaded"] == [], f"workbench serve imported {found['loaded']}"
