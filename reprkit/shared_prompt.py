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

Prompts are left-padded (``pad``): every response's cache index is then its prompt's length
plus its offset, as in the concatenated sequence, which sliding-window attention (Gemma 2 and 3,
Mistral, gpt-oss) needs; prompts and responses get explicit position ids, each prompt's from 0.
All log-prob sums are float32 whatever the model's dtype. ``run_prompts``, ``run_responses`` and
``response_logps`` are the one implementation that scoring, training (``pair_states``) and reading
(``shared_prompt_states``) share.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect

import torch

from .devices import follow, input_device
from .logits import masked_logp_sums, unwrap


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


@functools.cache
def _cache_keyword(model_class: type) -> str:
    """The keyword a model's forward takes its KV cache under: transformers 5.24 renamed
    ``past_key_values`` to ``cache`` (the old name warns until it goes). A keyword the forward does
    not know vanishes into its ``**kwargs``, so a cache passed under the wrong name is silently not
    used and every response is scored without its prompt: the name must be the installed one."""
    params = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def cache_kwargs(model, cache) -> dict:
    """``{keyword: cache}`` for ``model``'s forward (``_cache_keyword``), read from the transformers
    model inside any wrapper (DDP / FSDP ``.module``, peft's ``get_base_model()``)."""
    inner = unwrap(model)
    inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    return {_cache_keyword(type(inner)): cache}


def _rows_of(cache, index: torch.Tensor):
    """A cache holding the batch rows ``index`` of ``cache`` (repeats allowed), which stays as it was.

    ``batch_select_indices`` rebinds each layer's keys and values to new (indexed) tensors, so a
    copy of the layer objects that shares the tensors is enough; copying the tensors themselves
    (``copy.deepcopy``) moved the whole batch's cache through memory once per chunk. Gradients
    reach the prompt's keys and values through the indexing."""
    import copy

    if not hasattr(cache, "layers"):  # a cache class without per-layer objects: copy it all
        chunk = copy.deepcopy(cache)
        chunk.batch_select_indices(index)
        return chunk
    chunk = copy.copy(cache)
    chunk.layers = [copy.copy(layer) for layer in cache.layers]
    for layer in chunk.layers:  # under a device_map each layer's cache lives beside its block
        keys = getattr(layer, "keys", None)
        layer.batch_select_indices(index.to(keys.device) if isinstance(keys, torch.Tensor) else index)
    return chunk


def pad(rows: list[list[int]], pad_token_id: int, device, left: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token id lists padded to one width: ids and attention mask ``[B, P]``, each row's length ``[B]``.

    Prompts go ``left``: a response's cache index must be its prompt length plus its offset, because
    sliding-window masks are built from cache indices. Right padding puts the padding between a
    short prompt and its responses, where it uses up window slots (a tiny Gemma 3 with a window of
    8 scored 0.69 nats off so); left padding puts it before every real token. Responses go right:
    padding after a response's last real token is never attended to by a real one."""
    lengths = torch.tensor([len(r) for r in rows], device=device)
    width = max(1, int(lengths.max()))
    ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        if r:
            at = slice(width - len(r), None) if left else slice(0, len(r))
            ids[i, at] = torch.as_tensor(r, dtype=torch.long, device=device)
            mask[i, at] = 1
    return ids, mask, lengths


@dataclasses.dataclass
class PromptPass:
    """The KV cache of a left-padded prompt batch: ``mask`` ``[B, P]``, ``lengths`` ``[B]`` and
    ``last``, the final (normed) hidden state of each prompt's last token (it predicts the first
    response token; None when not asked for)."""

    cache: object
    mask: torch.Tensor
    lengths: torch.Tensor
    last: torch.Tensor | None


def run_prompts(model, ids: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor, *, layers=None,
                stop: bool = False, last: bool = False) -> PromptPass:
    """One pass over left-padded prompts with the architecture's own cache class; ``stop``: the
    pass ends after the deepest of ``layers`` (the cache then holds those blocks only)."""
    from transformers import DynamicCache

    from .hooks import capture
    from .interventions import at_positions

    cache = DynamicCache(config=unwrap(model).config)  # a PeftModel hands .config through
    positions = (mask.cumsum(-1) - 1).clamp_min(0)  # each prompt's own positions from 0
    ctx = capture(model, layers, stop=True) if stop else contextlib.nullcontext()
    with at_positions(model, mask, None), ctx:  # an intervention at chosen positions: these are prompt tokens
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, **cache_kwargs(model, cache), use_cache=True,
                    output_hidden_states=last, logits_to_keep=1)
    return PromptPass(cache, mask, lengths, out.hidden_states[-1][:, -1] if last else None)


def run_responses(model, prompts: PromptPass, rows: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, *,
                  layers=None, stop: bool = False, detach: bool = True, final: bool = False
                  ) -> tuple[dict[int, torch.Tensor], torch.Tensor | None]:
    """Responses ``ids`` ``[R, T]`` (right-padded, ``mask``) on the cache of prompt rows ``rows``
    ``[R]``: block outputs at ``layers`` (``detach``: for analysis) and the final hidden states
    ``[R, T, H]`` (``final``). Each response token gets its position in the concatenated sequence
    (its prompt's length plus its offset)."""
    from .hooks import capture
    from .interventions import at_positions

    positions = prompts.lengths[rows][:, None] + torch.arange(ids.shape[1], device=ids.device)
    attention = torch.cat([prompts.mask[rows], mask], 1)
    ctx = capture(model, layers, stop=stop, detach=detach) if layers is not None else contextlib.nullcontext()
    with at_positions(model, mask, mask), ctx as cap:  # and these response tokens
        out = model(input_ids=ids, attention_mask=attention, position_ids=positions,
                    **cache_kwargs(model, _rows_of(prompts.cache, rows)), use_cache=True, output_hidden_states=final,
                    logits_to_keep=1)
    return (cap.hidden_states if layers is not None else {}), (out.hidden_states[-1] if final else None)


def response_logps(model, prompts: PromptPass, rows: torch.Tensor, final: torch.Tensor, ids: torch.Tensor,
                   mask: torch.Tensor) -> torch.Tensor:
    """Summed log-probs ``[R]`` (float32) of each response's tokens: token j is predicted by the
    state before it, the prompt's last for j = 0."""
    last = prompts.last[follow(rows, prompts.last)].to(final.device)  # the final norm's device; under a map, the head's
    predictors = torch.cat([last[:, None], final[:, :-1]], 1)
    return masked_logp_sums(model, predictors, ids, mask)


def _score_batch(model, examples: list[dict], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs (float32) and token counts ``[B, K]`` of every response slot (0 for empty slots).

    The prompts run once; the responses then run in chunks of similar length (``response_chunks``),
    each on a copy of the prompt cache that holds its rows' prompts, so a short response is not
    padded to the longest one of the batch."""
    device = input_device(model)
    b, k = len(examples), max(len(e["responses_ids"]) for e in examples)
    prompts = run_prompts(model, *pad([e["prompt_ids"] for e in examples], pad_token_id, device, left=True), last=True)
    slots = [(i, j) for i, e in enumerate(examples) for j, r in enumerate(e["responses_ids"]) if r]
    responses = [examples[i]["responses_ids"][j] for i, j in slots]
    logps = torch.zeros((b, k), dtype=torch.float32, device=device)
    counts = torch.zeros((b, k), dtype=torch.long, device=device)
    for chunk in response_chunks([len(r) for r in responses]):
        item = torch.tensor([slots[c][0] for c in chunk], device=device)
        slot = torch.tensor([slots[c][1] for c in chunk], device=device)
        ids, mask, _ = pad([responses[c] for c in chunk], pad_token_id, device, left=False)
        _, final = run_responses(model, prompts, item, ids, mask, final=True)
        logps[item, slot] = response_logps(model, prompts, item, final, ids, mask).to(device)
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


def pair_states(model, lay: dict, layers, *, logps: bool, stop: bool, detach: bool
                ) -> tuple[dict[int, torch.Tensor], torch.Tensor | None, torch.Tensor]:
    """Block outputs at ``layers`` on the completion tokens (``{layer: [2B, C, H]}``, chosen rows
    then rejected rows), summed completion log-probs ``[2B]`` (``logps``, float32) and the completion
    mask ``[2B, C]``, from one pass over each prompt and one over both completions on top of its KV
    cache. Gradients reach the prompt's keys and values through the cache. ``stop``: both passes end
    after the deepest of ``layers`` (no log-probs then)."""
    prompts = run_prompts(model, lay["prompt_ids"], lay["prompt_mask"], lay["prompt_len"], layers=layers, stop=stop,
                          last=logps)
    rows = torch.arange(lay["prompt_ids"].shape[0], device=lay["prompt_ids"].device).repeat_interleave(2)
    ids, mask = lay["completion_ids"], lay["completion_mask"]
    hidden, final = run_responses(model, prompts, rows, ids, mask, layers=layers, stop=stop, detach=detach, final=logps)
    order = lay["order"]
    hidden = {k: v[follow(order, v)] for k, v in hidden.items()}
    summed = response_logps(model, prompts, rows, final, ids, mask)[order.to(final.device)] if logps else None
    return hidden, summed, mask[order]


# ---------------------------------------------------------------- reading: one state per response, one pass per prompt


@torch.no_grad()
def shared_prompt_states(model, encoded: list[dict], pad_token_id: int, layers, own_text: bool, last: bool,
                         token_budget: int = 8192, max_items: int = 64) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """Block outputs at ``layers`` reduced to one state per response of each ranked item
    (``data.encode_ranked``): ``({layer: [N, K, H]}, valid [N, K])`` in the order of ``encoded``,
    float32 on the CPU. Each prompt runs once, to the deepest of ``layers``; its responses run on
    its KV cache, in chunks of similar length. The tokens read: the response's own text
    (``own_text``: template end tokens excluded, at least one token) or the whole completion, their
    mean or (``last``) the last of them. Equal to one sequence per response
    (``directions.completion_states(..., shared_prompt=False)``) to float rounding; an empty
    response slot reads 0."""
    from .geometry import last_token, masked_mean

    device = input_device(model)
    n, k_all = len(encoded), max(len(e["responses_ids"]) for e in encoded)
    states: dict[int, torch.Tensor] = {}
    valid = torch.zeros((n, k_all), dtype=torch.bool)
    for idx in length_batches(encoded, token_budget, max_items):
        examples = [encoded[i] for i in idx]
        prompts = run_prompts(model, *pad([e["prompt_ids"] for e in examples], pad_token_id, device, left=True),
                              layers=layers, stop=True)
        slots = [(i, j) for i, e in enumerate(examples) for j, r in enumerate(e["responses_ids"]) if r]
        for i, e in enumerate(examples):
            valid[idx[i], : len(e["responses_ids"])] = True
        responses = [examples[i]["responses_ids"][j] for i, j in slots]
        for chunk in response_chunks([len(r) for r in responses]):
            item = torch.tensor([slots[c][0] for c in chunk], device=device)
            at = torch.tensor([idx[slots[c][0]] for c in chunk]), torch.tensor([slots[c][1] for c in chunk])
            rows = [responses[c] for c in chunk]
            ids, mask, _ = pad(rows, pad_token_id, device, left=False)
            read = torch.zeros_like(ids)
            for row, c in enumerate(chunk):
                i, j = slots[c]
                suffix = (examples[i].get("suffix_lens") or [0] * len(examples[i]["responses_ids"]))[j]
                read[row, : max(len(rows[row]) - suffix, 1) if own_text else len(rows[row])] = 1
            if last:
                read = last_token(read)
            hidden, _ = run_responses(model, prompts, item, ids, mask, layers=layers, stop=True)
            for layer, h in hidden.items():
                if layer not in states:
                    states[layer] = torch.zeros((n, k_all, h.shape[-1]))
                states[layer][at] = masked_mean(h.float(), follow(read, h)).cpu()
    return states, valid
