"""Shared-prompt scoring vs one sequence per response, on the same GENIES items, interleaved.

    python experiments/bench/shared_prompt.py --items 40 --sets alpaca_easy code_easy --repeats 2

Prints the median time of each path over ``--repeats`` interleaved repeats (after a warm-up of both
paths on 4 items), the median per-repeat speed-up, the token counts (what the model runs through,
padding excluded) and the largest difference in summed log-probs between the two paths. With
``--bf16`` a third variant runs the shared path under ``torch.autocast(bfloat16)`` (fast only on a
CPU with native bf16: AVX512-BF16 or AMX); its speed-up is against the float32 one-sequence path,
and the share of items whose best-response outcome (per-token mean rule) agrees with float32's.

With ``--reading LAYER`` it times reading a direction's states instead
(``directions.completion_states``, each response's own last token at that layer, the forward stopped
there), shared prompt against one sequence per response, with the largest difference of the states:

    python experiments/bench/shared_prompt.py --reading 17 --sets raven_matrices alpaca_mmlu --items 24 --max-length 768 --max-prompt-length 704
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import interleaved  # noqa: E402

from reprkit import data as D
from reprkit.evaluate import ranked_logps
from reprkit.models import load_model


def reading(model, tok, name: str, enc: list[dict], layer: int, repeats: int, concat_tokens: int,
            shared_tokens: int) -> None:
    from reprkit.directions import completion_states

    out = {}

    def run(shared: bool, items=enc):
        out[shared] = completion_states(model, items, tok.pad_token_id, [layer], token="last", shared_prompt=shared)[0][layer]

    run(True, enc[:4]), run(False, enc[:4])  # warm-up
    t = interleaved({"shared": lambda: run(True), "one_sequence": lambda: run(False)}, repeats,
                    reference="one_sequence", warmup=0)
    shared, concat = t["shared"]["median_s"], t["one_sequence"]["median_s"]
    print(f"{name} reading (layer {layer}, last token): {len(enc)} items; shared prompt {shared:.1f} s, one sequence "
          f"per response {concat:.1f} s (medians of {repeats}), x{1 / t['shared']['ratio']:.2f}; tokens "
          f"{concat_tokens} -> {shared_tokens}; max |diff| of the states {(out[True] - out[False]).abs().max():.1e} "
          f"(largest |state| {out[False].abs().max():.1f})", flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--items", type=int, default=40)
    p.add_argument("--sets", nargs="+", default=["alpaca_easy", "code_easy"])
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--max-prompt-length", type=int, default=None, help="(default: half of --max-length)")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--reading", type=int, default=None, metavar="LAYER",
                   help="time reading states at this layer (directions.completion_states) instead of scoring")
    args = p.parse_args()
    model, tok = load_model()
    for name in args.sets:
        enc = D.encode_ranked(D.load_items(f"genies:{name}", "test", limit=args.items), tok, args.max_length,
                              args.max_prompt_length or args.max_length // 2)
        concat_tokens = sum(len(e["prompt_ids"]) * len(e["responses_ids"]) + sum(map(len, e["responses_ids"])) for e in enc)
        shared_tokens = sum(len(e["prompt_ids"]) + sum(map(len, e["responses_ids"])) for e in enc)
        out = {}
        if args.reading is not None:
            reading(model, tok, name, enc, args.reading, args.repeats, concat_tokens, shared_tokens)
            continue

        def run(shared: bool, items=enc, out=out):
            out[shared] = ranked_logps(model, items, tok.pad_token_id, base=False, shared_prompt=shared)["policy"]

        def run_bf16(items=enc, out=out):
            with torch.autocast("cpu", torch.bfloat16):
                out["bf16"] = ranked_logps(model, items, tok.pad_token_id, base=False, shared_prompt=True)["policy"]

        run(True, enc[:4]), run(False, enc[:4])  # warm-up
        fns = {"shared": lambda: run(True), "one_sequence": lambda: run(False)}
        if args.bf16:
            run_bf16(enc[:4])
            fns["shared_bf16"] = run_bf16
        t = interleaved(fns, args.repeats, reference="one_sequence", warmup=0)
        shared, concat = t["shared"]["median_s"], t["one_sequence"]["median_s"]
        a, b = out[True], out[False]
        v = a["valid"]
        print(f"{name}: {len(enc)} items; shared prompt {shared:.1f} s, one sequence per response {concat:.1f} s "
              f"(medians of {args.repeats}), x{1 / t['shared']['ratio']:.2f}; tokens {concat_tokens} -> {shared_tokens} "
              f"(limit x{concat_tokens / shared_tokens:.2f}: {shared_tokens / concat_tokens / t['shared']['ratio']:.2f} of it "
              f"reached); max |diff| of summed log-probs {(a['logps'][v] - b['logps'][v]).abs().max():.1e}", flush=True)
        if args.bf16:
            c = out["bf16"]

            def best(lp):  # is the first (preferred) response the best by mean log-prob per token?
                mean = (lp["logps"] / lp["n_tokens"]).masked_fill(~lp["valid"], float("-inf"))
                return mean.argmax(-1) == 0

            agree = (best(a) == best(c)).float().mean().item()
            print(f"  bf16 autocast shared prompt {t['shared_bf16']['median_s']:.1f} s: x{1 / t['shared_bf16']['ratio']:.2f} "
                  f"of one sequence per response in float32, x{t['shared']['median_s'] / t['shared_bf16']['median_s']:.2f} "
                  f"of the float32 shared path; outcomes agree with float32 on {agree:.3f} of items", flush=True)


if __name__ == "__main__":
    main()
