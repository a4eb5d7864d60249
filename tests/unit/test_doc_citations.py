"""Docstrings and comments cite documents inside the repository, and what they cite is there:
the file, its numbered section (`docs/storage.md §2`) or its named sections (`docs/api.md: Orders`)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCANNED = [path for folder in ("src", "tests", "benchmarks") for path in sorted((ROOT / folder).rglob("*.py"))]
CITATION = re.compile(r"(docs/[A-Za-z0-9_./-]+\.md)(?: §(\d+)|: ([A-Z][A-Za-z ,]+))?")
# Documents that are not in the repository (the original system's notes), cited bare.
OUTSIDE = re.compile(r"(?<![\w/])(?:api|design|style)\.md\b|\bdesign §|original-weaknesses|DEVELOPERS\.md")


def _sources() -> list[tuple[Path, str]]:
    me = Path(__file__).resolve()
    return [(path, path.read_text(encoding="utf-8")) for path in SCANNED if path.resolve() != me]


def _named_in(document: str, name: str) -> bool:
    wanted = name.strip().lower()
    headings = [line.lstrip("#").strip().lower() for line in document.splitlines() if line.startswith("#")]
    bold = [text.lower() for text in re.findall(r"\*\*([^*]+)\*\*", document)]
    return any(text.startswith(wanted) or wanted in text for text in headings + bold)


def test_every_cited_document_and_section_exists() -> None:
    missing = []
    for path, text in _sources():
        for match in CITATION.finditer(text):
            where = f"{path.relative_to(ROOT)}: {match.group(0)}"
            target = ROOT / match.group(1)
            if not target.is_file():
                missing.append(where)
                continue
            document = target.read_text(encoding="utf-8")
            number, names = match.group(2), match.group(3)
            if number is not None and not re.search(rf"^## {number}\.", document, re.MULTILINE):
                missing.append(where)
            if names is not None and not all(_named_in(document, name) for name in names.split(",")):
                missing.append(where)
    assert missing == []


def test_nothing_cites_a_document_outside_the_repository() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, match.start()) + 1}: {match.group(0)}"
        for path, text in _sources()
        for match in OUTSIDE.finditer(text)
    ]
    assert found == []
