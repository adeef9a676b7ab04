"""Logit lens: each layer's residual stream read through the model's own final norm and LM head.

>>> res = logit_lens(model, tokenizer, ["The capital of France is"], layers="range(0,1.0,3)", target=" Paris")
>>> res["top"][29][0][-1]          # [(token, probability), ...] at the last position of prompt 0, layer 29
>>> res["target"]["rank"][15][0]   # rank of " Paris" at each position of prompt 0, layer 15 (0 = top)

The last layer's lens equals the model's own logits (its final norm and head are the lens).
"""

from __future__ import annotations

import torch

from .devices import to_model
from .frozen import eval_mode
from .hooks import capture


def final_norm(model) -> torch.nn.Module:
    """The norm applied after the last block (Llama/Qwen/Mistral/Gemma ``norm``, GPT-2 ``ln_f``,
    GPT-NeoX ``final_layer_norm``)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = inner.get_decoder() if hasattr(inner, "get_decoder") else inner
    owners = [o for o in (decoder, getattr(inner, "model", None), getattr(inner, "transformer", None), inner)
              if isinstance(o, torch.nn.Module)]
    for name in ("norm", "ln_f", "final_layer_norm"):
        for owner in owners:
            if isinstance(getattr(owner, name, None), torch.nn.Module):
                return getattr(owner, name)
    raise ValueError(f"no final norm found on {type(inner).__name__} (looked for norm, ln_f, final_layer_norm)")


def lens_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """Block-output states ``[..., H]`` -> vocabulary logits ``[..., V]`` (float32, softcapped where
    the model softcaps)."""
    from .logits import head_logits

    return head_logits(model, final_norm(model)(hidden))


@torch.no_grad()
def logit_lens(model, tokenizer, prompts: list[str], layers, top_k: int = 5, target: str | None = None,
               chat: bool = False) -> dict:
    """Per layer, position and prompt: the ``top_k`` tokens and probabilities; with ``target`` (a
    string whose first token is followed), its rank (0 = most likely) and probability. With
    ``chat``, each prompt is the user turn of the model's chat template, generation prompt included
    (the position the model answers from is the last).

    Returns ``{"tokens": [[str]], "layers": [int], "top": {layer: [[[(str, p)]]]}, "target": ...,
    "chat": bool}``; positions are each prompt's own (no padding)."""
    if chat and not tokenizer.chat_template:
        raise ValueError("chat=True but the tokenizer has no chat template; pass chat=False (--no-chat)")
    from .data import render_prompt

    texts = [render_prompt(tokenizer, [{"role": "user", "content": p}], chat) for p in prompts]  # one chat rule
    enc = [tokenizer(t, return_tensors="pt", add_special_tokens=not chat) for t in texts]
    target_id = None
    if target is not None:
        ids = tokenizer(target, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"target {target!r} tokenizes to nothing")
        target_id = ids[0]
    out = {"tokens": [[tokenizer.decode([int(i)]) for i in e["input_ids"][0]] for e in enc], "top": {}}
    if target_id is not None:
        out["target"] = {"token": tokenizer.decode([target_id]), "id": target_id, "rank": {}, "prob": {}}
    with eval_mode(model):
        for e in enc:
            with capture(model, layers, stop=True) as cap:
                model(**to_model(model, e), use_cache=False)
            for layer, h in cap.hidden_states.items():
                probs = torch.softmax(lens_logits(model, h[0]), -1)  # [T, V]
                p, idx = (t.cpu() for t in probs.topk(top_k, -1))
                tops = [[(tokenizer.decode([int(i)]), float(q)) for i, q in zip(ri, rp)]
                        for ri, rp in zip(idx, p)]
                out["top"].setdefault(layer, []).append(tops)
                if target_id is not None:
                    pt = probs[:, target_id]
                    out["target"]["prob"].setdefault(layer, []).append(pt.tolist())
                    out["target"]["rank"].setdefault(layer, []).append((probs > pt[:, None]).sum(-1).tolist())
    out["layers"] = sorted(out["top"])
    out["chat"] = chat
    return out


def format_lens(res: dict, prompt: int = 0, position: int = -1) -> str:
    """A layer-by-row table of one prompt position: top tokens, and the target's rank and probability."""
    tok = res["tokens"][prompt][position]
    how = "in the chat template's user turn" if res.get("chat") else "as plain text"
    lines = [f"logit lens, prompt {prompt} {how}, position {position} (token {tok!r})"]
    head = f"{'layer':>6}  top tokens"
    if "target" in res:
        head += f"  | target {res['target']['token']!r}: rank, prob"
    lines.append(head)
    for layer in res["layers"]:
        tops = ", ".join(f"{t!r} {p:.2f}" for t, p in res["top"][layer][prompt][position][:5])
        row = f"{layer:>6}  {tops}"
        if "target" in res:
            row += f"  | {res['target']['rank'][layer][prompt][position]}, {res['target']['prob'][layer][prompt][position]:.3f}"
        lines.append(row)
    return "\n".join(lines)
