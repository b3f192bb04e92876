"""Every keras.applications constructor is a backbone, with its family's preprocessing and the
image side it was made for; two outside the first eight build and train from the command line."""

import json

import keras
import numpy as np
import pytest

import tiny_data
from workbench import backbones, models
from workbench.cli import main


def test_every_keras_application_is_a_backbone_by_a_snake_case_name():
    constructors = {name for name in dir(keras.applications) if name[:1].isupper()}
    assert len(constructors) >= 40
    assert {entry[0] for entry in models.APPLICATIONS.values()} == constructors
    expected = {"efficientnet_b3": "EfficientNetB3", "resnet101v2": "ResNet101V2",
                "convnext_small": "ConvNeXtSmall", "mobilenet_v3_large": "MobileNetV3Large",
                "mobilenet": "MobileNet", "nasnet_mobile": "NASNetMobile",
                "efficientnet_v2_s": "EfficientNetV2S", "inception_resnet_v2": "InceptionResNetV2",
                "densenet121": "DenseNet121", "xception": "Xception", "vgg19": "VGG19",
                # the first eight keep their names
                "mobilenet_v2": "MobileNetV2", "mobilenet_v3_small": "MobileNetV3Small",
                "efficientnet_b0": "EfficientNetB0", "efficientnet_v2_b0": "EfficientNetV2B0",
                "resnet50": "ResNet50", "vgg16": "VGG16", "convnext_tiny": "ConvNeXtTiny"}
    for name, constructor in expected.items():
        assert models.APPLICATIONS[name][0] == constructor, name
    # each constructor is defined in the module its family names
    for family, (_, names) in backbones.FAMILIES.items():
        for constructor in names.values():
            defined = getattr(keras.applications, constructor).__module__
            assert defined.rsplit(".", 1)[-1] == family, (constructor, defined)


def test_natural_sizes_are_each_constructors_default():
    sides = dict(zip((f"efficientnet_b{i}" for i in range(8)),
                     (224, 240, 260, 300, 380, 456, 528, 600)))
    sides.update(inception_v3=299, inception_resnet_v2=299, xception=299, nasnet_large=331,
                 nasnet_mobile=224, densenet201=224, resnet152v2=224, efficientnet_v2_s=384,
                 efficientnet_v2_b3=300, convnext_xlarge=224, mobilenet=224, lenet=28,
                 cifar_cnn=32)
    for name, side in sides.items():
        assert models.natural_image_size(name) == side, name
        assert backbones.natural_size(name) == side, name


@pytest.mark.parametrize("family", sorted(backbones.FAMILIES))
def test_the_model_preprocesses_as_the_familys_preprocess_input(family):
    mode = backbones.FAMILIES[family][0]
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    expected = getattr(keras.applications, family).preprocess_input(pixels.copy())
    got = keras.ops.convert_to_numpy(models.Preprocess(mode)(pixels))
    np.testing.assert_allclose(got, np.asarray(expected), rtol=1e-5, atol=1e-4)


def test_an_unknown_name_is_refused_with_the_closest_one():
    with pytest.raises(ValueError, match=r"received: 'efficientnetb3' \(did you mean "
                                         r"'efficientnet_b3'\?\)"):
        models.natural_image_size("efficientnetb3")
    with pytest.raises(ValueError, match="received: 'yolo'$"):  # nothing close
        backbones.check_backbone("yolo")


def test_trains_help_lists_every_backbone(capsys):
    assert main(["train", "--help"]) == 0
    shown = " ".join(capsys.readouterr().out.split())
    for name in models.BACKBONES:
        assert f" {name}," in shown or f" {name};" in shown or shown.endswith(name) \
            or f" {name} " in shown, name


@pytest.mark.slow
@pytest.mark.parametrize("name, mode", [("mobilenet", "tf"), ("densenet121", "torch")])
def test_a_backbone_outside_the_first_eight_trains_from_the_command_line(
        name, mode, tmp_path, capsys):
    splits = tiny_data.write_splits(tmp_path, per_class=3, counts=(2, 1, 0))
    run = tmp_path / name
    assert main(["train", "--splits", str(splits), "--run-dir", str(run), "--backbone", name,
                 "--weights", "none", "--image-size", "32", "--recipe", "caffe",
                 "--epochs", "1", "--batch-size", "10"]) == 0, capsys.readouterr().err
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs"] == 1
    assert json.loads((run / "config.json").read_text())["backbone"] == name
    model = models.load_model(run / "model.keras")
    nested = model.get_layer("backbone")
    assert nested.get_layer("preprocess").mode == mode
    assert nested.layers[-1].name.startswith(name)  # Keras's own name: mobilenet_1.00_32, ...
