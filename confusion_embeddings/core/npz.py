"""Reading one 2-D array out of an `.npz` archive in blocks of rows, never whole.

Reads: the archive's zip member, as stored by np.savez or deflated by np.savez_compressed
(zipfile decompresses as it streams); writes nothing. np.load cannot memory-map an npz, so
a 1,281,167 x 1000 array would otherwise be held in memory whole. predictions.py reads the
score array of a predictions file with it.
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

from confusion_embeddings.core.errors import PipelineError, first_line

# What reading a damaged zip member can raise: a bad CRC, a compression method zipfile does
# not know, a cut deflate stream, an encrypted member (RuntimeError), a bad .npy header.
READ_ERRORS = (
    ValueError,
    OSError,
    EOFError,
    KeyError,
    RuntimeError,
    NotImplementedError,
    zipfile.BadZipFile,
    zlib.error,
)


def damaged(path: Path, key: str, exc: BaseException) -> PipelineError:
    detail = first_line(exc)
    return PipelineError(
        f"{path}: '{key}' cannot be read ({type(exc).__name__}: {detail}); the file is "
        "damaged or not written by np.savez, write it again",
    )


def _member_name(zf: zipfile.ZipFile, key: str) -> str:
    """The zip member np.load shows as `key`: `key.npy`, or `key` itself."""
    return f"{key}.npy" if f"{key}.npy" in zf.namelist() else key


def _read_header(fh) -> tuple | None:
    """(shape, fortran_order, dtype) of the .npy stream at fh, or None for format 3.0
    (unicode field names), which numpy has no public reader for."""
    version = npy_format.read_magic(fh)
    if version == (1, 0):
        return npy_format.read_array_header_1_0(fh)
    if version == (2, 0):
        return npy_format.read_array_header_2_0(fh)
    return None


class NpyMember:
    """One 2-D array inside an npz, read in blocks of rows without loading it whole.

    Works for stored (np.savez) and deflated (np.savez_compressed) members alike, since
    zipfile decompresses as it streams. A Fortran-ordered array (np.asfortranarray input)
    cannot be streamed by rows; it is loaded whole instead.
    """

    def __init__(self, path: Path, key: str) -> None:
        self.path = path
        self.key = key
        with zipfile.ZipFile(path) as zf:
            self.member = _member_name(zf, key)
            with zf.open(self.member) as fh:
                header = _read_header(fh)
        if header is None:  # a format version we do not stream: let numpy read it whole
            arr = self._load_whole()
            header = (arr.shape, True, arr.dtype)
        shape, fortran, dtype = header
        self.shape: tuple[int, ...] = tuple(shape)
        self.dtype: np.dtype = np.dtype(dtype)
        self.whole = bool(fortran)  # a Fortran-ordered array cannot be streamed by rows

    def _load_whole(self) -> np.ndarray:
        with np.load(self.path, allow_pickle=False) as npz:
            arr = npz[self.key]
        if not isinstance(arr, np.ndarray):  # not .npy data: np.load hands back raw bytes
            raise ValueError("not .npy data")
        return np.ascontiguousarray(arr)

    def blocks(self, rows: int) -> Iterator[np.ndarray]:
        try:
            yield from self._blocks(rows)
        except PipelineError:  # already one line naming the file (a PipelineError is a ValueError)
            raise
        except READ_ERRORS as exc:  # damage found only while streaming (e.g. a bad CRC at the end)
            raise damaged(self.path, self.key, exc) from None

    def _blocks(self, rows: int) -> Iterator[np.ndarray]:
        n, width = self.shape
        if self.whole:
            whole = self._load_whole()
            for start in range(0, n, rows):
                yield whole[start : start + rows]
            return
        row_bytes = width * self.dtype.itemsize
        with zipfile.ZipFile(self.path) as zf, zf.open(self.member) as fh:
            _read_header(fh)  # the data follows the header directly
            for start in range(0, n, rows):
                count = min(rows, n - start)
                buf = fh.read(count * row_bytes)
                if len(buf) != count * row_bytes:
                    raise PipelineError(
                        f"{self.path}: '{self.key}' is truncated; write the file again"
                    )
                yield np.frombuffer(buf, dtype=self.dtype).reshape(count, width)


class InMemory:
    """A score array already in memory, served in blocks of rows like NpyMember."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = np.ascontiguousarray(array)
        self.shape, self.dtype = self.array.shape, self.array.dtype

    def blocks(self, rows: int) -> Iterator[np.ndarray]:
        for start in range(0, self.shape[0], rows):
            yield self.array[start : start + rows]
