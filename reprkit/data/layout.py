"""How a collated pair batch (``collate``) is laid out for a forward: one concept, two layouts.

- ``pair_sides``: concatenated, chosen rows then rejected rows, each prompt + completion as one
  right-padded sequence (the reference layout; the frozen-model cache stores it).
- ``pair_layout``: shared prompt, each pair's prompt once (left-padded, so that sliding-window
  masks count real tokens only) and both completions item-major on its KV cache, with ``order``
  back to chosen-first rows (``reprkit.shared_prompt.pair_states`` runs it).

Both give the loss the same chosen-then-rejected rows; losses read completion tokens only, so a
loss is the same in either.
"""

from __future__ import annotations

import torch


def pair_sides(batch: dict) -> tuple[dict, torch.Tensor, int]:
    """A collated pair batch as one forward: chosen rows then rejected rows, ``({input_ids,
    attention_mask}, completion_mask, number of pairs)``."""
    ids = torch.cat([batch["chosen_input_ids"], batch["rejected_input_ids"]])
    attn = torch.cat([batch["chosen_attention_mask"], batch["rejected_attention_mask"]])
    comp = torch.cat([batch["chosen_completion_mask"], batch["rejected_completion_mask"]])
    return {"input_ids": ids, "attention_mask": attn}, comp, batch["chosen_input_ids"].shape[0]


def pair_layout(batch: dict) -> dict[str, torch.Tensor] | None:
    """A collated pair batch (``data.collate``) re-laid for one prompt pass: ``prompt_ids``,
    ``prompt_mask`` ``[B, P]`` (left-padded, as ``shared_prompt.pad`` pads prompts), ``prompt_len``, and the completions
    item-major (row 2i chosen i, row 2i + 1 rejected i) as ``completion_ids``, ``completion_mask``
    ``[2B, C]``, ``positions`` (their positions in the concatenated sequence) and ``order``, the
    permutation back to chosen-first rows. None when some pair's chosen and rejected prompts differ
    (nothing to share; truncation can cut them differently) or a prompt is empty: the caller then
    runs the concatenated layout."""
    ids = {s: batch[f"{s}_input_ids"] for s in ("chosen", "rejected")}
    comp = {s: batch[f"{s}_completion_mask"].bool() for s in ("chosen", "rejected")}
    prompt_len = {s: (batch[f"{s}_attention_mask"].bool() & ~comp[s]).sum(-1) for s in ("chosen", "rejected")}
    if not torch.equal(prompt_len["chosen"], prompt_len["rejected"]) or not bool((prompt_len["chosen"] > 0).all()):
        return None
    p_len = prompt_len["chosen"]
    b, device = p_len.shape[0], p_len.device
    p_max = int(p_len.max())
    in_prompt = torch.arange(p_max, device=device)[None] < p_len[:, None]
    prompt = {s: ids[s][:, :p_max] * in_prompt for s in ("chosen", "rejected")}
    if not torch.equal(prompt["chosen"], prompt["rejected"]):
        return None
    shift = (torch.arange(p_max, device=device)[None] - (p_max - p_len)[:, None])  # right-padded -> left-padded
    left_mask = shift >= 0
    left_ids = prompt["chosen"].gather(1, shift.clamp_min(0)) * left_mask
    c_len = torch.stack([comp["chosen"].sum(-1), comp["rejected"].sum(-1)], 1).reshape(-1)  # item-major
    c_max = max(1, int(c_len.max()))
    completion = torch.zeros((2 * b, c_max), dtype=torch.long, device=device)
    c_mask = torch.arange(c_max, device=device)[None] < c_len[:, None]
    for j, s in enumerate(("chosen", "rejected")):
        completion[j::2][c_mask[j::2]] = ids[s][comp[s]]
    order = torch.cat([torch.arange(0, 2 * b, 2, device=device), torch.arange(1, 2 * b, 2, device=device)])
    return {"prompt_ids": left_ids, "prompt_mask": left_mask.long(), "prompt_len": p_len,
            "completion_ids": completion, "completion_mask": c_mask.long(),
            "positions": p_len.repeat_interleave(2)[:, None] + torch.arange(c_max, device=device), "order": order}
