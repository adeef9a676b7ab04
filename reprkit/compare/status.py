"""Where a grid stands: which sweep points and cells are done, which have started (an interrupted
run resumes from its last checkpoint), which are left, and the worker time left by the grid's own
recorded times.

    reprkit compare experiments/grids/remeasure.json --out results/remeasure --status

Read-only: it looks at the files a grid writes and takes no claim, so it is safe beside running
workers. The estimate counts each item left at the mean recorded seconds of finished items of its
kind (on the same source where one has finished, else on any): a sweep point; a seed-0 trained
cell after its adopted sweep run (final scoring, retain perplexity, behaviour); a later seed's
cell (a sweep point's training and curve plus a seed-0 cell's rest); an untrained cell. Started
items count whole, and rates below or above the sweep (tried only when the rule calls for them)
are not counted: a rough figure, printed as such.
"""

from __future__ import annotations

import json
from pathlib import Path
from statistics import mean

from .settings import UNTRAINED, Grid
from .sweep import broken_before, method_rates, sweep_dir


def _seconds(path: Path) -> float | None:
    try:
        return float(json.loads(path.read_text()).get("seconds"))
    except (OSError, ValueError, TypeError):
        return None


def _broke(path: Path, grid: Grid) -> bool:
    try:
        return float(json.loads(path.read_text())["ppl_ratio"]) > grid.max_ppl_ratio
    except (OSError, ValueError, TypeError, KeyError):
        return False


def _state(done: bool, folder: Path) -> str:
    if done:
        return "done"
    return "started" if folder.is_dir() and any(folder.iterdir()) else "left"


def grid_status(grid: Grid, out: Path, sources: list[str], first: str,
                order: list[tuple[int, str, str]]) -> list[dict]:
    """One row per sweep point and per cell of ``order``: kind, source, method, seed or rate,
    state (done / started / left; a sweep point "skipped" where its sweep chose without it or it
    broke the model in a shorter sweep) and the recorded seconds where done."""
    rows = []
    trained = [m for m in grid.methods if m not in UNTRAINED]
    for source in sources if grid.tune_per_shift else [first]:
        folder = sweep_dir(grid, out, source)
        for method in trained:
            rates = method_rates(grid, method)
            extra = sorted({float(p.stem[2:]) for p in (folder / method).glob("lr*.json")} - set(rates))
            finished = (folder / f"{method}.json").is_file()
            broken = broken_before(grid, out, method)
            broke_here = [lr for lr in list(rates) + extra if _broke(folder / method / f"lr{lr:g}.json", grid)]
            for lr in list(rates) + extra:
                rec = folder / method / f"lr{lr:g}.json"
                state = _state(rec.is_file(), folder / method / f"lr{lr:g}")
                above = grid.stop_above_broken and any(b < lr for b in broke_here)
                if state != "done" and (finished or lr in broken or above):
                    # the sweep chose without it, it broke the model in a shorter sweep, or a smaller
                    # rate broke it in this one
                    state = "skipped"
                rows.append({"kind": "sweep point", "source": source, "method": method, "which": f"lr {lr:g}",
                             "state": state, "seconds": _seconds(rec) if rec.is_file() else None})
    from .cells import CEILING, cell_path

    for seed, source, method in order:
        cell = cell_path(out, source, method, seed)
        kind = ("ceiling cell" if source.startswith(CEILING) else "untrained cell" if method in UNTRAINED
                else "seed-0 cell" if seed == grid.seeds[0] else "later-seed cell")
        done = (cell / "cell.json").is_file()
        rows.append({"kind": kind, "source": source, "method": method, "which": f"seed {seed}",
                     "state": _state(done, cell), "seconds": _seconds(cell / "cell.json") if done else None})
    return rows


def estimate_left(rows: list[dict]) -> float | None:
    """Worker-seconds for the rows not done (see the module docstring), or None without a finished
    item to measure by."""
    def mean_of(kind: str, source: str) -> float | None:
        same = [r["seconds"] for r in rows if r["kind"] == kind and r["seconds"] and r["source"] == source]
        anywhere = [r["seconds"] for r in rows if r["kind"] == kind and r["seconds"]]
        return mean(same) if same else mean(anywhere) if anywhere else None

    total, known = 0.0, False
    for r in rows:
        if r["state"] in ("done", "skipped"):
            continue
        if r["kind"] == "later-seed cell" or (r["kind"] == "ceiling cell" and mean_of(r["kind"], r["source"]) is None):
            parts = [mean_of("sweep point", r["source"]), mean_of("seed-0 cell", r["source"])]
            guess = None if None in parts else sum(parts)
        else:
            guess = mean_of(r["kind"], r["source"])
        if guess is not None:
            total, known = total + guess, True
    return total if known else None


def format_status(rows: list[dict], workers: int = 1) -> str:
    """A table of counts by kind and state, the items started and left, and the estimate."""
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    lines = ["| kind | done | started | left | skipped |", "|---|---|---|---|---|"]
    for kind in kinds:
        n = {s: sum(r["kind"] == kind and r["state"] == s for r in rows) for s in ("done", "started", "left", "skipped")}
        lines.append(f"| {kind} | {n['done']} | {n['started']} | {n['left']} | {n['skipped']} |")
    for state in ("started", "left"):
        items = [f"{r['source']} {r['method']} {r['which']}" for r in rows if r["state"] == state]
        if items:
            lines += ["", f"{state}: " + "; ".join(items)]
    left = estimate_left(rows)
    if left is not None:
        lines += ["", f"estimate: about {left / 3600:.1f} worker-hours left ({left / 3600 / workers:.1f} h of wall time "
                      f"with {workers} workers), from the recorded times of finished items; started items count "
                      "whole and rates tried only below or above a sweep are not counted"]
    return "\n".join(lines)
