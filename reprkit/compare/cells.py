"""The cells of a comparison grid, the order they run in, and the claims that let several processes
share one grid (``reprkit.compare`` says what a grid is)."""


from __future__ import annotations

import contextlib
import fcntl
import json
import shutil
import time
from pathlib import Path

from .. import data as D
from ..models import load_model
from ..runlog import read_run, write_json
from .scoring import (
    BALANCED,
    behaviour_columns,
    curve_sets,
    eval_prompt_length,
    eval_sets,
    retain_ratio,
    samples,
    score_sets,
)
from .settings import READERS, UNTRAINED, Grid, machine
from .sweep import adopt_sweep_run, sweep_dir, tune_lr
from .training import load_adapter, train_curve


def refresh_behaviour(grid: Grid, cell: dict, cell_dir: Path) -> dict:
    """Recompute a finished cell's behaviour columns when they predate the letter-balanced
    sycophancy subset (the model or the cell's adapter is loaded again; nothing else changes)."""
    syc = cell.get("behaviour", {}).get("sycophancy")
    if syc is None or syc.get("subset") == BALANCED:
        return cell
    if cell["method"] == "base":
        model, tok = load_model(grid.model)
    elif (cell_dir / "run" / "adapter").is_dir():
        model, tok = load_adapter(grid, cell_dir / "run")
    else:
        print(f"cell {cell_dir}: sycophancy column predates the balanced subset and the adapter is gone; "
              "left as it is", flush=True)
        return cell
    cell["behaviour"] = behaviour_columns(grid, model, tok)
    write_json(cell_dir / "cell.json", cell)
    return cell


CEILING = "ceiling/"
"""The prefix of a ceiling's place in the cell order (``ceiling/<target>``) and its folder under the
grid's output."""


def cell_path(out: Path, source: str, method: str, seed: int) -> Path:
    """A cell's folder: ``cells/<source>/<method>/seed<k>``, or ``ceiling/<target>/...`` for a
    method trained on a target itself."""
    root = out if source.startswith(CEILING) else out / "cells"
    return root / source / method / f"seed{seed}"


def ceiling_rate_source(shifts: dict[str, list[str]], target: str) -> str:
    """The source whose swept rate a target's ceiling runs use: the first source listing it."""
    return next(s for s, ts in shifts.items() if target in ts)


def run_cell(grid: Grid, out: Path, source: str, targets: list[str], method: str, seed: int, lrs: dict) -> dict:
    """Run (or read back) one cell. ``source`` ``ceiling/<target>``: ``method`` trained on the
    target's own training split at the ceiling lengths, scored on its validation and test split,
    with the retain perplexity; no samples or behaviour columns."""
    cell_dir = cell_path(out, source, method, seed)
    ceiling = source.startswith(CEILING)
    if ceiling:
        grid, source, targets = grid.for_ceiling(), source[len(CEILING):], []
    done = cell_dir / "cell.json"
    if done.is_file():
        return refresh_behaviour(grid, json.loads(done.read_text()), cell_dir)
    cell_dir.mkdir(parents=True, exist_ok=True)
    partial = cell_dir / "partial"  # finished stages of an unfinished cell (read back by a later sitting)
    resumed = sorted(f.name for f in partial.iterdir()) if partial.is_dir() else []
    partial.mkdir(exist_ok=True)
    start = time.time()
    cell = {"shift": source, "targets": targets, "method": method, "seed": seed, "lr": lrs.get(method)}
    if ceiling:
        cell["role"] = "ceiling"  # trained on its own target, at the rate the method's sweep chose on the source
    timing: dict[str, float] = {}
    clock = start

    def lap(part: str) -> None:
        nonlocal clock
        now = time.time()
        timing[part] = timing.get(part, 0.0) + now - clock
        clock = now

    direction = None
    if method == "base":
        model, tok = load_model(grid.model)
        lap("load")
        cell["curve"] = [{"step": 0, **score_sets(grid, model, tok, curve_sets(grid, source, targets))}]
        lap("curve scoring")
    elif method == "length":
        from reprkit.models import load_tokenizer_only

        model, tok = None, load_tokenizer_only(grid.model)
        cell["curve"] = [{"step": 0, **score_sets(grid, model, tok, curve_sets(grid, source, targets), length=True)}]
        cell["scores"] = score_sets(grid, model, tok, eval_sets(grid, source, targets), length=True)
        cell["seconds"] = time.time() - start
        write_json(done, cell)
        shutil.rmtree(partial, ignore_errors=True)
        return cell
    elif method in READERS:
        model, tok = load_model(grid.model)
        lap("load")
        cell["mms"], direction = read_mms(grid, model, tok, source, READERS[method], partial / "direction")
        lap("direction")
        cell["curve"] = [{"step": 0, **score_sets(grid, model, tok, curve_sets(grid, source, targets), direction,
                                                  partial=partial / "curve.json")}]
        lap("curve scoring")
    else:
        curve, model, tok, total = train_curve(grid, out, source, targets, method, seed, lrs[method], cell_dir)
        clock = time.time()
        for part, key in (("train", "train"), ("curve scoring", "scoring")):
            timing[part] = sum(p.get("seconds", {}).get(key, 0.0) for p in curve)
        steps = {m["step"]: m["step_time"] for m in read_run(cell_dir / "run")["metrics"] if "step_time" in m}
        timing["of which steps"] = sum(steps.values())  # the rest: loading, the frozen-model cache, checkpoints
        cell.update(curve=curve, steps=total, pairs_seen=total * grid.batch_size)
    cell["scores"] = score_sets(grid, model, tok, eval_sets(grid, source, targets), direction,
                                partial=partial / "scores.json")
    lap("final scoring")
    if method not in UNTRAINED:
        cell["retain_perplexity"] = retain_ratio(grid, model, tok, out / "retain-frozen.json")
        lap("retain perplexity")
    if method not in READERS and not ceiling:
        cell["samples"] = samples(grid, model, tok, targets[0])
        lap("samples")
        if seed == grid.seeds[0]:
            cell["behaviour"] = behaviour_columns(grid, model, tok)
            lap("behaviour")
    cell["seconds"] = time.time() - start
    cell["timing"] = {k: round(v, 1) for k, v in timing.items()}
    cell["machine"] = machine()
    cell["resumed_parts"] = resumed  # the stages a previous sitting had finished
    write_json(done, cell)
    shutil.rmtree(partial, ignore_errors=True)
    return cell


def read_mms(grid: Grid, model, tok, source: str, token: str = "mean", saved: Path | None = None) -> tuple[dict, tuple]:
    """A mean-difference residual direction from the source's training pairs (each response's state:
    ``token``, ``reprkit.directions.TOKENS``) and the layer that best orders the source's validation
    items: (what was chosen, (Direction, layer)). Not GENIES' mass-mean shift, which reads
    attention-head outputs at the last token, keeps the top heads by a probe and calibrates.
    With ``saved`` (a folder) the direction and the choice are written there, and read back when
    a previous sitting wrote them."""
    from reprkit.directions import Direction, from_pairs

    if saved is not None and (saved / "choice.json").is_file():
        info = json.loads((saved / "choice.json").read_text())
        return info, (Direction.load(saved), info["layer"])

    items = D.load_items(grid.spec(source, grid.train_split), grid.train_split, limit=grid.train_limit)
    direction = from_pairs(model, tok, items, grid.mms_layers, "mean_diff", token=token,
                           max_length=grid.eval_max_length, max_prompt_length=eval_prompt_length(grid),
                           source=f"{grid.spec(source, grid.train_split)} {grid.train_split}")
    val = D.load_items(grid.spec(source, grid.val_split), grid.val_split, limit=grid.val_limit)
    layer, per_layer = direction.best_layer(model, tok, val, max_length=grid.eval_max_length,
                                            max_prompt_length=eval_prompt_length(grid))
    info = {"layer": layer, "token": token, "validation": {str(k): v["accuracy_mean"] for k, v in per_layer.items()},
            "n_pairs": direction.info["n"]}
    if saved is not None:
        direction.save(saved)
        write_json(saved / "choice.json", info)  # last: its presence says the folder is whole
    return info, (direction, layer)


def cell_order(grid: Grid, sources: list[str], seeds: list[int] | None = None,
               shifts: dict[str, list[str]] | None = None) -> list[tuple[int, str, str]]:
    """(seed, source, method) in the order the grid runs them: the untrained cells (base, mms; one
    seed, the grid's first: they are deterministic) of every shift first, cheap and each shift's
    reference rows; then every trained method on every shift with the first seed before any later
    seed; then the ceilings (``ceiling_methods`` trained on each target of ``shifts``, source
    ``ceiling/<target>``), seed by seed. ``seeds`` (default: the grid's) are the trained cells' seeds."""
    untrained = [m for m in grid.methods if m in UNTRAINED]
    trained = [m for m in grid.methods if m not in untrained]
    seeds = seeds or grid.seeds
    order = [(grid.seeds[0], s, m) for s in sources for m in untrained]
    order += [(seed, s, m) for seed in seeds for s in sources for m in trained]
    targets = list(dict.fromkeys(t for s in sources for t in (shifts or {}).get(s, [])))
    ceiling_seeds = grid.ceiling_seeds if grid.ceiling_seeds is not None else seeds
    return order + [(seed, CEILING + t, m) for seed in ceiling_seeds for t in targets for m in grid.ceiling_methods]


def wanted(grid: Grid, out: Path, args, first: str, seed: int, source: str, method: str) -> bool:
    """Whether this sitting runs a cell: ``--methods`` and ``--sources`` choose, but a shift outside
    ``--sources`` still runs a sweep another shift's cells wait on (without ``tune_per_shift`` every
    shift takes the first shift's rates)."""
    if args.methods and method not in args.methods:
        return False
    if source.startswith(CEILING):
        return not args.sources or source in args.sources or source[len(CEILING):] in args.sources
    tune_on = source if grid.tune_per_shift else first
    untuned = (source == tune_on and seed == grid.seeds[0] and method not in UNTRAINED
               and not (sweep_dir(grid, out, tune_on) / f"{method}.json").is_file())
    return not (args.sources and source not in args.sources and not (untuned and not grid.tune_per_shift))


@contextlib.contextmanager
def claim(out: Path, name: str, wait: bool = False):
    """An exclusive claim on a piece of the grid (a cell, a method's sweep) for as long as the block
    runs, so that several processes can share one grid: yields False where another process holds
    it (``wait``: block until it is free). An flock on ``claims/<name>.lock``: the system releases it
    when its process ends, so a sitting that is killed leaves nothing claimed."""
    folder = out / "claims"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{name}.lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def work(grid: Grid, out: Path, shifts: dict[str, list[str]], first: str, order: list[tuple[int, str, str]],
         max_cells: int | None = None, pause: float = 60.0) -> int:
    """Run ``order``'s cells, each under its claim, skipping those another process runs. A trained
    method is tuned (under its sweep's claim) when its first cell comes up; its cells wait while
    another process sweeps it, and are tried again after ``pause`` seconds once the rest is done.
    Returns the number of cells this process finished."""
    lrs: dict[tuple[str, str], float] = {}
    new, handled = 0, set()
    while True:
        waiting = False
        for seed, source, method in order:
            if (seed, source, method) in handled:
                continue
            if max_cells is not None and new >= max_cells:
                return new
            rated = ceiling_rate_source(shifts, source[len(CEILING):]) if source.startswith(CEILING) else source
            tune_on = rated if grid.tune_per_shift else first
            key = (method, tune_on)
            if method not in UNTRAINED and key not in lrs:
                with claim(out, f"sweep-{tune_on}-{method}") as mine:
                    if not mine:
                        waiting = True
                        continue
                    # a whole-budget sweep's chosen run is then finished as the method's first cell
                    # (its run directory is not committed)
                    lrs[key] = tune_lr(grid, method, tune_on, out, shifts[tune_on])
                    adopt_sweep_run(grid, out, method, tune_on, lrs[key])
            with claim(out, f"cell-{source.replace('/', '-')}-{method}-seed{seed}") as mine:
                handled.add((seed, source, method))
                if not mine:
                    continue  # another process runs it
                fresh = not (cell_path(out, source, method, seed) / "cell.json").is_file()
                run_cell(grid, out, source, shifts.get(source, []), method, seed, {method: lrs.get(key)})
                new += fresh
                print(f"cell {source} {method} seed{seed} done" + ("" if fresh else " before"), flush=True)
        if not waiting:
            return new
        time.sleep(pause)
