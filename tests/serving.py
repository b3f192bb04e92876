"""Shared by the web-service tests: one tiny trained run per session, a server in a thread and a
photo-like test image."""

import contextlib
import io
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

import tiny_data


@pytest.fixture(scope="session")
def served_run(tmp_path_factory):
    """A lenet trained for 10 epochs on the tiny digits (confident enough that a resized upload
    must keep its answer) and its Classifier, loaded as ``workbench serve`` loads it. Shared
    through conftest.py, so it is trained once per session."""
    from workbench.deploy.predict import Classifier

    root = tmp_path_factory.mktemp("serve")
    tiny_data.write_run(root, epochs=10, base_lr=0.05)
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
