"""Export a run's model for serving and phones: LiteRT (TFLite), SavedModel or ONNX, checked.

:func:`export` converts a run directory's ``best.keras`` (or ``model.keras``) and writes the
result under ``<run_dir>/export/`` with a JSON sidecar next to it (``model.tflite`` and
``model.tflite.json``), so the labels and the preprocessing travel with the file:

========================  =====================================================================
``model.tflite``          LiteRT flatbuffer, float32 (``model_float16.tflite``,
                          ``model_int8.tflite``, ``model_int8_dynamic.tflite`` quantized;
                          ``model_final*`` from ``model.keras``)
``saved_model/``          a TensorFlow SavedModel for TF Serving (endpoint ``serve``)
``model.onnx``            ONNX, through tf2onnx (as Keras's own exporter)
``<name>.json``           the sidecar: labels, input size and dtype, value range (raw 0-255 RGB,
                          the model scales its input itself), resize mode, backbone, format,
                          quantization, the source ``.keras`` file with its sha256, agreement,
                          and the run's ``temperature`` (the file outputs the raw softmax;
                          ``Classifier`` calibrates it: ``workbench.calibration``)
========================  =====================================================================

Every export is checked before it is put in place: the exported model and the Keras model
classify the run's test split (at most ``max_images`` images, decoded exactly as in training),
and top-1 agreement and the largest probability difference are recorded. A float32 export must
agree on at least 99% of the images with probabilities within 1e-3, or :class:`ExportCheckFailed`
is raised and no file is left at the export's path; quantized exports only report the numbers.

**The fast runtime.** :func:`export_fast` (what prediction and evaluation make on first use)
writes both ``model.tflite`` and ``model.onnx``, checks both against one pass of the Keras model,
times one image through each on this machine (interleaved turns, :func:`runtime.time_turns`) and
records the faster in ``model.tflite.json`` under ``"runtime"``: ``chosen``, ``fallback``, the
p50 of each in ms, in how many turns ONNX Runtime was faster, the threads and the CPU it was
measured on. ONNX Runtime must be clearly faster (3% on the p50 and 3/4 of the turns, as for
the quantized models below); LiteRT keeps near-ties. :func:`load_fast` loads the chosen
runtime, the other one when the chosen one fails to load, and re-times both when it runs on
another CPU than the one that chose.

**Quantized, when it costs nothing.** ``export_fast(quantize="auto")`` (what ``workbench export``
does by default) also makes ``model_float16.tflite``, ``model_int8_dynamic.tflite`` (int8
weights, float activations) and ``model_int8.tflite`` (weights and activations int8, calibrated
on training images), measures each on the validation split and times each together with the
float32 runtime, and records them under ``["runtime"]["quantized"]``: the float32 reference, each
candidate's top-1, ECE, probability differences, p50, in how many of the interleaved turns it
was faster than float32, and verdict, the ``chosen`` one (or None) and the rule
(:data:`QUANTIZED_RULE`). Faster means a p50 at least ``QUANTIZED_MARGIN`` (10%) below float32's
*and* faster in at least ``WIN_TURNS`` (3/4) of the turns (all of them when there are fewer
than 4): XNNPACK, LiteRT's CPU engine, dequantizes float16 weights to float32 when it loads a
model, so on a CPU without float16 arithmetic (x86) float16 runs the float32 kernels and cannot
be faster, yet with a 3% margin on the p50 alone a loaded CPU let it win. The bound on the
probabilities is the rise of the expected calibration error of the *calibrated* probabilities
(the run's temperature, fitted on float32, applied to both): the promise of calibration is that
0.9 means right nine times in ten, and that is what the ECE measures; a largest per-image
difference would be set by one borderline image (and is at least 1/256 for an int8 output), so
it is recorded but does not decide.
:func:`load_fast` loads the chosen quantized file when the runtime is not named and the CPU is
the one that measured; float32 stays the fallback. ``quantize=None`` records no candidate, so an
export made with ``workbench export --quantize none`` is never replaced by a quantized model.

Files are written to a temporary name and renamed; the old sidecar is removed before the new
file is renamed in and the new sidecar written last, so a killed export never leaves a file that
a sidecar vouches for. :func:`find_export` returns an export only while its sidecar matches the
run's current ``.keras`` file (by sha256), so retraining makes an export stale.

This module imports TensorFlow only inside :func:`export` and :func:`export_fast`:
:func:`find_export`, :func:`read_sidecar` and :func:`load_fast` are what the no-TensorFlow fast
path of ``workbench.deploy.predict`` uses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import io
import json
import statistics
import tempfile
import warnings
from pathlib import Path

import numpy as np

from workbench._compat import tf2onnx_on_numpy2
from workbench._checks import MissingPath, UsageError, check_choice, check_int, deprecated
from workbench._io import atomic_path, remove, remove_stale_temporaries, write_json
from workbench.deploy import runtime
from workbench.deploy.runtime import RUNTIMES, runner
from workbench.runs import MODELS, RunDir

FORMATS = ("litert", "saved_model", "onnx")
QUANTIZATIONS = (None, "float16", "int8", "int8_dynamic")
# What export_fast(quantize="auto") tries against float32, and the rule a candidate must pass.
QUANTIZED_CANDIDATES = ("float16", "int8_dynamic", "int8")
MAX_TOP1_DROP = 0.5     # points of validation top-1 a quantized model may lose, at most
MAX_ECE_RISE = 0.01     # rise of the calibrated probabilities' ECE on validation, at most
# A quantized model replaces float32 only when its p50 is this much lower, and lower in at least
# WIN_TURNS of the interleaved turns (ONNX Runtime replaces LiteRT by the same count of turns):
# XNNPACK runs a float16-weights model as float32 on x86
# (the weights are dequantized when it loads), so a float16 model that "wins" by a few percent
# on a shared CPU won by noise; 3% and the p50 alone let it win.
QUANTIZED_MARGIN = 0.10
WIN_TURNS = 0.75
QUANTIZED_RULE = (f"the fastest candidate whose p50 is at least {QUANTIZED_MARGIN:.0%} below "
                  f"the float32 runtime's and that is faster in at least "
                  f"{WIN_TURNS:.0%} of the turns they were timed in (interleaved), "
                  f"loses at most {MAX_TOP1_DROP} points of validation top-1 and raises the "
                  f"ECE of the calibrated probabilities by at most {MAX_ECE_RISE}; else float32")
MIN_AGREEMENT = 0.99   # float32 exports: top-1 agreement with the Keras model, at least
MAX_PROB_DIFF = 1e-3   # float32 exports: largest |probability difference|, at most
# ONNX Runtime replaces LiteRT only when its p50 is at least this much lower: LiteRT starts
# faster (0.31 s against 0.45 s to a first prediction) and timings on a shared CPU are noisy.
ONNX_MARGIN = 0.03
INPUT = {"dtype": "float32", "layout": "NHWC", "channels": "RGB", "value_range": [0, 255],
         "preprocessing": "none: feed raw 0-255 pixels; the model scales them itself"}


class ExportError(RuntimeError):
    """A model that could not be exported (the converter failed, or no TensorFlow backend)."""


class ExportCheckFailed(ExportError):
    """A float32 export whose predictions differ from the Keras model's; it was removed.

    Attributes:
        agreement: the numbers measured (see :class:`ExportResult`).
    """

    def __init__(self, message: str, agreement: dict):
        super().__init__(message)
        self.agreement = agreement


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What :func:`export` wrote.

    Attributes:
        path: the exported file (a folder for ``saved_model``).
        sidecar_path: the JSON next to it.
        agreement: ``None`` when not checked, else a dict: ``split``, ``images``,
            ``top1_agreement`` (fraction of images with the same top-1 class as the Keras model),
            ``max_abs_diff`` and ``mean_abs_diff`` (of the probabilities), ``required`` (the
            float32 thresholds, or ``None`` for quantized exports) and ``passed``.
        info: the sidecar's contents.
    """

    path: Path
    sidecar_path: Path
    agreement: dict | None
    info: dict

    def format(self) -> str:
        """A few lines for a terminal: the files and the agreement."""
        size = _size(self.path)
        lines = [f"Wrote {self.path} ({size / 1e6:.2f} MB) and {self.sidecar_path.name}"]
        a = self.agreement
        if a is None:
            lines.append("agreement: not checked")
        else:
            verdict = "reported only (quantized)" if a["passed"] is None else "passed"
            lines.append(f"agreement with the Keras model on {a['images']} {a['split']} images: "
                         f"top-1 {a['top1_agreement']:.2%}, max |dp| {a['max_abs_diff']:.2e} "
                         f"({verdict})")
        record = self.info.get("runtime")
        if record:
            timed = ", ".join(f"{name} {ms:.2f} ms" for name, ms in record["p50_ms"].items())
            lines.append(f"runtime for prediction: {record['chosen']}"
                         f"{' (fallback ' + record['fallback'] + ')' if record['fallback'] else ''}"
                         f"{'; p50 of one image: ' + timed if timed else ''} "
                         f"on {record['machine']}")
            for name, reason in record.get("unavailable", {}).items():
                lines.append(f"{name}: not available: {reason}")
            if "quantized" in (record or {}):
                lines.extend(_quantized_lines(record["quantized"]))
        return "\n".join(lines) + "\n"


def __getattr__(name: str):
    """``QUANTIZED_TURNS``, the old name of :data:`WIN_TURNS`, still works for one release."""
    if name == "QUANTIZED_TURNS":
        deprecated("workbench.deploy.export.QUANTIZED_TURNS is deprecated and will be removed in "
                   "the next release: use WIN_TURNS (it decides the ONNX Runtime choice too)")
        return WIN_TURNS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _quantized_lines(record: dict) -> list[str]:
    """The quantized candidates and the choice, for a terminal."""
    if "float32" not in record:
        return [f"quantized: none chosen ({record.get('reason')})"]
    ref = record["float32"]
    lines = [f"quantized candidates on {record['images']} validation images (float32 "
             f"{ref['runtime']}: top-1 {ref['top1']:.2%}, ECE {ref['ece']:.3f}, "
             f"p50 {ref['p50_ms']:.2f} ms):"]
    for name, c in record["candidates"].items():
        if "top1" not in c:
            lines.append(f"  {name}: not available: {c['reason']}")
            continue
        failed = [word for word in ("faster", "accurate", "calibrated") if not c[word]]
        turns = f" (faster in {c['turns_faster']}/{record['turns']} turns)" \
            if "turns_faster" in c else ""  # recorded since the rule counts turns
        lines.append(f"  {name}: top-1 {c['top1']:.2%} ({-c['top1_drop_points']:+.2f} points), "
                     f"ECE {c['ece']:.3f} ({c['ece_rise']:+.3f}), p50 {c['p50_ms']:.2f} ms"
                     f"{turns}: "
                     f"{'accepted' if c['accepted'] else 'refused, not ' + ', '.join(failed)}")
    lines.append(f"quantized model for prediction: {record['chosen'] or 'none (float32)'}")
    return lines


def export_path(run_dir: str | Path, *, format: str = "litert", quantize: str | None = None,
                model: str = "best") -> Path:
    """Where :func:`export` writes: ``<run_dir>/export/model.tflite`` and so on."""
    check_choice("format", format, FORMATS)
    check_choice("quantize", quantize, QUANTIZATIONS)
    check_choice("model", model, MODELS)
    if quantize is not None and format != "litert":
        raise UsageError(f"quantize applies to format='litert' only, received: "
                         f"quantize={quantize!r} with format={format!r}")
    stem = "model" if model == "best" else "model_final"
    if format == "saved_model":
        name = "saved_model" if model == "best" else "saved_model_final"
    elif format == "onnx":
        name = f"{stem}.onnx"
    else:
        name = f"{stem}{'_' + quantize if quantize else ''}.tflite"
    return RunDir(run_dir).export_dir / name


def sidecar_path(path: str | Path) -> Path:
    """The sidecar JSON of an exported file: its name plus ``.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def read_sidecar(path: str | Path) -> dict:
    """The sidecar of an exported file (``model.tflite`` -> ``model.tflite.json``).

    Raises:
        FileNotFoundError: when there is none.
    """
    side = sidecar_path(path)
    if not side.is_file():
        raise MissingPath(f"no sidecar {side.name} next to {str(path)!r}")
    return json.loads(side.read_text(encoding="utf-8"))


def find_export(run_dir: str | Path, *, format: str = "litert", quantize: str | None = None,
                model: str = "best") -> Path | None:
    """The path of an up-to-date export, or None when it is missing, incomplete or stale.

    Stale means the run's ``.keras`` file is no longer the one the export was made from
    (another file name, or another sha256; the hash is skipped while size and modification
    time are unchanged). Imports no TensorFlow.
    """
    path = export_path(run_dir, format=format, quantize=quantize, model=model)
    try:
        info = read_sidecar(path)
        source = RunDir(run_dir).model_path(model)
    except (FileNotFoundError, ValueError):  # ValueError: a sidecar that is not JSON
        return None
    if not path.exists() or info.get("bytes") != _size(path) or \
            info.get("source_model") != source.name:
        return None
    stat = source.stat()
    if info.get("source_bytes") == stat.st_size and info.get("source_mtime_ns") == stat.st_mtime_ns:
        return path
    return path if info.get("source_sha256") == _sha256(source) else None


def export(run_dir: str | Path, *, format: str = "litert", quantize: str | None = None,
           model: str = "best", check: bool = True, max_images: int = 1000,
           representative_images: int = 200, seed: int = 0) -> ExportResult:
    """Exports a run's model to ``<run_dir>/export/`` and checks it against the Keras model.

    Args:
        run_dir: a run directory written by ``finetune``.
        format: ``"litert"`` (a TFLite flatbuffer for phones and fast CPU serving),
            ``"saved_model"`` (TF Serving) or ``"onnx"``.
        quantize: LiteRT only: ``None`` (float32), ``"float16"`` (float16 weights, half the
            size) or ``"int8"`` (full integer quantization of weights and activations,
            calibrated on training images, with float32 input and output so it is used the
            same way; ops without an int8 kernel stay float) or ``"int8_dynamic"`` (int8
            weights, float activations: dynamic-range quantization, no calibration).
        model: ``"best"`` (``best.keras``, or ``model.keras`` when there is none) or
            ``"final"`` (``model.keras``).
        check: compare the export with the Keras model on the run's test split (the
            validation split when there is no test split).
        max_images: at most this many images are compared (evenly spaced through the split).
        representative_images: training images used to calibrate ``int8``.
        seed: which training images calibrate ``int8``.

    Returns:
        An :class:`ExportResult`.

    Raises:
        ExportCheckFailed: a float32 export agreed on fewer than 99% of the images or differed
            by more than 1e-3 in a probability; nothing is left at its path.
        ExportError: the converter cannot handle the model, or Keras does not run on
            TensorFlow.
        FileNotFoundError: ``run_dir`` is not a run directory, or (with ``check``) its split
            folder is gone.
        RunUnfinished: the run has not finished (interrupted or diverged).
    """
    path = export_path(run_dir, format=format, quantize=quantize, model=model)
    check_int("max_images", max_images, minimum=1)
    check_int("representative_images", representative_images, minimum=1)
    check_int("seed", seed, minimum=0)
    source = _Source(run_dir, model, check=check, data=check or quantize == "int8",
                     max_images=max_images)
    return _export(source, path, format=format, quantize=quantize,
                   representative_images=representative_images, seed=seed)


def export_fast(run_dir: str | Path, *, model: str = "best", check: bool = True,
                max_images: int = 1000, threads: int = 2,
                quantize: str | None = None) -> ExportResult:
    """Exports LiteRT and ONNX (float32), checks both, and records the faster one here.

    Both are checked against one pass of the Keras model over the test split (as
    :func:`export` does), then one image is timed through each on this machine with
    ``threads`` threads, in interleaved turns (:func:`workbench.deploy.runtime.time_turns`).
    ONNX Runtime is chosen when its p50 is at least ``ONNX_MARGIN`` (3%) below LiteRT's and
    it was faster in at least 3/4 of the interleaved turns;
    the other runtime stays as the fallback. An ONNX export that fails (the converter, or
    its check) leaves LiteRT chosen without a fallback, and says why in the record.

    Args:
        run_dir: a run directory written by ``finetune``.
        model: ``"best"`` or ``"final"``.
        check: compare both exports with the Keras model (see :func:`export`).
        max_images: at most this many test images are compared.
        threads: CPU threads of each runtime while timing (as prediction will use them).
        quantize: ``None``: float32 only, and no quantized model is ever chosen for this
            export; ``"auto"``: also make, measure and time the quantized candidates and
            record them, choosing one by :data:`QUANTIZED_RULE` (needs ``check`` and a
            validation split; see the module's docstring).

    Returns:
        The LiteRT :class:`ExportResult`; its ``info["runtime"]`` (also in
        ``model.tflite.json``) is the choice: ``chosen``, ``fallback``, ``p50_ms``,
        ``threads``, ``machine``, ``unavailable`` (runtime: reason) when ONNX failed, and
        with ``quantize="auto"``, ``quantized`` (:func:`choose_quantized`).

    Raises:
        ExportError, ExportCheckFailed, FileNotFoundError: as :func:`export`, for LiteRT.
    """
    check_choice("model", model, MODELS)
    check_int("max_images", max_images, minimum=1)
    check_int("threads", threads, minimum=1)
    check_choice("quantize", quantize, (None, "auto"))
    if quantize == "auto" and not check:
        raise UsageError("quantize='auto' measures each candidate on the validation split and "
                         "needs check=True, received: check=False (use quantize=None)")
    source = _Source(run_dir, model, check=check, data=check, max_images=max_images)
    results, unavailable = {}, {}
    for format in RUNTIMES:
        try:
            results[format] = _export(source, export_path(run_dir, format=format, model=model),
                                      format=format)
        except ExportError as error:
            if format == "litert":
                raise
            unavailable[format] = str(error)
    loaded = {format: runtime.load_runtime(result.path, format, threads=threads)
              for format, result in results.items()}
    record = choose_runtime(loaded, source.side_px, threads=threads)
    if unavailable:
        record["unavailable"] = unavailable
    if quantize == "auto":
        record["quantized"] = choose_quantized(source, loaded[record["chosen"]],
                                               threads=threads)
    litert = results["litert"]
    info = {**litert.info, "runtime": record}
    write_json(litert.sidecar_path, info)
    return dataclasses.replace(litert, info=info)


def choose_runtime(models: dict, side: int, *, threads: int = 2) -> dict:
    """Times ``{runtime: model}`` on one image of ``side`` pixels; the record of the choice.

    Returns:
        ``{"chosen", "fallback", "p50_ms", "turns", "turns_faster", "threads", "machine",
        "rule"}``: ONNX Runtime is chosen over LiteRT only when its p50 is at least
        ``ONNX_MARGIN`` below LiteRT's and it was faster in at least ``WIN_TURNS`` of the
        interleaved turns (``turns_faster`` of ``turns``), so that a burst of load that fell on
        LiteRT's calls does not decide.
    """
    turns = runtime.time_turns(models, _timing_image(side)) if len(models) > 1 else {}
    p50 = runtime.p50_ms(turns) if turns else {}
    chosen = "litert" if "litert" in models else next(iter(models))
    record = {}
    if "onnx" in p50 and "litert" in p50:
        wins, count = _turns_faster(turns["onnx"], turns["litert"])
        record = {"turns": count, "turns_faster": {"onnx": wins}}
        if _clearly_faster(p50["onnx"], p50["litert"], (wins, count), ONNX_MARGIN):
            chosen = "onnx"
    others = [name for name in models if name != chosen]
    return {"chosen": chosen, "fallback": others[0] if others else None, "p50_ms": p50,
            **record, "threads": threads, "machine": runtime.machine(),
            "rule": f"onnx when its p50 is at least {ONNX_MARGIN:.0%} below litert's and it "
                    f"is faster in at least {WIN_TURNS:.0%} of the interleaved turns"}


def choose_quantized(source: _Source, float32, *, threads: int = 2) -> dict:
    """Makes, measures and times each quantized LiteRT candidate against ``float32`` (the
    chosen float32 runtime); the record of the choice (:data:`QUANTIZED_RULE`).

    Returns:
        ``{"chosen", "file", "rule", "split", "images", "turns", "float32", "candidates",
        "machine"}``:
        ``float32`` holds the runtime's ``top1``, ``ece`` and ``p50_ms``; each candidate its
        ``top1``, ``top1_drop_points``, ``ece``, ``ece_rise``, ``max_abs_diff`` and
        ``mean_abs_diff`` (calibrated probabilities against float32's), ``p50_ms``,
        ``turns_faster`` (of the record's ``turns``: the interleaved turns of
        :func:`runtime.time_turns`), ``faster``, ``accurate``, ``calibrated``, ``accepted``
        and ``bytes``; or ``accepted: False`` with ``reason`` when it could not be made.
    """
    record = {"chosen": None, "file": None, "rule": QUANTIZED_RULE, "machine": runtime.machine()}
    if "val" not in source.data.images or not len(source.data.images["val"]):
        return {**record, "reason": "the dataset has no validation split to measure on"}
    images, labels = source.data.images["val"], np.asarray(source.data.labels["val"])
    temperature = source.run.temperature(source.model)
    models, candidates = {}, {}
    for name in QUANTIZED_CANDIDATES:
        path = export_path(source.run_dir, quantize=name, model=source.model)
        try:
            _export(source, path, format="litert", quantize=name)
            models[name] = runtime.load_runtime(path, "litert", threads=threads)
        except Exception as error:  # a converter or kernel that cannot do it: not a candidate
            candidates[name] = {"accepted": False, "reason": f"{type(error).__name__}: "
                                f"{' '.join(str(error).split())[:300]}"}
    # Short turns, so that more of them fit in the same time (the rule counts turns); the rest
    # after each turn is for ONNX Runtime's spinning threads, so it is kept only when float32
    # runs on ONNX Runtime (every candidate is LiteRT, and each turn starts with an untimed call).
    turns = runtime.time_turns({"float32": float32, **models}, _timing_image(source.side_px),
                               block=2, settle=0.0 if float32.runtime == "litert"
                               else runtime.SETTLE_SECONDS)
    p50 = runtime.p50_ms(turns)
    reference = _scores(float32, images, labels, temperature)
    for name, network in models.items():
        candidates[name] = _judge(_scores(network, images, labels, temperature), reference,
                                  p50[name], p50["float32"],
                                  _turns_faster(turns[name], turns["float32"]))
        candidates[name]["bytes"] = _size(network.path)
    accepted = [name for name in QUANTIZED_CANDIDATES if candidates[name]["accepted"]]
    chosen = min(accepted, key=lambda name: candidates[name]["p50_ms"]) if accepted else None
    return {**record, "chosen": chosen, "split": "val", "images": int(len(images)),
            "file": export_path(source.run_dir, quantize=chosen, model=source.model).name
            if chosen else None,
            "turns": len(turns["float32"]),
            "float32": {"runtime": float32.runtime, "top1": reference["top1"],
                        "ece": reference["ece"], "p50_ms": p50["float32"]},
            "candidates": {name: candidates[name] for name in QUANTIZED_CANDIDATES}}


def _timing_image(side: int) -> np.ndarray:
    """The one image every runtime and candidate is timed on (seeded: the same each time)."""
    return np.random.default_rng(0).uniform(0, 255, (1, side, side, 3)).astype(np.float32)


def _scores(network, images: np.ndarray, labels: np.ndarray, temperature: float) -> dict:
    """Top-1 and ECE of ``network``'s calibrated probabilities on ``images``."""
    from workbench.calibration import apply_temperature, expected_calibration_error

    calibrated = apply_temperature(_batched(network, images), temperature)
    return {"top1": float(np.mean(np.argmax(calibrated, axis=1) == labels)),
            "ece": expected_calibration_error(calibrated, labels), "probabilities": calibrated}


def _turns_faster(candidate: list, float32: list) -> tuple[int, int]:
    """In how many of the turns (of :func:`runtime.time_turns`) the candidate's median call
    was faster than float32's, and of how many."""
    wins = sum(statistics.median(ours) < statistics.median(theirs)
               for ours, theirs in zip(candidate, float32))
    return wins, min(len(candidate), len(float32))


def _clearly_faster(p50: float, reference_p50: float, turns: tuple[int, int],
                    margin: float) -> bool:
    """Whether a p50 is at least ``margin`` below the reference's and the faster one won at
    least ``WIN_TURNS`` of the turns (``turns``: won, of how many)."""
    return p50 <= reference_p50 * (1 - margin) and turns[0] >= WIN_TURNS * turns[1]


def _judge(scores: dict, reference: dict, p50: float, float32_p50: float,
           turns: tuple[int, int]) -> dict:
    """A candidate's numbers against float32's, and whether it passes :data:`QUANTIZED_RULE`
    (``turns``: in how many turns it was faster, of how many)."""
    drop = (reference["top1"] - scores["top1"]) * 100
    rise = scores["ece"] - reference["ece"]
    diff = np.abs(scores["probabilities"] - reference["probabilities"])
    faster = _clearly_faster(p50, float32_p50, turns, QUANTIZED_MARGIN)
    verdict = {"faster": bool(faster), "accurate": bool(drop <= MAX_TOP1_DROP),
               "calibrated": bool(rise <= MAX_ECE_RISE)}
    return {"top1": round(scores["top1"], 6), "top1_drop_points": round(drop, 3),
            "ece": round(scores["ece"], 6), "ece_rise": round(rise, 6),
            "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "p50_ms": p50, "turns_faster": turns[0], **verdict,
            "accepted": all(verdict.values())}


def load_fast(run_dir: str | Path, *, model: str = "best", runtime_name: str | None = None,
              threads: int = 2):
    """The fast runtime of a run's up-to-date export, or None when there is no such export.

    Reads the choice that :func:`export_fast` recorded in ``model.tflite.json``: the chosen
    quantized model when one was chosen (``quantize="auto"``), ``runtime_name`` is None and
    this is the CPU that measured it (float32 when it fails to load, with a warning); else
    the chosen runtime loads first; when it fails to load (a missing package, a damaged
    file), the other one does, with a warning. On a CPU other than the one recorded, both are timed
    again (a second or less) and the faster is used, without writing anything. Imports no
    TensorFlow.

    Args:
        run_dir: a run directory.
        model: ``"best"`` or ``"final"``.
        runtime_name: ``"litert"`` or ``"onnx"`` to load that one or fail; None for the
            recorded choice (LiteRT when none was recorded) with the fallback.
        threads: CPU threads of the runtime.

    Returns:
        A :class:`~workbench.deploy.runtime.LiteRTModel` or
        :class:`~workbench.deploy.runtime.OnnxModel`, or None when the run has no
        up-to-date export of the runtimes asked for.

    Raises:
        ExportError: every export there is failed to load (each reason named).
    """
    check_choice("model", model, MODELS)
    check_choice("runtime_name", runtime_name, (None, *RUNTIMES))
    check_int("threads", threads, minimum=1)
    tflite = find_export(run_dir, model=model)
    record = (read_sidecar(tflite).get("runtime") or {}) if tflite is not None else {}
    order = [runtime_name] if runtime_name else \
        [record.get("chosen") or "litert", *(name for name in RUNTIMES
                                             if name != (record.get("chosen") or "litert"))]
    paths = {name: find_export(run_dir, format=name, model=model) for name in order}
    if not any(paths.values()):
        return None
    if runtime_name is None and record.get("machine") == runtime.machine():
        quantized = _load_quantized(run_dir, record.get("quantized") or {}, model, threads)
        if quantized is not None:
            return quantized
    loaded, failures = {}, []
    for name in order:
        if paths[name] is None:
            continue
        try:
            loaded[name] = runtime.load_runtime(paths[name], name, threads=threads)
        except Exception as error:  # an import error, a damaged file: the next one may load
            failures.append(f"{name}: {type(error).__name__}: {error}")
            continue
        if runtime_name or record.get("machine") in (None, runtime.machine()):
            break  # the choice holds here: no need to load the other one
    if not loaded:
        raise ExportError(f"no exported model of {run_dir} loads ({'; '.join(failures)})")
    if failures:
        warnings.warn(f"the {failures[0].split(':')[0]} export of {run_dir} does not load "
                      f"({'; '.join(failures)}); using {next(iter(loaded))} instead",
                      RuntimeWarning, stacklevel=2)
    if len(loaded) > 1:  # measured on another CPU: choose again, here
        side = loaded[next(iter(loaded))].input_shape[1]
        return loaded[choose_runtime(loaded, side, threads=threads)["chosen"]]
    return next(iter(loaded.values()))


def _load_quantized(run_dir, record: dict, model: str, threads: int):
    """The quantized model that :func:`choose_quantized` chose, if any is current and loads;
    None (float32 then) otherwise, with a warning when it is there but does not load."""
    path = find_export(run_dir, quantize=record["chosen"], model=model) \
        if record.get("chosen") in QUANTIZATIONS[1:] else None
    if path is None:
        return None
    try:
        return runtime.load_runtime(path, "litert", threads=threads)
    except Exception as error:  # a damaged file: float32 is the fallback
        warnings.warn(f"the chosen quantized export {path.name} of {run_dir} does not load "
                      f"({type(error).__name__}: {error}); using float32 instead",
                      RuntimeWarning, stacklevel=3)
        return None


class _Source:
    """A run's model, loaded once for one or several exports: the Keras model, the facts of its
    file, the images that check an export, and the Keras model's probabilities on them
    (computed once, on first use)."""

    def __init__(self, run_dir: str | Path, model: str, *, check: bool, data: bool,
                 max_images: int):
        self.run_dir = Path(run_dir)
        self.run = RunDir(self.run_dir)
        self.run.check_finished()  # an interrupted run's best.keras is not its result
        self.side_px = self.run.image_size
        self.source = self.run.model_path(model)
        self.model = model
        self.stat = self.source.stat()
        self.sha256 = _sha256(self.source)

        import keras

        if keras.backend.backend() != "tensorflow":
            raise ExportError(f"export needs Keras on TensorFlow (KERAS_BACKEND=tensorflow), "
                              f"received backend: {keras.backend.backend()!r}")
        from workbench.models import load_model

        self.keras_version = keras.__version__
        self.network = load_model(self.source)
        side = self.side_px
        self.network.predict_on_batch(np.zeros((1, side, side, 3), np.float32))  # ONNX needs it
        self.data = self.run.load_splits() if data else None  # decoded once
        self.images = _check_images(self.data, max_images, self.run_dir) if check else None
        self._expected = None
        self._serving = None

    def serving(self):
        """What the LiteRT and ONNX converters start from, traced once for both: a
        ``tf.Module`` holding only the model's variables, with ``serve``, its forward pass on
        float32 images of any batch size. Converting the Keras model itself
        (``TFLiteConverter.from_keras_model``, ``model.export(format="onnx")``) first walks
        every layer's attributes and traces each nested model's own signature: for the same
        flatbuffer, twice the time (MobileNetV3Small at 48 px: 12.5 s for both instead of
        26.5 s)."""
        if self._serving is None:
            import tensorflow as tf

            network, side = self.network, self.side_px
            module = tf.Module()
            module.kept_variables = [variable.value for variable in network.variables]
            module.serve = tf.function(
                lambda images: network(images, training=False),
                input_signature=[tf.TensorSpec((None, side, side, 3), tf.float32, "inputs")])
            module.serve.get_concrete_function()
            self._serving = module
        return self._serving

    def expected(self) -> np.ndarray:
        """The Keras model's probabilities on the check images."""
        if self._expected is None:
            self._expected = _batched(lambda x: self.network.predict_on_batch(x),
                                      self.images[1])
        return self._expected


def _export(source: _Source, path: Path, *, format: str, quantize: str | None = None,
            representative_images: int = 200, seed: int = 0) -> ExportResult:
    """Converts, checks and writes one export of ``source`` at ``path``, with its sidecar."""
    run, side_px = source.run, source.side_px
    side = sidecar_path(path)
    remove_stale_temporaries(path.parent)  # what killed exports left (not running ones)
    with atomic_path(path) as temporary:  # a file, or a folder for saved_model
        try:
            _convert(source, temporary, format=format, quantize=quantize,
                     count=representative_images, seed=seed)
        except Exception as error:  # the converters raise many types; name the model and why
            raise ExportError(f"the {format} converter cannot handle {source.source}"
                              f"{' with quantize=' + repr(quantize) if quantize else ''}: "
                              f"{type(error).__name__}: {' '.join(str(error).split())[:800]}"
                              ) from error
        agreement = None
        if source.images is not None:
            agreement = _agreement(source, runner(temporary, format), float32=quantize is None)
            if agreement["passed"] is False:
                remove(side)
                remove(path)
                raise ExportCheckFailed(
                    f"the {format} export of {source.source.name} disagrees with the Keras "
                    f"model on the {agreement['split']} split: top-1 agreement "
                    f"{agreement['top1_agreement']:.4f} (at least {MIN_AGREEMENT} required), "
                    f"max |probability difference| {agreement['max_abs_diff']:.2e} (at most "
                    f"{MAX_PROB_DIFF} allowed); the export was removed", agreement)
        info = {
            "format": format, "quantize": quantize, "file": path.name, "model": source.model,
            "labels": run.classes, "image_size": run.image_size,
            "resize_mode": run.resize_mode, "backbone": run.starting_point,
            "input": {**INPUT, "shape": [None, side_px, side_px, 3]},
            "output": "float32 softmax probabilities, one per label, in the order of labels",
            # the run's calibration travels with the file (workbench.calibration)
            "temperature": run.temperature(source.model),
            "calibration": "softmax(log(output) / temperature) gives calibrated probabilities",
            "source_model": source.source.name, "source_sha256": source.sha256,
            "source_bytes": source.stat.st_size, "source_mtime_ns": source.stat.st_mtime_ns,
            "bytes": _size(temporary), "agreement": agreement,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "keras_version": source.keras_version,
        }
        remove(side)  # no sidecar may vouch for a half-replaced file
    write_json(side, info)
    return ExportResult(path, side, agreement, info)


# --- conversion ----------------------------------------------------------------------------------

def _convert(source: _Source, target: Path, *, format: str, quantize, count: int,
             seed: int) -> None:
    """Writes ``source``'s model in ``format`` to ``target`` (a file, or a folder for
    saved_model)."""
    quiet = contextlib.redirect_stdout(io.StringIO())  # Keras prints the endpoints it saves
    if format == "saved_model":  # Keras's own, with its documented endpoint names
        with quiet:
            source.network.export(str(target), format="tf_saved_model", verbose=False)
        return
    serving = source.serving()
    if format == "onnx":
        tf2onnx = tf2onnx_on_numpy2()
        with quiet, warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # tf2onnx on NumPy 2
            tf2onnx.convert.from_function(serving.serve, serving.serve.input_signature,
                                          output_path=str(target))
        return
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="workbench-export-") as saved:
        tf.saved_model.save(serving, saved,
                            signatures={"serving_default": serving.serve.get_concrete_function()})
        converter = tf.lite.TFLiteConverter.from_saved_model(saved)
        if quantize is not None:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantize == "float16":
            converter.target_spec.supported_types = [tf.float16]
        if quantize == "int8":
            calibration = _representative(source.data, count, seed)
            converter.representative_dataset = lambda: ([image[None]] for image in calibration)
        with quiet, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
            flatbuffer = converter.convert()
    target.write_bytes(flatbuffer)


def _representative(data, count: int, seed: int) -> np.ndarray:
    """Up to ``count`` training images (float32, raw 0-255) that calibrate int8 ranges."""
    images = data.images["train"]
    chosen = np.random.default_rng(seed).permutation(len(images))[:count]
    return np.asarray(images[np.sort(chosen)], dtype=np.float32)


# --- the agreement check -------------------------------------------------------------------------

def _check_images(data, max_images: int, run_dir: Path) -> tuple[str, np.ndarray]:
    """Up to ``max_images`` images of the test split (the validation split without one),
    evenly spaced through it: the split is ordered by class, so its first images would check
    only the first classes."""
    for split in ("test", "val"):
        if split in data.images and len(data.images[split]):
            images = data.images[split]
            chosen = np.unique(np.linspace(0, len(images) - 1, min(max_images, len(images)))
                               .round().astype(int))
            return split, np.asarray(images[chosen])
    raise UsageError(f"check=True needs a test or validation split; the dataset of {run_dir} "
                     "has neither (use check=False)")


def _agreement(source: _Source, run, *, float32: bool) -> dict:
    """How the exported model ``run`` agrees with the Keras model on the check images."""
    split, pixels = source.images
    expected = source.expected()
    got = _batched(run, pixels)
    diff = np.abs(np.asarray(got, np.float64) - np.asarray(expected, np.float64))
    top1 = float(np.mean(np.argmax(got, axis=1) == np.argmax(expected, axis=1)))
    max_diff = float(diff.max())
    passed = (top1 >= MIN_AGREEMENT and max_diff <= MAX_PROB_DIFF) if float32 else None
    return {"split": split, "images": int(len(pixels)), "top1_agreement": round(top1, 6),
            "max_abs_diff": max_diff, "mean_abs_diff": float(diff.mean()),
            "required": {"top1_agreement": MIN_AGREEMENT, "max_abs_diff": MAX_PROB_DIFF}
            if float32 else None, "passed": passed}


def _batched(run, pixels: np.ndarray, batch_size: int = 64) -> np.ndarray:
    return np.concatenate([np.asarray(run(np.asarray(pixels[i:i + batch_size], np.float32)))
                           for i in range(0, len(pixels), batch_size)])


# --- files ---------------------------------------------------------------------------------------

def _size(path: Path) -> int:
    """Bytes of a file, or of every file under a folder."""
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
