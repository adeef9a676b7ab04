"""Steering with a read direction at a strength chosen by divergence, not by an arbitrary multiplier.

>>> s = calibrate_strength(model, tokenizer, direction, prompts, kl=1.0)   # over the direction's best layer(s)
>>> with steered(model, direction, s["strength"], layers=s["layers"]):      # every layer in one call, undone on exit
...     model.generate(...)
>>> with capture(model, 15, edit_output=direction.edit(s["strength"], 15)):   # one layer, the baukit way
...     model.generate(...)
>>> direction.to_gguf("honesty.gguf")   # llama.cpp control vector (see ``to_gguf``)

``calibrate_strength`` finds, by bisection, the coefficient at which the steered model's
next-token distributions differ from the unsteered ones by the asked KL divergence: the
``quantile`` (0.9 by default) of per-token KL(unsteered || steered) over every prompt token.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from .frozen import eval_mode
from .hooks import capture


def check_steering(model, vectors: dict[int, torch.Tensor], strength, info: dict | None = None) -> None:
    """``ValueError`` in one line for a steer that cannot be right: a vector whose size is not the
    model's hidden size (naming both, and the model the direction was read on where it says), a
    vector or strength that is not finite."""
    import math

    from .logits import unwrap

    config = unwrap(model).config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = getattr(text, "hidden_size", None)
    info = info or {}
    for k, v in vectors.items():
        if hidden is not None and v.shape[-1] != hidden:
            read = f" (it was read on {info['model']})" if info.get("model") else ""
            raise ValueError(f"the direction's vector at layer {k} has {v.shape[-1]} dimensions and the model "
                             f"{getattr(config, 'name_or_path', '') or ''} has hidden size {hidden}{read}: "
                             "steer the model it was read on, or read it again on this one")
        if not bool(torch.isfinite(v).all()):
            raise ValueError(f"the direction's vector at layer {k} holds NaN or inf: read it again (or check what "
                             "built it)")
    for s in (strength.values() if isinstance(strength, dict) else [strength]):
        if not isinstance(s, (int, float)) or not math.isfinite(s):
            raise ValueError(f"the steering strength must be a finite number, not {s!r}")


@contextmanager
def steered(model, direction, strength: float | dict[int, float], layers=None, mask: torch.Tensor | None = None,
            block_name: str | None = None, point: str = "resid_post"):
    """Add ``strength`` x the direction's vector to the output of each of ``layers`` (default: every
    layer the direction holds), in one context; undone on exit, also when the body raises.

    ``strength`` is one number or ``{layer: strength}``; ``mask`` (``[batch, seq]``) limits the edit
    to those positions (``None`` during ``generate``). A layer the direction does not hold is refused
    by name. ``layers`` takes the layer specs of ``capture`` (``"5:7"`` is blocks 5 and 6). Equal to
    nesting one ``capture(model, k, edit_output=direction.edit(s, k))`` per layer. ``point`` steers
    another place of each block (``reprkit.points``: ``"resid_mid"``, ``"attn_out"``, ...; not ``"z"``
    or ``"pattern"``, whose tensors are not hidden-size vectors).
    """
    from .edits import add_vector
    from .layers import block_indices, find_blocks

    held = sorted(direction.vectors)
    indices = held if layers is None else block_indices(model, layers, block_name)
    missing = [k for k in indices if k not in direction.vectors]
    if missing:
        raise ValueError(f"the direction has no vector at layer(s) {missing}; it holds layers {held}")
    check_steering(model, {k: direction.vectors[k] for k in indices}, strength, getattr(direction, "info", None))
    if point in ("z", "pattern"):
        raise ValueError(f"a direction steers a hidden-size point; {point!r} is per head: edit it with "
                         f"capture(model, layer, point={point!r}, edit_output=...)")
    names, _ = find_blocks(model, block_name)
    suffix = "" if point == "resid_post" else f":{point}"
    edits = {names[k] + suffix: add_vector(direction.vectors[k], strength[k] if isinstance(strength, dict) else strength,
                                           mask) for k in indices}
    with capture(model, indices, point=point, block_name=block_name, retain_output=False,
                 edit_output=lambda h, name: edits[name](h, name)) as cap:
        yield cap


@torch.no_grad()
def steering_kl(model, batch: dict, layer, vector, strength: float) -> torch.Tensor:
    """Per-token KL(unsteered || steered) of next-token distributions over the batch's real tokens
    ``[n]`` (float32); ``layer`` and ``vector`` may be lists (steered at every one of those layers
    at once). The model runs without its LM head (``logits_to_keep=1``); the head is applied to the
    real tokens' final states in chunks (``logits.chunk_positions``), so no full ``[batch, tokens,
    vocab]`` logits are ever built (Gemma 3's 262k vocabulary made them 2 GB each at 16 x 128)."""
    from types import SimpleNamespace

    from .devices import follow
    from .logits import chunk_positions, head_logits, unwrap

    layers = list(layer) if isinstance(layer, (list, tuple)) else [layer]
    vectors = list(vector) if isinstance(vector, (list, tuple)) else [vector]
    d = SimpleNamespace(vectors=dict(zip(layers, vectors)))  # what steered() reads of a Direction

    def final_states():
        h = model(**batch, use_cache=False, output_hidden_states=True, logits_to_keep=1).hidden_states[-1]
        return h[follow(batch["attention_mask"], h).bool()]  # [n, H]: the real tokens' final (normed) states

    with eval_mode(model):
        plain = final_states()
        with steered(model, d, strength, layers):
            moved = final_states()
    chunk = max(1, chunk_positions(unwrap(model).get_output_embeddings().weight.shape[0]) // 2)
    kl = []
    for i in range(0, plain.shape[0], chunk):
        p = torch.log_softmax(head_logits(model, plain[i: i + chunk]), -1)
        q = torch.log_softmax(head_logits(model, moved[i: i + chunk]), -1)
        kl.append((p.exp() * (p - q)).sum(-1))
    return torch.cat(kl)


def default_layers(direction) -> list[int]:
    """The direction's best layer(s) if it records them (``best_layer``), else its every layer."""
    best = direction.info.get("best_layers") or direction.info.get("best_layer")
    if best is None:
        return sorted(direction.vectors)
    return [best] if isinstance(best, int) else list(best)


def calibrate_strength(model, tokenizer, direction, prompts: list[str], layer: int | list[int] | None = None,
                       kl: float = 1.0, quantile: float = 0.9, tolerance: float = 0.02, max_iter: int = 40) -> dict:
    """``{"strength", "kl", "quantile", "n_tokens", "layer", "layers"}``: the strength whose per-token
    KL quantile is within ``tolerance`` (relative) of ``kl``, steering at every one of ``layer``
    (one layer or a list; default: the direction's best layer(s), ``default_layers``).
    ``direction`` is a ``Direction`` or a plain vector with ``layer`` given."""
    from .layers import block_indices

    if kl <= 0:
        raise ValueError(f"kl must be positive, not {kl}")
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts or not any(isinstance(p, str) and p.strip() for p in prompts):
        raise ValueError(f"calibrate_strength needs at least one non-empty prompt to measure the KL on (got {prompts!r})")
    if hasattr(direction, "vectors"):
        layers = default_layers(direction) if layer is None else block_indices(model, layer)
        missing = [k for k in layers if k not in direction.vectors]
        if missing:
            raise ValueError(f"the direction has no vector at layer(s) {missing}; it holds layers {sorted(direction.vectors)}")
        vectors = [direction.vectors[k] for k in layers]
    else:
        if layer is None:
            raise ValueError("pass layer= with a plain vector")
        layers = block_indices(model, layer)
        vectors = [direction / direction.norm()] * len(layers)
    check_steering(model, dict(zip(layers, vectors)), 1.0, getattr(direction, "info", None))
    from .devices import to_model

    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    batch = to_model(model, tokenizer(prompts, return_tensors="pt", padding=True))  # each vector follows its block

    def measure(s: float) -> float:
        return torch.quantile(steering_kl(model, batch, layers, vectors, s), quantile).item()

    lo, hi = 0.0, 1.0
    value = measure(hi)
    while value < kl:  # grow until the budget is exceeded
        lo, hi = hi, hi * 2
        value = measure(hi)
        if hi > 1e6:
            raise ValueError(f"steering layer(s) {layers} never reaches KL {kl} (at strength {hi:g}: {value:.3g})")
    strength = hi
    for _ in range(max_iter):
        if abs(value - kl) <= tolerance * kl:
            break
        strength = (lo + hi) / 2
        value = measure(strength)
        lo, hi = (strength, hi) if value < kl else (lo, strength)
    return {"strength": strength, "kl": value, "quantile": quantile, "n_tokens": int(batch["attention_mask"].sum()),
            "layer": layers[0], "layers": layers}


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
        writer.add_tensor(f"direction.{layer}", (direction.vectors[layer].detach().float().cpu() * strength).numpy())
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


def steer(*args, **kwargs):
    """Deprecated name of ``steered`` (the context manager); it goes in the next release."""
    import warnings

    warnings.warn("reprkit.steering.steer is now reprkit.steering.steered (Direction.steer is Direction.edit)",
                  DeprecationWarning, stacklevel=2)
    return steered(*args, **kwargs)
