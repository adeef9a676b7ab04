"""The frozen-model cache for a run: its key (the model's weights, the pairs, the layers) and
opening or building it (``reprkit.frozen_cache``)."""

from __future__ import annotations

import logging

import torch

from ..config import TrainConfig
from .errors import TrainingError

log = logging.getLogger(__name__)

FINGERPRINT_ELEMENTS = 1024


def model_fingerprint(model) -> str:
    """A cheap fingerprint of the base weights (the exact bytes of the first ``FINGERPRINT_ELEMENTS``
    of every non-adapter tensor, with its name and shape), so that a cache never serves outputs of
    other weights stored under the same model name.

    Only a prefix is read: weights loaded from safetensors are memory-mapped, and a sample spread
    over each tensor paged in nearly the whole file (about 400 MB for SmolLM2 in float32, counted
    in the process's RSS), including layers past the loss's deepest one that training never runs.
    A prefix is a few pages per tensor. Any fine-tune, merge or other checkpoint changes it."""
    import hashlib

    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                continue
            head = p.detach().reshape(-1)[:FINGERPRINT_ELEMENTS].float().cpu().contiguous()
            h.update(name.replace("base_model.model.", "").replace(".base_layer", "").encode())  # wherever LoRA sits
            h.update(f"{tuple(p.shape)}".encode())
            h.update(head.numpy().tobytes())
    return h.hexdigest()[:16]


def open_reference_cache(cfg: TrainConfig, model, tokenizer, train_pairs: list[dict], layers: list[int], loss,
                         sharded: bool):
    """The frozen-model cache of this run's training pairs (built on first use): ``--reference-cache``."""
    from ..frozen_cache import ReferenceCache

    if sharded:
        raise TrainingError("--reference-cache works with one process or data parallelism, not FSDP sharding")
    settings = {"dtype": cfg.dtype, "quantization": cfg.quantization, "mixed_precision": cfg.mixed_precision}
    model_id = f"{cfg.model}:{model_fingerprint(model)}"
    device = next(model.parameters()).device
    with torch.autocast(device.type, torch.bfloat16, enabled=cfg.mixed_precision == "bf16"):
        return ReferenceCache.open(cfg.reference_cache, model, train_pairs, layers, loss.needs_logps, settings,
                                   tokenizer.pad_token_id, model_id, batch_size=cfg.batch_size)


