"""Per-layer norms and directions of a few prompts: a first look inside a model's residual stream."""

from __future__ import annotations

import torch

from .devices import to_model
from .geometry import cosine, magnitude, masked_mean, unit
from .hooks import forward_hidden_states

DEFAULT_PROMPTS = (
    "What is the capital of France?",
    "Write a short poem about the sea.",
)


def layer_table(model, tokenizer, prompts=DEFAULT_PROMPTS, layers="range(0,1.0,3)", chat: bool = True) -> list[dict]:
    """For each layer (a block's output): each prompt's mean and median token norm, and the cosine
    between the first two prompts' mean directions.

    Every token of the prompt counts, the chat template's included (``chat``). The mean norm follows
    a few large-norm tokens (attention sinks: from SmolLM2's layer 12 on, the first token's norm is
    about 25,000 against a median near 150), the median does not; where they part, a sink is there. The mean
    direction of a prompt is the mean over its tokens of the unit hidden states, so sinks count as
    one token each in the cosine.
    """
    from .data import render_prompt, uses_chat

    chat = chat and uses_chat(tokenizer)  # the template where the tokenizer has one (a base model's has none)
    texts = [render_prompt(tokenizer, [{"role": "user", "content": p}], chat) for p in prompts]
    batch = to_model(model, tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not chat))
    with torch.no_grad():
        states = forward_hidden_states(model, batch, layers)
    mask = batch["attention_mask"].cpu()
    rows = []
    for i, h in states.items():
        h = h.float().cpu()  # a table for reading: on the host
        mean_dir = masked_mean(unit(h), mask)  # [prompts, hidden]
        token_norms = magnitude(h)  # [prompts, tokens]
        norms = masked_mean(token_norms, mask)
        row = {"layer": i}
        for k in range(len(prompts)):
            row[f"norm_{k}"] = norms[k].item()
            row[f"median_{k}"] = token_norms[k][mask[k].bool()].median().item()
        row["cosine_0_1"] = cosine(mean_dir[0], mean_dir[1]).item() if len(prompts) > 1 else float("nan")
        rows.append(row)
    return rows


def format_table(rows: list[dict], chat: bool = True) -> str:
    """``layer_table``'s rows as text, with a line that says what each column measured."""
    keys = list(rows[0])
    lines = ["  ".join(f"{k:>10}" for k in keys)]
    for r in rows:
        lines.append("  ".join(f"{r[k]:>10d}" if isinstance(r[k], int) else f"{r[k]:>10.3f}" for k in keys))
    lines.append(f"norm_k / median_k: mean / median over prompt k's tokens ({'chat template' if chat else 'no template'}"
                 " included) of each token's L2 norm at the block's output; far apart where a few tokens (attention "
                 "sinks) are huge. cosine_0_1: between prompts 0 and 1's mean unit states (each token counts once)")
    return "\n".join(lines)
