"""Does training on hidden states generalise better than DPO? The comparison grid.

    python experiments/compare.py --grid experiments/grids/decisive.json --out results/decisive
    REPRKIT_DATA_DIR=/my/data python experiments/compare.py --grid g.json --shift-file my-shifts.json --out results/mine

A shift trains on a GENIES distribution (its source) and tests on another (its target). Phases,
each resumable (a finished piece writes its JSON and is never recomputed; an interrupted training
resumes from its last checkpoint):

0. **Lengths** (``max_cut_share``, ``--check-lengths``): what truncation cuts in every training and
   eval set is counted first (``truncation.json``); a set cut more than the share refuses the grid,
   naming the lengths that would fit.
1. **Learning rate per method** (per method and shift with ``tune_per_shift``, on that shift's
   source; rule ``lr_rule``: the first grids' ``choose_lr`` or ``choose_lr_not_worse``, the largest
   rate within the damage bound not significantly below the most accurate), from a sweep on the first shift's source only: ``sweep_steps``
   steps on ``train[:90%]`` (or, with ``sweep_steps: null``, a cell's whole budget, whose chosen
   run then *is* the first shift's seed-0 cell), scored on the held-out ``train[90%:]``
   (validation) and on the retain set's perplexity. The rule (``choose_lr``): among rates whose
   retain perplexity ratio is at most ``max_ppl_ratio``, the highest validation accuracy, ties
   broken by the validation margin, then the smaller rate. Never a target. ``lr_below`` rates are
   tried while every rate broke the model, ``lr_above`` rates while the largest rate is the choice;
   ``skip_broken_from`` names a shorter sweep whose broken rates are not run again. A method is
   tuned when its first cell comes up.
2. **Cells** (source, method, seed): base and mms on every shift first, then every trained method on
   every shift for seed 0 before any second seed (``cell_order``).
   A trained method runs ``epochs`` over ``train[:90%]`` in ``curve_points`` segments; after each,
   source validation and the first ``curve_target_limit`` target items are scored (the curve that
   compares methods at matched source accuracy). Then the whole test split of the source and of
   every target, the retain perplexity ratio and a few greedy samples. ``base`` is the frozen
   model; ``length`` the model-free length baselines; ``meandiff-mean`` / ``meandiff-last`` (``mms``
   in the first grids) a mean-difference residual direction read from the source's training pairs
   (token mean, or the response's own last token; layer chosen on source validation), scoring by
   projection, no training. Every log-prob score keeps, per item, the mean and sum rules' outcomes
   and each response's summed log-prob and token count (the ratio rule is computed against the
   base cell's in ``rule_tables.py``). Every score keeps its per-item
   outcomes (item id, correct, margin) in the cell's ``cell.json``, and its wall time by part
   (``timing``: training, of which optimiser steps, curve scoring, final scoring, ...; summed over
   the sittings a cell took, where ``seconds`` is the last sitting's).
3. **Extras** (seed 0 of each method): TruthfulQA MC1/MC2 and the sycophancy eval on fixed subsets
   (sycophancy: rows taken in turn from each answer letter, ``letter_balanced``).
4. **Analysis** (``experiments/analyse.py``): paired differences with intervals, tables, figures.

Several processes can run one grid side by side (``run_remeasure.sh`` starts two of one thread
each): each claims the cell or the sweep it runs (``claim``), and the others pass over it.
``--status`` says, without touching the grid, what is done, started and left, and about how long
the rest takes (``grid_status.py``).

This file holds the cells and the command; the grid's settings are in ``grid_settings.py``, phase 0
and the scores in ``grid_scoring.py``, phase 1 in ``grid_sweep.py``, training in segments in
``grid_training.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from grid_scoring import (BALANCED, behaviour_columns, check_lengths, curve_sets, eval_prompt_length,  # noqa: E402
                          eval_sets, retain_ratio, samples, score_sets)
from grid_settings import READERS, TRAIN_SPLIT, UNTRAINED, VAL_SPLIT, Grid, machine, resolve_shifts  # noqa: E402
from grid_sweep import adopt_sweep_run, sweep_dir, tune_lr  # noqa: E402
from grid_training import load_adapter, train_curve  # noqa: E402

from reprkit import data as D  # noqa: E402
from reprkit.models import load_model  # noqa: E402
from reprkit.runlog import read_run, write_json  # noqa: E402


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


def run_cell(grid: Grid, out: Path, source: str, targets: list[str], method: str, seed: int, lrs: dict) -> dict:
    cell_dir = out / "cells" / source / method / f"seed{seed}"
    done = cell_dir / "cell.json"
    if done.is_file():
        return refresh_behaviour(grid, json.loads(done.read_text()), cell_dir)
    cell_dir.mkdir(parents=True, exist_ok=True)
    partial = cell_dir / "partial"  # finished stages of an unfinished cell (read back by a later sitting)
    resumed = sorted(f.name for f in partial.iterdir()) if partial.is_dir() else []
    partial.mkdir(exist_ok=True)
    start = time.time()
    cell = {"shift": source, "targets": targets, "method": method, "seed": seed, "lr": lrs.get(method)}
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
    if method not in READERS:
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

    items = D.load_items(f"genies:{source}", TRAIN_SPLIT, limit=grid.train_limit)
    direction = from_pairs(model, tok, items, grid.mms_layers, "mean_diff", token=token,
                           max_length=grid.eval_max_length, max_prompt_length=eval_prompt_length(grid),
                           source=f"genies:{source} {TRAIN_SPLIT}")
    val = D.load_items(f"genies:{source}", VAL_SPLIT, limit=grid.val_limit)
    layer, per_layer = direction.best_layer(model, tok, val, max_length=grid.eval_max_length,
                                            max_prompt_length=eval_prompt_length(grid))
    info = {"layer": layer, "token": token, "validation": {str(k): v["accuracy_mean"] for k, v in per_layer.items()},
            "n_pairs": direction.info["n"]}
    if saved is not None:
        direction.save(saved)
        write_json(saved / "choice.json", info)  # last: its presence says the folder is whole
    return info, (direction, layer)


def cell_order(grid: Grid, sources: list[str], seeds: list[int] | None = None) -> list[tuple[int, str, str]]:
    """(seed, source, method) in the order the grid runs them: the untrained cells (base, mms; one
    seed, the grid's first: they are deterministic) of every shift first, cheap and each shift's
    reference rows; then every trained method on every shift with the first seed before any later
    seed. ``seeds`` (default: the grid's) are the trained cells' seeds."""
    untrained = [m for m in grid.methods if m in UNTRAINED]
    trained = [m for m in grid.methods if m not in untrained]
    order = [(grid.seeds[0], s, m) for s in sources for m in untrained]
    return order + [(seed, s, m) for seed in (seeds or grid.seeds) for s in sources for m in trained]


def wanted(grid: Grid, out: Path, args, first: str, seed: int, source: str, method: str) -> bool:
    """Whether this sitting runs a cell: ``--methods`` and ``--sources`` choose, but a shift outside
    ``--sources`` still runs a sweep another shift's cells wait on (without ``tune_per_shift`` every
    shift takes the first shift's rates)."""
    if args.methods and method not in args.methods:
        return False
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
            tune_on = source if grid.tune_per_shift else first
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
            with claim(out, f"cell-{source}-{method}-seed{seed}") as mine:
                handled.add((seed, source, method))
                if not mine:
                    continue  # another process runs it
                fresh = not (out / "cells" / source / method / f"seed{seed}" / "cell.json").is_file()
                run_cell(grid, out, source, shifts[source], method, seed, {method: lrs.get(key)})
                new += fresh
                print(f"cell {source} {method} seed{seed} done" + ("" if fresh else " before"), flush=True)
        if not waiting:
            return new
        time.sleep(pause)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--grid", help="JSON file of Grid fields")
    p.add_argument("--shift-file", help="a GENIES-format shift list (overrides the grid's)")
    p.add_argument("--out", default="results/compare")
    p.add_argument("--max-cells", type=int, default=None, help="stop after this many new cells (for a sitting)")
    p.add_argument("--methods", nargs="+", default=None,
                   help="this sitting runs only these of the grid's methods (the grid itself is unchanged)")
    p.add_argument("--sources", nargs="+", default=None,
                   help="this sitting runs only the shifts from these sources (the grid itself is unchanged); "
                        "without tune_per_shift, a method not tuned yet still gets its sweep and its first-shift cell")
    p.add_argument("--seeds", nargs="+", type=int, default=None,
                   help="this sitting trains these seeds (default: the grid's); a seed outside the grid's adds "
                        "cells beside it, e.g. a third seed on one shift to settle a difference the seeds split. "
                        "The grid's first seed stays the one that tunes rates and scores behaviour")
    p.add_argument("--poll", type=float, default=60.0,
                   help="seconds between looks at cells that wait on another process's sweep (several processes "
                        "can run one grid side by side: each claims the cell or sweep it runs)")
    p.add_argument("--status", action="store_true",
                   help="only say which sweep points and cells are done, started and left, with an estimate of the "
                        "time left from the grid's recorded times (read-only: safe beside running workers)")
    p.add_argument("--workers", type=int, default=2, help="with --status: workers sharing the grid, for the wall time")
    p.add_argument("--check-lengths", action="store_true",
                   help="only count what truncation cuts in every set of the grid (truncation.json) and stop")
    args = p.parse_args()
    grid = Grid(**json.loads(Path(args.grid).read_text())) if args.grid else Grid()
    if args.shift_file:
        grid.shift_file = args.shift_file
    out = Path(args.out)
    shifts = resolve_shifts(grid)
    first = next(iter(shifts))
    if args.status:
        from grid_status import format_status, grid_status

        print(format_status(grid_status(grid, out, list(shifts), first, cell_order(grid, list(shifts), args.seeds)),
                            args.workers))
        return
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "grid.json", dataclasses.asdict(grid))
    if args.methods and (unknown := set(args.methods) - set(grid.methods)):
        raise SystemExit(f"--methods: {sorted(unknown)} not in the grid's methods {grid.methods}")
    if args.sources and (unknown := set(args.sources) - set(shifts)):
        raise SystemExit(f"--sources: {sorted(unknown)} not among the grid's sources {list(shifts)}")
    if grid.max_cut_share is not None or args.check_lengths:
        from reprkit.models import load_tokenizer_only

        write_json(out / "truncation.json", check_lengths(grid, load_tokenizer_only(grid.model), shifts))
        if args.check_lengths:
            return
    order = [(seed, source, method) for seed, source, method in cell_order(grid, list(shifts), args.seeds)
             if wanted(grid, out, args, first, seed, source, method)]
    work(grid, out, shifts, first, order, args.max_cells, args.poll)
    with claim(out, "analysis", wait=True):
        from analyse import analyse  # noqa: E402 (experiments/ is the script's folder)

        analyse(out)


if __name__ == "__main__":
    main()
