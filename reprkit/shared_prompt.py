"""Score every response of an item from one pass over its prompt.

An item with K responses (GENIES: 2 to 4, TruthfulQA MC: up to 13) costs the prompt K times when
each prompt + response runs as its own sequence. Here the prompts of a batch run once with the KV
cache on; the responses run on top of it, in chunks of similar length, each chunk on a copy of
the cache that holds its rows' prompts (``DynamicCache.batch_select_indices``). Items are sorted by
prompt length and cut into batches by a token budget, and responses are chunked by length, so
little compute goes to padding. The log-probs equal the one-sequence-per-response path's
(``reprkit.evaluate.ranked_logps(..., shared_prompt=False)``) to float rounding; tests check both.

>>> lp = shared_prompt_logps(model, encoded, tokenizer.pad_token_id)   # encoded = data.encode_ranked(...)
>>> lp["logps"].shape, lp["n_tokens"].shape, lp["valid"].shape           # [N, K] each, K = most responses

Prompts are right-padded, so padding sits between a short prompt and its responses: the attention
mask hides it and the responses get explicit position ids (prompt length + offset), exactly the
positions they have in the concatenated sequence.
"""

from __future__ import annotations

import torch

from .logits import head_token_logps, unwrap


def _head_logps(model, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Log-prob of each target token from the final (normed) hidden state that predicts it: ``[n]``
    (in bounded chunks of positions, ``reprkit.logits``)."""
    return head_token_logps(model, hidden, targets)


def length_batches(encoded: list[dict], token_budget: int, max_items: int, max_waste: float = 0.1
                   ) -> list[list[int]]:
    """Indices of ``encoded`` in batches of similar prompt length: sorted by prompt length, each
    batch at most ``max_items`` items, (unless one item exceeds it alone) ``token_budget`` tokens
    counted as the padded prompt pass plus the batch's response tokens (responses run in chunks of
    similar length, ``response_chunks``, so they pad little), and cut where padding every prompt
    to the batch's longest would add more than ``max_waste`` of its real prompt tokens."""
    order = sorted(range(len(encoded)), key=lambda i: (len(encoded[i]["prompt_ids"]), i))
    batches, current, prompts, responses = [], [], 0, 0
    for i in order:
        p, r = len(encoded[i]["prompt_ids"]), sum(len(x) for x in encoded[i]["responses_ids"])
        # prompts come in ascending length, so p is the longest of the batch so far
        if current and (len(current) >= max_items or (len(current) + 1) * p + responses + r > token_budget
                        or (len(current) + 1) * p > (1 + max_waste) * (prompts + p)):
            batches.append(current)
            current, prompts, responses = [], 0, 0
        current.append(i)
        prompts, responses = prompts + p, responses + r
    if current:
        batches.append(current)
    return batches


def response_chunks(lengths: list[int], max_waste: float = 0.1) -> list[list[int]]:
    """Indices of ``lengths`` sorted by length and cut where padding every row of a chunk to its
    longest would add more than ``max_waste`` of the chunk's real tokens."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    chunks, current, real = [], [], 0
    for i in order:
        n = lengths[i]  # the longest so far: rows come in ascending length
        if current and (len(current) + 1) * n > (1 + max_waste) * (real + n):
            chunks.append(current)
            current, real = [], 0
        current.append(i)
        real += n
    if current:
        chunks.append(current)
    return chunks


def _rows_of(cache, index: torch.Tensor):
    """A cache holding only the batch rows ``index`` of ``cache``, which stays as it was.

    ``batch_select_indices`` rebinds each layer's keys and values to new (indexed) tensors, so a
    copy of the layer objects that shares the tensors is enough; copying the tensors themselves
    (``copy.deepcopy``) moved the whole batch's cache through memory once per chunk."""
    import copy

    if not hasattr(cache, "layers"):  # a cache class without per-layer objects: copy it all
        chunk = copy.deepcopy(cache)
    else:
        chunk = copy.copy(cache)
        chunk.layers = [copy.copy(layer) for layer in cache.layers]
    chunk.batch_select_indices(index)
    return chunk


def _prompt_batch(examples: list[dict], pad_token_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The items' prompts right-padded: ids and attention mask ``[B, P]``, and each prompt's length ``[B]``."""
    p_len = torch.tensor([len(e["prompt_ids"]) for e in examples], device=device)
    prompt = torch.full((len(examples), int(p_len.max())), pad_token_id, dtype=torch.long, device=device)
    prompt_mask = torch.zeros_like(prompt)
    for i, e in enumerate(examples):
        prompt[i, : len(e["prompt_ids"])] = torch.tensor(e["prompt_ids"])
        prompt_mask[i, : len(e["prompt_ids"])] = 1
    return prompt, prompt_mask, p_len


def _score_batch(model, examples: list[dict], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs and token counts ``[B, K]`` of every response slot (0 for empty slots).

    The prompts run once; the responses then run in chunks of similar length (``response_chunks``),
    each on a copy of the prompt cache that holds its rows' prompts (``batch_select_indices``), so
    a short response is not padded to the longest one of the batch."""
    device = next(model.parameters()).device
    b = len(examples)
    k = max(len(e["responses_ids"]) for e in examples)
    prompt, prompt_mask, p_len = _prompt_batch(examples, pad_token_id, device)
    out = model(input_ids=prompt, attention_mask=prompt_mask, use_cache=True, output_hidden_states=True,
                logits_to_keep=1)
    last = out.hidden_states[-1][torch.arange(b, device=device), p_len - 1]  # predicts each first response token
    cache = out.cache

    slots = [(i, j) for i, e in enumerate(examples) for j, r in enumerate(e["responses_ids"]) if r]
    responses = [examples[i]["responses_ids"][j] for i, j in slots]
    logps = torch.zeros((b, k), dtype=last.dtype, device=device)
    counts = torch.zeros((b, k), dtype=torch.long, device=device)
    for chunk in response_chunks([len(r) for r in responses]):
        item = torch.tensor([slots[c][0] for c in chunk], device=device)
        slot = torch.tensor([slots[c][1] for c in chunk], device=device)
        rows = [responses[c] for c in chunk]
        r_max = max(len(r) for r in rows)
        ids = torch.full((len(rows), r_max), pad_token_id, dtype=torch.long, device=device)
        mask = torch.zeros((len(rows), r_max), dtype=torch.long, device=device)
        for row, r in enumerate(rows):
            ids[row, : len(r)] = torch.tensor(r)
            mask[row, : len(r)] = 1
        chunk_cache = _rows_of(cache, item)
        positions = p_len[item][:, None] + torch.arange(r_max, device=device)
        attention = torch.cat([prompt_mask[item], mask], 1)
        out = model(input_ids=ids, attention_mask=attention, position_ids=positions, cache=chunk_cache,
                    use_cache=True, output_hidden_states=True, logits_to_keep=1)
        # response token j is predicted by the state before it: the prompt's last for j = 0
        predictors = torch.cat([last[item][:, None], out.hidden_states[-1][:, :-1]], 1)
        where = mask.bool()
        token_logps = _head_logps(model, predictors[where], ids[where])
        sums = torch.zeros(len(rows), dtype=token_logps.dtype, device=device).index_add(0, where.nonzero()[:, 0], token_logps)
        logps[item, slot] = sums.to(logps.dtype)
        counts[item, slot] = mask.sum(-1)
    return logps, counts


@torch.no_grad()
def shared_prompt_logps(model, encoded: list[dict], pad_token_id: int, token_budget: int = 8192,
                        max_items: int = 64) -> dict[str, torch.Tensor]:
    """``{"logps", "n_tokens", "valid"}``, each ``[N, K]`` in the order of ``encoded``: summed
    completion log-probs, completion lengths (at least 1) and which response slots exist."""
    n, k = len(encoded), max(len(e["responses_ids"]) for e in encoded)
    logps = torch.full((n, k), float("-inf"))
    n_tokens = torch.ones((n, k))
    valid = torch.zeros((n, k), dtype=torch.bool)
    for idx in length_batches(encoded, token_budget, max_items):
        lp, nt = _score_batch(model, [encoded[i] for i in idx], pad_token_id)
        for row, i in enumerate(idx):
            m = len(encoded[i]["responses_ids"])
            logps[i, :m] = lp[row, :m].float().cpu()
            n_tokens[i, :m] = nt[row, :m].clamp_min(1).float().cpu()
            valid[i, :m] = True
    return {"logps": logps, "n_tokens": n_tokens, "valid": valid}


# ---------------------------------------------------------------- training: chosen and rejected share one prompt pass


def pair_layout(batch: dict) -> dict[str, torch.Tensor] | None:
    """A collated pair batch (``data.collate``) re-laid for one prompt pass: ``prompt_ids``,
    ``prompt_mask`` ``[B, P]`` (right-padded), and the completions item-major (row 2i chosen i, row
    2i + 1 rejected i) as ``completion_ids``, ``completion_mask`` ``[2B, C]``, ``positions`` (their
    positions in the concatenated sequence) and ``order``, the permutation back to chosen-first rows.
    None when some pair's chosen and rejected prompts differ (nothing to share; truncation can cut
    them differently) or a prompt is empty: the caller then runs the concatenated layout."""
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
    c_len = torch.stack([comp["chosen"].sum(-1), comp["rejected"].sum(-1)], 1).reshape(-1)  # item-major
    c_max = max(1, int(c_len.max()))
    completion = torch.zeros((2 * b, c_max), dtype=torch.long, device=device)
    c_mask = torch.arange(c_max, device=device)[None] < c_len[:, None]
    for j, s in enumerate(("chosen", "rejected")):
        completion[j::2][c_mask[j::2]] = ids[s][comp[s]]
    order = torch.cat([torch.arange(0, 2 * b, 2, device=device), torch.arange(1, 2 * b, 2, device=device)])
    return {"prompt_ids": prompt["chosen"], "prompt_mask": in_prompt.long(), "prompt_len": p_len,
            "completion_ids": completion, "completion_mask": c_mask.long(),
            "positions": p_len.repeat_interleave(2)[:, None] + torch.arange(c_max, device=device), "order": order}


def pair_states(model, lay: dict, layers, *, logps: bool, stop: bool, detach: bool
                ) -> tuple[dict[int, torch.Tensor], torch.Tensor | None, torch.Tensor]:
    """Block outputs at ``layers`` on the completion tokens (``{layer: [2B, C, H]}``, chosen rows
    then rejected rows), summed completion log-probs ``[2B]`` (``logps``) and the completion mask
    ``[2B, C]``, from one pass over each prompt and one over both completions on top of its KV cache
    (``DynamicCache.batch_repeat_interleave``). Gradients reach the prompt's keys and values through
    the cache. ``stop``: both passes end after the deepest of ``layers`` (no log-probs then)."""
    from transformers import DynamicCache

    from .hooks import capture

    cache = DynamicCache(config=unwrap(model).config)  # a PeftModel hands .config through
    b = lay["prompt_ids"].shape[0]
    with capture(model, layers, stop=stop):  # the prompt's block outputs are not needed, only its cache
        out = model(input_ids=lay["prompt_ids"], attention_mask=lay["prompt_mask"], cache=cache, use_cache=True,
                    output_hidden_states=logps, logits_to_keep=1)
    last = out.hidden_states[-1][torch.arange(b, device=lay["prompt_len"].device), lay["prompt_len"] - 1] if logps else None
    cache.batch_repeat_interleave(2)
    attention = torch.cat([lay["prompt_mask"].repeat_interleave(2, 0), lay["completion_mask"]], 1)
    with capture(model, layers, stop=stop, detach=detach) as cap:
        out = model(input_ids=lay["completion_ids"], attention_mask=attention, position_ids=lay["positions"],
                    cache=cache, use_cache=True, output_hidden_states=logps, logits_to_keep=1)
    order = lay["order"]
    hidden = {k: v[order] for k, v in cap.hidden_states.items()}
    mask = lay["completion_mask"][order]
    summed = None
    if logps:
        ids, where = lay["completion_ids"], lay["completion_mask"].bool()
        predictors = torch.cat([last.repeat_interleave(2, 0)[:, None], out.hidden_states[-1][:, :-1]], 1)
        token_logps = _head_logps(model, predictors[where], ids[where])
        rows = where.nonzero()[:, 0]
        summed = torch.zeros(ids.shape[0], dtype=token_logps.dtype, device=ids.device).index_add(0, rows, token_logps)
        summed = summed[order]
    return hidden, summed, mask



# ---------------------------------------------------------------- reading: one state per response, one pass per prompt


@torch.no_grad()
def shared_prompt_states(model, encoded: list[dict], pad_token_id: int, layers, own_text: bool, last: bool,
                         token_budget: int = 8192, max_items: int = 64) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """Block outputs at ``layers`` reduced to one state per response of each ranked item
    (``data.encode_ranked``): ``({layer: [N, K, H]}, valid [N, K])`` in the order of ``encoded``,
    float32. Each prompt runs once, to the deepest of ``layers``; its responses run on its KV cache,
    in chunks of similar length. The tokens read: the response's own text (``own_text``: template
    end tokens excluded, at least one token) or the whole completion, their mean or (``last``) the
    last of them. Equal to one sequence per response (``directions.completion_states(...,
    shared_prompt=False)``) to float rounding; an empty response slot reads 0."""
    from transformers import DynamicCache

    from .geometry import last_token, masked_mean
    from .hooks import capture

    device = next(model.parameters()).device
    n, k_all = len(encoded), max(len(e["responses_ids"]) for e in encoded)
    states: dict[int, torch.Tensor] = {}
    valid = torch.zeros((n, k_all), dtype=torch.bool)
    for idx in length_batches(encoded, token_budget, max_items):
        examples = [encoded[i] for i in idx]
        prompt, prompt_mask, p_len = _prompt_batch(examples, pad_token_id, device)
        cache = DynamicCache(config=unwrap(model).config)
        with capture(model, layers, stop=True):  # only the prompt's cache is needed, to the deepest layer
            model(input_ids=prompt, attention_mask=prompt_mask, cache=cache, use_cache=True)
        slots = [(i, j) for i, e in enumerate(examples) for j, r in enumerate(e["responses_ids"]) if r]
        for i, e in enumerate(examples):
            valid[idx[i], : len(e["responses_ids"])] = True
        responses = [examples[i]["responses_ids"][j] for i, j in slots]
        for chunk in response_chunks([len(r) for r in responses]):
            item = torch.tensor([slots[c][0] for c in chunk], device=device)
            at = torch.tensor([idx[slots[c][0]] for c in chunk]), torch.tensor([slots[c][1] for c in chunk])
            rows = [responses[c] for c in chunk]
            r_max = max(len(r) for r in rows)
            ids = torch.full((len(rows), r_max), pad_token_id, dtype=torch.long, device=device)
            mask = torch.zeros_like(ids)
            read = torch.zeros_like(ids)
            for row, c in enumerate(chunk):
                i, j = slots[c]
                r = rows[row]
                ids[row, : len(r)] = torch.tensor(r)
                mask[row, : len(r)] = 1
                suffix = (examples[i].get("suffix_lens") or [0] * len(examples[i]["responses_ids"]))[j]
                read[row, : max(len(r) - suffix, 1) if own_text else len(r)] = 1
            if last:
                read = last_token(read)
            positions = p_len[item][:, None] + torch.arange(r_max, device=device)
            attention = torch.cat([prompt_mask[item], mask], 1)
            with capture(model, layers, stop=True) as cap:
                model(input_ids=ids, attention_mask=attention, position_ids=positions, cache=_rows_of(cache, item),
                      use_cache=True)
            for layer, h in cap.hidden_states.items():
                if layer not in states:
                    states[layer] = torch.zeros((n, k_all, h.shape[-1]))
                states[layer][at] = masked_mean(h.float(), read).cpu()
    return states, valid
