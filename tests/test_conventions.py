"""One library: the same names for the same things (docs/architecture.md), and the old names
still working for one release, each with a DeprecationWarning at the caller's line.

The calls that need a trained run are tested beside their kind (test_predict, test_evaluate,
test_serve, test_batch_predict, test_sweep); these need none.
"""

import numpy as np
import pytest

import tiny_data
from workbench import _progress
from workbench._checks import UsageError, deprecated, renamed_arguments
from workbench._progress import progress, progress_argument
from workbench.cli import build_parser, main
from workbench.data import sample
from workbench.data.scan import scan
from workbench.data.split import prepare, split
from workbench.data.splitdir import load_splits
from workbench.deploy.predict import Classifier
from workbench.evaluation import EvaluationReport

OLD = "will be removed in the next release"


# --- the helpers ---------------------------------------------------------------------------------

@renamed_arguments(old_place="place")
def _place(place, *, other=0):
    return place, other


def test_an_old_keyword_name_warns_at_the_callers_line_and_still_works():
    with pytest.warns(DeprecationWarning, match="_place: old_place= is deprecated .* use place=") \
            as caught:
        assert _place(old_place="here", other=1) == ("here", 1)
    assert caught[0].filename == __file__  # the user's line, not the helper's
    assert _place("here") == ("here", 0)
    with pytest.raises(UsageError, match="give place .* or old_place, not both"):
        _place(place="a", old_place="b")


def test_a_deprecation_names_the_first_line_outside_the_package(digits):
    with pytest.warns(DeprecationWarning) as caught:
        deprecated("the old way " + OLD)
    assert caught[0].filename == __file__
    with pytest.warns(DeprecationWarning, match="progress=True") as caught:
        scan(digits, progress=True, workers=1)  # checked two calls down, in _progress
    assert caught[0].filename == __file__


def test_progress_is_a_checked_string_and_the_old_booleans_map_to_it():
    assert [progress_argument(value) for value in ("auto", "lines", "none")] == \
        ["auto", "lines", "none"]
    with pytest.warns(DeprecationWarning, match="progress=True is deprecated .*progress='auto'"):
        assert progress_argument(True) == "auto"
    with pytest.warns(DeprecationWarning, match="progress=False is deprecated .*progress='none'"):
        assert progress_argument(False) == "none"
    with pytest.raises(UsageError, match="progress must be one of 'auto', 'lines', 'none', "
                                         "received: 'plot'"):
        progress_argument("plot")  # only where a live plot exists (finetune)
    assert progress_argument("plot", choices=("auto", "lines", "plot", "none")) == "plot"
    with pytest.raises(UsageError, match="received: 1"):
        progress_argument(1)


def test_progress_modes_lines_and_none_whatever_the_place(monkeypatch, capsys):
    monkeypatch.setattr(_progress, "watched_notebook", lambda: True)  # "auto" would draw a widget
    items = [1, 2, 3]
    assert progress(items, desc="x", mode="none") is items
    assert list(progress(items, desc="x", mode="lines")) == items
    assert capsys.readouterr().err.splitlines() == ["x: done, 3/3 in 0.0s"]
    monkeypatch.setenv("WORKBENCH_PROGRESS", "off")
    assert progress(items, desc="x", mode="lines") is items  # off is off
    assert _progress.loop_progress("plot") == "auto" and _progress.loop_progress("none") == "none"


# --- split, scan, sample data --------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return tiny_data.write_digits(tmp_path_factory.mktemp("conventions") / "data", per_class=3,
                                  size=8)


def test_prepare_takes_data_and_out_and_its_old_names_still_work(digits, tmp_path, capsys):
    new = prepare(digits, tmp_path / "new", counts=(1, 1, 1), progress="none")
    assert capsys.readouterr().err == ""  # "none": not a line
    with pytest.warns(DeprecationWarning) as caught:
        old = prepare(data_dir=digits, out_dir=tmp_path / "old", counts=(1, 1, 1),
                      progress=False)
    assert {w.filename for w in caught} == {__file__}
    assert sorted(str(w.message).split(":")[0] for w in caught) == \
        ["prepare", "prepare", "progress=False is deprecated and will be removed in the next "
                               "release, use progress='none'"]
    assert old.table.equals(new.table)
    assert (tmp_path / "old" / "splits.csv").read_bytes() == \
        (tmp_path / "new" / "splits.csv").read_bytes()
    prepare(digits, tmp_path / "lines", counts=(1, 1, 1), progress="lines")
    assert capsys.readouterr().err.startswith("scan: done, 30/30 in ")
    with pytest.raises(ValueError, match="out must not be inside data"):
        prepare(digits, digits / "splits", progress="none")
    with pytest.raises(UsageError, match="progress must be one of"):
        prepare(digits, tmp_path / "x", progress="yes")


def test_split_write_and_load_splits_keep_their_old_spellings(digits, tmp_path):
    result = split(scan(digits, progress="none"), counts=(1, 1, 1))
    with pytest.warns(DeprecationWarning, match="SplitResult.write: out_dir= .* use out="):
        written = result.write(out_dir=tmp_path / "splits", data_root=digits)
    assert written == tmp_path / "splits"
    with pytest.warns(DeprecationWarning, match="load_splits: splits_dir= .* use splits="):
        old = load_splits(splits_dir=written, image_size=8, progress="none")
    new = load_splits(written, image_size=8, progress="none")
    np.testing.assert_array_equal(old.images["train"], new.images["train"])


def test_sample_data_writes_to_out(tmp_path):
    with pytest.warns(DeprecationWarning) as caught:
        summary = sample.write_source(out_dir=tmp_path, per_class=1, image_size=8,
                                      characters="AB", progress=False)
    assert summary["images"] == 2 and (tmp_path / "source" / "A").is_dir()
    assert sorted(str(w.message)[:20] for w in caught) == ["progress=False is de",
                                                           "write_source: out_di"]


# --- predict: one image, or a batch --------------------------------------------------------------

class _Runtime:
    """A stand-in for an exported model: three classes, the mean of each colour channel."""

    runtime = "onnx"
    output_shape = (None, 3)
    input_shape = (None, 8, 8, 3)

    def __call__(self, pixels):
        means = pixels.mean(axis=(1, 2)) / 255.0 + 1e-6
        return (means / means.sum(axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def colours():
    images = [np.zeros((8, 8, 3), np.uint8) for _ in range(3)]
    for channel, image in enumerate(images):
        image[..., :] = 10
        image[..., channel] = 200
    return Classifier(_Runtime(), ["red", "green", "blue"], image_size=8), images


def test_predict_is_one_image_and_predict_batch_a_list(colours):
    classifier, images = colours
    top = classifier.predict(images[1], top_k=2)
    assert [entry["label"] for entry in top] == ["green", "red"]  # a tie: in label order
    assert top[0]["probability"] == pytest.approx(200 / 220, rel=1e-4)
    batch = classifier.predict_batch(images, top_k=1, batch_size=2)
    assert [row[0]["label"] for row in batch] == ["red", "green", "blue"]
    assert batch[1] == classifier.predict(images[1], top_k=1)
    with pytest.raises(TypeError, match="images must be a list of images .* received: ndarray"):
        classifier.predict_batch(images[0])
    with pytest.raises(ValueError, match="at least one image"):
        classifier.predict_batch([])


def test_a_list_to_predict_and_the_old_runtime_names_still_work(colours, tmp_path):
    classifier, images = colours
    with pytest.warns(DeprecationWarning, match="use Classifier.predict_batch") as caught:
        assert classifier.predict(images, top_k=1) == classifier.predict_batch(images, top_k=1)
    assert caught[0].filename == __file__
    with pytest.warns(DeprecationWarning, match="batch_size"):
        assert classifier.predict(images[0], batch_size=4) == classifier.predict(images[0])
    assert classifier.runtime == "onnx" and classifier.info["runtime"] == "onnx"
    with pytest.warns(DeprecationWarning, match="use Classifier.runtime"):
        assert classifier.backend == "onnx"
    with pytest.warns(DeprecationWarning, match="Classifier.load: backend= .* use runtime="), \
            pytest.raises(UsageError, match="runtime must be one of .* received: 'tflite'"):
        Classifier.load(tmp_path, backend="tflite")  # the old name reaches the new check


def test_an_evaluation_report_says_runtime_and_saves_to_out(tmp_path):
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    report = EvaluationReport.from_probabilities(probabilities, [0, 1, 1], ["a", "b"])
    report.runtime = "litert"
    assert report.summary()["runtime"] == "litert" and "run by litert" in report.format()
    assert report.summary()["backend"] == "litert"  # the old key, for one release
    with pytest.warns(DeprecationWarning, match="use EvaluationReport.runtime"):
        assert report.backend == "litert"
    with pytest.warns(DeprecationWarning, match="EvaluationReport.save: directory= .* use out="):
        assert report.save(directory=tmp_path / "old") == tmp_path / "old"
    assert (tmp_path / "old" / "summary.json").read_text() == \
        (report.save(tmp_path / "new") / "summary.json").read_text()


# --- the command line ----------------------------------------------------------------------------

def _parse(argv, capsys):
    args = build_parser().parse_args(argv)
    return args, capsys.readouterr().err


def test_cli_new_flags_and_old_ones_as_hidden_aliases_that_warn(capsys):
    args, err = _parse(["train", "--splits", "s", "--run-dir", "r"], capsys)
    assert args.run_dir == "r" and err == ""
    args, err = _parse(["train", "--splits", "s", "--out", "r"], capsys)
    assert args.run_dir == "r"
    assert err == ("warning: --out is deprecated and will be removed in the next release, use "
                   "--run-dir\n")
    for verb in (["evaluate", "RUN"], ["predict", "RUN", "a.png"]):
        assert _parse(verb, capsys)[0].runtime == "auto"
        args, err = _parse([*verb, "--runtime", "onnx"], capsys)
        assert args.runtime == "onnx" and err == ""
        args, err = _parse([*verb, "--backend", "keras"], capsys)
        assert args.runtime == "keras" and "--backend is deprecated" in err and "--runtime" in err
    for verb in ("train", "evaluate", "predict"):
        assert main([verb, "--help"]) == 0
        shown = capsys.readouterr().out
        assert "--backend" not in shown and ("--run-dir" in shown or "--runtime" in shown)
        assert "--out RUN_DIR" not in shown


def test_cli_refuses_both_names_and_a_missing_run_dir(capsys):
    assert main(["train", "--splits", "s", "--run-dir", "a", "--out", "b"]) == 2
    assert "argument --out: not allowed with argument --run-dir" in capsys.readouterr().err
    assert main(["train", "--splits", "s"]) == 2
    assert "--run-dir is required" in capsys.readouterr().err
    assert main(["evaluate", "RUN", "--runtime", "tflite"]) == 2
    assert "argument --runtime: invalid choice: 'tflite'" in capsys.readouterr().err
