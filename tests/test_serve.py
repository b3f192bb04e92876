"""The web service: every endpoint, every error, concurrency, and the real server from the CLI."""

import io
import json
import logging
import re
import signal
import socket
import subprocess
import sys
import threading

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from serving import digit, running_server
from workbench.cli import main
from workbench.deploy.serve import create_app


@pytest.fixture(scope="module")
def client(served_run):  # noqa: F811
    return TestClient(create_app(served_run.classifier))


def test_health_and_model_describe_the_run(served_run):  # noqa: F811
    client = TestClient(create_app(served_run.run))  # from the run directory, as the CLI does
    health = client.get("/api/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert health.json()["backend"] == served_run.classifier.backend
    model = client.get("/api/model").json()
    assert model["name"] == "run" and model["labels"] == [str(i) for i in range(10)]
    assert model["image_size"] == 16 and model["input_shape"] == [16, 16, 3]
    assert model["backbone"] == "lenet" and model["recipe"] == "scratch"
    metrics = json.loads((served_run.run / "metrics.json").read_text())
    assert model["metrics"] == metrics and "test_accuracy" in model["metrics"]
    assert "run_dir" not in model and str(served_run.run) not in json.dumps(model)


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
