"""The published way to send less at a split: the convolution before it, narrowed to k filters.

Where a network is split between a device and a server (see
:mod:`workbench.studies.split_chain`), the published CIFAR-10 study sends fewer channels by
retraining the convolution that makes the split layer's activations with ``k`` filters instead
of its ``C``; the next convolution then takes ``k`` input channels. Nothing is added to the
network (compare :mod:`workbench.studies.bottleneck`, which inserts a 1x1 encoder on the device
and a 1x1 decoder on the server), and the device computes less, not more.

* :func:`narrowed_layers`: the convolution narrowed and the layer whose input is narrowed.
* :func:`narrowed_model`: a copy of a trained model with the convolution narrowed to ``k``
  filters, starting from the kept filters' trained weights, ready to fine-tune.

The start. Which filters (``keep``): ``"norm"`` keeps the ``k`` filters with the largest L2
norm, each with the batch normalisation that follows it folded in
(``|gamma| / sqrt(moving_variance + eps)`` times the filter's norm: the scale of what the
channel passes on); ``"random"`` keeps ``k`` filters drawn with ``seed``. The kept filters and
their batch-norm statistics are the trained ones. The next layer keeps its trained weights for
the kept channels and, given ``init_images``, takes over the dropped channels' part through
their least-squares prediction from the kept ones (the counterpart of the bottleneck's PCA
start). Fine-tuning then retrains the two layers
(:func:`workbench.studies.bottleneck.bottleneck_study` does, method ``"narrowed_conv"``).
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from workbench._checks import UsageError, check_choice, check_int, deprecated
from workbench.studies.split_chain import Chain, as_model, check_images

KEEPS = ("norm", "random")

# Layers that act on each channel alone and hold no weights: the channels pass through them.
_PASS = (keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.Activation,
         keras.layers.MaxPooling2D, keras.layers.AveragePooling2D, keras.layers.Dropout,
         keras.layers.ZeroPadding2D)
# Layers after which the channels are the last axis of a vector (flattened or pooled).
_TO_VECTOR = (keras.layers.Flatten, keras.layers.GlobalAveragePooling2D,
              keras.layers.GlobalMaxPooling2D)


@dataclasses.dataclass(frozen=True)
class _Plan:
    """What narrowing at a split changes: the convolution's filters, the batch norms between it
    and the consumer (per channel), and the consumer's input (a Conv2D or a Dense layer)."""

    conv: str
    normalizations: tuple[str, ...]
    consumer: str
    channels: int


def _channels_last(layer) -> bool:
    """Whether ``layer`` (on 4-D activations) acts on the last axis as the channels."""
    config = layer.get_config()
    if isinstance(layer, keras.layers.BatchNormalization):
        return config["axis"] in (-1, 3)
    return config.get("data_format", "channels_last") == "channels_last"


def _is_conv(layer) -> bool:
    return (isinstance(layer, keras.layers.Conv2D) and layer.get_config()["groups"] == 1
            and _channels_last(layer))


def _plan(chain: Chain, at: str) -> _Plan:
    chain.check_layer(at, "at", allow_ends=False)
    shape = chain.shapes[at]
    if len(shape) != 3:
        raise UsageError(f"at must name a layer with an (H, W, C) output to narrow its "
                         f"convolution, received: {at!r} with output shape {shape}")
    index = chain.names.index(at)
    conv, blocker, normalizations = None, None, []
    for layer in reversed(chain.layers[:index + 1]):  # back from the split to its convolution
        if _is_conv(layer):
            conv = layer.name
            break
        if isinstance(layer, keras.layers.BatchNormalization) and _channels_last(layer):
            normalizations.append(layer.name)
        elif not (isinstance(layer, _PASS) and _channels_last(layer)):
            blocker = layer
            break
    if conv is None:
        found = (f"{blocker.name!r} ({type(blocker).__name__})" if blocker is not None
                 else "the input")
        raise UsageError(f"at must be the output of a convolution (through batch norm, "
                         f"activations, pooling or dropout only) to narrow it, received: {at!r},"
                         f" whose channels come from {found}")
    for position, layer in enumerate(chain.layers[index + 1:], start=index + 1):
        incoming = chain.shapes[chain.names[position - 1]]  # on from the split to its reader
        if isinstance(layer, keras.layers.Dense) or (_is_conv(layer) and len(incoming) == 3):
            return _Plan(conv, tuple(normalizations), layer.name, int(shape[-1]))
        if isinstance(layer, keras.layers.BatchNormalization) and _channels_last(layer) \
                and len(incoming) == 3:
            normalizations.append(layer.name)
        elif isinstance(layer, _TO_VECTOR) and _channels_last(layer) and len(incoming) == 3:
            continue  # the channels stay the last axis: (H * W * C) or (C,)
        elif not (isinstance(layer, _PASS) and _channels_last(layer)):
            raise UsageError(f"at must be read by a convolution or dense layer (through batch "
                             f"norm, activations, pooling, dropout, flatten or global pooling "
                             f"only) to narrow its input, received: {at!r}, whose channels "
                             f"reach {layer.name!r} ({type(layer).__name__})")
    raise UsageError(f"at must be read by a later convolution or dense layer to narrow its "
                     f"input, received: {at!r}, after which no layer reads the channels")


def narrowed_layers(model, at: str) -> tuple[str, str]:
    """The convolution that narrowing at ``at`` gives fewer filters, and the layer whose input
    it narrows.

    Between the convolution and ``at`` only batch norm, activations, pooling and dropout may
    come (they act on each channel alone; batch norms are narrowed with it); after ``at`` the
    same, plus flatten or global pooling, up to a Conv2D or a Dense layer.

    Args:
        model: a chain-shaped ``keras.Model`` or a ``.keras`` path.
        at: the split layer, with an (H, W, C) output, e.g. cifar_cnn's ``"pool2"`` (gives
            ``("conv2", "conv3")``) or lenet's ``"pool2"`` (``("conv2", "ip1")``).

    Returns:
        ``(convolution, consumer)``: the two layers fine-tuning retrains.

    Raises:
        ValueError: for an unknown layer (the message lists the candidates), a layer without
            a channel axis, or one whose channels do not come from, or reach, such a layer.
    """
    plan = _plan(Chain(as_model(model)), at)
    return plan.conv, plan.consumer


def kept_channels(model, at: str, filters: int, *, keep: str = "norm",
                  seed: int = 0) -> np.ndarray:
    """The ``filters`` channels, of the ``C`` at ``at``, that :func:`narrowed_model` keeps.

    Deprecated, and gone in the next release: nothing uses it; :func:`narrowed_model` makes
    the choice itself (its docstring says how), and the narrowed convolution's filters are the
    kept ones.

    Args:
        model: a chain-shaped ``keras.Model`` or a ``.keras`` path.
        at: the split layer (see :func:`narrowed_layers`).
        filters: channels to keep, 1 to C.
        keep: ``"norm"``: the filters of the largest L2 norm with the batch norms that follow
            folded in (``|gamma| / sqrt(moving_variance + epsilon)`` times the filter's norm);
            ``"random"``: drawn with ``seed``.
        seed: seeds the ``"random"`` draw.

    Returns:
        Channel indices in increasing order (the kept channels keep their order).

    Raises:
        ValueError: as :func:`narrowed_layers`, or for ``filters`` out of range or an unknown
            ``keep``.
    """
    deprecated("kept_channels is deprecated and will be removed in the next release: "
               "narrowed_model chooses the channels itself; its narrowed convolution holds the "
               "kept filters")
    chain = Chain(as_model(model))
    return _kept(chain, _plan(chain, at), filters, keep, seed)


def _kept(chain: Chain, plan: _Plan, filters, keep, seed) -> np.ndarray:
    check_int("filters", filters, minimum=1)
    if filters > plan.channels:
        raise UsageError(f"filters must be <= {plan.channels} (the filters of {plan.conv}), "
                         f"received: {filters}")
    check_choice("keep", keep, KEEPS)
    check_int("seed", seed, minimum=0)
    if keep == "random":
        return np.sort(np.random.default_rng(seed).choice(plan.channels, filters, replace=False))
    layers = dict(zip(chain.names, chain.layers))
    kernel = layers[plan.conv].get_weights()[0]  # (height, width, inputs, C)
    score = np.sqrt(np.square(kernel.astype(np.float64)).reshape(-1, plan.channels).sum(0))
    for name in plan.normalizations:
        norm = layers[name]
        gamma = keras.ops.convert_to_numpy(norm.gamma) if norm.scale else 1.0
        variance = keras.ops.convert_to_numpy(norm.moving_variance)
        score = score * np.abs(gamma) / np.sqrt(variance + norm.epsilon)
    return np.sort(np.argsort(-score, kind="stable")[:filters])


def narrowed_model(model, at: str, filters: int, *, keep: str = "norm",
                   init_images: np.ndarray | None = None, seed: int = 0):
    """A copy of ``model`` whose convolution before ``at`` has ``filters`` filters.

    The convolution that makes ``at``'s channels keeps ``filters`` of its filters (chosen as
    ``keep`` says, in their order), the batch norms between it and the next weighted layer
    keep those channels' parameters and statistics, and that next layer (a Conv2D, or a Dense
    layer after flatten or global pooling) keeps its weights for those input channels. Every
    other layer keeps its trained weights (copied; ``model`` is not changed). The layers keep
    their names, so the device part ends at ``at`` with ``filters`` channels; the result is
    one flat functional model (a nested ``backbone`` is expanded). With every filter kept it
    computes what ``model`` computes.

    With ``init_images`` the next layer also takes over what the dropped channels brought: on
    those images' activations (what the next layer reads), each dropped channel is predicted
    from the kept ones by least squares (``dropped ~ kept @ B + c``, at each position), and the
    next layer's weights of the dropped channels are folded through that prediction into the
    kept ones' weights (and ``c`` into its bias, which it gets if it had none). So it starts as
    close to the original as a linear map of the kept channels allows, as the bottleneck's PCA
    start does; without, the dropped channels' contribution is simply lost.

    Args:
        model: a chain-shaped ``keras.Model`` or a ``.keras`` path.
        at: the split layer (see :func:`narrowed_layers`), e.g. ``"pool2"``.
        filters: filters kept, 1 to C.
        keep: which filters start the narrowed convolution: ``"norm"``, the filters of the
            largest L2 norm with the batch norms that follow folded in (``|gamma| /
            sqrt(moving_variance + epsilon)`` times the filter's norm), or ``"random"``, drawn
            with ``seed``.
        init_images: uint8 images for the least-squares start; None: none.
        seed: seeds the ``"random"`` choice and the sample of activations fitted.

    Returns:
        A ``keras.Model`` whose ``at`` output has ``filters`` channels.

    Raises:
        ValueError: as :func:`narrowed_layers`, for ``filters`` out of range or an unknown
            ``keep``, or for ``init_images`` of the wrong shape.
    """
    chain = Chain(as_model(model))
    plan = _plan(chain, at)
    kept = _kept(chain, plan, filters, keep, seed)
    fold = None
    if init_images is not None and filters < plan.channels:
        images = check_images(init_images, chain.input_shape)
        flat = chain.build()
        before = flat.get_layer(chain.names[chain.names.index(plan.consumer) - 1])
        values = keras.Model(flat.inputs[0], before.output).predict(images, batch_size=256,
                                                                   verbose=0)
        fold = _least_squares(values.reshape(-1, plan.channels), kept, seed)
    inputs = keras.Input(chain.input_shape, dtype=chain.input_dtype, name=chain.input_name)
    x = inputs
    for layer in chain.layers:
        config, weights = layer.get_config(), layer.get_weights()
        if layer.name == plan.conv:
            config["filters"] = int(filters)
            weights = [weight[..., kept] for weight in weights]  # kernel (..., C), bias (C,)
        elif layer.name in plan.normalizations:
            weights = [weight[kept] for weight in weights]
        elif layer.name == plan.consumer:
            kernel, offset = _narrow_input(weights[0], kept, plan.channels, fold)
            if config["use_bias"]:
                weights = [kernel, (weights[1] + offset).astype(weights[1].dtype)]
            elif fold is not None:
                config["use_bias"] = True
                weights = [kernel, offset.astype(kernel.dtype)]
            else:
                weights = [kernel]
        copy = layer.__class__.from_config(config)
        x = copy(x)
        copy.set_weights(weights)
    return keras.Model(inputs, x, name="narrowed_model")


def _least_squares(values: np.ndarray, kept: np.ndarray, seed: int):
    """``(B, c, dropped)``: the least-squares prediction ``values[:, dropped] ~ values[:, kept]
    @ B + c`` over rows of activation vectors (positions x images)."""
    if len(values) > 20000:  # a sample is plenty for a C x C problem
        values = values[np.random.default_rng(seed).choice(len(values), 20000, replace=False)]
    values = values.astype(np.float64)
    dropped = np.setdiff1d(np.arange(values.shape[1]), kept)
    mean = values.mean(axis=0)
    mapping = np.linalg.lstsq(values[:, kept] - mean[kept], values[:, dropped] - mean[dropped],
                              rcond=None)[0]
    return mapping, mean[dropped] - mean[kept] @ mapping, dropped


def _narrow_input(kernel: np.ndarray, kept: np.ndarray, channels: int, fold):
    """The consumer's kernel for the kept input channels, and what to add to its bias.

    A Conv2D's kernel is (h, w, C, out), a Dense layer's (C, units), or (H * W * C, units)
    after flattening (H, W, C): each is (taps, C, out) with the channels second to last.
    ``fold`` (from :func:`_least_squares`) adds the dropped channels' weights through their
    prediction from the kept ones.
    """
    taps = kernel.astype(np.float64).reshape(-1, channels, kernel.shape[-1])
    narrowed, offset = taps[:, kept, :], np.zeros(kernel.shape[-1])
    if fold is not None:
        mapping, constant, dropped = fold
        narrowed = narrowed + np.einsum("kd,tdo->tko", mapping, taps[:, dropped, :])
        offset = np.einsum("d,tdo->o", constant, taps[:, dropped, :])
    shape = (*kernel.shape[:2], len(kept), kernel.shape[-1]) if kernel.ndim == 4 \
        else (-1, kernel.shape[-1])
    return narrowed.reshape(shape).astype(kernel.dtype), offset
