"""`workbench train` and `workbench sample-data`: the run directory, and one line for bad input."""

import json

import pytest

import tiny_data
from workbench.cli import main


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_train")
    return tiny_data.write_splits(root, per_class=8, counts=(4, "rest", 2))


@pytest.mark.slow
def test_train_writes_a_run_and_prints_its_numbers(splits, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--splits", str(splits), "--run-dir", str(out), "--backbone", "lenet",
                 "--weights", "none", "--recipe", "scratch", "--epochs", "2", "--image-size",
                 "16", "--batch-size", "8", "--lr-mult", "conv1=0", "--seed", "3",
                 "--augment", "on+flip", "--class-weight", "balanced"]) == 0
    printed = capsys.readouterr().out
    assert "epoch 2/2 [all]" in printed and "status completed" in printed
    config = json.loads((out / "config.json").read_text())
    assert config["lr_mult_rules"] == {"conv1": 0.0} and config["seed"] == 3
    assert config["solver"]["epochs"] == 2 and config["solver"]["batch_size"] == 8
    assert config["augment"]["flip"] is True and config["class_weight"] == "balanced"
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 2


def test_train_reads_a_caffe_solver(splits, tmp_path, capsys):
    solver = tmp_path / "solver.prototxt"
    solver.write_text('base_lr: 0.005\nlr_policy: "step"\nstepsize: 3\ngamma: 0.5\nmax_iter: 4\n')
    assert main(["train", "--splits", str(splits), "--run-dir", str(tmp_path / "run"), "--backbone",
                 "lenet", "--weights", "none", "--recipe", "scratch", "--image-size", "16",
                 "--batch-size", "20", "--solver", str(solver)]) == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())["solver"]
    assert (config["base_lr"], config["lr_policy"], config["max_iter"]) == (0.005, "step", 4)


def test_image_size_defaults_to_the_backbone_or_the_source_model(splits, tmp_path, capsys):
    source = tmp_path / "lenet"
    assert main(["train", "--splits", str(splits), "--run-dir", str(source), "--backbone", "lenet",
                 "--weights", "None", "--recipe", "scratch", "--epochs", "1",
                 "--batch-size", "8"]) == 0
    config = json.loads((source / "config.json").read_text())
    assert (config["image_size"], config["weights"]) == (28, None)  # lenet's natural size
    tuned = tmp_path / "tuned"  # from a saved model: its input, not mobilenet_v2's 224
    assert main(["train", "--splits", str(splits), "--run-dir", str(tuned), "--source",
                 str(source / "model.keras"), "--recipe", "feature_extraction", "--epochs", "1",
                 "--batch-size", "8"]) == 0
    assert json.loads((tuned / "config.json").read_text())["image_size"] == 28


@pytest.mark.parametrize("arguments, message", [
    (["--lr-mult", "conv1"], "argument --lr-mult: must be PATTERN=MULTIPLIER"),
    (["--cut-at", "conv1"], "--cut-at needs a source model to cut, received: --cut-at 'conv1'"),
    (["--backbone", "alexnet"], "backbone must be one of"),
    (["--epochs", "0"], "error: --epochs must be >= 1, received: 0"),  # the library's check
    (["--epochs", "one"], "argument --epochs: must be an integer, received: 'one'"),
    (["--image-size", "4"], "error: --image-size must be >= 8, received: 4"),
    (["--augment", "sometimes"], "augment must be 'auto', 'on' or 'off'"),
    (["--class-weight", "inverse"], "argument --class-weight: invalid choice: 'inverse'"),
    (["--weights", "missing.weights.h5"],
     "weights must be 'imagenet', None or an existing file, received: 'missing.weights.h5'"),
])
def test_bad_arguments_give_one_line(splits, tmp_path, capsys, arguments, message):
    code = main(["train", "--splits", str(splits), "--run-dir", str(tmp_path / "r"), *arguments])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0] and "Traceback" not in err[0]


def test_sample_data_writes_the_three_datasets(tmp_path, capsys):
    assert main(["sample-data", "--out", str(tmp_path), "--image-size", "16",
                 "--source-per-class", "2"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits", "source", "target"]
    assert "source" in capsys.readouterr().out
    assert main(["sample-data", "--out", str(tmp_path)]) == 2  # exists: refuses to overwrite
