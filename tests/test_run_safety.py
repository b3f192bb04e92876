"""Nothing lost: a failed ``train`` leaves an existing run as it was, and ``kill -9`` at any
moment followed by ``--resume`` gives the files of an uninterrupted run, with no leftovers."""

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest

import tiny_data
from workbench.cli import main
from workbench.models import StartingPoint
from workbench.runs import RunDir
from workbench.training import callbacks as cb
from workbench.training.solver import SolverConfig
from workbench.training.train import finetune

LENET = StartingPoint("lenet", weights=None)
TESTS = Path(__file__).resolve().parent
SOLVER = dict(epochs=6, batch_size=8, base_lr=0.02, lr_policy="cosine")

# The same run in a child process, one line per epoch on stdout ("epoch 3/6 ...").
CHILD = """
import sys
sys.path.insert(0, sys.argv[3])
from workbench.models import StartingPoint
from workbench.training.solver import SolverConfig
from workbench.training.train import finetune
finetune(sys.argv[1], sys.argv[2], start=StartingPoint("lenet", weights=None), recipe="two_stage",
         image_size=16, seed=4, solver=SolverConfig(**{solver}), progress="lines", resume=True)
"""


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    return tiny_data.write_splits(tmp_path_factory.mktemp("digits"), per_class=10,
                                  counts=(6, "rest", 2))


@pytest.fixture(scope="module")
def finished_run(splits, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    finetune(splits, run_dir, start=LENET, recipe="scratch", image_size=16,
             solver=SolverConfig(epochs=1, batch_size=8), progress="none")
    return run_dir


@pytest.fixture(scope="module")
def whole_run(splits, tmp_path_factory):
    """The child's run, uninterrupted: trained once for the module, compared against by the kill
    tests and copied by the test that overwrites it (tests only read it)."""
    run_dir = tmp_path_factory.mktemp("whole") / "run"
    assert run_child(splits, run_dir) == 0
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
    arguments = ["train", "--splits", str(splits), "--run-dir", str(finished_run),
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
def test_kill_9_at_random_moments_then_resume_equals_an_uninterrupted_run(splits, whole_run,
                                                                          tmp_path):
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
    whole, resumed = comparable(whole_run), comparable(run_dir)
    for name in whole:
        pd.testing.assert_frame_equal(whole[name], resumed[name], rtol=1e-5, obj=name)


# ---------------------------------------------------------------- a finished run is immutable

TRAIN = ["--recipe", "scratch", "--backbone", "lenet", "--weights", "none", "--image-size", "16",
         "--epochs", "1", "--batch-size", "8"]


def train_into(splits, run_dir, *extra) -> list[str]:
    return ["train", "--splits", str(splits), "--run-dir", str(run_dir), *TRAIN, *extra]


def error_line(capsys) -> str:
    error = capsys.readouterr().err
    assert "Traceback" not in error
    lines = [line for line in error.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, error
    return lines[0]


def test_a_plain_rerun_into_a_finished_run_refuses_and_names_the_three_choices(
        splits, finished_run, capsys):
    before = fingerprint(finished_run)
    assert main(train_into(splits, finished_run)) == 2
    line = error_line(capsys)
    assert "finished at epoch 1" in line and "accuracy" in line
    assert "--resume" in line and "--overwrite" in line and "--run-dir" in line
    assert "resume=True" not in line  # the library's words are not the command's
    assert fingerprint(finished_run) == before


def test_a_plain_rerun_into_an_interrupted_run_keeps_its_checkpoint(splits, tmp_path, capsys):
    run_dir = tmp_path / "run"
    finetune(splits, run_dir, start=LENET, recipe="scratch", image_size=16,
             solver=SolverConfig(epochs=2, batch_size=8, snapshot_interval=1), progress="none")
    for name in ("metrics.json", "model.keras", "curves.png"):  # as a kill before the end
        (run_dir / name).unlink()
    before = fingerprint(run_dir)
    assert main(train_into(splits, run_dir)) == 2
    assert "interrupted at epoch 2" in error_line(capsys)
    assert fingerprint(run_dir) == before
    with pytest.raises(ValueError, match="resume=True.*overwrite=True.*another run_dir"):
        finetune(splits, run_dir, start=LENET, recipe="scratch",
                 image_size=16, solver=SolverConfig(epochs=2, batch_size=8), progress="none")
    assert fingerprint(run_dir) == before


@pytest.mark.parametrize("bad", [
    ["--lr-mult", "nomatch*=0"],        # a rule that names no weight of the model
    ["--decay-mult", "nothing*=0"],
])
def test_a_rule_that_names_nothing_changes_nothing(splits, finished_run, tmp_path, capsys, bad):
    before = fingerprint(finished_run)
    assert main(train_into(splits, finished_run, "--overwrite", *bad)) == 2
    assert "matches no layer" in error_line(capsys)
    assert fingerprint(finished_run) == before
    fresh = tmp_path / "fresh"
    assert main(train_into(splits, fresh, *bad)) == 2
    assert not fresh.exists() or not any(fresh.iterdir())


def test_a_diverging_overwrite_leaves_the_finished_run_and_says_so(
        splits, finished_run, capsys, monkeypatch):
    before = fingerprint(finished_run)

    def diverge(self, batch, logs=None):
        self.problem = f"the loss became nan at batch {batch + 1}"
        self.model.stop_training = True

    monkeypatch.setattr(cb.DivergenceGuard, "on_train_batch_end", diverge)
    assert main(train_into(splits, finished_run, "--overwrite", "--base-lr", "1e6")) == 1
    line = error_line(capsys)
    assert "still holds the run that was there" in line and "--base-lr" in line
    assert "checkpoint" not in line and "resume=True" not in line
    assert fingerprint(finished_run) == before
    assert [p.name for p in finished_run.parent.iterdir() if p.name.startswith(".")] == []


def test_a_diverging_first_epoch_names_no_checkpoint_that_does_not_exist(
        splits, tmp_path, monkeypatch):
    def diverge(self, batch, logs=None):
        self.problem = "the loss became nan at batch 1"
        self.model.stop_training = True

    monkeypatch.setattr(cb.DivergenceGuard, "on_train_batch_end", diverge)
    with pytest.raises(cb.TrainingDiverged) as raised:
        finetune(splits, tmp_path / "run", start=LENET, recipe="scratch",
                 image_size=16, solver=SolverConfig(epochs=2, batch_size=8), progress="none")
    assert "no checkpoint was written" in str(raised.value)
    assert not list((tmp_path / "run").glob("checkpoint*"))


def test_overwrite_replaces_a_finished_run_in_one_step(splits, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(train_into(splits, run_dir, "--seed", "1")) == 0
    (run_dir / "export").mkdir()  # belongs to the old model
    assert main(train_into(splits, run_dir, "--seed", "2", "--overwrite")) == 0
    assert json.loads((run_dir / "config.json").read_text())["seed"] == 2
    assert not (run_dir / "export").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no staging folder left


@pytest.mark.parametrize("argument, message", [
    (["--epochs", "1000000000000"], "--epochs must be <= 100000"),
    (["--batch-size", "1000000000"], "--batch-size must be <= 65536"),
    (["--image-size", "100000"], "--image-size must be <= 4096"),
])
def test_absurd_values_are_refused_before_any_work(splits, tmp_path, capsys, argument, message):
    run_dir = tmp_path / "run"
    arguments = train_into(splits, run_dir)
    for flag, value in zip(argument[::2], argument[1::2]):  # the later flag wins in argparse
        arguments += [flag, value]
    assert main(arguments) == 2
    assert message in error_line(capsys)
    assert not run_dir.exists()


def test_serve_refuses_an_endless_upload_timeout(tmp_path, capsys):
    assert main(["serve", str(tmp_path), "--upload-timeout", "inf"]) == 2
    assert "finite" in error_line(capsys)


# A child that trains into an existing run with overwrite=True, one line per epoch.
OVERWRITE_CHILD = CHILD.replace("resume=True", "overwrite=True")


@pytest.mark.slow
def test_a_killed_overwrite_leaves_the_old_run_and_the_next_one_cleans_up(splits, whole_run,
                                                                          tmp_path):
    run_dir = shutil.copytree(whole_run, tmp_path / "run")  # a finished run of the child's
    before = fingerprint(run_dir)
    code = OVERWRITE_CHILD.format(solver=repr(SOLVER))
    child = subprocess.Popen([sys.executable, "-c", code, str(splits), str(run_dir), str(TESTS)],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in child.stdout:
        if line.startswith("epoch 2/"):
            child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=300) == -signal.SIGKILL
    assert fingerprint(run_dir) == before
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".run.")]  # the staging folder
    RunDir(run_dir).recover()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert fingerprint(run_dir) == before


def test_a_kill_between_the_two_renames_of_a_swap_puts_the_old_run_back(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{}")
    dead = 2 ** 22 + 17  # no process has this id (Linux's pid_max is at most 2**22)
    os.replace(run_dir, tmp_path / f".run.old.{dead}.0123abcd")  # set aside, then killed
    (tmp_path / f".run.{dead}.89abcdef").mkdir()
    RunDir(run_dir).recover()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert (run_dir / "config.json").read_text() == "{}"


# Killed right after the checkpoint that ends the first stage (two_stage), before anything else.
STAGE_END_CHILD = """
import os, signal, sys
sys.path.insert(0, sys.argv[3])
from workbench.models import StartingPoint
from workbench.training import checkpoint, recipes
from workbench.training.solver import SolverConfig
from workbench.training.train import finetune
first_stage = recipes.get_recipe("two_stage").stage_epochs({epochs})[0]
save = checkpoint.save_checkpoint
def save_then_die(run_dir, model, state):
    path = save(run_dir, model, state)
    if state["epoch"] == first_stage:
        os.kill(os.getpid(), signal.SIGKILL)
    return path
checkpoint.save_checkpoint = save_then_die
finetune(sys.argv[1], sys.argv[2], start=StartingPoint("lenet", weights=None), recipe="two_stage",
         image_size=16, seed=4, solver=SolverConfig(**{solver}), progress="none")
"""

TIMING = ("train_seconds", "images_per_second")


@pytest.mark.slow
def test_a_kill_at_the_stage_boundary_then_resume_equals_an_uninterrupted_run(splits, whole_run,
                                                                               tmp_path):
    run_dir = tmp_path / "killed"
    code = STAGE_END_CHILD.format(solver=repr(SOLVER), epochs=SOLVER["epochs"])
    killed = subprocess.run([sys.executable, "-c", code, str(splits), str(run_dir), str(TESTS)],
                            capture_output=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL
    assert run_child(splits, run_dir) == 0  # resumes after the first stage
    whole, resumed = comparable(whole_run), comparable(run_dir)
    for name in whole:
        pd.testing.assert_frame_equal(whole[name], resumed[name], rtol=1e-5, obj=name)
    metrics = {name: json.loads((folder / "metrics.json").read_text())
               for name, folder in (("whole", whole_run), ("resumed", run_dir))}
    for values in metrics.values():
        for key in [key for key in values if key.startswith("resources_") or key in TIMING]:
            values.pop(key)
    assert metrics["whole"] == metrics["resumed"]


def test_timing_sums_every_attempt(splits, tmp_path):
    run_dir = tmp_path / "run"
    solver = SolverConfig(epochs=2, batch_size=8, snapshot_interval=1)
    finetune(splits, run_dir, start=LENET, recipe="scratch", image_size=16,
             solver=solver, progress="none")
    for name in ("metrics.json", "model.keras"):  # killed after the last checkpoint
        (run_dir / name).unlink()
    run = finetune(splits, run_dir, start=LENET, recipe="scratch",
                   image_size=16, solver=solver, progress="none", resume=True)
    seconds = float(run.history["seconds"].sum())
    steps = len(pd.read_csv(run_dir / "steps.csv"))
    assert seconds > 0 and steps > 0
    assert run.metrics["train_seconds"] == round(seconds, 3)
    assert run.metrics["images_per_second"] == round(steps * 8 / seconds, 1)
