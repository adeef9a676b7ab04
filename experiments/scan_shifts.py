"""Base-model accuracy on each GENIES shift's source and target, to pick shifts for the comparison.

    python experiments/scan_shifts.py --limit 60 --out results/decisive/shift-scan.json

A shift is informative when the frozen model is neither at floor (chance) nor at ceiling on its
target, and can still improve on its source: the comparison grid's rule (``Grid.shift_rule``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from reprkit import data as D
from reprkit.evaluate import item_accuracy
from reprkit.models import DEFAULT_MODEL, load_model
from reprkit.runlog import write_json


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--shift-file", default=None, help="a GENIES-format shift list (default: GENIES.json)")
    p.add_argument("--limit", type=int, default=60, help="test items per distribution")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--out", default="results/decisive/shift-scan.json")
    args = p.parse_args()
    model, tok = load_model(args.model)
    shifts = D.genies_shifts(args.shift_file)
    names = list(dict.fromkeys(n for s in shifts for n in (s["source"], s["target"])))
    out = Path(args.out)
    done = json.loads(out.read_text()) if out.is_file() else {}
    scores, start = done.get("distributions", {}), time.time() - done.get("seconds", 0)
    for name in names:
        if name in scores:  # resumable: a scored distribution is kept
            continue
        items = D.load_items(f"genies:{name}", "test", limit=args.limit)
        enc = D.encode_ranked(items, tok, args.max_length, args.max_length // 2)
        res = item_accuracy(model, enc, tok.pad_token_id, base=False)
        scores[name] = {"n": res["n"], "accuracy": res["accuracy_mean"], "chance": res["chance"],
                        "ci95": res["accuracy_mean_ci95"]}
        print(f"{name:<24}{res['n']:>5}{res['accuracy_mean']:>8.3f}  chance {res['chance']:.3f}", flush=True)
        rows = [{**s, "source_accuracy": scores.get(s["source"], {}).get("accuracy"),
                 "target_accuracy": scores.get(s["target"], {}).get("accuracy"),
                 "target_chance": scores.get(s["target"], {}).get("chance")} for s in shifts]
        write_json(out, {"model": args.model, "limit": args.limit, "max_length": args.max_length,
                         "distributions": scores, "shifts": rows, "seconds": time.time() - start})


if __name__ == "__main__":
    main()
