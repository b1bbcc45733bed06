"""The project's records cite tests that exist: every ``file.py::name`` in the ledger (``docs/serena.md``) and the
milestone audits (``docs/milestones/``) names a file that exists and a test or class defined in it.

An audit row whose guarding test was renamed or deleted would otherwise keep claiming a guarantee no test makes.
"""

from __future__ import annotations

import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CITATION = re.compile(r"((?:test|docs)/[\w/]+\.py)((?:::\w+)+)")


def records() -> list[str]:
    found = [os.path.join(ROOT, "docs", "serena.md")]
    found += sorted(glob.glob(os.path.join(ROOT, "docs", "milestones", "**", "*.md"), recursive=True))
    return found


def citations(path: str) -> list[tuple[str, list[str]]]:
    with open(path, encoding="utf-8") as f:
        return [(file, names.split("::")[1:]) for file, names in CITATION.findall(f.read())]


def test_the_records_cite_something():
    # A pattern that stopped matching would make the next test pass vacuously.
    assert sum(len(citations(p)) for p in records()) > 100


@pytest.mark.parametrize("record", records(), ids=lambda p: os.path.relpath(p, ROOT))
def test_every_cited_test_exists(record):
    missing = []
    for file, names in citations(record):
        path = os.path.join(ROOT, file)
        if not os.path.exists(path):
            missing.append(f"{file}: no such file")
            continue
        with open(path, encoding="utf-8") as f:
            source = f.read()
        missing += [f"{file}::{name}" for name in names if not re.search(rf"^\s*(?:async\s+)?(?:def|class) {name}\b",
                                                                          source, re.M)]
    assert missing == []
