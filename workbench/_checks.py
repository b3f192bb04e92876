"""Argument checks shared by every public function, and the error a user's mistake raises.

Each check raises :class:`UsageError` (a ``ValueError``) naming the argument, the value received
and what is allowed, the way Keras does: ``min_per_class must be >= 1, received: 0``.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import numbers
import os
import warnings
from collections.abc import Iterable
from pathlib import Path

DEBUG_VARIABLE = "WORKBENCH_DEBUG"  # set to 1: every error shows its whole traceback


class UsageError(ValueError):
    """An error the user caused and can fix (a bad parameter, a folder too small to split, no
    internet for the weights, a run already there): its message says what and how.

    In Jupyter (and so in a notebook papermill runs, and in papermill's own error), it shows
    as its message alone, without the traceback or the errors it was raised from; with the
    environment variable ``WORKBENCH_DEBUG=1`` it shows the whole traceback as any error.
    """

    @property
    def _render_traceback_(self):
        return short_traceback(self)


class MissingPath(UsageError, FileNotFoundError):
    """A file or folder the caller named is not there: a :class:`UsageError` that is also a
    ``FileNotFoundError``, so code catching either finds it."""


class PathInTheWay(UsageError, FileExistsError):
    """Something the caller named stands where the call must write (a file where a folder
    belongs, a folder of other files): a :class:`UsageError` that is also a
    ``FileExistsError``."""


def short_traceback(error: BaseException):
    """What IPython's ``_render_traceback_`` hook returns for ``error``: a function giving its
    message as the lines to show. IPython asks ``hasattr(error, "_render_traceback_")`` before
    calling it, so with ``WORKBENCH_DEBUG=1`` this raises AttributeError and the hook is absent.

    Args:
        error: the exception shown.

    Returns:
        A function of no arguments returning the lines ``["ClassName: message"]``.
    """
    if os.environ.get(DEBUG_VARIABLE, "").strip() not in ("", "0"):
        raise AttributeError("_render_traceback_")  # the usual traceback, chain included
    return lambda: [f"{type(error).__name__}: {one_line(error)}"]


def check_int(name: str, value, *, minimum: int | None = None,
              maximum: int | None = None) -> int:
    """Returns ``value`` as an int after checking its type and bounds."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise UsageError(f"{name} must be an integer, received: {value!r}")
    if minimum is not None and value < minimum:
        raise UsageError(f"{name} must be >= {minimum}, received: {value!r}")
    if maximum is not None and value > maximum:
        raise UsageError(f"{name} must be <= {maximum}, received: {value!r}")
    return int(value)


def check_bool(name: str, value) -> bool:
    """Returns ``value`` if it is True or False (not 0, 1 or a string)."""
    if not isinstance(value, bool):
        raise UsageError(f"{name} must be True or False, received: {value!r}")
    return value


def check_number(name: str, value, *, minimum: float | None = None, maximum: float | None = None,
                 exclusive_minimum: bool = False) -> float:
    """Returns ``value`` as a float after checking its type and bounds."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value != value:
        raise UsageError(f"{name} must be a number, received: {value!r}")
    if minimum is not None:
        if exclusive_minimum and not value > minimum:
            raise UsageError(f"{name} must be > {minimum}, received: {value!r}")
        if not exclusive_minimum and value < minimum:
            raise UsageError(f"{name} must be >= {minimum}, received: {value!r}")
    if maximum is not None and value > maximum:
        raise UsageError(f"{name} must be <= {maximum}, received: {value!r}")
    return float(value)


def check_folder_path(name: str, path) -> Path:
    """Returns ``path`` as a ``Path`` if a folder can be there: it is one, or it and the
    nearest of its parents that exists are no files (checked before long work, not after).

    Raises:
        PathInTheWay: naming the file that stands where the folder or one above it belongs.
    """
    path = Path(path)
    blocker = next((folder for folder in (path, *path.parents) if folder.exists()), None)
    if blocker is not None and not blocker.is_dir():
        where = "is a file" if blocker == path else f"lies under {str(blocker)!r}, a file"
        raise PathInTheWay(f"{name} {str(path)!r} {where}, where a folder is needed")
    return path


def one_line(text) -> str:
    """``text`` (a message or an exception) on one line, each run of whitespace one space.

    An exception with an empty message gives its class name, so an error line is never blank.
    """
    line = " ".join(str(text).split())
    if not line and isinstance(text, BaseException):
        return type(text).__name__
    return line


def check_choice(name: str, value, choices: Iterable):
    """Returns ``value`` if it is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise UsageError(f"{name} must be one of {allowed}, received: {value!r}")
    return value


def moved_names(module: str, moved: dict[str, str]):
    """A module ``__getattr__`` that still finds names moved to other modules, for one release.

    Args:
        module: the old module's ``__name__``.
        moved: each moved name and the module it lives in now.

    Returns:
        The function to assign to the old module's ``__getattr__``: it returns the name from its
        new module with a ``DeprecationWarning`` (:func:`deprecated`) saying where to
        import it from.
    """
    def __getattr__(name: str):
        if name not in moved:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        deprecated(f"{module}.{name} is deprecated and will be removed in the next release: "
                   f"import it from {moved[name]}")
        return getattr(importlib.import_module(moved[name]), name)

    return __getattr__


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def deprecated(message: str) -> None:
    """Warns with a ``DeprecationWarning`` that an old name or value still works, for one
    release; ``message`` says what to use instead. The warning names the first line outside
    the workbench package (the user's call), so Python's default filters show it there."""
    frame, level = inspect.currentframe().f_back, 2
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, DeprecationWarning, stacklevel=level)


def renamed_arguments(**renames: str):
    """A decorator: the old keyword names of a function's arguments keep working for one
    release, with a ``DeprecationWarning`` naming the new ones.

    Args:
        renames: ``old_name="new_name"`` for each renamed argument.

    Example::

        @renamed_arguments(out_dir="out")
        def prepare(data, out, ...): ...

        prepare("photos", out_dir="splits")  # warns: out_dir= is now out=
    """
    def decorate(function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            for old, new in renames.items():
                if old not in kwargs:
                    continue
                if new in kwargs:
                    raise UsageError(f"{function.__qualname__}: give {new} (its new name) or "
                                     f"{old}, not both, received: {old} and {new}")
                deprecated(f"{function.__qualname__}: {old}= is deprecated and will be removed "
                           f"in the next release, use {new}=")
                kwargs[new] = kwargs.pop(old)
            return function(*args, **kwargs)
        return wrapper
    return decorate
