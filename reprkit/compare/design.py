"""The design's answer: whether each method learnt its source (the entry condition), whether the
design can see transfer at all (the positive control), how much of the ceiling each method carried
(normalised transfer), and the pre-registered family of hidden-state methods against DPO on the
pooled primary targets, with Holm, simultaneous bounds and the detectable difference beside every
"no difference".

    from reprkit.compare.design import answer, answer_lines
    res = answer(cells, ceilings, grid)          # cells: cells/*/*/seed*/cell.json; ceilings: ceiling/...
    print("\\n".join(answer_lines(res)))

Every test here is seed-level (``reprkit.stats.seed_t_difference``): the spread between training
seeds is in every interval. Runs are paired with the frozen model and with each other by item id.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..stats import ALPHA, detectable_difference, holm, pooled_seed_t_difference, ratio_interval, seed_t_difference
from .paired import per_seed_items

HIDDEN_STATE = ("reprpo", "reroute", "prefvec")
"""The methods whose objective is on hidden states (presets of those families); every other trained
method but DPO is reported beside them, outside the family."""

SOURCE_COL = "source test"

MIN_SEEDS = 2
"""Runs a trained method needs before a seed-level test decides anything: with one, the spread
between training seeds is unknown and the test would be the items' alone, so the entry condition
and the positive control stay undecided (an interim report, or a grid of one seed, says so)."""


def _undecided(runs: int) -> str:
    return f"undecided: {runs} seed so far (the seed-level test needs {MIN_SEEDS})"


def load_ceilings(out: Path) -> list[dict]:
    """The ceiling cells of a grid folder (``ceiling/<target>/<method>/seed<k>/cell.json``)."""
    return [json.loads(p.read_text()) for p in sorted((Path(out) / "ceiling").glob("*/*/seed*/cell.json"))]


def _hidden(method: str) -> bool:
    return method.split("-")[0] in HIDDEN_STATE


def entry(cells: list[dict], source: str, method: str) -> dict | None:
    """Whether ``method`` learnt ``source``: its seed-level source-test gain over the frozen model
    (``learnt``: significant and positive; None, with ``undecided`` saying why, while the method has
    fewer than ``MIN_SEEDS`` runs). None where either side has no runs."""
    runs, frozen = (per_seed_items(cells, source, m, SOURCE_COL) for m in (method, "base"))
    if not runs or not frozen:
        return None
    res = seed_t_difference(runs, frozen)
    if len(runs) < MIN_SEEDS:
        return {**_row(res), "runs": len(runs), "learnt": None, "undecided": _undecided(len(runs))}
    return {**_row(res), "runs": len(runs), "learnt": bool(res["significant"] and res["difference"] > 0)}


def _row(res: dict) -> dict:
    return {k: res[k] for k in ("difference", "ci95", "p", "df", "se", "significant") if k in res}


def normalised_transfer(source_runs: list[dict], ceiling_runs: list[dict], frozen: list[dict]) -> dict:
    """GENIES' normalised transfer on one target: (source-trained accuracy - frozen) / (target-trained
    accuracy - frozen), with Fieller's interval at the seed level. Numerator and denominator are
    ``seed_t_difference`` estimates; their covariance is the items' (the same target items, one
    frozen run), ``cov(d_num_i, d_den_i) / N`` of the per-item differences of seed means."""
    num, den = seed_t_difference(source_runs, frozen), seed_t_difference(ceiling_runs, frozen)
    ids = sorted(frozen[0])
    f = np.array([frozen[0][i] for i in ids], dtype=float)
    dn = np.mean([[r[i] for i in ids] for r in source_runs], 0) - f
    dd = np.mean([[r[i] for i in ids] for r in ceiling_runs], 0) - f
    cov = float(np.cov(dn, dd)[0, 1]) / len(ids) if len(ids) > 1 else 0.0
    res = ratio_interval(num["difference"], den["difference"], num["se"] ** 2, den["se"] ** 2, cov,
                         min(num["df"], den["df"]))
    return {"normalised": res["ratio"], "ci95": res["ci95"], "bounded": res["bounded"],
            "source_trained_gain": num["difference"], "ceiling_gain": den["difference"],
            "ceiling_gain_p": den["p"], "ceiling_runs": len(ceiling_runs)}


def primary_targets(grid: dict, targets: list[str], groups: dict[str, bool] | None = None) -> list[str]:
    """The evidence family's targets: the grid's ``primary_targets``, else the length-neutral ones
    of ``groups`` (target -> length-neutral), else every target."""
    if grid.get("primary_targets"):
        return [t for t in grid["primary_targets"] if t in targets]
    if groups:
        return [t for t in targets if groups.get(t)]
    return list(targets)


def answer(cells: list[dict], ceilings: list[dict], grid: dict, groups: dict[str, bool] | None = None) -> dict:
    """The design's answer per source (see the module docstring); ``grid`` is the grid's fields."""
    out = {}
    for source in dict.fromkeys(c["shift"] for c in cells):
        mine = [c for c in cells if c["shift"] == source]
        methods = [m for m in dict.fromkeys(c["method"] for c in mine) if m not in ("base", "length")]
        targets = [col[len("target "):] for col in next(c for c in mine if c["method"] == "base")["scores"]
                   if col.startswith("target ")] if any(c["method"] == "base" for c in mine) else []
        res = {"entry": {m: e for m in methods if (e := entry(cells, source, m)) is not None}}
        control = grid.get("positive_control")
        if control in targets and "dpo" in methods:
            col = f"target {control}"
            runs, frozen = per_seed_items(cells, source, "dpo", col), per_seed_items(cells, source, "base", col)
            if runs and frozen:
                r = seed_t_difference(runs, frozen)
                res["positive_control"] = {"target": control, **_row(r), "runs": len(runs),
                                           "shown": bool(r["significant"] and r["difference"] > 0)}
                if len(runs) < MIN_SEEDS:
                    res["positive_control"].update(shown=None, undecided=_undecided(len(runs)))
        res["normalised"] = {}
        for t in targets:
            frozen = per_seed_items(cells, source, "base", f"target {t}")
            for ceiling_method in dict.fromkeys(c["method"] for c in ceilings if c["shift"] == t):
                ceil = per_seed_items(ceilings, t, ceiling_method, SOURCE_COL)
                for m in methods:
                    runs = per_seed_items(cells, source, m, f"target {t}")
                    if runs and ceil and frozen:
                        res["normalised"].setdefault(t, {})[m] = {"ceiling": ceiling_method,
                                                                 **normalised_transfer(runs, ceil, frozen)}
        res["family"] = family(cells, source, methods, primary_targets(grid, targets, groups), res["entry"])
        res["primary_targets"] = primary_targets(grid, targets, groups)
        out[source] = res
    return out


def family(cells: list[dict], source: str, methods: list[str], targets: list[str], entries: dict) -> dict:
    """Each hidden-state method that learnt its source against DPO on the pooled ``targets`` (scored
    by the same runs: the seed part pooled per run), Holm over them, the simultaneous bound
    (1 - ALPHA/m) and the detectable difference at Holm's first step. Methods that did not learn
    their source are listed as such and left out, and so are those whose entry is still undecided
    (``undecided``: fewer than ``MIN_SEEDS`` runs); where DPO did not learn it, or is undecided, there
    is no family."""
    out = {"targets": targets, "rows": {},
           "not_learnt": [m for m in methods if entries.get(m, {}).get("learnt") is False],
           "undecided": [m for m in methods if m in entries and entries[m]["learnt"] is None]}
    if "dpo" in out["undecided"]:
        out["why_empty"] = f"whether DPO learnt the source is {entries['dpo']['undecided']}"
        return out
    if "dpo" not in methods or not entries.get("dpo", {}).get("learnt"):
        out["why_empty"] = "DPO did not learn the source at seed level: no vs-DPO row is a comparison"
        return out
    members = [m for m in methods if _hidden(m) and entries.get(m, {}).get("learnt")]
    if not members or not targets:
        out["why_empty"] = ("no primary target" if members else
                            "no hidden-state method learnt the source at seed level"
                            + (" yet (some are undecided)" if any(_hidden(m) for m in out["undecided"]) else ""))
        return out
    m = len(members)
    for method in members:
        strata = {t: (per_seed_items(cells, source, method, f"target {t}"), per_seed_items(cells, source, "dpo", f"target {t}"))
                  for t in targets}
        strata = {t: s for t, s in strata.items() if s[0] and s[1]}
        if not strata:
            continue
        shared = {t: source for t in strata}
        res = pooled_seed_t_difference(strata, shared=shared)
        wide = pooled_seed_t_difference(strata, confidence=1 - ALPHA / m, shared=shared)
        out["rows"][method] = {**_row(res), "simultaneous_ci": wide["ci95"],
                               "mde80_family": detectable_difference(res["se"], res["df"], alpha=ALPHA / m)}
    adjusted = holm({k: r["p"] for k, r in out["rows"].items()})
    for k, r in out["rows"].items():
        r["p_holm"] = adjusted[k]
        r["significant_holm"] = bool(adjusted[k] < ALPHA)
    return out


def _ci(ci) -> str:
    return "no finite interval" if ci is None else f"({ci[0]:+.3f}, {ci[1]:+.3f})"


def answer_lines(res: dict) -> list[str]:
    """The answer as markdown: entry, positive control, normalised transfer, the family."""
    lines = ["## The design's answer", ""]
    for source, r in res.items():
        lines += [f"### Source {source}", "", "**Entry condition** (seed-level source-test gain over the frozen model; "
                  "a method that did not learn its source is not compared):", "",
                  "| method | gain | 95% CI | p | learnt its source |", "|---|---|---|---|---|"]
        for m, e in r["entry"].items():
            verdict = e.get("undecided") if e["learnt"] is None else "yes" if e["learnt"] else "no: did not learn this source"
            lines.append(f"| {m} | {e['difference']:+.3f} | {_ci(e['ci95'])} | {e['p']:.3g} | {verdict} |")
        if "positive_control" in r:
            pc = r["positive_control"]
            lines += ["", f"**Positive control** (DPO's seed-level target gain on {pc['target']}): "
                      f"{pc['difference']:+.3f} {_ci(pc['ci95'])}, p {pc['p']:.3g}: "
                      + (f"{pc['undecided']}." if pc["shown"] is None else
                         "the design sees transfer where it is expected." if pc["shown"] else
                         "not significant: the design has shown no power to see transfer.")]
        if r["normalised"]:
            lines += ["", "**Normalised transfer** ((source-trained - frozen) / (target-trained - frozen) on each "
                      "target, seed-level Fieller interval):", "",
                      "| target | method | normalised | 95% CI | gain | ceiling's gain (p) |", "|---|---|---|---|---|---|"]
            for t, rows in r["normalised"].items():
                for m, n in rows.items():
                    lines.append(f"| {t} | {m} | {n['normalised']:+.2f} | {_ci(n['ci95'])} | "
                                 f"{n['source_trained_gain']:+.3f} | {n['ceiling_gain']:+.3f} ({n['ceiling_gain_p']:.2g}) |")
        fam = r["family"]
        lines += ["", f"**The evidence family**: hidden-state methods that learnt the source against DPO, pooled over "
                  f"{', '.join(fam['targets']) or 'no target'} (Holm over the family):", ""]
        if "why_empty" in fam:
            lines.append(f"None: {fam['why_empty']}.")
        else:
            lines += ["| method - DPO | difference | 95% CI | simultaneous CI | p | p (Holm) | detectable (80%, Holm) |",
                      "|---|---|---|---|---|---|---|"]
            for m, row in fam["rows"].items():
                lines.append(f"| {m} | {row['difference']:+.3f} | {_ci(row['ci95'])} | {_ci(row['simultaneous_ci'])} | "
                             f"{row['p']:.3g} | {row['p_holm']:.3g}{' *' if row['significant_holm'] else ''} | "
                             f"{row['mde80_family']:.3f} |")
            lines += ["", "A difference not significant after Holm is \"no difference detected\", and says only that a "
                      "true difference above the detectable one would probably have been seen."]
        if fam["not_learnt"]:
            lines.append(f"\nNot compared (did not learn the source at seed level): {', '.join(fam['not_learnt'])}.")
        if fam.get("undecided"):
            lines.append(f"\nNot compared yet (fewer than {MIN_SEEDS} seeds, entry undecided): "
                         f"{', '.join(fam['undecided'])}.")
        lines.append("")
    return lines
