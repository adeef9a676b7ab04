"""A griffe extension for the API reference: reprkit's docstrings open with runnable ``>>>``
examples in free text; this fences each run of them (prompt lines and the output under them) as a
Python code block, so the site shows code, not nested quotes."""

from __future__ import annotations

import griffe


def fence_doctests(text: str) -> str:
    """``>>>`` / ``...`` lines, and the non-blank lines right after them, become a fenced block."""
    out, block = [], []
    for line in text.split("\n"):
        stripped = line.lstrip()
        if stripped.startswith((">>>", "... ")) or stripped == "..." or (block and stripped):
            block.append(line)
            continue
        if block:
            out += ["```python", *block, "```"]
            block = []
        out.append(line)
    if block:
        out += ["```python", *block, "```"]
    return "\n".join(out)


class DoctestBlocks(griffe.Extension):
    def on_object(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None and ">>>" in obj.docstring.value:
            obj.docstring.value = fence_doctests(obj.docstring.value)
