"""Classifying folders and list files into one table: file rules, CSV and Parquet, resuming after
kill -9, a bounded queue, a Dask cluster, progress lines, the CLI."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import tiny_data
from workbench import _progress
from workbench.cli import main
from workbench.deploy import batch, files
from workbench.deploy.batch import list_files, predict_to_file, read_table


def _png(path: Path, seed: int, size: int = 16) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path)


def _messy_folder(root: Path) -> Path:
    """Nested sub-folders, a broken file, a hidden file, a text file."""
    _png(root / "a" / "one.png", 1)
    _png(root / "a" / "deep" / "er" / "two.png", 2)
    _png(root / "b" / "three.png", 3)
    _png(root / "top.png", 4)
    (root / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "b" / "empty.png").write_bytes(b"")
    (root / "a" / ".secret.png").write_bytes(b"whatever")
    (root / "notes.txt").write_text("not an image")
    return root


# --- listing: no model needed -------------------------------------------------------------------

def test_a_folder_is_searched_at_every_depth_with_the_scan_rules(tmp_path):
    root = _messy_folder(tmp_path / "photos")
    sources = {source.path: source for source in list_files([root])}
    assert set(sources) == {"a/one.png", "a/deep/er/two.png", "b/three.png", "top.png",
                            "b/broken.jpg", "b/empty.png", "a/.secret.png", "notes.txt"}
    assert sources["a/.secret.png"].reason == "hidden or system file"
    assert sources["notes.txt"].reason == "not an image"
    assert sources["a/deep/er/two.png"].file == str(root / "a" / "deep" / "er" / "two.png")
    assert sources["b/broken.jpg"].reason == ""  # read, and rejected when decoded
    # with another path beside it, the folder's files are shown joined to it as given
    both = [source.path for source in list_files([root, root / "top.png"])]
    assert f"{root}/a/one.png" in both and both.count(str(root / "top.png")) == 1


def test_list_files_in_caffe_format_or_one_path_a_line(tmp_path):
    root = _messy_folder(tmp_path / "photos")
    (tmp_path / "caffe.txt").write_text("a/one.png 0\nb/three.png 1\n\n.hidden/x.png 2\n")
    (root / "plain.txt").write_text("a/one.png\nmy dir/no such.png\n")
    caffe = list_files(list_file=tmp_path / "caffe.txt", list_root=root)
    assert [s.path for s in caffe] == ["a/one.png", "b/three.png", ".hidden/x.png"]
    assert caffe[1].file == os.path.join(root, "b/three.png")
    assert caffe[2].reason == "hidden or system file"
    plain = list_files(list_file=root / "plain.txt")  # relative to the list's own folder
    assert [s.path for s in plain] == ["a/one.png", "my dir/no such.png"]
    assert plain[1].file == os.path.join(root, "my dir/no such.png")
    with pytest.raises(ValueError, match="paths must name at least one"):
        list_files([])
    with pytest.raises(FileNotFoundError, match="list_file not found"):
        list_files(list_file=tmp_path / "nowhere.txt")


# --- a fake classifier for the pipeline's own behaviour -----------------------------------------

class _Counting:
    """A classifier stand-in: mean brightness decides the class; counts decoded images held."""

    labels = ["dark", "light"]
    image_size, resize_mode, temperature = 8, "squash", 1.0

    def probabilities(self, pixels, *, batch_size, tta, calibrated):
        light = pixels.reshape(len(pixels), -1).mean(axis=1) / 255
        return np.stack([1 - light, light], axis=1).astype(np.float32)

    def top_rows(self, rows, top_k):
        return [[{"label": self.labels[i], "probability": float(row[i])}
                 for i in np.argsort(-row, kind="stable")[:top_k]] for row in rows]


def test_memory_stays_flat_the_queue_bounds_the_files_held(tmp_path, monkeypatch):
    for index in range(200):
        _png(tmp_path / f"{index:03d}.png", index, size=12)
    held, most, lock = [0], [0], threading.Lock()
    load = files._load

    def counted(*args):
        loaded = load(*args)
        with lock:
            held[0] += 1
            most[0] = max(most[0], held[0])
        return loaded

    monkeypatch.setattr(files, "_load", counted)
    rows = batch.predict_rows(_Counting(), sorted(tmp_path.glob("*.png")), batch_size=4,
                              threads=2, top_k=1, queue_size=6)
    count = 0
    for row in rows:  # consumed slowly: the decoders may not run ahead beyond the queue
        with lock:
            held[0] -= 1
        count += 1
        time.sleep(0.001)
        assert row["error"] == "" and row["label_1"] in ("dark", "light")
    assert count == 200
    assert most[0] <= 6 + 4  # the queue, plus at most one batch being classified


def test_headless_progress_says_images_per_second_and_time_left(tmp_path, monkeypatch,
                                                                   capsys):
    monkeypatch.setenv("WORKBENCH_PROGRESS", "plain")
    monkeypatch.setattr(_progress, "MIN_SECONDS_BETWEEN_LINES", 0.0)
    for index in range(30):
        _png(tmp_path / f"{index:02d}.png", index, size=12)
    rows = list(batch.predict_rows(_Counting(), sorted(tmp_path.glob("*.png")), batch_size=3,
                                   threads=1, progress="auto"))
    assert len(rows) == 30
    lines = capsys.readouterr().err.splitlines()
    assert "\r" not in "".join(lines)
    assert any(line.startswith("predict: ") and "images/s" in line and line.endswith(" left")
               for line in lines[:-1])
    assert lines[-1].startswith("predict: done, 30/30 in ") and lines[-1].endswith("images/s")


def test_a_failing_job_keeps_its_chunks_and_other_options_start_over(tmp_path, monkeypatch):
    for index in range(12):
        _png(tmp_path / "in" / f"{index:02d}.png", index, size=12)
    fake = _Counting()
    fake.info = {"model_file": None}
    fake.runtime = "fake"

    def failing(paths, **settings):
        for count, row in enumerate(batch.predict_rows(fake, paths, **settings)):
            if count == 10:
                raise RuntimeError("the machine went away")
            yield row

    fake.predict_files = failing
    out = tmp_path / "out.csv"
    with pytest.raises(RuntimeError, match="went away"):
        predict_to_file(None, [tmp_path / "in"], out=out, classifier=fake, chunk_size=5,
                        progress="none")
    assert not out.exists() and len(list((tmp_path / "out.csv.partial").glob("part-*"))) == 2
    fake.predict_files = lambda paths, **settings: batch.predict_rows(fake, paths, **settings)
    result = predict_to_file(None, [tmp_path / "in"], out=out, classifier=fake, top_k=1,
                             chunk_size=5, progress="none")
    assert result.started_over == "the options changed (top_k): starting over"
    assert result.skipped == 0 and result.classified == 12
    assert list(read_table(out).columns) == ["path", "label_1", "probability_1", "error",
                                             "detail"]
    assert not (tmp_path / "out.csv.partial").exists()


def test_progress_lines_prints_lines_and_the_old_names_still_work(tmp_path, capsys):
    for index in range(6):
        _png(tmp_path / "in" / f"{index}.png", index, size=12)
    fake = _Counting()
    fake.info, fake.runtime = {"model_file": None}, "fake"
    fake.predict_files = lambda paths, **settings: batch.predict_rows(fake, paths, **settings)
    new = predict_to_file(None, [tmp_path / "in"], out=tmp_path / "new.csv", classifier=fake,
                          top_k=1, progress="lines")  # wherever it runs, even in a terminal
    assert capsys.readouterr().err.splitlines()[-1].startswith("predict: done, 6/6 in ")
    with pytest.warns(DeprecationWarning) as caught:
        old = predict_to_file(None, [tmp_path / "in"], out=tmp_path / "old.csv",
                              classifier=fake, top_k=1, backend="keras", progress=False)
    assert sorted(str(w.message)[:24] for w in caught) == ["predict_to_file: backend",
                                                           "progress=False is deprec"]
    assert capsys.readouterr().err == "" and old.rows == new.rows == 6
    pd.testing.assert_frame_equal(read_table(old.out), read_table(new.out))

    def explain(file, tta):
        return type("Map", (), {"save": lambda self, target: target.write_bytes(b"png")})()

    fake.explain = explain
    with pytest.warns(DeprecationWarning, match="explain_files: out_dir= .* use out="):
        assert batch.explain_files(fake, list_files([tmp_path / "in"]),
                                   out_dir=tmp_path / "maps") == 6
    assert sorted(path.name for path in (tmp_path / "maps").iterdir()) == \
        [f"{index}.png" for index in range(6)]


def test_a_worker_that_cannot_read_says_so_in_one_line(tmp_path):
    assert batch.check_worker(str(tmp_path / "norun"), None, str(tmp_path)).startswith(
        "cannot read the run")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")
    assert batch.check_worker(str(tmp_path / "run"), str(tmp_path / "gone.jpg"),
                              str(tmp_path)) == f"cannot read the image {tmp_path / 'gone.jpg'}"
    assert batch.check_worker(str(tmp_path / "run"), None, str(tmp_path)) is None


# --- a real run ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch")
    run_dir = tiny_data.write_run(root)
    photos = root / "photos"
    shutil.copytree(root / "data", photos / "digits")
    _messy_folder(photos / "messy")
    return {"run": run_dir, "photos": photos}


@pytest.fixture(scope="module")
def classifier(run):
    from workbench.deploy.predict import Classifier

    return Classifier.load(run["run"])


@pytest.fixture(scope="module")
def whole(run, classifier, tmp_path_factory):
    """An uninterrupted run of the job, CSV."""
    out = tmp_path_factory.mktemp("whole") / "all.csv"
    result = predict_to_file(run["run"], [run["photos"]], out=out, classifier=classifier,
                             top_k=3, progress="none")
    return result, read_table(out)


@pytest.mark.slow
def test_the_table_has_a_row_per_file_with_the_classifiers_answer(run, classifier, whole):
    result, table = whole
    listed = [source.path for source in list_files([run["photos"]])]
    assert table["path"].tolist() == listed  # every file once, in the order listed
    assert result.rows == len(listed) and result.classified == len(listed)
    assert list(table.columns) == ["path", "label_1", "probability_1", "label_2",
                                   "probability_2", "label_3", "probability_3", "error",
                                   "detail"]
    errors = dict(zip(table.path, table.error))
    assert errors["messy/b/broken.jpg"] == "truncated or corrupt"
    assert errors["messy/b/empty.png"] == "zero bytes"
    assert errors["messy/a/.secret.png"] == "hidden or system file"
    assert errors["messy/notes.txt"] == "not an image"
    assert result.errors == 4 and table[table.error != ""].label_1.isna().all()
    for _, row in table[table.error == ""].sample(6, random_state=0).iterrows():
        expected = classifier.predict(run["photos"] / row.path, top_k=3)  # calibrated
        assert [row.label_1, row.label_2, row.label_3] == [e["label"] for e in expected]
        assert row.probability_1 == pytest.approx(expected[0]["probability"], rel=1e-5)


@pytest.mark.slow
def test_parquet_holds_the_same_rows_and_the_features(run, classifier, whole, tmp_path):
    out = tmp_path / "all.parquet"
    result = predict_to_file(run["run"], [run["photos"]], out=out, classifier=classifier,
                             top_k=3, features="columns", progress="none")
    table = pd.read_parquet(out)
    csv = whole[1]
    assert table.path.tolist() == csv.path.tolist() and result.features is None
    ok = (table.error == "").to_numpy()
    assert table.label_1[ok].tolist() == csv.label_1[ok].tolist()  # Keras agrees with the export
    np.testing.assert_allclose(table.probability_1[ok], csv.probability_1[ok], atol=1e-3)
    vectors = np.stack(table.features)
    assert vectors.shape[0] == len(table) and vectors.shape[1] > 8
    assert np.isnan(vectors[~ok]).all() and np.isfinite(vectors[ok]).all()
    assert len({vector.tobytes() for vector in vectors[ok]}) > 10  # one per image, not a copy
    npy = tmp_path / "features.npy"
    predict_to_file(run["run"], [run["photos"]], out=tmp_path / "f.csv", classifier=classifier,
                    top_k=3, features=npy, progress="none")
    np.testing.assert_allclose(np.load(npy), vectors, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="features='columns' needs a .parquet out"):
        predict_to_file(run["run"], [run["photos"]], out=tmp_path / "x.csv",
                        classifier=classifier, features="columns")


_SLOW_JOB = textwrap.dedent("""
    import sys, time
    from workbench.deploy import batch, files
    load = files.load_array
    def slow(*args, **kwargs):  # so that the kill lands in the middle of the job
        time.sleep(0.03)
        return load(*args, **kwargs)
    files.load_array = slow
    batch.predict_to_file(sys.argv[1], [sys.argv[2]], out=sys.argv[3], top_k=3, chunk_size=8,
                          threads=1, batch_size=4, progress="none")
""")


@pytest.mark.slow
def test_killed_with_sigkill_and_rerun_equals_an_uninterrupted_run(run, whole, tmp_path):
    out = tmp_path / "resumed.csv"
    partial = tmp_path / "resumed.csv.partial"
    child = subprocess.Popen([sys.executable, "-c", _SLOW_JOB, str(run["run"]),
                              str(run["photos"]), str(out)])
    deadline = time.monotonic() + 120
    while len(list(partial.glob("part-*.parquet"))) < 3 and child.poll() is None and \
            time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL and not out.exists()  # killed mid-job
    done_before = len(pd.concat(pd.read_parquet(p) for p in partial.glob("part-*.parquet")))
    assert 24 <= done_before < len(whole[1])
    result = predict_to_file(run["run"], [run["photos"]], out=out, top_k=3, progress="none")
    assert result.started_over is None and result.skipped == done_before
    assert result.classified == len(whole[1]) - done_before
    pd.testing.assert_frame_equal(read_table(out), whole[1], check_exact=False, rtol=1e-6)
    assert not partial.exists()


@pytest.mark.slow
def test_a_dask_local_cluster_agrees_row_for_row_with_one_process(run, whole, tmp_path):
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        out = tmp_path / "cluster.csv"
        result = predict_to_file(run["run"], [run["photos"]], out=out, top_k=3, chunk_size=16,
                                 cluster=cluster.scheduler_address, progress="none")
    assert result.classified == len(whole[1])
    pd.testing.assert_frame_equal(read_table(out), whole[1], check_exact=False, rtol=1e-6)


@pytest.mark.slow
def test_the_cli_writes_the_table_and_prints_a_folder_without_out(run, tmp_path, capsys):
    out = tmp_path / "cli.parquet"
    assert main(["predict", str(run["run"]), str(run["photos"] / "messy"), "--out", str(out),
                 "--top-k", "2"]) == 0
    printed = capsys.readouterr().out
    assert f"to {out}" in printed and "images/s" in printed and "(4 errors)" in printed
    assert len(pd.read_parquet(out)) == 8
    status = main(["predict", str(run["run"]), str(run["photos"] / "messy" / "b"), "--top-k",
                   "1"])
    captured = capsys.readouterr()
    assert status == 1  # two files could not be used
    assert captured.out.startswith("three.png\n  1. ")
    assert "empty.png: error: zero bytes" in captured.err


@pytest.mark.slow
def test_explain_with_a_folder_writes_an_overlay_per_usable_file_mirroring_it(run, tmp_path,
                                                                              capsys):
    messy, overlays = run["photos"] / "messy", tmp_path / "where"
    assert main(["predict", str(run["run"]), str(messy), "--out", str(tmp_path / "t.csv"),
                 "--explain", str(overlays)]) == 0
    assert "Where it looked: 4 overlays" in capsys.readouterr().out
    written = sorted(path.relative_to(overlays).as_posix() for path in overlays.rglob("*.png"))
    assert written == ["a/deep/er/two.png", "a/one.png", "b/three.png", "top.png"]
    assert Image.open(overlays / "a" / "one.png").size[0] > 16  # the photo beside its map
    # without --out, the rows are printed and the same overlays written; --raw is honoured
    raw = tmp_path / "raw"
    assert main(["predict", str(run["run"]), str(messy / "a"), "--raw", "--json",
                 "--explain", str(raw)]) == 1  # a/.secret.png is a hidden file: a row in error
    assert sorted(p.relative_to(raw).as_posix() for p in raw.rglob("*.png")) == \
        ["deep/er/two.png", "one.png"]
