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

Each worker (and every process it starts: kernels, commands) gets its share of the cores as
TensorFlow's and OpenMP's thread counts: one thread each with ``-n auto``. Left at their
defaults, every process sizes its pools to all the cores, and the pools of two workers, each
spinning while it waits for work, cost a fifth more CPU time for the same tests (measured: two
processes training side by side on 2 cores, 45-48 s instead of 57-61 s).
"""

import os

import pytest
from filelock import FileLock
from xdist import is_xdist_worker

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")


def _share_the_cores() -> None:
    """Before TensorFlow makes its thread pools: a worker's share of the cores for each."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = str(max(1, (os.cpu_count() or 1) // workers))
        for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
            os.environ.setdefault(name, threads)


_share_the_cores()

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
