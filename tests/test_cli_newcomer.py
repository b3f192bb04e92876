"""A newcomer's first hour on the command line: a bare ``workbench`` shows the verbs in the order
of the workflow, ``train --help`` explains its options, and each mistake the sweep of issue 19
found is one line naming the thing, with the right exit status, never a raw ``[Errno N]``."""

import json

import pytest

import messy_data
import tiny_data
from test_monitor import hand_made
from workbench.cli import VERBS, main


def one_error_line(err: str) -> str:
    assert "Traceback" not in err and "[Errno" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_a_bare_workbench_lists_the_verbs_in_the_order_of_the_workflow(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    listed = [line.split()[0] for line in out.splitlines()
              if line.startswith("    ") and line.split()[0] in VERBS]
    assert listed == list(VERBS)
    assert listed[:6] == ["split", "train", "evaluate", "predict", "export", "serve"]
    assert "sample-data" in out.split("split", 1)[1]  # offered, after the workflow
    assert main(["--help"]) == 0
    assert capsys.readouterr().out == out


def option_help(text: str) -> dict:
    """argparse's help, as {option: its description on one line}."""
    described, option = {}, None
    for line in text.splitlines():
        if line.startswith("  -"):
            option = line.split()[0]
            described[option] = " ".join(line.split()[1:])
        elif option and line.startswith("    "):
            described[option] += " " + " ".join(line.split())
        else:
            option = None
    return described


def test_train_help_explains_recipe_epochs_batch_size_base_lr_and_seed(capsys):
    from workbench.training.recipes import RECIPES
    from workbench.training.solver import SolverConfig

    assert main(["train", "--help"]) == 0
    options = option_help(capsys.readouterr().out)
    help_text = " ".join(options.values())
    defaults = SolverConfig()
    for option, words in [("--recipe", ["default two_stage", *RECIPES]),
                          ("--epochs", [f"default {defaults.epochs}", "passes over"]),
                          ("--batch-size", [f"default {defaults.batch_size}", "per training step"]),
                          ("--base-lr", [f"default {defaults.base_lr:g}", "lr-find"]),
                          ("--seed", ["default 0", "same seed"])]:
        described = options[option]
        for word in words:
            assert word in described, (option, word, described)
    for name, recipe in RECIPES.items():
        assert recipe.summary and f"{name}: {recipe.summary}" in help_text


def test_a_one_class_folder_is_refused_naming_the_class_and_nothing_is_written(
        tmp_path, capsys):
    messy_data.make_class_folders(tmp_path / "data", {"cats": 6})
    assert main(["split", str(tmp_path / "data"), "--out", str(tmp_path / "out")]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "only one class" in line and "'cats', 6 images" in line and "at least two" in line
    assert str(tmp_path / "data") in line
    assert not (tmp_path / "out").exists()


def test_resume_of_a_run_that_is_not_there_is_refused(tmp_path, capsys):
    splits = tiny_data.write_splits(tmp_path, per_class=3, counts=(2, 1, 0))
    out = tmp_path / "typo"
    assert main(["train", "--splits", str(splits), "--run-dir", str(out), "--resume",
                 "--backbone", "lenet", "--weights", "none"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--resume" in line and repr(str(out)) in line and "holds none" in line
    assert not out.exists()


@pytest.mark.parametrize("verb", ["evaluate", "export"])
def test_an_unfinished_run_is_neither_evaluated_nor_exported(verb, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "checkpoint.json").write_text(json.dumps({"epoch": 3, "model": "checkpoint.keras"}))
    (run / "best.keras").write_bytes(b"a checkpoint of the middle of training")
    assert main([verb, str(run)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "has not finished (interrupted at epoch 3)" in line and str(run) in line
    assert "--resume" in line
    assert not (run / "evaluation").exists() and not (run / "export").exists()


def test_plot_resources_into_a_folder_writes_resources_png_there_and_says_so(
        tmp_path, capsys):
    hand_made(epoch_every=12).astype({"time": str}).to_csv(tmp_path / "resources.csv",
                                                          index=False)
    folder = tmp_path / "figures"
    folder.mkdir()
    assert main(["plot-resources", str(tmp_path), "--out", str(folder)]) == 0
    assert (folder / "resources.png").read_bytes()[:4] == b"\x89PNG"
    assert capsys.readouterr().out.splitlines()[-1] == f"Wrote {folder / 'resources.png'}"
    assert main(["plot-resources", str(tmp_path), "--out", str(tmp_path / "plain")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"Wrote {tmp_path / 'plain.png'}"
    assert (tmp_path / "plain.png").is_file()


@pytest.mark.parametrize("arguments, words", [
    (["split", "{data}", "--out", "{file}/splits"], ["--out", "lies under '{file}', a file"]),
    (["split", "{data}", "--out", "{file}"], ["--out '{file}' is a file"]),
    (["sample-data", "--out", "{file}/sample"], ["--out", "lies under '{file}', a file"]),
    (["train", "--splits", "{tmp}", "--run-dir", "{file}/run"],
     ["--run-dir", "lies under '{file}', a file"]),
    (["train", "--splits", "{tmp}", "--run-dir", "{file}"], ["--run-dir '{file}' is a file"]),
    (["train", "--splits", "{tmp}", "--run-dir", "{tmp}/run", "--solver", "{tmp}/missing.json"],
     ["--solver file not found", "missing.json"]),
])
def test_a_file_where_a_folder_belongs_or_a_missing_file_is_said_in_words(
        arguments, words, tmp_path, capsys):
    messy_data.make_class_folders(tmp_path / "data", {"cats": 2, "dogs": 2})
    (tmp_path / "notes.txt").write_text("mine")
    names = {"data": tmp_path / "data", "file": tmp_path / "notes.txt", "tmp": tmp_path}
    assert main([argument.format(**names) for argument in arguments]) == 2
    line = one_error_line(capsys.readouterr().err)
    for word in words:
        assert word.format(**names) in line, line
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_solver_file_that_is_not_json_is_named(tmp_path, capsys):
    (tmp_path / "solver.json").write_text('{"base_lr": 0.01,}')
    assert main(["train", "--splits", str(tmp_path), "--run-dir", str(tmp_path / "run"),
                 "--solver", str(tmp_path / "solver.json")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{tmp_path / 'solver.json'} is not valid JSON" in line and "line 1" in line


@pytest.mark.parametrize("verb", ["predict", "train"])
def test_a_garbage_keras_file_is_not_called_missing(verb, tmp_path, capsys):
    garbage = tmp_path / "model.keras"
    garbage.write_bytes(b"this is not a zip archive")
    (tmp_path / "photo.png").write_bytes(messy_data.sixteen_bit_png())
    arguments = {"predict": ["predict", str(garbage), str(tmp_path / "photo.png")],
                 "train": ["train", "--splits", str(tmp_path), "--run-dir", str(tmp_path / "run"),
                           "--source", str(garbage)]}[verb]
    assert main(arguments) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{garbage} is not a Keras model" in line and "not found" not in line.lower()


@pytest.mark.slow
def test_training_a_class_of_one_image_without_val_says_so_in_one_line(tmp_path, capsys):
    tiny_data.write_digits(tmp_path / "data", per_class=4)
    for extra in sorted((tmp_path / "data" / "9").iterdir())[1:]:
        extra.unlink()  # class 9: one image
    assert main(["split", str(tmp_path / "data"), "--out", str(tmp_path / "splits"),
                 "--val", "0", "--test", "0"]) == 0
    capsys.readouterr()
    assert main(["train", "--splits", str(tmp_path / "splits"), "--run-dir", str(tmp_path / "run"),
                 "--backbone", "lenet", "--weights", "none", "--image-size", "16",
                 "--recipe", "scratch", "--epochs", "1"]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if "note:" in line]
    assert len(notes) == 1, notes
    assert "no val split" in notes[0] and "class '9' has a single training image" in notes[0]
