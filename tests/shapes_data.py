"""A task where only a small object tells the class, to check that explanations point at it.

Each image is grey clutter (noise and grey blobs) with one small shape of its class's colour at
a random place: class 0 a red disc, 1 a green square, 2 a blue triangle. A model that learned
the task can only have used the object, so a faithful map has its maximum on it. The pointing
rate is the fraction of images where it does; chance is the object box's share of the image.
Used by tests/test_explain.py and benchmarks/explain.py.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("red disc", "green square", "blue triangle")
COLOURS = ((220, 40, 40), (40, 200, 40), (50, 70, 230))


def make_shapes(count: int, *, size: int = 48, shape_size: int = 7, seed: int = 0):
    """``count`` images, their labels and the objects' boxes.

    Returns:
        ``(images, labels, boxes)``: uint8 (count, size, size, 3), int (count,), and int
        (count, 4) boxes ``(top, left, bottom, right)``, bottom and right exclusive.
    """
    rng = np.random.default_rng(seed)
    images = np.empty((count, size, size, 3), np.uint8)
    labels = rng.integers(0, len(CLASSES), count)
    boxes = np.empty((count, 4), np.int64)
    for index, label in enumerate(labels):
        grey = rng.normal(128, 30, (size, size, 1)).clip(0, 255)
        canvas = Image.fromarray(np.repeat(grey, 3, axis=2).astype(np.uint8))
        draw = ImageDraw.Draw(canvas)
        for _ in range(4):  # grey distractors of the same sizes as the objects
            x, y = rng.integers(0, size - shape_size, 2)
            level = int(rng.integers(40, 220))
            draw.rectangle([x, y, x + shape_size - 1, y + shape_size - 1], fill=(level,) * 3)
        left, top = (int(v) for v in rng.integers(0, size - shape_size + 1, 2))
        right, bottom = left + shape_size - 1, top + shape_size - 1
        colour = COLOURS[label]
        if label == 0:
            draw.ellipse([left, top, right, bottom], fill=colour)
        elif label == 1:
            draw.rectangle([left, top, right, bottom], fill=colour)
        else:
            draw.polygon([(left, bottom), (right, bottom), ((left + right) / 2, top)], fill=colour)
        images[index] = np.asarray(canvas)
        boxes[index] = (top, left, bottom + 1, right + 1)
    return images, labels, boxes


def shapes_model(size: int = 48):
    """A small CNN as the workbench builds classifiers: a nested ``backbone`` (its own
    preprocessing, three convolutions, no batch norm: a few epochs train it) and a new head."""
    import keras

    from workbench import models

    image = keras.Input((size, size, 3), name="image")
    x = models.Preprocess("scale", name="preprocess")(image)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1")(x)
    x = keras.layers.MaxPooling2D(2, name="pool1")(x)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.MaxPooling2D(2, name="pool2")(x)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv3")(x)
    return models.classifier(keras.Model(image, x, name="backbone"), len(CLASSES))


def train_shapes_model(images, labels, *, epochs: int = 6, seed: int = 0):
    """:func:`shapes_model` trained on the shapes with Adam."""
    import keras

    keras.utils.set_random_seed(seed)
    model = shapes_model(images.shape[1])
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(images.astype("float32"), labels, batch_size=32, epochs=epochs, verbose=0)
    return model


def dilated(boxes, margin: int, size: int):
    """The boxes grown by ``margin`` pixels on each side, clipped to the image."""
    boxes = np.asarray(boxes).copy()
    boxes[:, :2] = np.maximum(boxes[:, :2] - margin, 0)
    boxes[:, 2:] = np.minimum(boxes[:, 2:] + margin, size)
    return boxes


def hits(maps, boxes) -> np.ndarray:
    """Whether each map's maximum lies inside its box."""
    flat = np.asarray(maps).reshape(len(maps), -1).argmax(axis=1)
    rows, columns = np.unravel_index(flat, np.asarray(maps).shape[1:])
    boxes = np.asarray(boxes)
    return (rows >= boxes[:, 0]) & (rows < boxes[:, 2]) & (columns >= boxes[:, 1]) & \
        (columns < boxes[:, 3])


def chance(boxes, size: int) -> float:
    """The pointing rate of a map whose maximum falls anywhere: the boxes' mean area share."""
    boxes = np.asarray(boxes)
    return float(((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).mean() / size**2)
