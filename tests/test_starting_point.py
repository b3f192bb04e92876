"""What a run starts from: a :class:`StartingPoint` that refuses a source model beside another
backbone (never ignoring either), ``initial.keras`` (so filters can be compared before and after
with no extra file), the layers worth showing in any model, and the image size and weights a
notebook gets when it does not say."""

import warnings
from pathlib import Path

import keras
import numpy as np
import pytest

import tiny_data
from workbench import inspect, models
from workbench._checks import UsageError
from workbench.models import StartingPoint
from workbench.runs import RunDir
from workbench.studies.recipes import compare_recipes
from workbench.training.lr_find import range_test
from workbench.training.solver import SolverConfig
from workbench.training.train import build_model, finetune
from workbench.training.recipes import get_recipe

SOLVER = SolverConfig(epochs=1, batch_size=16, base_lr=0.05)  # each run: one epoch


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("start")
    splits = tiny_data.write_splits(root, per_class=8, counts=(4, "rest", 2))
    source = finetune(splits, root / "source", start=StartingPoint("cifar_cnn", weights=None),
                      recipe="scratch", solver=SOLVER, image_size=16,
                      progress="none")
    # where compare_recipes(runs_dir=root / "compare") keeps its caffe run of seed 0
    tuned = finetune(splits, root / "compare" / "caffe-seed0",
                     start=str(source.model_path("final")), recipe="caffe", solver=SOLVER,
                     progress="none")  # image_size: the source's
    return {"splits": splits, "source": source.path, "tuned": tuned.path}


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
    finetune(runs["splits"], runs["source"], start=StartingPoint("cifar_cnn", weights=None),
             recipe="scratch", solver=SOLVER, image_size=16, progress="none",
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


# --- the starting point: one argument, checked once -------------------------------------------

@pytest.fixture()
def model_file(tmp_path):
    path = tmp_path / "model.keras"  # a file is enough: the combination is refused unread
    path.write_bytes(b"")
    return path


def test_a_source_beside_another_backbone_or_weights_is_refused_not_ignored(model_file):
    with pytest.raises(UsageError, match=r"give either a backbone \(with weights\) or a source "
                       r"model, not both; received: backbone='lenet' and source='.*model.keras'"):
        StartingPoint("lenet", source=model_file)
    with pytest.raises(UsageError, match=r"not both; received: weights=None and source="):
        StartingPoint(weights=None, source=model_file)
    with pytest.raises(UsageError, match=r"backbone='resnet50', weights=None and source="):
        StartingPoint("resnet50", weights=None, source=model_file)
    point = StartingPoint(source=model_file, cut_at="conv2")  # the defaults beside it: fine
    assert (point.source, point.cut_at) == (model_file, "conv2")


def test_a_starting_point_names_what_it_refuses(tmp_path):
    with pytest.raises(UsageError, match=r"cut_at needs a source model to cut, received: "
                                         r"cut_at='conv1' and no source"):
        StartingPoint(cut_at="conv1")
    with pytest.raises(FileNotFoundError, match="source must be a saved .keras model, received: "
                                                ".*missing.keras"):
        StartingPoint(source=tmp_path / "missing.keras")
    with pytest.raises(UsageError, match="backbone must be one of .* received: 'alexnet'"):
        StartingPoint("alexnet")
    with pytest.raises(UsageError, match="weights must be 'imagenet', None or an existing file"):
        StartingPoint(weights="none")  # the text form is read by models.weights_argument
    with pytest.raises(UsageError, match="cut_at must be a layer name, received: ''"):
        StartingPoint(source=tmp_path, cut_at="")


def test_parse_reads_a_backbone_name_or_a_model_file(model_file, tmp_path):
    legacy = tmp_path / "legacy.h5"
    legacy.write_bytes(b"")
    assert StartingPoint.parse(None) == StartingPoint()
    assert StartingPoint.parse("efficientnet_b0") == StartingPoint("efficientnet_b0")
    assert StartingPoint.parse(str(model_file)) == StartingPoint(source=str(model_file))
    assert StartingPoint.parse(model_file) == StartingPoint(source=model_file)
    assert StartingPoint.parse(str(legacy)) == StartingPoint(source=str(legacy))  # a file
    point = StartingPoint("lenet", weights=None)
    assert StartingPoint.parse(point) is point
    with pytest.raises(FileNotFoundError, match="source must be a saved .keras model"):
        StartingPoint.parse(str(tmp_path / "typo.keras"))
    with pytest.raises(UsageError, match="backbone must be one of .* received: 'resnet'"):
        StartingPoint.parse("resnet")
    with pytest.raises(UsageError, match="start must be a StartingPoint, a backbone name or a "
                                         "saved .keras model, received: 3"):
        StartingPoint.parse(3)


def test_finetune_refuses_a_conflicting_start_before_any_work(runs, tmp_path):
    source = runs["source"] / "model.keras"
    with pytest.warns(DeprecationWarning, match=r"finetune\(backbone=..., source=...\) is "
                                                r"deprecated and will be removed in the next "
                                                r"release"), \
            pytest.raises(UsageError, match=r"not both; received: backbone='lenet' and source="):
        finetune(runs["splits"], tmp_path / "run", backbone="lenet", source=source)
    with pytest.warns(DeprecationWarning), pytest.raises(
            UsageError, match=r"give start or the deprecated weights, not both"):
        finetune(runs["splits"], tmp_path / "run", start=str(source), weights=None)
    with pytest.raises(TypeError, match="finetune\\(\\) got an unexpected keyword argument "
                                        "'backbones'"):
        finetune(runs["splits"], tmp_path / "run", backbones="lenet")
    with pytest.warns(DeprecationWarning), pytest.raises(UsageError, match="not both"):
        range_test(runs["splits"], source=source, weights=None)
    with pytest.warns(DeprecationWarning), pytest.raises(UsageError, match="not both"):
        compare_recipes(runs["splits"], tmp_path / "runs", backbone="lenet", source=source)
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()


def test_config_json_records_the_same_keys_as_before(runs):
    """Runs trained before ``start=`` resume with the same settings: the same four keys."""
    source = RunDir(runs["source"]).config
    assert {key: source[key] for key in models.START_KEYWORDS} == {
        "backbone": "cifar_cnn", "weights": None, "source": None, "cut_at": None}
    tuned = RunDir(runs["tuned"]).config
    assert {key: tuned[key] for key in models.START_KEYWORDS} == {
        "backbone": None, "weights": "imagenet",
        "source": str((runs["source"] / "model.keras").resolve()), "cut_at": None}


def test_the_old_keywords_still_work_with_a_warning_and_mean_the_same_run(runs):
    finished = RunDir(runs["tuned"]).metrics
    with pytest.warns(DeprecationWarning, match=r"finetune\(source=...\) is deprecated.*"
                                                r"use start="):
        again = finetune(runs["splits"], runs["tuned"], source=runs["source"] / "model.keras",
                         recipe="caffe", solver=SOLVER, progress="none", resume=True)
    assert again.metrics == finished  # the same settings: the finished run, not SettingsChanged
    with pytest.warns(DeprecationWarning, match=r"compare_recipes\(source=...\) is deprecated"):
        table = compare_recipes(runs["splits"], runs["tuned"].parent, recipes=["caffe"],
                                seeds=[0], source=runs["source"] / "model.keras", solver=SOLVER,
                                progress="none")
    assert table["test_accuracy"].tolist() == [finished["test_accuracy"]]  # kept, not trained
    with warnings.catch_warnings():
        warnings.filterwarnings("error", ".*will be removed in the next release", DeprecationWarning)
        kept = compare_recipes(runs["splits"], runs["tuned"].parent, recipes=["caffe"],
                               seeds=[0], start=str(runs["source"] / "model.keras"),
                               solver=SOLVER, progress="none")
    assert kept["test_accuracy"].tolist() == [finished["test_accuracy"]]


def test_build_model_takes_the_starting_point_and_the_old_keywords(runs):
    recipe = get_recipe("scratch")
    new = build_model(recipe, start=StartingPoint("lenet", weights=None), num_classes=3,
                      image_size=16, dropout=0.0)
    with pytest.warns(DeprecationWarning, match=r"build_model\(backbone=..., weights=...\)"):
        old = build_model(recipe, backbone="lenet", weights=None, num_classes=3, image_size=16,
                          dropout=0.0)
    assert [layer.name for layer in new.layers] == [layer.name for layer in old.layers]
    assert new.get_layer("backbone").get_layer("conv1").kernel.shape == (5, 5, 3, 20)
    with pytest.raises(UsageError, match=r"image_size must match the source model's input "
                                         r"\(16, 16\), received: 32"):
        build_model(recipe, start=str(runs["source"] / "model.keras"), num_classes=3,
                    image_size=32, dropout=0.0)
