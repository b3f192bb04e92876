"""Running a recipe comparison again never gets stuck: finished runs are kept, interrupted ones
continue, a failed start is trained afresh, changed settings start a run again (saying so), and
``overwrite=True`` trains every run again (``resume=False`` still does, deprecated)."""

import json
import shutil

import pandas as pd
import pytest

import tiny_data
from workbench.models import StartingPoint
from workbench.studies.recipes import compare_recipes
from workbench.training import checkpoint
from workbench.training.solver import SolverConfig
from workbench.training.train import SettingsChanged, finetune

SOLVER = SolverConfig(epochs=2, batch_size=16, base_lr=0.01)
OPTIONS = dict(recipes=("scratch",), start=StartingPoint("lenet", weights=None), image_size=16,
               solver=SOLVER, progress="lines")


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    return tiny_data.write_splits(tmp_path_factory.mktemp("reruns"), per_class=8,
                                  counts=(4, "rest", 2))


@pytest.fixture(scope="module")
def first_comparison(splits, tmp_path_factory):
    """A comparison of seed 0 (OPTIONS, quiet) into a folder that holds only a failed start of
    that run (a config.json and nothing else), made once for the module: returns the folder and
    the table."""
    root = tmp_path_factory.mktemp("compared")
    failed = root / "scratch-seed0"
    failed.mkdir()
    (failed / "config.json").write_text(json.dumps({"recipe": "scratch", "epochs": 99}))
    results = compare_recipes(splits, root, seeds=(0,), **{**OPTIONS, "progress": "none"})
    return root, results


@pytest.fixture(scope="module")
def compared(first_comparison):
    """The finished comparison of seed 0: a test that goes on with it works on a copy."""
    return first_comparison[0]


class Killed(Exception):
    """Stands for Ctrl-C or a killed kernel in the middle of a run."""


def stamp(run_dir):
    return (run_dir / "model.keras").stat().st_mtime_ns


def test_a_rerun_keeps_finished_runs_and_continues_the_interrupted_one(splits, compared,
                                                                       tmp_path, monkeypatch,
                                                                       capsys):
    tmp_path = shutil.copytree(compared, tmp_path / "runs")  # seed 0 finished earlier
    real_save = checkpoint.save_checkpoint

    def killed_in_seed_1(run_dir, model, state):
        real_save(run_dir, model, state)
        if run_dir.name == "scratch-seed1" and state["epoch"] == 1:
            raise Killed

    monkeypatch.setattr(checkpoint, "save_checkpoint", killed_in_seed_1)
    with pytest.raises(Killed):
        compare_recipes(splits, tmp_path, seeds=(0, 1), **OPTIONS)
    monkeypatch.setattr(checkpoint, "save_checkpoint", real_save)
    first = capsys.readouterr().out
    assert "run 1 of 2: scratch, seed 0" in first and "run 2 of 2: scratch, seed 1" in first
    finished = stamp(compared / "scratch-seed0")
    assert stamp(tmp_path / "scratch-seed0") == finished  # copied, not trained again

    results = compare_recipes(splits, tmp_path, seeds=(0, 1), **OPTIONS)
    again = capsys.readouterr().out
    assert "run 1 of 2: scratch, seed 0: finished earlier with the same settings, kept" in again
    assert "run 2 of 2: scratch, seed 1\n" in again and "resuming" in again
    assert stamp(tmp_path / "scratch-seed0") == finished  # not trained again
    resumed = pd.read_csv(tmp_path / "scratch-seed1" / "history.csv")
    assert list(resumed["epoch"]) == [1, 2]  # epoch 1 from before the kill, epoch 2 now
    assert list(results["seed"]) == [0, 1] and set(results["status"]) == {"completed"}


def test_a_folder_holding_only_a_failed_start_never_blocks(first_comparison):
    root, results = first_comparison  # trained afresh where a failed start was
    assert (root / "scratch-seed0" / "model.keras").is_file()
    assert results["status"].tolist() == ["completed"] and results["epochs"].tolist() == [2]


def test_changed_settings_start_the_run_again_in_one_line(splits, compared, tmp_path, capsys):
    tmp_path = shutil.copytree(compared, tmp_path / "runs")
    results = compare_recipes(splits, tmp_path, seeds=(0,),
                              **{**OPTIONS, "solver": SOLVER.replace(epochs=1)})
    said = capsys.readouterr().out
    assert "run 1 of 1: scratch, seed 0: the settings changed (solver), so it starts again" in said
    assert results["epochs"].tolist() == [1]
    with pytest.raises(SettingsChanged) as changed:  # what compare_recipes catches
        finetune(splits, tmp_path / "scratch-seed0", recipe="scratch", seed=0, resume=True,
                 **{key: value for key, value in OPTIONS.items() if key != "recipes"})
    assert changed.value.settings == ["solver"] and isinstance(changed.value, ValueError)


def test_overwrite_trains_finished_runs_again(splits, compared, tmp_path, capsys):
    quiet = {**OPTIONS, "progress": "none"}
    tmp_path = shutil.copytree(compared, tmp_path / "runs")
    before = stamp(tmp_path / "scratch-seed0")
    compare_recipes(splits, tmp_path, seeds=(0,), **quiet)
    assert stamp(tmp_path / "scratch-seed0") == before
    compare_recipes(splits, tmp_path, seeds=(0,), overwrite=True, **quiet)
    assert stamp(tmp_path / "scratch-seed0") != before
    assert capsys.readouterr().out == ""  # progress="none" says nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scratch-seed0"]  # nothing left beside


def test_resume_false_still_trains_again_with_a_deprecation_warning(splits, compared, tmp_path):
    quiet = {**OPTIONS, "progress": "none"}
    tmp_path = shutil.copytree(compared, tmp_path / "runs")
    before = stamp(tmp_path / "scratch-seed0")
    with pytest.deprecated_call(match="overwrite=True"):
        compare_recipes(splits, tmp_path, seeds=(0,), resume=False, **quiet)
    assert stamp(tmp_path / "scratch-seed0") != before


@pytest.mark.parametrize("bad,message", [
    ({"seeds": "0,1"}, "seeds must be a list"), ({"seeds": ()}, "seeds must not be empty"),
    ({"seeds": (-1,)}, "seeds must be"), ({"recipes": ("fast",)}, "recipe must be"),
    ({"overwrite": "yes"}, "overwrite must be True or False"),
    ({"solvers": {"caffe": SOLVER}}, "solvers must name recipes"),
])
def test_bad_arguments_are_named_before_any_work(bad, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        compare_recipes(tmp_path / "no-splits", tmp_path / "runs", **{**OPTIONS, **bad})
    assert not (tmp_path / "runs").exists()
