"""The predictions file: the seam between "a classifier" and "the method".

Reads: one `.npz` archive (written with `np.savez` or `np.savez_compressed`; never pickled)
holding, for N pictures and C classes:

    labels   int [N]        true class of each picture, an index into `classes`
    classes  str [C]        class names: unique, non-empty, no whitespace (word2vec's text
                            format separates fields with whitespace)
    exactly one of
      probs  float [N, C]   probabilities: no NaN/inf, no negatives, rows sum to 1 (+-1e-3)
      logits float [N, C]   unnormalised scores (finite); softmax is applied where needed
      topk   int [N, k]     class indices, most probable first, each in [0, C), no
                            duplicates within a row; no probability is known
    optional
      split  int [N]        index into `splits` of the split each picture came from
      splits str [S]        split names, e.g. ["train", "test"] (given together with `split`)
      groups str []         a JSON object {group: [class names]}, or "null"
      unseen str [u]        classes the classifier was never trained on (params.yaml's
                            train.unseen): their pictures are scored like any other, but
                            the classifier cannot name them, so they are never a guess (a
                            `topk` row must not hold them). At least two classes must remain
                            known. `probs`/`logits` then come in either of two shapes:
                              [N, C]      every class's column; an unseen class's column
                                          is 0 in `probs` (the predict stage's form under
                                          predict.scores: probs: the classifier cannot
                                          name it; checked) and ignored in `logits`
                                          (never a guess either way)
                              [N, C - u]  the known classes' columns only, in the order of
                                          `classes` with the unseen ones left out: the
                                          output of a classifier trained on C - u classes
                                          (the predict stage's `logits`; probs rows then
                                          sum to 1 over these columns)

Any other key is ignored, with one warning line on stderr that names it (and the contract's
key it resembles, e.g. 'unseen' for 'unseen_classes': a misspelt optional key would
otherwise change the analysis without a word).

Writes: nothing. `load_predictions` validates the metadata and small arrays at once and
keeps the N x C (or N x k) score array on disk: `Predictions.blocks` streams it in blocks of
rows straight out of the zip member (core/npz.py), checking each block's values as it goes,
so a 1,281,167 x 1000 array is never held in memory whole.
"""

from __future__ import annotations

import difflib
import json
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from confusion_embeddings.core.classes import unseen_problem
from confusion_embeddings.core.errors import PipelineError, first_line
from confusion_embeddings.core.npz import READ_ERRORS, InMemory, NpyMember, damaged

SCORE_KEYS = ("probs", "logits", "topk")
OPTIONAL_KEYS = ("split", "splits", "groups", "unseen")
CONTRACT_KEYS = frozenset({"labels", "classes", *SCORE_KEYS, *OPTIONAL_KEYS})
# Tolerance on the row sums of `probs`: float32 softmax over 1000 classes is off by ~1e-5.
PROB_SUM_TOLERANCE = 1e-3
# Rows per block when load_predictions(check_values=True) makes its own pass over the scores.
CHECK_BLOCK_ROWS = 65536


def _fail(path: Path, message: str) -> PipelineError:
    return PipelineError(f"{path}: {message}")


@dataclass(frozen=True)
class Predictions:
    """A validated predictions file; the score array stays on disk (see `blocks`)."""

    path: Path
    labels: np.ndarray  # int [N], as stored
    classes: tuple[str, ...]
    kind: str  # "probs", "logits" or "topk"
    width: int  # C for probs/logits, k for topk
    split: np.ndarray | None  # int [N] indexing `splits`, or None
    splits: tuple[str, ...]
    groups: dict[str, list[str]] | None
    unseen: tuple[str, ...]  # classes never trained on: never a guess (see the contract)
    _member: NpyMember | InMemory = field(repr=False, compare=False)
    # probs/logits stored as [N, C - u], the known classes' columns only: `blocks` widens them
    known_only: bool = False

    @property
    def n(self) -> int:
        return int(self.labels.shape[0])

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def known_ids(self) -> list[int]:
        """Indices of the classes the classifier was trained on, in the order of `classes`."""
        return [i for i, c in enumerate(self.classes) if c not in self.unseen]

    @property
    def unseen_ids(self) -> list[int]:
        """Indices of the unseen classes, in the order of `classes`."""
        return [i for i, c in enumerate(self.classes) if c in self.unseen]

    def blocks(self, rows: int) -> Iterator[np.ndarray]:
        """Yield the score array in consecutive blocks of `rows` rows (the last may be
        shorter), each checked against the contract; a bad value raises PipelineError
        naming its row. Blocks are read-only arrays of freshly read bytes, native dtype,
        always C wide for probs/logits: a known-classes-only array comes widened, its
        unseen classes' columns 0 (probs) or -inf (logits), never a guess either way."""
        start = 0
        for block in self._member.blocks(rows):
            _check_block(self.path, self.kind, block, start, self.classes, self._blocked)
            yield self._widened(block) if self.known_only else block
            start += block.shape[0]

    @property
    def _blocked(self) -> list[int]:
        """The unseen classes' indices into a stored row: none in the known-only form."""
        return [] if self.known_only else self.unseen_ids

    def _widened(self, block: np.ndarray) -> np.ndarray:
        fill = 0.0 if self.kind == "probs" else -np.inf
        full = np.full((block.shape[0], self.n_classes), fill, block.dtype)
        full[:, self.known_ids] = block
        full.flags.writeable = False  # as the stored blocks: a reader cannot alter the file's
        return full


def _check_block(
    path: Path,
    kind: str,
    block: np.ndarray,
    start: int,
    classes: tuple[str, ...],
    unseen: list[int],
) -> None:
    """The contract's checks of one block of stored rows (`start`: the first one's index);
    `unseen`: the unseen classes' indices, to check where a stored row holds them."""
    n_classes = len(classes)

    def row_of(bad_rows: np.ndarray) -> int:
        return start + int(np.flatnonzero(bad_rows)[0])

    if kind in ("probs", "logits"):
        finite = np.isfinite(block).all(axis=1)
        if not finite.all():
            raise _fail(
                path, f"'{kind}' row {row_of(~finite)} holds NaN or inf; every value must be finite"
            )
    if kind == "probs":
        negative = (block < 0).any(axis=1)
        if negative.any():
            raise _fail(
                path,
                f"'probs' row {row_of(negative)} has a negative probability; save raw scores "
                "as 'logits' instead",
            )
        if unseen:
            named = (block[:, unseen] != 0).any(axis=1)
            if named.any():
                row = row_of(named)
                p = block[row - start, unseen]
                col = int(np.flatnonzero(p)[0])
                name = classes[unseen[col]]
                raise _fail(
                    path,
                    f"'probs' row {row} gives the unseen class '{name}' probability "
                    f"{p[col]:.6g}; a classifier never trained on a class gives it 0 (or "
                    "store the known classes' columns only)",
                )
        sums = block.sum(axis=1, dtype=np.float64)
        off = np.abs(sums - 1.0) > PROB_SUM_TOLERANCE
        if off.any():
            row = row_of(off)
            raise _fail(
                path,
                f"'probs' row {row} sums to {sums[row - start]:.6g}, not 1 "
                f"(+-{PROB_SUM_TOLERANCE}); if these are unnormalised scores or "
                "log-probabilities, save them as 'logits' instead",
            )
    if kind == "topk":
        out_of_range = ((block < 0) | (block >= n_classes)).any(axis=1)
        if out_of_range.any():
            raise _fail(
                path,
                f"'topk' row {row_of(out_of_range)} holds a class index outside [0, {n_classes})",
            )
        if block.shape[1] > 1:
            # A stable sort of small integers is a radix sort: linear even for k = 1000.
            ordered = np.sort(block, axis=1, kind="stable")
            dup = (ordered[:, 1:] == ordered[:, :-1]).any(axis=1)
            if dup.any():
                raise _fail(
                    path,
                    f"'topk' row {row_of(dup)} lists a class twice; each row must name k "
                    "different classes",
                )
        if unseen:
            named = np.isin(block, unseen).any(axis=1)
            if named.any():
                raise _fail(
                    path,
                    f"'topk' row {row_of(named)} guesses an unseen class "
                    f"({', '.join(classes[i] for i in unseen)}); a classifier "
                    "cannot name a class it was never trained on: drop it from 'unseen' or "
                    "from the guesses",
                )


def _str_array(path: Path, key: str, arr: np.ndarray, ndim: int) -> np.ndarray:
    if arr.dtype.kind != "U":
        raise _fail(
            path, f"'{key}' must be a str array (np.array(names, dtype=str)), got dtype {arr.dtype}"
        )
    if arr.ndim != ndim:
        raise _fail(path, f"'{key}' must have {ndim} dimension(s), got shape {arr.shape}")
    return arr


def _int_array(path: Path, key: str, arr: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if arr.dtype.kind not in "iu":
        raise _fail(path, f"'{key}' must be an integer array, got dtype {arr.dtype}")
    if arr.shape != shape:
        raise _fail(path, f"'{key}' must have shape {shape}, got {arr.shape}")
    return arr


def _check_names(path: Path, key: str, names: list[str]) -> None:
    for i, name in enumerate(names):
        if not name:
            raise _fail(path, f"'{key}'[{i}] is an empty name; every name must be non-empty")
        if any(ch.isspace() for ch in name):
            raise _fail(
                path, f"'{key}'[{i}] = {name!r} contains whitespace; replace it (e.g. with '_')"
            )
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise _fail(path, f"'{key}' lists {name!r} twice; names must be unique")
        seen.add(name)


def parse_groups(source: str, text: str, classes: tuple[str, ...]) -> dict[str, list[str]] | None:
    """Parse and check a groups JSON object {group: [class names]}; "null" gives None.

    `source` names where the text came from, for the error messages.
    """
    try:
        groups = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PipelineError(
            f"{source}: 'groups' is not valid JSON ({exc.msg}); expected {{group: [class names]}}"
        ) from None
    except RecursionError:  # e.g. "[[[[...": nested deeper than the parser's stack
        raise PipelineError(
            f"{source}: 'groups' is nested too deeply; expected {{group: [class names]}}"
        ) from None
    if groups is None:
        return None
    if not isinstance(groups, dict) or not all(
        isinstance(v, list) and all(isinstance(c, str) for c in v) for v in groups.values()
    ):
        raise PipelineError(f"{source}: 'groups' must be a JSON object {{group: [class names]}}")
    check_groups(source, groups, classes)
    return {str(k): list(v) for k, v in groups.items()}


def check_groups(source: str, groups: dict[str, list[str]], classes: tuple[str, ...]) -> None:
    """Every group non-empty, every member a known class, no class in two groups."""
    known = set(classes)
    owner: dict[str, str] = {}
    for group, members in groups.items():
        if not members:
            raise PipelineError(
                f"{source}: group '{group}' is empty; list at least one class or drop it"
            )
        for name in members:
            if name not in known:
                close = difflib.get_close_matches(name, classes, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                shown = ", ".join(classes[:20]) + (
                    f", ... ({len(classes)} in all)" if len(classes) > 20 else ""
                )
                raise PipelineError(
                    f"{source}: group '{group}' names unknown class {name!r}{hint}; "
                    f"valid classes: {shown}"
                )
            if name in owner:
                raise PipelineError(
                    f"{source}: class {name!r} is in both group '{owner[name]}' and group "
                    f"'{group}'; groups must not overlap"
                )
            owner[name] = group


def _open_npz(path: Path) -> np.lib.npyio.NpzFile:
    """np.load an existing .npz, refusing anything that is not one (never via pickle)."""
    if not path.exists():
        raise _fail(
            path,
            "predictions file not found; run `dvc repro` (the predict stages write the CNNs' "
            "files), or in a study point params.yaml 'pairs.predictions' at your .npz "
            "(format: confusion_embeddings/predictions.py)",
        )
    if path.is_file() and not zipfile.is_zipfile(path):
        # np.load would try it as a pickle and suggest allow_pickle=True: never that.
        with open(path, "rb") as fh:
            npy = fh.read(6) == b"\x93NUMPY"
        if not npy:
            raise _fail(
                path, "cannot be read as an .npz archive (not a zip file); write it with np.savez"
            )
    try:
        npz = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise _fail(
            path, f"cannot be read as an .npz archive ({first_line(exc)}); write it with np.savez"
        ) from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise _fail(
            path,
            "is a single .npy array, not an .npz archive; write it with "
            "np.savez(path, labels=..., classes=..., probs=...)",
        )
    return npz


def _member_reader(npz: np.lib.npyio.NpzFile, path: Path):
    """`get(key)`: one member as an ndarray, with the contract's errors for bad members."""

    def get(key: str) -> np.ndarray:
        try:
            arr = npz[key]
        except ValueError as exc:
            if "allow_pickle" in str(exc):  # object arrays: refused since they would need pickle
                raise _fail(path, _object_array(key)) from None
            raise damaged(path, key, exc) from None
        except READ_ERRORS as exc:
            raise damaged(path, key, exc) from None
        if not isinstance(arr, np.ndarray):  # a member that is not .npy data comes back as bytes
            raise _fail(path, f"'{key}' is not .npy data; write the file with np.savez")
        return arr

    return get


def _object_array(key: str) -> str:
    """The message for an object array (numpy stores a dict or a list of str as one)."""
    if key == "groups":
        return (
            "'groups' is an object array (a dict saved as it is); store it as a JSON string: "
            'groups=np.array(json.dumps({"round": ["zero", "six"], ...}))'
        )
    return (
        f"'{key}' is an object array; store plain numbers or fixed-width str (dtype=str), "
        "never objects"
    )


def _did_you_mean(key: str, unknown: set[str]) -> str:
    close = difflib.get_close_matches(key, sorted(unknown), n=1, cutoff=0.5)
    return f"; did you mean '{key}' (not '{close[0]}')?" if close else ""


def _warn_ignored(path: Path, keys: set[str]) -> None:
    """One stderr line naming the keys outside the contract, and the optional key each one
    resembles where it does (a misspelt 'unseen' would leave the class a known one)."""
    ignored = sorted(keys - CONTRACT_KEYS)
    if not ignored:
        return
    hints = []
    for key in ignored:
        close = difflib.get_close_matches(key, OPTIONAL_KEYS, n=1, cutoff=0.6)
        if close and close[0] not in keys:
            hints.append(f"'{key}' is not '{close[0]}'")
    named = ", ".join(f"'{k}'" for k in ignored)
    hint = f" ({'; '.join(hints)}: rename it if it was meant)" if hints else ""
    print(f"warning: {path}: ignored key(s) {named}, not in the contract{hint}", file=sys.stderr)


def _score_kind(path: Path, keys: set[str]) -> str:
    found = ", ".join(sorted(keys)) or "none"
    known = CONTRACT_KEYS
    for key in ("labels", "classes"):
        if key not in keys:
            hint = _did_you_mean(key, keys - known)
            raise _fail(path, f"missing key '{key}' (keys found: {found}){hint}")
    present = [k for k in SCORE_KEYS if k in keys]
    if len(present) != 1:
        what = "none" if not present else " and ".join(present)
        hints = "".join(_did_you_mean(k, keys - known) for k in SCORE_KEYS) if not present else ""
        raise _fail(
            path,
            f"needs exactly one of 'probs', 'logits', 'topk'; found {what} (keys found: "
            f"{found}){hints}",
        )
    return present[0]


def _read_labels(path: Path, get, n_classes: int) -> np.ndarray:
    labels = get("labels")
    if labels.ndim != 1 or labels.shape[0] == 0:
        raise _fail(path, f"'labels' must be a non-empty 1-D array, got shape {labels.shape}")
    n = labels.shape[0]
    _int_array(path, "labels", labels, (n,))
    if labels.min() < 0 or labels.max() >= n_classes:
        bad = int(np.flatnonzero((labels < 0) | (labels >= n_classes))[0])
        one_based = labels.min() == 1 and labels.max() == n_classes
        raise _fail(
            path,
            f"'labels'[{bad}] = {int(labels[bad])} is outside [0, {n_classes}) "
            f"(there are {n_classes} classes)"
            + (
                "; labels are 0-based indices into 'classes', and these run from 1 to "
                f"{n_classes}: subtract 1"
                if one_based
                else "; labels are 0-based indices into 'classes'"
            ),
        )
    return labels


def _read_splits(path: Path, get, keys: set[str], n: int) -> tuple[np.ndarray | None, tuple]:
    if ("split" in keys) != ("splits" in keys):
        raise _fail(path, "'split' and 'splits' go together: give both or neither")
    if "split" not in keys:
        return None, ()
    splits = tuple(str(s) for s in _str_array(path, "splits", get("splits"), 1).tolist())
    if not 1 <= len(splits) <= 127:  # pairs stores the split index as int8
        raise _fail(
            path, f"'splits' lists {len(splits)} names; give 1 to 127, or drop 'split' and 'splits'"
        )
    _check_names(path, "splits", list(splits))
    split = _int_array(path, "split", get("split"), (n,))
    if split.min() < 0 or split.max() >= len(splits):
        bad = int(np.flatnonzero((split < 0) | (split >= len(splits)))[0])
        raise _fail(
            path,
            f"'split'[{bad}] = {int(split[bad])} is outside [0, {len(splits)}) "
            f"(splits: {', '.join(splits)})",
        )
    return split, splits


def _check_score_shape(
    path: Path,
    kind: str,
    shape: tuple[int, ...],
    dtype: np.dtype,
    n: int,
    n_classes: int,
    n_unseen: int = 0,
) -> None:
    """The score array's dtype and shape against the contract (its values are not read);
    with unseen classes, probs/logits may hold the known classes' columns only."""
    if dtype.hasobject:
        raise _fail(path, f"'{kind}' is an object array; store plain numbers")
    if kind == "topk":
        if dtype.kind not in "iu":
            raise _fail(
                path, f"'topk' must be an integer array of class indices, got dtype {dtype}"
            )
        if len(shape) == 2 and shape[0] != n:
            raise _fail(path, _lengths("topk", shape[0], n))
        if len(shape) != 2 or not 1 <= shape[1] <= n_classes:
            raise _fail(
                path,
                f"'topk' must have shape [N={n}, k] with 1 <= k <= C={n_classes}, got {shape}",
            )
    else:
        if dtype.kind != "f":
            raise _fail(path, f"'{kind}' must be a float array, got dtype {dtype}")
        if len(shape) == 2 and shape[0] != n:
            raise _fail(path, _lengths(kind, shape[0], n))
        accepted = [(n, n_classes), (n, n_classes - n_unseen)] if n_unseen else [(n, n_classes)]
        if shape not in accepted:
            raise _fail(path, _shape_message(kind, accepted, n_unseen, shape))


def _shape_message(kind: str, accepted: list, n_unseen: int, shape: tuple[int, ...]) -> str:
    (n, c), *known = accepted
    if known:
        return (
            f"'{kind}' must have shape [N, C] = ({n}, {c}) (every class's column) or "
            f"[N, C - unseen] = {known[0]} (the known classes' columns, in the order of "
            f"'classes' without the {n_unseen} unseen), got {shape}"
        )
    hint = (
        "; if the classifier was trained on fewer classes, name the others in 'unseen'"
        if len(shape) == 2 and 2 <= shape[1] < c
        else ""
    )
    return f"'{kind}' must have shape [N, C] = ({n}, {c}), got {shape}{hint}"


def _lengths(kind: str, rows: int, n: int) -> str:
    return (
        f"'labels' has {n} entries and '{kind}' {rows} rows; give one label and one row of "
        "scores per picture, in the same order"
    )


def _score_member(path: Path, kind: str, n: int, n_classes: int, n_unseen: int) -> NpyMember:
    """The score array's header, checked against the contract (its values are not read)."""
    try:
        member = NpyMember(path, kind)
    except PipelineError:  # already one line naming the file
        raise
    except ValueError as exc:  # a malformed .npy header
        raise _fail(path, f"'{kind}' is not a valid array ({exc})") from None
    except READ_ERRORS as exc:
        raise damaged(path, kind, exc) from None
    _check_score_shape(path, kind, member.shape, member.dtype, n, n_classes, n_unseen)
    return member


def _validated(path: Path, keys: set[str], get, score) -> Predictions:
    """The contract's checks on the members `get(key)` returns, in one order for a file and
    for arrays in memory; `score(kind, n, n_classes, n_unseen)` gives the score array's
    reader."""
    kind = _score_kind(path, keys)
    _warn_ignored(path, keys)
    classes = tuple(str(c) for c in _str_array(path, "classes", get("classes"), 1).tolist())
    if len(classes) < 2:
        raise _fail(path, f"'classes' lists {len(classes)} class(es); at least 2 are needed")
    _check_names(path, "classes", list(classes))
    labels = _read_labels(path, get, len(classes))
    split, splits = _read_splits(path, get, keys, labels.shape[0])
    groups = None
    if "groups" in keys:
        text = _str_array(path, "groups", get("groups"), 0)
        groups = parse_groups(str(path), str(text.item()), classes)
    unseen = _read_unseen(path, get, keys, classes)
    member = score(kind, labels.shape[0], len(classes), len(unseen))
    known_only = kind != "topk" and int(member.shape[1]) < len(classes)
    return Predictions(
        path=path,
        labels=labels,
        classes=classes,
        kind=kind,
        width=len(classes) if known_only else int(member.shape[1]),
        split=split,
        splits=splits,
        groups=groups,
        unseen=unseen,
        _member=member,
        known_only=known_only,
    )


def _read_unseen(path: Path, get, keys: set[str], classes: tuple[str, ...]) -> tuple[str, ...]:
    if "unseen" not in keys:
        return ()
    unseen = tuple(str(c) for c in _str_array(path, "unseen", get("unseen"), 1).tolist())
    problem = unseen_problem(classes, unseen)  # the check train.unseen passes too
    if problem:
        raise _fail(path, f"'unseen' {problem}")
    return unseen


def load_predictions(path: str | Path, *, check_values: bool = True) -> Predictions:
    """Open and validate a predictions file (see the module docstring for the format).

    With check_values=True the score array is read once here to check every value; a
    caller that reads it through `Predictions.blocks` anyway (which checks each block)
    passes False to avoid the extra pass.
    """
    path = Path(path)
    with _open_npz(path) as npz:
        pred = _validated(
            path,
            set(npz.files),
            _member_reader(npz, path),
            lambda kind, n, c, u: _score_member(path, kind, n, c, u),
        )
    if check_values:
        for _ in pred.blocks(CHECK_BLOCK_ROWS):
            pass
    return pred


def predictions_from_arrays(arrays: dict[str, object], name: str = "predictions") -> Predictions:
    """Validate arrays in memory against the same contract as a file, with the same
    messages (prefixed by `name` instead of a path); every value is checked here. Keys as
    in the file: labels, classes, exactly one of probs/logits/topk, and optionally split,
    splits, unseen and groups (a JSON string or a {group: [classes]} dict)."""
    path = Path(name)
    given = {k: v for k, v in arrays.items() if v is not None}
    if isinstance(given.get("groups"), dict):
        given["groups"] = json.dumps(given["groups"])

    def get(key: str) -> np.ndarray:
        try:
            arr = np.asarray(given[key])
        except (ValueError, TypeError) as exc:
            raise _fail(path, f"'{key}' is not an array ({first_line(exc)})") from None
        if arr.dtype.hasobject:
            raise _fail(path, _object_array(key))
        return arr

    def score(kind: str, n: int, c: int, u: int) -> InMemory:
        member = InMemory(get(kind))
        _check_score_shape(path, kind, member.shape, member.dtype, n, c, u)
        return member

    pred = _validated(path, set(given), get, score)
    for _ in pred.blocks(CHECK_BLOCK_ROWS):
        pass
    return pred
