"""Steering with a read direction at a strength chosen by divergence, not by an arbitrary multiplier.

>>> s = calibrate_strength(model, tokenizer, direction, prompts, layer=15, kl=1.0)
>>> with capture(model, 15, edit_output=direction.steer(s["strength"], 15)):
...     model.generate(...)
>>> direction.to_gguf("honesty.gguf")   # llama.cpp control vector (see ``to_gguf``)

``calibrate_strength`` finds, by bisection, the coefficient at which the steered model's
next-token distributions differ from the unsteered ones by the asked KL divergence: the
``quantile`` (0.9 by default) of per-token KL(unsteered || steered) over every prompt token.
"""

from __future__ import annotations

import torch

from .hooks import capture
from .reference import eval_mode


@torch.no_grad()
def steering_kl(model, batch: dict, layer: int, vector: torch.Tensor, strength: float) -> torch.Tensor:
    """Per-token KL(unsteered || steered) of next-token distributions over the batch's real tokens."""
    from .edits import add_vector

    with eval_mode(model):
        plain = torch.log_softmax(model(**batch, use_cache=False).logits.float(), -1)
        with capture(model, layer, edit_output=add_vector(vector, strength)):
            steered = torch.log_softmax(model(**batch, use_cache=False).logits.float(), -1)
    kl = (plain.exp() * (plain - steered)).sum(-1)
    return kl[batch["attention_mask"].bool()]


def calibrate_strength(model, tokenizer, direction, prompts: list[str], layer: int | None = None, kl: float = 1.0,
                       quantile: float = 0.9, tolerance: float = 0.02, max_iter: int = 40) -> dict:
    """``{"strength", "kl", "quantile", "n_tokens", "layer"}``: the strength whose per-token KL
    quantile is within ``tolerance`` (relative) of ``kl``. ``direction`` is a ``Direction`` (its
    unit vector at ``layer``, default its first layer) or a plain vector with ``layer`` given."""
    if kl <= 0:
        raise ValueError(f"kl must be positive, not {kl}")
    if hasattr(direction, "vectors"):
        layer = min(direction.vectors) if layer is None else layer
        vector = direction.vectors[layer]
    else:
        if layer is None:
            raise ValueError("pass layer= with a plain vector")
        vector = direction / direction.norm()
    device = next(model.parameters()).device
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    batch = {k: v.to(device) for k, v in tokenizer(list(prompts), return_tensors="pt", padding=True).items()}
    vector = vector.to(device)

    def measure(s: float) -> float:
        return torch.quantile(steering_kl(model, batch, layer, vector, s), quantile).item()

    lo, hi = 0.0, 1.0
    value = measure(hi)
    while value < kl:  # grow until the budget is exceeded
        lo, hi = hi, hi * 2
        value = measure(hi)
        if hi > 1e6:
            raise ValueError(f"steering layer {layer} never reaches KL {kl} (at strength {hi:g}: {value:.3g})")
    strength = hi
    for _ in range(max_iter):
        if abs(value - kl) <= tolerance * kl:
            break
        strength = (lo + hi) / 2
        value = measure(strength)
        lo, hi = (strength, hi) if value < kl else (lo, strength)
    return {"strength": strength, "kl": value, "quantile": quantile, "n_tokens": int(batch["attention_mask"].sum()),
            "layer": layer}


def to_gguf(direction, path, strength: float = 1.0, model_hint: str = "llama") -> None:
    """Write llama.cpp's control-vector format: architecture ``controlvector``, keys
    ``controlvector.model_hint`` and ``controlvector.layer_count``, one float32 tensor
    ``direction.{i}`` per layer, added by llama.cpp to the output of block ``i`` (reprkit's layer
    ``i``; llama.cpp cannot steer block 0's output, so layer 0 is refused)."""
    import gguf

    if 0 in direction.vectors:
        raise ValueError("llama.cpp control vectors start at block 1; drop layer 0 from the direction")
    writer = gguf.GGUFWriter(str(path), "controlvector")
    writer.add_string("controlvector.model_hint", model_hint)
    writer.add_uint32("controlvector.layer_count", len(direction.vectors))
    for layer in sorted(direction.vectors):
        writer.add_tensor(f"direction.{layer}", (direction.vectors[layer].float() * strength).numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def read_gguf(path) -> dict[int, torch.Tensor]:
    """The vectors of a control-vector GGUF file, by layer."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    return {int(t.name.split(".")[1]): torch.tensor(t.data.copy()).float().reshape(-1)
            for t in reader.tensors if t.name.startswith("direction.")}
