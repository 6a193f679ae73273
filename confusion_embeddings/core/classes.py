"""The check a list of unseen classes passes, wherever it comes from: params.yaml's
train.unseen (data/selection.py) or a predictions file's 'unseen' key (predictions.py)."""

from __future__ import annotations

from collections.abc import Sequence


def unseen_problem(classes: Sequence[str], unseen: Sequence[str]) -> str | None:
    """What is wrong with `unseen` as the classes left out of `classes`, said so that it
    follows the name of where it came from, or None: every name must be one of the
    classes, none listed twice, and at least two classes must stay known."""
    strangers = [name for name in unseen if name not in classes]
    if strangers:
        return f"names {strangers}, not among the classes ({', '.join(classes)})"
    if len(set(unseen)) != len(unseen):
        return f"lists a class twice: {list(unseen)}"
    known = len(classes) - len(unseen)
    if known < 2:
        return f"leaves {known} of {len(classes)} classes known; a classifier needs at least two"
    return None
