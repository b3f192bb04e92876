"""The web service: every endpoint, every error, concurrency, and the real server from the CLI."""

import asyncio
import io
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import psutil
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from serving import digit, running_server, serve_process
from workbench.cli import main
from workbench.data.images import DEFAULT_MAX_PIXELS, ImageRejected
from workbench.deploy.limits import (DEFAULT_DECODE_BUDGET_BYTES, DEFAULT_DECODE_WAIT,
                                     DEFAULT_MAX_CONNECTIONS, DEFAULT_UPLOAD_TIMEOUT,
                                     DECODE_ALLOWANCE_BYTES, DecodeBudget, decode_estimate,
                                     max_pixels_for)
from workbench.deploy.serve import create_app


@pytest.fixture(scope="module")
def client(served_run):  # noqa: F811
    return TestClient(create_app(served_run.classifier))


def test_health_and_model_describe_the_run(served_run):  # noqa: F811
    client = TestClient(create_app(served_run.run))  # from the run directory, as the CLI does
    health = client.get("/api/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert health.json()["runtime"] == served_run.classifier.runtime
    model = client.get("/api/model").json()
    assert model["name"] == "run" and model["labels"] == [str(i) for i in range(10)]
    assert model["image_size"] == 16 and model["input_shape"] == [16, 16, 3]
    assert model["backbone"] == "lenet" and model["recipe"] == "scratch"
    # the name people see: the run's folder and what it started from, not best.keras
    assert model["run"] == "run" and model["starting_point"] == "lenet"
    assert model["origin"] == "lenet trained from scratch"
    assert model["title"] == "run · lenet trained from scratch"
    assert client.get("/openapi.json").json()["info"]["title"] == f"workbench: {model['title']}"
    metrics = json.loads((served_run.run / "metrics.json").read_text())
    assert model["metrics"] == metrics and "test_accuracy" in model["metrics"]
    assert "run_dir" not in model and str(served_run.run) not in json.dumps(model)


def test_create_app_takes_run_dir_and_source_its_old_name_for_one_release(served_run):  # noqa: F811
    with pytest.warns(DeprecationWarning, match="create_app: source= .* use run_dir="):
        app = create_app(source=served_run.classifier)
    health = TestClient(app).get("/api/health").json()
    assert health["runtime"] == health["backend"] == served_run.classifier.runtime
    model = TestClient(create_app(run_dir=served_run.classifier)).get("/api/model").json()
    assert model["runtime"] == served_run.classifier.runtime and model["labels"][0] == "0"


def test_model_names_come_from_the_run_never_from_its_model_file(tmp_path):
    from types import SimpleNamespace

    from workbench.deploy.serve import model_info

    def named(model_file, **facts):
        classifier = SimpleNamespace(labels=["a", "b"], image_size=32,
                                     info={"model_file": str(model_file), **facts})
        info = model_info(classifier)
        return {key: info[key] for key in ("name", "run", "starting_point", "origin", "title")}

    def run(name, **config):
        (tmp_path / name / "export").mkdir(parents=True)
        (tmp_path / name / "config.json").write_text(json.dumps(config))
        return tmp_path / name

    flowers = run("flowers", backbone="mobilenet_v2", weights="imagenet", recipe="caffe")
    tuned = run("tuned", backbone=None, weights=None, recipe="caffe",
                source=str(tmp_path / "source_run" / "model.keras"))
    expected = {"name": "flowers", "run": "flowers", "starting_point": "mobilenet_v2",
                "origin": "fine-tuned from mobilenet_v2 (imagenet)",
                "title": "flowers · fine-tuned from mobilenet_v2 (imagenet)"}
    # a run's model file, or its export, found by its folder: the run's facts, not the sidecar's
    assert named(flowers / "best.keras") == expected
    assert named(flowers / "export" / "model.tflite", backbone="other") == expected
    assert named(tuned / "model.keras") == {
        "name": "tuned", "run": "tuned", "starting_point": "model.keras",
        "origin": "fine-tuned from source_run/model.keras",
        "title": "tuned · fine-tuned from source_run/model.keras"}
    # a bare model file: its folder's name when the file is named like a run's, else its own
    (tmp_path / "pets").mkdir()
    assert named(tmp_path / "pets" / "best.keras", backbone="resnet50") == {
        "name": "pets", "run": None, "starting_point": "resnet50", "origin": "from resnet50",
        "title": "pets · from resnet50"}
    assert named(tmp_path / "pets" / "dogs_v2.tflite")["name"] == "dogs_v2"
    assert named(tmp_path / "pets" / "export" / "model.tflite")["title"] == "pets"


def test_page_is_self_contained_and_phone_ready(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert re.search(r'<input[^>]*type="file"[^>]*accept="image/\*"[^>]*capture', html)
    assert 'name="viewport"' in html and 'src="static/app.js"' in html
    script = client.get("/static/app.js")
    assert script.status_code == 200 and "api/predict" in script.text and "toBlob" in script.text
    assert client.get("/static/style.css").status_code == 200
    for text in (html, script.text):  # nothing from outside the server: it runs offline
        assert not re.search(r"""(src|href)=["'](https?:)?//|https?://""", text)
    assert client.get("/openapi.json").json()["paths"]["/api/predict"]["post"]


def test_multipart_and_raw_uploads_answer_like_the_classifier(served_run, client):  # noqa: F811
    classifier = served_run.classifier
    jpeg = io.BytesIO()
    Image.open(io.BytesIO(digit(served_run, 7))).save(jpeg, "JPEG", quality=90)
    for data in (digit(served_run, 3), digit(served_run, 8, 1), jpeg.getvalue()):
        expected = classifier.predict(data)
        multipart = client.post("/api/predict", files={"file": ("x.png", data, "image/png")})
        raw = client.post("/api/predict", content=data,
                          headers={"content-type": "application/octet-stream"})
        assert multipart.status_code == raw.status_code == 200
        assert multipart.json() == raw.json() == {"predictions": expected}
        assert len(expected) == 5
    data = digit(served_run, 1)
    three = classifier.predict(data, top_k=3)
    assert client.post("/api/predict?top_k=3", content=data).json()["predictions"] == three
    form = client.post("/api/predict", data={"top_k": "3"}, files={"file": ("a", data)})
    assert form.json()["predictions"] == three
    assert len(client.post("/api/predict?top_k=50", content=data).json()["predictions"]) == 10


@pytest.mark.parametrize("top_k", ["0", "-1", "abc", "2.5", "101"])
def test_a_bad_top_k_is_a_400_naming_it(served_run, client, top_k):  # noqa: F811
    answer = client.post(f"/api/predict?top_k={top_k}", content=digit(served_run, 2))
    assert answer.status_code == 400
    assert answer.json()["error"] == (f"top_k must be an integer between 1 and 100, "
                                      f"received: {top_k!r}")


def test_uploads_over_the_limit_are_refused_without_reading_them(served_run, caplog):  # noqa: F811
    client = TestClient(create_app(served_run.classifier, max_upload_bytes=2000))
    caplog.set_level(logging.INFO, logger="workbench.deploy.serve")
    big = bytes(10_000)
    declared = client.post("/api/predict", content=big)  # Content-Length: refused before reading
    assert declared.status_code == 413
    assert declared.json()["error"] == ("upload too large: the limit is 2000 bytes, "
                                        "received: 10000 bytes")
    assert re.search(r"POST /api/predict 413 .* 0 bytes in$", caplog.records[-1].getMessage())

    multipart = client.post("/api/predict", files={"file": ("big.png", big, "image/png")})
    assert multipart.status_code == 413
    small = digit(served_run, 4)
    assert len(small) < 2000 and client.post("/api/predict", content=small).status_code == 200

    # chunked, with no Content-Length: counted as it streams in, through a real server
    chunk, total = bytes(64 * 1024), 8 * 1024 * 1024
    with running_server(create_app(served_run.classifier, max_upload_bytes=100_000)) as url:
        streamed = httpx.post(f"{url}api/predict", timeout=30,
                              content=(chunk for _ in range(total // len(chunk))))
        assert streamed.status_code == 413 and "limit is 100000 bytes" in streamed.json()["error"]
        assert httpx.get(f"{url}api/health").status_code == 200
    line = next(r.getMessage() for r in reversed(caplog.records) if " 413 " in r.getMessage())
    read = int(re.search(r"(\d+) bytes in$", line).group(1))
    assert 100_000 < read < 1024 * 1024  # stopped soon after the limit, not at 8 MiB


def test_garbage_gets_the_reason_and_the_server_keeps_serving(served_run, client):  # noqa: F811
    good = digit(served_run, 5)
    expected = {"predictions": served_run.classifier.predict(good)}
    text = client.post("/api/predict", files={"file": ("a.jpg", b"not an image", "image/jpeg")})
    assert text.status_code == 415 and text.json()["reason"] == "not an image"
    assert text.json()["error"].startswith("not an image")
    jpeg = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(jpeg, "JPEG")
    truncated = client.post("/api/predict", content=jpeg.getvalue()[:len(jpeg.getvalue()) // 2])
    assert truncated.status_code == 400 and truncated.json()["reason"] == "truncated or corrupt"
    assert "truncated or corrupt" in truncated.json()["error"]
    assert client.post("/api/predict", content=good).json() == expected  # still serving
    for answer in (client.post("/api/predict"),  # no body at all
                   client.post("/api/predict", files={"image": ("a.png", good)}),  # wrong field
                   client.post("/api/predict", files={"file": ("a.png", b"")})):  # empty file
        assert answer.status_code == 400 and answer.json()["error"].startswith("missing file")
    assert client.get("/api/predict").status_code == 405
    assert client.get("/nowhere").json() == {"error": "Not Found"}
    assert client.post("/api/predict", files={"file": ("a.png", good)}).json() == expected


def test_concurrent_requests_on_a_real_server_each_get_their_own_answer(served_run):  # noqa: F811
    images = [digit(served_run, label, index) for label in range(8) for index in range(2)]
    expected = [served_run.classifier.predict(image) for image in images]
    answers = [None] * len(images)
    with running_server(create_app(served_run.classifier)) as url:
        barrier = threading.Barrier(len(images))

        def post(i):
            with httpx.Client(base_url=url, timeout=30) as http:
                barrier.wait()  # all 16 at once
                answers[i] = [http.post("api/predict", content=images[i]).json()
                              for _ in range(3)]

        threads = [threading.Thread(target=post, args=(i,)) for i in range(len(images))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert len({json.dumps(e) for e in expected}) > 8  # the images really differ
    for got, want in zip(answers, expected):
        assert got == [{"predictions": want}] * 3


def test_cli_serves_the_run_until_interrupted(served_run):  # noqa: F811
    process = subprocess.Popen(
        [sys.executable, "-m", "workbench.cli", "serve", str(served_run.run), "--port", "0",
         "--max-upload-mb", "0.01"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()  # printed once the model is loaded and the port bound
        url = re.search(r"at (http://127\.0\.0\.1:\d+/) ", line).group(1)
        with httpx.Client(base_url=url, timeout=30) as http:
            assert http.get("api/health").json()["status"] == "ok"
            data = digit(served_run, 6)
            answer = http.post("api/predict", files={"file": ("six.png", data, "image/png")})
            assert answer.json() == {"predictions": served_run.classifier.predict(data)}
            too_big = http.post("api/predict", content=bytes(20_000))  # over 0.01 MiB
            assert too_big.status_code == 413
            assert "Take a photo" in http.get("/").text
    finally:
        process.send_signal(signal.SIGINT)
        _, log = process.communicate(timeout=30)
    assert process.returncode == 0
    requests = [line for line in log.splitlines() if re.search(r" (GET|POST) /", line)]
    assert len(requests) == 4 and " POST /api/predict 413 " in requests[2]


def test_cli_errors_are_one_line(served_run, tmp_path, capsys):  # noqa: F811
    assert main(["serve", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", str(served_run.run), "--port", str(port)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: cannot listen on 127.0.0.1:{port}") and error.count("\n") == 1
    assert main(["serve", str(served_run.run), "--port", "70000"]) == 2
    assert "--port: must be a TCP port" in capsys.readouterr().err


def test_a_host_that_does_not_resolve_is_one_line_naming_host(served_run, capsys):  # noqa: F811
    from workbench.deploy.serve import bind

    assert main(["serve", str(served_run.run), "--host", "nosuch.invalid"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--host" in error and "'nosuch.invalid'" in error
    assert "resolves" in error
    with pytest.raises(ValueError, match="host must be an address of this machine .* "
                                         "received: 'nosuch.invalid'"):
        bind("nosuch.invalid", 0)
    with pytest.raises(ValueError, match="host must be an address or a host name"):
        bind("", 0)


def test_accepted_connections_send_without_waiting_for_acks():
    """uvicorn writes headers and body apart; with Nagle's algorithm on, each answer waited
    40 ms for the client's delayed ACK. The listening socket passes TCP_NODELAY on."""
    from workbench.deploy.serve import bind

    server = bind("127.0.0.1", 0)
    try:
        with socket.create_connection(server.getsockname()) as client:
            accepted, _ = server.accept()
            with accepted:
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
                assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
    finally:
        server.close()


# --- limits: memory, slow clients, connections ---------------------------------------------------

def _png(mode: str, size: tuple, **options) -> bytes:
    """A PNG of one colour: a few kilobytes however many pixels it has."""
    image = Image.new(mode, size)
    if mode == "P":
        image.putpalette([0, 0, 0, 255, 255, 255])
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **options)
    return buffer.getvalue()


def _peak_rss(pid: int) -> int:
    """The process's peak resident memory so far (Linux's VmHWM), in bytes."""
    status = open(f"/proc/{pid}/status").read()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024


MiB = 1024 * 1024
BASE_SLACK = 32 * MiB  # beyond the budget: request bodies, thread stacks, the allocator's slack


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmHWM (Linux)")
def test_pixel_heavy_uploads_stay_within_the_decode_budget(served_run):  # noqa: F811
    # 1.1 kB each, 9 million pixels: ~45 MB to decode and convert; 16 at once took 16 times that
    image = _png("1", (3000, 3000))
    assert len(image) < 2000 and decode_estimate(image, 16).bytes > 48 * MiB
    budget = 96 * MiB  # room for one decode at a time
    expected = {"predictions": served_run.classifier.predict(image)}
    # a decode wait far above the 16 decodes' time on a busy CPU: queued, never refused
    with serve_process(served_run.run, "--decode-budget-mb", "96", "--decode-wait", "600") \
            as server:
        process = psutil.Process(server.process.pid)
        with httpx.Client(base_url=server.url, timeout=120) as http:
            assert http.post("api/predict", content=digit(served_run, 1)).status_code == 200
            health = http.get("api/health").json()
        assert health["limits"]["decode_budget_bytes"] == budget
        base = process.memory_info().rss  # the model loaded and one prediction made
        barrier, answers = threading.Barrier(16), []

        def post():
            with httpx.Client(base_url=server.url, timeout=120) as http:
                barrier.wait()
                answers.append(http.post("api/predict", content=image))

        threads = [threading.Thread(target=post) for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        peak = _peak_rss(server.process.pid)
    assert [a.status_code for a in answers] == [200] * 16  # queued, not refused
    assert all(a.json() == expected for a in answers)
    assert peak <= base + budget + BASE_SLACK, (
        f"peak RSS {peak / MiB:.0f} MiB, base {base / MiB:.0f} MiB + budget 96 MiB + "
        f"{BASE_SLACK / MiB:.0f} MiB")


_MEASURE = """
import io, json, os, resource, sys
from PIL import Image
from workbench.data.images import load_array
from workbench.deploy.limits import decode_estimate
for format in ("PNG", "WEBP", "TIFF", "JPEG"):  # load the plugins first: measure decoding only
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format)
    load_array(buffer.getvalue(), 16)
rows = []
for path in sys.argv[1:]:
    data = open(path, "rb").read()
    read, write = os.pipe()
    if os.fork() == 0:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        load_array(data, 16, max_pixels=10**9)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        os.write(write, str((peak - before) * 1024).encode())
        os._exit(0)
    os.close(write)
    used = int(os.read(read, 64))
    os.wait()
    rows.append([os.path.basename(path), used, decode_estimate(data, 16).bytes])
print(json.dumps(rows))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="measures each decode in a forked child")
def test_decode_estimates_bound_what_decoding_really_takes(tmp_path):
    # the estimates are measurements of workbench.data.images: if its conversions change, this
    # says which image modes the budget no longer bounds
    size, rotated = (1200, 1000), Image.Exif()
    rotated[0x0112] = 6  # EXIF orientation: rotate 90 degrees
    files = {f"{mode}.png": _png(mode, size) for mode in ("1", "L", "P", "RGB", "RGBA", "LA")}
    for mode, key in [("P", 0), ("L", 0), ("RGB", (0, 0, 0))]:
        files[f"{mode}_transparent.png"] = _png(mode, size, transparency=key)
    files["RGB_rotated.png"] = _png("RGB", size, exif=rotated)
    ramp = np.linspace(0, 1, size[0] * size[1]).reshape(size[::-1])  # deep images need values
    deep = {"I16.png": Image.fromarray((ramp * 65535).astype(np.uint16)),
            "F.tif": Image.fromarray(ramp.astype(np.float32))}
    for name, image, options in [("RGB.webp", Image.new("RGB", size), {"lossless": True}),
                                 ("RGBA.webp", Image.new("RGBA", size), {"lossless": True}),
                                 ("CMYK.tif", Image.new("CMYK", size), {}),
                                 ("RGB.jpg", Image.new("RGB", size), {"exif": rotated.tobytes()}),
                                 ("CMYK.jpg", Image.new("CMYK", size), {}),
                                 *[(name, image, {}) for name, image in deep.items()]]:
        buffer = io.BytesIO()
        image.save(buffer, name.rsplit(".", 1)[1].upper().replace("TIF", "TIFF")
                   .replace("JPG", "JPEG"), **options)
        files[name] = buffer.getvalue()
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    done = subprocess.run([sys.executable, "-c", _MEASURE, *sorted(map(str, tmp_path.iterdir()))],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert len(rows) == len(files) == 17
    over = [f"{name}: used {used / MiB:.1f} MiB, estimated {estimate / MiB:.1f} MiB"
            for name, used, estimate in rows if used > estimate]
    assert not over, over
    assert {name: used for name, used, _ in rows}["RGBA.png"] > 15 * MiB  # really measured


def test_a_rotation_is_estimated_wherever_the_exif_is():
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    plain = _png("RGB", (400, 300))
    turned, upright = Image.Exif(), Image.Exif()
    turned[0x0112], upright[0x0112] = 6, 1
    # an eXIf chunk after the pixels, where Pillow reads it only once they are decoded
    late = [plain[:-12] + chunk(b"eXIf", exif.tobytes()[6:]) + plain[-12:]  # no "Exif\0\0"
            for exif in (turned, upright)]
    base = decode_estimate(plain, 16).bytes
    assert decode_estimate(late[0], 16).bytes == base + 4 * 400 * 300  # a rotated RGB copy
    assert decode_estimate(late[1], 16).bytes == base
    with pytest.raises(ImageRejected, match="not an image"):  # answered 415, nothing decoded
        decode_estimate(b"not an image", 16)
    with pytest.raises(ValueError, match="side must be >= 1, received: 0"):
        decode_estimate(plain, 0)


def test_png_text_is_counted_before_pillow_inflates_it():
    import struct
    import tracemalloc
    import zlib

    from workbench.deploy.limits import MAX_PNG_TEXT_BYTES

    def with_text(count: int, inflated: int) -> bytes:  # zTXt chunks before the pixels
        text = zlib.compress(b"\0" * inflated, 9)  # about 1 kB a MiB
        chunks = b"".join(struct.pack(">I", len(body)) + b"zTXt" + body
                          + struct.pack(">I", zlib.crc32(b"zTXt" + body))
                          for body in (b"k%d\0\0" % i + text for i in range(count)))
        return plain[:33] + chunks + plain[33:]  # after IHDR

    plain = _png("RGB", (40, 30))
    bomb = with_text(60, 1_000_000)  # 60 kB that Pillow inflates to 60 MB on opening it
    assert len(bomb) < 100_000
    tracemalloc.start()
    try:
        with pytest.raises(ImageRejected, match="text chunks inflate to more than 1 MiB") as error:
            decode_estimate(bomb, 16)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert error.value.reason == "decompression bomb" and peak < 2 * MiB
    some = with_text(1, MAX_PNG_TEXT_BYTES // 2)  # held while decoding: in the estimate
    assert decode_estimate(some, 16).bytes >= decode_estimate(plain, 16).bytes \
        + MAX_PNG_TEXT_BYTES // 2


def test_images_over_the_budget_or_the_pixel_limit_are_refused(served_run):  # noqa: F811
    client = TestClient(create_app(served_run.classifier, decode_budget_bytes=16 * MiB))
    health = client.get("/api/health").json()
    max_pixels = (16 * MiB - DECODE_ALLOWANCE_BYTES) // 5  # the cheapest decode: 5 bytes a pixel
    assert health["limits"]["max_pixels"] == max_pixels_for(16 * MiB) == max_pixels
    big = client.post("/api/predict", content=_png("1", (2000, 2000)))  # 4 M pixels
    assert big.status_code == 400 and big.json()["reason"] == "decompression bomb"
    assert f"2000x2000 exceeds this service's max_pixels={max_pixels}" in big.json()["error"]
    costly = client.post("/api/predict", content=_png("RGBA", (1200, 1000)))  # 1.2 M pixels
    assert costly.status_code == 400 and costly.json()["reason"] == "decompression bomb"
    assert re.search(r"1200x1000 RGBA needs about \d+ MiB to decode, more than this service's "
                     r"decode budget of 16 MiB", costly.json()["error"])
    fits = client.post("/api/predict", content=_png("RGB", (1200, 1000)))
    assert fits.status_code == 200
    limited = TestClient(create_app(served_run.classifier, max_pixels=1000))
    small = limited.post("/api/predict", content=_png("L", (40, 30)))  # 1200 pixels
    assert small.status_code == 400 and "max_pixels=1000" in small.json()["error"]
    with pytest.raises(ValueError, match="decode_budget_bytes must be >= 16777216"):
        create_app(served_run.classifier, decode_budget_bytes=MiB)


class _Held:
    """A classifier whose first prediction waits until ``go`` is set; the others do not."""

    labels, image_size, thread_safe = ["a", "b"], 16, True

    def __init__(self):
        self.started, self.go = threading.Event(), threading.Event()

    def predict(self, data, *, top_k=5):
        if not self.started.is_set():
            self.started.set()
            assert self.go.wait(60)
        return [{"label": "a", "probability": 1.0}]


def test_busy_answers_are_503_with_a_reason(served_run):  # noqa: F811
    image = _png("1", (2500, 2500))  # about 46 MiB to decode: two do not fit in 64 MiB
    held = _Held()
    app = create_app(held, decode_budget_bytes=64 * MiB, decode_wait=0.2)
    with running_server(app) as url, httpx.Client(base_url=url, timeout=60) as http:
        first = threading.Thread(target=lambda: http.post("api/predict", content=image))
        first.start()
        assert held.started.wait(60)
        health = http.get("api/health").json()
        assert health["in_use"]["uploads"] == 1
        assert health["in_use"]["decoding_bytes"] == decode_estimate(image, 16).bytes
        waited = http.post("api/predict", content=image)  # waits 0.2 s for memory, in vain
        assert waited.status_code == 503 and waited.json()["reason"] == "decoding memory"
        assert waited.json()["error"].startswith("busy: no decoding memory came free within")
        assert waited.headers["retry-after"] == "1"
        assert http.post("api/predict", content=digit(served_run, 2)).status_code == 200
        held.go.set()
        first.join(60)
        assert http.post("api/predict", content=image).status_code == 200  # memory given back
        assert http.get("api/health").json()["in_use"] == {
            "uploads": 0, "decoding_bytes": 0, "waiting_to_decode": 0}

    held = _Held()
    with running_server(create_app(held, max_uploads=1)) as url, \
            httpx.Client(base_url=url, timeout=60) as http:
        first = threading.Thread(target=lambda: http.post("api/predict", content=image))
        first.start()
        assert held.started.wait(60)
        second = http.post("api/predict", content=image)
        assert second.status_code == 503 and second.json()["reason"] == "too many uploads"
        assert second.headers["connection"] == "close"
        assert http.get("api/health").status_code == 200
        held.go.set()
        first.join(60)


def test_the_decode_budget_grants_in_order_and_times_out():
    async def scenario():
        budget = DecodeBudget(100)
        assert await budget.acquire(60, 1)
        big = asyncio.ensure_future(budget.acquire(80, 30))
        await asyncio.sleep(0)
        small = asyncio.ensure_future(budget.acquire(30, 30))  # would fit, but big came first
        await asyncio.sleep(0)
        assert not big.done() and not small.done() and budget.waiting == 2
        budget.release(60)
        assert await big is True and budget.in_use == 80
        await asyncio.sleep(0)
        assert not small.done()
        budget.release(80)
        assert await small is True and budget.in_use == 30
        assert await budget.acquire(90, 0.05) is False  # 30 + 90 > 100 until the timeout
        assert budget.waiting == 0 and budget.in_use == 30
        waiting = asyncio.ensure_future(budget.acquire(90, 30))
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert budget.waiting == 0 and budget.in_use == 30
        with pytest.raises(ValueError, match="cost must be at most the budget of 100 bytes"):
            await budget.acquire(101, 1)

    asyncio.run(scenario())


def _raw_request(port: int, head: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall(head)
    return sock


def _until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:  # closed with our request unread
            return received
        if not chunk:
            return received
        received += chunk


STALLED = b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 10000\r\n\r\n"


def _health_after_the_burst(url: str):
    """GET /api/health. While the server is still closing a burst of connections over its
    limit, a new connection may be one of them: that (not a timeout) is retried."""
    for attempt in range(20):
        try:
            return httpx.get(f"{url}api/health", timeout=20)
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError):
            time.sleep(0.1)
    raise AssertionError("every connection to /api/health was closed")


def test_stalled_uploads_are_closed_and_health_keeps_answering(served_run):  # noqa: F811
    import resource

    limit = 128

    def low_open_file_limit():  # as in a small container: 150 stalled sockets would exhaust it
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    with serve_process(served_run.run, "--upload-timeout", "3", "--max-connections", "1000",
                       preexec_fn=low_open_file_limit) as server:
        stalled = [_raw_request(server.port, STALLED) for _ in range(150)]  # headers, no body
        silent = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(3)]
        health = _health_after_the_burst(server.url)
        assert health.status_code == 200
        max_uploads = health.json()["limits"]["max_uploads"]
        assert max_uploads < limit // 2  # max_connections lowered to fit the open files
        answers = [_until_closed(sock) for sock in stalled]  # each one is closed by the server
        for sock in silent:
            sock.settimeout(60)
            assert _until_closed(sock) == b""  # no request within the timeout: closed
        assert httpx.get(f"{server.url}api/health", timeout=30).status_code == 200
        for sock in stalled + silent:
            sock.close()
        log = server.stop()
    status = [answer.split(b" ", 2)[1] if answer else b"closed" for answer in answers]
    assert 1 <= status.count(b"408") <= max_uploads  # held until the timeout, then answered
    assert status.count(b"408") + status.count(b"503") + status.count(b"closed") == 150
    assert all(b"connection: close" in answer.lower() for answer in answers if answer)
    assert b'"reason":"too many uploads"' in next(a for a in answers if b" 503 " in a)
    assert "Too many open files" not in log and "Traceback" not in log
    assert len(log.splitlines()) < 150  # a line per request at most, nothing per retry


def test_a_client_leaving_mid_upload_is_one_log_line(served_run):  # noqa: F811
    with serve_process(served_run.run, "--max-upload-mb", "1") as server:
        gone = _raw_request(server.port, b"POST /api/predict HTTP/1.1\r\nHost: x\r\n"
                                         b"Content-Length: 100000\r\n\r\n" + bytes(5000))
        with httpx.Client(base_url=server.url, timeout=30) as http:
            assert http.get("api/health").status_code == 200  # the 5000 bytes were read
            gone.close()
            data = digit(served_run, 3)
            assert http.post("api/predict", content=data).json() == {
                "predictions": served_run.classifier.predict(data)}
            # an upload far over the limit: refused from its Content-Length, nothing read
            huge = _raw_request(server.port, b"POST /api/predict HTTP/1.1\r\nHost: x\r\n"
                                             b"Content-Length: 10000000000\r\n\r\n")
            answer = _until_closed(huge)  # and the connection is closed: no need to send it
            huge.close()
            assert answer.startswith(b"HTTP/1.1 413 ") and b"connection: close" in answer
            assert b"upload too large: the limit is 1048576 bytes" in answer
            left = _raw_request(server.port, STALLED)  # still uploading at Ctrl+C
            assert http.get("api/health").status_code == 200
        log = server.stop()
        left.close()
    lines = [line for line in log.splitlines() if "/api/predict" in line]
    assert len([line for line in lines if " disconnected " in line]) == 2, log
    assert re.search(r"POST /api/predict disconnected [\d.]+ ms 5000 bytes in$", log, re.M)
    assert re.search(r"POST /api/predict 413 [\d.]+ ms 0 bytes in$", log, re.M)
    assert "Traceback" not in log and "Exception in ASGI" not in log and "ERROR" not in log


def test_serve_help_states_each_limit_and_its_default(capsys):
    assert main(["serve", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for option, default in [("--decode-budget-mb MB", DEFAULT_DECODE_BUDGET_BYTES // MiB),
                            ("--decode-wait S", f"{DEFAULT_DECODE_WAIT:g}"),
                            ("--upload-timeout S", f"{DEFAULT_UPLOAD_TIMEOUT:g}"),
                            ("--max-connections N", DEFAULT_MAX_CONNECTIONS)]:
        described = text.rsplit(option, 1)[1].split(" --", 1)[0]  # after the usage line
        assert f"(default {default})" in described, (option, described)
    assert f"at most {DEFAULT_MAX_PIXELS})" in text.rsplit("--max-pixels N", 1)[1]
