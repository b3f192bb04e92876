"""Argument checks shared by every public function.

Each raises ``ValueError`` naming the argument, the value received and what is allowed, the way
Keras does: ``ValueError: min_per_class must be >= 1, received: 0``.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable


def check_int(name: str, value, *, minimum: int | None = None,
              maximum: int | None = None) -> int:
    """Returns ``value`` as an int after checking its type and bounds."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, received: {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, received: {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, received: {value!r}")
    return int(value)


def check_bool(name: str, value) -> bool:
    """Returns ``value`` if it is True or False (not 0, 1 or a string)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, received: {value!r}")
    return value


def check_number(name: str, value, *, minimum: float | None = None, maximum: float | None = None,
                 exclusive_minimum: bool = False) -> float:
    """Returns ``value`` as a float after checking its type and bounds."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value != value:
        raise ValueError(f"{name} must be a number, received: {value!r}")
    if minimum is not None:
        if exclusive_minimum and not value > minimum:
            raise ValueError(f"{name} must be > {minimum}, received: {value!r}")
        if not exclusive_minimum and value < minimum:
            raise ValueError(f"{name} must be >= {minimum}, received: {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, received: {value!r}")
    return float(value)


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
        raise ValueError(f"{name} must be one of {allowed}, received: {value!r}")
    return value
