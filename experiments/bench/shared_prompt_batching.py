"""Shared-prompt scoring under its earlier batching against today's, interleaved, same items.

    python experiments/bench/shared_prompt_batching.py [--sizes 40 120] [--repeats 3]

"old": one prompt batch up to the token budget (prompts padded to its longest), responses chunked
at 25% padding, each chunk's cache a deep copy of the batch's cache with its rows selected.
"new" (``reprkit.shared_prompt`` today): prompt batches cut at 10% prompt padding, responses at
10%, chunk caches that select rows without copying the rest. Prints median seconds, every repeat,
and the median per-repeat ratio new / old, on the first N alpaca_easy test items.
"""

from __future__ import annotations

import argparse
import copy
import functools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import interleaved  # noqa: E402

import reprkit.shared_prompt as SP  # noqa: E402
from reprkit import data as D  # noqa: E402
from reprkit.evaluate import ranked_logps  # noqa: E402
from reprkit.models import load_model  # noqa: E402

NEW = SP.length_batches, SP.response_chunks, SP._rows_of


def _deep_rows(cache, index):
    chunk = copy.deepcopy(cache)
    chunk.batch_select_indices(index)
    return chunk


def use(old: bool) -> None:
    batches, chunks, rows = NEW
    if old:
        batches = functools.partial(batches, max_waste=float("inf"))
        chunks, rows = functools.partial(chunks, max_waste=0.25), _deep_rows
    SP.length_batches, SP.response_chunks, SP._rows_of = batches, chunks, rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", type=int, nargs="+", default=[40, 120])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--set", default="alpaca_easy")
    args = p.parse_args()
    model, tok = load_model()
    for n in args.sizes:
        enc = D.encode_ranked(D.load_items(f"genies:{args.set}", "test", limit=n), tok, 256, 128)

        def run(old: bool, enc=enc):
            use(old)
            return ranked_logps(model, enc, tok.pad_token_id, base=False, shared_prompt=True)

        run(True), run(False)  # warm-up
        t = interleaved({"old": lambda: run(True), "new": lambda: run(False)}, args.repeats, reference="old", warmup=0)
        print(f"{args.set} {n} items: old {t['old']['median_s']:.2f} s {[round(x, 2) for x in t['old']['times']]}, "
              f"new {t['new']['median_s']:.2f} s {[round(x, 2) for x in t['new']['times']]}, "
              f"new / old {t['new']['ratio']:.3f}", flush=True)
    use(False)


if __name__ == "__main__":
    main()
