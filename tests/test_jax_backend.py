"""The training core on Keras's JAX backend (what the GPU machines run).

The backend is fixed when Keras is first imported, so the backend-agnostic test files run again,
all in one fresh interpreter with ``KERAS_BACKEND=jax``; each file's outcome is its own test
here.
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from xml.etree import ElementTree

import pytest

from jax_env import jax_env

TESTS = Path(__file__).parent
JAX_RUNS = {  # a test file, and the tests of it that run under JAX ("" for all)
    "compat": ("test_compat.py", "not uvicorn and not starlette and not bounded"),
    "lr_mult": ("test_lr_mult.py", ""),
    "pipeline": ("test_pipeline.py", ""),
    "resume": ("test_finetune.py", "resume_after_a_kill or feature_extraction or resumes_exactly"),
}


@pytest.fixture(scope="module")
def jax_outcomes(tmp_path_factory) -> dict:
    """Every selection of :data:`JAX_RUNS` in one JAX interpreter (one start-up of pytest, JAX
    and Keras instead of four); returns each file's outcomes from the JUnit report."""
    pytest.importorskip("jax")
    folder = tmp_path_factory.mktemp("jax")
    report = folder / "report.xml"
    chosen = " or ".join(f"({file} and ({tests}))" if tests else file
                         for file, tests in JAX_RUNS.values())
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               f"--junitxml={report}", "-k", chosen,
               *[str(TESTS / file) for file, _ in JAX_RUNS.values()]]
    result = subprocess.run(command, env=jax_env(folder / "jax-cache"), capture_output=True,
                            text=True, cwd=TESTS.parent, timeout=1800)
    assert report.is_file(), result.stdout[-4000:] + result.stderr[-2000:]
    outcomes = {}
    for case in ElementTree.parse(report).iter("testcase"):
        problems = [f"{child.tag}: {child.get('message', '')}" for child in case
                    if child.tag in ("failure", "error", "skipped")]
        module = case.get("classname", "").split(".")[1]  # tests.test_x[.Class]
        outcomes.setdefault(f"{module}.py", []).append((case.get("name"), problems))
    return {"outcomes": outcomes, "output": result.stdout[-4000:]}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(JAX_RUNS))
def test_under_jax(name, jax_outcomes):
    file, _ = JAX_RUNS[name]
    ran = jax_outcomes["outcomes"].get(file, [])
    failed = [(test, problems) for test, problems in ran
              if any(not problem.startswith("skipped") for problem in problems)]
    assert not failed, (failed, jax_outcomes["output"])
    assert any(not problems for _, problems in ran), (ran, jax_outcomes["output"])  # one passed


# The GPU machines have no TensorFlow: everything the training path imports, and a short run of
# it, must work when ``import tensorflow`` fails.
WITHOUT_TENSORFLOW = textwrap.dedent("""
    import importlib, json, sys

    class NoTensorFlow:
        def find_spec(self, name, path=None, target=None):
            if name == "tensorflow" or name.startswith("tensorflow."):
                raise ImportError(f"{name} is blocked: the GPU machine has no TensorFlow")
            return None

    sys.meta_path.insert(0, NoTensorFlow())
    for module in ("workbench.training.train", "workbench.data.pipeline", "workbench.monitor",
                   "workbench.plots", "workbench.studies.throughput"):
        importlib.import_module(module)  # an ImportError here fails the test

    sys.path.insert(0, sys.argv[2])
    import tiny_data
    from pathlib import Path
    from workbench.models import StartingPoint
    from workbench.studies.throughput import training_images_per_second
    from workbench.training.solver import SolverConfig
    from workbench.training.train import finetune

    splits = tiny_data.write_splits(Path(sys.argv[1]), per_class=6, counts=(4, 1, 1))
    run = finetune(splits, Path(sys.argv[1]) / "run", start=StartingPoint("lenet", weights=None),
                   recipe="caffe", image_size=16, progress="none",
                   solver=SolverConfig(epochs=1, batch_size=8))
    speed = training_images_per_second("cifar_cnn", image_size=16, batch_size=4, steps=1,
                                       warmup=1, lr_mult={"head*": 10.0})
    print(json.dumps({"status": run.metrics["status"], "speed": speed}))
""")


@pytest.mark.slow
def test_the_training_path_runs_without_tensorflow(tmp_path):
    pytest.importorskip("jax")
    result = subprocess.run([sys.executable, "-c", WITHOUT_TENSORFLOW, str(tmp_path), str(TESTS)],
                            env=jax_env(tmp_path / "jax-cache"), capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["status"] == "completed" and out["speed"] > 0
    # JAX without a GPU trains ~18x slower than TensorFlow on the CPU: said once, with the fix
    assert result.stderr.count("set KERAS_BACKEND=tensorflow") == 1
