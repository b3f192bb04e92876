"""Splitting a trained CNN between a device and a server.

A phone runs the first layers of a network (the *device* side), sends the activations at a split
layer over the network, and a server runs the rest. Where to split trades device compute against
bytes sent: the raw image is small but leaves all the work to the server; early activations are
often *larger* than the image; late ones are small but cost the device most of the network.

* :func:`candidate_layers`: the split points of a chain-shaped model (raw image, the output of
  every pooling layer, the features, the output).
* :func:`profile_splits`: bytes sent per image and device / server compute time per split.
* :func:`split_latency`: end-to-end latency per split and bandwidth, and the best split.
* :func:`bottleneck_model` / :func:`bottleneck_study`: a 1x1-convolution bottleneck with ``k``
  filters at the split, fine-tuned, and accuracy against the bytes it sends.

Assumption, stated in every result: device and server are timed on this same CPU, so the device
time is the measured prefix time multiplied by ``device_slowdown`` (default 10, a phone CPU
against a server); the server time is this CPU's, not a GPU's (a GPU was not measured here).

Models must be chains (each layer feeds the next; nested models such as the workbench's
``backbone`` are expanded), which covers the built-in ``lenet`` and ``cifar_cnn`` classifiers.
The models built here hold copies of the layers, so the given model is never changed.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from workbench._checks import check_choice, check_int, check_number

RAW_ROLE = "raw image (server runs all)"  # the profile row of sending the image itself

DTYPES = ("float32", "float16", "uint8")
_ITEMSIZE = {"float32": 4, "float16": 2, "uint8": 1}
QUANT_HEADER_BYTES = 8  # a uint8-quantised tensor also sends its offset and scale (2 x float32)
ENCODE, DECODE = "bottleneck_encode", "bottleneck_decode"
INITS = ("pca", "random")

# ../shared/REFERENCES.md, "Splitting a CNN between a device and a server": CIFAR-10, split after
# pool2 (8x8), accuracy (%) against the filters kept at the split.
_PUBLISHED_FILTERS = (1, 4, 8, 12, 16, 20, 24, 28, 32)
_PUBLISHED_ACCURACY = (56.6, 73.4, 76.6, 77.2, 77.1, 77.7, 77.6, 78.0, 78.1)
PUBLISHED_FINDING = ("Published (CIFAR-10, split after pool2): with 8 filters the data sent is one "
                     "sixth of the raw image while accuracy stays within 1.5 points; at 1 Gbps "
                     "sending raw images to a GPU server was fastest, at 10 Mbps the split won.")


def published_cifar10() -> pd.DataFrame:
    """The published CIFAR-10 bottleneck table (see ``../shared/REFERENCES.md``).

    Returns:
        Columns ``filters``, ``accuracy`` (a fraction) and ``fraction_of_raw``: the values sent
        (8 x 8 x filters after pool2) over the 32 x 32 x 3 raw image.
    """
    filters = np.array(_PUBLISHED_FILTERS)
    return pd.DataFrame({"filters": filters,
                         "accuracy": np.array(_PUBLISHED_ACCURACY) / 100.0,
                         "fraction_of_raw": filters * 8 * 8 / (32 * 32 * 3)})


# --- the model as a chain of layers


class _Chain:
    """A chain-shaped Keras model as its input and a flat list of its layers (originals)."""

    def __init__(self, model):
        import keras

        if not isinstance(model, keras.Model):
            raise ValueError(f"model must be a keras.Model, received: {type(model).__name__}")
        if len(model.inputs) != 1 or len(model.outputs) != 1:
            raise ValueError(f"model must have one input and one output, received: "
                             f"{len(model.inputs)} inputs and {len(model.outputs)} outputs")
        self.input_name = model.inputs[0].name
        self.input_shape = tuple(model.inputs[0].shape[1:])
        self.input_dtype = model.inputs[0].dtype
        self.layers, outputs = [], []
        _walk(model, self.layers, outputs)
        names = [layer.name for layer in self.layers]
        duplicated = sorted({name for name in names if names.count(name) > 1})
        if duplicated or self.input_name in names:
            raise ValueError(f"model must have unique layer names to name split points, "
                             f"received duplicates: {duplicated or [self.input_name]}")
        self.names = names
        self.shapes = {layer.name: tuple(output.shape[1:])
                       for layer, output in zip(self.layers, outputs)}
        self.shapes[self.input_name] = self.input_shape

    def candidates(self) -> list[str]:
        import keras

        pooling = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D,
                   keras.layers.GlobalMaxPooling2D, keras.layers.GlobalAveragePooling2D)
        heads = [i for i, name in enumerate(self.names) if name.startswith("head")]
        features = heads[0] - 1 if heads else len(self.layers) - 1
        ends = (features, len(self.layers) - 1)
        return [self.input_name] + [layer.name for i, layer in enumerate(self.layers)
                                    if isinstance(layer, pooling) or layer.name == ENCODE
                                    or i in ends]

    def check_layer(self, name, argument: str = "layer", *, allow_ends: bool = True) -> str:
        allowed = [self.input_name, *self.names] if allow_ends else self.names[:-1]
        if not isinstance(name, str) or name not in allowed:
            raise ValueError(f"{argument} must name a split point of the model, received: "
                             f"{name!r}; candidates: {', '.join(self.candidates())} "
                             f"(any layer of: {', '.join(allowed)})")
        return name

    def position(self, name: str) -> int:
        """0 for the input, i + 1 for layer i."""
        return 0 if name == self.input_name else self.names.index(name) + 1

    def build(self, *, after: str | None = None, filters: int | None = None):
        """A flat functional copy of the model (weights copied), optionally with a bottleneck."""
        import keras

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
    import keras

    current = model.inputs[0]
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        node = next((node for node in layer._inbound_nodes
                     if len(node.input_tensors) == 1 and node.input_tensors[0] is current
                     and len(node.output_tensors) == 1), None)
        if node is None:
            raise ValueError(f"model must be a chain of layers (each feeding the next) to be "
                             f"split, received a graph where {layer.name!r} does not take the "
                             f"output of the layer before it")
        if isinstance(layer, keras.Model):
            _walk(layer, out, outputs)
        else:
            out.append(layer)
            outputs.append(node.output_tensors[0])
        current = node.output_tensors[0]
    if current is not model.outputs[0]:
        raise ValueError(f"model must be a chain of layers to be split, received: {model.name!r} "
                         f"whose output is not its last layer's")


def _load(model):
    """A keras.Model from a model or a ``.keras`` path."""
    if isinstance(model, (str, os.PathLike)):
        from workbench.models import load_model

        return load_model(model)
    return model


def candidate_layers(model) -> list[str]:
    """The split points worth profiling, from the input to the output.

    The model's input (send the raw uint8 image; the server runs everything), the output of every
    pooling layer (the end of each conv/pool block), a bottleneck's ``bottleneck_encode`` (see
    :func:`bottleneck_model`), the features (the layer before the ``head*``
    layers, e.g. lenet's ``ip1``) and the output (everything on the device; it sends the result).

    Args:
        model: a chain-shaped ``keras.Model`` or a ``.keras`` path.

    Returns:
        Layer names, the input's name first.

    Raises:
        ValueError: if the model is not a chain of layers.
    """
    return _Chain(_load(model)).candidates()


def split_model(model, at: str):
    """The device part (input to ``at``) and the server part (after ``at``) of a model.

    Both hold copies of the model's layers with its weights; ``server(device(x))`` equals
    ``model(x)``.

    Args:
        model: a chain-shaped ``keras.Model`` or a ``.keras`` path.
        at: a layer other than the last (see :func:`candidate_layers`).

    Returns:
        ``(device, server)``, two ``keras.Model``.

    Raises:
        ValueError: if ``at`` is not a layer of the model, or is its last.
    """
    chain = _Chain(_load(model))
    chain.check_layer(at, "at", allow_ends=False)
    return _split(chain.build(), at)


def _split(flat, at: str):
    import keras

    device = keras.Model(flat.inputs[0], flat.get_layer(at).output, name="device")
    inputs = keras.Input(tuple(device.output.shape[1:]), name=f"{at}_activations")
    x, after = inputs, False
    for layer in flat.layers[1:]:
        if after:
            x = layer(x)
        after = after or layer.name == at
    return device, keras.Model(inputs, x, name="server")


# --- bytes and time per split


def activation_bytes(shape: Sequence[int], dtype: str) -> int:
    """Bytes sent for one tensor of ``shape`` (without the batch axis) as ``dtype``.

    ``"uint8"`` means quantised activations: one byte per value plus ``QUANT_HEADER_BYTES`` for
    the offset and scale the server needs to restore them. (The raw image is uint8 already and
    sends ``prod(shape)`` bytes; :func:`profile_splits` counts it that way.)

    Raises:
        ValueError: for an unknown dtype or a shape with unknown or non-positive sizes.
    """
    check_choice("dtype", dtype, DTYPES)
    if any(not isinstance(size, (int, np.integer)) or size < 1 for size in shape):
        raise ValueError(f"shape must hold positive sizes, received: {tuple(shape)!r}")
    values = math.prod(int(size) for size in shape)
    return values * _ITEMSIZE[dtype] + (QUANT_HEADER_BYTES if dtype == "uint8" else 0)


def quantize_roundtrip(activations: np.ndarray) -> np.ndarray:
    """What the server gets back from uint8-quantised activations (per image: offset, scale).

    Each image's values are mapped linearly from [min, max] to 0..255, rounded, and mapped back.

    Args:
        activations: float array of shape (N, ...).

    Returns:
        A float32 array of the same shape, within half a quantisation step of the input.
    """
    x = np.asarray(activations, dtype=np.float32)
    if x.ndim < 2:
        raise ValueError(f"activations must have a batch axis and values, received shape "
                         f"{x.shape}")
    flat = x.reshape(len(x), -1)
    low, high = flat.min(axis=1, keepdims=True), flat.max(axis=1, keepdims=True)
    scale = np.where(high > low, (high - low) / 255.0, 1.0).astype(np.float32)
    codes = np.round((flat - low) / scale).clip(0, 255).astype(np.uint8)
    return (codes * scale + low).reshape(x.shape).astype(np.float32)


@dataclasses.dataclass
class SplitProfile:
    """The result of :func:`profile_splits`.

    Attributes:
        table: one row per split layer (input first): ``layer``, ``role``, ``output_shape``,
            ``values`` and ``bytes`` per image, ``sent_as``, ``prefix_cpu_ms`` and
            ``suffix_cpu_ms`` (measured on this CPU, per image), ``device_ms``
            (prefix x ``device_slowdown``) and ``server_ms`` (suffix, this CPU).
        dtype: how activations are counted (the raw image is always uint8).
        device_slowdown: the assumed device-to-server compute ratio.
        images: images per timed call; repeats: timed calls per model (median taken).
        raw_bytes: bytes of one raw uint8 image.
    """

    table: pd.DataFrame
    dtype: str
    device_slowdown: float
    images: int
    repeats: int
    raw_bytes: int

    @property
    def note(self) -> str:
        """The measurement conditions and the assumption behind the device time."""
        return (f"Compute times measured on this CPU ({os.cpu_count()} cores), median of "
                f"{self.repeats} calls on {self.images} images, per image. Device and server are "
                f"the same CPU here, so device_ms = prefix time x device_slowdown="
                f"{self.device_slowdown:g} (an assumption: a phone CPU against a server) and "
                f"server_ms = this CPU's suffix time (a GPU server: not measured). Activations "
                f"counted as {self.dtype}; the raw image as uint8 ({self.raw_bytes} bytes).")

    def plot(self, ax=None):
        """Bytes sent per split (bars) and device / server time (lines); returns the Figure."""
        from workbench import plots

        return plots.split_profile(self.table, ax=ax, title=f"Split points (activations as "
                                   f"{self.dtype}, device = CPU x {self.device_slowdown:g})")


def profile_splits(model, images: np.ndarray, *, layers: Sequence[str] | None = None,
                   repeats: int = 20, warmup: int = 2, dtype: str = "float32",
                   device_slowdown: float = 10.0) -> SplitProfile:
    """Bytes sent and device / server compute time for each split layer of a model.

    For each layer the device part (input to the layer) and the server part (the rest) are timed
    separately, each call on all of ``images`` (``predict_on_batch``): ``warmup`` calls first
    (compilation), then the median of ``repeats`` calls, divided by the number of images. The
    parts take turns in each round, so load from other programs touches them alike. Pass a
    single image to time batch-1 latency including the framework's per-call overhead.

    Args:
        model: a chain-shaped ``keras.Model`` (e.g. a workbench classifier) or a ``.keras`` path.
        images: uint8 array (N, H, W, C) the model takes, e.g. some test images.
        layers: split layers to profile; default :func:`candidate_layers`. The model's input
            means sending the raw image; its last layer, running everything on the device.
        repeats: timed calls per model part.
        warmup: untimed calls before timing.
        dtype: how activations are sent: ``"float32"``, ``"float16"`` or ``"uint8"``
            (quantised, see :func:`activation_bytes`).
        device_slowdown: how many times slower the device computes than this CPU (assumed,
            not measured: default 10, a phone CPU against a server).

    Returns:
        A :class:`SplitProfile`.

    Raises:
        ValueError: for a layer that is not a split point (the message lists the candidates),
            images of the wrong shape or dtype, or an invalid option.
    """
    model = _load(model)
    chain = _Chain(model)
    check_int("repeats", repeats, minimum=1)
    check_int("warmup", warmup, minimum=0)
    check_choice("dtype", dtype, DTYPES)
    device_slowdown = check_number("device_slowdown", device_slowdown, minimum=0.0,
                                   exclusive_minimum=True)
    images = _check_images(images, chain.input_shape)
    if layers is None:
        layers = chain.candidates()
    if isinstance(layers, str) or not len(layers):
        raise ValueError(f"layers must be a non-empty list of layer names, received: {layers!r}")
    layers = sorted({chain.check_layer(name, "layers") for name in layers}, key=chain.position)

    flat = chain.build()
    last = chain.names[-1]
    parts = {}  # (layer, "prefix" | "suffix") -> (model, its input), timed below
    for name in layers:
        if name == chain.input_name:
            parts[name, "suffix"] = (flat, images)
        elif name == last:
            parts[name, "prefix"] = (flat, images)
        else:
            device, server = _split(flat, name)
            parts[name, "prefix"] = (device, images)
            parts[name, "suffix"] = (server, device.predict_on_batch(images))
    ms = _ms_per_image(parts, repeats, warmup)
    rows = []
    for name in layers:
        shape = chain.shapes[name]
        if name == chain.input_name:
            role, sent_as, size = RAW_ROLE, "uint8 image", math.prod(shape)
        else:
            role = "all on device" if name == last else "split"
            sent_as, size = dtype, activation_bytes(shape, dtype)
        prefix_ms, suffix_ms = ms.get((name, "prefix"), 0.0), ms.get((name, "suffix"), 0.0)
        rows.append({"layer": name, "role": role, "output_shape": "x".join(map(str, shape)),
                     "values": math.prod(shape), "sent_as": sent_as, "bytes": int(size),
                     "prefix_cpu_ms": prefix_ms, "suffix_cpu_ms": suffix_ms,
                     "device_ms": prefix_ms * device_slowdown, "server_ms": suffix_ms})
    return SplitProfile(pd.DataFrame(rows), dtype, device_slowdown, len(images), repeats,
                        math.prod(chain.input_shape))


def _check_images(images, shape) -> np.ndarray:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or \
            tuple(images.shape[1:]) != tuple(shape) or len(images) == 0:
        described = (f"{images.dtype} array of shape {images.shape}"
                     if isinstance(images, np.ndarray) else type(images).__name__)
        raise ValueError(f"images must be a uint8 array of shape (N, {', '.join(map(str, shape))})"
                         f" with N >= 1, received: {described}")
    return images


def _ms_per_image(parts: dict, repeats: int, warmup: int) -> dict:
    """Median wall time of ``model.predict_on_batch(inputs)`` per part, in ms per input row.

    The parts take turns in every round, so a change in the machine's load during the
    measurement touches all of them alike.
    """
    for model, inputs in parts.values():
        for _ in range(warmup):
            model.predict_on_batch(inputs)
    seconds = {key: [] for key in parts}
    for _ in range(repeats):
        for key, (model, inputs) in parts.items():
            start = time.perf_counter()
            model.predict_on_batch(inputs)
            seconds[key].append(time.perf_counter() - start)
    return {key: float(np.median(values)) * 1000.0 / len(parts[key][1])
            for key, values in seconds.items()}


# --- end-to-end latency


@dataclasses.dataclass
class SplitLatency:
    """The result of :func:`split_latency`.

    Attributes:
        table: one row per layer and bandwidth: ``layer``, ``bandwidth_mbps``, ``bytes``,
            ``device_ms``, ``transfer_ms``, ``server_ms``, ``rtt_ms``, ``latency_ms``.
        best: per bandwidth, the fastest ``layer``, its ``latency_ms``, the latency of sending
            the raw image (``raw_image_ms``, if profiled) and ``speedup_vs_raw``.
        break_even: per layer, ``bytes``, ``compute_ms`` (device + server) and
            ``wins_below_mbps``: the bandwidth below which splitting there beats sending the raw
            image (0: never, inf: always; NaN when the raw image was not profiled, or when the
            split sends more but computes less, which wins above a bandwidth instead).
        device_slowdown: the device-to-CPU ratio used; rtt_ms: the round-trip time added.
    """

    table: pd.DataFrame
    best: pd.DataFrame
    break_even: pd.DataFrame
    device_slowdown: float
    rtt_ms: float

    def wide(self) -> pd.DataFrame:
        """Latency (ms) with one row per layer (input first) and one column per bandwidth."""
        wide = self.table.pivot(index="layer", columns="bandwidth_mbps", values="latency_ms")
        wide = wide.loc[list(dict.fromkeys(self.table["layer"]))]
        wide.columns = [f"{bandwidth:g} Mbps" for bandwidth in wide.columns]
        return wide

    def plot(self, ax=None):
        """Latency against split layer, one line per bandwidth, best marked; returns the Figure."""
        from workbench import plots

        return plots.split_latency(self.table, self.best, ax=ax,
                                   title=f"End-to-end latency per image (device = CPU x "
                                         f"{self.device_slowdown:g}, RTT {self.rtt_ms:g} ms)")


def split_latency(profile: SplitProfile, bandwidths_mbps: Sequence[float] = (10, 100, 1000), *,
                  device_slowdown: float | None = None, rtt_ms: float = 0.0) -> SplitLatency:
    """End-to-end latency of each split at each bandwidth, and the best split per bandwidth.

    ``latency = device + bytes * 8 / bandwidth + server + rtt``, with device time the measured
    prefix time times ``device_slowdown``.

    Args:
        profile: from :func:`profile_splits`.
        bandwidths_mbps: uplink bandwidths in megabits (10^6 bits) per second.
        device_slowdown: overrides the profile's device-to-CPU ratio.
        rtt_ms: network round-trip time added to every split.

    Returns:
        A :class:`SplitLatency`.

    Raises:
        ValueError: for a profile that is not a :class:`SplitProfile`, no bandwidth, or a
            non-positive bandwidth or slowdown.
    """
    if not isinstance(profile, SplitProfile):
        raise ValueError(f"profile must be a SplitProfile (from profile_splits), received: "
                         f"{type(profile).__name__}")
    if isinstance(bandwidths_mbps, (int, float)) or not len(bandwidths_mbps):
        raise ValueError(f"bandwidths_mbps must be a non-empty list, received: "
                         f"{bandwidths_mbps!r}")
    bandwidths = [check_number("bandwidths_mbps", value, minimum=0.0, exclusive_minimum=True)
                  for value in bandwidths_mbps]
    slowdown = profile.device_slowdown if device_slowdown is None else check_number(
        "device_slowdown", device_slowdown, minimum=0.0, exclusive_minimum=True)
    rtt_ms = check_number("rtt_ms", rtt_ms, minimum=0.0)
    frame = profile.table
    parts = []
    for bandwidth in bandwidths:
        part = pd.DataFrame({"layer": frame["layer"], "bandwidth_mbps": bandwidth,
                             "bytes": frame["bytes"],
                             "device_ms": frame["prefix_cpu_ms"] * slowdown,
                             "transfer_ms": frame["bytes"] * 8 / (bandwidth * 1e3),
                             "server_ms": frame["suffix_cpu_ms"], "rtt_ms": rtt_ms})
        part["latency_ms"] = part[["device_ms", "transfer_ms", "server_ms", "rtt_ms"]].sum(axis=1)
        parts.append(part)
    table = pd.concat(parts, ignore_index=True)
    raw = frame["layer"][frame["role"] == RAW_ROLE]
    best_rows = []
    for bandwidth, rows in table.groupby("bandwidth_mbps", sort=False):
        winner = rows.loc[rows["latency_ms"].idxmin()]
        raw_ms = float(rows["latency_ms"][rows["layer"].isin(raw)].iloc[0]) if len(raw) \
            else float("nan")
        best_rows.append({"bandwidth_mbps": bandwidth, "best_layer": winner["layer"],
                          "latency_ms": winner["latency_ms"], "raw_image_ms": raw_ms,
                          "speedup_vs_raw": raw_ms / winner["latency_ms"]})
    compute = frame["prefix_cpu_ms"] * slowdown + frame["suffix_cpu_ms"]
    break_even = pd.DataFrame({"layer": frame["layer"], "bytes": frame["bytes"],
                               "compute_ms": compute,
                               "wins_below_mbps": _wins_below(frame["bytes"], compute, raw.index)})
    return SplitLatency(table, pd.DataFrame(best_rows), break_even, slowdown, rtt_ms)


def _wins_below(sent: pd.Series, compute: pd.Series, raw_index) -> np.ndarray:
    """The bandwidth (Mbps) below which each split is faster than sending the raw image.

    ``compute + sent * 8 / b < compute_raw + raw * 8 / b`` holds for ``b`` below
    ``(raw - sent) * 8 / (compute - compute_raw) / 1e3`` when the split sends less and computes
    more; inf (always) when it also computes less; 0 (never) when it sends as much or more and
    computes no less; NaN when it sends more but computes less (it wins above a bandwidth).
    """
    if not len(raw_index):
        return np.full(len(sent), np.nan)
    saved_bits = (sent[raw_index[0]] - sent.to_numpy(dtype=float)) * 8
    extra_ms = compute.to_numpy(dtype=float) - compute[raw_index[0]]
    with np.errstate(divide="ignore", invalid="ignore"):
        limit = np.where(extra_ms > 0, saved_bits / (extra_ms * 1e3), np.inf)
    limit = np.where(saved_bits > 0, np.maximum(limit, 0.0),
                     np.where(extra_ms < 0, np.where(saved_bits == 0, np.inf, np.nan), 0.0))
    limit[raw_index[0]] = np.nan  # the raw image itself
    return limit


# --- the bottleneck


def bottleneck_model(model, at: str, filters: int, *, init_images: np.ndarray | None = None,
                     seed: int = 0):
    """A copy of ``model`` with a 1x1-convolution bottleneck of ``filters`` channels after ``at``.

    The device side compresses (``bottleneck_encode``: 1x1 conv to ``filters`` channels, linear),
    the server side restores (``bottleneck_decode``: 1x1 conv back to the original channels,
    ReLU); every other layer keeps its trained weights (copied; ``model`` is not changed). The
    result is one flat functional model (a nested ``backbone`` is expanded).

    Args:
        model: a chain-shaped ``keras.Model`` or a ``.keras`` path.
        at: a layer with a 4-D output (H, W, C), not the last one, e.g. ``"pool2"``.
        filters: channels at the split, 1 to C.
        init_images: uint8 images whose activations at ``at`` initialise the bottleneck to
            their top principal components (encode projects, decode restores the mean and the
            projection), a good start for short fine-tuning; None: random (seeded).
        seed: seeds the random initialisation.

    Returns:
        A ``keras.Model`` whose ``bottleneck_encode`` output has ``filters`` channels.

    Raises:
        ValueError: for an unknown layer (the message lists the candidates), a layer without a
            channel axis, or ``filters`` out of range.
    """
    import keras

    chain = _Chain(_load(model))
    chain.check_layer(at, "at", allow_ends=False)
    shape = chain.shapes[at]
    if len(shape) != 3:
        raise ValueError(f"at must name a layer with an (H, W, C) output for a 1x1 bottleneck, "
                         f"received: {at!r} with output shape {shape}")
    check_int("filters", filters, minimum=1)
    if filters > shape[-1]:
        raise ValueError(f"filters must be <= {shape[-1]} (the channels at {at}), "
                         f"received: {filters}")
    check_int("seed", seed, minimum=0)
    keras.utils.set_random_seed(seed)
    built = chain.build(after=at, filters=filters)
    if init_images is not None:
        images = _check_images(init_images, chain.input_shape)
        activations = keras.Model(built.inputs[0], built.get_layer(at).output).predict(
            images, batch_size=256, verbose=0)
        _pca_init(built, activations.reshape(-1, shape[-1]), filters, seed)
    return built


def _pca_init(model, values: np.ndarray, filters: int, seed: int) -> None:
    """Sets encode/decode to project on / restore from the top principal components."""
    rng = np.random.default_rng(seed)
    if len(values) > 20000:  # positions x images: a sample is plenty for a C x C covariance
        values = values[rng.choice(len(values), 20000, replace=False)]
    mean = values.mean(axis=0)
    _, _, components = np.linalg.svd(values - mean, full_matrices=False)
    if len(components) < filters:
        raise ValueError(f"init_images must give at least {filters} activation vectors for a "
                         f"PCA start, received: {len(values)}")
    basis = components[:filters].T.astype(np.float32)  # (C, k)
    model.get_layer(ENCODE).set_weights([basis[None, None], -(mean @ basis).astype(np.float32)])
    model.get_layer(DECODE).set_weights([basis.T[None, None], mean.astype(np.float32)])


@dataclasses.dataclass
class BottleneckStudy:
    """The result of :func:`bottleneck_study`.

    Attributes:
        table: one row per filter count: ``filters``, ``split_shape``, ``bytes_float32`` and
            ``bytes_uint8`` sent per image, ``fraction_of_raw`` (uint8 bytes over the raw uint8
            image), ``accuracy`` (float32 sent), ``accuracy_uint8`` (quantised sent),
            ``drop_vs_reference`` (against ``accuracy_finetuned`` of the reference) and
            ``train_seconds``.
        reference: the unmodified model split at the same layer: ``filters`` (its channels),
            ``bytes_float32``, ``bytes_uint8``, ``fraction_of_raw``, ``accuracy`` and
            ``accuracy_uint8`` as trained, and ``accuracy_finetuned``: after the same
            fine-tuning as the bottlenecks get (without one), so that extra training is not
            mistaken for an effect of the bottleneck.
        at: the split layer; split: the evaluated split of the data; raw_bytes: one raw image.
    """

    table: pd.DataFrame
    reference: dict
    at: str
    split: str
    raw_bytes: int

    def compare_published(self) -> pd.DataFrame:
        """Ours next to the published CIFAR-10 table, one row per filter count of either.

        Returns:
            Columns ``filters``, ``published_accuracy``, ``published_fraction_of_raw``,
            ``accuracy``, ``accuracy_uint8``, ``fraction_of_raw`` (NaN where one side did not
            try that count). The data differ (ours: the workbench's data; theirs: CIFAR-10), so
            compare the shape: how fast accuracy falls as filters shrink.
        """
        published = published_cifar10().rename(columns={
            "accuracy": "published_accuracy", "fraction_of_raw": "published_fraction_of_raw"})
        ours = self.table[["filters", "accuracy", "accuracy_uint8", "fraction_of_raw"]]
        return published.merge(ours, on="filters", how="outer").sort_values("filters") \
            .reset_index(drop=True)

    def plot(self, ax=None):
        """Accuracy against filters, bytes sent on a second axis, the published curve dashed."""
        from workbench import plots

        return plots.bottleneck_accuracy(self.table, reference=self.reference,
                                         published=published_cifar10(), ax=ax,
                                         title=f"Bottleneck at {self.at}: accuracy ({self.split})"
                                               " against filters kept")


def bottleneck_study(model, data, *, at: str, filters: Sequence[int] = (1, 2, 4, 8, 16, 32),
                     epochs: int = 2, batch_size: int = 32, base_lr: float = 1e-3,
                     rest_lr_mult: float = 0.1, init: str = "pca", image_size: int | None = None,
                     split: str = "test", seed: int = 0, progress: bool = True
                     ) -> BottleneckStudy:
    """Inserts a bottleneck of each size at ``at``, fine-tunes it, and measures accuracy.

    For each ``k`` in ``filters``: :func:`bottleneck_model` (PCA start by default), then
    training on the train split with the workbench's solver pieces: Adam with a cosine schedule
    (``SolverConfig``), Caffe-style ``lr_mult`` (the bottleneck at 1, every other layer at
    ``rest_lr_mult``; 0 freezes them), batch norm in inference mode, seeded batches. Accuracy
    is measured on ``split`` twice, through the device/server halves: with float32 activations
    sent and with uint8-quantised ones. The unmodified model is measured the same way, as
    trained and after the same fine-tuning without a bottleneck (the fair reference: the rest of
    the network trains too, which alone can raise accuracy).

    Args:
        model: the trained chain-shaped classifier, or its ``.keras`` path.
        data: a split directory (see ``workbench split``) or a ``SplitData``.
        at: the split layer, e.g. ``"pool2"``.
        filters: bottleneck sizes to try, each 1 to the channels at ``at``.
        epochs: fine-tuning epochs per size.
        batch_size: images per step.
        base_lr: Adam's peak learning rate.
        rest_lr_mult: learning-rate multiplier of the pretrained layers.
        init: ``"pca"`` (start from the principal components of the training activations) or
            ``"random"``.
        image_size: side of the images; default the model's input size (must match it).
        split: ``"test"`` or ``"val"``.
        seed: seeds initialisation, batch order and dropout.
        progress: show a progress bar (also while decoding the images).

    Returns:
        A :class:`BottleneckStudy`.

    Raises:
        ValueError: for an invalid option, an unknown layer, or a split the data lacks.
    """
    import keras

    from workbench._progress import progress as progress_bar
    from workbench.data import pipeline
    from workbench.training.solver import SolverConfig
    from workbench.data.splitdir import SplitData, load_splits

    model = _load(model)
    chain = _Chain(model)
    chain.check_layer(at, "at", allow_ends=False)
    if isinstance(filters, (int, str)) or not len(filters):
        raise ValueError(f"filters must be a non-empty list of integers, received: {filters!r}")
    filters = sorted({check_int("filters", k, minimum=1) for k in filters})
    check_int("epochs", epochs, minimum=1)
    check_int("batch_size", batch_size, minimum=1)
    check_number("rest_lr_mult", rest_lr_mult, minimum=0.0)
    check_choice("init", init, INITS)
    check_choice("split", split, ("test", "val"))
    check_int("seed", seed, minimum=0)
    size = chain.input_shape[0]
    if image_size is not None and check_int("image_size", image_size, minimum=1) != size:
        raise ValueError(f"image_size must match the model's input size {size}, "
                         f"received: {image_size}")
    solver = SolverConfig(optimizer="adam", base_lr=base_lr, epochs=epochs,
                          batch_size=batch_size, lr_policy="cosine", weight_decay=0.0)
    if not isinstance(data, SplitData):
        if not isinstance(data, (str, os.PathLike)):
            raise ValueError(f"data must be a split directory or SplitData, received: "
                             f"{type(data).__name__}")
        data = load_splits(Path(data), image_size=size, progress=progress)
    if split not in data.images:
        raise ValueError(f"split must be a split of the data ({', '.join(data.images)}), "
                         f"received: {split!r}")
    train_x, train_y = data.images["train"], data.labels["train"]
    test_x, test_y = data.images[split], data.labels[split]
    if tuple(train_x.shape[1:]) != chain.input_shape:
        raise ValueError(f"data images must be {chain.input_shape}, received: {train_x.shape[1:]}")

    shape = chain.shapes[at]
    raw_bytes = math.prod(chain.input_shape)
    train = pipeline.Batches(train_x, train_y, batch_size=min(batch_size, len(train_y)),
                             seed=seed, drop_remainder=True)
    fine_tune = functools.partial(_fine_tune, train=train, solver=solver,
                                  rest_lr_mult=rest_lr_mult, seed=seed)
    accuracy, accuracy_uint8 = _split_accuracy(chain.build(), at, test_x, test_y, batch_size)
    reference = {"filters": int(shape[-1]), "bytes_float32": activation_bytes(shape, "float32"),
                 "bytes_uint8": activation_bytes(shape, "uint8"),
                 "fraction_of_raw": activation_bytes(shape, "uint8") / raw_bytes,
                 "accuracy": accuracy, "accuracy_uint8": accuracy_uint8}
    if rest_lr_mult > 0:  # the same fine-tuning without a bottleneck: the fair comparison
        keras.utils.set_random_seed(seed)
        control = fine_tune(chain.build(), rules={})
        reference["accuracy_finetuned"] = _split_accuracy(control, at, test_x, test_y,
                                                          batch_size)[0]
    else:
        reference["accuracy_finetuned"] = accuracy
    init_images = train_x[np.random.default_rng(seed).permutation(len(train_x))[:512]] \
        if init == "pca" else None
    rows = []
    for k in (progress_bar(filters, desc=f"bottleneck at {at}") if progress else filters):
        started = time.monotonic()
        bottlenecked = fine_tune(bottleneck_model(model, at, k, init_images=init_images,
                                                  seed=seed), rules={"bottleneck_*": 1.0})
        seconds = time.monotonic() - started
        split_shape = (*shape[:-1], k)
        accuracy, accuracy_uint8 = _split_accuracy(bottlenecked, ENCODE, test_x, test_y,
                                                   batch_size)
        rows.append({"filters": k, "split_shape": "x".join(map(str, split_shape)),
                     "bytes_float32": activation_bytes(split_shape, "float32"),
                     "bytes_uint8": activation_bytes(split_shape, "uint8"),
                     "fraction_of_raw": activation_bytes(split_shape, "uint8") / raw_bytes,
                     "accuracy": accuracy, "accuracy_uint8": accuracy_uint8,
                     "drop_vs_reference": reference["accuracy_finetuned"] - accuracy,
                     "train_seconds": round(seconds, 2)})
    return BottleneckStudy(pd.DataFrame(rows), reference, at, split, raw_bytes)


def _fine_tune(model, *, rules: dict, train, solver, rest_lr_mult: float, seed: int):
    """Trains ``model`` in place as one ``finetune`` stage; returns it.

    Batch norm stays in inference mode; layers matching ``rules`` get their multiplier, the
    others ``rest_lr_mult`` (0 freezes them).
    """
    from workbench.training import callbacks
    from workbench.training.recipes import Stage
    from workbench.training.train import compile_stage

    stage = Stage("bottleneck", 1.0, rules, rest_lr_mult)
    compile_stage(model, stage, None, solver, train_bn=False,
                   total_steps=solver.epochs * train.steps_per_epoch,
                   num_classes=int(model.output_shape[-1]))
    model.fit(train.for_keras(), steps_per_epoch=train.steps_per_epoch, epochs=solver.epochs,
              callbacks=[callbacks.ReseedRandomLayers(seed)], shuffle=False, verbose=0)
    return model


def _split_accuracy(flat, at: str, images, labels, batch_size: int) -> tuple[float, float]:
    """Top-1 accuracy through the device/server halves: float32 sent, and uint8-quantised."""
    device, server = _split(flat, at)
    activations = device.predict(images, batch_size=batch_size, verbose=0)
    results = []
    for sent in (activations, quantize_roundtrip(activations)):
        predicted = server.predict(sent, batch_size=batch_size, verbose=0).argmax(axis=-1)
        results.append(float(np.mean(predicted == np.asarray(labels))))
    return results[0], results[1]
