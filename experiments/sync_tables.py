"""Copy a grid's tables from its ``results.md`` into the pages that quote them.

    python experiments/sync_tables.py [results/remeasure] [docs/research/comparison.md README.md]

A page marks where a table goes with ``<!-- tables:NAME -->`` and ``<!-- /tables:NAME -->``; the
lines between are replaced by the table ``NAME`` of ``results.md`` (``TABLES``: the line that heads
it, up to the end of the table). ``tests/test_results_tables.py`` fails where a page's copy
differs from ``results.md``, so a page cannot quote an older analysis than the one committed.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

TABLES = {
    "at-a-glance": "At a glance",
    "by-rule": "Against DPO on each target, by rule",
}
"""name -> how the line that heads the table in ``results.md`` starts"""


def table_block(results: str, name: str) -> list[str]:
    """The heading line of table ``name`` and the table under it (to its last ``|`` line)."""
    lines = results.splitlines()
    head = next((i for i, line in enumerate(lines) if line.startswith(TABLES[name])), None)
    if head is None:
        raise SystemExit(f"results.md has no table {name!r} (a line starting {TABLES[name]!r})")
    start = next(i for i in range(head + 1, len(lines)) if lines[i].startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return [lines[head], "", *lines[start:end]]


MARK = re.compile(r"<!-- tables:([\w-]+) -->\n(.*?)<!-- /tables:\1 -->", re.S)


def marked(page: str) -> dict[str, list[str]]:
    """name -> the lines a page holds between its markers."""
    return {m.group(1): m.group(2).rstrip("\n").splitlines() for m in MARK.finditer(page)}


def sync(results: Path, pages: list[Path]) -> None:
    text = results.read_text()
    for page in pages:
        body = page.read_text()
        new = MARK.sub(lambda m: f"<!-- tables:{m.group(1)} -->\n" + "\n".join(table_block(text, m.group(1)))
                       + f"\n<!-- /tables:{m.group(1)} -->", body)
        if new != body:
            page.write_text(new)
            print(f"updated {page}")


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "results/remeasure")
    sync(out / "results.md", [Path(p) for p in sys.argv[2:]] or [Path("docs/research/comparison.md")])
