"""Every verb's error paths: one line on stderr naming the argument or the file, exit 2 for the
user's mistakes (a ``UsageError``) and 1 for a failure at run time, never a traceback."""

import errno

import pytest

import tiny_data
from workbench._checks import UsageError
from workbench.cli import main
from workbench.data.split import prepare
from workbench.models import StartingPoint
from workbench.training.solver import SolverConfig
from workbench.training.train import finetune


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_data.write_digits(tmp_path_factory.mktemp("cli_errors") / "data", per_class=4)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_split_out_pointing_at_a_file_fails_before_the_scan(data, tmp_path, capsys):
    target = tmp_path / "report.txt"
    target.write_text("mine")
    assert main(["split", str(data), "--out", str(target)]) == 2
    line = one_error_line(capsys)
    assert "--out" in line and "report.txt" in line and "file" in line
    assert target.read_text() == "mine"


def test_a_broken_config_json_is_named(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{not json")
    (run / "model.keras").write_bytes(b"")
    assert main(["evaluate", str(run)]) == 2
    line = one_error_line(capsys)
    assert "config.json" in line and "JSON" in line


def test_a_garbage_resources_csv_is_named(tmp_path, capsys):
    (tmp_path / "resources.csv").write_text('a,b\n"1,2\n3,4,5,6\n\x00\x00')
    assert main(["plot-resources", str(tmp_path)]) == 2
    line = one_error_line(capsys)
    assert "resources.csv" in line


def test_monitor_into_a_folder_that_cannot_be_written_names_out(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["monitor", "--out", str(blocker / "sub"), "--", "true"]) == 2
    line = one_error_line(capsys)
    assert "--out" in line and "command not found" not in line


def test_offline_imagenet_weights_are_one_line_not_four_tracebacks(tmp_path, capsys):
    splits = tiny_data.write_splits(tmp_path, per_class=4, counts=(2, 1, 1))
    code = main(["train", "--splits", str(splits), "--run-dir", str(tmp_path / "run"),
                 "--backbone", "mobilenet_v2", "--weights", "imagenet", "--image-size", "32",
                 "--recipe", "feature_extraction", "--epochs", "1"])
    assert code == 1
    line = one_error_line(capsys)
    assert "ImageNet weights" in line and "(--weights PATH)" in line  # the flag, not weights=
    assert not (tmp_path / "run" / "config.json").exists()


def test_too_few_epochs_for_the_recipe_names_epochs_and_why(tmp_path, capsys):
    assert main(["train", "--splits", str(tmp_path), "--run-dir", str(tmp_path / "run"),
                 "--epochs", "1", "--recipe", "two_stage"]) == 2
    line = one_error_line(capsys)
    assert "--epochs must be >= 2" in line and "two_stage" in line and "stages" in line


def failure_line(capsys, verb: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error:" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(f"workbench {verb}: ")]
    assert len(lines) == 1 and lines[0].startswith(f"workbench {verb}: failed: "), err
    assert lines[0].endswith("(WORKBENCH_DEBUG=1 shows the traceback)")
    return lines[0]


@pytest.mark.parametrize("error", [RuntimeError("something deep failed\nwith a second line"),
                                   ValueError("something deep failed\nwith a second line")])
def test_an_unexpected_failure_is_one_line_with_a_way_to_the_traceback(tmp_path, capsys,
                                                                     monkeypatch, error):
    import workbench.cli as cli

    def broken(args):
        raise error

    monkeypatch.setitem(cli.VERBS, "evaluate", (*cli.VERBS["evaluate"][:2], broken))
    assert main(["evaluate", str(tmp_path)]) == 1
    line = failure_line(capsys, "evaluate")
    assert f"failed: {type(error).__name__}: something deep failed with a second line" in line
    monkeypatch.setenv("WORKBENCH_DEBUG", "1")
    assert main(["evaluate", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and "in broken" in err  # where it came from
    assert err.splitlines()[-1].startswith("workbench evaluate: failed: ")


def test_a_full_disk_is_a_failure_not_a_mistake_and_a_missing_path_is_a_mistake(
        tmp_path, capsys, monkeypatch):
    import workbench.cli as cli

    def full(args):  # the system's error on a path the user gave: still not their mistake
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run"))

    monkeypatch.setitem(cli.VERBS, "evaluate", (*cli.VERBS["evaluate"][:2], full))
    assert main(["evaluate", str(tmp_path / "run")]) == 1
    assert "failed: OSError: [Errno 28] No space left on device" in failure_line(
        capsys, "evaluate")

    def missing(args):  # the system's "not found" of the user's path: their mistake
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", args.run_dir)

    monkeypatch.setitem(cli.VERBS, "evaluate", (*cli.VERBS["evaluate"][:2], missing))
    assert main(["evaluate", str(tmp_path / "run")]) == 2
    assert one_error_line(capsys) == f"error: RUN_DIR {str(tmp_path / 'run')!r} does not exist"


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    return tiny_data.write_splits(tmp_path_factory.mktemp("cli_errors_splits"), per_class=4,
                                  counts=(2, 1, 1))


TRAIN = ["--backbone", "lenet", "--weights", "none", "--recipe", "scratch", "--epochs", "1",
         "--image-size", "16", "--batch-size", "8"]


def test_a_keras_error_mid_training_is_a_failure_not_the_users_mistake(splits, tmp_path, capsys,
                                                                        monkeypatch):
    """Keras raises ValueError for its own troubles; the command must not call them bad input."""
    def keras_trouble(*args, **kwargs):
        raise ValueError("Arguments `target` and `output` must have the same shape. Received: "
                         "target.shape=(8,), output.shape=(8, 10)")

    monkeypatch.setattr("workbench.training.train.train_stages", keras_trouble)
    assert main(["train", "--splits", str(splits), "--run-dir", str(tmp_path / "run"), *TRAIN]) == 1
    line = failure_line(capsys, "train")
    assert line.startswith("workbench train: failed: ValueError: Arguments `target` and "
                           "`output` must have the same shape.")

    def user_mistake(*args, **kwargs):  # the library's word for the user's mistake
        raise UsageError("batch_size must be at most the 8 training images, received: 9")

    monkeypatch.setattr("workbench.training.train.train_stages", user_mistake)
    assert main(["train", "--splits", str(splits), "--run-dir", str(tmp_path / "run2"),
                 *TRAIN]) == 2
    assert one_error_line(capsys) == ("error: --batch-size must be at most the 8 training images, "
                                      "received: 9")


def library_message(call) -> str:
    with pytest.raises(UsageError) as caught:
        call()
    return str(caught.value)


def test_the_command_leaves_the_checks_to_the_library_and_names_its_flags(data, splits, tmp_path,
                                                                          capsys):
    """The command no longer checks what the library checks: the same refusal, the same words,
    with the flags in place of the keywords."""
    out = tmp_path / "out"
    cases = [
        (["split", str(data), "--out", str(out), "--val", "0.6", "--test", "0.6"],
         lambda: prepare(data, out, val=0.6, test=0.6),
         [("val + test", "--val + --test"), ("val=", "--val "), ("test=", "--test ")]),
        (["split", str(data), "--out", str(out), "--counts", "10,rest,10", "--test", "0.2"],
         lambda: prepare(data, out, counts="10,rest,10", test=0.2),
         [("counts=", "--counts "), ("test=", "--test ")]),
        (["split", str(data), "--out", str(out), "--min-per-class", "0"],
         lambda: prepare(data, out, min_per_class=0), [("min_per_class", "--min-per-class")]),
        (["split", str(data), "--out", str(data / "inside")],
         lambda: prepare(data, data / "inside"), [("out must", "--out must")]),
        (["train", "--splits", str(splits), "--run-dir", str(out), "--epochs", "1"],
         lambda: finetune(splits, out, solver=SolverConfig(epochs=1)), [("epochs", "--epochs")]),
        (["train", "--splits", str(splits), "--run-dir", str(out), "--cut-at", "conv1"],
         lambda: StartingPoint(cut_at="conv1"), [("cut_at=", "--cut-at "), ("cut_at", "--cut-at")]),
        (["lr-find", "--splits", str(splits), "--batch-size", "0"],
         lambda: SolverConfig(batch_size=0), [("batch_size", "--batch-size")]),
    ]
    for argv, call, words in cases:
        expected = library_message(call)
        for keyword, flag in words:
            assert keyword in expected, (expected, keyword)
            expected = expected.replace(keyword, flag)
        assert main(argv) == 2, argv
        assert one_error_line(capsys) == f"error: {expected}"
    assert not out.exists() and not (data / "inside").exists()


def test_a_source_beside_a_backbone_is_refused_by_the_library_check(splits, tmp_path, capsys):
    source = tmp_path / "source.keras"
    source.write_bytes(b"")  # refused before it is read
    for verb in (["train", "--run-dir", str(tmp_path / "run")], ["lr-find"]):
        for given, said in ((["--backbone", "lenet"], "--backbone 'lenet'"),
                            (["--weights", "none"], "--weights None")):
            argv = [verb[0], "--splits", str(splits), *verb[1:], "--source", str(source), *given]
            assert main(argv) == 2
            assert one_error_line(capsys) == (
                f"error: give either a backbone (with weights) or a source model, not both; "
                f"received: {said} and --source {str(source)!r}")
    assert not (tmp_path / "run").exists()
