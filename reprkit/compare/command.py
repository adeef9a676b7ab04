"""Running a comparison grid: the phases in order, each resumable, then the report. ``reprkit
compare`` and ``reprkit.compare.run`` call ``run``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

from ..runlog import write_json
from .cells import CEILING, cell_order, claim, wanted, work
from .settings import Grid, resolve_shifts


def run(grid: Grid, out, methods: list[str] | None = None, sources: list[str] | None = None,
        seeds: list[int] | None = None, max_cells: int | None = None, poll: float = 60.0, status: bool = False,
        workers: int = 2, check_lengths: bool = False, report: bool = True) -> dict | None:
    """Run the grid's cells into ``out`` (a finished piece is read back, never recomputed), then
    write the report. ``methods`` / ``sources`` / ``seeds`` limit this sitting (the grid is
    unchanged); ``status`` only says what is done and left; ``check_lengths`` only counts what
    truncation cuts. Returns the status with ``status``, else None."""
    out = Path(out)
    shifts = resolve_shifts(grid)
    first = next(iter(shifts))
    order_all = cell_order(grid, list(shifts), seeds, shifts)
    if status:
        from .status import grid_status

        return grid_status(grid, out, list(shifts), first, order_all)
    if methods and (unknown := set(methods) - set(grid.methods) - set(grid.ceiling_methods)):
        raise ValueError(f"methods {sorted(unknown)} are not the grid's methods {grid.methods}")
    named = set(shifts)
    if grid.ceiling_methods:  # a target names its ceiling cells
        named |= {CEILING + t for ts in shifts.values() for t in ts} | {t for ts in shifts.values() for t in ts}
    if sources and (unknown := set(sources) - named):
        raise ValueError(f"sources {sorted(unknown)} are not among the grid's sources {list(shifts)} "
                         "(or a target, for its ceiling)")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "grid.json", dataclasses.asdict(grid))
    if grid.max_cut_share is not None or check_lengths:
        from ..models import load_tokenizer_only
        from .scoring import check_lengths as count

        write_json(out / "truncation.json", count(grid, load_tokenizer_only(grid.model), shifts))
        if check_lengths:
            return None
    args = SimpleNamespace(methods=methods, sources=sources)
    order = [(seed, source, method) for seed, source, method in order_all
             if wanted(grid, out, args, first, seed, source, method)]
    work(grid, out, shifts, first, order, max_cells, poll)
    if report:
        with claim(out, "analysis", wait=True):
            from .report import analyse

            analyse(out)
    return None
