"""Running a comparison grid: the phases in order, each resumable, then the report. ``reprkit
compare`` and ``reprkit.compare.run`` call ``run``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

from .. import data as D
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
    write_json(out / "held-out.json", check_held_out(grid, shifts))
    args = SimpleNamespace(methods=methods, sources=sources)
    order = [(seed, source, method) for seed, source, method in order_all
             if wanted(grid, out, args, first, seed, source, method)]
    work(grid, out, shifts, first, order, max_cells, poll)
    if report:
        with claim(out, "analysis", wait=True):
            from .report import analyse

            analyse(out)
    return None


def report_only(out) -> None:
    """The report of ``out`` from the cells done so far (the folder's own ``grid.json``, the design
    its cells ran under), written under the same claim the last worker takes, so it is safe beside
    running workers. A folder no grid has run in is an error that names the command that starts one."""
    out = Path(out)
    if not (out / "grid.json").is_file():
        raise SystemExit(f"{out} holds no grid.json: no comparison has run there. Start one with "
                         f"`reprkit compare CONFIG --out {out}`")
    with claim(out, "analysis", wait=True):
        from .report import analyse

        analyse(out)


def check_held_out(grid: Grid, shifts: dict[str, list[str]]) -> dict:
    """How many validation and test items of each run repeat a prompt it trains on (the source's
    validation and test against its training split; with ceilings, each target's test against its
    own training split); refuses, naming the fix, where a set's share exceeds ``max_seen_share``."""
    def prompts(name: str, split: str, limit: int | None = None) -> list[str]:
        return [D.prompt_key(it) for it in D.load_items(grid.spec(name, split), split, limit=limit)]

    checks = [(s, grid.val_split, grid.val_limit) for s in shifts] + [(s, grid.test_split, grid.eval_limit) for s in shifts]
    if grid.ceiling_methods:
        checks += [(t, grid.test_split, grid.eval_limit) for t in dict.fromkeys(t for ts in shifts.values() for t in ts)]
    report, bad = {}, []
    trained: dict[str, set[str]] = {}
    for name, split, limit in checks:
        if name not in trained:
            trained[name] = set(prompts(name, grid.train_split, grid.train_limit))
        scored = prompts(name, split, limit)
        seen = sum(p in trained[name] for p in scored)
        key = f"{name} {split} vs {grid.train_split}"
        report[key] = {"n": len(scored), "training_prompts": seen, "share": seen / max(len(scored), 1)}
        if seen / max(len(scored), 1) > grid.max_seen_share:
            bad.append(f"{key}: {seen} of {len(scored)} prompts are training prompts")
    if bad:
        raise ValueError("refused: sets scored on the prompts they train on:\n  " + "\n  ".join(bad) + "\n"
                         "give the set a separate test file (data: {NAME: {\"train\": TRAIN_FILE, \"test\": TEST_FILE}}) "
                         "or slices that hold rows out (train_split 'train[:60%]', val_split 'train[60%:80%]', "
                         "test_split 'train[80%:]')")
    return report
