"""The tools that write generated tables into the docs share this: the text between two marker
lines of a doc is replaced, and everything else is left as it is."""

from __future__ import annotations

from pathlib import Path


def replace_block(doc: Path, begin: str, end: str, text: str) -> None:
    """Put ``text`` between the markers ``begin`` and ``end`` of ``doc``."""
    content = doc.read_text()
    if begin not in content or end not in content:
        raise SystemExit(f"{doc.name} lacks the markers {begin} ... {end}")
    head, rest = content.split(begin, 1)
    doc.write_text(f"{head}{begin}\n{text}\n{end}{rest.split(end, 1)[1]}")
