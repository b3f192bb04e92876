"""What a run starts from: ``initial.keras`` (so filters can be compared before and after with no
extra file), the layers worth showing in any model, and the image size and weights a notebook
gets when it does not say."""

from pathlib import Path

import keras
import numpy as np
import pytest

import tiny_data
from workbench import inspect, models
from workbench.runs import RunDir
from workbench.training.solver import SolverConfig
from workbench.training.train import finetune

SOLVER = SolverConfig(epochs=2, batch_size=16, base_lr=0.05)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("start")
    splits = tiny_data.write_splits(root, per_class=8, counts=(4, "rest", 2))
    source = finetune(splits, root / "source", backbone="cifar_cnn", weights=None,
                      recipe="scratch", solver=SOLVER.replace(epochs=1), image_size=16,
                      progress="none")
    tuned = finetune(splits, root / "tuned", source=source.run_dir / "model.keras",
                     recipe="caffe", solver=SOLVER, progress="none")  # image_size: the source's
    return {"splits": splits, "source": source.run_dir, "tuned": tuned.run_dir}


def kernel(model, name):
    return keras.ops.convert_to_numpy(inspect.find_layer(model, name).kernel)


def test_a_run_records_the_model_it_started_from(runs):
    run = RunDir(runs["tuned"])
    initial = models.load_model(run.initial_model_path())
    final = models.load_model(run.model_path("final"))
    source = models.load_model(RunDir(runs["source"]).model_path("final"))
    np.testing.assert_array_equal(kernel(initial, "conv1"), kernel(source, "conv1"))
    assert not np.allclose(kernel(initial, "conv1"), kernel(final, "conv1"))  # caffe trains all
    assert initial.get_layer("head").get_config()["units"] == 10  # the new head, as built
    assert run.config["image_size"] == 16  # taken from the source model's input
    figure = inspect.compare_filters(initial, final)
    assert figure.get_suptitle().startswith("conv1: mean |change|")


def test_a_run_without_initial_model_says_so(runs, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no initial.keras"):
        RunDir(tmp_path).initial_model_path()


def test_resuming_a_finished_run_keeps_its_initial_model(runs):
    run = RunDir(runs["source"])
    before = run.initial_model_path().stat().st_mtime_ns
    finetune(runs["splits"], runs["source"], backbone="cifar_cnn", weights=None,
             recipe="scratch", solver=SOLVER.replace(epochs=1), image_size=16, progress="none",
             resume=True)  # finished: returned as it is
    assert run.initial_model_path().stat().st_mtime_ns == before


def test_default_layers_are_the_first_middle_and_last_convolution():
    cifar = models.classifier(models.backbone("cifar_cnn", input_shape=(16, 16, 3)), 3)
    assert inspect.default_layers(cifar) == ["conv1", "conv2", "conv3"]
    lenet = models.classifier(models.backbone("lenet", input_shape=(28, 28, 3)), 3)
    assert inspect.default_layers(lenet) == ["conv1", "conv2"]
    mobile = models.classifier(models.backbone("mobilenet_v3_small", input_shape=(32, 32, 3)), 3)
    chosen = inspect.default_layers(mobile)
    convolutions = [layer.name for layer in mobile.get_layer("backbone").layers[-1].layers
                    if isinstance(layer, keras.layers.Conv2D)]
    assert chosen == [convolutions[0], convolutions[(len(convolutions) - 1) // 2],
                      convolutions[-1]]
    shown = inspect.activations(mobile, np.zeros((32, 32, 3), np.uint8), layers=chosen)
    assert [grid.layer for grid in shown.grids] == chosen  # reachable through two nested models
    dense = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="must have a 2-D convolution"):
        inspect.default_layers(dense)


def test_natural_image_size_of_backbones_and_source_models(runs):
    assert models.natural_image_size("mobilenet_v2") == 224
    assert models.natural_image_size("cifar_cnn") == 32 and models.natural_image_size("lenet") == 28
    assert models.natural_image_size("vgg16", source=runs["source"] / "model.keras") == 16
    with pytest.raises(ValueError, match="backbone must be one of"):
        models.natural_image_size("alexnet")


@pytest.mark.parametrize("value,expected", [
    ("imagenet", "imagenet"), ("none", None), ("None", None), ("", None), (None, None),
    ("w.weights.h5", Path("/project/w.weights.h5")), ("/abs/w.h5", Path("/abs/w.h5")),
])
def test_weights_argument_reads_what_a_user_types(value, expected):
    assert models.weights_argument(value, relative_to="/project") == expected


def test_weights_argument_refuses_what_is_no_weights():
    with pytest.raises(ValueError, match="weights must be"):
        models.weights_argument(3)
