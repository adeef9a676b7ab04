"""A calculation, not a measurement: training memory per method for a 7B Llama (Llama-2-7B shapes)
with LoRA r16 on all linear layers, from the per-token activation memory measured on SmolLM2 by
``scaling.py`` (bench-results/scaling.json) and per-parameter byte counts.

    python experiments/bench/memory_7b.py [--tokens 4096]

Assumptions, all stated in the output: activation memory per token per block scales with the
block's width (hidden 576 -> 4096, MLP 1536 -> 11008: x7.1); ReprPO runs the blocks up to its last
loss layer (0.66 of depth: 20 of 30 blocks here, 22 of 32 at 7B), DPO runs all blocks and the LM
head; LoRA weights, gradients and AdamW moments in float32 (16 bytes per trainable parameter);
nf4 with double quantization ~0.52 bytes per quantized parameter, 8-bit ~1.0, embeddings and head
kept in bf16.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# Llama-2-7B
HIDDEN, INTER, LAYERS, VOCAB, KV = 4096, 11008, 32, 32000, 4096
SMOL = {"hidden": 576, "inter": 1536, "layers": 30}
BLOCK_LINEAR = 4 * HIDDEN * HIDDEN + 3 * HIDDEN * INTER  # q,k,v,o + gate,up,down
LORA_PER_BLOCK = 16 * (4 * 2 * HIDDEN + 3 * (HIDDEN + INTER))
EMBED = 2 * VOCAB * HIDDEN


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--scaling", default="bench-results/scaling.json")
    p.add_argument("--train-step", default="bench-results/train_step.json")
    p.add_argument("--tokens", type=int, default=4096, help="tokens per step, chosen + rejected (e.g. 4 pairs x 512)")
    args = p.parse_args()
    data = json.loads(Path(args.scaling).read_text())
    steps = json.loads(Path(args.train_step).read_text())["settings"]
    width = (HIDDEN / SMOL["hidden"] + INTER / SMOL["inter"]) / 2
    rows = []
    for loss, blocks_smol, blocks_7b in (("reprpo", 20, 22), ("dpo", 30, 32)):
        pts = data["seq"][loss]
        xs = sorted(int(k) for k in pts)
        lo, hi = xs[-2], xs[-1]  # slope between the two longest sequence lengths, batch 4 pairs (8 sequences)
        kb_per_token = 1024 * (pts[str(hi)]["peak_MB"] - pts[str(lo)]["peak_MB"]) / (8 * (hi - lo))
        act_gb = kb_per_token / blocks_smol * width * blocks_7b * args.tokens / 2**20
        lora = LORA_PER_BLOCK * blocks_7b * 16 / 2**30
        # measured on SmolLM2: peak with bf16 autocast (and + checkpointing) relative to fp32, same method
        factors = {"fp32": 1.0}
        for setting in ("bf16", "bf16+gc"):
            if setting in steps and "fp32" in steps:
                factors[setting] = steps[setting][loss]["peak_MB"] / steps["fp32"][loss]["peak_MB"]
        for quant, bytes_per in (("nf4", 0.52), ("8-bit", 1.0), ("bf16", 2.0)):
            weights = (BLOCK_LINEAR * LAYERS * bytes_per + EMBED * 2) / 2**30
            for setting, f in factors.items():
                rows.append((loss, quant, setting, weights, lora, act_gb * f, weights + lora + act_gb * f))
    print(f"CALCULATION for a 7B Llama, LoRA r16 all-linear, {args.tokens} tokens per step "
          f"(measured SmolLM2 activation slope scaled x{width:.1f} in width)")
    print("activations: fp32 from the measured slope; bf16 / bf16+gc scaled by the peak ratios measured in train_step")
    print(f"{'loss':<8}{'base':<7}{'compute':<9}{'weights GB':>11}{'LoRA+Adam GB':>14}{'activations GB':>16}{'total GB':>10}")
    for r in rows:
        print(f"{r[0]:<8}{r[1]:<7}{r[2]:<9}{r[3]:>11.1f}{r[4]:>14.2f}{r[5]:>16.1f}{r[6]:>10.1f}")


if __name__ == "__main__":
    main()
