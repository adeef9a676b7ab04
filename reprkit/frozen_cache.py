"""The frozen model's outputs on a training set, computed once and read back instead of a frozen pass.

A hidden-state loss runs the frozen model (the adapter disabled) on every batch, but what it returns
for a pair does not change between methods, seeds, epochs or learning rates. ``ReferenceCache``
computes it once per (model, encoded pairs, layers, precision settings) and keeps it on disk:

    cache = ReferenceCache.open(cache_dir, model, encoded, layers, needs_logps, settings)
    ref_hidden, ref_logps = cache.batch(indices, completion_mask)   # as the frozen pass would give

One safetensors file per key (a hash of the model's identity, the token ids of every pair, the
layers, and the settings), holding each pair's completion-token states per layer (float32) and,
for losses that need them, its completion log-probs. Only completion tokens are kept: every loss
and the tracker read hidden states through the completion mask. The file is written to a
temporary name and renamed (never half-written under its final name); a file that does not read
back (truncated, corrupt, another key) is rebuilt. Reads are memory-mapped, one pair at a time.

Values equal the frozen pass's within float tolerance: the cache is built in batches of other
shapes than training's, and batched matmuls round differently (about 1e-6 relative in float32).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch

from . import data as D
from .devices import input_device
from .evaluate import forward_logps
from .frozen import adapter_disabled, eval_mode
from .hooks import capture

log = logging.getLogger(__name__)

FORMAT = 1


def cache_key(model_id: str, encoded: list[dict], layers: list[int], needs_logps: bool, settings: dict) -> str:
    """A hash of everything the frozen outputs depend on."""
    h = hashlib.sha256()
    h.update(json.dumps({"format": FORMAT, "model": model_id, "layers": sorted(layers), "logps": needs_logps,
                         "settings": settings}, sort_keys=True).encode())
    for e in encoded:
        for side in ("chosen", "rejected"):
            h.update(json.dumps([e[f"{side}_prompt_ids"], e[f"{side}_ids"]]).encode())
    return h.hexdigest()[:24]


class ReferenceCache:
    def __init__(self, path: Path, layers: list[int], needs_logps: bool, n: int):
        from safetensors import safe_open

        self.path, self.layers, self.needs_logps, self.n = path, sorted(layers), needs_logps, n
        self._file = safe_open(str(path), framework="pt")

    @classmethod
    def open(cls, cache_dir, model, encoded: list[dict], layers: list[int], needs_logps: bool, settings: dict,
             pad_token_id: int, model_id: str, batch_size: int = 8) -> ReferenceCache:
        """Read the cache for these pairs, building (or rebuilding) it first when it is missing or
        does not read back."""
        key = cache_key(model_id, encoded, layers, needs_logps, settings)
        path = Path(cache_dir) / f"reference-{key}.safetensors"
        if path.exists():
            problem = _check(path, key, len(encoded))
            if problem is None:
                log.info("reference cache hit: %s", path)
                return cls(path, layers, needs_logps, len(encoded))
            log.warning("reference cache %s %s; rebuilding it", path, problem)
        build(path, key, model, encoded, layers, needs_logps, pad_token_id, batch_size)
        return cls(path, layers, needs_logps, len(encoded))

    def batch(self, index: torch.Tensor, completion_mask: torch.Tensor, device=None
              ) -> tuple[dict[int, torch.Tensor], torch.Tensor | None]:
        """``({layer: [2B, T, H]}, [2B] or None)`` for the pairs ``index`` ([B]), laid out as
        ``forward_pair_batch`` lays out a batch (chosen rows, then rejected rows; zeros outside the
        completion)."""
        b = len(index)
        rows = [(int(i), side) for side in ("chosen", "rejected") for i in index.tolist()]
        comp = completion_mask.bool()
        hidden = {}
        for layer in self.layers:
            states_rows = [self._file.get_tensor(f"{i}.{side}.{layer}") for i, side in rows]
            out = torch.zeros(2 * b, comp.shape[1], states_rows[0].shape[-1], dtype=states_rows[0].dtype)
            for r, ((i, side), states) in enumerate(zip(rows, states_rows)):
                if states.shape[0] != int(comp[r].sum()):
                    raise RuntimeError(f"reference cache {self.path}: pair {i} has {states.shape[0]} {side} "
                                       f"tokens, the batch {int(comp[r].sum())}; delete the file to rebuild it")
                out[r, comp[r].cpu()] = states
            hidden[layer] = out.to(device) if device is not None else out
        logps = None
        if self.needs_logps:
            logps = torch.stack([self._file.get_tensor(f"{i}.{side}.logp") for i, side in rows])
            logps = logps.to(device) if device is not None else logps
        return hidden, logps


def _check(path: Path, key: str, n: int) -> str | None:
    """Why the file cannot be used (None when it can)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            names = set(f.keys())
    except Exception as err:  # a truncated or corrupt file fails to parse
        return f"does not read back ({type(err).__name__}: {err})"
    if meta.get("key") != key or meta.get("n") != str(n):
        return "belongs to other settings"
    if f"{n - 1}.rejected.{meta.get('last_layer')}" not in names:
        return "is incomplete"
    return None


@torch.no_grad()
def build(path: Path, key: str, model, encoded: list[dict], layers: list[int], needs_logps: bool,
          pad_token_id: int, batch_size: int = 8) -> None:
    """One frozen pass over all pairs (longest first, so padding stays small), written atomically."""
    from safetensors.torch import save_file


    path.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    order = sorted(range(len(encoded)), key=lambda i: -max(
        len(encoded[i]["chosen_prompt_ids"]) + len(encoded[i]["chosen_ids"]),
        len(encoded[i]["rejected_prompt_ids"]) + len(encoded[i]["rejected_ids"])))
    device = input_device(model)
    stop = not needs_logps
    with adapter_disabled(model), eval_mode(model):
        for s in range(0, len(order), batch_size):
            idx = order[s: s + batch_size]
            inputs, comp, _ = D.pair_sides(D.collate([encoded[i] for i in idx], pad_token_id))  # the trainer's layout
            ids, attn, comp = inputs["input_ids"].to(device), inputs["attention_mask"].to(device), comp.to(device)
            with capture(model, layers, stop=stop) as cap:
                if needs_logps:
                    logps = forward_logps(model, ids, attn, comp)
                else:
                    model(input_ids=ids, attention_mask=attn, use_cache=False)
            rows = [(i, side) for side in ("chosen", "rejected") for i in idx]
            for layer, h in cap.hidden_states.items():
                for r, (i, side) in enumerate(rows):
                    tensors[f"{i}.{side}.{layer}"] = h[r, comp[r].to(h.device).bool()].float().cpu().contiguous()
            if needs_logps:
                for r, (i, side) in enumerate(rows):
                    tensors[f"{i}.{side}.logp"] = logps[r].float().cpu().reshape(())
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata={"key": key, "n": str(len(encoded)), "last_layer": str(max(layers))})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
