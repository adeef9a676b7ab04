"""Paired statistics of a comparison grid's cells: each method against DPO and against the frozen
model on the same items, per shift and eval set with seeds averaged per item, then pooled over the
shifts the grid's design names; and the verdict of a difference against seed-to-seed spread
(``reprkit.stats``). Used by ``analyse.py``."""

from __future__ import annotations

import json
from pathlib import Path

from reprkit.stats import paired_difference, pooled_difference, pooled_seed_t_difference, seed_t_difference

COMPARE_TO = ("dpo", "base")


def load_cells(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "cells").glob("*/*/seed*/cell.json"))]


def seed_mean(runs: list[dict[str, float]]) -> dict[str, float]:
    """Item id -> mean outcome over runs (seeds)."""
    return {i: sum(r[i] for r in runs) / len(runs) for i in runs[0]}


def compare_runs(a_runs: list[dict], b_runs: list[dict]) -> dict:
    """First minus second as a row: the items-only paired statistics on the seeds' per-item means,
    and the seed-level interval and p (Welch t over per-seed accuracies plus the items' variance)."""
    return {**_flat(paired_difference(seed_mean(a_runs), seed_mean(b_runs))),
            **_seed_flat(seed_t_difference(a_runs, b_runs))}


def per_seed_items(cells: list[dict], shift: str, method: str, col: str) -> list[dict[str, int]]:
    """One ``{item id: correct}`` per seed of the method on one eval set, in seed order."""
    runs = sorted((c for c in cells if c["shift"] == shift and c["method"] == method and col in c["scores"]),
                  key=lambda c: c["seed"])
    return [dict(zip(c["scores"][col]["items"]["id"], c["scores"][col]["items"]["correct"])) for c in runs]


def _seed_flat(res: dict) -> dict:
    """The seed-level interval's columns of a paired row."""
    out = {"seed_ci_low": res["ci95"][0], "seed_ci_high": res["ci95"][1], "seed_significant": res["significant"],
           "seed_p": res["p"], "seed_df": res["df"]}
    if "per_seed" in res:
        out["per_seed"] = " / ".join(f"{d:+.3f}" for d in res["per_seed"])
    return out


def _flat(res: dict) -> dict:
    out = {k: v for k, v in res.items() if k not in ("ci95", "discordant")}
    out["ci_low"], out["ci_high"] = res["ci95"]
    if "discordant" in res:
        out["only_method"], out["only_other"] = res["discordant"]
    return out


def seed_ci_text(r: dict) -> str:
    """'(-0.120, +0.010) p=0.08' : a row's seed-level interval and p."""
    p = f" p={float(r['seed_p']):.2g}" if r.get("seed_p") not in (None, "") else ""
    return f"({float(r['seed_ci_low']):+.3f}, {float(r['seed_ci_high']):+.3f}){p}"


def verdict(r: dict) -> str:
    """Whether a paired row's difference holds over items and over seeds."""
    items, both = r["significant"] in (True, "True"), r["seed_significant"] in (True, "True")
    return "holds across seeds" if both else "items only: not across seeds" if items else "not significant"


def grid_targets(grid: dict) -> dict[str, set[str]] | None:
    """source -> the targets the grid's design names (``"source->target"`` shifts), or None where a
    shift names a source alone (every target of it is in the design)."""
    out: dict[str, set[str]] = {}
    for shift in grid.get("shifts", []):
        if "->" not in shift:
            return None
        source, target = shift.split("->")
        out.setdefault(source, set()).add(target)
    return out or None


def shift_groups(out: Path) -> dict[str, str] | None:
    """source -> 'length-neutral' or 'length-cue', from the grid folder's ``shift-selection.json``
    (``select_shifts.py``), for the grid's shifts; None where the folder has no such file (a grid
    chosen before the shift rule, whose shifts carry no label)."""
    path = out / "shift-selection.json"
    if not path.is_file():
        return None
    grid = json.loads((out / "grid.json").read_text())
    wanted = {tuple(s.split("->")) for s in grid.get("shifts", []) if "->" in s}
    rows = json.loads(path.read_text())["shifts"]
    return {r["source"]: "length-neutral" if r["length_neutral"] else "length-cue"
            for r in rows if (r["source"], r["target"]) in wanted}


def evidence_pool(groups: dict[str, str] | None) -> set[str] | None:
    """The sources to pool over: None (every shift) where shifts carry no labels, else the
    length-neutral ones, and none at all where there are fewer than two (nothing to pool; the
    length-cue group is never pooled with the evidence)."""
    if groups is None:
        return None
    neutral = {k for k, v in groups.items() if v == "length-neutral"}
    return neutral if len(neutral) >= 2 else set()


def paired_rows(cells: list[dict], targets: dict[str, set[str]] | None = None,
                pool: set[str] | None = None) -> list[dict]:
    """Paired differences per shift and eval set, then pooled over shifts. ``targets`` (source -> the
    design's targets, ``grid_targets``) keeps columns a cell scored beyond the design (a target cut
    for budget after the untrained cells ran) out of the pooled rows; they keep their own rows.
    ``pool`` (sources) limits the pooled rows to those shifts (the evidence: the length-neutral
    ones, ``shift_groups``); None pools every shift."""
    shifts = list(dict.fromkeys(c["shift"] for c in cells))
    methods = list(dict.fromkeys(c["method"] for c in cells))
    rows, pooled = [], {}
    for shift in shifts:
        cols = list(next(c for c in cells if c["shift"] == shift)["scores"])
        for col in cols:
            kind = "source" if col.startswith("source") else "target"
            for method in methods:
                ra = per_seed_items(cells, shift, method, col)
                for other in COMPARE_TO:
                    rb = per_seed_items(cells, shift, other, col)
                    if not ra or not rb or method == other:
                        continue
                    rows.append({"shift": shift, "eval": col, "method": method, "vs": other, **compare_runs(ra, rb)})
                    if kind == "target" and targets is not None and col[len("target "):] not in targets.get(shift, ()):
                        continue
                    if pool is not None and shift not in pool:
                        continue
                    pooled.setdefault((kind, method, other), {})[(shift, col)] = (ra, rb)
    for (kind, method, other), strata in pooled.items():
        res = pooled_difference({f"{s}/{c}": (seed_mean(ra), seed_mean(rb)) for (s, c), (ra, rb) in strata.items()})
        # the targets of one shift are scored by the same runs: each run's seed part counted once
        shared = {key: key[0] for key in strata}
        try:
            seeds = {**pooled_seed_t_difference(strata, shared=shared), "seed_pool": "runs shared within a shift"}
        except ValueError:  # a target some of a shift's runs lack: its strata cannot share runs
            seeds = {**pooled_seed_t_difference(strata), "seed_pool": "strata independent"}
        rows.append({"shift": "pooled", "eval": kind, "method": method, "vs": other, **_flat(res), **_seed_flat(seeds),
                     "shifts": len(set(shared.values())), "seed_pool": seeds["seed_pool"]})
    return rows
