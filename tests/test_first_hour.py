"""A newcomer's first hour (issue 19): the real reason, once, in the words of the place it is
read. A user's mistake shows as one message in Jupyter; a folder too small for the split stops
the split; the starting weights are fetched before any image is decoded; a run shorter than
the validation interval is validated; an interrupt stops within a step, in one line."""

import signal
import pytest

import tiny_data
from workbench import models
from workbench._checks import UsageError, check_int
from workbench.data import images
from workbench.data.split import NoClassKept, prepare
from workbench.models import StartingPoint
from workbench.runs import RunDir
from workbench.training import callbacks as cb
from workbench.training.solver import SolverConfig
from workbench.training.train import (RunExists, SettingsChanged, TrainingInterrupted,
                                      _validation_epochs, finetune)


def rendered(error: BaseException) -> list[str]:
    """The lines IPython shows for ``error`` (InteractiveShell.showtraceback's rule)."""
    assert hasattr(error, "_render_traceback_")
    return error._render_traceback_()


def test_a_usage_error_renders_as_its_message_alone_unless_debugging(monkeypatch):
    monkeypatch.delenv("WORKBENCH_DEBUG", raising=False)
    try:
        try:
            {}["deep"]
        except KeyError as error:  # a chained cause is not shown
            raise UsageError("split must be ...,\nreceived: 'x'") from error
    except UsageError as error:
        assert rendered(error) == ["UsageError: split must be ..., received: 'x'"]
        monkeypatch.setenv("WORKBENCH_DEBUG", "1")  # the whole traceback, one switch away
        assert not hasattr(error, "_render_traceback_")
    with pytest.raises(ValueError, match="epochs must be >= 1, received: 0"):  # still ValueError
        check_int("epochs", 0, minimum=1)
    for kind in (RunExists, SettingsChanged, cb.TrainingDiverged, models.WeightsUnavailable,
                 NoClassKept):
        assert issubclass(kind, UsageError), kind
    assert issubclass(cb.TrainingDiverged, RuntimeError)


def test_a_folder_too_small_for_the_counts_stops_the_split_with_the_reason(tmp_path):
    data = tiny_data.write_digits(tmp_path / "data", per_class=15, size=8)
    with pytest.raises(NoClassKept) as raised:
        prepare(data, tmp_path / "splits", counts=(10, 10, "rest"), min_per_class=10,
                progress="none")
    message = str(raised.value)
    assert message.startswith("no class was kept, so nothing was written: "
                              "counts 10,10,rest (train, val, test) need 20 distinct images "
                              "per class; 10 classes have fewer: 0 15, 1 15, 2 15")
    assert "and 2 more" in message and "\n" not in message
    assert not (tmp_path / "splits").exists()
    with pytest.raises(NoClassKept, match="min_per_class=16 needs as many valid images; 10 "
                                          "classes have fewer: 0 15"):
        prepare(data, tmp_path / "splits", min_per_class=16, progress="none")


def test_imagenet_weights_are_fetched_before_any_image_is_decoded(tmp_path, monkeypatch):
    from keras.src.utils import file_utils

    from workbench.studies.recipes import compare_recipes

    splits = tiny_data.write_splits(tmp_path, per_class=6, counts=(3, 2, 1))

    def offline(fname=None, origin=None, **kwargs):  # Keras's words when urllib fails
        raise Exception(f"URL fetch failure on {origin}: None -- [Errno -3] Temporary failure "
                        "in name resolution")

    decoded = []
    real_load = images.load_array
    monkeypatch.setattr(file_utils, "get_file", offline)
    monkeypatch.setattr(images, "load_array", lambda *a, **k: decoded.append(a) or
                        real_load(*a, **k))
    with pytest.raises(models.WeightsUnavailable) as raised:
        finetune(splits, tmp_path / "run", start="mobilenet_v2",
                 image_size=32, progress="none")
    assert decoded == [] and not (tmp_path / "run").exists()
    line, = rendered(raised.value)
    # the file Keras names (..._no_top.h5, never '*_notop.h5' for MobileNetV2), and the README's way
    assert "~/.keras/models/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5" \
        in line and ".save_weights('mobilenet_v2.weights.h5')" in line
    assert line.endswith("Keras said: [Errno -3] Temporary failure in name resolution")
    with pytest.raises(models.WeightsUnavailable):  # notebook 03's call decodes before finetune
        compare_recipes(splits, tmp_path / "runs", recipes=["scratch", "two_stage"], seeds=[0],
                        start="mobilenet_v2", image_size=32, progress="none")
    assert decoded == []


def test_the_validation_interval_never_exceeds_the_run():
    assert _validation_epochs(5, 0, 3) == [3]
    assert _validation_epochs(2, 0, 5) == [2, 4, 5]
    assert _validation_epochs(2, 3, 6) == [4, 6]  # resumed after epoch 3


@pytest.mark.slow
def test_a_run_shorter_than_the_validation_interval_has_a_best_model(tmp_path):
    splits = tiny_data.write_splits(tmp_path, per_class=6, counts=(3, 2, 1))
    run = finetune(splits, tmp_path / "run", start=StartingPoint("cifar_cnn", weights=None),
                   recipe="two_stage", image_size=16, progress="none",
                   solver=SolverConfig(epochs=2, batch_size=10, test_interval=5))
    # each of the two stages (one epoch each) ends with a validation pass
    assert run.history["val_accuracy"].notna().tolist() == [True, True]
    assert run.metrics["best_epoch"] in (1, 2) and (run.path / "best.keras").is_file()


@pytest.mark.slow
def test_an_interrupt_stops_within_a_step_in_one_line(tmp_path, monkeypatch):
    splits = tiny_data.write_splits(tmp_path, per_class=6, counts=(4, 1, 1))
    begun = []

    def interrupt_in_epoch_2(self, batch, logs=None):  # Ctrl+C, as the kernel sends it
        begun.append((self._epoch, batch))
        if (self._epoch, batch) == (2, 0):  # while the first step of epoch 2 is in flight
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(cb.HistoryLogger, "on_train_batch_begin", interrupt_in_epoch_2,
                        raising=False)
    options = dict(start=StartingPoint("lenet", weights=None), recipe="scratch", image_size=16,
                   progress="none", solver=SolverConfig(epochs=3, batch_size=10))
    with pytest.raises(TrainingInterrupted) as raised:
        finetune(splits, tmp_path / "run", **options)
    assert begun[-1] == (2, 0)  # the step in flight finished; no other began
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
    assert isinstance(raised.value, KeyboardInterrupt)
    line, = rendered(raised.value)
    assert line == ("TrainingInterrupted: Interrupted in epoch 2 of 3 (run); its checkpoint of "
                    "epoch 1 is kept: train again with resume=True to continue from it")
    assert RunDir(tmp_path / "run").history["epoch"].tolist() == [1]  # no half epoch
    monkeypatch.undo()
    run = finetune(splits, tmp_path / "run", resume=True, **options)
    assert run.history["epoch"].tolist() == [1, 2, 3] and run.metrics["status"] == "completed"
