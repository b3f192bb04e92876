"""Exporting a run: LiteRT (float32, float16, int8), SavedModel and ONNX, checked and atomic."""

import hashlib
import json
import shutil

import numpy as np
import pytest

import tiny_data
from workbench.deploy import export as exporting
from workbench.cli import main
from workbench.evaluation import split_images
from workbench.deploy.export import ExportCheckFailed, ExportError, export, find_export
from workbench.models import load_model


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    return tiny_data.write_run(root)


@pytest.fixture(scope="module")
def keras_model(run):
    return load_model(run / "best.keras")


@pytest.fixture(scope="module")
def test_images(run):
    return split_images(run, split="test").images.astype(np.float32)


def _files_in(folder):
    return sorted(p.name for p in folder.iterdir())


def test_litert_float32_agrees_and_carries_its_preprocessing(run, keras_model, test_images):
    from workbench.deploy.runtime import LiteRTModel

    result = export(run)
    assert result.path == run / "export" / "model.tflite" and result.path.is_file()
    assert result.sidecar_path == run / "export" / "model.tflite.json"
    agreement = result.agreement
    assert agreement["split"] == "test" and agreement["images"] == len(test_images) == 20
    assert agreement["top1_agreement"] >= 0.99 and agreement["max_abs_diff"] <= 1e-3
    assert agreement["passed"] is True
    side = json.loads(result.sidecar_path.read_text())
    config = json.loads((run / "config.json").read_text())
    assert side["labels"] == config["classes"] and side["image_size"] == 16
    assert side["resize_mode"] == "squash" and side["backbone"] == "lenet"
    assert side["input"]["value_range"] == [0, 255] and side["input"]["dtype"] == "float32"
    assert side["format"] == "litert" and side["quantize"] is None
    assert side["source_model"] == "best.keras"
    assert side["source_sha256"] == hashlib.sha256((run / "best.keras").read_bytes()).hexdigest()
    assert side["bytes"] == result.path.stat().st_size and side["agreement"] == agreement
    assert find_export(run) == result.path
    # checked independently of the module's own comparison
    got = LiteRTModel(result.path)(test_images[:7])
    expected = keras_model.predict_on_batch(test_images[:7])
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_quantized_exports_report_their_agreement(run, keras_model, test_images):
    from workbench.deploy.runtime import LiteRTModel

    float32 = export(run).path.stat().st_size
    # 12 of the 20 test images, evenly spaced through the split (it is ordered by class)
    chosen = test_images[np.unique(np.linspace(0, len(test_images) - 1, 12).round().astype(int))]
    expected = keras_model.predict_on_batch(chosen)
    sizes = {}
    for quantize in ("float16", "int8"):
        result = export(run, quantize=quantize, max_images=12)
        assert result.path.name == f"model_{quantize}.tflite"
        a = result.agreement
        assert a["images"] == 12 and a["required"] is None and a["passed"] is None
        # the numbers reported are the quantized model's, measured here independently
        got = LiteRTModel(result.path)(chosen)
        assert a["top1_agreement"] == pytest.approx(
            np.mean(got.argmax(-1) == expected.argmax(-1)), abs=1e-6)
        assert a["max_abs_diff"] == pytest.approx(np.abs(got - expected).max(), rel=1e-4)
        assert a["max_abs_diff"] > 0  # quantized weights do not give float32's probabilities
        assert json.loads(result.sidecar_path.read_text())["quantize"] == quantize
        sizes[quantize] = result.path.stat().st_size
    assert float32 > sizes["float16"] > sizes["int8"]  # the weights really were quantized


@pytest.mark.parametrize("format", ["saved_model", "onnx"])
def test_saved_model_and_onnx_agree(run, keras_model, test_images, format):
    result = export(run, format=format)
    assert result.agreement["passed"] is True and result.agreement["max_abs_diff"] <= 1e-3
    assert find_export(run, format=format) == result.path
    if format == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(result.path),
                                               providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: test_images[:5]})[0]
    else:
        import tensorflow as tf

        assert (result.path / "saved_model.pb").is_file()
        loaded = tf.saved_model.load(str(result.path))  # kept: its variables die with it
        got = loaded.serve(tf.constant(test_images[:5])).numpy()
    np.testing.assert_allclose(got, keras_model.predict_on_batch(test_images[:5]), atol=1e-5)


def test_a_changed_model_makes_the_export_stale(run, tmp_path):
    from workbench.training.checkpoint import save_model
    from workbench.deploy.predict import Classifier

    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("export"))
    first = export(copy, max_images=4)
    assert find_export(copy) == first.path
    (copy / "best.keras").touch()  # a new time, same bytes: the hash says it is still fresh
    assert find_export(copy) == first.path
    model = load_model(copy / "best.keras")
    head = model.get_layer("head")
    kernel, bias = head.get_weights()
    head.set_weights([kernel, bias + np.arange(len(bias), dtype=bias.dtype)])  # class 9 wins
    save_model(model, copy / "best.keras")
    assert find_export(copy) is None
    classifier = Classifier.load(copy)  # re-exports on first use
    assert classifier.runtime in ("litert", "onnx")
    side = json.loads(first.sidecar_path.read_text())
    assert side["source_sha256"] == hashlib.sha256((copy / "best.keras").read_bytes()).hexdigest()
    assert classifier.predict(np.zeros((16, 16, 3), np.uint8), top_k=1)[0]["label"] == "9"


def test_a_failed_check_leaves_no_export(run, monkeypatch):
    path = export(run, model="final", max_images=4).path  # a good one first
    assert path.is_file()
    monkeypatch.setattr(exporting, "MAX_PROB_DIFF", -1.0)  # nothing can pass
    with pytest.raises(ExportCheckFailed, match="disagrees with the Keras model") as failure:
        export(run, model="final", max_images=4)
    assert failure.value.agreement["passed"] is False
    assert not path.exists() and not exporting.sidecar_path(path).exists()
    assert find_export(run, model="final") is None
    assert not [name for name in _files_in(path.parent) if name.startswith(".")]


def test_a_converter_crash_leaves_no_half_file(run, monkeypatch):
    def crash(network, target, **kwargs):
        target.write_bytes(b"TFL3 half a flatbuffer")
        raise RuntimeError("killed half way")

    monkeypatch.setattr(exporting, "_convert", crash)
    before = _files_in(run / "export") if (run / "export").is_dir() else []
    with pytest.raises(ExportError, match="converter cannot handle .*killed half way"):
        export(run, format="onnx", check=False)
    assert _files_in(run / "export") == before  # no temporary file, nothing replaced


def test_a_folder_export_is_replaced_whole_or_not_at_all(run, tmp_path, monkeypatch):
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("export"))

    def writes(*names, crash=False):
        def convert(network, target, **kwargs):
            target.mkdir()
            for name in names:
                (target / name).write_text(name)
            if crash:
                raise RuntimeError("killed half way")
        return convert

    monkeypatch.setattr(exporting, "_convert", writes("saved_model.pb", "old.txt"))
    path = export(copy, format="saved_model", check=False).path
    assert path == copy / "export" / "saved_model" and _files_in(path) == ["old.txt",
                                                                         "saved_model.pb"]
    monkeypatch.setattr(exporting, "_convert", writes("saved_model.pb", crash=True))
    with pytest.raises(ExportError, match="killed half way"):
        export(copy, format="saved_model", check=False)
    assert _files_in(path) == ["old.txt", "saved_model.pb"]  # the old folder, untouched
    assert _files_in(copy / "export") == ["saved_model", "saved_model.json"]
    monkeypatch.setattr(exporting, "_convert", writes("saved_model.pb", "new.txt"))
    export(copy, format="saved_model", check=False)
    assert _files_in(path) == ["new.txt", "saved_model.pb"]  # replaced whole, nothing merged
    assert _files_in(copy / "export") == ["saved_model", "saved_model.json"]
    assert find_export(copy, format="saved_model") == path


def test_an_export_removes_what_killed_exports_left_and_keeps_running_ones(run, tmp_path,
                                                                         monkeypatch):
    import os
    import subprocess
    import sys

    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("export"))
    dead_pid = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                                  capture_output=True, text=True, check=True).stdout)
    folder = copy / "export"
    folder.mkdir()
    # what atomic_path names an export, its sidecar, and a saved_model folder while writing
    killed = [folder / f".model.tflite.{dead_pid}.0a1b2c3d.tflite",
              folder / f".model.tflite.json.{dead_pid}.4e5f6a7b.json",
              folder / f".saved_model.{dead_pid}.8c9d0e1f"]
    running = folder / f".model.onnx.{os.getppid()}.0a1b2c3d.onnx"
    for path in killed[:2] + [running]:
        path.write_bytes(b"partial")
    (killed[2] / "variables").mkdir(parents=True)

    def convert(network, target, **kwargs):
        target.write_bytes(b"converted")

    monkeypatch.setattr(exporting, "_convert", convert)
    export(copy, format="litert", check=False)
    assert _files_in(folder) == [running.name, "model.tflite", "model.tflite.json"]


def test_bad_options_name_the_argument(run):
    with pytest.raises(ValueError, match="format must be one of .* received: 'tflite'"):
        export(run, format="tflite")
    with pytest.raises(ValueError, match="quantize applies to format='litert' only"):
        export(run, format="onnx", quantize="int8")
    with pytest.raises(ValueError, match="max_images must be >= 1, received: 0"):
        export(run, max_images=0)
    with pytest.raises(FileNotFoundError,
                       match=r"run directory written by finetune \(with config.json\)"):
        export(run / "export")


def test_cli_export_prints_the_file_and_the_agreement(run, capsys):
    assert main(["export", str(run), "--quantize", "float16", "--max-images", "6"]) == 0
    out = capsys.readouterr().out
    assert "model_float16.tflite" in out and "on 6 test images: top-1" in out
    assert main(["export", str(run), "--format", "tflite"]) == 2
    assert "invalid choice: 'tflite'" in capsys.readouterr().err


# --- both fast runtimes, and the faster one chosen -----------------------------------------------

def test_export_fast_checks_both_runtimes_and_records_the_faster(run, tmp_path, capsys):
    from workbench.deploy.export import export_fast, export_path, read_sidecar
    from workbench.deploy.runtime import machine

    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("export"))
    result = export_fast(copy, max_images=8)
    assert result.path == export_path(copy, format="litert")
    record = read_sidecar(result.path)["runtime"]
    assert record == result.info["runtime"] and record["machine"] == machine()
    assert record["chosen"] in ("litert", "onnx") and record["fallback"] in ("litert", "onnx")
    assert record["chosen"] != record["fallback"] and set(record["p50_ms"]) == {"litert", "onnx"}
    for format in ("litert", "onnx"):  # both checked against the Keras model, both current
        agreement = read_sidecar(export_path(copy, format=format))["agreement"]
        assert agreement["passed"] is True and agreement["images"] == 8
        assert find_export(copy, format=format) == export_path(copy, format=format)
    print(result.format(), end="")
    out = capsys.readouterr().out
    assert f"runtime for prediction: {record['chosen']} (fallback {record['fallback']})" in out


def test_export_fast_keeps_litert_when_onnx_cannot_be_made(run, tmp_path, monkeypatch):
    from workbench.deploy.export import export_fast, export_path

    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("export"))
    convert = exporting._convert

    def no_onnx(network, target, *, format, **kwargs):
        if format == "onnx":
            raise RuntimeError("tf2onnx is not installed")
        return convert(network, target, format=format, **kwargs)

    monkeypatch.setattr(exporting, "_convert", no_onnx)
    record = export_fast(copy, max_images=4).info["runtime"]
    assert record["chosen"] == "litert" and record["fallback"] is None
    assert "tf2onnx is not installed" in record["unavailable"]["onnx"]
    assert not export_path(copy, format="onnx").exists()


def test_export_fast_computes_the_keras_reference_once(run, tmp_path, monkeypatch):
    """The slow half of the check (Keras over the test split) serves both exports."""
    from workbench.deploy.export import export_fast

    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("export"))
    calls = []
    batched = exporting._batched
    monkeypatch.setattr(exporting, "_batched",
                        lambda run_, pixels, **kw: calls.append(run_) or batched(run_, pixels))
    export_fast(copy, max_images=6)
    assert len(calls) == 3  # Keras once, then LiteRT and ONNX


# --- quantized candidates, chosen only when faster and as accurate -------------------------------

def _fake_measurements(monkeypatch):
    """Deterministic timings and scores: int8 is fastest but loses 0.6 points of top-1,
    float16 raises the ECE by 0.02 and is faster in only 2 of the 4 turns (its p50 is 15%
    below float32's: the noise of a shared CPU), int8_dynamic passes (0.4 points, 20% faster in
    every turn)."""
    turns = {"float32": [10.0] * 4, "litert": [10.0] * 4, "onnx": [10.0] * 4,
             "float16": [5.0, 5.0, 12.0, 12.0], "int8_dynamic": [8.0] * 4, "int8": [5.0] * 4}
    monkeypatch.setattr(exporting.runtime, "time_turns", lambda models, pixels, **kw: {
        name: [[ms] * 4 for ms in turns[name]] for name in models})
    drop = {"model_float16": (0.0, 0.02), "model_int8_dynamic": (0.004, 0.0),
            "model_int8": (0.006, 0.0)}
    scores = exporting._scores

    def faked(network, images, labels, temperature):
        real = scores(network, images, labels, temperature)
        top1, rise = drop.get(network.path.stem, (0.0, 0.0))
        return {**real, "top1": 0.9 - top1, "ece": 0.05 + rise}

    monkeypatch.setattr(exporting, "_scores", faked)


def test_export_auto_records_each_quantized_candidate_and_loads_the_chosen(
        run, tmp_path, monkeypatch, capsys):
    from workbench.deploy.export import export_path, read_sidecar
    from workbench.deploy.predict import Classifier

    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("export"))
    _fake_measurements(monkeypatch)
    assert main(["export", str(copy), "--max-images", "4"]) == 0  # --quantize auto: the default
    out = capsys.readouterr().out
    record = read_sidecar(export_path(copy))["runtime"]["quantized"]
    assert record["chosen"] == "int8_dynamic" and record["file"] == "model_int8_dynamic.tflite"
    assert record["split"] == "val" and record["float32"]["top1"] == 0.9
    c = record["candidates"]
    assert c["int8"]["top1_drop_points"] == 0.6 and c["int8"]["faster"]
    assert not c["int8"]["accurate"] and not c["int8"]["accepted"]  # loses > 0.5 points
    assert c["float16"]["ece_rise"] == 0.02 and not c["float16"]["calibrated"]
    assert c["float16"]["p50_ms"] == 8.5 and c["float16"]["turns_faster"] == 2
    assert not c["float16"]["faster"] and not c["float16"]["accepted"]  # 2 of 4 turns
    assert record["turns"] == 4 and c["int8_dynamic"]["turns_faster"] == 4
    assert c["int8_dynamic"]["accepted"] and c["int8_dynamic"]["top1_drop_points"] == 0.4
    assert c["int8_dynamic"]["bytes"] < read_sidecar(export_path(copy))["bytes"]
    assert "int8: top-1 89.40% (-0.60 points)" in out and "refused, not accurate" in out
    assert "(faster in 2/4 turns): refused, not faster, calibrated" in out
    assert "quantized model for prediction: int8_dynamic" in out
    auto = Classifier.load(copy)
    assert auto.model.path.name == "model_int8_dynamic.tflite"
    named = Classifier.load(copy, runtime="litert")  # a named runtime is float32: final
    assert named.model.path.name == "model.tflite"
    # --quantize none at export is final: the quantized file is still there, and current
    assert main(["export", str(copy), "--quantize", "none", "--max-images", "4"]) == 0
    assert find_export(copy, quantize="int8_dynamic") is not None
    assert "quantized" not in read_sidecar(export_path(copy))["runtime"]
    assert Classifier.load(copy).model.path.name in ("model.tflite", "model.onnx")


def test_no_quantized_candidate_passes_and_float32_stays(run, tmp_path, monkeypatch):
    from workbench.deploy.export import export_fast
    from workbench.deploy.predict import Classifier

    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("export"))
    _fake_measurements(monkeypatch)
    monkeypatch.setattr(exporting, "MAX_TOP1_DROP", 0.3)  # int8_dynamic's 0.4 is too much now
    record = export_fast(copy, max_images=4, quantize="auto").info["runtime"]["quantized"]
    assert record["chosen"] is None and record["file"] is None
    assert not any(c["accepted"] for c in record["candidates"].values())
    assert Classifier.load(copy).model.path.name in ("model.tflite", "model.onnx")


def test_quantized_rule_needs_the_margin_and_most_turns():
    """Faster means a p50 at least QUANTIZED_MARGIN below float32's and faster in at least
    WIN_TURNS of the interleaved turns: neither a small gain in every turn nor a large
    p50 gain from half of the turns (a burst of load on float32's calls) is enough."""
    scores = {"top1": 0.9, "ece": 0.05, "probabilities": np.full((2, 3), 1 / 3)}

    def faster(candidate_turns, float32_turns):
        flat = [ms for turn in candidate_turns for ms in turn]
        reference = [ms for turn in float32_turns for ms in turn]
        turns = exporting._turns_faster(candidate_turns, float32_turns)
        return exporting._judge(scores, scores, float(np.median(flat)),
                                float(np.median(reference)), turns)["faster"]

    float32 = [[10.0, 10.0]] * 4
    assert exporting.QUANTIZED_MARGIN >= 0.1 and exporting.WIN_TURNS > 0.5
    assert faster([[8.0, 8.0]] * 4, float32)            # 20% in every turn
    assert not faster([[9.5, 9.5]] * 4, float32)        # 5% in every turn: below the margin
    assert not faster([[5.0, 5.0]] * 2 + [[11.0, 11.0]] * 2, float32)  # 2 of 4 turns
    assert faster([[5.0, 5.0]] * 3 + [[11.0, 11.0]], float32)          # 3 of 4 turns
    with pytest.warns(DeprecationWarning, match="QUANTIZED_TURNS is deprecated.*WIN_TURNS"):
        assert exporting.QUANTIZED_TURNS == exporting.WIN_TURNS  # the old name, for one release
    with pytest.raises(AttributeError, match="no attribute 'QUANTIZED_TURN'"):
        exporting.QUANTIZED_TURN  # noqa: B018
    assert not faster([[5.0, 5.0], [11.0, 11.0]], float32[:2])         # 1 of 2: both needed
    assert exporting._turns_faster([[1.0], [3.0]], [[2.0], [2.0]]) == (1, 2)


def test_onnx_is_chosen_only_when_clearly_faster_in_most_turns(monkeypatch):
    """ONNX Runtime replaces LiteRT only with a p50 ONNX_MARGIN below LiteRT's won in at least
    3/4 of the turns; a p50 won in 2 turns of 4 (load on LiteRT's calls) keeps LiteRT."""
    from workbench.deploy import runtime

    def choice(onnx_turns):
        monkeypatch.setattr(runtime, "time_turns", lambda models, pixels, **kwargs: {
            "litert": [[10.0, 10.0]] * 4, "onnx": onnx_turns})
        record = exporting.choose_runtime({"litert": None, "onnx": None}, 8)
        return record["chosen"], record["fallback"], record["turns_faster"]["onnx"]

    assert choice([[9.0, 9.0]] * 4) == ("onnx", "litert", 4)
    assert choice([[9.9, 9.9]] * 4) == ("litert", "onnx", 4)       # 1%: a near-tie
    assert choice([[5.0, 5.0]] * 2 + [[11.0, 11.0]] * 2)[0] == "litert"  # 2 of 4 turns
    assert choice([[5.0, 5.0]] * 3 + [[11.0, 11.0]])[0] == "onnx"         # 3 of 4 turns


def test_time_turns_pairs_the_models_turn_by_turn():
    from workbench.deploy import runtime

    calls = []
    models = {"a": lambda pixels: calls.append("a"), "b": lambda pixels: calls.append("b")}
    turns = runtime.time_turns(models, np.zeros((1, 2, 2, 3), np.float32), rounds=3, block=2,
                               warmup=1, seconds=60.0, settle=0.0)
    assert sorted(turns) == ["a", "b"] and len(turns["a"]) == len(turns["b"]) == 3
    assert all(len(turn) == 2 and min(turn) >= 0 for turn in turns["a"] + turns["b"])
    assert calls == ["a", "b"] + (["a"] * 3 + ["b"] * 3) * 3  # warmup, then untimed + 2 timed
    assert runtime.p50_ms({"a": [[1.0, 5.0], [2.0]]}) == {"a": 2.0}
    assert set(runtime.time_runtimes(models, np.zeros((1, 2, 2, 3), np.float32), rounds=1,
                                     block=1, warmup=0, settle=0.0)) == {"a", "b"}
