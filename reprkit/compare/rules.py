"""The comparison under every scoring rule, with seed-level statistics and Holm's correction.

Used by ``analyse.py`` for grids whose cells keep each response's log-probs (``grid_scoring.score``):

- rules (``reprkit.scoring``): ``mean`` (the primary rule, chosen before the runs), ``sum``, and
  ``ratio`` (log-prob ratio to the frozen model, computed against the base cell's log-probs on the
  same items; undefined for the frozen model itself and for methods that do not score by log-prob);
- model-free rows ``shortest`` and ``longest`` (the length-only baselines, ties split), and the
  reading baselines (``meandiff-*``, scored by projection: the same under every rule);
- each method against DPO on every eval set and rule: the seed-level difference
  (``reprkit.stats.seed_t_difference``: Welch t over per-seed accuracies plus the items' variance,
  Satterthwaite degrees of freedom) and the items-only paired interval (seeds averaged per item;
  exact McNemar where outcomes are 0/1, else the sign-flip permutation test with its floor);
- Holm's correction within each rule's family: every method but the length rows against DPO on
  every target under that rule (the primary rule's family is the headline's), so that a verdict
  that changes between rules is not an artefact of adjusting one rule and not the others;
- a verdict per method and target that says whether it depends on the rule.
"""

from __future__ import annotations

import statistics

from reprkit.stats import holm, paired_difference, seed_t_difference

from .design import MIN_SEEDS
from .settings import UNTRAINED

PRIMARY = "mean"
RULES = ("mean", "sum", "ratio")
READERS = ("mms", "meandiff-mean", "meandiff-last")
MODEL_FREE = ("shortest", "longest")


def has_logps(cells: list[dict]) -> bool:
    return any("logps" in s.get("items", {}) for c in cells for s in c.get("scores", {}).values())


def _correct(logps: list[float], ref: list[float]) -> int:
    scores = [a - b for a, b in zip(logps, ref)]
    return int(scores[0] > max(scores[1:]))


def outcomes(cells: list[dict], shift: str, method: str, col: str, rule: str) -> list[dict[str, float]]:
    """One ``{item id: outcome}`` per seed of ``method`` on one eval set under ``rule``; [] where the
    rule does not apply."""
    if method in MODEL_FREE:
        cs = [c for c in cells if c["shift"] == shift and c["method"] == "length" and col in c["scores"]]
        key = "correct" if method == "shortest" else "correct_longest"
        return [dict(zip(c["scores"][col]["items"]["id"], c["scores"][col]["items"][key])) for c in cs]
    cs = sorted((c for c in cells if c["shift"] == shift and c["method"] == method and col in c["scores"]),
                key=lambda c: c["seed"])
    if not cs:
        return []
    if method in READERS or rule == "mean":
        return [dict(zip(c["scores"][col]["items"]["id"], c["scores"][col]["items"]["correct"])) for c in cs]
    if rule == "sum":
        return [dict(zip(c["scores"][col]["items"]["id"], c["scores"][col]["items"]["correct_sum"])) for c in cs
                if "correct_sum" in c["scores"][col]["items"]]
    base = next((c for c in cells if c["shift"] == shift and c["method"] == "base" and col in c["scores"]), None)
    if method == "base" or base is None or "logps" not in base["scores"][col]["items"]:
        return []
    ref = dict(zip(base["scores"][col]["items"]["id"], base["scores"][col]["items"]["logps"]))
    return [{i: _correct(lp, ref[i]) for i, lp in zip(c["scores"][col]["items"]["id"], c["scores"][col]["items"]["logps"])}
            for c in cs if "logps" in c["scores"][col]["items"]]


def _seed_mean(runs: list[dict]) -> dict:
    return {i: sum(r[i] for r in runs) / len(runs) for i in runs[0]}


def rule_rows(cells: list[dict], methods: list[str]) -> list[dict]:
    """Every method (and the length baselines) against DPO, per shift, eval set and rule."""
    rows = []
    for shift in dict.fromkeys(c["shift"] for c in cells):
        cols = list(next(c for c in cells if c["shift"] == shift)["scores"])
        sample = next(c for c in cells if c["shift"] == shift)
        for col in cols:
            meta = sample["scores"][col]
            cut = (meta.get("truncation") or {}).get("share")
            for rule in RULES:
                dpo = outcomes(cells, shift, "dpo", col, rule)
                for method in [*MODEL_FREE, *(m for m in methods if m != "length")]:
                    runs = outcomes(cells, shift, method, col, rule)
                    if not runs:
                        continue
                    row = {"shift": shift, "eval": col, "rule": rule, "method": method, "seeds": len(runs),
                           "n": len(runs[0]), "chance": meta.get("chance"), "cut_share": cut,
                           "accuracy": statistics.mean(statistics.mean(r.values()) for r in runs)}
                    if dpo and method != "dpo":
                        t = seed_t_difference(runs, dpo)
                        items = paired_difference(_seed_mean(runs), _seed_mean(dpo))
                        row.update(vs="dpo", dpo_seeds=len(dpo), difference=t["difference"], seed_ci_low=t["ci95"][0],
                                   seed_ci_high=t["ci95"][1], seed_p=t["p"], seed_df=t["df"],
                                   items_ci_low=items["ci95"][0], items_ci_high=items["ci95"][1], items_p=items["p"],
                                   items_test=items["test"], items_p_floor=items.get("p_floor"))
                    rows.append(row)
    for rule in RULES:
        family = {_key(r): r["seed_p"] for r in rows if r["rule"] == rule and _in_family(r)}
        adjusted = holm(family) if family else {}
        for r in rows:
            if _key(r) in adjusted:
                r["seed_p_holm"] = adjusted[_key(r)]
                r["family_size"] = len(family)
    return rows


def _key(r: dict) -> str:
    return f"{r['shift']}|{r['eval']}|{r['rule']}|{r['method']}"


def _in_family(r: dict) -> bool:
    """A comparison Holm adjusts: a method (not a length row) against DPO on a target."""
    return r["eval"].startswith("target") and "seed_p" in r and r["method"] not in MODEL_FREE


def one_seed(r: dict) -> bool:
    """Whether a row's seed-level test is the items' alone: DPO, or the trained method against it,
    has a single seed (the frozen model and the model-free rows have one by nature)."""
    trained = r["method"] not in MODEL_FREE and r["method"] not in UNTRAINED
    return r.get("dpo_seeds", MIN_SEEDS) < MIN_SEEDS or (trained and r["seeds"] < MIN_SEEDS)


def call(r: dict, alpha: float = 0.05) -> str:
    """'better', 'worse' or 'no difference' at the seed level (Holm-adjusted within the rule's family;
    the length rows, outside every family, unadjusted); 'undecided (1 seed)' where ``one_seed``."""
    if one_seed(r):
        return "undecided (1 seed)"
    p = r.get("seed_p_holm", r.get("seed_p"))
    if p is None or p >= alpha:
        return "no difference"
    return "better" if r["difference"] > 0 else "worse"


def verdicts(rows: list[dict]) -> list[dict]:
    """Per method and target eval set against DPO: the call under each rule, and whether it depends on the rule."""
    out = []
    keys = dict.fromkeys((r["shift"], r["eval"], r["method"]) for r in rows if "seed_p" in r and r["eval"].startswith("target"))
    for shift, col, method in keys:
        calls = {r["rule"]: call(r) for r in rows if (r["shift"], r["eval"], r["method"]) == (shift, col, method) and "seed_p" in r}
        out.append({"shift": shift, "eval": col, "method": method, **{f"call_{k}": v for k, v in calls.items()},
                    "depends_on_rule": len(set(calls.values())) > 1})
    return out


def markdown_lines(rows: list[dict], grid: dict) -> list[str]:
    def fmt(r: dict | None) -> str:
        if r is None:
            return ""
        text = f"{r['accuracy']:.3f}"
        if "difference" in r:
            holm_p = r.get("seed_p_holm")
            text += (f"<br>{r['difference']:+.3f} ({r['seed_ci_low']:+.3f}, {r['seed_ci_high']:+.3f}) p={r['seed_p']:.2g}"
                     + (f", Holm {holm_p:.2g}" if holm_p is not None else ""))
        return text

    index = {(r["shift"], r["eval"], r["rule"], r["method"]): r for r in rows}
    lines = ["", "## Every scoring rule (primary: mean log-prob per token, chosen before the runs)", "",
             "Per eval set: chance (1 / responses), the share of items cut to fit the scoring length, and the "
             "model-free length baselines ('shortest', 'longest', ties split). Each cell: accuracy (seed mean); "
             "below, the difference against DPO with the seed-level 95% interval (Welch t over per-seed accuracies "
             "plus item variance, Satterthwaite df) and its p; 'Holm' is p adjusted within the rule's family, "
             "every method but the length rows against DPO on every target under that rule (the primary rule's "
             f"{next((r['family_size'] for r in rows if 'family_size' in r and r['rule'] == PRIMARY), 0)} "
             "comparisons are the headline family). Ratio: log-prob ratio to the frozen model, defined for "
             "trained models only: it asks which response training raised most, what DPO's loss optimises, so a "
             "model that barely moved scores near chance by construction; reading baselines score by projection "
             "under every rule.", ""]
    for shift in dict.fromkeys(r["shift"] for r in rows):
        for col in dict.fromkeys(r["eval"] for r in rows if r["shift"] == shift):
            sample = next(r for r in rows if r["shift"] == shift and r["eval"] == col)
            cut = sample["cut_share"]
            lines += [f"**{shift}, {col}** (n {sample['n']}, chance {sample['chance']:.3f}, cut "
                      f"{'?' if cut is None else f'{cut:.1%}'}):", "",
                      "| method | " + " | ".join(RULES) + " |", "|---|" + "---|" * len(RULES)]
            methods = dict.fromkeys(r["method"] for r in rows if r["shift"] == shift and r["eval"] == col)
            for m in methods:
                lines.append(f"| {m} | " + " | ".join(fmt(index.get((shift, col, rule, m))) for rule in RULES) + " |")
            lines.append("")
    v = verdicts(rows)
    if v:
        lines += ["Against DPO on each target, by rule (seed level; Holm-adjusted within each rule's family, the "
                  "length rows unadjusted):", "",
                  "| shift | target | method | " + " | ".join(RULES) + " | depends on the rule |",
                  "|---|---|---|" + "---|" * (len(RULES) + 1)]
        for r in v:
            lines.append(f"| {r['shift']} | {r['eval']} | {r['method']} | "
                         + " | ".join(r.get(f"call_{k}", "n/a") for k in RULES) + f" | {'yes' if r['depends_on_rule'] else 'no'} |")
    return lines
