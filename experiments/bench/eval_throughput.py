"""Preference-accuracy evaluation throughput: items per second, with and without the base model's
score from the same call (adapter disabled), on GENIES items (4 responses each).

    python experiments/bench/eval_throughput.py [--items 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import interleaved, save, table  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--items", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    from reprkit import data as D
    from reprkit.config import TrainConfig
    from reprkit.evaluate import item_accuracy
    from reprkit.models import load_model
    from reprkit.train import add_lora

    torch.set_num_threads(args.threads)
    model, tok = load_model()
    model = add_lora(model, TrainConfig(), None)
    items = D.load_items("genies:alpaca_easy", "test", limit=args.items)
    enc = D.encode_ranked(items, tok, 256, 128)
    responses = sum(len(e["responses_ids"]) for e in enc)
    fns = {"adapter_only": lambda: item_accuracy(model, enc, tok.pad_token_id, base=False),
           "adapter_and_base": lambda: item_accuracy(model, enc, tok.pad_token_id, base=True)}
    res = interleaved(fns, args.repeats, reference="adapter_only", warmup=0)
    rows = []
    for n, v in res.items():
        v["items_per_s"] = len(enc) / v["median_s"]
        v["pairs_per_s"] = (responses - len(enc)) / v["median_s"]  # best-vs-other comparisons
        rows.append([n, v["median_s"], v["ratio"], v["items_per_s"], v["pairs_per_s"]])
        v.pop("times")
    print(f"\nSmolLM2-135M-Instruct, {len(enc)} GENIES items ({responses} responses, <= 256 tokens), "
          f"{args.threads} threads, median of {args.repeats}")
    print(table(rows, ["variant", "median s", "x adapter only", "items/s", "pairs/s"]))
    save("eval_throughput", {"items": len(enc), "responses": responses, "variants": res})


if __name__ == "__main__":
    main()
