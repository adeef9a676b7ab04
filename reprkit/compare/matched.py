"""A comparison grid's methods at matched source accuracy: each run's target accuracy (curve subset)
where its source validation first reaches DPO's final one, interpolated between checkpoints, and
each method against DPO there on the same items. Used by ``analyse.py``."""

from __future__ import annotations

import statistics

from .paired import compare_runs, seed_ci_text, verdict

MATCHED_TITLE = ("At matched source accuracy, paired: target (curve subset) against DPO's where each run's source "
                 "validation first reaches DPO's final (mean over its seeds), per-item outcomes interpolated between "
                 "checkpoints as the accuracies are; runs that never reach the level are left out (counted):")


def matched(cells: list[dict]) -> list[dict]:
    """Per run: target accuracy (curve subset) where source-validation accuracy first reaches DPO's
    final one (mean over DPO's seeds), by linear interpolation between curve points. The base
    model's point is every trained run's step 0, so a run whose frozen model already meets the level
    is matched there, at the base target accuracy; mms (no training) has one point, its own."""
    from .figures import run_points

    rows = []
    for shift in dict.fromkeys(c["shift"] for c in cells):
        base = next((c for c in cells if c["shift"] == shift and c["method"] == "base"), None)
        dpo = [c for c in cells if c["shift"] == shift and c["method"] == "dpo" and c.get("curve")]
        if base is None or not dpo:
            continue
        level = statistics.mean(c["curve"][-1]["source val"]["accuracy_mean"] for c in dpo)
        for c in cells:
            if c["shift"] != shift or not c.get("curve") or c["method"] == "base":
                continue
            for target in c["targets"]:
                col = f"target {target}"
                points = run_points(base, c)
                xs = [p["source val"]["accuracy_mean"] for p in points]
                ys = [p[col]["accuracy_mean"] for p in points]
                rows.append({"shift": shift, "target": target, "method": c["method"], "seed": c["seed"],
                             "dpo_final_source_val": level, "final_source_val": xs[-1], "final_target": ys[-1],
                             "target_at_match": _cross(xs, ys, level)})
    return rows


def _cross(xs: list[float], ys: list[float], level: float) -> float | None:
    at = _crossing(xs, level)
    if at is None:
        return None
    i, w = at
    return ys[i] if w == 0 else ys[i] + (ys[i + 1] - ys[i]) * w


def _crossing(xs: list[float], level: float) -> tuple[int, float] | None:
    """Where ``xs`` first reaches ``level``: (point i, weight w of point i + 1), linear between
    points; None where it never does."""
    if xs[0] >= level:
        return 0, 0.0
    for i, (x0, x1) in enumerate(zip(xs, xs[1:])):
        if x0 < level <= x1:
            return i, (level - x0) / (x1 - x0)
    return None  # never reached


def matched_items(base: dict, cell: dict, col: str, level: float) -> dict[str, float] | None:
    """A run's per-item target outcomes (curve subset) where its source validation first reaches
    ``level``, interpolated between the two checkpoints around it as ``matched`` interpolates the
    accuracy (so their mean is that run's ``target_at_match``); None where it never does."""
    from .figures import run_points

    points = run_points(base, cell)
    at = _crossing([p["source val"]["accuracy_mean"] for p in points], level)
    if at is None:
        return None
    i, w = at
    lo = dict(zip(points[i][col]["items"]["id"], points[i][col]["items"]["correct"]))
    if w == 0:
        return {k: float(v) for k, v in lo.items()}
    hi = dict(zip(points[i + 1][col]["items"]["id"], points[i + 1][col]["items"]["correct"]))
    return {k: lo[k] + (hi[k] - lo[k]) * w for k in lo}


def matched_paired_rows(cells: list[dict], methods: set[str] | None = None) -> list[dict]:
    """Each trained method's target (curve subset) against DPO's at DPO's final source validation
    (mean over DPO's seeds), paired by item: both the seed-averaged items interval and the one that
    holds the spread between seeds (seed-level t). Runs that never reach the level are left out and counted (``reached``):
    a method most of whose runs never reach it is compared on the runs that did."""
    from .figures import run_points

    rows = []
    for shift in dict.fromkeys(c["shift"] for c in cells):
        base = next((c for c in cells if c["shift"] == shift and c["method"] == "base"), None)
        runs = [c for c in cells if c["shift"] == shift and c.get("curve") and c["method"] not in ("base", "mms")]
        dpo = [c for c in runs if c["method"] == "dpo"]
        if base is None or not dpo:
            continue
        level = statistics.mean(c["curve"][-1]["source val"]["accuracy_mean"] for c in dpo)
        for target in dpo[0]["targets"]:  # the targets DPO ran on (the base cell may hold targets cut later)
            col = f"target {target}"
            at = {}
            for c in sorted(runs, key=lambda c: c["seed"]):
                if all(col in p for p in run_points(base, c)):
                    at.setdefault(c["method"], []).append(matched_items(base, c, col, level))
            b_runs = [r for r in at["dpo"] if r is not None]
            for method, a_all in at.items():
                a_runs = [r for r in a_all if r is not None]
                if method == "dpo" or (methods is not None and method not in methods):
                    continue
                row = {"shift": shift, "target": target, "method": method, "vs": "dpo", "level": level,
                       "reached": f"{len(a_runs)} of {len(a_all)} / {len(b_runs)} of {len(at['dpo'])}"}
                if base["curve"][0]["source val"]["accuracy_mean"] >= level:
                    row["note"] = "the frozen model is at the level: every run is read at step 0"
                elif a_runs and b_runs:
                    row.update(compare_runs(a_runs, b_runs))
                rows.append(row)
    return rows


def matched_paired_lines(rows: list[dict], title: str) -> list[str]:
    if not rows:
        return []
    lines = ["", title, "", "| shift | target | method | runs at the level (method / DPO) | difference | "
             "items only 95% CI | seed level 95% CI, p | verdict |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "difference" not in r:
            lines.append(f"| {r['shift']} | {r['target']} | {r['method']} | {r['reached']} | "
                         f"{r.get('note') or 'never reached'} | | | |")
            continue
        lines.append(f"| {r['shift']} | {r['target']} | {r['method']} | {r['reached']} | {r['difference']:+.3f} | "
                     f"({r['ci_low']:+.3f}, {r['ci_high']:+.3f}) | {seed_ci_text(r)} | "
                     f"{verdict(r)} |")
    return lines


def matched_line(r: dict) -> str:
    at = "never reached" if r["target_at_match"] is None else f"{r['target_at_match']:.3f}"
    return (f"| {r['shift']} | {r['target']} | {r['method']} | {r['seed']} | "
            f"{r['dpo_final_source_val']:.3f} | {at} | {r['final_target']:.3f} |")
