"""The LM head as the architecture applies it, and response log-probs in bounded memory.

>>> logits = head_logits(model, final_hidden)                  # scaled and softcapped as the model does
>>> logps = head_token_logps(model, final_hidden, targets)     # [n] log p(target), chunks of positions

A vocabulary of 262k (Gemma 3) makes the logits the largest tensor of a step: 3,200 completion
positions are 3.4 GB of float32 logits in one tensor. ``head_token_logps`` applies the head to at
most ``chunk_positions(vocab)`` positions at a time (about 256 MB of logits), and under autograd
recomputes each chunk's logits in the backward pass instead of keeping them
(``torch.utils.checkpoint``), so the peak no longer grows with the batch beyond one chunk.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

LOGITS_BUDGET = 2 ** 26
"""Float32 logits per chunk (64M values, 256 MB)."""


def unwrap(model):
    """The model inside a DDP / FSDP wrapper (``.module``), else the model."""
    return getattr(model, "module", model)


def head_logits(model, final_hidden: torch.Tensor) -> torch.Tensor:
    """The LM head on final (normed) hidden states, float32, as the architecture's own forward
    makes its logits: scaled where it scales them (Cohere multiplies by ``logit_scale``, Granite
    divides by ``logits_scaling``) and softcapped where it softcaps (Gemma 2 and 3)."""
    inner = unwrap(model)
    logits = inner.get_output_embeddings()(final_hidden).float()
    config = inner.config
    if getattr(config, "logit_scale", None) is not None and config.model_type.startswith("cohere"):
        logits = logits * config.logit_scale
    if getattr(config, "logits_scaling", None) is not None and config.model_type.startswith("granite"):
        logits = logits / config.logits_scaling
    cap = getattr(config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def chunk_positions(vocab_size: int, budget: int | None = None) -> int:
    """Positions per chunk so that one chunk's float32 logits hold at most ``budget`` values
    (default ``LOGITS_BUDGET``, read at call time)."""
    return max(1, (budget or LOGITS_BUDGET) // max(1, vocab_size))


def head_token_logps(model, hidden: torch.Tensor, targets: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """``log p(targets[i] | hidden[i])`` for final hidden states ``[n, H]`` and targets ``[n]``, the
    head applied ``chunk`` positions at a time (default: ``chunk_positions`` of the vocabulary)."""
    n = hidden.shape[0]
    if n == 0:
        return hidden.new_zeros(0, dtype=torch.float32)
    chunk = chunk or chunk_positions(unwrap(model).get_output_embeddings().weight.shape[0])

    def part(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        logits = head_logits(model, h)  # on the head's device (a tied head lives with the embedding)
        return -F.cross_entropy(logits, t.to(logits.device), reduction="none")

    if n <= chunk and not (torch.is_grad_enabled() and hidden.requires_grad):
        return part(hidden, targets)
    out = []
    for i in range(0, n, chunk):
        h, t = hidden[i: i + chunk], targets[i: i + chunk]
        if torch.is_grad_enabled() and h.requires_grad:
            # no randomness in the head: no RNG state to keep (and none to look up per device type)
            out.append(checkpoint(part, h, t, use_reentrant=False, preserve_rng_state=False))
        else:
            out.append(part(h, t))
    return torch.cat(out)


def masked_logp_sums(model, predictors: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per row, the float32 sum of ``log p(targets[r, t] | predictors[r, t])`` over the positions
    where ``mask`` is set: final (normed) hidden states ``[R, T, H]``, target ids and mask ``[R, T]``
    -> ``[R]``, on the predictors' device. The head runs on the masked positions alone, in chunks
    (``head_token_logps``). The one place reprkit sums token log-probs."""
    where = mask.to(predictors.device).bool()
    token_logps = head_token_logps(model, predictors[where], targets.to(predictors.device)[where])
    rows = where.nonzero()[:, 0]
    return torch.zeros(where.shape[0], dtype=torch.float32, device=predictors.device).index_add(
        0, rows, token_logps.float().to(predictors.device))
