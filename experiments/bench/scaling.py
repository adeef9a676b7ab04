"""Training-step time and peak memory as sequence length, batch size and the number of loss layers grow.

    python experiments/bench/scaling.py [--steps 2]

ReprPO (default layers unless varied) and, along sequence length, DPO; random tokens, the second
half of each sequence is the completion; LoRA r16 all-linear (ReprPO: blocks up to its last loss
layer); one child process per point (time: median of ``--steps`` steps after a warm-up step; memory:
peak RSS growth from before the first step, i.e. what a fresh run needs, allocator growth included). "per unit" divides the step time by the grown quantity;
growth is linear where it stays flat.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import peak_growth_mb, random_batch, reset_peak, run_child, save, table  # noqa: E402

SEQS = [64, 128, 256, 512]
BATCHES = [1, 4, 16]
LAYER_SETS = ["19", "9,19", "4,9,14,19", "range(0,20)"]


def child(loss_name: str, batch: int, seq: int, layers: str, steps: int, threads: int) -> dict:
    from reprkit.config import TrainConfig
    from reprkit.models import load_model
    from reprkit.train import add_lora, forward_pair_batch, plan_layers

    torch.set_num_threads(threads)
    model, tok = load_model()
    cfg = TrainConfig(loss=loss_name)
    if loss_name == "reprpo":
        cfg.reprpo.layers = layers
    loss = cfg.loss_fn()
    _, sel, lora_last = plan_layers(model, loss)
    model = add_lora(model, cfg, lora_last)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    rnd = random_batch(tok, 2 * batch, seq)
    comp = torch.zeros_like(rnd["input_ids"])
    comp[:, seq // 2:] = 1
    b = {"chosen_input_ids": rnd["input_ids"][:batch], "rejected_input_ids": rnd["input_ids"][batch:],
         "chosen_attention_mask": rnd["attention_mask"][:batch], "rejected_attention_mask": rnd["attention_mask"][batch:],
         "chosen_completion_mask": comp[:batch], "rejected_completion_mask": comp[batch:]}

    def step():
        inputs = forward_pair_batch(model, b, sel, loss, progress=0.5)
        value, _ = loss(inputs)
        value.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    before = reset_peak()  # from before the first step: what a fresh run needs, allocator growth included
    step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {"step_s": statistics.median(times), "peak_MB": peak_growth_mb(before)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", nargs="*")
    args = p.parse_args()
    if args.child is not None:
        loss, batch, seq, layers = args.child
        print(json.dumps(child(loss, int(batch), int(seq), layers, args.steps, args.threads)))
        return

    def point(loss, batch, seq, layers="0.33,0.5,0.66"):
        r = run_child(__file__, loss, str(batch), str(seq), layers, "--steps", str(args.steps),
                      "--threads", str(args.threads))
        print(f"  {loss} batch {batch} seq {seq} layers {layers}: {r['step_s']:.2f} s, +{r['peak_MB']:.0f} MB", flush=True)
        return r

    res = {"seq": {}, "batch": {}, "layers": {}}
    res["seq"]["reprpo"] = {s: point("reprpo", 4, s) for s in SEQS}
    res["seq"]["dpo"] = {s: point("dpo", 4, s) for s in (SEQS[1], SEQS[-1])}
    res["batch"]["reprpo"] = {b: point("reprpo", b, 128) for b in BATCHES}
    res["layers"]["reprpo"] = {ls: point("reprpo", 4, 128, ls) for ls in LAYER_SETS}
    rows = []
    for axis, per_loss in res.items():
        for loss, pts in per_loss.items():
            for x, r in pts.items():
                unit = {"seq": 4 * x, "batch": 128 * x}.get(axis)  # tokens per side
                rows.append([axis, loss, x, r["step_s"], r["peak_MB"],
                             "" if unit is None else 1000 * r["step_s"] / unit,
                             "" if unit is None else 1024 * r["peak_MB"] / unit])
    print(f"\nSmolLM2-135M-Instruct, LoRA r16, fp32, {args.threads} threads; 'ms/token' and 'kB/token' per "
          "token of one side (batch x seq); flat columns mean linear growth")
    print(table(rows, ["axis", "loss", "value", "step s", "peak +MB", "ms/token", "kB/token"]))
    save("scaling", res)


if __name__ == "__main__":
    main()
