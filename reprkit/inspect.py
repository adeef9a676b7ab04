"""Per-layer norms and directions of a few prompts: a first look inside a model's residual stream."""

from __future__ import annotations

import torch

from .geometry import cosine, magnitude, masked_mean, unit
from .hooks import forward_hidden_states

DEFAULT_PROMPTS = (
    "What is the capital of France?",
    "Write a short poem about the sea.",
)


def layer_table(model, tokenizer, prompts=DEFAULT_PROMPTS, layers="range(0,1.0,3)", chat: bool = True) -> list[dict]:
    """For each layer: mean token norm of each prompt and the cosine between the prompts' mean directions.

    The mean direction of a prompt is the mean over its tokens of the unit hidden states, so large-norm
    tokens (attention sinks) do not dominate it.
    """
    if chat and tokenizer.chat_template:
        texts = [
            tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in prompts
        ]
    else:
        texts = list(prompts)
    batch = dict(tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not chat))
    with torch.no_grad():
        states = forward_hidden_states(model, batch, layers)
    mask = batch["attention_mask"]
    rows = []
    for i, h in states.items():
        mean_dir = masked_mean(unit(h), mask)  # [prompts, hidden]
        norms = masked_mean(magnitude(h), mask)
        row = {"layer": i}
        row.update({f"norm_{k}": norms[k].item() for k in range(len(prompts))})
        row["cosine_0_1"] = cosine(mean_dir[0], mean_dir[1]).item() if len(prompts) > 1 else float("nan")
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["  ".join(f"{k:>10}" for k in keys)]
    for r in rows:
        lines.append("  ".join(f"{r[k]:>10d}" if isinstance(r[k], int) else f"{r[k]:>10.3f}" for k in keys))
    return "\n".join(lines)
