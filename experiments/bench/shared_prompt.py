"""Shared-prompt scoring vs one sequence per response, on the same GENIES items, interleaved.

    python experiments/bench/shared_prompt.py --items 40 --sets alpaca_easy code_easy

Prints the time of each path, the speed-up, the token counts (what the model runs through, padding
excluded) and the largest difference in summed log-probs between the two paths.
"""

from __future__ import annotations

import argparse
import time

from reprkit import data as D
from reprkit.evaluate import ranked_logps
from reprkit.models import load_model


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--items", type=int, default=40)
    p.add_argument("--sets", nargs="+", default=["alpaca_easy", "code_easy"])
    p.add_argument("--max-length", type=int, default=256)
    args = p.parse_args()
    model, tok = load_model()
    for name in args.sets:
        enc = D.encode_ranked(D.load_items(f"genies:{name}", "test", limit=args.items), tok, args.max_length,
                              args.max_length // 2)
        concat_tokens = sum(len(e["prompt_ids"]) * len(e["responses_ids"]) + sum(map(len, e["responses_ids"])) for e in enc)
        shared_tokens = sum(len(e["prompt_ids"]) + sum(map(len, e["responses_ids"])) for e in enc)
        t = time.perf_counter()
        a = ranked_logps(model, enc, tok.pad_token_id, base=False, shared_prompt=True)["policy"]
        shared = time.perf_counter() - t
        t = time.perf_counter()
        b = ranked_logps(model, enc, tok.pad_token_id, base=False, shared_prompt=False)["policy"]
        concat = time.perf_counter() - t
        v = a["valid"]
        print(f"{name}: {len(enc)} items; shared prompt {shared:.1f} s, one sequence per response {concat:.1f} s, "
              f"x{concat / shared:.2f}; tokens {concat_tokens} -> {shared_tokens} (limit x{concat_tokens / shared_tokens:.2f}); "
              f"max |diff| of summed log-probs {(a['logps'][v] - b['logps'][v]).abs().max():.1e}", flush=True)


if __name__ == "__main__":
    main()
