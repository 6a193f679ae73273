"""The resume checkpoint: a killed train stage continues from its last completed epoch.

Writes/reads `<dir>/<fingerprint>.msgpack` (the train state's leaves, the epoch history and
the seconds trained so far), replaced atomically after every epoch and removed when training
ends; `<dir>` belongs to one classifier. The fingerprint names exactly the computation that
would continue: the RunConfig (params, seed, the convolution and precision that run), the
device count, and the content of every path the train stage depends on (dvc.yaml's list: data,
code, kernel source). Any change starts afresh.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import serialization

from confusion_embeddings.cnn.config import RunConfig
from confusion_embeddings.core.files import atomic_file

# Folders DVC ignores too (.dvcignore): Python's byte-code caches change on every import.
_SKIPPED = {"__pycache__"}
_CHUNK = 1 << 22
# Keys of one epoch's record, in the order dvclive writes them.
HISTORY_KEYS = ("epoch", "train/loss", "train/accuracy", "test/accuracy")


def _hash_path(h: hashlib._Hash, path: Path) -> None:
    if path.is_dir():
        for child in sorted(path.iterdir()):
            if child.name not in _SKIPPED:
                _hash_path(h, child)
        return
    h.update(f"{path.as_posix()}\0".encode())
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)


def fingerprint(run: RunConfig, deps: Iterable[Path]) -> str:
    """Hex digest of everything a resumed run must share with the run that saved it."""
    computation = {"run": run.to_dict(), "devices": jax.device_count()}
    h = hashlib.sha256(json.dumps(computation, sort_keys=True).encode())
    for dep in sorted(Path(d) for d in deps):
        if dep.exists():
            _hash_path(h, dep)
        else:
            h.update(f"{dep.as_posix()}: missing\0".encode())
    return h.hexdigest()[:16]


class Resume:
    """The checkpoint of one fingerprinted training run under `folder`."""

    def __init__(self, folder: str | Path, fingerprint: str) -> None:
        self.path = Path(folder) / f"{fingerprint}.msgpack"

    def exists(self) -> bool:
        return self.path.exists()

    def save(self, state, history: list[dict], train_seconds: float) -> None:
        """Leaves of the train state in flattening order; the fingerprint in the file name
        guarantees that the reader builds the same tree structure."""
        leaves = {str(i): np.asarray(a) for i, a in enumerate(jax.tree.leaves(state))}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(self.path) as tmp:
            tmp.write_bytes(
                serialization.msgpack_serialize(
                    {"leaves": leaves, "history": history, "train_seconds": train_seconds}
                )
            )

    def load(self, template) -> tuple[Any, list[dict], float]:
        """(state shaped like `template`, history, seconds trained) from the checkpoint."""
        saved = serialization.msgpack_restore(self.path.read_bytes())
        leaves = [saved["leaves"][str(i)] for i in range(len(saved["leaves"]))]
        state = jax.tree.unflatten(jax.tree.structure(template), leaves)
        history = saved["history"]
        if isinstance(history, dict):  # msgpack_restore turns lists into {"0": ...} dicts
            history = [history[str(i)] for i in range(len(history))]
        # msgpack stores dict keys sorted; put each record back in the order it was made
        # in, the order dvclive writes reports/train/metrics.json in when it is replayed.
        history = [{k: h[k] for k in HISTORY_KEYS} for h in history]
        return state, history, float(saved["train_seconds"])

    def remove(self) -> None:
        """Remove the checkpoint, and any other in the folder: the folder is this
        classifier's, and a finished run makes every earlier computation's stale."""
        for old in self.path.parent.glob("*.msgpack"):
            old.unlink(missing_ok=True)
