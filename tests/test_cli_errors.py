"""Every verb's error paths: one line on stderr naming the argument or the file, exit 2 for bad
input and 1 for a failure at run time, never a traceback."""

import pytest

import tiny_data
from workbench.cli import main


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
    assert "ImageNet weights" in line and "weights=PATH" in line
    assert not (tmp_path / "run" / "config.json").exists()


def test_too_few_epochs_for_the_recipe_names_epochs_and_why(tmp_path, capsys):
    assert main(["train", "--splits", str(tmp_path), "--run-dir", str(tmp_path / "run"),
                 "--epochs", "1", "--recipe", "two_stage"]) == 2
    line = one_error_line(capsys)
    assert "--epochs must be >= 2" in line and "two_stage" in line and "stages" in line


def test_an_unexpected_failure_is_one_line_with_a_way_to_the_traceback(tmp_path, capsys,
                                                                     monkeypatch):
    import workbench.cli as cli

    def broken(args):
        raise RuntimeError("something deep failed\nwith a second line")

    monkeypatch.setitem(cli.VERBS, "evaluate", (*cli.VERBS["evaluate"][:2], broken))
    assert main(["evaluate", str(tmp_path)]) == 1
    line = one_error_line(capsys)
    assert "RuntimeError: something deep failed with a second line" in line
    assert "WORKBENCH_DEBUG=1" in line
    monkeypatch.setenv("WORKBENCH_DEBUG", "1")
    with pytest.raises(RuntimeError):
        main(["evaluate", str(tmp_path)])
