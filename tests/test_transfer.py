"""On the bundled transfer task, a pretrained source beats the same network trained from scratch.

Small but real: letters rendered offline pretrain ``cifar_cnn`` (about a minute: the letters
take some 700 steps to get off their first plateau), then every recipe trains
on the cluttered digits with 5 images per class, over two seeds. From scratch stays near chance
on this task by design (five cluttered images per digit are too few to learn features from);
every transfer recipe must clear chance, and feature extraction must beat scratch clearly.
The runs record no resources or weight statistics and write their checkpoint once, at the end:
neither changes what they learn, and the two cost about a quarter of a run's CPU time.
"""

import json

import pandas as pd
import pytest

from workbench.data import sample
from workbench.data.split import prepare
from workbench.models import StartingPoint
from workbench.studies.recipes import compare_recipes, read_metrics, summarize_runs
from workbench.training.options import Monitoring
from workbench.training.solver import SolverConfig
from workbench.training.train import finetune

CHANCE = 0.1
TRANSFER = ("feature_extraction", "two_stage", "caffe")
LEAN = Monitoring(resources=False)  # no resources.csv, weight_stats.csv: not what is tested


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("transfer")
    sample.write_sample_data(root / "data", source_per_class=80, datasets=("source", "target"),
                             progress="none")
    prepare(root / "data" / "source", root / "source_splits", val=0.1, test=0.05, progress="none")
    source = finetune(root / "source_splits", root / "source",
                      start=StartingPoint("cifar_cnn", weights=None),
                      recipe="scratch", image_size=32, progress="none", monitoring=LEAN,
                      solver=SolverConfig(optimizer="adam", base_lr=0.003, epochs=16,
                                          batch_size=16, lr_policy="constant",
                                          snapshot_interval=16))
    assert source.metrics["val_accuracy"] > 0.3, "the source model must learn its letters"
    prepare(root / "data" / "target", root / "target_splits", counts=(5, 20, 30), progress="none")
    solver = SolverConfig(optimizer="sgd", base_lr=0.01, epochs=30, batch_size=16,
                          test_interval=5, snapshot_interval=30)
    return compare_recipes(root / "target_splits", root / "runs", recipes=("scratch",) + TRANSFER,
                           seeds=(0, 1), start=source.model_path("final"), solver=solver,
                           solvers={"caffe": solver.replace(base_lr=0.001)}, image_size=32,
                           progress="none", monitoring=LEAN)


@pytest.mark.slow
def test_transfer_beats_scratch_by_a_clear_margin(results):
    means = summarize_runs(results)[("test_accuracy", "mean")]
    assert means["feature_extraction"] - means["scratch"] > 0.15, means.to_dict()
    assert means["two_stage"] - means["scratch"] > 0.15, means.to_dict()


@pytest.mark.slow
def test_every_transfer_recipe_beats_chance(results):
    means = summarize_runs(results)[("test_accuracy", "mean")]
    for recipe in TRANSFER:
        assert means[recipe] > CHANCE + 0.1, (recipe, means.to_dict())
    assert set(results["status"]) == {"completed"} and len(results) == 8


def test_summarize_runs_gives_mean_std_and_count_per_recipe():
    runs = pd.DataFrame({"recipe": ["a", "a", "b"], "seed": [0, 1, 0],
                         "test_accuracy": [0.5, 0.7, 0.9]})
    table = summarize_runs(runs)
    assert table.loc["a", ("test_accuracy", "mean")] == pytest.approx(0.6)
    assert table.loc["a", ("test_accuracy", "std")] == pytest.approx(0.1414, abs=1e-4)
    assert list(table[("test_accuracy", "count")]) == [2, 1]
    assert list(summarize_runs(runs, by="seed").index) == [0, 1]
    with pytest.raises(ValueError, match="results must have one of the columns"):
        summarize_runs(runs, metrics=("val_loss",))
    with pytest.raises(ValueError, match="by='run'"):
        summarize_runs(runs, by="run")


def test_read_metrics_is_deprecated_and_still_skips_runs_without_metrics(tmp_path):
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "metrics.json").write_text(json.dumps({"test_accuracy": 0.8}))
    (tmp_path / "running").mkdir()
    with pytest.warns(DeprecationWarning, match="read_metrics is deprecated"):
        table = read_metrics([tmp_path / "done", tmp_path / "running"])
    assert table.to_dict("records") == [{"run_dir": str(tmp_path / "done"),
                                         "test_accuracy": 0.8}]
    with pytest.raises(ValueError, match="run_dirs must be a list"), \
            pytest.warns(DeprecationWarning):
        read_metrics(str(tmp_path / "done"))
