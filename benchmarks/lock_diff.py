"""Compare two dvc.lock files output by output, and file by file inside directory outputs.

    .venv/bin/python -m benchmarks.lock_diff OLD_LOCK NEW_LOCK   # e.g. git show REV:dvc.lock > old

Reads both lock files and, for directory outputs, their `.dir` listings in the local DVC cache
(.dvc/cache/files/md5); writes nothing. Prints `same` or `DIFFER` for each output file and a
count: the evidence for "byte-identical outputs" after a change that should alter nothing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

CACHE = Path(".dvc/cache/files/md5")


def listing(md5: str) -> dict[str, str]:
    """{relative path: md5} of a directory output, from its cached `.dir` listing."""
    return {e["relpath"]: e["md5"] for e in json.loads((CACHE / md5[:2] / md5[2:]).read_text())}


def compare(old: dict, new: dict) -> list[tuple[bool, str]]:
    """(identical, path) for every file of every output in `new`'s stages."""
    rows = []
    for stage, entry in new.items():
        for out in entry.get("outs", []):
            before = {o["path"]: o["md5"] for o in old.get(stage, {}).get("outs", [])}
            was = before.get(out["path"])
            if was is None or was == out["md5"] or not out["md5"].endswith(".dir"):
                rows.append((was == out["md5"], out["path"]))
                continue
            a, b = listing(was), listing(out["md5"])
            rows += [(a.get(f) == b.get(f), f"{out['path']}/{f}") for f in sorted(set(a) | set(b))]
    return rows


def main() -> None:
    old, new = (yaml.safe_load(Path(p).read_text())["stages"] for p in sys.argv[1:3])
    rows = compare(old, new)
    for same, path in rows:
        print(f"{'same  ' if same else 'DIFFER'} {path}")
    print(f"same {sum(s for s, _ in rows)}, differ {sum(not s for s, _ in rows)}")


if __name__ == "__main__":
    main()
