"""The transfer grid's power, planned before its runs from the remeasure grid's cells (the same
model, source and training budget; 90/10 validation there, 75/25 here).

    python experiments/plan_power.py results/remeasure > results/transfer/power-plan.json

What it estimates: the seed-to-seed spread of a trained method's accuracy (per eval set, pooled
over the trained methods), the items' spread of the per-item difference between two trained
methods' seed means, and from them the seed-level standard error and smallest detectable
difference (80% power, two-sided, ``reprkit.stats.detectable_difference``) of one method against
DPO with 3 seeds each: on one target of 250 items, and pooled over 3 targets scored by the same
runs, where the seed part does not shrink (taken as perfectly shared: the conservative case) and
the items' part does. Unadjusted, and at Holm's first step over 3 comparisons (the pre-registered
family: each hidden-state method against DPO on the pooled primary targets). It also gives the
rate rule's floor: the difference in validation accuracy McNemar's exact test tells apart on 150
paired items at the discordance the remeasure sweeps had.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

import numpy as np
from scipy import stats as st

from reprkit.stats import detectable_difference

TRAINED = ("dpo", "reprpo", "reroute", "prefvec")


def per_seed(cells, source, method, col):
    runs = sorted((c for c in cells if c["shift"] == source and c["method"] == method), key=lambda c: c["seed"])
    return [dict(zip(c["scores"][col]["items"]["id"], c["scores"][col]["items"]["correct"])) for c in runs
            if col in c["scores"]]


def mcnemar_floor(n: int, discordant_share: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """The accuracy difference an exact McNemar test at ``alpha`` detects with ``power`` on ``n``
    paired items whose share of discordant items is ``discordant_share`` (normal approximation of
    the sign test on the discordant items)."""
    d = n * discordant_share
    # difference in accuracy delta = (b - c) / n; with d discordant, b - c has sd sqrt(d) under the null
    z = st.norm.ppf(1 - alpha / 2) + st.norm.ppf(power)
    return float(z * math.sqrt(d) / n)


def _se(seed_sd: float, item_sd: float, seeds: int, items: int) -> float:
    """Seed-level standard error of one method against another, ``seeds`` each (the seed part shared
    by every target), on ``items`` items."""
    return math.sqrt(2 * seed_sd ** 2 / seeds + item_sd ** 2 / items)


def _df(seed_sd: float, item_sd: float, seeds: int, items: int) -> float:
    """Satterthwaite's degrees of freedom over the two methods' seed terms and the items' term."""
    v_seed, v_items = seed_sd ** 2 / seeds, item_sd ** 2 / items
    return (2 * v_seed + v_items) ** 2 / (2 * v_seed ** 2 / (seeds - 1) + v_items ** 2 / (items - 1))


def main(folder: Path) -> dict:
    cells = [json.loads(p.read_text()) for p in sorted((folder / "cells").glob("*/*/seed*/cell.json"))]
    source = "alpaca_mmlu"
    out = {"from": str(folder), "source": source}
    for col in ("source test", "target raven_matrices"):
        sds, item_sds = [], []
        runs = {m: per_seed(cells, source, m, col) for m in TRAINED}
        for r in runs.values():
            acc = [np.mean(list(x.values())) for x in r]
            if len(acc) > 1:
                sds.append(statistics.stdev(acc))
        for m in TRAINED[1:]:
            a, b = runs[m], runs["dpo"]
            ids = sorted(a[0])
            d = np.mean([[x[i] for i in ids] for x in a], 0) - np.mean([[x[i] for i in ids] for x in b], 0)
            item_sds.append(float(d.std(ddof=1)))
        seed_sd = math.sqrt(statistics.mean(s ** 2 for s in sds))
        item_sd = math.sqrt(statistics.mean(s ** 2 for s in item_sds))
        n, seeds = 250, 3
        seed_var = 2 * seed_sd ** 2 / seeds
        one = math.sqrt(seed_var + item_sd ** 2 / n)
        pooled = _se(seed_sd, item_sd, seeds, 3 * n)  # the seed part shared across the 3 targets
        pooled_df = _df(seed_sd, item_sd, seeds, 3 * n)
        df = _df(seed_sd, item_sd, seeds, n)
        out[col] = {"seed_sd_per_method": [round(s, 4) for s in sds], "seed_sd": round(seed_sd, 4),
                    "item_sd_of_difference": round(item_sd, 4),
                    "one_target": {"se": round(one, 4), "df": round(df, 1), "mde80": round(detectable_difference(one, df), 3),
                                   "mde80_holm3": round(detectable_difference(one, df, alpha=0.05 / 3), 3)},
                    "pooled_3_targets": {"se": round(pooled, 4), "df": round(pooled_df, 1),
                                         "mde80": round(detectable_difference(pooled, pooled_df), 3),
                                         "mde80_holm3": round(detectable_difference(pooled, pooled_df, alpha=0.05 / 3), 3)},
                    "pooled_3_targets_by_seeds": {k: {
                        "mde80": round(detectable_difference(_se(seed_sd, item_sd, k, 3 * n), _df(seed_sd, item_sd, k, 3 * n)), 3),
                        "mde80_holm3": round(detectable_difference(_se(seed_sd, item_sd, k, 3 * n), _df(seed_sd, item_sd, k, 3 * n),
                                                                   alpha=0.05 / 3), 3)} for k in (3, 5, 8, 12)},
                    "items_only_floor_pooled": round(detectable_difference(item_sd / math.sqrt(3 * n), 3 * n - 1), 3)}
    sweeps = [json.loads(p.read_text()) for p in (folder / "lr-epoch" / source).glob("*.json")]
    shares = []
    for s in sweeps:
        rates = [r for r in s["sweep"].values() if "val_correct" in r]
        for a in rates:
            for b in rates:
                if a is not b:
                    shares.append(np.mean(np.array(a["val_correct"]) != np.array(b["val_correct"])))
    share = float(np.mean(shares)) if shares else 0.3
    out["rate_rule"] = {"validation_items": 150, "discordant_share_in_remeasure_sweeps": round(share, 3),
                        "mde80_validation": round(mcnemar_floor(150, share), 3),
                        "mde80_validation_at_60_items": round(mcnemar_floor(60, share), 3)}
    return out


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1] if len(sys.argv) > 1 else "results/remeasure")), indent=2))
