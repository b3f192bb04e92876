"""The named backbones: every ``keras.applications`` constructor and the small built-in
networks, with each family's preprocessing and the image side it was designed for.

A table without Keras, so that the command line lists the names and checks ``--backbone``
without loading it; :mod:`workbench.models` builds them.
"""

from __future__ import annotations

import difflib

from workbench._checks import UsageError

# Every keras.applications constructor, by family: the family is its module,
# keras.applications.<family>, whose preprocess_input the mode repeats inside the model.
# "tf": scale to [-1, 1]; "caffe": RGB->BGR and ImageNet mean subtraction; "torch": scale to
# [0, 1], then ImageNet mean and standard deviation; "none": the Keras model already includes
# its preprocessing (EfficientNet, EfficientNetV2, MobileNetV3, ConvNeXt).
FAMILIES = {
    "convnext": ("none", {"convnext_tiny": "ConvNeXtTiny", "convnext_small": "ConvNeXtSmall",
                          "convnext_base": "ConvNeXtBase", "convnext_large": "ConvNeXtLarge",
                          "convnext_xlarge": "ConvNeXtXLarge"}),
    "densenet": ("torch", {"densenet121": "DenseNet121", "densenet169": "DenseNet169",
                           "densenet201": "DenseNet201"}),
    "efficientnet": ("none", {f"efficientnet_b{i}": f"EfficientNetB{i}" for i in range(8)}),
    "efficientnet_v2": ("none", {**{f"efficientnet_v2_b{i}": f"EfficientNetV2B{i}"
                                    for i in range(4)},
                                 "efficientnet_v2_s": "EfficientNetV2S",
                                 "efficientnet_v2_m": "EfficientNetV2M",
                                 "efficientnet_v2_l": "EfficientNetV2L"}),
    "inception_resnet_v2": ("tf", {"inception_resnet_v2": "InceptionResNetV2"}),
    "inception_v3": ("tf", {"inception_v3": "InceptionV3"}),
    "mobilenet": ("tf", {"mobilenet": "MobileNet"}),
    "mobilenet_v2": ("tf", {"mobilenet_v2": "MobileNetV2"}),
    "mobilenet_v3": ("none", {"mobilenet_v3_small": "MobileNetV3Small",
                              "mobilenet_v3_large": "MobileNetV3Large"}),
    "nasnet": ("tf", {"nasnet_mobile": "NASNetMobile", "nasnet_large": "NASNetLarge"}),
    "resnet": ("caffe", {"resnet50": "ResNet50", "resnet101": "ResNet101",
                         "resnet152": "ResNet152"}),
    "resnet_v2": ("tf", {"resnet50v2": "ResNet50V2", "resnet101v2": "ResNet101V2",
                         "resnet152v2": "ResNet152V2"}),
    "vgg16": ("caffe", {"vgg16": "VGG16"}),
    "vgg19": ("caffe", {"vgg19": "VGG19"}),
    "xception": ("tf", {"xception": "Xception"}),
}
# name -> (keras.applications constructor, preprocessing mode, extra constructor kwargs)
APPLICATIONS = {name: (constructor, mode, {}) for mode, names in FAMILIES.values()
                for name, constructor in names.items()}
SMALL_NETWORKS = ("lenet", "cifar_cnn")
BACKBONES = tuple(APPLICATIONS) + SMALL_NETWORKS
# The side each backbone was designed for (its ImageNet weights were trained at it): the default
# input of its Keras constructor; 224 for those not listed.
NATURAL_SIZES = {
    **dict.fromkeys(APPLICATIONS, 224),
    **{f"efficientnet_b{i}": side for i, side in enumerate((224, 240, 260, 300, 380, 456, 528,
                                                             600))},
    "efficientnet_v2_b1": 240, "efficientnet_v2_b2": 260, "efficientnet_v2_b3": 300,
    "efficientnet_v2_s": 384, "efficientnet_v2_m": 480, "efficientnet_v2_l": 480,
    "inception_v3": 299, "inception_resnet_v2": 299, "xception": 299, "nasnet_large": 331,
    "lenet": 28, "cifar_cnn": 32,
}


def natural_size(name: str) -> int:
    """The image side ``name`` was designed for (:data:`NATURAL_SIZES`).

    Raises:
        ValueError: for a name not in :data:`BACKBONES`.
    """
    return NATURAL_SIZES[check_backbone(name)]


def check_backbone(name, *, argument: str = "backbone") -> str:
    """Returns ``name`` if it is one of :data:`BACKBONES`.

    Raises:
        ValueError: naming the value received, every name allowed and the closest one.
    """
    if name in BACKBONES:
        return name
    close = difflib.get_close_matches(str(name).lower(), BACKBONES, n=1, cutoff=0.85)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise UsageError(f"{argument} must be one of {', '.join(BACKBONES)}, received: "
                     f"{name!r}{hint}")
