"""A web service for a trained run: a phone-friendly page and a JSON API for top-k predictions.

::

    from workbench.deploy.serve import serve
    serve("runs/flowers")            # http://127.0.0.1:8000/ ; or: workbench serve runs/flowers

Endpoints (every error is JSON, ``{"error": "..."}``, with its status code):

- ``GET /``: the page (``workbench/deploy/static/``): choose or take a photo, see the top-5 as bars.
  The page shrinks the photo in the browser before uploading it.
- ``POST /api/predict``: an image as the multipart field ``file`` or as the raw request body;
  ``top_k`` (query or form field, default 5) -> ``{"predictions": [{"label", "probability"},
  ...]}`` best first. 413 when the body is larger than ``max_upload_bytes`` (checked from
  ``Content-Length`` before reading, and again while the body streams in, so a huge upload is
  never buffered; the connection is then closed), 415 when it is not an image in a format the
  service reads (JPEG, PNG, WebP, GIF, BMP, TIFF; no other format's decoder is ever run), 400
  when it is an unusable one (truncated, too small, a decompression bomb; ``reason`` says
  which), 400 for a missing file or a bad ``top_k``, 408 when the body does not arrive within
  ``upload_timeout``, 503 (with ``reason`` and ``Retry-After``) when the service is busy: too
  many uploads at once, or no decoding memory free within ``decode_wait``.
- ``POST /api/predict?explain=1``: also where the model looked for its top class:
  ``"explanation": {"label", "probability", "method": "grad_cam", "heatmap": "data:image/png;
  base64,..."}``, the Grad-CAM map (``workbench.explain``) coloured, at most
  ``EXPLAIN_MAX_SIDE`` pixels a side, the photo's aspect after EXIF orientation, to lay over
  it. LiteRT and ONNX models have no gradients: the map comes from the run's Keras model, loaded
  on the first such request (seconds: it imports Keras) and kept; 400 when the service has no
  Keras model (it serves a bare exported file).
- ``GET /api/health``: ``{"status": "ok", ...}`` with the limits and what is in use.
- ``GET /api/model``: the run's name (its folder) and what it was fine-tuned from, labels,
  input size, backbone, recipe and metrics.
- ``GET /docs``: the OpenAPI page (Swagger UI loads its script from a CDN, so it needs a
  browser with internet; ``/openapi.json`` is served locally).

Why FastAPI on uvicorn: FastAPI (on Starlette) is a widely used, actively maintained ASGI
framework with a streaming multipart parser (python-multipart), JSON errors through exception
handlers and an OpenAPI description for free; uvicorn is the production ASGI server both
document (httptools/uvloop when installed, graceful shutdown on Ctrl+C, runs under gunicorn for
several processes). Being asynchronous, one process keeps many slow mobile uploads open at once
without a thread each, reads each body as it streams in (so the size limit is enforced before
a large upload is buffered) and hands only the model call to a thread pool. Flask on gunicorn
would work too, but ties up a worker thread per slow upload.

Predictions run in Starlette's thread pool so the event loop keeps answering (health checks,
the page, rejecting oversized uploads) while the model works. A ``Classifier`` serialises its
model call where it must (a LiteRT interpreter never runs in two threads at once; ONNX Runtime
runs concurrent calls side by side) and decodes images in parallel; any other classifier
object gets one lock around ``predict``.

Limits (``workbench.deploy.limits``; each a :func:`serve` argument and a ``workbench serve``
option), so that no client can take the service down:

- memory: decoding is admitted against ``decode_budget_bytes`` shared by all requests, by an
  estimate from the image's header (a 7.6 kB PNG can hold 300 MB of pixels); requests queue
  for it, in order, for up to ``decode_wait`` seconds (then 503). Images over ``max_pixels``
  (by default what the budget can decode, at most 64 million) or whose estimate exceeds the
  whole budget are refused (400, ``decompression bomb``), as are PNGs whose compressed text
  inflates past ``limits.MAX_PNG_TEXT_BYTES`` (Pillow inflates it on opening, before any
  estimate). Only the accepted formats are ever opened (415 otherwise), so the estimate comes
  before any decoding. JPEGs decode at a reduced scale. Besides the budget, memory holds the
  model and up to ``max_connections / 2`` bodies being uploaded (each at most
  ``max_upload_bytes``).
- time: a connection must send its request headers within ``upload_timeout`` seconds and then
  its body within ``upload_timeout`` more (408), so stalled clients do not hold connections.
- connections: at most ``max_connections`` open at once (kept under the open-file limit;
  connections beyond it are closed when accepted), of which at most half may be uploading
  (503 beyond), so ``/api/health`` and the page keep answering while uploads stall.
- a client that disconnects mid-upload is logged in one line, as ``disconnected``.
"""

import base64
import contextlib
import errno
import logging
import socket
import threading
import time
from pathlib import Path

from workbench._checks import UsageError, check_choice, check_int, check_number, renamed_arguments
from workbench._compat import MultipartError, parse_multipart, uvicorn_logging_config
from workbench.data.images import ACCEPTED_FORMAT_NAMES, ImageRejected
from workbench.deploy.limits import (ACCEPT_BATCH, DEFAULT_DECODE_BUDGET_BYTES,
                                     DEFAULT_DECODE_WAIT, DEFAULT_MAX_CONNECTIONS,
                                     DEFAULT_UPLOAD_TIMEOUT, MAX_UPLOAD_TIMEOUT,
                                     DecodeBudget, connection_limit,
                                     decode_estimate, guarded_protocol, max_pixels_for)
from workbench.deploy.predict import Classifier
from workbench.runs import RunDir

DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
DEFAULT_TOP_K = 5
DEFAULT_TOP_K_MAX = 100
EXPLAIN_MAX_SIDE = 224  # the heatmap PNG's longer side: a phone shows it a few cm wide
STATIC = Path(__file__).resolve().parent / "static"

logger = logging.getLogger("workbench.deploy.serve")


class _TooLarge(Exception):
    """The request body passed the upload limit."""


class _BadRequest(Exception):
    """A request the API answers with 400 and this message."""


class _TimedOut(Exception):
    """The request body did not arrive in time."""


def model_info(classifier) -> dict:
    """What ``GET /api/model`` answers: the model's name, classes, input and run metrics.

    Args:
        classifier: a :class:`workbench.deploy.predict.Classifier` (anything with ``labels`` and
            ``image_size``; an ``info`` dict, when it has one, adds its keys: backbone,
            recipe, the run's metrics).

    Returns:
        A JSON-serialisable dict with at least ``name``, ``run``, ``starting_point``,
        ``origin``, ``title``, ``labels``, ``classes``, ``image_size``, ``input_shape``,
        ``resize_mode``, ``backbone``, ``recipe``, ``runtime`` (what runs the model: litert,
        onnx or keras; also as ``backend``, its old name, for one release) and ``metrics``;
        no server paths (the page may be on a phone). ``name`` is the run's folder name (for a model
        file outside a run: its name, or its folder's when it is named like a run's
        ``best.keras``); ``run`` the run's folder name or None; ``starting_point`` what the
        run was fine-tuned from (``RunDir.starting_point``: the backbone or the source model's
        file); ``origin`` says how, e.g. ``"fine-tuned from resnet50 (imagenet)"`` or
        ``"lenet trained from scratch"``; ``title`` is ``"<name> · <origin>"``.
    """
    extra = getattr(classifier, "info", None)
    info = dict(extra) if isinstance(extra, dict) else {}
    run_dir = info.pop("run_dir", None)
    model_file = Path(info["model_file"]) if info.get("model_file") else None
    runtime = str(getattr(classifier, "runtime", info.get("runtime", "keras")))
    run = _run_of(run_dir, model_file)
    if model_file is not None:
        info["model_file"] = model_file.name
    if run_dir or run is not None:
        name = (run.path if run is not None else Path(run_dir)).resolve().name
    else:
        name = info.get("name") or _file_name(model_file)
    config = run.config if run is not None else {}
    starting_point = run.starting_point if run is not None else info.get("backbone")
    origin = _origin(config, starting_point)
    size = int(classifier.image_size)
    info.update({
        "name": name,
        "run": name if run is not None else None,
        "starting_point": starting_point,
        "origin": origin,
        "title": f"{name} · {origin}" if origin else name,
        "labels": [str(label) for label in classifier.labels],
        "classes": len(classifier.labels),
        "image_size": size,
        "input_shape": [size, size, 3],
        "resize_mode": getattr(classifier, "resize_mode", info.get("resize_mode")),
        "backbone": info.get("backbone"),
        "recipe": info.get("recipe") or config.get("recipe"),
        "runtime": runtime,
        "backend": runtime,  # the old name, for one release
        "metrics": info.get("metrics") or {},
    })
    return info


_RUN_MODEL_STEMS = ("model", "best", "initial")  # names of a run's model files say nothing


def _run_of(run_dir, model_file: Path | None) -> RunDir | None:
    """The run a model comes from: ``run_dir``, or the run folder holding ``model_file``
    (``<run>/best.keras``, ``<run>/export/model.tflite``); None when there is none."""
    folders = [Path(run_dir)] if run_dir else []
    if model_file is not None:
        folders.append(model_file.parent)
        if RunDir(model_file.parent.parent).export_dir == model_file.parent:
            folders.append(model_file.parent.parent)
    return next((RunDir(folder) for folder in folders if RunDir(folder).exists), None)


def _file_name(model_file: Path | None) -> str:
    """A model file's name for people: its stem, or its folder's name for ``best.keras``."""
    if model_file is None:
        return "model"
    stem = model_file.stem
    if stem not in _RUN_MODEL_STEMS and not stem.startswith("checkpoint"):
        return stem
    folder = model_file.resolve().parent
    return (folder.parent if RunDir(folder.parent).export_dir == folder else folder).name or stem


def _origin(config: dict, starting_point: str | None) -> str | None:
    """How a run began, in words: fine-tuned from what, or trained from scratch."""
    if not starting_point:
        return None
    if not config:  # a model file's own metadata: the backbone, nothing about its weights
        return f"from {starting_point}"
    if config.get("source"):
        source = Path(config["source"])  # its folder (a run's name) and file; no full path
        where = f"{source.parent.name}/{source.name}" if source.parent.name else source.name
        return f"fine-tuned from {where}"
    weights = config.get("weights")
    if not weights or config.get("recipe") == "scratch":
        return f"{starting_point} trained from scratch"
    return f"fine-tuned from {starting_point} ({Path(str(weights)).name})"


@renamed_arguments(source="run_dir")
def create_app(run_dir, *, model: str = "best", max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
               top_k_max: int = DEFAULT_TOP_K_MAX,
               decode_budget_bytes: int = DEFAULT_DECODE_BUDGET_BYTES,
               max_pixels: int | None = None, decode_wait: float = DEFAULT_DECODE_WAIT,
               upload_timeout: float = DEFAULT_UPLOAD_TIMEOUT,
               max_uploads: int = DEFAULT_MAX_CONNECTIONS // 2):
    """The FastAPI application serving one classifier.

    Args:
        run_dir: a run directory; or a model file ``Classifier.load`` reads (``.tflite`` with
            its sidecar, ``.keras``), or a loaded :class:`workbench.deploy.predict.Classifier`.
            (``source``, its old name, still works for one release.)
        model: with a run directory, ``"best"`` or ``"final"``.
        max_upload_bytes: the largest request body accepted; larger ones get 413.
        top_k_max: the largest ``top_k`` a request may ask for (more than the number of
            classes is clipped to it, as ``Classifier.predict`` does).
        decode_budget_bytes: memory for decoding images, shared by all requests (see
            ``workbench.deploy.limits``); requests wait for it in turn.
        max_pixels: the largest image accepted, in pixels; ``None`` for what the budget can
            decode (``limits.max_pixels_for``).
        decode_wait: seconds a request may wait for decoding memory before a 503.
        upload_timeout: seconds the request body may take to arrive before a 408.
        max_uploads: requests to ``/api/predict`` in progress at once (reading, waiting or
            predicting); more get a 503 at once.

    Returns:
        A ``fastapi.FastAPI`` app; serve it with :func:`serve` or any ASGI server.

    Raises:
        FileNotFoundError: ``run_dir`` is neither a run directory nor a model file.
        ValueError: a bad option, naming the value received.
    """
    from fastapi import FastAPI
    from fastapi.staticfiles import StaticFiles

    from workbench import __version__

    check_int("max_upload_bytes", max_upload_bytes, minimum=1)
    check_int("top_k_max", top_k_max, minimum=1)
    check_choice("model", model, ("best", "final"))
    max_pixels = max_pixels_for(decode_budget_bytes) if max_pixels is None else \
        check_int("max_pixels", max_pixels, minimum=1)
    check_number("decode_wait", decode_wait, minimum=0.0, maximum=MAX_UPLOAD_TIMEOUT)
    check_number("upload_timeout", upload_timeout, minimum=0.0, exclusive_minimum=True,
                 maximum=MAX_UPLOAD_TIMEOUT)
    check_int("max_uploads", max_uploads, minimum=1)
    service = _Service(_load(run_dir, model), max_upload_bytes=max_upload_bytes,
                       top_k_max=top_k_max, decode_budget_bytes=decode_budget_bytes,
                       max_pixels=max_pixels, decode_wait=decode_wait,
                       upload_timeout=upload_timeout, max_uploads=max_uploads)
    app = FastAPI(title=f"workbench: {service.info['title']}", version=__version__,
                  description="Top-k image classification with a trained workbench run.")
    app.state.service = service
    app.state.classifier, app.state.info = service.classifier, service.info
    app.state.max_upload_bytes, app.state.limits = max_upload_bytes, service.limits
    app.add_middleware(_RequestLog)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _add_error_handlers(app)
    _add_routes(app, service)
    return app


class _Service:
    """One classifier behind the web service, with the limits that keep it answering: the
    upload size, the shared decoding budget, the pixel limit and the uploads in progress."""

    def __init__(self, classifier, *, max_upload_bytes, top_k_max, decode_budget_bytes,
                 max_pixels, decode_wait, upload_timeout, max_uploads):
        self.classifier, self.info = classifier, model_info(classifier)
        self.max_upload_bytes, self.top_k_max = max_upload_bytes, top_k_max
        self.decode_budget_bytes, self.max_pixels = decode_budget_bytes, max_pixels
        self.decode_wait, self.upload_timeout = decode_wait, upload_timeout
        self.max_uploads, self.uploads = max_uploads, 0  # requests to /api/predict in progress
        self.lock = contextlib.nullcontext() if _thread_safe(classifier) else threading.Lock()
        # a Classifier applies the service's pixel limit when decoding, too
        self.options = {"max_pixels": max_pixels} if isinstance(classifier, Classifier) else {}
        self.budget = DecodeBudget(decode_budget_bytes)
        self.limits = {"max_upload_bytes": max_upload_bytes,
                       "decode_budget_bytes": decode_budget_bytes, "max_pixels": max_pixels,
                       "decode_wait_s": decode_wait, "upload_timeout_s": upload_timeout,
                       "max_uploads": max_uploads}

    def health(self) -> dict:
        """Whether the service is up, with the model it serves, its limits and their use."""
        return {"status": "ok", "model": self.info["name"], "classes": self.info["classes"],
                "runtime": self.info["runtime"], "backend": self.info["runtime"],
                "limits": self.limits,
                "in_use": {"uploads": self.uploads, "decoding_bytes": self.budget.in_use,
                           "waiting_to_decode": self.budget.waiting}}

    def predict_locked(self, data: bytes, top_k: int) -> list[dict]:
        with self.lock:
            return self.classifier.predict(data, top_k=top_k, **self.options)

    def explain_top(self, data: bytes, label: str) -> dict:
        """The Grad-CAM map of ``label`` as a data URL (the Keras model loads on first use)."""
        classifier = self.classifier
        if not isinstance(classifier, Classifier):
            raise _BadRequest("explain needs a Classifier of a run or a .keras file, received: "
                              f"{type(classifier).__name__}")
        try:
            classifier.explainer()
        except ValueError as error:  # a bare exported file: no Keras model, no gradients
            raise _BadRequest(str(error)) from error
        explanation = classifier.explain(data, label=label, max_side=EXPLAIN_MAX_SIDE,
                                         **self.options)
        png = base64.b64encode(explanation.png(max_side=EXPLAIN_MAX_SIDE)).decode("ascii")
        return {"label": explanation.label, "probability": explanation.probability,
                "method": explanation.method, "heatmap": f"data:image/png;base64,{png}"}

    def decoding_cost(self, data: bytes) -> int:
        """The bytes to reserve for decoding ``data``; raises ImageRejected for an image too
        large for this service, or one that is not an image in an accepted format (then nothing
        is decoded)."""
        estimate = decode_estimate(data, int(self.classifier.image_size),
                                   getattr(self.classifier, "resize_mode", "squash"))
        if estimate.pixels > self.max_pixels:
            raise ImageRejected("decompression bomb", f"{estimate.width}x{estimate.height} "
                                f"exceeds this service's max_pixels={self.max_pixels}")
        if estimate.bytes > self.decode_budget_bytes:
            raise ImageRejected(
                "decompression bomb", f"{estimate.width}x{estimate.height} {estimate.mode} "
                f"needs about {estimate.bytes / 2**20:.0f} MiB to decode, more than this "
                f"service's decode budget of {self.decode_budget_bytes / 2**20:.0f} MiB")
        return estimate.bytes

    async def predict(self, request):
        """``/api/predict``: refused at once when ``max_uploads`` are in progress."""
        if self.uploads >= self.max_uploads:  # answered before reading; the socket closes
            return _error(503, f"busy: {self.max_uploads} uploads are in progress, the most "
                               "this service takes at once; retry shortly",
                          reason="too many uploads", close=True)
        self.uploads += 1
        try:
            return await self._predict_one(request)
        finally:
            self.uploads -= 1

    async def _predict_one(self, request):
        from starlette.concurrency import run_in_threadpool
        from starlette.requests import ClientDisconnect

        deadline = time.monotonic() + self.upload_timeout
        try:
            data, top_k, explain = await self._read_request(request, deadline)
            cost = await run_in_threadpool(self.decoding_cost, data)
            if not await self.budget.acquire(cost, self.decode_wait):
                return _error(503, f"busy: no decoding memory came free within "
                                   f"{self.decode_wait:g} s (this image needs about "
                                   f"{cost / 2**20:.0f} MiB of the "
                                   f"{self.decode_budget_bytes / 2**20:.0f} MiB budget); retry "
                                   "shortly", reason="decoding memory")
            try:
                predictions = await run_in_threadpool(self.predict_locked, data, top_k)
                if explain:  # decodes again, so still inside the decoding budget
                    explained = await run_in_threadpool(self.explain_top, data,
                                                        predictions[0]["label"])
            finally:
                self.budget.release(cost)
        except _TooLarge as error:
            return _error(413, f"upload too large: the limit is {self.max_upload_bytes} bytes, "
                               f"received: {error}", close=True)
        except _TimedOut as error:
            return _error(408, f"upload too slow: the body must arrive within "
                               f"{self.upload_timeout:g} s, received: {error}", close=True)
        except ClientDisconnect:  # nobody to answer; _RequestLog logs one line
            return _error(400, "client disconnected")
        except _BadRequest as error:
            return _error(400, str(error))
        except ImageRejected as error:
            return _rejected(error)
        return {"predictions": predictions, **({"explanation": explained} if explain else {})}

    async def _read_request(self, request, deadline: float) -> tuple[bytes, int, bool]:
        """``(image bytes, top_k, explain)`` of a request, its options checked before its body
        is read (a multipart field ``file`` or the body itself)."""
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_upload_bytes:
            raise _TooLarge(f"{length} bytes")
        query_top_k = request.query_params.get("top_k")
        if query_top_k is not None:
            _parse_top_k(query_top_k, self.top_k_max)  # fail fast, before reading the body
        explain = _parse_explain(request.query_params.get("explain"))
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            data, form_top_k = await _read_multipart(request, self.max_upload_bytes, deadline)
        else:
            data, form_top_k = await _read_body(request, self.max_upload_bytes, deadline), None
        top_k = _parse_top_k(query_top_k if query_top_k is not None else form_top_k,
                             self.top_k_max)
        if not data:
            raise _BadRequest("missing file: send an image as the multipart field 'file' "
                              "or as the request body, received: an empty upload")
        return data, top_k, explain


def _rejected(error: ImageRejected):
    """The answer to an upload that is not a usable image: 415 for a format the server does not
    read, else 400 with the reason."""
    if error.reason == "not an image":  # PIL's detail names a BytesIO object
        return _error(415, "not an image: the upload is in no image format the server reads "
                           f"({ACCEPTED_FORMAT_NAMES})", reason=error.reason)
    if error.reason == "unsupported format":  # the detail names the format and the list
        return _error(415, f"unsupported format: {error.detail}, the formats the server reads",
                      reason=error.reason)
    return _error(400, f"not a usable image ({error.reason}): {error.detail}",
                  reason=error.reason)


def _add_error_handlers(app) -> None:
    """Every error as JSON ``{"error": ...}``, never an HTML page or a traceback."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    @app.exception_handler(HTTPException)
    async def http_error(request, error):
        return JSONResponse({"error": str(error.detail)}, status_code=error.status_code,
                            headers=getattr(error, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, error):
        return JSONResponse({"error": "; ".join(str(e.get("msg")) for e in error.errors())},
                            status_code=422)

    @app.exception_handler(Exception)
    async def server_error(request, error):  # logged by the server; the client gets JSON
        return JSONResponse({"error": f"internal error: {type(error).__name__}"},
                            status_code=500)


def _add_routes(app, service: _Service) -> None:
    """The page and the JSON API."""
    from fastapi import Request
    from fastapi.responses import FileResponse

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/api/health")
    async def health():
        """Whether the service is up, with the model it serves, its limits and their use."""
        return service.health()

    @app.get("/api/model")
    async def model_endpoint():
        """The model: name, labels, input size, backbone, recipe and the run's metrics."""
        return service.info

    @app.post("/api/predict", openapi_extra=_PREDICT_OPENAPI)
    async def predict(request: Request):  # Request: the module has no postponed annotations
        """The top-k classes of one image, best first."""
        return await service.predict(request)


def _load(run_dir, model: str):
    """The classifier to serve: ``run_dir`` if it is one, or loaded from a run or a model
    file."""
    if hasattr(run_dir, "predict") and hasattr(run_dir, "labels"):
        return run_dir
    if not isinstance(run_dir, (str, Path)):
        raise UsageError(f"run_dir must be a run directory, a model file or a Classifier, "
                         f"received: {type(run_dir).__name__}")
    return Classifier.load(run_dir, model=model)


def _thread_safe(classifier) -> bool:
    """Whether ``classifier.predict`` may be called from several threads at once."""
    # Classifier documents it: its model call is locked inside, decoding runs in parallel
    return isinstance(classifier, Classifier) or bool(getattr(classifier, "thread_safe", False))


def _error(status: int, message: str, *, close: bool = False, **extra):
    """A JSON error; ``close`` ends the connection after it (the body was not read, or not all
    of it: the client need not send the rest)."""
    from fastapi.responses import JSONResponse

    headers = {"Connection": "close"} if close else {}
    if status == 503:
        headers["Retry-After"] = "1"
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def _parse_explain(text) -> bool:
    if text is None or text.strip().lower() in ("0", "false", "no", ""):
        return False
    if text.strip().lower() in ("1", "true", "yes"):
        return True
    raise _BadRequest(f"explain must be 1 or 0, received: {text!r}")


def _parse_top_k(text, maximum: int) -> int:
    if text is None:
        return DEFAULT_TOP_K
    try:
        value = int(str(text).strip())
    except ValueError:
        value = None
    if value is None or not 1 <= value <= maximum:
        raise _BadRequest(f"top_k must be an integer between 1 and {maximum}, "
                          f"received: {str(text)!r}")
    return value


async def _limited(request, limit: int, deadline: float):
    """The request body in chunks.

    Raises:
        _TooLarge: as soon as it passes ``limit`` bytes.
        _TimedOut: when it has not all arrived by ``deadline`` (``time.monotonic()``).
        starlette.requests.ClientDisconnect: when the client goes away first.
    """
    import anyio
    from starlette.requests import ClientDisconnect

    received = 0
    while True:
        message = None
        with anyio.move_on_after(max(0.0, deadline - time.monotonic())):
            message = await request.receive()
        if message is None:
            raise _TimedOut(f"{received} bytes by then")
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        received += len(chunk)
        if received > limit:
            raise _TooLarge(f"more than {limit} bytes")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


async def _read_body(request, limit: int, deadline: float) -> bytes:
    return b"".join([chunk async for chunk in _limited(request, limit, deadline)])


async def _read_multipart(request, limit: int, deadline: float) -> tuple[bytes, str | None]:
    """The bytes of the form's ``file`` field and its ``top_k`` field, if any."""
    from starlette.datastructures import UploadFile

    try:
        form = await parse_multipart(request.headers, _limited(request, limit, deadline),
                                     max_files=1, max_fields=8)
    except MultipartError as error:
        raise _BadRequest(f"malformed multipart body: {error}") from error
    try:
        upload = form.get("file")
        if upload is None:
            raise _BadRequest(f"missing file: the multipart form needs a field 'file', "
                              f"received fields: {sorted(form.keys())}")
        if not isinstance(upload, UploadFile):
            raise _BadRequest("missing file: the field 'file' must be a file upload, "
                              "received: a text field")
        top_k = form.get("top_k")
        return await upload.read(), top_k if isinstance(top_k, str) else None
    finally:
        await form.close()


_PREDICT_OPENAPI = {
    "parameters": [{"name": "top_k", "in": "query", "required": False,
                    "schema": {"type": "integer", "minimum": 1, "default": DEFAULT_TOP_K},
                    "description": "how many classes to return, best first"},
                   {"name": "explain", "in": "query", "required": False,
                    "schema": {"type": "integer", "enum": [0, 1], "default": 0},
                    "description": "1: also the Grad-CAM heatmap of the top class as a PNG "
                                   "data URL (computed by the run's Keras model, loaded on the "
                                   "first such request)"}],
    "requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {
            "type": "object", "required": ["file"],
            "properties": {"file": {"type": "string", "format": "binary"},
                           "top_k": {"type": "integer", "minimum": 1}}}},
        "image/*": {"schema": {"type": "string", "format": "binary"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
    "responses": {
        "200": {"description": "the top-k classes", "content": {"application/json": {
            "example": {"predictions": [{"label": "tulip", "probability": 0.91},
                                        {"label": "rose", "probability": 0.05}]}}}},
        "400": {"description": "missing file, unusable image or bad top_k"},
        "408": {"description": "the body did not arrive within the upload timeout"},
        "413": {"description": "upload larger than the server's limit"},
        "415": {"description": "not an image, or in a format the service does not read"},
        "503": {"description": "busy: too many uploads, or no decoding memory came free"}},
}


class _RequestLog:
    """ASGI middleware logging one line per request: client, method, path, status, time, bytes.

    A client that went away before its answer is logged with ``disconnected`` for the status.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status, received = time.perf_counter(), [500], [0]
        responded, gone = [False], [False]  # gone: disconnected before the response began

        async def counting_receive():
            message = await receive()
            received[0] += len(message.get("body", b""))
            if message["type"] == "http.disconnect" and not responded[0]:
                gone[0] = True
            return message

        async def status_send(message):
            if message["type"] == "http.response.start":
                status[0], responded[0] = message["status"], True
            await send(message)

        try:
            await self.app(scope, counting_receive, status_send)
        finally:
            client = scope.get("client") or ("-", 0)
            logger.info("%s %s %s %s %.1f ms %d bytes in", client[0], scope["method"],
                        scope["path"], "disconnected" if gone[0] else status[0],
                        (time.perf_counter() - started) * 1000, received[0])


def url(host: str, port: int) -> str:
    """The page's address for a host and port (IPv6 hosts in brackets)."""
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def bind(host: str = "127.0.0.1", port: int = 8000) -> socket.socket:
    """A listening TCP socket for ``host:port`` (port 0 picks a free one), ``TCP_NODELAY`` set
    for the connections it accepts.

    Raises:
        ValueError: a port outside 0-65535, or a host that is neither an address nor a name
            that resolves.
        OSError: the address cannot be bound (in use, not this machine's, no permission).
    """
    check_int("port", port, minimum=0)
    if port > 65535:
        raise UsageError(f"port must be <= 65535, received: {port}")
    if not isinstance(host, str) or not host:
        raise UsageError(f"host must be an address or a host name, received: {host!r}")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except (socket.gaierror, UnicodeError) as error:  # a name no resolver knows
        raise UsageError(f"host must be an address of this machine or a name that resolves "
                         f"to one, received: {host!r} ({getattr(error, 'strerror', None) or error})"
                         ) from error
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Inherited by every accepted connection: uvicorn writes a response's headers and body
    # separately, and Nagle's algorithm then held the body until the client's delayed ACK,
    # 40 ms later (every request took 44 ms on loopback instead of 1-2 ms).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        hint = " (host is not an address of this machine)" \
            if error.errno == errno.EADDRNOTAVAIL else ""
        raise UsageError(f"cannot listen on {host}:{port}: {error.strerror or error}{hint}"
                         ) from error
    sock.listen(128)
    return sock


@renamed_arguments(source="run_dir")
def serve(run_dir, *, host: str = "127.0.0.1", port: int = 8000, model: str = "best",
          max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
          decode_budget_bytes: int = DEFAULT_DECODE_BUDGET_BYTES, max_pixels: int | None = None,
          decode_wait: float = DEFAULT_DECODE_WAIT,
          upload_timeout: float = DEFAULT_UPLOAD_TIMEOUT,
          max_connections: int = DEFAULT_MAX_CONNECTIONS, log_level: str = "info",
          on_ready=None) -> None:
    """Serves a run's model with uvicorn until interrupted (Ctrl+C).

    Args:
        run_dir: a run directory; or a model file or a loaded Classifier, as
            :func:`create_app` takes, or an app from it (which then keeps its own upload and
            decoding limits). (``source``, its old name, still works for one release.)
        host: the address to listen on; the default answers this machine only. Use
            ``0.0.0.0`` to reach it from a phone on the same network.
        port: the TCP port (0 picks a free one).
        model: ``"best"`` or ``"final"`` (with a run directory).
        max_upload_bytes: the largest request body accepted (413 beyond).
        decode_budget_bytes: memory for decoding images, shared by all requests.
        max_pixels: the largest image accepted; ``None`` for what the budget can decode.
        decode_wait: seconds a request may wait for decoding memory (503 beyond).
        upload_timeout: seconds a connection has to send its request headers, and then its
            body (closed, or 408, beyond).
        max_connections: open connections at once, lowered to fit the open-file limit;
            half of them may be uploads, so health checks and the page keep answering.
        log_level: uvicorn's log level; ``"info"`` logs one line per request.
        on_ready: called with the page's URL once the model is loaded and the port is bound,
            just before serving (the CLI prints it).

    Raises:
        OSError: the address cannot be bound.
        ValueError: a bad option, naming the value received.
    """
    import uvicorn
    from fastapi import FastAPI

    check_choice("log_level", log_level, ("critical", "error", "warning", "info", "debug"))
    check_int("max_connections", max_connections, minimum=2)
    check_number("upload_timeout", upload_timeout, minimum=0.0, exclusive_minimum=True,
                 maximum=MAX_UPLOAD_TIMEOUT)
    sock = bind(host, port)  # first: a port in use fails before the model loads
    try:
        connections = connection_limit(max_connections)
        app = run_dir if isinstance(run_dir, FastAPI) else create_app(
            run_dir, model=model, max_upload_bytes=max_upload_bytes,
            decode_budget_bytes=decode_budget_bytes, max_pixels=max_pixels,
            decode_wait=decode_wait, upload_timeout=upload_timeout,
            max_uploads=max(1, connections // 2))
        protocol = guarded_protocol(max_connections=connections, header_timeout=upload_timeout)
        config = uvicorn.Config(app, log_config=log_config(), log_level=log_level,
                                access_log=False, timeout_graceful_shutdown=5, http=protocol,
                                backlog=ACCEPT_BATCH)
        if connections < max_connections:
            logger.warning("max_connections lowered from %d to %d to fit the open-file limit "
                           "(ulimit -n)", max_connections, connections)
        if on_ready is not None:
            on_ready(url(host, sock.getsockname()[1]))
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shuts down gracefully, then re-raises Ctrl+C
        pass
    finally:
        sock.close()


def log_config() -> dict:
    """uvicorn's logging configuration plus the ``workbench.deploy.serve`` request log on stderr."""
    config = uvicorn_logging_config()
    config["loggers"]["workbench.deploy.serve"] = {"handlers": ["default"], "level": "INFO",
                                            "propagate": False}
    return config
