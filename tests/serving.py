"""Shared by the web-service tests: one tiny trained run per session, a server in a thread, a
``workbench serve`` process and a photo-like test image."""

import contextlib
import io
import re
import signal
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

import tiny_data
from once import built_once


@pytest.fixture(scope="session")
def served_run(request):
    """A lenet trained for 10 epochs on the tiny digits (confident enough that a resized upload
    must keep its answer) and its Classifier, loaded as ``workbench serve`` loads it. Shared
    through conftest.py and trained once per session, by one of pytest-xdist's workers (with its
    exports, so that no worker exports into the shared folder): the tests only read its folders."""
    from workbench.deploy.predict import Classifier

    def build(folder):
        tiny_data.write_run(folder, epochs=10, base_lr=0.05)
        Classifier.load(folder / "run")  # exports LiteRT and ONNX here, once, under the lock

    root = built_once(request, "served_run", build)
    return SimpleNamespace(run=root / "run", data=root / "data",
                           classifier=Classifier.load(root / "run"))


def digit(served_run, label: int, index: int = 0) -> bytes:
    return sorted((served_run.data / str(label)).glob("*.png"))[index].read_bytes()


@contextlib.contextmanager
def running_server(app):
    """Serves ``app`` with uvicorn on a free port of 127.0.0.1 in a thread; yields the URL."""
    import uvicorn

    from workbench.deploy.serve import bind

    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def photo(image: bytes, *, size=(1600, 1200), seed: int = 0) -> bytes:
    """A large, noisy JPEG of an image, like a phone photo of it (hundreds of kB)."""
    picture = Image.open(io.BytesIO(image)).convert("RGB").resize(size, Image.BILINEAR)
    noise = np.random.default_rng(seed).normal(0, 6, (size[1], size[0], 3))
    pixels = np.clip(np.asarray(picture, np.float64) + noise, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


class ServeProcess:
    """A ``workbench serve`` process: its URL, host and port, and its log once it has stopped."""

    def __init__(self, process: subprocess.Popen, url: str):
        self.process, self.url = process, url
        self.port = int(re.search(r":(\d+)/$", url).group(1))
        self.log = None

    def stop(self) -> str:
        """Stops it as Ctrl+C does; returns its log (stderr)."""
        if self.log is None:
            self.process.send_signal(signal.SIGINT)
            _, self.log = self.process.communicate(timeout=60)
        return self.log


@contextlib.contextmanager
def serve_process(run, *options: str, preexec_fn=None):
    """Runs ``workbench serve RUN --port 0 OPTIONS`` until the block ends; yields a
    :class:`ServeProcess` once it prints its URL (the model is loaded and the port bound)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "workbench.cli", "serve", str(run), "--port", "0", *options],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=preexec_fn)
    server = None
    try:
        line = process.stdout.readline()
        found = re.search(r"at (http://127\.0\.0\.1:\d+/) ", line)
        if found is None:
            process.kill()
            raise RuntimeError(f"workbench serve did not start: {line!r} "
                               f"{process.communicate(timeout=30)[1][-2000:]}")
        server = ServeProcess(process, found.group(1))
        yield server
    finally:
        if server is not None:
            server.stop()
        elif process.poll() is None:
            process.kill()
            process.communicate(timeout=30)
