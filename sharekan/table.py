"""Tables: plain text for the console (the CLI and benchmark scripts print them), Markdown for reports, and the
README's generated blocks (a table between ``<!-- NAME:begin (SCRIPT) -->`` and ``<!-- NAME:end -->`` that the
bench script named there rewrites)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["format_table", "markdown_table", "markers", "read_block", "rewrite_block"]


def format_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """Plain-text table; ``columns`` are ``(key, header, format spec)``."""
    cells = [[h for _, h, _ in columns]]
    cells += [[format(r[k], f) for k, _, f in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """The same table in Markdown (it wraps to the page where a fixed-width block would not)."""
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(format(r[k], f) for k, _, f in columns) + " |" for r in rows]
    return "\n".join(lines)


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
