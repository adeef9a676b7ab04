"""Choose the comparison's shifts by a rule written down before any run (``RULE``).

    python experiments/select_shifts.py --grid experiments/grids/remeasure.json --out results/remeasure/shift-selection.json

For every shift of the shift list (GENIES.json, or ``--shift-file``; data from ``$REPRKIT_DATA_DIR``
or ../shared/data): what truncation cuts at the grid's lengths (training split at the training
lengths, every eval set at the scoring lengths; tokenizer only), the model-free length baselines of
source and target (whole test splits), and the frozen model's accuracy under the mean and sum rules
on the first ``--limit`` test items of source and target. Then the rule, shift by shift, with the
reason each one passes or fails. Resumable: a scored distribution is kept.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from reprkit import data as D
from reprkit.compare.scoring import encode_set
from reprkit.compare.settings import TRAIN_SPLIT, VAL_SPLIT, Grid
from reprkit.evaluate import item_accuracy
from reprkit.models import load_model, load_tokenizer_only
from reprkit.runlog import write_json
from reprkit.scoring import length_baseline
from reprkit.truncation import truncation_report

RULE = {
    "lengths": "prompts and responses fit the grid's lengths for at least 95% of items of the source's training "
               "split, its validation split, and the source and target test splits",
    "target": "the frozen model's target accuracy under the primary rule (mean log-prob per token) is at least "
              "chance + 0.10 and at most 0.90",
    "source": "the frozen model's source accuracy (primary rule) is at most 0.90: room to learn",
    "length_neutral": "both length-only baselines ('prefer shortest', 'prefer longest', ties split) are within "
                      "0.10 of chance on source and target; shifts that pass the rest but not this form a "
                      "labelled length-cue group, not the evidence",
    "need": "at least two length-neutral shifts pass",
    "primary_rule": "mean log-prob per response token: it compares responses of different lengths on one scale "
                    "and was the first grids' rule; sum and the ratio to the frozen model are shown beside it",
}


def fits(report: dict) -> bool:
    return report["share"] <= 0.05


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--grid", required=True)
    p.add_argument("--shift-file", default=None)
    p.add_argument("--limit", type=int, default=100, help="test items per distribution for the frozen model's accuracy")
    p.add_argument("--out", default="results/remeasure/shift-selection.json")
    args = p.parse_args()
    grid = Grid(**json.loads(Path(args.grid).read_text()))
    shifts = D.genies_shifts(args.shift_file or grid.shift_file)
    out = Path(args.out)
    done = json.loads(out.read_text()) if out.is_file() else {}
    dists: dict = done.get("distributions", {})
    tok = load_tokenizer_only(grid.model)
    model = None
    start = time.time() - done.get("seconds", 0)
    names = list(dict.fromkeys(n for s in shifts for n in (s["source"], s["target"])))
    sources = {s["source"] for s in shifts}
    for name in names:  # lengths and length baselines: tokenizer only, every distribution
        old = dists.get(name, {})
        row: dict = {}
        test = encode_set(grid, tok, f"genies:{name}", "test", None)
        row["test_truncation"] = truncation_report(test)
        lb = length_baseline(test)
        k = [len(e["responses_ids"]) for e in test]
        row["chance"] = sum(1 / x for x in k) / len(k)
        row["shortest"], row["longest"] = lb["accuracy_shortest"], lb["accuracy_longest"]
        if name in sources:
            pairs = D.to_pairs(D.load_items(f"genies:{name}", TRAIN_SPLIT))
            row["train_truncation"] = truncation_report(D.encode_pairs(pairs, tok, grid.max_length, grid.max_prompt_length,
                                                                       warn=False))
            row["val_truncation"] = truncation_report(encode_set(grid, tok, f"genies:{name}", VAL_SPLIT, None))
        if "frozen" in old and not old["test_truncation"]["cut"] and not row["test_truncation"]["cut"]:
            row["frozen"] = old["frozen"]  # the same uncut items as scored before (a resumed or re-lengthed scan)
        dists[name] = row
    # the frozen model only where a shift's sets fit: a shift that fails on lengths is out whatever it scores
    fitting = [s for s in shifts if not length_reasons(s, dists)]
    for name in dict.fromkeys(n for s in fitting for n in (s["source"], s["target"])):
        row = dists[name]
        if "frozen" in row:
            continue
        if model is None:
            model, tok = load_model(grid.model)
        test = encode_set(grid, tok, f"genies:{name}", "test", args.limit)
        res = item_accuracy(model, test, tok.pad_token_id, base=False)
        row["frozen"] = {"n": res["n"], "mean": res["accuracy_mean"], "sum": res["accuracy_sum"]}
        print(f"{name:<24} cut {row['test_truncation']['share']:.1%} chance {row['chance']:.3f} shortest "
              f"{row['shortest']:.3f} longest {row['longest']:.3f} frozen mean {res['accuracy_mean']:.3f} "
              f"sum {res['accuracy_sum']:.3f} (n {res['n']})", flush=True)
        write_json(out, {"grid": dataclasses.asdict(grid), "rule": RULE, "limit": args.limit, "distributions": dists,
                         "seconds": time.time() - start})
    verdicts = [verdict(s, dists) for s in shifts]
    write_json(out, {"grid": dataclasses.asdict(grid), "rule": RULE, "limit": args.limit, "distributions": dists,
                     "shifts": verdicts, "seconds": time.time() - start})
    for v in verdicts:
        print(f"{v['source']}->{v['target']}: {v['verdict']} ({'; '.join(v['reasons']) or 'passes every rule'})")


def length_reasons(shift: dict, dists: dict) -> list[str]:
    src, tgt = dists[shift["source"]], dists[shift["target"]]
    cut = {"source train": src.get("train_truncation"), "source validation": src.get("val_truncation"),
           "source test": src["test_truncation"], "target test": tgt["test_truncation"]}
    return [f"{what} {rep['share']:.0%} cut" for what, rep in cut.items() if rep is not None and not fits(rep)]


def verdict(shift: dict, dists: dict) -> dict:
    src, tgt = dists[shift["source"]], dists[shift["target"]]
    reasons = length_reasons(shift, dists)
    if not reasons:
        t = tgt["frozen"]["mean"]
        if t < tgt["chance"] + 0.10:
            reasons.append(f"target {t:.2f} below chance + 0.10 ({tgt['chance'] + 0.10:.2f})")
        if t > 0.90:
            reasons.append(f"target {t:.2f} above 0.90")
        if src["frozen"]["mean"] > 0.90:
            reasons.append(f"source {src['frozen']['mean']:.2f} above 0.90")
    neutral = all(abs(d[b] - d["chance"]) <= 0.10 for d in (src, tgt) for b in ("shortest", "longest"))
    status = "fails" if reasons else ("passes: length-neutral" if neutral else "passes: length-cue group")
    return {**shift, "verdict": status, "reasons": reasons, "length_neutral": neutral,
            "cut_share": {"source train": (src.get("train_truncation") or {}).get("share"),
                          "source validation": (src.get("val_truncation") or {}).get("share"),
                          "source test": src["test_truncation"]["share"], "target test": tgt["test_truncation"]["share"]},
            "frozen_target": tgt.get("frozen"), "frozen_source": src.get("frozen"),
            "length_baselines": {"source": {"shortest": src["shortest"], "longest": src["longest"], "chance": src["chance"]},
                                 "target": {"shortest": tgt["shortest"], "longest": tgt["longest"], "chance": tgt["chance"]}}}


if __name__ == "__main__":
    main()
