"""A training step of each intervention (LoRA, a vector, LoReFT) with DPO and with ReprPO, and the
forward it should cost.

    python experiments/bench/intervention_step.py [--steps 4] [--rounds 2]

Every measurement is a fresh child process that loads SmolLM2-135M-Instruct (30 blocks), resets the
peak-RSS mark and trains ``--steps`` steps on the same 4 GENIES pairs (alpaca_long, 128 tokens per
sequence): LoRA r16 alpha 32 on all linear layers (up to the loss's deepest layer for ReprPO), a
vector at block 15, or LoReFT rank 4 at block 15 on every position (positions all, as the vector);
ReprPO reads block 19 alone (``--reprpo.layers 19``), so its forwards stop there. Step time is the
trainer's ``step_time`` (median over the steps after the first); ``forward to 19`` is one no-grad
forward of the step's 8 sequences stopped after block 19, the unit a vector's ReprPO step should
be a small multiple of (a frozen pass and a policy pass to 19, the backward from 19 to 15 only).
Peak memory is the peak RSS growth after the model is loaded. Runs alternate within each round.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import genies_pairs, machine, peak_growth_mb, reset_peak, run_child, save, table  # noqa: E402

PAIRS, TOKENS, LAYER, LOSS_LAYER = 4, 128, 15, 19
CONFIGS = [f"{i}:{loss}" for loss in ("dpo", "reprpo") for i in ("lora", "vector", "reft")] + ["forward:19"]


def write_pairs(tok, path: Path) -> None:
    items, _ = genies_pairs(tok, PAIRS, TOKENS)
    rows = [{"prompt": it["prompt"][0]["content"], "chosen": it["responses"][0], "rejected": it["responses"][-1]}
            for it in items]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def child(config: str, steps: int, threads: int) -> dict:
    from reprkit.config import LoraSettings, ReftSettings, TrainConfig, VectorSettings
    from reprkit.losses import ReprPO
    from reprkit.models import load_model
    from reprkit.runlog import read_jsonl
    from reprkit.train import train

    torch.set_num_threads(threads)
    intervention, loss = config.split(":")
    model, tok = load_model()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "pairs.jsonl"
        write_pairs(tok, data)
        cfg = TrainConfig(loss="dpo" if intervention == "forward" else loss, data=str(data), steps=steps,
                          batch_size=PAIRS, max_length=TOKENS, max_prompt_length=TOKENS // 2, warmup_steps=0, lr=1e-4,
                          eval_data=(), n_samples=0, save_every=0, progress=False, run_dir=str(Path(tmp) / "run"),
                          intervention="lora" if intervention == "forward" else intervention,
                          lora=LoraSettings(r=16, alpha=32), vector=VectorSettings(layers=str(LAYER)),
                          reft=ReftSettings(layers=str(LAYER), rank=4, positions="all"),
                          reprpo=ReprPO(layers=str(LOSS_LAYER)))
        if intervention == "forward":  # one no-grad forward of the step's sequences, stopped after block 19
            from reprkit import data as D
            from reprkit.hooks import capture
            from reprkit.training.batches import load_pairs

            pairs, _, _, _ = load_pairs(cfg, tok)
            inputs, _, _ = D.pair_sides(D.collate(pairs[:PAIRS], tok.pad_token_id))
            times = []
            with torch.no_grad():
                for _ in range(steps + 1):
                    t0 = time.perf_counter()
                    with capture(model, [LOSS_LAYER], stop=True):
                        model(**inputs, use_cache=False)
                    times.append(time.perf_counter() - t0)
            return {"step_s": statistics.median(times[1:]), "times": times[1:], "peak_MB": 0.0}
        before = reset_peak()
        run = train(cfg, model=model, tokenizer=tok)
        peak = peak_growth_mb(before)
        rows, _ = read_jsonl(run / "metrics.jsonl")
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    times = [r["step_time"] for r in rows][1:]
    return {"step_s": statistics.median(times), "times": times, "peak_MB": peak, "trainable": trainable}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", default=None)
    args = p.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.steps, args.threads)))
        return
    runs: dict[str, list] = {c: [] for c in CONFIGS}
    for r in range(args.rounds):
        order = CONFIGS[r % len(CONFIGS):] + CONFIGS[: r % len(CONFIGS)]
        for c in order:
            runs[c].append(run_child(__file__, c, "--steps", str(args.steps), "--threads", str(args.threads)))
            print(f"  round {r} {c}: {runs[c][-1]['step_s']:.3f} s, peak +{runs[c][-1]['peak_MB']:.0f} MB", flush=True)
    summary = {c: {"step_s": statistics.median(x["step_s"] for x in v), "peak_MB": statistics.median(x["peak_MB"] for x in v),
                   "trainable": v[0].get("trainable"), "runs": v} for c, v in runs.items()}
    unit = summary["forward:19"]["step_s"]
    for loss in ("dpo", "reprpo"):
        lora = summary[f"lora:{loss}"]
        for i in ("lora", "vector", "reft"):
            s = summary[f"{i}:{loss}"]
            s["x_lora_time"], s["x_lora_memory"] = s["step_s"] / lora["step_s"], s["peak_MB"] / lora["peak_MB"]
            s["x_forward_to_19"] = s["step_s"] / unit
    results = {"machine": machine(), "pairs": PAIRS, "tokens": TOKENS, "intervention_layer": LAYER,
               "reprpo_layer": LOSS_LAYER, "steps": args.steps, "rounds": args.rounds, "configs": summary}
    rows = [[c.replace(":", " + "), v.get("trainable") or "-", v["step_s"], v.get("x_lora_time", "-"),
             v.get("x_forward_to_19", "-"), v["peak_MB"] or "-", v.get("x_lora_memory", "-")] for c, v in summary.items()]
    print(f"\nSmolLM2-135M-Instruct, {PAIRS} pairs x {TOKENS} tokens, {args.threads} threads, medians over {args.rounds} "
          f"alternating rounds of {args.steps} steps")
    print(table(rows, ["intervention + loss", "trainable", "step s", "x LoRA", "x fwd to 19", "peak +MB", "x LoRA mem"]))
    save("intervention_step", results)


if __name__ == "__main__":
    main()
