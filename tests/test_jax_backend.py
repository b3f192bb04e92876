"""The training core on Keras's JAX backend (what the GPU machines run).

The backend is fixed when Keras is first imported, so the backend-agnostic test files run again
in a fresh interpreter with ``KERAS_BACKEND=jax``.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
JAX_RUNS = {
    "lr_mult": ["test_lr_mult.py"],
    "pipeline": ["test_pipeline.py"],
    "resume": ["test_finetune.py", "-k", "resume_after_a_kill or feature_extraction"],
}


@pytest.mark.parametrize("name", sorted(JAX_RUNS))
def test_under_jax(name):
    pytest.importorskip("jax")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               *[str(TESTS / arg) if arg.endswith(".py") else arg for arg in JAX_RUNS[name]]]
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=TESTS.parent,
                            timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and " failed" not in result.stdout
