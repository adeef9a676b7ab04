"""Does today's scoring reproduce a committed grid's base-model rows?

    python experiments/reproduce_base_rows.py results/genies3-small [--threads 1]
    python experiments/reproduce_base_rows.py results/decisive --shifts alpaca_easy raven_matrices

Re-scores every ``base`` row of ``RESULTS/results.csv`` (the frozen model: same items, same
encoding, 256 tokens with prompts cut to 128, as ``experiments/compare.py`` scores) with the
comparison grid's scoring as it is now: the shared-prompt path and length-sorted batches
(``grid_scoring.score``). Prints old and new accuracy (per-token mean and summed rules) and writes
``RESULTS/base-rows-reproduced.json``; exits 1 when any accuracy differs.

A grid with cell directories (``RESULTS/cells/<source>/base/seed0/cell.json``, per-item outcomes)
is checked item by item instead: every committed item's outcome must be the same, and the largest
margin difference is reported (``--shifts`` limits it to some sources).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reprkit.compare.scoring import encode_set, item_ids, score  # noqa: E402
from reprkit.compare.settings import Grid  # noqa: E402
from reprkit.models import load_model  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", type=Path)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--shifts", nargs="*", help="sources whose base cells to check (cell grids; default all)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if (args.results / "cells").is_dir():
        sys.exit(check_cells(args.results, args.shifts))
    grid = json.loads((args.results / "grid.json").read_text())
    with (args.results / "results.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["method"] == "base"]
    seen, out = set(), []
    model, tok = load_model(grid["model"])
    g = Grid(model=grid["model"])
    for r in rows:
        split = "train[:90%]" if r["eval"] == "train" else "test"
        key = (r["data"], split, int(r["n"]))
        if key in seen:
            continue
        seen.add(key)
        res = score(model, tok, encode_set(g, tok, r["data"], split, int(r["n"])))
        rec = {"data": r["data"], "split": split, "n": int(r["n"]),
               "old": {"accuracy": float(r["accuracy"]), "accuracy_sum": float(r["accuracy_sum"])},
               "new": {"accuracy": res["accuracy_mean"], "accuracy_sum": res["accuracy_sum"]}}
        rec["equal"] = all(abs(rec["old"][k] - rec["new"][k]) < 1e-6 for k in rec["old"])
        out.append(rec)
        print(f"{r['data']:32s} {split:12s} n={r['n']:>3s}  mean {rec['old']['accuracy']:.3f} -> "
              f"{rec['new']['accuracy']:.3f}   sum {rec['old']['accuracy_sum']:.3f} -> {rec['new']['accuracy_sum']:.3f}"
              f"   {'equal' if rec['equal'] else 'DIFFERENT'}", flush=True)
    (args.results / "base-rows-reproduced.json").write_text(json.dumps(out, indent=1) + "\n")
    bad = [r for r in out if not r["equal"]]
    print(f"{len(out) - len(bad)} of {len(out)} base rows reproduced exactly")
    sys.exit(1 if bad else 0)


def check_cells(results: Path, sources: list[str] | None) -> int:
    """Item-by-item re-scoring of the committed base cells; 1 when any outcome differs."""
    grid = Grid(**json.loads((results / "grid.json").read_text()))
    model, tok = load_model(grid.model)
    out = []
    for path in sorted(results.glob("cells/*/base/seed0/cell.json")):
        source = path.parts[-4]
        if sources and source not in sources:
            continue
        for col, old in json.loads(path.read_text())["scores"].items():
            enc = encode_set(grid, tok, old["data"], old["split"], old["n"])
            if item_ids(enc) != old["items"]["id"]:
                raise SystemExit(f"{path} {col}: the items are not the committed ones (data changed?)")
            new = score(model, tok, enc)["items"]
            same = sum(a == b for a, b in zip(old["items"]["correct"], new["correct"]))
            diff = max(abs(a - b) for a, b in zip(old["items"]["margin"], new["margin"]))
            rec = {"cell": str(path.relative_to(results)), "eval": col, "n": old["n"], "same_outcome": same,
                   "max_margin_diff": diff}
            out.append(rec)
            print(f"{source:20s} {col:28s} n={old['n']:>4d}  same outcome {same}/{old['n']}  "
                  f"max |margin diff| {diff:.1e}", flush=True)
    (results / "base-rows-reproduced.json").write_text(json.dumps(out, indent=1) + "\n")
    bad = [r for r in out if r["same_outcome"] != r["n"]]
    print(f"{len(out) - len(bad)} of {len(out)} base sets reproduced item by item")
    return 1 if bad else 0


if __name__ == "__main__":
    main()
