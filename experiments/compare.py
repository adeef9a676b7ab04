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
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from pathlib import Path

import torch

from reprkit import data as D
from reprkit.config import LoraSettings, TrainConfig, preset
from reprkit.evaluate import generate_samples, item_accuracy, perplexity_ratio
from reprkit.models import DEFAULT_MODEL, load_model
from reprkit.runlog import checkpoints, read_config, read_run, write_json

TRAIN_SPLIT, VAL_SPLIT = "train[:90%]", "train[90%:]"


@dataclasses.dataclass
class Grid:
    model: str = DEFAULT_MODEL
    shifts: list[str] = dataclasses.field(default_factory=lambda: ["alpaca_easy->alpaca_hard"])
    """'source->target', or a source alone for every target the shift file gives it"""
    shift_file: str | None = None
    """a GENIES-format shift list (default: genies/distribution_shifts/GENIES.json of the data dir)"""
    methods: list[str] = dataclasses.field(default_factory=lambda: ["base", "mms", "dpo", "reprpo", "reroute"])
    """'base' (frozen model), 'mms' (read direction) or presets of reprkit.config.PRESETS"""
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0, 1])
    epochs: float = 1.0
    """passes over the source's train[:90%] pairs (steps = ceil(epochs * pairs / batch_size))"""
    train_limit: int | None = None
    """use only the first n training items of each source (None: all of train[:90%])"""
    batch_size: int = 4
    max_length: int = 192
    max_prompt_length: int = 96
    lora_r: int = 16
    eval_max_length: int = 256
    """tokens of prompt + response when scoring"""
    eval_max_prompt_length: int | None = None
    """tokens of prompt when scoring, cut from the left (None: half of eval_max_length)"""
    max_cut_share: float | None = None
    """refuse (before any run) a training or eval set whose share of cut items exceeds this, naming
    the lengths that would fit (None: report the share, refuse nothing: the first grids' setting)"""
    eval_limit: int | None = None
    """items per final eval set (None: the whole test split)"""
    curve_points: int = 4
    """evaluations along each training run (the last at its end), for the matched-accuracy curve"""
    val_limit: int | None = None
    """source validation items (train[90%:]) scored along training and in the sweep (None: all)"""
    curve_target_limit: int = 60
    """target items scored at each curve point (the first n of the target's test split)"""
    retain_data: str = "hh-rlhf:helpful-base"
    retain_limit: int = 100
    lr_sweep: list[float] | dict[str, list[float]] = dataclasses.field(default_factory=lambda: [3e-4, 1e-3, 3e-3])
    """rates swept, for every method, or per method ``{method: [rates]}``"""
    tune_per_shift: bool = False
    """sweep each method's rate on every shift's own source validation (records in
    ``lr-epoch/<source>/``); False: once, on the first shift, for all shifts (the first grids)"""
    lr_rule: str = "accuracy-margin-smaller"
    """'accuracy-margin-smaller' (``choose_lr``: highest validation accuracy, ties by margin, then
    the smaller rate) or 'not-worse-larger' (``choose_lr_not_worse``: the largest rate whose
    validation outcomes are not significantly below the best rate's)"""
    sweep_steps: int | None = 40
    """steps per swept rate (records in ``lr/``); None: each rate trains a cell's whole budget
    (``epochs``, in the cells' curve segments and layout, records in ``lr-epoch/``), and the first
    shift's seed-0 cell of each method is the chosen rate's run"""
    lr_below: list[float] | dict[str, list[float]] = dataclasses.field(default_factory=list)
    """smaller rates tried in turn, only while every rate swept so far broke the model (or per method)"""
    lr_above: list[float] | dict[str, list[float]] = dataclasses.field(default_factory=list)
    """larger rates tried in turn, only while the largest rate swept so far is the rule's choice (or per method)"""
    skip_broken_from: str | None = None
    """a shorter sweep's folder (relative to --out): a rate that broke the model there is not run again"""
    max_ppl_ratio: float = 3.0
    """a learning rate whose retain perplexity ratio exceeds this broke the model: not a valid choice"""
    mms_layers: str = "range(.2,.9)"
    n_samples: int = 4
    """greedy samples per cell (target test prompts), for a coherence check by eye"""
    truthfulqa_limit: int = 100
    sycophancy_limit: int = 200
    reference_cache: str | None = "reference-cache"
    """frozen-model cache directory (relative to --out), shared by every run on the same source; None: off"""
    shared_prompt: bool = True
    """cells train with each pair's prompt run once (``--shared-prompt``; the same loss to float
    rounding, 0.70-0.75x the step); the learning-rate sweep runs the concatenated layout"""


# ---------------------------------------------------------------- shifts and items


def resolve_shifts(grid: Grid) -> dict[str, list[str]]:
    """source -> its targets, in the grid's order."""
    listed = D.genies_shifts(grid.shift_file)
    out: dict[str, list[str]] = {}
    for spec in grid.shifts:
        source, _, target = spec.partition("->")
        source, target = source.strip(), target.strip()
        known = [s["target"] for s in listed if s["source"] == source]
        if not known:
            raise D.DataError(f"no shift in the shift list has source {source!r}; sources: "
                              f"{sorted({s['source'] for s in listed})}")
        if target and target not in known:
            raise D.DataError(f"the shift list has no shift {source}->{target}; targets of {source}: {known}")
        out.setdefault(source, [])
        out[source] += [t for t in ([target] if target else known) if t not in out[source]]
    return out


def item_id(encoded: dict) -> str:
    """A stable id of an encoded item: its prompt and best response tokens (the same under every method)."""
    key = json.dumps([encoded["prompt_ids"], encoded["responses_ids"][0]])
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def item_ids(encoded: list[dict]) -> list[str]:
    """``item_id`` of each item, made unique: a set can repeat a prompt and its best response with a
    different worse one (GENIES' change_my_view), and the second such item gets ``id~2``. Ids of
    items that do not repeat are ``item_id`` unchanged."""
    seen: dict[str, int] = {}
    out = []
    for e in encoded:
        i = item_id(e)
        seen[i] = seen.get(i, 0) + 1
        out.append(i if seen[i] == 1 else f"{i}~{seen[i]}")
    return out


def eval_prompt_length(grid: Grid) -> int:
    return grid.eval_max_prompt_length or grid.eval_max_length // 2


def encode_set(grid: Grid, tok, source: str, split: str, limit: int | None) -> list[dict]:
    items = D.load_items(source, split, limit=limit)
    return D.encode_ranked(items, tok, grid.eval_max_length, eval_prompt_length(grid))


ITEM_KEYS = ("correct", "margin", "correct_sum", "margin_sum", "logps", "n_tokens", "shortest", "longest")


def score(model, tok, encoded: list[dict]) -> dict:
    """item_accuracy without the frozen model's pass, with per-item outcomes keyed by item id: under
    the mean and the sum rule, each response's summed log-prob and token count (the ratio rule is
    computed against the base cell's, on the same items), the length-only baselines; and what
    truncation cut (``truncation``)."""
    res = item_accuracy(model, encoded, tok.pad_token_id, base=False)
    items = res.pop("items")
    res["items"] = {"id": item_ids(encoded)}
    for key in ITEM_KEYS:
        values = items[key]
        res["items"][key] = [round(m, 5) for m in values] if key.startswith("margin") else values
    return res


def eval_sets(grid: Grid, source: str, targets: list[str]) -> dict[str, tuple[str, str, int | None]]:
    """column -> (dataset, split, limit) of the final evaluation."""
    cols = {"source test": (f"genies:{source}", "test", grid.eval_limit)}
    for t in targets:
        cols[f"target {t}"] = (f"genies:{t}", "test", grid.eval_limit)
    return cols


def curve_sets(grid: Grid, source: str, targets: list[str]) -> dict[str, tuple[str, str, int | None]]:
    cols = {"source val": (f"genies:{source}", VAL_SPLIT, grid.val_limit)}
    for t in targets:
        cols[f"target {t}"] = (f"genies:{t}", "test", grid.curve_target_limit)
    return cols


def score_direction(grid: Grid, model, tok, direction, source: str, split: str, limit: int | None) -> dict:
    """As ``score``, ranking responses by their projection on a read direction (the mms method)."""
    direction, layer = direction
    items = D.load_items(source, split, limit=limit)
    encoded = D.encode_ranked(items, tok, grid.eval_max_length, eval_prompt_length(grid))
    ids = item_ids(encoded)
    res = direction.score(model, tok, items, layer, encoded=encoded)  # tokenized once, for the ids and the score
    items_out = res.pop("items")
    res["items"] = {"id": ids, "correct": items_out["correct"], "margin": [round(m, 5) for m in items_out["margin"]]}
    return res


def score_length(grid: Grid, tok, source: str, split: str, limit: int | None) -> dict:
    """The model-free length baselines as a method's scores: ``correct`` is "prefer the shortest"
    (ties split), ``correct_longest`` "prefer the longest"."""
    from reprkit.scoring import length_baseline
    from reprkit.truncation import truncation_report

    encoded = encode_set(grid, tok, source, split, limit)
    lb = length_baseline(encoded)
    k = [len(e["responses_ids"]) for e in encoded]
    return {"n": len(encoded), "accuracy_mean": lb["accuracy_shortest"], "accuracy_longest": lb["accuracy_longest"],
            "chance": sum(1 / x for x in k) / len(k), "rule": lb["rule"], "truncation": truncation_report(encoded),
            "items": {"id": item_ids(encoded), "correct": lb["shortest"], "correct_longest": lb["longest"]}}


def score_sets(grid: Grid, model, tok, sets: dict, direction=None, length: bool = False,
               partial: Path | None = None) -> dict:
    """Score each eval set (log-probs, projections on ``direction = (Direction, layer)``, or with
    ``length`` the length-only baselines). With ``partial`` (a json file) each finished set is
    written there as it is done and read back instead of scored again: a sitting that stops in the
    middle of a cell's final scoring loses one set at most."""
    out = json.loads(partial.read_text()) if partial is not None and partial.is_file() else {}
    out = {col: res for col, res in out.items() if col in sets}
    for col, (d, s, lim) in sets.items():
        if col in out:
            continue
        if length:
            res = score_length(grid, tok, d, s, lim)
        elif direction is not None:
            res = score_direction(grid, model, tok, direction, d, s, lim)
        else:
            res = score(model, tok, encode_set(grid, tok, d, s, lim))
        out[col] = {"data": d, "split": s, **res}
        if partial is not None:
            write_json(partial, out)
    return {col: out[col] for col in sets}


# ---------------------------------------------------------------- training in segments


def n_steps(grid: Grid, source: str) -> int:
    pairs = D.to_pairs(D.load_items(f"genies:{source}", TRAIN_SPLIT, limit=grid.train_limit))
    return math.ceil(grid.epochs * len(pairs) / grid.batch_size)


def train_config(grid: Grid, method: str, source: str, seed: int, lr: float, run_dir: Path, total: int,
                 cache: Path | None = None, shared_prompt: bool = False) -> TrainConfig:
    cfg = preset(method)
    return dataclasses.replace(
        cfg, model=grid.model, data=f"genies:{source}", train_split=TRAIN_SPLIT, eval_data=(), seed=seed, lr=lr,
        steps=total, batch_size=grid.batch_size, max_length=grid.max_length, max_prompt_length=grid.max_prompt_length,
        lora=LoraSettings(r=grid.lora_r, alpha=2 * grid.lora_r), run_dir=str(run_dir), progress=False,
        save_every=0, warmup_steps=max(1, total // 10), n_samples=0, limit=grid.train_limit,
        reference_cache=str(cache) if cache is not None else None, shared_prompt=shared_prompt,
    )


def train_to(cfg: TrainConfig, step: int) -> Path:
    """Train ``cfg``'s run up to ``step`` (from scratch, or resumed from its last checkpoint). The
    schedule is the whole run's (warm-up from ``cfg.steps``), so segments equal one run."""
    from reprkit.train import train

    run = Path(cfg.run_dir)
    done = checkpoints(run)
    if done and done[-1][0] >= step:
        return run
    if not (run / "config.json").is_file():
        return train(dataclasses.replace(cfg, steps=step))
    saved = read_config(run)
    saved["steps"] = step
    write_json(run / "config.json", saved)
    return train(TrainConfig(resume=str(run)))


def load_adapter(grid: Grid, run: Path):
    from peft import PeftModel

    model, tok = load_model(grid.model)
    return PeftModel.from_pretrained(model, run / "adapter"), tok


def retain_ratio(grid: Grid, model, tok) -> dict:
    pairs = D.to_pairs(D.load_items(grid.retain_data, "test", limit=grid.retain_limit))
    encoded = D.encode_pairs(pairs, tok, grid.eval_max_length, eval_prompt_length(grid))
    return {"data": grid.retain_data, **perplexity_ratio(model, encoded, tok.pad_token_id)}


# ---------------------------------------------------------------- learning rates


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


def cache_dir(grid: Grid, out: Path) -> Path | None:
    return out / grid.reference_cache if grid.reference_cache else None


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
        val = score(model, tok, encode_set(grid, tok, f"genies:{source}", VAL_SPLIT, grid.val_limit))
        ppl = retain_ratio(grid, model, tok)["ratio"]
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
            ppl = retain_ratio(grid, model, tok)["ratio"]
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

    def chosen() -> float:
        ppl = {lr: r["ppl_ratio"] for lr, r in records.items()}
        if grid.lr_rule == "not-worse-larger":
            lr, reason = choose_lr_not_worse({lr: r["val_correct"] for lr, r in records.items()}, ppl, grid.max_ppl_ratio)
            why.clear()
            why.update(reason)
            return lr
        return choose_lr({lr: r["accuracy"] for lr, r in records.items()},
                         {lr: r["margin"] for lr, r in records.items()}, ppl, grid.max_ppl_ratio)

    def run(lrs: list[float], while_) -> None:
        for lr in lrs:
            if lr in skipped:
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
    write_json(cache, {"lr": best, "rule": " ".join(rule.__doc__.split("\n\n")[0].split()), "why": why,
                       "max_ppl_ratio": grid.max_ppl_ratio,
                       "source": source, "split": VAL_SPLIT, "steps": grid.sweep_steps or "epochs",
                       "sweep": {f"{lr:g}": r for lr, r in records.items()},
                       "skipped (broke the model in a shorter sweep)": sorted(skipped)})
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
        print(f"cell {cell_dir}: unfinished at another rate than the sweep's {lr:g}; discarded", flush=True)
        shutil.rmtree(cell_dir)
    src = sweep_dir(grid, out, source) / method / f"lr{lr:g}"
    if (src / "curve.json").is_file():
        cell_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / "curve.json", cell_dir / "curve.json")
        if (src / "run").is_dir():
            shutil.copytree(src / "run", cell_dir / "run")


# ---------------------------------------------------------------- cells


def samples(grid: Grid, model, tok, target: str) -> list[dict]:
    items = D.load_items(f"genies:{target}", "test", limit=grid.n_samples)
    return generate_samples(model, tok, [it["prompt"] for it in items], max_new_tokens=48)


def behaviour_columns(grid: Grid, model, tok) -> dict:
    """Behaviour the method was not trained on: TruthfulQA MC1/MC2 and the sycophancy rate on
    fixed subsets (the first n questions / rows)."""
    from reprkit.behaviour import behaviour_rate, load_behaviour
    from reprkit.evaluate import truthfulqa_mc

    out = {}
    if grid.truthfulqa_limit:
        tq = truthfulqa_mc(model, tok, limit=grid.truthfulqa_limit, base=False)
        out["truthfulqa_mc1"] = {"value": tq["mc1"]["accuracy"], "ci95": tq["mc1"]["ci95"], "n": tq["mc1"]["n"]}
        out["truthfulqa_mc2"] = {"value": tq["mc2"]["score"], "ci95": tq["mc2"]["ci95"], "n": tq["mc2"]["n"]}
    root = D.shared_data_dir()
    files = sorted((root / "anthropic-evals" / "sycophancy").glob("*.jsonl")) if root else []
    if grid.sycophancy_limit and files:
        items = letter_balanced(load_behaviour(files[0]), grid.sycophancy_limit)
        res = behaviour_rate(model, tok, items, base=False)
        out["sycophancy"] = {"value": res["rate"], "ci95": res["ci95"], "n": res["n"], "file": files[0].name,
                             "subset": BALANCED}
    return out


BALANCED = "letter-balanced"


def letter_balanced(items: list[dict], n: int) -> list[dict]:
    """The first ``n`` rows taken in turn from each behaviour-matching answer (" (A)", " (B)", ...),
    in file order: a model's preference for one answer letter then cannot pass for the behaviour
    (the file's first 200 rows all have the sycophantic answer at " (A)")."""
    groups: dict[str, list[dict]] = {}
    for it in items:
        groups.setdefault(it["responses"][it["matching"].index(True)].strip(), []).append(it)
    out, queues = [], [list(g) for g in groups.values()]
    while len(out) < n and any(queues):
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop(0))
    return out


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


def train_curve(grid: Grid, out: Path, source: str, targets: list[str], method: str, seed: int, lr: float,
                folder: Path) -> tuple[list[dict], object, object, int]:
    """Train ``method`` at ``lr`` for a cell's budget in ``curve_points`` segments (run in
    ``folder/run``), scoring source validation and the first target items after each
    (``folder/curve.json``, resumable): (curve, model with the final adapter, tokenizer, steps)."""
    total = n_steps(grid, source)
    cfg = train_config(grid, method, source, seed, lr, folder / "run", total, cache_dir(grid, out),
                       shared_prompt=grid.shared_prompt)
    curve_file = folder / "curve.json"
    curve = json.loads(curve_file.read_text()) if curve_file.is_file() else []
    # a curve point belongs to the run it was scored on: when the run's checkpoints are gone
    # (a run directory is not committed), its points are scored again on the new run
    last = max((s for s, _ in checkpoints(folder / "run")), default=0)
    if any(p["step"] > last for p in curve):
        print(f"cell {folder}: curve points past the run's last checkpoint ({last}) are scored again", flush=True)
        curve = [p for p in curve if p["step"] <= last]
    model = tok = None
    for k in range(1, grid.curve_points + 1):
        step = round(total * k / grid.curve_points)
        if any(p["step"] == step for p in curve):
            continue
        t0 = time.time()
        run = train_to(cfg, step)
        t1 = time.time()
        model, tok = load_adapter(grid, run)
        curve.append({"step": step, **score_sets(grid, model, tok, curve_sets(grid, source, targets)),
                      "seconds": {"train": t1 - t0, "scoring": time.time() - t1}})
        write_json(curve_file, curve)
    if model is None:  # every point was scored before (an adopted sweep run, or a sitting that stopped here)
        model, tok = load_adapter(grid, train_to(cfg, total))
    return curve, model, tok, total


UNTRAINED = ("base", "length", "mms", "meandiff-mean", "meandiff-last")
"""Methods with no training: the frozen model, the length-only baselines, and reading baselines
(a mean-difference residual direction read from the source's training pairs: ``meandiff-mean``
from each response's token-mean state, template end tokens included, as the first grids' ``mms``;
``meandiff-last`` from the response's own last token)."""
READERS = {"mms": "mean", "meandiff-mean": "mean", "meandiff-last": "last"}


def check_lengths(grid: Grid, tok, shifts: dict[str, list[str]]) -> dict:
    """What truncation cuts in every training and eval set of the grid, at its lengths (tokenizer
    only, no model); with ``max_cut_share``, refuse the grid naming each set cut more and the lengths
    that would fit."""
    from reprkit.truncation import describe, truncation_report

    reports, bad = {}, []
    for source, targets in shifts.items():
        items = D.load_items(f"genies:{source}", TRAIN_SPLIT, limit=grid.train_limit)
        sets = {f"train genies:{source} {TRAIN_SPLIT}": D.encode_pairs(D.to_pairs(items), tok, grid.max_length,
                                                                      grid.max_prompt_length, warn=False)}
        for d, split, lim in [*eval_sets(grid, source, targets).values(), *curve_sets(grid, source, targets).values()]:
            name = f"eval {d} {split}" + (f"[:{lim}]" if lim else "")
            if name not in sets:
                sets[name] = encode_set(grid, tok, d, split, lim)
        for name, enc in sets.items():
            rep = reports[name] = truncation_report(enc)
            print(f"lengths {name}: {describe(rep)}", flush=True)
            if grid.max_cut_share is not None and rep["share"] > grid.max_cut_share:
                bad.append(f"{name}: {describe(rep)}")
    if bad:
        raise SystemExit(f"refused: more than {grid.max_cut_share:.0%} of items cut in {len(bad)} set(s); raise the "
                         "grid's max_length / max_prompt_length (training) or eval_max_length / "
                         "eval_max_prompt_length (scoring), or leave the shift out:\n  " + "\n  ".join(bad))
    return reports


def machine() -> dict:
    """What a timing ran on: torch's threads, and the load average (1, 5, 15 min) when it ended, which
    shows whether something else shared the cores (two grid processes side by side, a test run)."""
    return {"threads": torch.get_num_threads(), "load_avg": [round(x, 2) for x in os.getloadavg()]}


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
        cell["retain_perplexity"] = retain_ratio(grid, model, tok)
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
                        "a method not tuned yet still gets its sweep and its first-shift cell")
    p.add_argument("--seeds", nargs="+", type=int, default=None,
                   help="this sitting trains these seeds (default: the grid's); a seed outside the grid's adds "
                        "cells beside it, e.g. a third seed on one shift to settle a difference the seeds split. "
                        "The grid's first seed stays the one that tunes rates and scores behaviour")
    p.add_argument("--check-lengths", action="store_true",
                   help="only count what truncation cuts in every set of the grid (truncation.json) and stop")
    args = p.parse_args()
    grid = Grid(**json.loads(Path(args.grid).read_text())) if args.grid else Grid()
    if args.shift_file:
        grid.shift_file = args.shift_file
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "grid.json", dataclasses.asdict(grid))
    shifts = resolve_shifts(grid)
    first = next(iter(shifts))
    if args.methods and (unknown := set(args.methods) - set(grid.methods)):
        raise SystemExit(f"--methods: {sorted(unknown)} not in the grid's methods {grid.methods}")
    if args.sources and (unknown := set(args.sources) - set(shifts)):
        raise SystemExit(f"--sources: {sorted(unknown)} not among the grid's sources {list(shifts)}")
    if grid.max_cut_share is not None or args.check_lengths:
        from reprkit.models import load_tokenizer_only

        write_json(out / "truncation.json", check_lengths(grid, load_tokenizer_only(grid.model), shifts))
        if args.check_lengths:
            return
    lrs: dict[str, float] = {}
    new = 0
    for seed, source, method in cell_order(grid, list(shifts), args.seeds):
        if args.methods and method not in args.methods:
            continue
        tune_on = source if grid.tune_per_shift else first
        untuned = (source == tune_on and seed == grid.seeds[0] and method not in UNTRAINED
                   and not (sweep_dir(grid, out, tune_on) / f"{method}.json").is_file())
        # a shift outside --sources runs only for a sweep another shift's cells wait on (without
        # tune_per_shift every shift takes the first shift's rates)
        if args.sources and source not in args.sources and not (untuned and not grid.tune_per_shift):
            continue
        if args.max_cells is not None and new >= args.max_cells:
            return
        key = (method, tune_on)
        if method not in UNTRAINED and key not in lrs:
            # tuned when its first cell comes up: a whole-budget sweep's chosen run is then
            # finished as that cell in the same sitting (its run directory is not committed)
            lrs[key] = tune_lr(grid, method, tune_on, out, shifts[tune_on])
            adopt_sweep_run(grid, out, method, tune_on, lrs[key])
        fresh = not (out / "cells" / source / method / f"seed{seed}" / "cell.json").is_file()
        run_cell(grid, out, source, shifts[source], method, seed, {method: lrs.get(key)})
        new += fresh
        print(f"cell {source} {method} seed{seed} done", flush=True)
    from analyse import analyse  # noqa: E402 (experiments/ is the script's folder)

    analyse(out)


if __name__ == "__main__":
    main()
