"""What each split of a CNN costs: bytes sent, device and server compute, end-to-end latency.

Where to split a network between a device and a server (see
:mod:`workbench.studies.split_chain`) trades device compute against bytes sent: the raw image is
small but leaves all the work to the server; early activations are often *larger* than the
image; late ones are small but cost the device most of the network.

* :func:`profile_splits`: bytes sent per image and device / server compute time per split.
* :func:`split_latency`: end-to-end latency per split and bandwidth, and the best split.

Assumption, stated in every result: device and server are timed on this same CPU, so the device
time is the measured prefix time multiplied by ``device_slowdown`` (default 10, a phone CPU
against a server); the server time is this CPU's, not a GPU's (a GPU was not measured here).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from workbench import plots
from workbench._checks import UsageError, check_choice, check_int, check_number
from workbench._io import write_outputs
from workbench.studies.split_chain import Chain, as_model, check_images, split_functional

RAW_ROLE = "raw image (server runs all)"  # the profile row of sending the image itself

DTYPES = ("float32", "float16", "uint8")
_ITEMSIZE = {"float32": 4, "float16": 2, "uint8": 1}
QUANT_HEADER_BYTES = 8  # a uint8-quantised tensor also sends its offset and scale (2 x float32)


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
        raise UsageError(f"shape must hold positive sizes, received: {tuple(shape)!r}")
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
        raise UsageError(f"activations must have a batch axis and values, received shape "
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
        figure_: the Figure :meth:`plot` drew last (set by it, like scikit-learn's Displays).
        ax_: the axes of its bars.
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
        """Bytes sent per split (bars) and device / server time (lines); returns the Figure.

        Keeps the Figure and axes in ``figure_`` and ``ax_``.
        """
        figure = self._draw(ax)
        self.figure_, self.ax_ = figure, ax if ax is not None else figure.axes[0]
        return figure

    def save(self, folder: str | Path, *, prefix: str = "") -> Path:
        """Writes ``profile.csv`` (the table) and ``profile.png`` (a fresh :meth:`plot`).

        Each file is written atomically.

        Args:
            folder: the folder (created if missing).
            prefix: put before each file name, e.g. ``"bottleneck_"``.

        Returns:
            ``folder`` as a Path.

        Raises:
            ValueError: ``folder`` is not a path or ``prefix`` holds a path separator.
        """
        return write_outputs(folder, tables={"profile.csv": self.table},
                             figures={"profile.png": self._draw(None)}, prefix=prefix)

    def _draw(self, ax):
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
    model = as_model(model)
    chain = Chain(model)
    check_int("repeats", repeats, minimum=1)
    check_int("warmup", warmup, minimum=0)
    check_choice("dtype", dtype, DTYPES)
    device_slowdown = check_number("device_slowdown", device_slowdown, minimum=0.0,
                                   exclusive_minimum=True)
    images = check_images(images, chain.input_shape)
    if layers is None:
        layers = chain.candidates()
    if isinstance(layers, str) or not len(layers):
        raise UsageError(f"layers must be a non-empty list of layer names, received: {layers!r}")
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
            device, server = split_functional(flat, name)
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
        figure_: the Figure :meth:`plot` drew last (set by it, like scikit-learn's Displays).
        ax_: its axes.
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
        """Latency against split layer, one line per bandwidth, best marked; returns the Figure.

        Keeps the Figure and axes in ``figure_`` and ``ax_``.
        """
        figure = self._draw(ax)
        self.figure_, self.ax_ = figure, ax if ax is not None else figure.axes[0]
        return figure

    def save(self, folder: str | Path, *, prefix: str = "") -> Path:
        """Writes ``latency.csv`` (:attr:`table`), ``best_split.csv`` (:attr:`best`),
        ``break_even.csv`` (:attr:`break_even`) and ``latency.png`` (a fresh :meth:`plot`).

        Each file is written atomically.

        Args:
            folder: the folder (created if missing).
            prefix: put before each file name, e.g. ``"bottleneck_"``.

        Returns:
            ``folder`` as a Path.

        Raises:
            ValueError: ``folder`` is not a path or ``prefix`` holds a path separator.
        """
        return write_outputs(folder, tables={"latency.csv": self.table,
                                             "best_split.csv": self.best,
                                             "break_even.csv": self.break_even},
                             figures={"latency.png": self._draw(None)}, prefix=prefix)

    def _draw(self, ax):
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
        raise UsageError(f"profile must be a SplitProfile (from profile_splits), received: "
                         f"{type(profile).__name__}")
    if isinstance(bandwidths_mbps, (int, float)) or not len(bandwidths_mbps):
        raise UsageError(f"bandwidths_mbps must be a non-empty list, received: "
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


