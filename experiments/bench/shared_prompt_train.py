"""Does running each pair's prompt once pay in training? ``--shared-prompt`` against the
concatenated layout, DPO and ReprPO steps on GENIES pairs, as the comparison grid trains.

    python experiments/bench/shared_prompt_train.py [--steps 12] [--rounds 2] [--limit 64] [--cache]

Each measurement is a fresh child process (``grid_throughput.child_train``: alpaca_easy
``train[:90%]``, batch 4, max length 192, prompts up to 96 tokens, LoRA r16), step time the median
after the first two steps; variants alternate within each round and the ratio is the median of
per-round ratios. ``--cache`` reads the frozen model's outputs from a reference cache in every
variant (as the grid does), so only the policy pass differs. Peak RSS growth is reported too.
The tokens each layout runs are counted on the same pairs (padding included).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import run_child, save, table  # noqa: E402

GRID = Path(__file__).resolve().parent / "grid_throughput.py"


def padded_tokens(limit: int, batch: int = 4) -> dict:
    from reprkit import data as D
    from reprkit.models import default_tokenizer

    tok = default_tokenizer()
    enc = D.encode_pairs(D.to_pairs(D.load_items("genies:alpaca_easy", "train[:90%]", limit=limit)), tok, 192, 96)
    full = shared = 0
    for i in range(0, len(enc), batch):
        b = enc[i: i + batch]
        full += 2 * len(b) * max(len(e[f"{s}_prompt_ids"]) + len(e[f"{s}_ids"]) for e in b for s in ("chosen", "rejected"))
        shared += len(b) * max(len(e["chosen_prompt_ids"]) for e in b)
        shared += 2 * len(b) * max(len(e[f"{s}_ids"]) for e in b for s in ("chosen", "rejected"))
    return {"concatenated": full, "shared_prompt": shared, "ratio": shared / full}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--limit", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--losses", nargs="+", default=["dpo", "reprpo"])
    p.add_argument("--cache", action="store_true", help="frozen outputs from a reference cache (as in the grid)")
    p.add_argument("--child", action="store_true")
    p.add_argument("--loss")
    p.add_argument("--shared", action="store_true")
    p.add_argument("--cache-dir", default="")
    args = p.parse_args()
    if args.child:
        import json

        from grid_throughput import child_train

        print(json.dumps(child_train(args.loss, args.steps, args.cache_dir, args.threads, args.limit,
                                     shared_prompt=args.shared)))
        return
    tokens = padded_tokens(args.limit)
    print(f"padded tokens per epoch of {args.limit} pairs: concatenated {tokens['concatenated']}, "
          f"shared prompt {tokens['shared_prompt']} ({tokens['ratio']:.3f})")
    raw, rows = {}, []
    with tempfile.TemporaryDirectory() as root:
        for loss in args.losses:
            cache = str(Path(root) / loss) if args.cache else ""
            common = ["--loss", loss, "--steps", str(args.steps), "--limit", str(args.limit), "--threads",
                      str(args.threads), "--cache-dir", cache]
            if cache:  # build it first, outside the timed runs
                run_child(__file__, *common[:2], "--steps", "1", *common[4:])
            runs = {"concatenated": [], "shared_prompt": []}
            for r in range(args.rounds):
                for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
                    runs[name].append(run_child(__file__, *common, *(["--shared"] if name == "shared_prompt" else [])))
            ratio = statistics.median(s["step_s"] / c["step_s"] for s, c in zip(runs["shared_prompt"], runs["concatenated"]))
            raw[loss] = {"runs": runs, "ratio": ratio}
            for name, rs in runs.items():
                rows.append([loss, name, statistics.median(x["step_s"] for x in rs),
                             ratio if name == "shared_prompt" else 1.0, statistics.median(x["peak_mb"] for x in rs)])
    print(table(rows, ["loss", "layout", "step s", "x concatenated", "peak MB"]))
    save("shared_prompt_train", {"tokens": tokens, "train": raw, "args": vars(args)})


if __name__ == "__main__":
    main()
