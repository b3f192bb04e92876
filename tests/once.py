"""Work several test modules need, done once per test session, also when pytest-xdist runs the
modules in several worker processes: the pytest-xdist recipe, in which the first worker to ask
builds it in the session's shared temporary folder while holding a file lock, and the others
wait for it and reuse it."""

from __future__ import annotations

import shutil
from pathlib import Path

from filelock import FileLock
from xdist import is_xdist_worker

DONE = ".built"


def session_folder(request) -> Path:
    """The temporary folder of the whole test session: with pytest-xdist the workers' common
    parent folder, not a worker's own."""
    base = request.getfixturevalue("tmp_path_factory").getbasetemp()
    return base.parent if is_xdist_worker(request) else base


def built_once(request, name: str, build) -> Path:
    """``build(folder)`` called once per test session; returns ``folder``.

    Args:
        request: the calling fixture's ``request``.
        name: the folder's name, one per kind of work.
        build: writes what the tests need into the (new, empty) folder it is given.

    Returns:
        The folder, which the tests must only read: several workers share it.
    """
    folder = session_folder(request) / name
    with FileLock(str(folder) + ".lock"):
        if not (folder / DONE).is_file():  # a worker that failed half way left no mark
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            (folder / DONE).touch()
    return folder
