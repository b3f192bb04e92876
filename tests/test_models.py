"""Backbones, heads, batch norm in fine-tuning, cutting saved models, offline weights."""

import keras
import numpy as np
import pytest

from workbench import models


def images(count=8, size=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3)).astype("float32")


def test_frozen_batch_norm_runs_in_inference_mode_during_fit():
    model = models.classifier(models.backbone("cifar_cnn", input_shape=(16, 16, 3)), 3)
    x = images()
    np.testing.assert_allclose(model(x, training=True), model(x, training=False), atol=1e-6)
    bn = model.get_layer("backbone").get_layer("bn1")
    before = [w.copy() for w in bn.get_weights()]
    model.compile("sgd", "sparse_categorical_crossentropy")
    model.fit(x, np.zeros(8), epochs=1, verbose=0)
    for a, b in zip(before, bn.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert model.get_layer("backbone").get_layer("conv1").trainable


def test_set_trainable_unfreezes_layers_frozen_inside_the_backbone():
    model = models.classifier(models.backbone("cifar_cnn", input_shape=(16, 16, 3)), 3)
    conv = model.get_layer("backbone").get_layer("conv1")
    conv.trainable = False  # what lr multiplier 0 does in a first stage
    models.set_trainable(model, train_bn=False)
    assert conv.trainable
    assert not model.get_layer("backbone").get_layer("bn1").trainable
    models.set_trainable(model, train_bn=True)
    assert model.get_layer("backbone").get_layer("bn1").trainable


def test_trainable_batch_norm_learns_statistics():
    model = models.classifier(models.backbone("cifar_cnn", input_shape=(16, 16, 3)), 3,
                              train_bn=True)
    x = images()
    assert not np.allclose(model(x, training=True), model(x, training=False), atol=1e-4)
    bn = model.get_layer("backbone").get_layer("bn1")
    before = bn.moving_mean.numpy().copy()
    model.compile("sgd", "sparse_categorical_crossentropy")
    model.fit(x, np.zeros(8), epochs=1, verbose=0)
    assert not np.allclose(before, bn.moving_mean.numpy())


@pytest.mark.parametrize("mode, expected", [
    ("scale", [0.0, 1.0]), ("tf", [-1.0, 1.0]), ("none", [0.0, 255.0]),
])
def test_preprocess_modes(mode, expected):
    x = np.array([[[[0, 0, 0], [255, 255, 255]]]], dtype="uint8")
    out = keras.ops.convert_to_numpy(models.Preprocess(mode)(x))
    assert [out[0, 0, 0, 0], out[0, 0, 1, 0]] == pytest.approx(expected)


def test_caffe_preprocess_is_bgr_minus_imagenet_mean():
    x = np.array([[[[10, 20, 30]]]], dtype="uint8")
    out = keras.ops.convert_to_numpy(models.Preprocess("caffe")(x))[0, 0, 0]
    assert out == pytest.approx([30 - 103.939, 20 - 116.779, 10 - 123.68], abs=1e-4)


def test_applications_backbone_carries_its_preprocessing():
    features = models.backbone("mobilenet_v2", input_shape=(32, 32, 3))
    assert features.get_layer("preprocess").mode == "tf"
    assert features.output.shape == (None, 1280)


def test_load_source_cuts_a_saved_classifier(tmp_path):
    model = models.classifier(models.backbone("cifar_cnn", input_shape=(16, 16, 3)), 4)
    model.save(tmp_path / "source.keras")
    whole = models.load_source(tmp_path / "source.keras")
    assert whole.output.shape == (None, 128)
    np.testing.assert_allclose(whole(images()), model.get_layer("backbone")(images()), rtol=1e-5)
    cut = models.load_source(tmp_path / "source.keras", cut_at="pool2")
    assert cut.output.shape == (None, 4, 4, 64)
    assert models.classifier(cut, 2).get_layer("head_pool") is not None
    with pytest.raises(ValueError, match=r"cut_at must name a layer of source.keras, "
                                         r"received: 'conv9'; layers: image, preprocess"):
        models.load_source(tmp_path / "source.keras", cut_at="conv9")


def test_offline_imagenet_weights_fail_with_one_clear_message(monkeypatch):
    import urllib.error

    from keras.src.utils import file_utils

    def offline(*args, **kwargs):  # what urllib raises on a machine without internet
        raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(file_utils, "urlretrieve", offline)
    with pytest.raises(RuntimeError, match=r"Could not download the ImageNet weights for "
                                           r"MobileNetV2.*weights=PATH"):
        models.backbone("mobilenet_v2", weights="imagenet", input_shape=(32, 32, 3))


def test_bad_backbone_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="name must be one of .* received: 'alexnet'"):
        models.backbone("alexnet")
    with pytest.raises(ValueError, match="weights must be 'imagenet', None or an existing file"):
        models.backbone("mobilenet_v2", weights=tmp_path / "missing.h5")
    with pytest.raises(ValueError, match="lenet has no pretrained weights"):
        models.backbone("lenet", weights="imagenet", input_shape=(16, 16, 3))
