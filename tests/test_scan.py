"""Scanning a messy dataset: each kind of bad file gets its reason, each good one is read right."""

import os
import sys
import warnings

import numpy as np
import pandas as pd
import pytest

import messy_data
import workbench._progress as progress_module
from workbench._progress import progress
from workbench.data import scan as scan_module
from workbench.cli import main
from workbench.data.images import ImageRejected, decode, open_image
from workbench.data.scan import COLUMNS, OK, REASONS, REJECTED, read_labels, scan


@pytest.fixture()
def messy(tmp_path):
    root = tmp_path / "data"
    expected = messy_data.make_messy_dataset(root)
    return root, expected


@pytest.fixture()
def scanned(messy):
    root, expected = messy
    return scan(root, progress="none"), expected


def by_path(table):
    return {row.path: row for row in table.itertuples(index=False)}


def test_every_file_gets_its_status_and_reason(scanned):
    table, expected = scanned
    found = {row.path: (row.status, row.reason) for row in table.itertuples(index=False)}
    assert found == expected


def test_table_has_the_columns_sorted_paths_and_known_reasons(scanned):
    table, _ = scanned
    assert tuple(table.columns) == COLUMNS
    assert table["path"].tolist() == sorted(table["path"])
    assert set(table["status"]) == {OK, REJECTED}
    ok = table[table.status == OK]
    rejected = table[table.status == REJECTED]
    assert (ok["reason"] == "").all() and (ok["detail"] == "").all()
    assert set(rejected["reason"]) <= set(REASONS)
    assert (rejected["detail"].str.len() > 0).all()
    assert ok["sha256"].str.fullmatch("[0-9a-f]{64}").all()
    assert ok["width"].notna().all() and ok["height"].notna().all()


def test_reasons_are_shared_constants():
    assert set(ImageRejected.REASONS) <= set(REASONS)
    assert scan_module.ZERO_BYTES == "zero bytes"
    assert scan_module.DUPLICATE == "duplicate"
    assert scan_module.CONFLICTING_LABELS == "conflicting labels"
    assert len(set(REASONS)) == len(REASONS)


def test_original_mode_and_oriented_size_are_recorded(scanned):
    table, _ = scanned
    rows = by_path(table)
    assert rows["cat/cmyk.jpg"].mode == "CMYK"
    assert rows["cat/sixteen.png"].mode.startswith("I")
    assert rows["cat/palette.png"].mode == "P"
    assert rows["cat/grey.png"].mode == "L"
    assert rows["cat/rgba.png"].mode == "RGBA"
    assert rows["cat/rgb.jpg"].mode == "RGB"
    # Stored 24x12 with EXIF orientation 6 (rotate 90 degrees): read as 12 wide, 24 high.
    assert (rows["cat/rotated.jpg"].width, rows["cat/rotated.jpg"].height) == (12, 24)
    assert (rows["cat/rgb.jpg"].width, rows["cat/rgb.jpg"].height) == (16, 16)


def test_unusual_modes_decode_to_sensible_rgb(messy):
    root, _ = messy
    sixteen = np.asarray(open_image(root / "cat/sixteen.png"))
    assert sixteen.shape == (16, 16, 3)
    # 26000..33500 of 65535 is mid grey (about 101..130), not clipped to white.
    assert 100 < sixteen.mean() < 135
    palette = np.asarray(open_image(root / "cat/palette.png"))
    assert palette.shape == (16, 16, 3)
    assert {tuple(p) for p in palette.reshape(-1, 3)} <= {(255, 255, 255), (0, 255, 0),
                                                           (0, 0, 255), (10, 20, 30)}
    cmyk = open_image(root / "cat/cmyk.jpg")
    assert cmyk.mode == "RGB" and cmyk.size == (16, 16)


def test_unicode_upper_case_and_nested_files_are_found_with_their_class(scanned):
    table, _ = scanned
    rows = by_path(table)
    assert rows["café ñ/日本語.jpg"].label == "café ñ"
    assert rows["café ñ/Ünïcödé.png"].status == OK
    assert rows["cat/UPPER.JPG"].status == OK and rows["cat/pic.TIFF"].status == OK
    assert rows["cat/deep/er/nested.jpeg"].label == "cat"
    assert rows["dog/with space.jpg"].label == "dog"


def test_copies_name_the_kept_file_and_conflicts_reject_every_copy(scanned):
    table, _ = scanned
    rows = by_path(table)
    assert rows["dog/copy_1.jpg"].status == OK
    for path in ("dog/copy_2.jpg", "dog/sub/copy_0.jpg"):
        assert rows[path].reason == "duplicate"
        assert "dog/copy_1.jpg" in rows[path].detail
        assert rows[path].sha256 == rows["dog/copy_1.jpg"].sha256
    assert "dog/both.jpg" in rows["cat/both.jpg"].detail
    assert "cat/both.jpg" in rows["dog/both.jpg"].detail
    ok = table[table.status == OK]
    assert not ok["sha256"].duplicated().any()


def test_hidden_files_outside_a_class_have_no_label(scanned):
    table, _ = scanned
    rows = by_path(table)
    assert rows["__MACOSX/dog/._a.jpg"].label == ""
    assert rows[".cache/x.jpg"].label == ""
    assert rows["dog/.DS_Store"].label == "dog"


def test_scan_never_writes_into_the_source_folder(messy):
    root, _ = messy
    before = messy_data.snapshot(root)
    scan(root, progress="none")
    scan(root, progress="none", workers=1)
    assert messy_data.snapshot(root) == before


def test_scan_is_deterministic_whatever_the_number_of_threads(messy):
    root, _ = messy
    one = scan(root, progress="none", workers=1)
    many = scan(root, progress="none", workers=8)
    pd.testing.assert_frame_equal(one, many)
    assert one.to_csv(index=False) == scan(root, progress="none", workers=3).to_csv(index=False)


def test_limits_are_configurable(tmp_path):
    messy_data.write(tmp_path / "a/img.png", messy_data.image_bytes(1, "PNG"))
    rows = by_path(scan(tmp_path, max_pixels=100, progress="none"))
    assert rows["a/img.png"].reason == "decompression bomb"
    assert "max_pixels=100" in rows["a/img.png"].detail
    rows = by_path(scan(tmp_path, min_side=17, progress="none"))
    assert rows["a/img.png"].reason == "too small"
    rows = by_path(scan(tmp_path, min_side=16, progress="none"))
    assert rows["a/img.png"].status == OK


def test_a_broken_link_is_unreadable(tmp_path):
    (tmp_path / "a").mkdir()
    os.symlink(tmp_path / "nowhere.jpg", tmp_path / "a/link.jpg")
    messy_data.write(tmp_path / "a/real.jpg", messy_data.image_bytes(1))
    rows = by_path(scan(tmp_path, progress="none"))
    assert (rows["a/link.jpg"].status, rows["a/link.jpg"].reason) == (REJECTED, "unreadable")
    assert rows["a/real.jpg"].status == OK


def test_an_empty_folder_gives_an_empty_table(tmp_path):
    table = scan(tmp_path, progress="none")
    assert len(table) == 0 and tuple(table.columns) == COLUMNS


def write_list_dataset(root):
    """Images plus a Caffe list and labels file exercising every kind of list line."""
    messy_data.write(root / "images/tench 1.jpg", messy_data.image_bytes(1))
    messy_data.write(root / "images/goldfish.png", messy_data.image_bytes(2, "PNG"))
    messy_data.write(root / "images/more/goldfish 2.jpg", messy_data.image_bytes(3))
    messy_data.write(root / "images/empty.jpg", b"")
    messy_data.write(root / "images/.hidden.jpg", messy_data.image_bytes(4))
    labels = root / "synset_words.txt"
    labels.write_text("n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\n\n",
                      encoding="utf-8")
    listing = root / "train.txt"
    listing.write_text("\n".join([
        "images/tench 1.jpg 0",
        "images/goldfish.png\t1",
        "images/more/goldfish 2.jpg   1  ",
        "",
        "images/no_index.jpg",
        "images/goldfish.png x",
        "images/goldfish.png 7",
        "images/missing.jpg 0",
        "images/empty.jpg 1",
        "images/.hidden.jpg 0",
    ]) + "\n", encoding="utf-8")
    return listing, labels


def test_list_file_lines_are_accepted_or_rejected_with_a_reason(tmp_path):
    listing, labels = write_list_dataset(tmp_path)
    table = scan(tmp_path, list_file=listing, labels_file=labels, progress="none")
    found = sorted((row.path, row.label, row.status, row.reason)
                   for row in table.itertuples(index=False))
    tench, goldfish = "n01440764 tench, Tinca tinca", "n01443537 goldfish, Carassius auratus"
    assert found == sorted([
        ("images/tench 1.jpg", tench, OK, ""),
        ("images/goldfish.png", goldfish, OK, ""),
        ("images/more/goldfish 2.jpg", goldfish, OK, ""),
        ("images/no_index.jpg", "", REJECTED, "bad list entry"),
        ("images/goldfish.png", "", REJECTED, "bad list entry"),
        ("images/goldfish.png", "", REJECTED, "bad list entry"),
        ("images/missing.jpg", tench, REJECTED, "unreadable"),
        ("images/empty.jpg", goldfish, REJECTED, "zero bytes"),
        ("images/.hidden.jpg", tench, REJECTED, "hidden or system file"),
    ])
    details = " ".join(table["detail"])
    assert "line 5" in details and "line 6" in details and "outside 0..1" in details
    assert "missing" in by_path(table)["images/missing.jpg"].detail


def test_a_file_listed_twice_is_a_duplicate_or_a_conflict(tmp_path):
    messy_data.write(tmp_path / "a.jpg", messy_data.image_bytes(1))
    messy_data.write(tmp_path / "b.jpg", messy_data.image_bytes(2))
    labels = tmp_path / "labels.txt"
    labels.write_text("x\ny\n")
    listing = tmp_path / "list.txt"
    listing.write_text("a.jpg 0\na.jpg 0\nb.jpg 0\nb.jpg 1\n")
    table = scan(tmp_path, list_file=listing, labels_file=labels, progress="none")
    assert table["reason"].tolist() == ["", "duplicate", "conflicting labels",
                                        "conflicting labels"]


def test_labels_file_rules(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("\ufeffcat\n  dog with spaces  \n\n\n", encoding="utf-8")
    assert read_labels(good) == ["cat", "dog with spaces"]
    gap = tmp_path / "gap.txt"
    gap.write_text("cat\n\ndog\n")
    with pytest.raises(ValueError, match="line 2 is blank"):
        read_labels(gap)
    twice = tmp_path / "twice.txt"
    twice.write_text("cat\ndog\ncat\n")
    with pytest.raises(ValueError, match="line 3 repeats the class 'cat'"):
        read_labels(twice)


@pytest.mark.parametrize("kwargs, message", [
    ({"min_side": 0}, "min_side must be >= 1, received: 0"),
    ({"max_pixels": "big"}, "max_pixels must be an integer, received: 'big'"),
    ({"workers": 0}, "workers must be >= 1, received: 0"),
    ({"progress": "yes"}, "progress must be one of 'auto', 'lines', 'none', received: 'yes'"),
    ({"decode_jpeg": "half"}, "decode_jpeg must be one of"),
    ({"list_file": "list.txt"}, "labels_file is required with list_file='list.txt'"),
    ({"labels_file": "labels.txt"}, "list_file is required with labels_file='labels.txt'"),
])
def test_bad_arguments_name_the_argument_and_value(tmp_path, kwargs, message):
    with pytest.raises(ValueError) as error:
        scan(tmp_path, **kwargs)
    assert message in str(error.value)


def test_missing_inputs_raise_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        scan(tmp_path / "nowhere")
    (tmp_path / "labels.txt").write_text("a\n")
    with pytest.raises(FileNotFoundError, match="list_file not found"):
        scan(tmp_path, list_file=tmp_path / "no.txt", labels_file=tmp_path / "labels.txt")


def test_headless_progress_prints_plain_lines(capsys, monkeypatch):
    monkeypatch.delenv("WORKBENCH_PROGRESS", raising=False)
    monkeypatch.setattr(progress_module, "MIN_SECONDS_BETWEEN_LINES", 0.0)
    assert "ipykernel.zmqshell" not in sys.modules
    assert list(progress(range(50), desc="work")) == list(range(50))
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert lines[0] == "work: 10% (5/50)"
    assert len(lines) == 10  # 10% .. 90%, then the end
    assert lines[-1].startswith("work: done, 50/50")


def test_headless_progress_of_a_quick_loop_prints_only_its_end(capsys, monkeypatch):
    monkeypatch.delenv("WORKBENCH_PROGRESS", raising=False)
    list(progress(range(50), desc="quick"))
    assert capsys.readouterr().err.splitlines()[0].startswith("quick: done, 50/50")


def test_progress_can_be_switched_off_and_scan_reports_headless(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORKBENCH_PROGRESS", "off")
    assert list(progress(iter("abc"))) == ["a", "b", "c"]
    assert capsys.readouterr().err == ""
    monkeypatch.delenv("WORKBENCH_PROGRESS")
    messy_data.make_class_folders(tmp_path, {"a": 3})
    scan(tmp_path)
    err = capsys.readouterr().err
    assert "\r" not in err and err.splitlines()[-1].startswith("scan: done, 3/3")


# --- Validating JPEGs in draft: 1/8 scale, every compressed byte still read ---------------------

PHOTO = (200, 152)  # width, height; at 1/8 scale 25 x 19


def jpeg_cases():
    """JPEGs a scan must accept or reject, whatever the scale it decodes them at."""
    good = messy_data.image_bytes(1, size=PHOTO, quality=95)
    progressive = messy_data.image_bytes(2, size=PHOTO, quality=95, progressive=True)
    restarts = messy_data.image_bytes(3, size=PHOTO, quality=95, restart_marker_blocks=4)
    return {
        "a/good.jpg": (good, OK, ""),
        "a/progressive.jpg": (progressive, OK, ""),
        "a/restarts.jpg": (restarts, OK, ""),
        "a/rotated.jpg": (messy_data.exif_rotated_jpeg(4, size=PHOTO), OK, ""),
        "a/cut_in_half.jpg": (good[: len(good) // 2], REJECTED, "truncated or corrupt"),
        "a/cut_before_the_end_marker.jpg": (good[:-2], REJECTED, "truncated or corrupt"),
        "a/cut_by_one_byte.jpg": (good[:-1], REJECTED, "truncated or corrupt"),
        "a/cut_in_the_last_scan.jpg": (progressive[:-40], REJECTED, "truncated or corrupt"),
        "a/cut_after_a_restart.jpg": (restarts[: int(len(restarts) * 0.8)], REJECTED,
                                      "truncated or corrupt"),
        "a/corrupt_table.jpg": (messy_data.corrupt_jpeg(5, size=PHOTO), REJECTED,
                                "truncated or corrupt"),
    }


@pytest.mark.parametrize("decode_jpeg", ["draft", "full"])
def test_jpeg_validation_rejects_what_a_full_decode_rejects(tmp_path, decode_jpeg):
    cases = jpeg_cases()
    for path, (data, _, _) in cases.items():
        messy_data.write(tmp_path / path, data)
    rows = by_path(scan(tmp_path, progress="none", decode_jpeg=decode_jpeg))
    assert {path: (row.status, row.reason) for path, row in rows.items()} == {
        path: (status, reason) for path, (_, status, reason) in cases.items()}
    for path in ("a/good.jpg", "a/progressive.jpg", "a/restarts.jpg"):
        assert (rows[path].width, rows[path].height) == PHOTO  # not the 1/8 scale size
    assert (rows["a/rotated.jpg"].width, rows["a/rotated.jpg"].height) == PHOTO[::-1]


def test_draft_decodes_a_jpeg_small_but_reports_its_true_size():
    decoded = decode(messy_data.exif_rotated_jpeg(6, size=PHOTO), draft_size=1)
    assert decoded.image.size == (19, 25)  # 152 / 8 wide, 200 / 8 high once turned upright
    assert (decoded.width, decoded.height) == (152, 200)
    full = decode(messy_data.exif_rotated_jpeg(6, size=PHOTO))
    assert full.image.size == (full.width, full.height) == (152, 200)


def test_scan_asks_for_draft_jpegs_only_when_told(tmp_path, monkeypatch):
    messy_data.make_class_folders(tmp_path, {"a": 3}, fmt="JPEG")
    asked = []

    def spy(data, **kwargs):
        asked.append(kwargs["draft_size"])
        return decode(data, **kwargs)

    monkeypatch.setattr(scan_module, "decode", spy)
    scan(tmp_path, progress="none")
    scan(tmp_path, progress="none", decode_jpeg="full")
    assert asked == [1, 1, 1, None, None, None]


def test_split_prints_no_decoder_warnings_and_keeps_them_in_rejected_csv(tmp_path, capfd,
                                                                         monkeypatch):
    monkeypatch.setenv("WORKBENCH_PROGRESS", "off")
    data = tmp_path / "data"
    messy_data.make_class_folders(data, {"a": 6, "b": 6})
    messy_data.write(data / "a/cut_tags.tif", messy_data.truncated(
        messy_data.tiff_with_bad_tags(1, count=300), keep=0.9))
    messy_data.write(data / "b/broken_lzw.tif", messy_data.corrupt_compressed_tiff(2))
    messy_data.write(data / "b/exif.png", messy_data.truncated(
        messy_data.png_with_bad_exif(3, count=300), keep=0.95))
    with warnings.catch_warnings(record=True) as escaped:
        warnings.simplefilter("always")
        assert main(["split", str(data), "--out", str(tmp_path / "out"), "--min-per-class",
                     "2"]) == 0
    assert escaped == [] and capfd.readouterr().err == ""
    rejected = pd.read_csv(tmp_path / "out/rejected.csv", keep_default_na=False)
    details = dict(zip(rejected["path"], rejected["detail"]))
    assert "Tag data larger than file. Skipping tag 49152" in details["a/cut_tags.tif"]
    assert "libtiff: Using code not yet in table" in details["b/broken_lzw.tif"]
    assert "Skipping tag 36864" in details["b/exif.png"]
