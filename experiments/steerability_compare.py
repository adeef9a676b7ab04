"""Which reading method gives the most reliable steering direction? mean_diff, both PCAs and the
probe on the four shared model-written evaluation files, steered at equal KL.

    python experiments/steerability_compare.py --out results/steerability-shuffled

Per file (``../shared/data/anthropic-evals`` or ``$REPRKIT_DATA_DIR``), its rows shuffled with
``--seed`` (the files are ordered: the sycophancy file's first 200 rows are one question): the first
``--read`` items give the contrast pairs (behaviour-matching answer vs not, each read at the
response's own last token), the next ``--eval`` items are held out for steering. Each method's
direction at ``--layer`` is steered at multiples -1, -0.5, 0, 0.5, 1 of the strength calibrated to
KL ``--kl`` (0.9 quantile of per-token KL on the first 16 held-out prompts), so every method moves
the model by the same divergence. Reported per file and method: the mean change in log-odds at +1
and -1 (bootstrap intervals), the anti-steerable fraction (per-item slope < 0; Wilson interval),
the calibrated strength, and the answer-letter baseline (the share of held-out items whose matching
answer is (A), and (B)) beside the unsteered matching rate. ``--both-orders`` reads and holds out
each question also with its two choices swapped (after the split), so each letter is the matching
answer equally often on both sides. Resumable per (file, method).
``results/steerability`` holds the first run, in file order (before the shuffle).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from reprkit import data as D
from reprkit.behaviour import contrast_pairs, load_behaviour
from reprkit.directions import Direction, completion_states, directions_from_states
from reprkit.models import DEFAULT_MODEL, load_model
from reprkit.runlog import write_json
from reprkit.scoring import both_orders, letter_baseline
from reprkit.steerability import steerability
from reprkit.steering import calibrate_strength

METHODS = ("mean_diff", "pca", "pca_uncentered", "probe")
MULTIPLES = (-1.0, -0.5, 0.0, 0.5, 1.0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--layer", type=int, default=15)
    p.add_argument("--read", type=int, default=100)
    p.add_argument("--eval", type=int, default=100)
    p.add_argument("--kl", type=float, default=1.0)
    p.add_argument("--files", nargs="*", default=None, help="only these files (names without .jsonl)")
    p.add_argument("--seed", type=int, default=0, help="the rows are shuffled with it before the read / held-out split")
    p.add_argument("--both-orders", action="store_true",
                   help="read and hold out each question in both answer orders (scoring.both_orders), after the split")
    p.add_argument("--out", default="results/steerability")
    args = p.parse_args()
    root = D.shared_data_dir()
    if root is None:
        raise SystemExit("needs ../shared/data/anthropic-evals (or REPRKIT_DATA_DIR)")
    files = sorted((root / "anthropic-evals").glob("*/*.jsonl"))
    if args.files:
        files = [f for f in files if f.stem in args.files]
    model, tok = load_model(args.model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for f in files:
        # the file's rows shuffled (seeded) before the split: the files are ordered (the sycophancy
        # file's first 200 rows are one question), so "the first n, then the next n" reads one part
        items = D.shuffled(load_behaviour(f), args.seed)[: args.read + args.eval]
        read, held = items[: args.read], items[args.read:]
        if args.both_orders:  # each question also with its choices swapped, both on its own side of the split
            read, held = both_orders(read)[0], both_orders(held)[0]
        encoded = D.encode_ranked(contrast_pairs(read), tok, 512, 256)
        states, _ = completion_states(model, encoded, tok.pad_token_id, [args.layer], token="last")
        for method in METHODS:
            rec_file = out / f"{f.stem}.{method}.json"
            if rec_file.is_file():
                continue
            start = time.time()
            vectors, stats = directions_from_states({args.layer: states[args.layer][:, 0]}, {args.layer: states[args.layer][:, 1]},
                                   method, 1.0)
            d = Direction(vectors, {"method": method, "token": "last",
                                    "data": f"{f.name}: {args.read} rows (shuffled, seed {args.seed})",
                                    "best_layer": args.layer, "stats": stats})
            prompts = [D.render_prompt(tok, it["prompt"], True) for it in held[:16]]
            cal = calibrate_strength(model, tok, d, prompts, layer=args.layer, kl=args.kl)
            res = steerability(model, tok, d, held, [m * cal["strength"] for m in MULTIPLES], layers=[args.layer])
            res["calibration"] = {"kl": args.kl, "strength": cal["strength"], "multiples": list(MULTIPLES)}
            res["file"], res["method"], res["seconds"] = f.name, method, time.time() - start
            res["read_pair_accuracy"] = stats[str(args.layer)]["pair_accuracy"]
            for name, part in (("letter_baseline", held), ("read_letter_baseline", read)):
                if (letters := letter_baseline(part)) is not None:  # the matching answer's letter, per item
                    res[name] = letters["always"]
            res["split"] = (f"seed {args.seed}: {len(read)} read, {len(held)} held out"
                            + (" (questions in both answer orders)" if args.both_orders else ""))
            write_json(rec_file, res)
            t = {r["strength"]: r for r in res["table"]}
            hi, lo = t[max(t)], t[min(t)]
            print(f"{f.stem:<50}{method:<16} +1: {hi['mean_change']:+.3f} -1: {lo['mean_change']:+.3f} "
                  f"anti {res['anti_steerable']:.3f} strength {cal['strength']:.2f} ({res['seconds']:.0f} s)", flush=True)
    summarise(out)


def summarise(out: Path) -> None:
    rows = [json.loads(p.read_text()) for p in sorted(out.glob("*.*.json")) if p.name != "summary.json"]
    lines = ["| file | method | calibrated strength | change at +1 (95% CI) | change at -1 (95% CI) | anti-steerable (95% CI) | "
             "unsteered matching rate | matching answer is (A) / (B), held out |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t = {x["strength"]: x for x in r["table"]}
        hi, lo = t[max(t)], t[min(t)]
        lines.append(f"| {r['file']} | {r['method']} | {r['calibration']['strength']:.2f} | "
                     f"{hi['mean_change']:+.3f} ({hi['change_ci95'][0]:+.3f}, {hi['change_ci95'][1]:+.3f}) | "
                     f"{lo['mean_change']:+.3f} ({lo['change_ci95'][0]:+.3f}, {lo['change_ci95'][1]:+.3f}) | "
                     f"{r['anti_steerable']:.3f} ({r['anti_steerable_ci95'][0]:.3f}, {r['anti_steerable_ci95'][1]:.3f}) | "
                     f"{r['unsteered_matching_rate']:.3f} | "
                     + (" / ".join(f"{r['letter_baseline'].get(x, 0):.3f}" for x in "AB") if r.get("letter_baseline") else "-")
                     + " |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
