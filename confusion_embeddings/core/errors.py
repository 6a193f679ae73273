"""The one exception type a user sees, and how other exceptions are shortened for them."""

from __future__ import annotations


class PipelineError(ValueError):
    """An error the user can fix: its message is one line naming what and how. A ValueError,
    which is what Python code catches for a bad value (`confusion_embeddings.PipelineError`)."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none)."""
    return (str(exc).splitlines() or [type(exc).__name__])[0]
