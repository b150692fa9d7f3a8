"""The README's generated blocks: a table between ``<!-- NAME:begin (SCRIPT) -->`` and
``<!-- NAME:end -->``, read and rewritten by the bench script that generates it."""

from __future__ import annotations

from pathlib import Path


def markers(name: str, script: str) -> tuple[str, str]:
    """The begin and end markers of block ``name``, which ``script`` writes."""
    return f"<!-- {name}:begin ({script}) -->", f"<!-- {name}:end -->"


def read_block(text: str, begin: str, end: str) -> str:
    """What stands between the markers (stripped); a clear error where the README lacks them."""
    if begin not in text or end not in text.split(begin, 1)[1]:
        raise ValueError(f"the README has no {begin} … {end} block")
    return text.split(begin, 1)[1].split(end, 1)[0].strip()


def rewrite_block(readme: Path, begin: str, end: str, table: str) -> None:
    """Replace the block's contents with ``table``, leaving the rest of the README as it is."""
    text = readme.read_text()
    read_block(text, begin, end)
    head, rest = text.split(begin, 1)
    readme.write_text(head + begin + "\n" + table + "\n" + end + rest.split(end, 1)[1])
