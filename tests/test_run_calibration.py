"""A finished run is calibrated: calibration.json, the temperature in metrics.json."""

import json

import numpy as np
import pytest

import tiny_data
from workbench import calibration, models
from workbench.runs import RunDir
from workbench.training.calibrate import NO_VALIDATION, calibrate_run, predict_probabilities


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tiny_data.write_run(tmp_path_factory.mktemp("calibrated"), epochs=3)


@pytest.mark.slow
def test_the_run_records_one_temperature_per_model_fitted_on_val(run_dir):
    run = RunDir(run_dir)
    record = run.calibration
    assert record["split"] == "val" and set(record["models"]) == {"best.keras", "model.keras"}
    metrics = run.metrics
    assert metrics["temperature"] == record["temperature"] == run.temperature("best") \
        == record["models"]["best.keras"]["temperature"]
    assert run.temperature("final") == record["models"]["model.keras"]["temperature"]
    assert {"val_ece", "val_ece_raw"} <= set(metrics)

    # the recorded numbers are those of the best model's validation predictions
    data = run.load_splits()
    for name, model in (("best.keras", "best"), ("model.keras", "final")):
        network = models.load_model(run.model_path(model))
        raw = predict_probabilities(network, data.images["val"], batch_size=8)
        fitted = record["models"][name]
        assert fitted["images"] == len(data.labels["val"])
        assert calibration.negative_log_likelihood(raw, data.labels["val"]) == \
            pytest.approx(fitted["nll_raw"], abs=1e-5)
        calibrated = calibration.apply_temperature(raw, fitted["temperature"])
        assert calibration.negative_log_likelihood(calibrated, data.labels["val"]) == \
            pytest.approx(fitted["nll"], abs=1e-5)
        assert fitted["nll"] <= fitted["nll_raw"]
        np.testing.assert_array_equal(calibrated.argmax(1), raw.argmax(1))


@pytest.mark.slow
def test_models_read_from_their_files_are_calibrated_each_on_its_own(run_dir, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    run = RunDir(copy)
    shutil.copy(run.model_file("initial"), run.model_file("best"))  # surely another model
    data = run.load_splits()
    record = calibrate_run(copy, data.images["val"], data.labels["val"], batch_size=8)
    for name, model in (("best.keras", "best"), ("model.keras", "final")):
        raw = predict_probabilities(models.load_model(run.model_path(model)),
                                    data.images["val"], batch_size=8)
        assert record["models"][name]["nll_raw"] == pytest.approx(
            calibration.negative_log_likelihood(raw, data.labels["val"]), abs=1e-5), name


@pytest.mark.slow
def test_without_a_validation_split_the_temperature_is_1_with_a_note(run_dir, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    record = calibrate_run(copy, None, None)
    assert record["temperature"] == 1.0 and record["note"] == NO_VALIDATION
    assert RunDir(copy).temperature("best") == RunDir(copy).temperature("final") == 1.0
    assert json.loads((copy / "calibration.json").read_text()) == record


def test_a_run_without_calibration_json_has_temperature_1(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.keras").write_bytes(b"")
    assert RunDir(tmp_path).calibration is None
    assert RunDir(tmp_path).temperature() == 1.0
    with pytest.raises(ValueError, match="record must be a dict with a 'models' dict"):
        RunDir(tmp_path).write_calibration({"temperature": 2})


@pytest.mark.slow
def test_final_metrics_use_the_model_in_memory_and_equal_those_of_the_files(
        run_dir, tmp_path, monkeypatch):
    import shutil

    from workbench.training import calibrate, callbacks, checkpoint, train

    data = RunDir(run_dir).load_splits()
    epochs, best_epoch = RunDir(run_dir).metrics["epochs"], RunDir(run_dir).metrics["best_epoch"]
    keys = ("val_accuracy", "val_loss", "test_accuracy", "test_loss", "temperature")
    for last_was_best in (True, False):
        copy = tmp_path / f"run-{last_was_best}"
        shutil.copytree(run_dir, copy)
        run = RunDir(copy)
        if last_was_best:  # as after a run whose last epoch was its best
            shutil.copy(run.model_file("final"), run.model_file("best"))
        state = callbacks.RunState(epoch=epochs, best_epoch=epochs if last_was_best
                                   else min(best_epoch, epochs - 1))
        from_files = train._final_metrics(copy, data, 8, state, status="completed")
        records = run.calibration["models"]
        final = checkpoint.load_compiled(run.model_path("final"))  # the model in memory
        loads = []
        monkeypatch.setattr(checkpoint, "load_compiled",
                            lambda path, load=checkpoint.load_compiled: loads.append(path)
                            or load(path))
        monkeypatch.setattr(calibrate, "load_model",  # calibration must load no model file
                            lambda path: pytest.fail(f"calibration loaded {path}"))
        passes = []
        monkeypatch.setattr(calibrate, "predict_probabilities",
                            lambda model, *args, predict=predict_probabilities, **kwargs:
                            passes.append(model) or predict(model, *args, **kwargs))
        in_memory = train._final_metrics(copy, data, 8, state, status="completed",
                                         in_memory=final)
        monkeypatch.undo()
        # the best model is read from its file only when the weights in memory are not it
        assert loads == ([] if last_was_best else [run.model_path("best")])
        # and the model in memory, when it is both, goes over the validation images once
        assert len(passes) == (1 if last_was_best else 2)
        for key in keys:
            assert in_memory[key] == pytest.approx(from_files[key], abs=1e-6), key
        for name, record in run.calibration["models"].items():
            assert record["temperature"] == pytest.approx(records[name]["temperature"],
                                                          abs=1e-6), name

