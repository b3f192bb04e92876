"""Splitting: stratified, seeded, stable when images are added, no duplicate leaks, exact counts."""

import hashlib
import os
import subprocess
import sys

import pandas as pd
import pytest

import workbench._io as atomic_io

import messy_data
from workbench.data.scan import scan
import workbench.data.split as split_module
from workbench.data.split import (BELOW_MIN_PER_CLASS, BEYOND_COUNTS, FILES,
                                  TOO_SMALL_FOR_COUNTS, SplitFolderExists, SplitResult,
                                  parse_counts, split)


def fake_table(sizes, *, start=0, copies=None):
    """A scan-like table without image files: ``sizes[label]`` distinct images per class.

    ``copies`` maps a path to the path whose content it copies (same sha256).
    """
    rows = []
    for label, count in sizes.items():
        for number in range(start, start + count):
            path = f"{label}/{number:05d}.jpg"
            rows.append({"path": path, "label": label, "width": 16, "height": 16,
                         "mode": "RGB", "sha256": hashlib.sha256(path.encode()).hexdigest(),
                         "status": "ok", "reason": "", "detail": ""})
    table = pd.DataFrame(rows)
    for path, source in (copies or {}).items():
        row = table[table.path == source].iloc[0].copy()
        row["path"] = path
        table = pd.concat([table, row.to_frame().T], ignore_index=True)
    return table.sort_values("path").reset_index(drop=True)


def assignment(result: SplitResult) -> dict:
    return dict(zip(result.table["path"], result.table["split"]))


def per_class(result: SplitResult) -> dict:
    return {row.label: (row.train, row.val, row.test)
            for row in result.summary().itertuples(index=False)}


# --- determinism ---------------------------------------------------------------------------------

@pytest.fixture()
def real_dataset(tmp_path):
    root = tmp_path / "data"
    messy_data.make_messy_dataset(root)
    messy_data.make_class_folders(root, {"cat": 14, "dog": 12, "eel": 30, "fox": 2})
    return root


@pytest.mark.parametrize("options", [{"val": 0.2, "test": 0.2, "seed": 3},
                                     {"counts": (5, "rest", 3), "min_per_class": 4}])
def test_written_files_are_byte_identical_across_runs(real_dataset, tmp_path, options):
    outputs = []
    for run in range(2):
        result = split(scan(real_dataset, progress="none"), **options)
        outputs.append(result.write(tmp_path / f"out{run}"))
    for name in FILES:
        assert (outputs[0] / name).read_bytes() == (outputs[1] / name).read_bytes(), name
    assert sorted(os.listdir(outputs[0])) == sorted(FILES)  # no temporary file left behind


@pytest.mark.parametrize("options", [{}, {"counts": (3, "rest", 3)}])
def test_row_order_of_the_input_does_not_matter(options):
    table = fake_table({"a": 20, "b": 9, "c": 31})
    shuffled = table.sample(frac=1.0, random_state=7)
    pd.testing.assert_frame_equal(split(table, **options).table,
                                  split(shuffled, **options).table)


def test_the_seed_changes_the_split():
    table = fake_table({"a": 200})
    assert assignment(split(table, seed=0)) != assignment(split(table, seed=1))
    assert assignment(split(table, seed=1)) == assignment(split(table, seed=1))


# --- stability -----------------------------------------------------------------------------------

def test_with_fractions_adding_images_never_moves_an_existing_image():
    before = split(fake_table({"a": 40, "b": 25, "c": 60}), val=0.2, test=0.15)
    grown = pd.concat([fake_table({"a": 40, "b": 25, "c": 60}),
                       fake_table({"a": 30, "c": 5, "new": 12}, start=1000)])
    after = split(grown, val=0.2, test=0.15)
    old, new = assignment(before), assignment(after)
    assert all(new[path] == where for path, where in old.items())
    assert len(new) == len(old) + 47


def test_with_fractions_adding_files_to_a_folder_moves_nothing(tmp_path):
    messy_data.make_class_folders(tmp_path, {"a": 15, "b": 15})
    before = assignment(split(scan(tmp_path, progress="none"), val=0.3, test=0.3))
    messy_data.make_class_folders(tmp_path, {"a": 6, "b": 2}, start=100)
    after = assignment(split(scan(tmp_path, progress="none"), val=0.3, test=0.3))
    assert {path: after[path] for path in before} == before


def test_with_counts_adding_images_to_one_class_leaves_the_others_alone():
    sizes = {"a": 30, "b": 25, "c": 41}
    before = split(fake_table(sizes), counts=(10, "rest", 10))
    grown = pd.concat([fake_table(sizes), fake_table({"a": 17}, start=1000)])
    after = split(grown, counts=(10, "rest", 10))
    old, new = assignment(before), assignment(after)
    for path, where in old.items():
        if not path.startswith("a/"):
            assert new[path] == where
    assert per_class(after)["a"] == (10, 27, 10)


# --- duplicates ----------------------------------------------------------------------------------

@pytest.mark.parametrize("options", [{"val": 0.3, "test": 0.3}, {"counts": (4, "rest", 4)},
                                     {"counts": (2, 2, 2)}])
def test_copies_of_one_content_always_share_a_split(options):
    copies = {f"a/copy{n}_{k}.jpg": f"a/{n:05d}.jpg" for n in range(12) for k in range(2)}
    copies.update({f"b/copy{n}.jpg": f"b/{n:05d}.jpg" for n in range(8)})
    result = split(fake_table({"a": 15, "b": 12}, copies=copies), **options)
    kept = result.table
    assert kept.groupby("sha256")["split"].nunique().max() == 1
    # Every copy is either kept with its original or left out with it.
    everything = set(kept["path"]) | set(result.rejected["path"])
    assert set(copies) <= everything


def test_counts_count_distinct_contents():
    copies = {f"a/copy{n}.jpg": f"a/{n:05d}.jpg" for n in range(10)}
    result = split(fake_table({"a": 10}, copies=copies), counts=(3, "rest", 2))
    distinct = result.table.groupby("split")["sha256"].nunique().to_dict()
    assert distinct == {"train": 3, "val": 5, "test": 2}
    assert len(result.table) == 20


# --- counts --------------------------------------------------------------------------------------

def test_counts_protocol_ten_rest_ten_is_exact_per_class():
    result = split(fake_table({"a": 25, "b": 40, "c": 20, "d": 19}), counts=(10, "rest", 10))
    assert per_class(result) == {"a": (10, 5, 10), "b": (10, 20, 10), "c": (10, 0, 10)}
    assert result.classes == ["a", "b", "c"]
    dropped = result.rejected[result.rejected.label == "d"]
    assert len(dropped) == 19
    assert set(dropped["reason"]) == {TOO_SMALL_FOR_COUNTS}
    assert "19 distinct valid images" in dropped["detail"].iloc[0]
    assert result.dropped[["label", "images", "reason"]].values.tolist() == [
        ["d", 19, TOO_SMALL_FOR_COUNTS]]


def test_counts_without_rest_leave_the_surplus_out_with_a_reason():
    result = split(fake_table({"a": 10, "b": 6}), counts=(3, 2, 1))
    assert per_class(result) == {"a": (3, 2, 1), "b": (3, 2, 1)}
    surplus = result.rejected[result.rejected.reason == BEYOND_COUNTS]
    assert surplus["label"].value_counts().to_dict() == {"a": 4}


def test_counts_accept_the_command_line_spelling():
    assert parse_counts("10,rest,10") == (10, "rest", 10)
    assert parse_counts(" 5 , 3 , REST ") == (5, 3, "rest")
    table = fake_table({"a": 30})
    assert assignment(split(table, counts="10,rest,10")) == assignment(
        split(table, counts=(10, "rest", 10)))


# --- fractions -----------------------------------------------------------------------------------

def test_fractions_hold_in_expectation():
    result = split(fake_table({"a": 3000}), val=0.2, test=0.1, seed=5)
    train, val, test = per_class(result)["a"]
    assert abs(val - 600) < 5 * (3000 * 0.2 * 0.8) ** 0.5
    assert abs(test - 300) < 5 * (3000 * 0.1 * 0.9) ** 0.5
    assert train + val + test == 3000


def test_zero_fractions_put_everything_in_train():
    result = split(fake_table({"a": 7, "b": 3}), val=0, test=0)
    assert set(result.table["split"]) == {"train"}


# --- classes, rejections, labels ------------------------------------------------------------------

def test_min_per_class_drops_small_classes_with_a_reason():
    table = fake_table({"big": 5, "small": 2, "exact": 3})
    result = split(table, min_per_class=3)
    assert result.classes == ["big", "exact"]
    small = result.rejected[result.rejected.label == "small"]
    assert len(small) == 2 and set(small["reason"]) == {BELOW_MIN_PER_CLASS}
    assert "2 valid images" in small["detail"].iloc[0]
    assert "min_per_class=3" in small["detail"].iloc[0]
    assert set(result.table["label"]) == {"big", "exact"}


def test_scan_rejections_are_carried_into_rejected(real_dataset):
    table = scan(real_dataset, progress="none")
    result = split(table)
    scan_rejected = table[table.status == "rejected"]
    assert set(scan_rejected["path"]) <= set(result.rejected["path"])
    assert list(result.rejected.columns) == ["path", "label", "reason", "detail"]
    assert result.rejected["path"].tolist() == sorted(result.rejected["path"])
    assert len(result.table) + len(result.rejected) == len(table)


def test_label_index_is_the_position_in_the_sorted_classes():
    result = split(fake_table({"zebra": 4, "ant": 4, "Moth": 4}))
    assert result.classes == ["Moth", "ant", "zebra"]
    for row in result.table.itertuples(index=False):
        assert result.classes[row.label_index] == row.label
    assert list(result.table.columns[:4]) == ["path", "label", "label_index", "split"]
    assert {"sha256", "width", "mode"} <= set(result.table.columns)


def test_both_input_formats_give_the_same_split(tmp_path):
    root = tmp_path / "data"
    paths = messy_data.make_class_folders(root, {"cat": 13, "dog": 9, "eel ñ": 11})
    labels = ["eel ñ", "dog", "cat"]  # not sorted: indices in the list differ from label_index
    (tmp_path / "labels.txt").write_text("\n".join(labels) + "\n", encoding="utf-8")
    (tmp_path / "list.txt").write_text(
        "".join(f"{path} {labels.index(path.split('/')[0])}\n" for path in reversed(paths)),
        encoding="utf-8")
    from_folder = scan(root, progress="none")
    from_list = scan(root, list_file=tmp_path / "list.txt", labels_file=tmp_path / "labels.txt",
                     progress="none")
    pd.testing.assert_frame_equal(from_folder, from_list, check_like=False)
    for options in ({"val": 0.25, "test": 0.25}, {"counts": (4, "rest", 3)}):
        a, b = split(from_folder, **options), split(from_list, **options)
        pd.testing.assert_frame_equal(a.table, b.table)
        assert a.classes == b.classes == ["cat", "dog", "eel ñ"]


# --- validation ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({"min_per_class": 0}, "min_per_class must be >= 1, received: 0"),
    ({"min_per_class": 2.5}, "min_per_class must be an integer, received: 2.5"),
    ({"val": -0.1}, "val must be >= 0.0, received: -0.1"),
    ({"test": 2}, "test must be <= 1.0, received: 2"),
    ({"val": "0.2"}, "val must be a number, received: '0.2'"),
    ({"val": 0.6, "test": 0.5}, "val + test must be <= 1, received: val=0.6, test=0.5"),
    ({"counts": (10, "rest", "rest")}, "at most one 'rest' entry, received: (10, 'rest', 'rest')"),
    ({"counts": (10, 10)}, "counts must be (train, val, test)"),
    ({"counts": (-1, "rest", 1)}, "counts train entry must be >= 0, received: -1"),
    ({"counts": (0, 0, 0)}, "counts must ask for at least one image"),
    ({"counts": "10,foo,10"}, "received: '10,foo,10'"),
    ({"counts": (10, "rest", 10), "val": 0.2}, "received: counts=(10, 'rest', 10), val=0.2"),
    ({"seed": "x"}, "seed must be an integer, received: 'x'"),
])
def test_bad_options_name_the_parameter_and_value(kwargs, message):
    with pytest.raises(ValueError) as error:
        split(fake_table({"a": 5}), **kwargs)
    assert message in str(error.value)


def test_a_bad_table_is_refused():
    with pytest.raises(ValueError, match="table must be a pandas DataFrame.*received: list"):
        split([1, 2])
    with pytest.raises(ValueError, match="columns path and label"):
        split(pd.DataFrame({"path": ["a.jpg"]}))


# --- result --------------------------------------------------------------------------------------

def test_summary_and_report_show_classes_drops_and_rejections(real_dataset):
    result = split(scan(real_dataset, progress="none"), counts=(5, "rest", 3), min_per_class=4)
    summary = result.summary()
    assert list(summary.columns) == ["label", "label_index", "train", "val", "test", "total"]
    assert summary["label"].tolist() == result.classes
    assert (summary["total"] == summary[["train", "val", "test"]].sum(axis=1)).all()
    assert summary["total"].sum() == len(result.table)
    report = result.report()
    assert report.startswith("# Split report")
    for label in result.classes:
        assert f"| {label} |" in report
    assert "## Dropped classes" in report and "| fox | 2 | class below min_per_class |" in report
    assert "café ñ" in report  # two images: dropped
    for reason in ("zero bytes", "truncated or corrupt", "duplicate", "decompression bomb"):
        assert f"| {reason} |" in report
    assert "dog/empty.jpg" in report
    short = result.report(max_files=2)
    assert "more, listed in rejected.csv" in short and "dog/empty.jpg" not in short


def test_report_escapes_table_cells():
    result = split(fake_table({"a|b": 3}))
    assert "a\\|b" in result.report()


def test_write_produces_the_contract_files(real_dataset, tmp_path):
    result = split(scan(real_dataset, progress="none"), val=0.2, test=0.2)
    out = result.write(tmp_path / "new" / "out")
    splits = pd.read_csv(out / "splits.csv", keep_default_na=False)
    assert list(splits.columns[:4]) == ["path", "label", "label_index", "split"]
    assert set(splits["split"]) <= {"train", "val", "test"}
    assert splits["path"].tolist() == result.table["path"].tolist()
    rejected = pd.read_csv(out / "rejected.csv", keep_default_na=False)
    assert list(rejected.columns) == ["path", "label", "reason", "detail"]
    assert len(rejected) == len(result.rejected)
    assert (out / "labels.txt").read_text(encoding="utf-8").splitlines() == result.classes
    listed = {}
    for name in ("train", "val", "test"):
        for line in (out / f"{name}.txt").read_text(encoding="utf-8").splitlines():
            path, index = line.rsplit(" ", 1)
            listed[path] = (name, int(index))
    assert listed == {row.path: (row.split, row.label_index)
                      for row in splits.itertuples(index=False)}
    assert (out / "report.md").read_text(encoding="utf-8") == result.report()


def test_a_failed_write_leaves_the_previous_files_whole(tmp_path, monkeypatch):
    first = split(fake_table({"a": 10}))
    out = first.write(tmp_path)
    before = {name: (out / name).read_bytes() for name in FILES}

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(atomic_io.os, "replace", fail)
    monkeypatch.setattr(atomic_io, "_exchange", lambda first, second: fail())
    with pytest.raises(OSError, match="disk full"):
        split(fake_table({"a": 10, "b": 10})).write(out, overwrite=True)
    assert {name: (out / name).read_bytes() for name in FILES} == before
    assert sorted(os.listdir(out)) == sorted(FILES)
    assert not [name for name in os.listdir(out.parent) if name.startswith(f".{out.name}.")]


# --- rewriting a split folder --------------------------------------------------------------------

def folder_bytes(folder) -> dict | None:
    """Every file under ``folder`` and its bytes; None when the folder is missing."""
    if not folder.is_dir():
        return None
    return {str(path.relative_to(folder)): path.read_bytes()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def test_rewriting_with_other_settings_needs_overwrite_and_leaves_the_folder_alone(tmp_path):
    out = split(fake_table({"a": 10, "b": 6}), seed=0).write(tmp_path / "out", data_root=tmp_path)
    (out / "cache").mkdir()
    (out / "cache" / "images-x.npy").write_bytes(b"cache")
    before = folder_bytes(out)
    other = split(fake_table({"a": 10, "b": 6}), seed=1)
    with pytest.raises(SplitFolderExists) as caught:
        other.write(out, data_root=tmp_path)
    message = str(caught.value)
    assert "16 images in 2 classes" in message and "seed 0 -> 1" in message
    assert "overwrite=True" in message and "another out" in message
    assert folder_bytes(out) == before

    other.write(out, data_root=tmp_path, overwrite=True)
    assert other.outcome == "replaced"
    assert (out / "splits.csv").read_bytes() == other.table.to_csv(
        index=False, lineterminator="\n").encode()
    assert not (out / "cache").exists()  # the old split's cache went with it


def test_other_images_with_the_same_settings_also_need_overwrite(tmp_path):
    out = split(fake_table({"a": 10})).write(tmp_path / "out", data_root=tmp_path)
    with pytest.raises(SplitFolderExists, match="other files.*2 images added"):
        split(fake_table({"a": 12})).write(out, data_root=tmp_path)


def test_writing_the_same_split_again_writes_nothing(tmp_path):
    out = split(fake_table({"a": 10})).write(tmp_path / "out", data_root=tmp_path)
    (out / "cache").mkdir()
    stamps = {path.name: path.stat().st_mtime_ns for path in out.iterdir()}
    inode = out.stat().st_ino
    again = split(fake_table({"a": 10}))
    assert again.write(out, data_root=tmp_path) == out
    assert again.outcome == "unchanged" and "already up to date" in again.note
    assert {path.name: path.stat().st_mtime_ns for path in out.iterdir()} == stamps
    assert out.stat().st_ino == inode and (out / "cache").is_dir()


def test_a_folder_of_other_files_is_never_replaced(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="notes.txt"):
        split(fake_table({"a": 10})).write(out, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine" and os.listdir(out) == ["notes.txt"]


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs in the writer (what is on disk stays)."""


@pytest.fixture()
def dead_pid():
    process = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                             capture_output=True, text=True, check=True)
    return int(process.stdout)


@pytest.mark.parametrize("exchange", [True, False], ids=["swap", "rename-aside"])
def test_a_rewrite_killed_after_any_write_leaves_the_old_or_the_new_folder(
        tmp_path, monkeypatch, dead_pid, exchange):
    data = tmp_path / "data"
    old_result = split(fake_table({"a": 10, "b": 6}), seed=0)
    new_result = split(fake_table({"a": 10, "b": 6}), seed=1)
    reference = {name: folder_bytes(result.write(tmp_path / "reference" / name, data_root=data))
                 for name, result in (("old", old_result), ("new", new_result))}
    real = {"write": split_module._write_file, "replace": atomic_io.os.replace,
            "exchange": atomic_io._exchange if exchange else lambda first, second: False}

    def killed_rewrite(out, kill_at: int) -> bool:
        """Rewrites ``out`` as a process ``dead_pid`` killed after its kill_at-th step (a file
        written, a rename or a swap) would: True when it was killed."""
        done = [0]

        def step(function):
            def counted(*args):
                result = function(*args)
                done[0] += 1
                if done[0] == kill_at:
                    raise Killed
                return result
            return counted

        with monkeypatch.context() as patch:
            patch.setattr(split_module, "_write_file", step(real["write"]))
            patch.setattr(atomic_io.os, "replace", step(real["replace"]))
            patch.setattr(atomic_io, "_exchange", step(real["exchange"]) if exchange
                          else real["exchange"])
            patch.setattr(atomic_io, "remove", lambda path: None)  # a kill cleans up nothing
            patch.setattr(atomic_io.os, "getpid", lambda: dead_pid)
            try:
                new_result.write(out, data_root=data, overwrite=True)
            except Killed:
                return True
        return False

    if not exchange:
        monkeypatch.setattr(atomic_io, "_exchange", real["exchange"])
    kill_at = 1
    while True:
        out = tmp_path / str(kill_at) / "out"
        old_result.write(out, data_root=data)
        killed = killed_rewrite(out, kill_at)
        left = folder_bytes(out)
        if left is None:  # between the two renames; the next write puts the old one back
            assert not exchange, f"killed at step {kill_at}"
            old_result.write(out, data_root=data)
            assert old_result.outcome == "unchanged"
            left = folder_bytes(out)
        assert left in (reference["old"], reference["new"]), f"killed at step {kill_at}"
        if not killed:
            assert left == reference["new"]
            break
        # the next write clears what the killed one left beside the folder, and finishes
        new_result.write(out, data_root=data, overwrite=True)
        assert folder_bytes(out) == reference["new"]
        assert os.listdir(out.parent) == ["out"], f"killed at step {kill_at}"
        kill_at += 1
    # each of the 8 file writes was killed once, then the swap (or each of the two renames)
    assert kill_at - 1 == len(FILES) + 1 + (1 if exchange else 2)
