"""Where reprkit puts the tensors it makes, so that a model on an accelerator or split over several
by a ``device_map`` gets every input on the device that reads it.

>>> batch = to_model(model, tokenizer(prompts, return_tensors="pt", padding=True))   # the embedding's device
>>> mask = follow(mask, hidden)                                                     # a mask follows its states

The rules (DESIGN.md): a batch goes to the device of the model's input embedding; a mask or an
index follows the tensor it masks or indexes; a vector follows the block it edits. Nothing assumes
the model lives on one device.
"""

from __future__ import annotations

import torch


def input_device(model) -> torch.device:
    """The device of ``model``'s input embedding: where token ids and attention masks go."""
    inner = getattr(model, "module", model)
    try:
        return inner.get_input_embeddings().weight.device
    except (AttributeError, NotImplementedError):
        return next(inner.parameters()).device


def to_model(model, batch: dict) -> dict:
    """``batch`` (a dict or a tokenizer's ``BatchEncoding``) with every tensor on ``input_device(model)``."""
    device = input_device(model)
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in dict(batch).items()}


def follow(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """``t`` on the device of ``like`` (its dtype unchanged): a mask or index next to the states it selects."""
    return t if t is None or t.device == like.device else t.to(like.device)


def wide_float(device: torch.device) -> torch.dtype:
    """float64 for sums that must not lose precision, except on Apple's MPS, which has no float64
    (float32 there)."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64
