"""`workbench split`: the files other tools read, and one clear line for every bad argument."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import messy_data
from workbench.cli import VERBS, main
from workbench.data.split import FILES


@pytest.fixture()
def data(tmp_path):
    root = tmp_path / "data"
    messy_data.make_messy_dataset(root)
    messy_data.make_class_folders(root, {"cat": 12, "dog": 14, "eel": 25})
    return root


def read_csv(path):
    return pd.read_csv(path, keep_default_na=False)


def test_split_writes_the_contract_files(data, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["split", str(data), "--out", str(out), "--val", "0.2", "--test", "0.2",
                 "--seed", "4", "--min-per-class", "3"]) == 0
    assert sorted(os.listdir(out)) == sorted(FILES + ("split.json",))
    meta = json.loads((out / "split.json").read_text())
    assert (out / meta["data_root"]).resolve() == Path(data).resolve()
    splits = read_csv(out / "splits.csv")
    assert {"path", "label", "split", "label_index"} <= set(splits.columns)
    assert set(splits["split"]) == {"train", "val", "test"}
    assert set(splits["label"]) == {"cat", "dog", "eel"}
    assert all((data / path).is_file() for path in splits["path"])
    rejected = read_csv(out / "rejected.csv")
    assert {"path", "reason", "label", "detail"} <= set(rejected.columns)
    assert {"zero bytes", "duplicate", "class below min_per_class"} <= set(rejected["reason"])
    assert "café ñ/日本語.jpg" in set(rejected["path"])
    labels = (out / "labels.txt").read_text(encoding="utf-8").splitlines()
    assert labels == ["cat", "dog", "eel"]
    lines = (out / "train.txt").read_text(encoding="utf-8").splitlines()
    train = splits[splits.split == "train"]
    assert sorted(lines) == sorted(f"{p} {i}" for p, i in zip(train.path, train.label_index))
    printed = capsys.readouterr().out
    report = (out / "report.md").read_text(encoding="utf-8")
    assert printed.startswith("# Split report")
    assert "| 0 | cat |" in printed and "| 0 | cat |" in report
    assert "Dropped classes" in report and "café ñ" in report


def test_split_counts_and_list_file_match_the_folder(tmp_path, capsys):
    data = tmp_path / "data"
    listed = messy_data.make_class_folders(data, {"cat": 12, "dog": 14, "eel": 25})
    labels = ["eel", "cat", "dog"]
    (tmp_path / "labels.txt").write_text("\n".join(labels) + "\n")
    (tmp_path / "list.txt").write_text(
        "".join(f"{path} {labels.index(path.split('/')[0])}\n" for path in listed)
        + "cat/img_0000.png 9\n")
    out = tmp_path / "out"
    assert main(["split", str(data), "--out", str(out), "--list", str(tmp_path / "list.txt"),
                 "--labels", str(tmp_path / "labels.txt"), "--counts", "10,rest,1"]) == 0
    splits = read_csv(out / "splits.csv")
    per_class = splits.groupby(["label", "split"]).size().unstack(fill_value=0)
    assert per_class.loc["eel"].to_dict() == {"test": 1, "train": 10, "val": 14}
    assert per_class.loc["cat"].to_dict() == {"test": 1, "train": 10, "val": 1}
    rejected = read_csv(out / "rejected.csv")
    assert rejected["reason"].tolist() == ["bad list entry"]

    # The same files given as a folder get the same split.
    folder_out = tmp_path / "folder_out"
    assert main(["split", str(data), "--out", str(folder_out), "--counts", "10,rest,1"]) == 0
    for name in ("splits.csv", "train.txt", "val.txt", "test.txt", "labels.txt"):
        assert (folder_out / name).read_bytes() == (out / name).read_bytes()


def test_running_twice_gives_identical_files(data, tmp_path, capsys):
    for name in ("a", "b"):
        assert main(["split", str(data), "--out", str(tmp_path / name),
                     "--counts", "5,rest,5"]) == 0
    for name in FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


@pytest.mark.parametrize("arguments, must_name", [
    (["--val", "abc"], ["--val", "'abc'"]),
    (["--val", "1.5"], ["--val must be <= 1.0, received: 1.5"]),  # the library's check
    (["--test", "-0.1"], ["--test must be >= 0.0, received: -0.1"]),
    (["--val", "0.6", "--test", "0.6"], ["--val + --test must be <= 1", "--val 0.6", "--test 0.6"]),
    (["--min-per-class", "0"], ["--min-per-class must be >= 1, received: 0"]),
    (["--min-per-class", "two"], ["--min-per-class", "'two'"]),
    (["--seed", "1.5"], ["--seed", "'1.5'"]),
    (["--counts", "10,rest"], ["--counts", "'10,rest'"]),
    (["--counts", "rest,rest,10"], ["--counts", "'rest,rest,10'"]),
    (["--counts", "10,-1,10"], ["--counts", "'10,-1,10'"]),
    (["--counts", "10,rest,10", "--val", "0.2"], ["--counts '10,rest,10'", "--val 0.2"]),
    (["--list", "list.txt"], ["--labels is required with --list 'list.txt'"]),
    (["--labels", "labels.txt"], ["--list is required with --labels 'labels.txt'"]),
])
def test_a_bad_argument_is_one_line_naming_it(tmp_path, capsys, arguments, must_name):
    data = tmp_path / "data"
    messy_data.make_class_folders(data, {"a": 2, "b": 2})
    out = tmp_path / "out"
    code = main(["split", str(data), "--out", str(out), *arguments])
    captured = capsys.readouterr()
    assert code != 0
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: ")
    for text in must_name:
        assert text in lines[0]
    assert "Traceback" not in captured.err + captured.out
    assert not out.exists()


def test_missing_inputs_are_one_line(data, tmp_path, capsys):
    cases = [
        (["split", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")], "nowhere"),
        (["split", str(data), "--out", str(tmp_path / "out"), "--list", "no.txt",
          "--labels", "no_labels.txt"], "--labels not found: 'no_labels.txt'"),
        (["split", str(data), "--out", str(data / "splits")], "--out"),
        (["split", str(data)], "--out"),
        (["frobnicate"], "'frobnicate'"),
    ]
    for argv, must_name in cases:
        code = main(argv)
        captured = capsys.readouterr()
        assert code == 2, argv
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and must_name in lines[0]
        assert "Traceback" not in captured.err
    assert not (data / "splits").exists()


def test_a_dataset_with_no_usable_class_fails_after_reporting(tmp_path, capsys):
    messy_data.make_class_folders(tmp_path / "data", {"a": 2})
    code = main(["split", str(tmp_path / "data"), "--out", str(tmp_path / "out"),
                 "--min-per-class", "5"])
    captured = capsys.readouterr()
    assert code == 1
    assert "No class was kept." in captured.out
    assert captured.err.strip().splitlines()[-1].startswith(
        "error: no class was kept, so nothing was written: min_per_class=5 needs as many valid "
        "images; 1 class has fewer: a 2")
    assert not (tmp_path / "out").exists()  # so the next try needs no --overwrite


def test_verbs_are_registered_in_one_place(capsys):
    assert "split" in VERBS
    assert main(["--help"]) == 0
    assert "split" in capsys.readouterr().out
    assert main(["split", "--help"]) == 0
    assert "--counts" in capsys.readouterr().out


def test_the_command_exits_with_the_status_and_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "workbench.cli", "split",
                             str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: DATA must be an existing folder, received: {str(tmp_path / 'nowhere')!r}"]


# --- an existing split folder ------------------------------------------------------------------

def folder_bytes(folder) -> dict:
    return {str(path.relative_to(folder)): path.read_bytes()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def test_other_settings_are_refused_before_the_scan_and_the_folder_is_left_alone(
        data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    assert main(["split", str(data), "--out", str(out), "--seed", "0"]) == 0
    before = folder_bytes(out)
    capsys.readouterr()

    def no_scan(*args, **kwargs):
        raise AssertionError("scanned although the answer was known before the scan")

    monkeypatch.setattr("workbench.data.split.scan", no_scan)
    assert main(["split", str(data), "--out", str(out), "--seed", "1", "--counts",
                 "2,rest,2"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith(f"error: {out} already holds a split of ")
    assert "made with other settings (" in error[0] and "seed 0 -> 1" in error[0]
    assert "counts None -> 2,rest,2" in error[0]
    assert "pass --overwrite to replace it" in error[0] and "another --out" in error[0]
    assert "overwrite=True" not in error[0]
    assert folder_bytes(out) == before


def test_the_same_split_again_is_a_no_op_that_says_so(data, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["split", str(data), "--out", str(out), "--seed", "3"]) == 0
    stamps = {path.name: path.stat().st_mtime_ns for path in out.iterdir()}
    capsys.readouterr()
    assert main(["split", str(data), "--out", str(out), "--seed", "3"]) == 0
    assert f"{out} is already up to date" in capsys.readouterr().out
    assert {path.name: path.stat().st_mtime_ns for path in out.iterdir()} == stamps


PAUSED_SPLIT = """
import sys, time
import workbench.data.split as split
write, done = split._write_file, []
def paused(path, text):  # pauses after its third file, to be killed there
    write(path, text)
    done.append(path)
    if len(done) == 3:
        print("paused", flush=True)
        time.sleep(600)
split._write_file = paused
from workbench.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_rewrite_killed_with_sigkill_leaves_the_old_split_and_the_next_run_clears_up(
        data, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["split", str(data), "--out", str(out), "--seed", "0"]) == 0
    before = folder_bytes(out)
    process = subprocess.Popen([sys.executable, "-c", PAUSED_SPLIT, "split", str(data),
                                "--out", str(out), "--seed", "1", "--overwrite"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout.readline() == "paused\n"
    finally:
        process.kill()  # SIGKILL
        process.wait()
    assert folder_bytes(out) == before
    left = [name for name in os.listdir(tmp_path) if name.startswith(".out.")]
    assert left == [name for name in left if f".{process.pid}." in name] and len(left) == 1

    assert main(["split", str(data), "--out", str(out), "--seed", "1", "--overwrite"]) == 0
    assert "Replaced the split in" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == ["data", "out"]
    assert json.loads((out / "split.json").read_text())["settings"]["seed"] == 1
