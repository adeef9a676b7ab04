"""Training-step time of each loss on SmolLM2-135M-Instruct, the same batch for all.

    python experiments/bench_train_step.py [--repeats 5] [--pairs 4] [--tokens 128] [--out bench_train_step.json]

A step is what ``reprkit.train`` does per micro-batch: frozen reference pass, policy pass with
hooks, loss, backward, AdamW step. Losses alternate within each repeat (rotating order); the table
gives medians and each loss's ratio to DPO's step. LoRA r16 on all linear layers (ReprPO and
reroute: only on blocks up to their last loss layer, as the trainer does), fp32, 2 threads.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from reprkit import data as D
from reprkit.config import TrainConfig
from reprkit.layers import select_layers
from reprkit.losses.reprpo import ReprPO
from reprkit.models import load_model
from reprkit.train import add_lora, forward_pair_batch


def make_batch(tok, pairs: int, tokens: int) -> dict:
    items = D.load_items("genies:alpaca_long", "train", limit=pairs)
    enc = D.encode_pairs(D.to_pairs(items), tok, max_length=tokens, max_prompt_length=tokens // 2)
    return D.collate(enc, tok.pad_token_id)


def setup(loss_name: str):
    model, tok = load_model()
    cfg = TrainConfig(loss=loss_name)
    loss = cfg.loss_fn()
    spec = loss.layer_spec()
    layers = list(select_layers(model, spec or ReprPO().layers).indices)
    peft_model = add_lora(model, cfg, max(layers) if spec else None)
    peft_model.train()
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-5)
    return peft_model, tok, loss, layers, opt


def step(model, loss, layers, opt, batch) -> float:
    t0 = time.perf_counter()
    inputs = forward_pair_batch(model, model, batch, layers, loss, progress=0.5)
    value, _ = loss(inputs)
    value.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="bench_train_step.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    names = ["dpo", "reprpo", "reroute"]
    setups = {n: setup(n) for n in names}
    batch = make_batch(setups["dpo"][1], args.pairs, args.tokens)
    shape = tuple(batch["chosen_input_ids"].shape)
    for n in names:  # warm-up
        m, _, loss, layers, opt = setups[n]
        step(m, loss, layers, opt, batch)
    times = {n: [] for n in names}
    for r in range(args.repeats):
        for n in names[r % 3:] + names[: r % 3]:
            m, _, loss, layers, opt = setups[n]
            times[n].append(step(m, loss, layers, opt, batch))
    med = {n: statistics.median(t) for n, t in times.items()}
    ratio = {n: statistics.median(a / b for a, b in zip(times[n], times["dpo"])) for n in names}
    print(f"SmolLM2-135M-Instruct, {args.pairs} pairs, chosen/rejected padded to {shape[1]} tokens, fp32, "
          f"{args.threads} threads, LoRA r16, median of {args.repeats}")
    print(f"{'loss':<10}{'layers':<16}{'step s':>9}{'x DPO':>8}")
    for n in names:
        print(f"{n:<10}{str(setups[n][3]):<16}{med[n]:>9.3f}{ratio[n]:>8.3f}")
    with open(args.out, "w") as f:
        json.dump({"pairs": args.pairs, "tokens": shape[1], "threads": args.threads, "repeats": args.repeats,
                   "median_s": med, "ratio_to_dpo": ratio,
                   "layers": {n: setups[n][3] for n in names}}, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
