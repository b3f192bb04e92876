"""Shared test setup: quiet TensorFlow, headless matplotlib, and how the tests share out over
pytest-xdist's workers.

``make test`` runs ``pytest -n auto``, and pyproject.toml's ``--dist loadscope
--no-loadscope-reorder`` makes each test module one work unit, so that its module fixtures (a
trained model, a project folder) are built once, on one worker. (``--dist loadgroup`` with
``xdist_group`` marks would group across modules, but with this pytest it silently groups
nothing: pytest-dev/pytest-xdist#1386.) The modules are handed out heaviest first (the most
``slow`` tests, then the most tests), so that a long one does not start last. Tests that must
not run beside each other (processes meeting on ports, CPU-bound timing) take the
``one_at_a_time`` fixture. ``pytest -m "not slow"`` is the fast loop.
"""

import os

import pytest
from filelock import FileLock
from xdist import is_xdist_worker

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")

from once import session_folder  # noqa: E402
# The served run is trained once per session for the serve, browser and widget tests; a fixture
# imported into each module instead would be a separate fixture, trained once per module.
from serving import served_run  # noqa: E402, F401


def pytest_collection_modifyitems(session, config, items):
    if not is_xdist_worker(session):  # one process: the files' order
        return
    weight = {}  # the workers' order is the order in which the modules are handed out
    for item in items:
        slow, count = weight.get(item.path, (0, 0))
        weight[item.path] = (slow + (item.get_closest_marker("slow") is not None), count + 1)
    items.sort(key=lambda item: (-weight[item.path][0], -weight[item.path][1]))  # stable


@pytest.fixture
def one_at_a_time(request):
    """Holds a lock shared by every pytest-xdist worker for the test's duration: two tests that
    take it never run at the same time."""
    with FileLock(str(session_folder(request) / "one_at_a_time.lock")):
        yield
