"""Classifying new images: every input type, the training preprocessing, bad input, the CLI."""

import concurrent.futures
import io
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import tiny_data
from workbench.cli import main
from workbench.data.images import ImageRejected, load_array
from workbench.evaluation import evaluate
from workbench.deploy.predict import Classifier
from workbench.deploy.runtime import RUNTIMES


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    return {"run": tiny_data.write_run(root), "data": root / "data"}


@pytest.fixture(scope="module")
def classifier(run):
    return Classifier.load(run["run"])


def test_every_input_type_gives_the_same_answer(run, classifier):
    path = next((run["data"] / "3").glob("*.png"))
    expected = classifier.predict(path)
    assert len(expected) == 5 and [e["label"] for e in expected] != []
    probabilities = [e["probability"] for e in expected]
    assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1.0001
    image = Image.open(path)
    for other in (str(path), path.read_bytes(), io.BytesIO(path.read_bytes()), image,
                  np.asarray(image.convert("RGB"))):
        assert classifier.predict(other) == expected
    for top in classifier.predict_batch([path, path]):  # same labels, floats to the last bits
        assert [e["label"] for e in top] == [e["label"] for e in expected]
        assert [e["probability"] for e in top] == pytest.approx(probabilities, rel=1e-5)


def test_backend_the_old_name_of_runtime_still_loads_for_one_release(run, classifier):
    path = next((run["data"] / "3").glob("*.png"))
    with pytest.warns(DeprecationWarning, match="Classifier.load: backend= .* use runtime="):
        old = Classifier.load(run["run"], backend="keras")
    assert old.runtime == "keras" and old.info["runtime"] == old.info["backend"] == "keras"
    assert [e["label"] for e in old.predict(path)] == [e["label"] for e in classifier.predict(path)]


def test_predictions_match_the_evaluation_of_the_same_images(run, classifier):
    report = evaluate(run["run"], split="test")
    table = pd.read_csv(run["run"] / "evaluation" / "test" / "predictions.csv")
    assert len(table) == len(report.predictions)
    for _, row in table.head(5).iterrows():
        top = classifier.predict(run["data"] / row["path"], top_k=1)[0]
        assert str(top["label"]) == str(row["label_1"])
        assert top["probability"] == pytest.approx(row["probability_1"], rel=1e-4)


def test_test_time_augmentation_matches_the_evaluation_with_it(run, classifier):
    table = evaluate(run["run"], split="test", save=False, tta=True).predictions
    path = run["data"] / table["path"][0]
    top = classifier.predict(path, top_k=1, tta=True)[0]
    assert str(top["label"]) == str(table["label_1"][0])
    assert top["probability"] == pytest.approx(table["probability_1"][0], rel=1e-4)
    assert top != classifier.predict(path, top_k=1)[0]  # the mirror image counted
    with pytest.raises(ValueError, match="tta must be True or False"):
        classifier.predict(path, tta=1)


def test_top_k_is_clipped_to_the_classes(run, classifier):
    path = next((run["data"] / "0").glob("*.png"))
    assert len(classifier.predict(path, top_k=50)) == 10


def test_top_rows_rank_each_row_best_first_with_ties_in_label_order(classifier):
    rows = np.random.default_rng(3).dirichlet(np.ones(10), 6).astype(np.float32)
    rows[2] = 0.1  # all tied: label order
    rows[4, [7, 2, 5]] = 0.3  # a tie at the top
    ranked = classifier.top_rows(rows, 4)
    assert len(ranked) == 6
    for row, top in zip(rows, ranked, strict=True):
        expected = sorted(range(10), key=lambda i: (-row[i], i))[:4]
        assert [entry["label"] for entry in top] == [classifier.labels[i] for i in expected]
        assert [entry["probability"] for entry in top] == [float(row[i]) for i in expected]
        assert all(type(entry["probability"]) is float for entry in top)
        assert classifier.top(row, 4) == top
    assert [e["label"] for e in ranked[4][:3]] == [classifier.labels[i] for i in (2, 5, 7)]
    assert len(classifier.top_rows(rows, 50)[0]) == 10


def test_garbage_is_rejected_not_predicted(classifier, tmp_path):
    assert classifier.runtime in RUNTIMES  # the fast path checks its input the same way
    with pytest.raises(ImageRejected, match="not an image"):
        classifier.predict(b"this is not an image")
    truncated = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(truncated, "JPEG")
    with pytest.raises(ImageRejected, match="truncated or corrupt"):
        classifier.predict(truncated.getvalue()[: len(truncated.getvalue()) // 2])
    with pytest.raises(TypeError, match="source must be"):
        classifier.predict_batch([3.5])
    with pytest.raises(TypeError, match="source must be"):
        classifier.predict(3.5)
    with pytest.raises(ValueError, match="top_k must be >= 1, received: 0"):
        classifier.predict(b"x", top_k=0)
    whole = truncated.getvalue()
    with pytest.raises(ImageRejected, match="64x64 exceeds max_pixels=4000"):  # a server's limit
        classifier.predict(whole, max_pixels=4000)
    assert len(classifier.predict(whole, max_pixels=4096)) == 5


def test_cli_prints_a_table_or_json_lines_and_survives_a_bad_file(run, tmp_path, capsys):
    path = str(next((run["data"] / "5").glob("*.png")))
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    assert main(["predict", str(run["run"]), path, "--top-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == path and lines[1].lstrip().startswith("1. ") and len(lines) == 4
    assert main(["predict", str(run["run"]), path, str(bad), "--json"]) == 1
    first, second = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert first["image"] == path and len(first["predictions"]) == 5
    assert second["image"] == str(bad) and "not an image" in second["error"]


# --- the fast path: LiteRT or ONNX Runtime -------------------------------------------------------

def _by_label(top):
    return {entry["label"]: entry["probability"] for entry in top}


def test_the_fast_path_agrees_with_keras(run, classifier):
    keras_classifier = Classifier.load(run["run"], runtime="keras")
    assert classifier.runtime in RUNTIMES and keras_classifier.runtime == "keras"
    assert (run["run"] / "export" / "model.tflite").is_file()  # exported on first use
    paths = sorted(run["data"].glob("*/*.png"))[::7]
    fast = classifier.predict_batch(paths, top_k=10)
    slow = keras_classifier.predict_batch(paths, top_k=10)
    for a, b in zip(fast, slow):
        assert a[0]["label"] == b[0]["label"]
        expected = _by_label(b)
        assert all(abs(p - expected[label]) <= 1e-3 for label, p in _by_label(a).items())
    assert classifier.info["runtime"] == classifier.runtime
    assert classifier.info["runtime_choice"]["chosen"] == classifier.runtime
    assert classifier.info["backbone"] == "lenet"
    assert classifier.info["labels"] == classifier.labels and classifier.info["image_size"] == 16
    assert classifier.info["metrics"]["test_images"] == 20
    json.dumps(classifier.info)  # the web service serves it as is


def test_a_tflite_or_keras_file_loads_with_its_labels(run, classifier, tmp_path):
    image = next((run["data"] / "7").glob("*.png"))
    expected = Classifier.load(run["run"], runtime="litert").predict(image)
    tflite = run["run"] / "export" / "model.tflite"
    assert Classifier.load(tflite).predict(image) == expected  # labels from the sidecar
    onnx = Classifier.load(run["run"] / "export" / "model.onnx")
    assert onnx.runtime == "onnx" and onnx.labels == classifier.labels
    bare = tmp_path / "bare.tflite"
    bare.write_bytes(tflite.read_bytes())
    with pytest.raises(ValueError, match="labels are needed for bare.tflite"):
        Classifier.load(bare)
    loaded = Classifier.load(bare, labels=classifier.labels, image_size=16)
    assert loaded.runtime == "litert" and loaded.temperature == 1.0  # no sidecar: uncalibrated
    assert loaded.predict(image) == Classifier.load(tflite).predict(image, calibrated=False)
    from_keras = Classifier.load(run["run"] / "best.keras")  # labels from the run's config
    assert from_keras.runtime == "keras" and from_keras.labels == classifier.labels
    assert [e["label"] for e in from_keras.predict(image)][:1] == [expected[0]["label"]]
    with pytest.raises(ValueError, match="runtime must be 'auto' or 'litert'"):
        Classifier.load(tflite, runtime="keras")
    with pytest.raises(ValueError, match="runtime must be one of"):
        Classifier.load(run["run"], runtime="tflite")


def test_predict_from_the_cli_imports_no_tensorflow(run, classifier):
    assert classifier.runtime in RUNTIMES  # the export exists
    path = str(next((run["data"] / "2").glob("*.png")))
    script = ("import json, sys\nfrom workbench.cli import main\n"
              f"code = main(['predict', {str(run['run'])!r}, {path!r}, '--json'])\n"
              "heavy = [m for m in ('tensorflow', 'keras', 'jax') if m in sys.modules]\n"
              "print(json.dumps({'code': code, 'heavy': heavy}))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    first, last = done.stdout.splitlines()[0], done.stdout.splitlines()[-1]
    assert json.loads(first)["predictions"] == classifier.predict(path)
    assert json.loads(last) == {"code": 0, "heavy": []}


def test_concurrent_predictions_give_the_same_answers(run, classifier):
    paths = sorted(run["data"].glob("*/*.png"))[:16]
    expected = [classifier.predict(path) for path in paths]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(classifier.predict, paths * 3))
    assert answers == expected * 3


def test_a_failed_export_falls_back_to_keras_with_a_warning(run, monkeypatch):
    from workbench.deploy import export as exporting

    def fail(*args, **kwargs):
        raise exporting.ExportError("the litert converter cannot handle this model")

    monkeypatch.setattr(exporting, "find_export", lambda *args, **kwargs: None)
    monkeypatch.setattr(exporting, "export", fail)
    monkeypatch.setattr(exporting, "export_fast", fail)
    with pytest.warns(RuntimeWarning, match="cannot handle this model.*using the Keras model"):
        fallback = Classifier.load(run["run"])
    assert fallback.runtime == "keras"
    with pytest.raises(exporting.ExportError, match="cannot handle"):
        Classifier.load(run["run"], runtime="litert")


def test_a_run_without_a_model_fails_at_once_in_one_line(run, tmp_path):
    import shutil

    bare = tmp_path / "unfinished"  # a run killed before it saved a model: config, no .keras
    shutil.copytree(run["run"], bare, ignore=shutil.ignore_patterns("*.keras", "export"))
    image = str(next((run["data"] / "1").glob("*.png")))
    script = ("import json, sys\nfrom workbench.cli import main\n"
              f"codes = [main(['predict', {str(bare)!r}, {image!r}]),\n"
              f"         main(['serve', {str(bare)!r}, '--port', '0'])]\n"
              "heavy = [m for m in ('tensorflow', 'keras', 'jax') if m in sys.modules]\n"
              "print(json.dumps({'codes': codes, 'heavy': heavy}))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    # no export attempted and no Keras imported to find out (that took 17-20 s)
    assert json.loads(done.stdout.splitlines()[-1]) == {"codes": [2, 2], "heavy": []}
    errors = done.stderr.splitlines()
    assert len(errors) == 2 and all(line.startswith("error: RUN_DIR holds no finished model")
                                    for line in errors), done.stderr
    assert not (bare / "export").exists()


# --- the choice of runtime -----------------------------------------------------------------------

def test_the_chosen_runtime_agrees_with_the_other_and_the_sidecar_records_it(run, classifier):
    from workbench.deploy import runtime
    from workbench.deploy.export import ONNX_MARGIN, WIN_TURNS, read_sidecar

    record = read_sidecar(run["run"] / "export" / "model.tflite")["runtime"]
    assert record["chosen"] == classifier.runtime
    assert {record["chosen"], record["fallback"]} == set(RUNTIMES)
    assert set(record["p50_ms"]) == set(RUNTIMES) and min(record["p50_ms"].values()) > 0
    assert record["machine"] == runtime.machine() and record["threads"] == 2
    faster = min(record["p50_ms"], key=record["p50_ms"].get)
    assert record["chosen"] == faster or record["p50_ms"]["onnx"] > \
        record["p50_ms"]["litert"] * (1 - ONNX_MARGIN) or \
        record["turns_faster"]["onnx"] < WIN_TURNS * record["turns"]  # LiteRT keeps near-ties
    assert 2 <= record["turns"] and 0 <= record["turns_faster"]["onnx"] <= record["turns"]
    litert = Classifier.load(run["run"], runtime="litert")
    onnx = Classifier.load(run["run"], runtime="onnx")
    assert (litert.runtime, onnx.runtime) == ("litert", "onnx")
    pixels = np.stack([np.asarray(Image.open(path).convert("RGB"))
                       for path in sorted(run["data"].glob("*/*.png"))[::5]]).astype(np.float32)
    np.testing.assert_allclose(litert.model(pixels), onnx.model(pixels), atol=1e-5)
    paths = sorted(run["data"].glob("*/*.png"))[:6]
    for a, b in zip(litert.predict_batch(paths, top_k=10), onnx.predict_batch(paths, top_k=10)):
        assert a[0]["label"] == b[0]["label"]
        assert all(abs(p - _by_label(b)[label]) <= 1e-5 for label, p in _by_label(a).items())


def _damaged_copy(run, tmp_path, broken: str, chosen: str):
    """A copy of the run whose sidecar chose ``chosen`` and whose ``broken`` export is zeros."""
    import shutil

    from workbench.deploy.export import export_path, read_sidecar, sidecar_path

    copy = tmp_path / f"run-{broken}"
    shutil.copytree(run["run"], copy)
    tflite = copy / "export" / "model.tflite"
    side = read_sidecar(tflite)
    others = [name for name in RUNTIMES if name != chosen]
    side["runtime"] = {**side["runtime"], "chosen": chosen, "fallback": others[0]}
    sidecar_path(tflite).write_text(json.dumps(side))
    target = export_path(copy, format=broken)
    target.write_bytes(bytes(target.stat().st_size))  # same size: the sidecar still vouches
    return copy


@pytest.mark.parametrize("broken", RUNTIMES)
def test_the_fallback_runs_when_the_chosen_runtime_fails_to_load(run, tmp_path, broken):
    copy = _damaged_copy(run, tmp_path, broken, chosen=broken)
    other = next(name for name in RUNTIMES if name != broken)
    with pytest.warns(RuntimeWarning, match=f"the {broken} export of .* does not load.*"
                                            f"using {other} instead"):
        fallback = Classifier.load(copy)
    assert fallback.runtime == other
    path = next((run["data"] / "4").glob("*.png"))
    expected = Classifier.load(run["run"], runtime=other).predict(path)
    assert fallback.predict(path) == expected
    from workbench.deploy.export import ExportError

    with pytest.raises(ExportError, match=f"no exported model of .* loads \\({broken}: "):
        Classifier.load(copy, runtime=broken)  # asked for by name: no silent substitute


def test_both_runtimes_broken_falls_back_to_keras(run, tmp_path):
    from workbench.deploy.export import export_path

    copy = _damaged_copy(run, tmp_path, "onnx", chosen="onnx")
    tflite = export_path(copy, format="litert")
    tflite.write_bytes(bytes(tflite.stat().st_size))
    with pytest.warns(RuntimeWarning, match="no LiteRT or ONNX model .* using the Keras model"):
        fallback = Classifier.load(copy)
    assert fallback.runtime == "keras"


def test_another_cpu_times_the_runtimes_again(run, monkeypatch):
    from workbench.deploy import runtime
    from workbench.deploy.export import load_fast, read_sidecar

    record = read_sidecar(run["run"] / "export" / "model.tflite")["runtime"]
    other = record["fallback"]
    timed = []

    def fake_timing(models, pixels, **kwargs):  # the other runtime wins every turn
        timed.append(sorted(models))
        return {name: [[1.0, 1.0]] * 4 if name == other else [[9.0, 9.0]] * 4
                for name in models}

    monkeypatch.setattr(runtime, "time_turns", fake_timing)
    assert load_fast(run["run"]).runtime == record["chosen"]  # the CPU that chose: no timing
    assert timed == []
    monkeypatch.setattr(runtime, "machine", lambda: "another CPU, 64 cores")
    assert load_fast(run["run"]).runtime == other  # here the other one is faster
    assert timed == [sorted(RUNTIMES)]
    assert read_sidecar(run["run"] / "export" / "model.tflite")["runtime"] == record  # unwritten


def test_a_decoded_array_of_the_input_size_goes_straight_to_the_model(run, classifier,
                                                                      monkeypatch):
    from workbench.deploy import predict as predicting

    path = next((run["data"] / "8").glob("*.png"))
    pixels = np.asarray(Image.open(path).convert("RGB"))
    expected = classifier.predict(pixels)
    decoded = []
    monkeypatch.setattr(predicting, "load_array",
                        lambda *args, **kwargs: decoded.append(args) or load_array(*args,
                                                                                   **kwargs))
    assert classifier.predict(pixels) == expected and decoded == []
    assert classifier.predict(path) == expected and len(decoded) == 1
    small = pixels[:8, :8]  # another size is resized as before
    assert classifier.predict(small) == classifier.predict(Image.fromarray(small))


def test_probabilities_are_calibrated_by_the_runs_temperature(run, classifier):
    from workbench.calibration import apply_temperature
    from workbench.deploy.export import find_export, read_sidecar
    from workbench.models import load_model
    from workbench.runs import RunDir

    temperature = RunDir(run["run"]).temperature("best")
    assert temperature != 1.0  # the tiny run was calibrated when it finished
    keras_classifier = Classifier.load(run["run"], runtime="keras")
    assert keras_classifier.temperature == classifier.temperature == temperature
    assert keras_classifier.info["temperature"] == temperature
    path = next((run["data"] / "5").glob("*.png"))
    raw = keras_classifier.predict(path, top_k=10, calibrated=False)
    shown = keras_classifier.predict(path, top_k=10)
    assert [e["label"] for e in raw] == [e["label"] for e in shown]  # the same ranking
    softmax = load_model(run["run"] / "best.keras").predict(
        load_array(path, 16, "squash")[None].astype(np.float32), verbose=0)[0]
    labels = keras_classifier.labels
    assert [e["probability"] for e in raw] == pytest.approx(
        [softmax[labels.index(e["label"])] for e in raw], rel=1e-5)
    calibrated = apply_temperature(softmax[None], temperature)[0]
    assert [e["probability"] for e in shown] == pytest.approx(
        [calibrated[labels.index(e["label"])] for e in shown], rel=1e-4)
    # the export's sidecar carries it, and so does a run's model file loaded on its own
    tflite = find_export(run["run"])
    assert read_sidecar(tflite)["temperature"] == temperature
    assert Classifier.load(tflite).temperature == temperature
    assert Classifier.load(run["run"] / "best.keras").temperature == temperature
    assert Classifier.load(run["run"] / "model.keras").temperature == \
        RunDir(run["run"]).temperature("final")
    with pytest.raises(ValueError, match="calibrated must be True or False, received: 1"):
        keras_classifier.predict(path, calibrated=1)


def test_cli_raw_prints_the_uncalibrated_softmax(run, classifier, capsys):
    path = next((run["data"] / "2").glob("*.png"))
    assert main(["predict", str(run["run"]), str(path), "--json", "--top-k", "3"]) == 0
    shown = json.loads(capsys.readouterr().out.splitlines()[-1])["predictions"]
    assert main(["predict", str(run["run"]), str(path), "--json", "--top-k", "3", "--raw"]) == 0
    raw = json.loads(capsys.readouterr().out.splitlines()[-1])["predictions"]
    assert [e["label"] for e in raw] == [e["label"] for e in shown]
    assert [e["probability"] for e in raw] == pytest.approx(
        [e["probability"] for e in classifier.predict(path, top_k=3, calibrated=False)], rel=1e-4)
    assert [e["probability"] for e in shown] != pytest.approx([e["probability"] for e in raw])


def test_instruction_sets_name_the_vector_extensions_of_proc_cpuinfo(monkeypatch, tmp_path):
    from workbench.deploy import runtime

    info = tmp_path / "cpuinfo"
    info.write_text("model name\t: Some CPU\nflags\t\t: fpu sse4_2 avx avx2 fma avx512f "
                    "avx512_vnni\n")
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: real_open(
        info if path == "/proc/cpuinfo" else path, *a, **k))
    assert runtime.instruction_sets() == "AVX512-VNNI, AVX512F, AVX2, FMA, AVX"
    assert runtime.machine().startswith("Some CPU ")
    info.write_text("flags\t\t: fpu sse4_2\n")
    assert runtime.instruction_sets() == "no AVX"
    info.unlink()
    assert runtime.instruction_sets() == "unknown"
