"""A picture collection as files: a folder, or a .tar/.tar.gz/.zip archive read in place.

Reads: the folder or archive given; never extracts anything to disk. Members with absolute
paths, '..' components, links or special files are refused: an archive is data, not a
file system to recreate.
"""

from __future__ import annotations

import os
import re
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path
from typing import Any

from confusion_embeddings.core.errors import PipelineError, first_line

# Folders that archivers add and that are no part of the data (macOS resource forks);
# names starting with "." (.DS_Store, ._x.jpg) are skipped as well.
JUNK_DIRS = {"__MACOSX"}


def _check_member_name(source: Path, name: str) -> str:
    """Return an archive member's name as a clean relative posix path, or refuse it."""
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise PipelineError(
            f"{source}: member '{name}' has an absolute path; refusing to read this archive"
        )
    parts = [p for p in re.split(r"[/\\]", name) if p not in ("", ".")]
    if ".." in parts:
        raise PipelineError(
            f"{source}: member '{name}' contains a '..' component; refusing to read this archive"
        )
    return "/".join(parts)


class Source:
    """A directory, tar or zip archive seen as {relative posix path: handle} plus folders.

    `files` keeps storage order, so reading in that order streams a compressed tar forward.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.files: dict[str, Any] = {}
        self.dirs: set[str] = set()
        self._tar: tarfile.TarFile | None = None
        self._zip: zipfile.ZipFile | None = None
        try:
            if path.is_dir():
                self._list_dir(path, "", 0)
            elif zipfile.is_zipfile(path):
                self._list_zip()
            elif self._is_tar(path):
                self._list_tar()
            else:
                raise PipelineError(
                    f"{path}: unrecognised file type; expected a directory, a .tar, "
                    ".tar.gz/.tgz or .zip archive, or the CIFAR-10/100 python tarball"
                )
        except BaseException:
            self.close()
            raise

    def _is_tar(self, path: Path) -> bool:
        # is_tarfile lets some errors of a cut .gz through (EOFError on a cut gzip header).
        try:
            return tarfile.is_tarfile(path)
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            raise self._corrupt(exc) from None

    # -- listing
    def _list_dir(self, folder: Path, rel: str, depth: int) -> None:
        root = self.path.resolve()
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if is_junk(entry.name):
                continue
            sub = f"{rel}/{entry.name}" if rel else entry.name
            if entry.is_symlink():
                target = Path(entry.path).resolve()
                if not target.is_relative_to(root):
                    raise PipelineError(
                        f"{self.path}: {sub} is a symlink to {target}, outside the source "
                        "folder; copy the file in instead"
                    )
                if not target.exists():
                    raise PipelineError(f"{self.path}: {sub} is a broken symlink; remove it")
            if entry.is_dir():
                # wrapper/split/class/image is the deepest layout; the bound also keeps a
                # symlink to an ancestor folder from looping forever.
                if depth >= 3:
                    raise PipelineError(
                        f"{self.path}: {sub}/ is nested too deeply; "
                        "expected <split>/<class>/<image>"
                    )
                self.dirs.add(sub)
                self._list_dir(Path(entry.path), sub, depth + 1)
            elif entry.is_file():
                self.files[sub] = Path(entry.path)
            else:
                raise PipelineError(f"{self.path}: {sub} is not a regular file; remove it")

    def _list_tar(self) -> None:
        try:
            # Kept open for reading members one by one; close() closes it.
            self._tar = tarfile.open(self.path, "r:*")  # noqa: SIM115
            members = self._tar.getmembers()
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            raise self._corrupt(exc) from None
        for m in members:
            kind = (
                "symlink"
                if m.issym()
                else "hardlink"
                if m.islnk()
                else "dir"
                if m.isdir()
                else "file"
                if m.isreg()
                else "other"
            )
            self._add(m.name, kind, m, m.linkname)

    def _list_zip(self) -> None:
        try:
            self._zip = zipfile.ZipFile(self.path)
            infos = self._zip.infolist()
        except (zipfile.BadZipFile, OSError) as exc:
            raise self._corrupt(exc) from None
        for info in infos:
            kind = (
                "symlink"
                if stat.S_ISLNK(info.external_attr >> 16)
                else "dir"
                if info.is_dir()
                else "file"
            )
            self._add(info.filename, kind, info)

    def _add(self, raw: str, kind: str, handle: Any, link: str = "") -> None:
        """List one archive member: a folder or a regular file; refuse anything else."""
        name = _check_member_name(self.path, raw)
        if kind in ("symlink", "hardlink"):
            target = f" (-> {link})" if link else ""
            raise PipelineError(
                f"{self.path}: member '{raw}' is a {kind}{target}; "
                "refusing to read this archive; pack real files instead"
            )
        if kind == "dir":
            if name:
                self.dirs.add(name)
        elif kind == "file":
            self.files[name] = handle
        else:
            raise PipelineError(
                f"{self.path}: member '{raw}' is not a regular file or folder; "
                "refusing to read this archive"
            )

    # -- reading
    def read(self, rel: str) -> bytes:
        handle = self.files[rel]
        try:
            if self._tar is not None:
                fh = self._tar.extractfile(handle)
                assert fh is not None  # regular members always have a file object
                return fh.read()
            if self._zip is not None:
                return self._zip.read(handle)
            return handle.read_bytes()
        except (
            tarfile.TarError,
            zipfile.BadZipFile,
            EOFError,
            OSError,
            zlib.error,
            RuntimeError,
        ) as exc:
            raise self._corrupt(exc, rel) from None

    def _corrupt(self, exc: BaseException, rel: str | None = None) -> PipelineError:
        what = f"{self.path}: {rel}" if rel else str(self.path)
        detail = first_line(exc)
        return PipelineError(
            f"{what}: cannot read ({type(exc).__name__}: {detail}); the file may be "
            "truncated or corrupt, fetch it again (e.g. `dvc pull --force`)"
        )

    def close(self) -> None:
        for handle in (self._tar, self._zip):
            if handle is not None:
                handle.close()

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def is_junk(rel: str) -> bool:
    return any(p.startswith(".") or p in JUNK_DIRS for p in rel.split("/"))


def open_source(source: Path) -> Source:
    if not source.exists():
        parts = source.absolute().parts
        if any(parts[i : i + 2] == ("data", "raw") for i in range(len(parts) - 1)):
            raise PipelineError(f"{source}: not found; run `dvc pull` to fetch it")
        raise PipelineError(f"{source}: not found; check the --source path")
    return Source(source)
