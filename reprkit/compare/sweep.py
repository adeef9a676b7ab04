"""Learning rates of the comparison grid: a sweep per method (per method and shift with
``tune_per_shift``) on the source's validation split, never a target, with the rule that picks a
rate (``choose_lr``, ``choose_lr_not_worse``) and its record (``lr/`` or ``lr-epoch/``); a
whole-budget sweep's chosen run becomes the first seed's cell (``adopt_sweep_run``)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from reprkit.runlog import read_config, write_json

from .scoring import encode_set, retain_ratio, score
from .settings import Grid, machine
from .training import cache_dir, load_adapter, train_config, train_curve, train_to


def choose_lr(accuracy: dict[float, float], margin: dict[float, float], ppl_ratio: dict[float, float] | None = None,
              max_ppl_ratio: float = float("inf")) -> float:
    """Among rates whose retain perplexity ratio is at most ``max_ppl_ratio``: the highest validation
    accuracy; ties broken by the larger mean margin, then the smaller rate. When every rate broke the
    model, the smallest rate."""
    ppl_ratio = ppl_ratio or {}
    valid = [lr for lr in accuracy if ppl_ratio.get(lr, 1.0) <= max_ppl_ratio]
    if not valid:
        return min(accuracy)
    return max(valid, key=lambda lr: (round(accuracy[lr], 6), margin.get(lr, float("-inf")), -lr))


def choose_lr_not_worse(outcomes: dict[float, list[int]], ppl_ratio: dict[float, float],
                        max_ppl_ratio: float = float("inf"), alpha: float = 0.05) -> tuple[float, dict]:
    """Among rates whose retain perplexity ratio is at most ``max_ppl_ratio``: the largest rate whose
    validation outcomes (0/1 per item, the same items for every rate) are not significantly below the
    most accurate rate's (exact McNemar, p >= ``alpha``; the most accurate rate itself qualifies).
    Ties in accuracy thus go to the larger rate, and a sweep whose accuracies cannot tell rates apart
    (no valid rate significantly below the best) falls back to the largest rate within the bound, and
    says so. When every rate broke the model, the smallest rate. Returns (rate, why)."""
    import numpy as np

    from reprkit.stats import mcnemar_exact

    valid = sorted(lr for lr in outcomes if ppl_ratio.get(lr, 1.0) <= max_ppl_ratio)
    if not valid:
        return min(outcomes), {"told_apart": False, "why": "every rate broke the model: the smallest"}
    acc = {lr: float(np.mean(outcomes[lr])) for lr in valid}
    best = max(valid, key=lambda lr: (acc[lr], lr))
    p = {lr: (1.0 if lr == best else mcnemar_exact(np.array(outcomes[best]), np.array(outcomes[lr]))["p"])
         for lr in valid}
    worse = [lr for lr in valid if p[lr] < alpha and acc[lr] < acc[best]]
    chosen = max(lr for lr in valid if lr not in worse)
    told = bool(worse)
    why = (f"the largest rate not significantly below the most accurate ({best:g}, {acc[best]:.3f}); "
           f"significantly worse: {[f'{lr:g}' for lr in worse]}" if told else
           "validation cannot tell the valid rates apart (none significantly below the most accurate): "
           "the largest rate within the perplexity bound")
    return chosen, {"told_apart": told, "why": why, "mcnemar_p_vs_best": {f"{lr:g}": p[lr] for lr in valid},
                    "most_accurate": best}


def method_rates(grid: Grid, method: str, field: str = "lr_sweep") -> list[float]:
    rates = getattr(grid, field)
    return rates.get(method, []) if isinstance(rates, dict) else rates


def sweep_dir(grid: Grid, out: Path, source: str | None = None) -> Path:
    base = out / ("lr" if grid.sweep_steps else "lr-epoch")
    return base / source if grid.tune_per_shift and source else base


def broken_before(grid: Grid, out: Path, method: str) -> set[float]:
    """Rates whose retain perplexity ratio exceeded the bound in the shorter sweep
    ``skip_broken_from``: a longer run at the same rate is not run."""
    rec = out / grid.skip_broken_from / f"{method}.json" if grid.skip_broken_from else None
    if rec is None or not rec.is_file():
        return set()
    return {float(lr) for lr, r in json.loads(rec.read_text())["sweep"].items() if r["ppl_ratio"] > grid.max_ppl_ratio}


def sweep_point(grid: Grid, out: Path, method: str, source: str, targets: list[str], lr: float) -> dict:
    """Validation accuracy and margin, retain perplexity ratio of one rate (computed once, then read)."""
    rec_file = sweep_dir(grid, out, source) / method / f"lr{lr:g}.json"
    if rec_file.is_file():
        return json.loads(rec_file.read_text())
    start, spent = time.time(), 0.0
    run = sweep_dir(grid, out, source) / method / f"lr{lr:g}"
    if grid.sweep_steps:
        train_to(train_config(grid, method, source, 0, lr, run, grid.sweep_steps, cache_dir(grid, out)), grid.sweep_steps)
        model, tok = load_adapter(grid, run)
        val = score(model, tok, encode_set(grid, tok, grid.spec(source, grid.val_split), grid.val_split, grid.val_limit))
        ppl = retain_ratio(grid, model, tok, out / "retain-frozen.json")["ratio"]
        rec = {"steps": grid.sweep_steps}
    else:
        cell_file = out / "cells" / source / method / f"seed{grid.seeds[0]}" / "cell.json"
        cell = json.loads(cell_file.read_text()) if cell_file.is_file() else {}
        if cell.get("lr") == lr:  # the cell is this rate's run: read, not run again
            curve, ppl = cell["curve"], cell["retain_perplexity"]["ratio"]
            spent = sum(sum(p.get("seconds", {}).values()) for p in curve)  # the run's training and curve
            start -= spent
            rec = {"steps": cell["steps"], "from": str(cell_file.relative_to(out))}
        else:
            curve, model, tok, total = train_curve(grid, out, source, targets, method, grid.seeds[0], lr, run)
            # the run's training and curve over every sitting it took, then this sitting's perplexity
            start = time.time() - sum(sum(p.get("seconds", {}).values()) for p in curve)
            ppl = retain_ratio(grid, model, tok, out / "retain-frozen.json")["ratio"]
            rec = {"steps": total}
        val = curve[-1]["source val"]
        rec["val_curve"] = [[p["step"], p["source val"]["accuracy_mean"]] for p in curve]
    rec = {"accuracy": val["accuracy_mean"], "margin": val["margin_mean"], "n": val["n"], "ppl_ratio": ppl,
           "seconds": time.time() - start, "machine": machine(), **rec}
    if "items" in val:
        rec["val_correct"] = val["items"]["correct"]
    if "from" in rec and not spent:
        rec["seconds"] = None  # a cell that predates per-point timing
    rec_file.parent.mkdir(parents=True, exist_ok=True)
    write_json(rec_file, rec)
    print(f"lr sweep {method} {lr:g}: val {rec['accuracy']:.3f} margin {rec['margin']:.4f} ppl x{ppl:.3f}", flush=True)
    return rec


def tune_lr(grid: Grid, method: str, source: str, out: Path, targets: list[str] | None = None) -> float:
    """The rate ``choose_lr`` picks from the sweep over ``lr_sweep``, then ``lr_below`` one at a time
    while every rate so far broke the model, then ``lr_above`` one at a time while the largest rate so
    far is the chosen one. Rates that broke the model in ``skip_broken_from`` are not run, nor is an
    ``lr_above`` rate above one of them."""
    cache = sweep_dir(grid, out, source) / f"{method}.json"
    if cache.is_file():
        return json.loads(cache.read_text())["lr"]
    skipped = broken_before(grid, out, method)
    records: dict[float, dict] = {}
    why: dict = {}

    above_broken: list[float] = []

    def chosen() -> float:
        ppl = {lr: r["ppl_ratio"] for lr, r in records.items()}
        outcomes = {lr: r["val_correct"] for lr, r in records.items() if "val_correct" in r}
        if grid.lr_rule == "not-worse-larger":
            lr, reason = choose_lr_not_worse(outcomes, ppl, grid.max_ppl_ratio)
        else:
            lr = choose_lr({lr: r["accuracy"] for lr, r in records.items()},
                           {lr: r["margin"] for lr, r in records.items()}, ppl, grid.max_ppl_ratio)
            # what the validation items say about the choice, recorded beside it (not used by the rule)
            reason = choose_lr_not_worse(outcomes, ppl, grid.max_ppl_ratio)[1] if len(outcomes) == len(records) else {}
            reason = {"why": "the most accurate rate on validation within the perplexity bound (ties: larger "
                             "margin, then the smaller rate)",
                      **{k: v for k, v in reason.items() if k != "why"}}
        why.clear()
        why.update(reason)
        return lr

    def run(lrs: list[float], while_) -> None:
        for lr in lrs:
            if lr in skipped:
                continue
            if grid.stop_above_broken and any(r["ppl_ratio"] > grid.max_ppl_ratio for k, r in records.items() if k < lr):
                above_broken.append(lr)
                continue
            if not while_():
                return
            records[lr] = sweep_point(grid, out, method, source, targets or [], lr)

    run(method_rates(grid, method), lambda: True)
    # smaller rates only while every rate so far broke the model
    run(method_rates(grid, method, "lr_below"), lambda: all(r["ppl_ratio"] > grid.max_ppl_ratio for r in records.values()))
    # larger rates only while the largest rate so far is the one chosen, and never above a rate that
    # broke the model in the shorter sweep
    run(method_rates(grid, method, "lr_above"), lambda: bool(records) and chosen() == max([*records, *skipped]))
    if not records:
        raise SystemExit(f"every rate of the sweep broke the model in {grid.skip_broken_from}: give the grid "
                         "smaller rates (lr_sweep or lr_below)")
    best = chosen()
    cache.parent.mkdir(parents=True, exist_ok=True)
    rule = choose_lr_not_worse if grid.lr_rule == "not-worse-larger" else choose_lr
    # rates run before (under another rule, or an earlier sweep list) whose records are on disk: shown
    # beside the sweep, never part of the choice
    also = {}
    for f in sorted((sweep_dir(grid, out, source) / method).glob("lr*.json")):
        lr = float(f.stem[2:])
        if lr not in records:
            also[f"{lr:g}"] = json.loads(f.read_text())
    rec = {"lr": best, "rule": " ".join(rule.__doc__.split("\n\n")[0].split()), "lr_rule": grid.lr_rule, "why": why,
           "max_ppl_ratio": grid.max_ppl_ratio,
           "source": source, "split": grid.val_split, "steps": grid.sweep_steps or "epochs",
           "sweep": {f"{lr:g}": r for lr, r in records.items()},
           "skipped (broke the model in a shorter sweep)": sorted(skipped)}
    if grid.stop_above_broken:
        rec["skipped (above a rate that broke the model)"] = sorted(above_broken)
    if also:
        rec["also run (not part of this rule's sweep)"] = also
    write_json(cache, rec)
    return best


def adopt_sweep_run(grid: Grid, out: Path, method: str, source: str, lr: float) -> None:
    """After a whole-budget sweep the first shift's seed-0 cell of ``method`` is the chosen rate's
    run: its curve and run directory are copied in. A finished cell of another rate moves into the
    sweep's folder (it is that rate's record); an unfinished cell of another rate is discarded."""
    if grid.sweep_steps:
        return
    cell_dir = out / "cells" / source / method / f"seed{grid.seeds[0]}"
    if (cell_dir / "cell.json").is_file():
        old = json.loads((cell_dir / "cell.json").read_text()).get("lr")
        if old == lr:
            return
        keep = sweep_dir(grid, out, source) / method / f"lr{old:g}"
        keep.mkdir(parents=True, exist_ok=True)
        for name in ("cell.json", "curve.json"):
            if (cell_dir / name).is_file():
                shutil.move(cell_dir / name, keep / name)
        print(f"cell {cell_dir}: trained at {old:g}, the sweep chose {lr:g}; kept in {keep}", flush=True)
        shutil.rmtree(cell_dir)
    elif cell_dir.is_dir():
        run = cell_dir / "run"
        if (run / "config.json").is_file() and read_config(run).get("lr") == lr:
            return
        print(f"cell {cell_dir}: unfinished at another rate than the sweep's {lr:g}, or its copy was cut short; "
              "discarded", flush=True)
        shutil.rmtree(cell_dir)
    src = sweep_dir(grid, out, source) / method / f"lr{lr:g}"
    if (src / "curve.json").is_file():
        cell_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / "curve.json", cell_dir / "curve.json")
        if (src / "run").is_dir():  # copied whole or not at all: a sitting can end inside the copy
            tmp = cell_dir / ".run.copying"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(src / "run", tmp)
            tmp.rename(cell_dir / "run")
