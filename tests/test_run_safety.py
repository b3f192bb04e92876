"""Nothing lost: a failed ``train`` leaves an existing run as it was, and ``kill -9`` at any
moment followed by ``--resume`` gives the files of an uninterrupted run, with no leftovers."""

import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest

import tiny_data
from workbench.cli import main
from workbench.training.solver import SolverConfig
from workbench.training.train import finetune

TESTS = Path(__file__).resolve().parent
SOLVER = dict(epochs=6, batch_size=8, base_lr=0.02, lr_policy="cosine")

# The same run in a child process, one line per epoch on stdout ("epoch 3/6 ...").
CHILD = """
import sys
sys.path.insert(0, sys.argv[3])
from workbench.training.solver import SolverConfig
from workbench.training.train import finetune
finetune(sys.argv[1], sys.argv[2], backbone="lenet", weights=None, recipe="two_stage",
         image_size=16, seed=4, solver=SolverConfig(**{solver}), progress="lines", resume=True)
"""


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    return tiny_data.write_splits(tmp_path_factory.mktemp("digits"), per_class=10,
                                  counts=(6, "rest", 2))


@pytest.fixture(scope="module")
def finished_run(splits, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    finetune(splits, run_dir, backbone="lenet", weights=None, recipe="scratch", image_size=16,
             solver=SolverConfig(epochs=1, batch_size=8), progress="none")
    return run_dir


def fingerprint(folder: Path) -> dict:
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("bad", [
    ["--backbone", "lenet", "--splits", "{missing}"],   # a split folder that is not there
    ["--source", "{missing}/model.keras"],              # a source model that is not there
    ["--backbone", "mobilenet_v2", "--weights", "{missing}/w.h5", "--image-size", "32",
     "--recipe", "feature_extraction"],                 # weights that cannot be loaded
    ["--backbone", "lenet", "--epochs", "1", "--recipe", "two_stage"],  # too few epochs
])
def test_a_failed_train_into_an_existing_run_leaves_it_byte_identical(
        splits, finished_run, tmp_path, capsys, bad):
    before = fingerprint(finished_run)
    arguments = ["train", "--splits", str(splits), "--out", str(finished_run),
                 "--recipe", "scratch", "--image-size", "16", "--epochs", "1",
                 "--batch-size", "8"]
    arguments += [part.format(missing=tmp_path / "missing") for part in bad]
    assert main(arguments) in (1, 2)
    assert fingerprint(finished_run) == before
    error = capsys.readouterr().err
    assert "Traceback" not in error
    assert [line for line in error.splitlines() if line.startswith("error:")] == \
        [error.strip().splitlines()[-1]]


def run_child(splits, run_dir, *, kill_after_epoch=None, delay=0.0):
    """Runs the child; with ``kill_after_epoch``, kills it -9 ``delay`` seconds after it prints
    that epoch's line. Returns the exit code."""
    code = CHILD.format(solver=repr(SOLVER))
    child = subprocess.Popen([sys.executable, "-c", code, str(splits), str(run_dir), str(TESTS)],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                             env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    killer = None
    for line in child.stdout:
        if kill_after_epoch is not None and line.startswith(f"epoch {kill_after_epoch}/"):
            killer = threading.Timer(delay, child.send_signal, (signal.SIGKILL,))
            killer.start()
    code = child.wait(timeout=300)
    if killer is not None:
        killer.cancel()
    return code


def comparable(run_dir: Path) -> dict:
    history = pd.read_csv(run_dir / "history.csv").drop(columns="seconds")
    return {"history": history, "steps": pd.read_csv(run_dir / "steps.csv"),
            "lr_table": pd.read_csv(run_dir / "lr_table.csv"),
            "weight_stats": pd.read_csv(run_dir / "weight_stats.csv")}


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_equals_an_uninterrupted_run(splits, tmp_path):
    assert run_child(splits, tmp_path / "whole") == 0
    rng = random.Random(7)
    run_dir = tmp_path / "killed"
    kills = 0
    for _ in range(3):  # seeded moments: after a random epoch line, a random fraction of an epoch
        code = run_child(splits, run_dir, kill_after_epoch=rng.randint(1, SOLVER["epochs"] - 1),
                         delay=rng.uniform(0.0, 0.5))
        kills += code == -signal.SIGKILL
    assert kills >= 1  # at least one child really died mid-run
    assert run_child(splits, run_dir) == 0  # the last resume finishes the run
    leftovers = [path.name for path in run_dir.iterdir() if path.name.startswith(".")]
    assert leftovers == []
    whole, resumed = comparable(tmp_path / "whole"), comparable(run_dir)
    for name in whole:
        pd.testing.assert_frame_equal(whole[name], resumed[name], rtol=1e-5, obj=name)
