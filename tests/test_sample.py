"""Tests of the offline sample data (workbench.data.sample), at tiny sizes."""

import hashlib
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from workbench.data import sample


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("the sample data must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _digests(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_write_sample_data_is_byte_identical_across_calls(tmp_path):
    kwargs = dict(image_size=8, source_per_class=3, seed=5, datasets=("source", "target"),
                  progress="none")
    first = sample.write_sample_data(tmp_path / "a", **kwargs)
    second = sample.write_sample_data(tmp_path / "b", **kwargs)
    assert first["source"]["images"] == second["source"]["images"] == 26 * 3
    a, b = _digests(tmp_path / "a"), _digests(tmp_path / "b")
    assert len(a) == 26 * 3 + 1797
    assert a == b
    other = sample.write_source(tmp_path / "c", per_class=3, image_size=8, seed=6)
    assert _digests(Path(other["path"])) != _digests(tmp_path / "a" / "source")


def test_folder_structure_counts_size_and_mode(tmp_path):
    summary = sample.write_sample_data(tmp_path, image_size=10, source_per_class=2,
                                       datasets=("source", "target"), progress="none")
    assert set(summary) == {"source", "target"}
    source = tmp_path / "source"
    assert sorted(p.name for p in source.iterdir()) == list(sample.LETTERS)
    assert all(len(list(d.glob("*.png"))) == 2 for d in source.iterdir())
    target = tmp_path / "target"
    assert sorted(p.name for p in target.iterdir()) == [str(d) for d in range(10)]
    counts = [len(list(d.glob("*.png"))) for d in sorted(target.iterdir())]
    assert counts == np.bincount(sample.load_digit_glyphs()[1]).tolist()
    assert summary["target"] == {"path": str(target), "classes": 10, "images": 1797,
                                 "image_size": 10}
    for path in (next(source.rglob("*.png")), next(target.rglob("*.png"))):
        with Image.open(path) as image:
            assert image.size == (10, 10) and image.mode == "RGB"
    assert not list(tmp_path.glob(".*"))  # no temporary folder left


def test_existing_folder_is_not_overwritten_unless_asked(tmp_path):
    sample.write_source(tmp_path, per_class=1, image_size=8, characters="AB")
    with pytest.raises(FileExistsError, match="overwrite"):
        sample.write_sample_data(tmp_path, datasets="source", source_per_class=1, progress="none")
    sample.write_source(tmp_path, per_class=2, image_size=8, characters="XYZ", overwrite=True)
    assert sorted(p.name for p in (tmp_path / "source").iterdir()) == ["X", "Y", "Z"]


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (what is on disk stays)."""


def test_a_rewrite_killed_before_its_swap_leaves_the_old_dataset_whole(tmp_path, monkeypatch):
    import subprocess
    import sys

    import workbench._io as atomic_io

    sample.write_source(tmp_path, per_class=1, image_size=8, characters="AB")
    before = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "source").rglob("*"))
    dead_pid = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                                  capture_output=True, text=True, check=True).stdout)

    def kill(*args):
        raise Killed

    with monkeypatch.context() as patch:  # killed at the step that puts the new folder in place
        patch.setattr(atomic_io, "_exchange", kill)
        patch.setattr(atomic_io.os, "replace", kill)
        patch.setattr(Path, "rename", kill)
        patch.setattr(atomic_io, "remove", lambda path: None)  # a kill cleans up nothing
        patch.setattr(atomic_io.os, "getpid", lambda: dead_pid)
        with pytest.raises(Killed):
            sample.write_source(tmp_path, per_class=2, image_size=8, characters="XYZ",
                                overwrite=True)
    assert sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "source").rglob("*")) == \
        before
    assert len(list(tmp_path.glob(f".source.{dead_pid}.*"))) == 1  # the killed call's folder
    sample.write_source(tmp_path, per_class=2, image_size=8, characters="XYZ", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["source"]  # and the next removes it
    assert sorted(p.name for p in (tmp_path / "source").iterdir()) == ["X", "Y", "Z"]


def test_cli_sample_data_refuses_an_existing_folder_in_flags(tmp_path, capsys):
    from workbench.cli import main

    (tmp_path / "digits").mkdir()
    (tmp_path / "digits" / "mine.png").write_bytes(b"mine")
    assert main(["sample-data", "--out", str(tmp_path), "--image-size", "8"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error == [f"error: {tmp_path / 'digits'} already exists and is not empty; pass "
                     "--overwrite to replace it"]
    assert [p.name for p in tmp_path.rglob("*")] == ["digits", "mine.png"]


def test_digits_are_the_real_sklearn_digits(tmp_path):
    summary = sample.write_digits(tmp_path, image_size=32)
    assert summary["images"] == 1797
    glyphs, labels = sample.load_digit_glyphs()
    for index in (0, 100, 1796):
        path = tmp_path / "digits" / str(labels[index]) / f"digit_{index:04d}.png"
        with Image.open(path) as image:
            assert image.mode == "RGB" and image.size == (32, 32)
            small = np.asarray(image.convert("L").resize((8, 8), Image.BOX), dtype=float)
        ink = 255.0 - small  # dark ink on white
        assert np.corrcoef(ink.ravel(), glyphs[index].ravel())[0, 1] > 0.9
        assert np.corrcoef(ink.ravel(), glyphs[(index + 1) % 1797].ravel())[0, 1] < 0.9


def test_source_uses_many_fonts_and_renders_differ():
    fonts = sample.font_paths()
    assert len(fonts) >= 10
    assert not {"cmsy10.ttf", "cmex10.ttf", "LastResortHE-Regular.ttf"} & {f.name for f in fonts}
    bitmaps = [sample.glyph_bitmap("A", font_path=f, rng=np.random.default_rng(0))
               for f in fonts[:4]]
    assert len({b.tobytes() for b in bitmaps}) == 4
    images, labels, names = sample.make_source(len(fonts), image_size=16, characters="AB",
                                               workers=2)
    assert images.shape == (2 * len(fonts), 16, 16, 3) and images.dtype == np.uint8
    assert labels.tolist() == [0] * len(fonts) + [1] * len(fonts) and names == ["A", "B"]


def test_glyph_pipeline_matches_the_digits_look():
    bitmap = sample.glyph_bitmap("H", font_path=sample.font_paths()[0],
                                 rng=np.random.default_rng(1), max_rotation=0, max_shear=0)
    assert bitmap.shape == (32, 32) and bitmap.dtype == bool
    rows, cols = np.flatnonzero(bitmap.any(1)), np.flatnonzero(bitmap.any(0))
    assert max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 >= 30  # fills the box like a digit
    counts = sample.block_counts(bitmap)
    assert counts.shape == (8, 8) and counts.min() >= 0 and counts.max() <= 16
    assert counts.sum() == bitmap.sum()
    image = sample.compose(counts, image_size=24, rng=np.random.default_rng(2))
    assert image.shape == (24, 24, 3) and image.dtype == np.uint8


def test_target_is_deterministic_and_seeded():
    a, labels, names = sample.make_target(image_size=12, seed=3, workers=2)
    b, _, _ = sample.make_target(image_size=12, seed=3, workers=1)
    c, _, _ = sample.make_target(image_size=12, seed=4, workers=2)
    assert a.shape == (1797, 12, 12, 3) and names == [str(d) for d in range(10)]
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.array_equal(labels, sample.load_digit_glyphs()[1])


@pytest.mark.parametrize("call, message", [
    (lambda: sample.make_source(0), "per_class must be >= 1, received: 0"),
    (lambda: sample.make_source(1, image_size=4), "image_size must be >= 8, received: 4"),
    (lambda: sample.make_source(1, characters="AA"), "characters must not repeat"),
    (lambda: sample.make_source(1, characters=""), "characters must be a non-empty"),
    (lambda: sample.write_sample_data("x", datasets=("digits", "mnist")),
     "datasets must be a non-empty selection of digits, source, target, received"),
    (lambda: sample.compose(np.zeros((4, 4)), image_size=16, rng=np.random.default_rng()),
     r"glyph must have shape \(8, 8\), received: \(4, 4\)"),
    (lambda: sample.glyph_bitmap("AB", font_path="x", rng=np.random.default_rng()),
     "char must be a single character, received: 'AB'"),
    (lambda: sample.clutter(16, rng=np.random.default_rng(), lines=(3, 1)),
     r"lines must be \(minimum, maximum\)"),
])
def test_bad_arguments_name_the_argument_and_value(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_class_folder_names_are_safe_on_case_insensitive_disks():
    assert [sample.class_folder(c) for c in "Aa7!"] == ["A", "lower_a", "7", "U+0021"]
