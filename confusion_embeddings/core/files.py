"""Outputs written atomically and byte-reproducibly.

Writes: nothing by itself. `atomic_dir` / `atomic_file` give a stage a temporary path that
is renamed into place only when the stage succeeds, so a killed stage leaves either the old
complete output or none; `save_npz` and `write_json` write equal data as equal bytes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npy_format

# A fixed zip timestamp: np.savez stamps the current time, which breaks byte-identical reruns.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _host() -> str:
    # Only characters that are safe in a file name; the name tells whose temporary it is.
    return "".join(c if c.isalnum() else "_" for c in socket.gethostname()) or "host"


def _tmp_prefix(path: Path, pid: int | None = None) -> str:
    return f".{path.name}.tmp-{_host()}-{os.getpid() if pid is None else pid}-"


def _sweep_stale(path: Path) -> None:
    """Remove temporary siblings of `path` left by a stage of this host that was killed
    (SIGKILL, power cut): their names carry the writer's host and pid, and that process no
    longer exists. Another host's temporaries (a shared file system) are never touched."""
    mine = f".{path.name}.tmp-{_host()}-"
    for old in path.parent.glob(f"{mine}*"):
        pid = old.name[len(mine) :].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            _remove(old)


def _tmp_sibling(path: Path, kind: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep_stale(path)
    prefix = _tmp_prefix(path)
    # mkdtemp/mkstemp create private (0700/0600) paths; the final output should carry the
    # ordinary permissions a plain open() would have given it.
    if kind == "file":
        fd, name = tempfile.mkstemp(prefix=prefix, dir=path.parent)
        os.close(fd)
        os.chmod(name, 0o666 & ~_umask())
        return Path(name)
    made = Path(tempfile.mkdtemp(prefix=prefix, dir=path.parent))
    os.chmod(made, 0o777 & ~_umask())
    return made


def _fsync_tree(path: Path) -> None:
    """Flush file contents before the rename so that a power cut cannot expose empty files."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for f in files:
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def _replacing(path: Path, kind: str, replace: Callable[[Path, Path], None]) -> Iterator[Path]:
    """A temporary sibling of `path`, put in its place by `replace` only if the block
    succeeds, removed otherwise (also on KeyboardInterrupt)."""
    tmp = _tmp_sibling(path, kind)
    try:
        yield tmp
        _fsync_tree(tmp)
        replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def _replace_dir(tmp: Path, path: Path) -> None:
    if path.exists() or path.is_symlink():
        # rename() cannot replace a non-empty directory: move the old one aside first.
        old = _tmp_sibling(path, "dir")
        old.rmdir()
        path.rename(old)
        tmp.rename(path)
        _remove(old)
    else:
        tmp.rename(path)


def atomic_dir(path: str | Path) -> contextlib.AbstractContextManager[Path]:
    """Yield an empty temporary directory that replaces `path` only if the block succeeds."""
    return _replacing(Path(path), "dir", _replace_dir)


def atomic_file(path: str | Path) -> contextlib.AbstractContextManager[Path]:
    """Yield a temporary file path that replaces `path` only if the block succeeds."""
    return _replacing(Path(path), "file", os.replace)


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically, keys in a stable order so that reruns are byte-identical."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_npz(path: str | Path, arrays: Mapping[str, np.ndarray]) -> None:
    """np.savez without timestamps (byte-identical for equal arrays), never pickled."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
            with zf.open(info, "w", force_zip64=True) as fh:
                npy_format.write_array(fh, np.asanyarray(arr), allow_pickle=False)
