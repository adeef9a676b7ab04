"""Tokenization with its truncation counts (``Encoded``), and collation into padded batches with
completion and response masks."""

from __future__ import annotations

import torch

from .formats import ASSISTANT_TAG
from .items import DataError, Messages, log


def uses_chat(tokenizer, chat: bool | None = None) -> bool:
    """Whether prompts go through the chat template: ``chat`` when given, else whether the tokenizer
    has one (a base model's, such as Gemma 3 270M's, has none)."""
    return bool(tokenizer.chat_template) if chat is None else chat


def render_prompt(tokenizer, messages: Messages, chat: bool | None = None) -> str:
    """The prompt text the model sees: the chat template with the generation prompt (``chat``
    left out: when the tokenizer has a template), else plain text (a lone user message as it is;
    a conversation as ``Human:`` / ``Assistant:`` turns, ending with the assistant's tag)."""
    if uses_chat(tokenizer, chat):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    turns = "".join(f"\n\n{'Human' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in messages)
    return turns + ASSISTANT_TAG


def render_completion(tokenizer, messages: Messages, response: str, chat: bool, prompt_text: str) -> str:
    if not chat:
        return (" " if prompt_text.endswith(":") else "") + response + (tokenizer.eos_token or "")
    full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": response}], tokenize=False)
    if not full.startswith(prompt_text):
        raise DataError("the chat template does not extend the prompt with the answer; pass chat_template=False")
    return full[len(prompt_text):]


class Encoded(list):
    """Encoded pairs or items (a list), with what tokenization cut: ``dropped`` (pairs or items with
    no completion token left) and ``limits`` (the ``max_length`` / ``max_prompt_length`` used). Each
    record carries ``prompt_cut`` and ``response_cut`` (tokens cut from its prompt, from the left, and
    the most cut from any of its responses, from the right) and ``full_prompt_length`` /
    ``full_length`` (the longest prompt + response uncut), which ``reprkit.truncation`` summarises."""

    dropped: int = 0
    limits: dict = {}
    kept: list[int] = []
    """The index of each record's pair or item in the input (what was dropped is not there)."""


def _cut_fields(prompt_full: int, prompt_kept: int, completion_full: int, completion_kept: int) -> dict:
    return {"prompt_cut": prompt_full - prompt_kept, "response_cut": completion_full - completion_kept,
            "full_prompt_length": prompt_full, "full_length": prompt_full + completion_full}


def _merge_cut(a: dict, b: dict) -> dict:
    return {k: max(a[k], b[k]) for k in a}


def encode_pairs(pairs: list[dict], tokenizer, max_length: int = 256, max_prompt_length: int = 128,
                 chat_template: bool | None = None, warn: bool = True) -> Encoded:
    """Tokenize pairs once: prompt ids (truncated from the left to ``max_prompt_length``) and each
    completion's ids (truncated from the right so prompt + completion fit ``max_length``).

    ``chat_template=None`` applies the tokenizer's chat template when it has one. A pair with an
    empty completion after truncation is dropped. Nothing is cut silently: each record says how many
    tokens were cut (``Encoded``), and more than ``truncation.WARN_SHARE`` of pairs cut logs a
    warning naming the lengths that would fit (``reprkit.truncation``).

    Each side also records ``{side}_suffix_len``: the tokens after the response's own text that the
    template adds (``<|im_end|>``, a newline, EOS) and that survived truncation, so that "the
    response's last token" can mean the answer's, not the template's.
    """
    if max_prompt_length >= max_length:
        raise ValueError(f"max_prompt_length ({max_prompt_length}) must be below max_length ({max_length})")
    chat = uses_chat(tokenizer, chat_template)
    if chat and not tokenizer.chat_template:
        raise ValueError("chat_template=True but the tokenizer has no chat template")
    out, dropped = Encoded(), 0
    cache: dict[str, list[int]] = {}

    def prompt_ids(messages):
        text = render_prompt(tokenizer, messages, chat)
        if text not in cache:
            cache[text] = tokenizer(text, add_special_tokens=not chat)["input_ids"]
        return text, cache[text]

    kept_at = []
    for index, pair in enumerate(pairs):
        encoded, cut = {}, None
        for side in ("chosen", "rejected"):
            # a pair may carry its own prompt for the rejected side (separate retain / reroute sets)
            messages = pair.get(f"{side}_prompt") or pair["prompt"]
            text, full_prompt = prompt_ids(messages)
            ids = full_prompt[-max_prompt_length:]
            completion = render_completion(tokenizer, messages, pair[side], chat, text)
            full = tokenizer(completion, add_special_tokens=False)["input_ids"]
            kept = full[: max_length - len(ids)]
            suffix = _suffix_tokens(tokenizer, completion, pair[side], len(full))
            encoded[f"{side}_prompt_ids"] = ids
            encoded[f"{side}_ids"] = kept
            encoded[f"{side}_suffix_len"] = max(0, suffix - (len(full) - len(kept)))
            side_cut = _cut_fields(len(full_prompt), len(ids), len(full), len(kept))
            cut = side_cut if cut is None else _merge_cut(cut, side_cut)
        if not encoded["chosen_ids"] or not encoded["rejected_ids"]:
            dropped += 1
            continue
        out.append(encoded | cut)
        kept_at.append(index)
    out.dropped, out.kept = dropped, kept_at
    out.limits = {"max_length": max_length, "max_prompt_length": max_prompt_length}
    if dropped:
        log.warning("dropped %d of %d pairs with no completion tokens left after truncation", dropped, len(pairs))
    if not out:
        raise DataError(f"no pairs left after tokenization and truncation (max_length {max_length}, "
                        f"max_prompt_length {max_prompt_length}); raise max_length")
    if warn:
        from ..truncation import warn_if_cut

        warn_if_cut(out, what="pairs")
    return out


def _suffix_tokens(tokenizer, completion: str, response: str, n_full: int) -> int:
    """Tokens of ``completion`` after the response's own text (template end tokens, EOS)."""
    end = completion.rfind(response)
    if end < 0:
        return 0
    head = completion[: end + len(response)]
    return max(0, n_full - len(tokenizer(head, add_special_tokens=False)["input_ids"]))


def collate(examples: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad chosen and rejected sequences to one length (so they can share a forward).

    Returns ``{chosen,rejected}_{input_ids, attention_mask, completion_mask}``, each ``[batch, seq]``;
    the completion mask is 1 on answer tokens only (not prompt, not padding).
    """
    seqs = {side: [e[f"{side}_prompt_ids"] + e[f"{side}_ids"] for e in examples] for side in ("chosen", "rejected")}
    length = max(len(s) for side in seqs.values() for s in side)
    batch = {}
    for side, rows in seqs.items():
        ids = torch.full((len(rows), length), pad_token_id, dtype=torch.long)
        attn = torch.zeros((len(rows), length), dtype=torch.long)
        comp = torch.zeros((len(rows), length), dtype=torch.long)
        for i, (row, e) in enumerate(zip(rows, examples)):
            ids[i, : len(row)] = torch.tensor(row)
            attn[i, : len(row)] = 1
            comp[i, len(e[f"{side}_prompt_ids"]): len(row)] = 1
        batch |= {f"{side}_input_ids": ids, f"{side}_attention_mask": attn, f"{side}_completion_mask": comp}
    return batch


def encode_ranked(items: list[dict], tokenizer, max_length: int = 256, max_prompt_length: int = 128,
                  chat_template: bool | None = None, max_responses: int | None = None) -> Encoded:
    """Tokenize items with all their responses, best first (for Plackett-Luce losses and K-way
    scoring): ``{"prompt_ids", "responses_ids": [[...], ...], "suffix_lens": [...]}`` plus the cut
    fields of ``Encoded`` (the most cut from any response). Truncation as in ``encode_pairs``; an
    item whose best response has no token left is dropped and counted. Each item stays its own
    record, in the order given: two items with the same prompt and best response but different
    other responses (GENIES' change_my_view has 23 such in its test split) are two K-way questions,
    not one question with their responses pooled."""
    pairs = [{"prompt": it["prompt"], "chosen": it["responses"][0], "rejected": r, "item": i}
             for i, it in enumerate(items) for r in it["responses"][1:(max_responses or len(it["responses"]))]]
    encoded = encode_pairs(pairs, tokenizer, max_length, max_prompt_length, chat_template, warn=False)
    out: dict[int, dict] = {}
    for j, e in zip(encoded.kept, encoded):  # regroup the pairs of one item
        key = pairs[j]["item"]
        cut = {k: e[k] for k in ("prompt_cut", "response_cut", "full_prompt_length", "full_length")}
        entry = out.setdefault(key, {"prompt_ids": e["chosen_prompt_ids"], "responses_ids": [e["chosen_ids"]],
                                     "suffix_lens": [e["chosen_suffix_len"]], **cut})
        entry["responses_ids"].append(e["rejected_ids"])
        entry["suffix_lens"].append(e["rejected_suffix_len"])
        entry.update(_merge_cut({k: entry[k] for k in cut}, cut))
    result = Encoded(out.values())
    result.dropped, result.kept = len(items) - len(result), list(out)
    result.limits = encoded.limits
    from ..truncation import warn_if_cut

    warn_if_cut(result, what="items")
    return result


def collate_ranked(examples: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad the K responses of each item: ``input_ids`` etc. ``[B * K, T]`` (item-major) and
    ``valid [B, K]``; items with fewer responses get empty slots (valid False, no completion tokens).
    ``completion_mask`` marks every scored token of a response (template end tokens included, as
    training sees them); ``response_mask`` only the response's own text (template end tokens
    excluded, at least one token)."""
    k = max(len(e["responses_ids"]) for e in examples)
    seqs, valid = [], []
    for e in examples:
        for j in range(k):
            has = j < len(e["responses_ids"])
            seqs.append((e["prompt_ids"], e["responses_ids"][j] if has else []))
            valid.append(has)
    suffixes = [(e.get("suffix_lens") or [0] * len(e["responses_ids"]))[j] if j < len(e["responses_ids"]) else 0
                for e in examples for j in range(k)]
    length = max(len(p) + len(r) for p, r in seqs)
    ids = torch.full((len(seqs), length), pad_token_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), length), dtype=torch.long)
    comp = torch.zeros((len(seqs), length), dtype=torch.long)
    resp = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, ((p, r), suffix) in enumerate(zip(seqs, suffixes)):
        ids[i, : len(p) + len(r)] = torch.tensor(p + r)
        attn[i, : len(p) + len(r)] = 1
        comp[i, len(p): len(p) + len(r)] = 1
        resp[i, len(p): len(p) + max(len(r) - suffix, 1 if r else 0)] = 1
    return {"input_ids": ids, "attention_mask": attn, "completion_mask": comp, "response_mask": resp,
            "valid": torch.tensor(valid).view(len(examples), k)}
