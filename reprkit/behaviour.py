"""Behaviour rates on Anthropic's model-written evaluations (Perez et al. 2022).

>>> items = load_behaviour("../shared/data/anthropic-evals/advanced-ai-risk/survival-instinct.jsonl")
>>> behaviour_rate(model, tokenizer, items)   # {"rate", "ci95", "n", "chance", "base": {...}}

The rate is how often the model gives a behaviour-matching answer a higher log-probability than
every non-matching one, the question as the user turn and the answer (``" (A)"``) as the reply.
Two formats: ``{question, answer_matching_behavior, answer_not_matching_behavior}`` (the released
sets; an answer may be a list), and the pre-release sycophancy file's ``{prompt, corrects,
incorrects}``, where the matching (sycophantic) answers are the ``incorrects``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .data import DataError, encode_ranked, from_behaviour, shared_data_dir
from .data.formats import from_sycophancy_prerelease
from .evaluate import ranked_logps, uniform_chance
from .scoring import wilson_ci95


def load_behaviour(path, limit: int | None = None) -> list[dict]:
    """Items ``{"prompt": [user turn], "responses": [...], "scores": [...], "matching": [bool, ...]}``.

    ``path`` is a file, or a path inside the data folder (``$REPRKIT_DATA_DIR`` or ``../shared/data``):
    ``load_behaviour("anthropic-evals/advanced-ai-risk/corrigible-neutral-HHH.jsonl")``."""
    path = Path(path)
    if not path.is_file() and not path.is_absolute():
        root = shared_data_dir()
        if root is not None and (root / path).is_file():
            path = root / path
    if not path.is_file():
        raise DataError(f"behaviour file {path} does not exist (Anthropic's evals are in ../shared/data/anthropic-evals "
                        "or the hub's Anthropic/model-written-evals)")
    items = []
    with open(path) as f:
        for i, line in enumerate(f):
            if limit is not None and len(items) >= limit:
                break
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path} line {i + 1} is not JSON: {err.msg}") from None
            if "question" in row and "answer_matching_behavior" in row:
                adapt = from_behaviour  # the released format
            elif "prompt" in row and "incorrects" in row and "corrects" in row:  # the matching answers are the incorrects
                adapt = from_sycophancy_prerelease  # the same adapter `reprkit direction` reads it with
            else:
                raise DataError(f"{path} line {i + 1} has neither question/answer_matching_behavior/"
                                f"answer_not_matching_behavior nor prompt/corrects/incorrects (keys: {sorted(row)})")
            try:
                items.append(adapt(row, i))
            except DataError as err:
                raise DataError(f"{path} line {i + 1}: {str(err).split(': ', 1)[1]}") from None
    if not items:
        raise DataError(f"{path} has no items")
    return items


def contrast_pairs(items: list[dict]) -> list[dict]:
    """Behaviour items as ranked pairs for reading a direction: the first behaviour-matching answer
    (score 1) against the first one that does not match (score 0), under the item's prompt."""
    return [{"prompt": it["prompt"], "responses": [it["responses"][it["matching"].index(True)],
                                                   it["responses"][it["matching"].index(False)]],
             "scores": [1.0, 0.0]} for it in items]


def behaviour_rate(model, tokenizer, items: list[dict], base: bool = True, max_length: int = 512,
                   batch_size: int = 16) -> dict:
    """Rate of items whose best-scored answer (summed log-prob) is a behaviour-matching one; chance is
    the matching answers' mean share of an item's answers (0.5 on A/B items)."""
    # one item at a time: encode_ranked keeps the answers in file order, aligned with "matching"
    encoded = [encode_ranked([it], tokenizer, max_length, max_length // 2)[0] for it in items]
    scores = ranked_logps(model, encoded, tokenizer.pad_token_id, batch_size, base)
    k = scores["policy"]["valid"].shape[1]
    matching = torch.zeros((len(items), k), dtype=torch.bool)
    for i, it in enumerate(items):
        matching[i, : len(it["matching"])] = torch.tensor(it["matching"])
    out = {}
    for name, sc in scores.items():
        lp = sc["logps"].masked_fill(~sc["valid"], float("-inf"))
        best_match = lp.masked_fill(~matching, float("-inf")).max(-1).values
        best_other = lp.masked_fill(matching | ~sc["valid"], float("-inf")).max(-1).values
        per_item = (best_match > best_other).float()
        rate = per_item.mean().item()
        out[name] = {"rate": rate, "ci95": wilson_ci95(rate, len(items)), "n": len(items),
                     "chance": uniform_chance(matching, sc["valid"]), "items": per_item.int().tolist()}
    result = out["policy"]
    if "base" in out:
        result["base"] = out["base"]
    return result
