"""Response log-probs at a 262k vocabulary: the head applied in bounded chunks of positions
(``reprkit.logits``) against all completion positions at once, on Gemma 3 270M and SmolLM2.

    python experiments/bench/large_vocab.py [--items 16] [--repeats 3]
    python experiments/bench/large_vocab.py --step-memory 4 8 16 32    # a DPO step's peak vs batch size


Per model and variant, in a fresh child process each: peak RSS growth (after load and a warm-up) of
scoring ``--items`` items x 4 responses (``ranked_logps``, one sequence per response, batch of all
items) and of one DPO step (policy and frozen passes, backward) on 8 pairs; then interleaved timing
of both variants in one process. "whole" sets the logits budget so high that every position goes
through the head at once (the code before the change); "chunked" is the default budget (2^26 float32
logits: 256 positions at 262k, 1365 at 49k). Timings are only figures when nothing else runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import RssParts, interleaved, reset_peak, run_child, save  # noqa: E402

MODELS = {"gemma-3-270m": 262144, "smollm2-135m-instruct": 49152}


def setup(model_name: str, variant: str, items: int, n_pairs: int = 8):
    import torch

    from reprkit import data as D
    from reprkit import logits as L
    from reprkit.config import TrainConfig, preset
    from reprkit.models import load_model
    from reprkit.train import add_lora

    if variant == "whole":
        L.LOGITS_BUDGET = 2 ** 62
    torch.manual_seed(0)
    model, tok = load_model(model_name)
    rows = D.load_items("genies:alpaca_long", "test", limit=items)
    ranked = D.encode_ranked([{**r, "responses": (r["responses"] * 2)[:4], "scores": [4.0, 3.0, 2.0, 1.0]} for r in rows],
                             tok, 192, 96, chat_template=False)
    pairs = D.encode_pairs(D.to_pairs(D.load_items("genies:alpaca_long", "train", limit=n_pairs)), tok, 192, 96,
                           chat_template=False)
    peft_model = add_lora(model, TrainConfig(), None)
    return peft_model, tok, ranked, pairs, preset("dpo").loss_fn()


def score_fn(model, tok, ranked):
    from reprkit.evaluate import ranked_logps

    return lambda: ranked_logps(model, ranked, tok.pad_token_id, batch_size=len(ranked), base=False, shared_prompt=False)


def step_fn(model, tok, pairs, loss):

    from reprkit import data as D
    from reprkit.train import forward_pair_batch, only_layers, plan_layers

    batch = D.collate(pairs, tok.pad_token_id)
    loss_layers, layers, _ = plan_layers(model, loss)

    def step():
        model.zero_grad(set_to_none=True)
        inputs = forward_pair_batch(model, batch, layers, loss, progress=0.0)
        value, _ = loss(only_layers(inputs, loss_layers))
        value.backward()
        return value.item()

    return step


def child(model_name: str, variant: str, what: str, items: int) -> dict:
    import json

    n_pairs = int(what.split(":")[1]) if ":" in what else 8  # "step:16": a step on 16 pairs
    what = what.split(":")[0]
    model, tok, ranked, pairs, loss = setup(model_name, variant, items, n_pairs)
    fn = score_fn(model, tok, ranked) if what == "score" else step_fn(model, tok, pairs, loss)
    fn()  # warm-up
    before = reset_peak()
    with RssParts() as parts:
        fn()
    from common import peak_growth_mb

    print(json.dumps({"peak_growth_mb": peak_growth_mb(before), **parts.growth_mb()}))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--child", nargs=4, default=None)
    p.add_argument("--items", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--step-memory", type=int, nargs="+", default=None,
                   help="only the peak memory of a DPO step on Gemma 3 270M at these numbers of pairs")
    args = p.parse_args()
    if args.child:
        model_name, variant, what, items = args.child
        child(model_name, variant, what, int(items))
        return
    if args.step_memory:
        rows = {}
        for n in args.step_memory:
            for variant in ("whole", "chunked"):
                rows[f"{n} pairs {variant}"] = run_child(__file__, "gemma-3-270m", variant, f"step:{n}", "1")
                print(n, "pairs", variant, rows[f"{n} pairs {variant}"], flush=True)
        save("large_vocab_step_memory", {"model": "gemma-3-270m", "pairs": args.step_memory, "memory": rows,
                                         "note": "peak RSS growth of one DPO step (policy and frozen passes, "
                                                 "backward), after a warm-up step; max length 192, prompts 96"})
        return
    results = {}
    for model_name in MODELS:
        res = results[model_name] = {"memory": {}, "time": {}}
        for what in ("score", "step"):
            for variant in ("whole", "chunked"):
                res["memory"][f"{what} {variant}"] = run_child(__file__, model_name, variant, what, str(args.items))
                print(model_name, what, variant, res["memory"][f"{what} {variant}"], flush=True)
        from reprkit import logits as L

        fns = {}
        for variant in ("whole", "chunked"):
            L.LOGITS_BUDGET = 2 ** 62 if variant == "whole" else 2 ** 26
            model, tok, ranked, pairs, loss = setup(model_name, "chunked", args.items)
            budget = L.LOGITS_BUDGET

            def with_budget(fn, budget=budget):
                def run():
                    L.LOGITS_BUDGET = budget
                    return fn()
                return run

            fns[f"score {variant}"] = with_budget(score_fn(model, tok, ranked))
            fns[f"step {variant}"] = with_budget(step_fn(model, tok, pairs, loss))
        res["time"] = interleaved(fns, args.repeats)
        for k, v in res["time"].items():
            print(model_name, k, f"{v['median_s']:.2f} s", flush=True)
    save("large_vocab", {"items": args.items, "repeats": args.repeats, "results": results})


if __name__ == "__main__":
    main()
