"""Does bf16 autocast change evaluation's answers? Item-by-item agreement with float32.

    python experiments/bench/eval_dtype.py [--sets alpaca_easy code_easy] [--items 100] [--threads 1]

Scores the same GENIES test items (every response, shared-prompt path) with float32 weights, once
in float32 and once under ``torch.autocast(bfloat16)``, and reports per set: both accuracies, the
share of items whose outcome (right / wrong) agrees, and the margin differences (per-token mean
log-prob units). The criterion for offering bf16 evaluation: outcomes agree on at least 99% of
items. This is an agreement check, not a timing (the grid may run beside it); the training-step
table in the README shows what bf16 autocast does to speed on this machine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import save, table  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sets", nargs="+", default=["alpaca_easy", "code_easy"])
    p.add_argument("--items", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-length", type=int, default=256)
    args = p.parse_args()
    from reprkit import data as D
    from reprkit.evaluate import item_accuracy
    from reprkit.models import load_model

    torch.set_num_threads(args.threads)
    model, tok = load_model()
    rows, raw = [], {}
    for name in args.sets:
        items = D.load_items(f"genies:{name}", "test", limit=args.items)
        enc = D.encode_ranked(items, tok, args.max_length, args.max_length // 2)
        fp32 = item_accuracy(model, enc, tok.pad_token_id, base=False)
        with torch.autocast("cpu", torch.bfloat16):
            bf16 = item_accuracy(model, enc, tok.pad_token_id, base=False)
        a, b = torch.tensor(fp32["items"]["correct"]), torch.tensor(bf16["items"]["correct"])
        ma, mb = torch.tensor(fp32["items"]["margin"]), torch.tensor(bf16["items"]["margin"])
        diff = (ma - mb).abs()
        rows.append({"set": name, "n": len(a), "acc fp32": round(fp32["accuracy_mean"], 4),
                     "acc bf16": round(bf16["accuracy_mean"], 4), "agree": round((a == b).float().mean().item(), 4),
                     "margin |diff| median": round(diff.median().item(), 4), "max": round(diff.max().item(), 4),
                     "margin fp32 median |m|": round(ma.abs().median().item(), 4)})
        raw[name] = {"fp32": fp32["items"], "bf16": bf16["items"]}
    header = list(rows[0])
    print(table([[r[h] for h in header] for r in rows], header))
    save("eval_dtype", {"rows": rows, "items": raw, "args": vars(args)})


if __name__ == "__main__":
    main()
