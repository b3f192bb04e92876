"""Shared test setup: quiet TensorFlow, headless matplotlib, and how the tests share out over
pytest-xdist's workers.

``make test`` runs ``pytest -n auto``, and pyproject.toml's ``--dist loadgroup
--no-loadscope-reorder`` makes each ``xdist_group`` one work unit. A test without a group of its
own is grouped with its module, so that a module's fixtures (a trained model, a project folder)
are built once, on one worker; a test that must not run beside another (processes meeting on
ports, CPU-bound timing) names a group shared with it. The groups are handed out heaviest first
(the most ``slow`` tests, then the most tests), so that a long one does not start last.
``pytest -m "not slow"`` is the fast loop.
"""

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")

# The served run is trained once per session for the serve, browser and widget tests; a fixture
# imported into each module instead would be a separate fixture, trained once per module.
from serving import served_run  # noqa: E402, F401


def group_of(item) -> str:
    """The item's ``xdist_group``: its own mark's, else its module's."""
    marker = item.get_closest_marker("xdist_group")
    if marker is not None:
        return str(marker.args[0] if marker.args else marker.kwargs.get("name", "default"))
    return item.nodeid.split("::")[0]


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the marks
def pytest_collection_modifyitems(config, items):
    groups = {}
    for item in items:
        name = group_of(item)
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(name))
        slow, count = groups.get(name, (0, 0))
        groups[name] = (slow + (item.get_closest_marker("slow") is not None), count + 1)
    if os.environ.get("PYTEST_XDIST_WORKER"):  # the order the workers report is the queue's
        order = {name: rank for rank, name in enumerate(
            sorted(groups, key=lambda name: (-groups[name][0], -groups[name][1])))}
        items.sort(key=lambda item: order[group_of(item)])  # stable: a group keeps its order
