"""The one exception type a user sees, and how other exceptions are shortened for them."""

from __future__ import annotations


class PipelineError(Exception):
    """An error the user can fix: its message is one line naming what and how."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none)."""
    return (str(exc).splitlines() or [type(exc).__name__])[0]
