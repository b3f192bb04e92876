"""A chain-shaped Keras model as a list of layers, and cutting it into a device and a server part.

A phone runs the first layers of a network (the *device* side), sends the activations at a split
layer over the network, and a server runs the rest. This module finds the split points and makes
the two parts; :mod:`workbench.studies.split_profile` measures what each split costs and
:mod:`workbench.studies.bottleneck` compresses the activations at one.

* :func:`candidate_layers`: the split points of a chain-shaped model (raw image, the output of
  every pooling layer, the features, the output).
* :func:`split_functional`: the device part and the server part of a model at a layer, from
  its flat copy (:meth:`Chain.build`).

Models must be chains (each layer feeds the next; nested models such as the workbench's
``backbone`` are expanded), which covers the built-in ``lenet`` and ``cifar_cnn`` classifiers.
The models built here hold copies of the layers, so the given model is never changed.
"""

from __future__ import annotations

import os

import keras
import numpy as np

from workbench._checks import UsageError, deprecated
from workbench._compat import inbound_nodes
from workbench.models import load_model

ENCODE, DECODE = "bottleneck_encode", "bottleneck_decode"  # the bottleneck's two layers


class Chain:
    """A chain-shaped Keras model as its input and a flat list of its layers (the originals).

    Args:
        model: a ``keras.Model`` with one input and one output whose layers each feed the next
            (nested models are expanded).

    Attributes:
        input_name, input_shape, input_dtype: the model's input (shape without the batch axis).
        layers: the layers in order, nested models expanded; names: their names.
        shapes: output shape (without the batch axis) by layer name, the input's included.

    Raises:
        ValueError: the model is not a chain of uniquely named layers.
    """

    def __init__(self, model):
        if not isinstance(model, keras.Model):
            raise UsageError(f"model must be a keras.Model, received: {type(model).__name__}")
        if len(model.inputs) != 1 or len(model.outputs) != 1:
            raise UsageError(f"model must have one input and one output, received: "
                             f"{len(model.inputs)} inputs and {len(model.outputs)} outputs")
        self.input_name = model.inputs[0].name
        self.input_shape = tuple(model.inputs[0].shape[1:])
        self.input_dtype = model.inputs[0].dtype
        self.layers, outputs = [], []
        _walk(model, self.layers, outputs)
        names = [layer.name for layer in self.layers]
        duplicated = sorted({name for name in names if names.count(name) > 1})
        if duplicated or self.input_name in names:
            raise UsageError(f"model must have unique layer names to name split points, "
                             f"received duplicates: {duplicated or [self.input_name]}")
        self.names = names
        self.shapes = {layer.name: tuple(output.shape[1:])
                       for layer, output in zip(self.layers, outputs)}
        self.shapes[self.input_name] = self.input_shape

    def candidates(self) -> list[str]:
        """The split points worth profiling (see :func:`candidate_layers`)."""
        pooling = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D,
                   keras.layers.GlobalMaxPooling2D, keras.layers.GlobalAveragePooling2D)
        heads = [i for i, name in enumerate(self.names) if name.startswith("head")]
        features = heads[0] - 1 if heads else len(self.layers) - 1
        ends = (features, len(self.layers) - 1)
        return [self.input_name] + [layer.name for i, layer in enumerate(self.layers)
                                    if isinstance(layer, pooling) or layer.name == ENCODE
                                    or i in ends]

    def check_layer(self, name, argument: str = "layer", *, allow_ends: bool = True) -> str:
        """Returns ``name`` if it is a layer of the chain (or its input, with ``allow_ends``).

        Without ``allow_ends`` the input and the last layer are refused: there is nothing to
        split there. The error names ``argument`` and lists the candidates.
        """
        allowed = [self.input_name, *self.names] if allow_ends else self.names[:-1]
        if not isinstance(name, str) or name not in allowed:
            raise UsageError(f"{argument} must name a split point of the model, received: "
                             f"{name!r}; candidates: {', '.join(self.candidates())} "
                             f"(any layer of: {', '.join(allowed)})")
        return name

    def position(self, name: str) -> int:
        """0 for the input, i + 1 for layer i."""
        return 0 if name == self.input_name else self.names.index(name) + 1

    def build(self, *, after: str | None = None, filters: int | None = None):
        """A flat functional copy of the model (weights copied), optionally with a bottleneck."""
        inputs = keras.Input(self.input_shape, dtype=self.input_dtype, name=self.input_name)
        x = inputs
        for layer in self.layers:
            copy = layer.__class__.from_config(layer.get_config())
            x = copy(x)
            copy.set_weights(layer.get_weights())
            if layer.name == after:
                channels = int(x.shape[-1])
                x = keras.layers.Conv2D(filters, 1, name=ENCODE)(x)  # device side: compress
                x = keras.layers.Conv2D(channels, 1, activation="relu", name=DECODE)(x)  # server
        return keras.Model(inputs, x, name="split_model")


def _walk(model, out: list, outputs: list) -> None:
    """Appends the layers of ``model`` in order (nested models expanded) and their output
    tensors in its graph; checks that it is a chain."""
    current = model.inputs[0]
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        node = next((node for node in inbound_nodes(layer)
                     if len(node.input_tensors) == 1 and node.input_tensors[0] is current
                     and len(node.output_tensors) == 1), None)
        if node is None:
            raise UsageError(f"model must be a chain of layers (each feeding the next) to be "
                             f"split, received a graph where {layer.name!r} does not take the "
                             f"output of the layer before it")
        if isinstance(layer, keras.Model):
            _walk(layer, out, outputs)
        else:
            out.append(layer)
            outputs.append(node.output_tensors[0])
        current = node.output_tensors[0]
    if current is not model.outputs[0]:
        raise UsageError(f"model must be a chain of layers to be split, received: {model.name!r} "
                         f"whose output is not its last layer's")


def as_model(model):
    """``model`` itself, or the model saved at a ``.keras`` path."""
    if isinstance(model, (str, os.PathLike)):
        return load_model(model)
    return model


def candidate_layers(model) -> list[str]:
    """The split points worth profiling, from the input to the output.

    The model's input (send the raw uint8 image; the server runs everything), the output of every
    pooling layer (the end of each conv/pool block), a bottleneck's ``bottleneck_encode`` (see
    :func:`workbench.studies.bottleneck.bottleneck_model`), the features (the layer before the
    ``head*`` layers, e.g. lenet's ``ip1``) and the output (everything on the device; it sends
    the result).

    Args:
        model: a chain-shaped ``keras.Model`` or a ``.keras`` path.

    Returns:
        Layer names, the input's name first.

    Raises:
        ValueError: if the model is not a chain of layers.
    """
    return Chain(as_model(model)).candidates()


def split_model(model, at: str):
    """The device part (input to ``at``) and the server part (after ``at``) of a model.

    Both hold copies of the model's layers with its weights; ``server(device(x))`` equals
    ``model(x)``. Deprecated, and gone in the next release: nothing uses it;
    ``split_functional(Chain(as_model(model)).build(), at)`` makes the same parts.

    Args:
        model: a chain-shaped ``keras.Model`` or a ``.keras`` path.
        at: a layer other than the last (see :func:`candidate_layers`).

    Returns:
        ``(device, server)``, two ``keras.Model``.

    Raises:
        ValueError: if ``at`` is not a layer of the model, or is its last.
    """
    deprecated("split_model is deprecated and will be removed in the next release: "
               "use split_functional(Chain(as_model(model)).build(), at)")
    chain = Chain(as_model(model))
    chain.check_layer(at, "at", allow_ends=False)
    return split_functional(chain.build(), at)


def split_functional(flat, at: str):
    """The device part (input to ``at``) and the server part of a flat functional model.

    Args:
        flat: a model whose layers each feed the next, without nested models (as
            :meth:`Chain.build` and :func:`workbench.studies.bottleneck.bottleneck_model`
            make); the parts share its layers.
        at: the name of one of its layers other than the last.

    Returns:
        ``(device, server)``, two ``keras.Model``.

    Raises:
        ValueError: ``at`` is not a layer of ``flat`` before its last.
    """
    names = [layer.name for layer in flat.layers[1:]]
    if not isinstance(at, str) or at not in names[:-1]:
        raise UsageError(f"at must name a layer of the model other than its last "
                         f"({', '.join(names[:-1])}), received: {at!r}")
    device = keras.Model(flat.inputs[0], flat.get_layer(at).output, name="device")
    inputs = keras.Input(tuple(device.output.shape[1:]), name=f"{at}_activations")
    x, after = inputs, False
    for layer in flat.layers[1:]:
        if after:
            x = layer(x)
        after = after or layer.name == at
    return device, keras.Model(inputs, x, name="server")


def check_images(images, shape) -> np.ndarray:
    """Returns ``images`` if it is a non-empty uint8 array of shape (N, *shape*).

    Raises:
        ValueError: naming ``images``, the shape expected and what was received.
    """
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or \
            tuple(images.shape[1:]) != tuple(shape) or len(images) == 0:
        described = (f"{images.dtype} array of shape {images.shape}"
                     if isinstance(images, np.ndarray) else type(images).__name__)
        raise UsageError(f"images must be a uint8 array of shape (N, {', '.join(map(str, shape))})"
                         f" with N >= 1, received: {described}")
    return images
