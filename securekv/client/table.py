"""The ASCII table layout of olekukonko/tablewriter as etcdctl configures it (``-w table``).

Header cells are upper-cased and centred (an odd spare space goes right), body cells are
right-aligned, one space of padding on each side, ``+---+`` borders above and below the
header and at the end.
"""

from __future__ import annotations


def _header_title(text: str) -> str:
    return text.replace("_", " ").strip().upper()


def render(header: list[str], rows: list[list[str]]) -> str:
    """The table text including the final newline."""
    head = [_header_title(h) for h in header]
    widths = [len(h) for h in head]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    border = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def centre(text: str, width: int) -> str:
        spare = width - len(text)
        left = spare // 2
        return " " * left + text + " " * (spare - left)

    lines = [border, "|" + "|".join(f" {centre(h, w)} " for h, w in zip(head, widths)) + "|", border]
    for row in rows:
        lines.append("|" + "|".join(f" {cell.rjust(w)} " for cell, w in zip(row, widths)) + "|")
    lines.append(border)
    return "\n".join(lines) + "\n"
