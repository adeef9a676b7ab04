"""Judge-free evaluation: preference accuracy from log-probabilities, and sample generations.

>>> acc = preference_accuracy(model, encoded_pairs, tokenizer.pad_token_id)   # adapter and base in one call
>>> acc["accuracy_mean"], acc["base"]["accuracy_mean"]
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .data import collate
from .reference import adapter_disabled, eval_mode


def completion_logps(logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """Summed log-probability of the completion tokens: ``[B, T, V], [B, T], [B, T] -> [B]``.

    Token t is predicted by the logits at t - 1; computed in float32.
    """
    logits = logits[:, :-1].float()
    targets = input_ids[:, 1:]
    mask = completion_mask[:, 1:].to(logits.dtype)
    token_logps = -F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    return (token_logps * mask).sum(-1)


def forward_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  completion_mask: torch.Tensor) -> torch.Tensor:
    """Run ``model`` and return the summed completion log-probs ``[B]``, applying the LM head only
    where a completion token is predicted.

    The full ``[B, T, vocab]`` logits are most of a small model's forward and memory (49k vocab):
    the model runs with ``logits_to_keep=1`` and the head is applied to the final (normed) hidden
    states at the completion positions alone. Models without ``logits_to_keep`` fall back to full logits.
    """
    try:
        out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                    output_hidden_states=True, logits_to_keep=1)
    except TypeError:
        out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return completion_logps(out.logits, input_ids, completion_mask)
    final = out.hidden_states[-1][:, :-1]  # position t predicts token t + 1
    where = completion_mask[:, 1:].bool()
    head = _unwrap(model).get_output_embeddings()
    logits = head(final[where]).float()
    cap = getattr(_unwrap(model).config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    token_logps = -F.cross_entropy(logits, input_ids[:, 1:][where], reduction="none")
    rows = where.nonzero()[:, 0]
    return torch.zeros(input_ids.shape[0], dtype=token_logps.dtype, device=token_logps.device).index_add(0, rows, token_logps)


def _unwrap(model):
    return getattr(model, "module", model)  # DDP / FSDP wrappers


def pair_logps(model, batch: dict) -> dict[str, torch.Tensor]:
    """Summed completion log-probs and lengths of chosen and rejected, one forward for both."""
    ids = torch.cat([batch["chosen_input_ids"], batch["rejected_input_ids"]])
    attn = torch.cat([batch["chosen_attention_mask"], batch["rejected_attention_mask"]])
    comp = torch.cat([batch["chosen_completion_mask"], batch["rejected_completion_mask"]])
    logps = forward_logps(model, ids, attn, comp)
    n = comp[:, 1:].sum(-1).clamp_min(1)
    b = batch["chosen_input_ids"].shape[0]
    return {"chosen": logps[:b], "rejected": logps[b:], "chosen_n": n[:b], "rejected_n": n[b:]}


def _ci95(p: float, n: int) -> list[float]:
    """Wilson 95% interval of a proportion."""
    if n == 0:
        return [float("nan"), float("nan")]
    z = 1.96
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [centre - half, centre + half]


def _summarise(chosen, rejected, chosen_n, rejected_n) -> dict:
    mean_margin = chosen / chosen_n - rejected / rejected_n
    n = len(chosen)
    acc_mean = (mean_margin > 0).float().mean().item()
    acc_sum = (chosen > rejected).float().mean().item()
    return {
        "n": n,
        "accuracy_mean": acc_mean,
        "accuracy_mean_ci95": _ci95(acc_mean, n),
        "accuracy_sum": acc_sum,
        "accuracy_sum_ci95": _ci95(acc_sum, n),
        "margin_mean": mean_margin.mean().item(),
    }


@torch.no_grad()
def preference_accuracy(model, encoded: list[dict], pad_token_id: int, batch_size: int = 16,
                        base: bool = True) -> dict:
    """Share of pairs where the model gives the chosen completion the higher log-probability.

    ``accuracy_mean`` compares per-token mean log-probs, ``accuracy_sum`` summed ones;
    ``margin_mean`` is the mean per-token log-prob margin. With ``base=True`` and an adapter on the
    model, ``result["base"]`` is the same for the frozen model (adapter disabled), from this call.
    """
    passes = {"policy": None}
    if base and getattr(model, "peft_config", None):
        passes["base"] = adapter_disabled
    out = {}
    with eval_mode(model):
        for name, ctx in passes.items():
            parts = {"chosen": [], "rejected": [], "chosen_n": [], "rejected_n": []}
            for i in range(0, len(encoded), batch_size):
                batch = collate(encoded[i: i + batch_size], pad_token_id)
                if ctx is None:
                    res = pair_logps(model, batch)
                else:
                    with ctx(model):
                        res = pair_logps(model, batch)
                for k in parts:
                    parts[k].append(res[k])
            out[name] = _summarise(*(torch.cat(parts[k]) for k in ("chosen", "rejected", "chosen_n", "rejected_n")))
    result = out["policy"]
    if "base" in out:
        result["base"] = out["base"]
    return result


@torch.no_grad()
def generate_samples(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int = 32,
                     chat_template: bool | None = None) -> list[dict]:
    """Greedy completions of a few prompts (message lists)."""
    from .data import render_prompt

    chat = bool(tokenizer.chat_template) if chat_template is None else chat_template
    rows = []
    with eval_mode(model):
        for messages in prompts:
            text = render_prompt(tokenizer, messages, chat)
            enc = tokenizer(text, return_tensors="pt", add_special_tokens=not chat)
            enc = {k: v.to(next(model.parameters()).device) for k, v in enc.items()}
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
            completion = tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            rows.append({"prompt": messages[-1]["content"], "completion": completion})
    return rows
