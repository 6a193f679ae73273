"""docs/reliability.md names, for every bad input, the test that proves it: those tests exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_test_named_in_the_reliability_doc_exists():
    doc = (ROOT / "docs" / "reliability.md").read_text()
    refs = set(re.findall(r"(tests/[\w/]+\.py)::(\w+)", doc))
    assert len(refs) >= 20, refs
    missing = [
        f"{path}::{name}"
        for path, name in sorted(refs)
        if not (ROOT / path).exists()
        or not re.search(rf"^def {name}\(", (ROOT / path).read_text(), re.M)
    ]
    assert not missing, missing


def test_every_test_file_the_docs_name_exists():
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    named = {m for d in docs for m in re.findall(r"tests/\w+\.py", d.read_text())}
    assert named, "the docs name no test file"
    assert not [n for n in sorted(named) if not (ROOT / n).exists()]
