"""Format adapters: a dataset row (TRL pairs, GENIES score maps, HH transcripts, chat messages,
ranked lists, HelpSteer-style scored rows, Anthropic's model-written evaluations) -> an item ``{"prompt", "responses", "scores"}``."""

from __future__ import annotations

import math
from collections import defaultdict

from .items import DataError, Messages, log

HELPSTEER_SCORES = ("helpfulness", "correctness")


def _encodable(value: str, index: int, what: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise DataError(f"row {index}: {what} is not valid unicode ({err.reason} at {err.start})") from None
    return value


def _text(row: dict, key: str, index: int) -> str:
    value = row.get(key)
    if not isinstance(value, str):
        raise DataError(f"row {index}: field {key!r} is {'missing' if value is None else type(value).__name__}, "
                        f"expected a string (row has {sorted(map(str, row))})")
    if not value.strip():
        raise DataError(f"row {index}: field {key!r} is empty")
    return _encodable(value, index, f"field {key!r}")


_ROLES = ("system", "user", "assistant")


def check_item(item: dict, index: int) -> dict:
    """Every item, whatever its source format, leaves the adapters in one shape that tokenization
    and collation cannot choke on: a non-empty list of ``{role, content}`` string messages, at least
    two non-empty string responses, one float score per response."""
    prompt = item.get("prompt")
    if not isinstance(prompt, list) or not prompt:
        raise DataError(f"row {index}: the prompt must be a string or a non-empty list of messages")
    for m in prompt:
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in _ROLES:
            raise DataError(f"row {index}: prompt message {str(m)[:80]!r} must be {{'role': one of {_ROLES}, "
                            "'content': a string}")
        _encodable(m["content"], index, "a prompt message")
    responses = item.get("responses")
    if not isinstance(responses, list) or len(responses) < 2:
        raise DataError(f"row {index}: needs at least two responses")
    for r in responses:
        if not isinstance(r, str) or not r.strip():
            raise DataError(f"row {index}: a response is {'empty' if isinstance(r, str) else type(r).__name__}, "
                            "expected non-empty text")
        _encodable(r, index, "a response")
    scores = item.get("scores")
    if not isinstance(scores, list) or len(scores) != len(responses):
        raise DataError(f"row {index}: needs one score per response ({len(responses)})")
    return item


def _user(text: str) -> Messages:
    return [{"role": "user", "content": text}]


def from_pair(row: dict, index: int) -> dict:
    """TRL's ``{prompt, chosen, rejected}``: strings, or conversational message lists."""
    if isinstance(row.get("chosen"), list):
        return from_messages(row, index)
    prompt = _text(row, "prompt", index)
    return {"prompt": _user(prompt), "responses": [_text(row, "chosen", index), _text(row, "rejected", index)],
            "scores": [1.0, 0.0]}


def _answers(value, index: int, key: str) -> list[str]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values or not all(isinstance(v, str) and v.strip() for v in values):
        raise DataError(f"row {index}: {key!r} must be an answer or a list of answers (non-empty strings)")
    return list(values)


def from_behaviour(row: dict, index: int) -> dict:
    """Anthropic's model-written evaluations, ``{question, answer_matching_behavior,
    answer_not_matching_behavior}`` (an answer may be a list): the question as the user turn, the
    behaviour-matching answers first (score 1) and the others after (score 0), ``matching`` marking
    which. Read as pairs, a direction points toward the behaviour (what ``reprkit.steerability``
    measures); trained on as preferences, an adapter learns the behaviour."""
    match = _answers(row.get("answer_matching_behavior"), index, "answer_matching_behavior")
    other = _answers(row.get("answer_not_matching_behavior"), index, "answer_not_matching_behavior")
    return {"prompt": _user(_text(row, "question", index)), "responses": match + other,
            "scores": [1.0] * len(match) + [0.0] * len(other),
            "matching": [True] * len(match) + [False] * len(other)}


def from_sycophancy_prerelease(row: dict, index: int) -> dict:
    """The pre-release sycophancy file's ``{prompt, corrects, incorrects}``: the matching
    (sycophantic) answers are the ``incorrects``; read as ``from_behaviour``."""
    return from_behaviour({"question": row.get("prompt"), "answer_matching_behavior": row.get("incorrects"),
                           "answer_not_matching_behavior": row.get("corrects")}, index)


def from_genies(row: dict, index: int) -> dict:
    """GENIES: ``prompt`` (an Alpaca-formatted text) and ``responses``, a map from text to score."""
    prompt = _text(row, "prompt", index)
    responses = row.get("responses")
    if not isinstance(responses, dict) or len(responses) < 2:
        raise DataError(f"row {index}: 'responses' must map at least two response texts to scores")
    ranked = sorted(responses.items(), key=lambda kv: -float(kv[1] if kv[1] is not None else float("-inf")))
    for text, _ in ranked:
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"row {index}: a response in 'responses' is empty")
    return {"prompt": _user(prompt), "responses": [t for t, _ in ranked],
            "scores": [float(s) if s is not None else float("nan") for _, s in ranked]}


ASSISTANT_TAG = "\n\nAssistant:"


def parse_transcript(text: str, index: int) -> Messages:
    """``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` -> messages."""
    messages = []
    for chunk in text.split("\n\nHuman:")[1:]:
        human, *assistant = chunk.split(ASSISTANT_TAG)
        messages.append({"role": "user", "content": human.strip()})
        for a in assistant:
            messages.append({"role": "assistant", "content": a.strip()})
    if not messages:
        raise DataError(f"row {index}: no '\\n\\nHuman:' turn in the transcript")
    return messages


def from_hh(row: dict, index: int) -> dict:
    """HH-RLHF: whole ``chosen`` / ``rejected`` transcripts sharing everything up to the last
    ``\\n\\nAssistant:``; that shared part is the prompt."""
    chosen, rejected = _text(row, "chosen", index), _text(row, "rejected", index)
    cut = chosen.rfind(ASSISTANT_TAG)
    if cut < 0 or rejected[: cut + len(ASSISTANT_TAG)] != chosen[: cut + len(ASSISTANT_TAG)]:
        raise DataError(f"row {index}: chosen and rejected do not share a prompt ending in '\\n\\nAssistant:'")
    prompt = parse_transcript(chosen[:cut], index)
    c, r = chosen[cut + len(ASSISTANT_TAG):].strip(), rejected[cut + len(ASSISTANT_TAG):].strip()
    if not c or not r:
        raise DataError(f"row {index}: empty final assistant turn")
    return {"prompt": prompt, "responses": [c, r], "scores": [1.0, 0.0]}


def from_messages(row: dict, index: int) -> dict:
    """Chat ``chosen`` / ``rejected`` message lists (the last message is the assistant's answer);
    an optional ``prompt`` message list or string comes first."""
    sides = []
    for key in ("chosen", "rejected"):
        msgs = row.get(key)
        if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) and "content" in m for m in msgs):
            raise DataError(f"row {index}: {key!r} must be a non-empty list of {{role, content}} messages")
        sides.append(msgs)
    prompt = row.get("prompt") or []
    prompt = _user(prompt) if isinstance(prompt, str) else list(prompt)
    (*c_ctx, c_last), (*r_ctx, r_last) = sides
    if c_ctx != r_ctx:
        raise DataError(f"row {index}: chosen and rejected differ before their last message")
    if c_last.get("role") != "assistant" or r_last.get("role") != "assistant":
        raise DataError(f"row {index}: the last message of chosen and rejected must be the assistant's")
    if not str(c_last["content"]).strip() or not str(r_last["content"]).strip():
        raise DataError(f"row {index}: empty assistant message")
    return {"prompt": prompt + c_ctx, "responses": [c_last["content"], r_last["content"]], "scores": [1.0, 0.0]}


def from_ranked(row: dict, index: int) -> dict:
    """``{prompt, responses: [best, ..., worst]}`` (optionally with ``scores``)."""
    prompt = row.get("prompt")
    prompt = _user(_text(row, "prompt", index)) if not isinstance(prompt, list) else prompt
    responses = row.get("responses")
    if not isinstance(responses, list) or len(responses) < 2 or not all(isinstance(r, str) and r.strip() for r in responses):
        raise DataError(f"row {index}: 'responses' must be a list of at least two non-empty strings")
    scores = row.get("scores") or [float(len(responses) - i) for i in range(len(responses))]
    order = sorted(range(len(responses)), key=lambda i: -scores[i])
    return {"prompt": prompt, "responses": [responses[i] for i in order], "scores": [float(scores[i]) for i in order]}


def from_scored_rows(rows, score_columns=HELPSTEER_SCORES, ranking: str = "best_vs_worst") -> list[dict]:
    """Several rows per prompt, each ``{prompt, response, <score columns>}`` (HelpSteer's columns).

    The score of a response is the mean of ``score_columns`` (HelpSteer: helpfulness and
    correctness). ``ranking="best_vs_worst"`` keeps the best and the worst response per prompt;
    ``"full"`` keeps all, best first. Prompts whose responses all score the same are dropped.
    """
    if ranking not in ("best_vs_worst", "full"):
        raise DataError(f"ranking must be 'best_vs_worst' or 'full', not {ranking!r}")
    groups: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for i, row in enumerate(rows):
        prompt, response = _text(row, "prompt", i), _text(row, "response", i)
        try:
            score = sum(float(row[c]) for c in score_columns) / len(score_columns)
        except (KeyError, TypeError, ValueError):
            raise DataError(f"row {i}: needs numeric score columns {list(score_columns)}") from None
        groups[prompt].append((score, response))
    items = []
    for prompt, scored in groups.items():
        scored.sort(key=lambda sr: -sr[0])
        if len(scored) < 2 or scored[0][0] == scored[-1][0]:
            continue
        if ranking == "best_vs_worst":
            scored = [scored[0], scored[-1]]
        items.append({"prompt": _user(prompt), "responses": [r for _, r in scored], "scores": [s for s, _ in scored]})
    return items


def detect_format(columns) -> str:
    cols = set(columns)
    if "responses" in cols and "prompt" in cols:
        return "ranked"  # GENIES maps are told apart per row
    if {"chosen", "rejected"} <= cols:
        return "pair" if "prompt" in cols else "hh"
    if {"prompt", "response"} <= cols:
        return "scored"
    if {"question", "answer_matching_behavior", "answer_not_matching_behavior"} <= cols:
        return "behaviour"
    if {"prompt", "corrects", "incorrects"} <= cols:
        return "sycophancy-prerelease"
    raise DataError(f"cannot tell the format of a dataset with columns {sorted(cols)}; expected "
                    "{prompt, chosen, rejected}, {chosen, rejected} transcripts or messages, "
                    "{prompt, responses}, {prompt, response, helpfulness, correctness}, "
                    "{question, answer_matching_behavior, answer_not_matching_behavior} or "
                    "{prompt, corrects, incorrects}")


def to_items(rows, fmt: str = "auto", bad_rows: str = "raise", max_bad_fraction: float = 0.1,
             ranking: str = "best_vs_worst") -> list[dict]:
    """Adapt raw rows (an HF ``Dataset`` or a list of dicts) to items; errors name the row.

    ``ranking``: for scored rows (HelpSteer), keep the best and worst response per prompt
    (``"best_vs_worst"``) or all of them, best first (``"full"``, for Plackett-Luce).

    ``bad_rows="raise"`` stops at the first bad row. ``"skip"`` drops bad rows with one warning that
    counts them and names the first few, but still raises when more than ``max_bad_fraction`` of the
    rows are bad (that is a format mismatch, not a few broken rows).
    """
    rows = list(rows)
    if not rows:
        raise DataError("the dataset is empty")
    if bad_rows not in ("raise", "skip"):
        raise ValueError(f"bad_rows must be 'raise' or 'skip', not {bad_rows!r}")
    fmt = detect_format(rows[0].keys()) if fmt == "auto" else fmt
    if fmt == "scored":
        return from_scored_rows(rows, ranking=ranking)
    adapters = {"pair": from_pair, "hh": _hh_or_messages, "genies": from_genies, "ranked": _ranked_or_genies,
                "messages": from_messages, "behaviour": from_behaviour,
                "sycophancy-prerelease": from_sycophancy_prerelease}
    if fmt not in adapters:
        raise DataError(f"unknown format {fmt!r}; choose from {sorted(adapters) + ['scored', 'auto']}")
    items, errors = [], []
    for i, row in enumerate(rows):
        try:
            if not isinstance(row, dict):
                raise DataError(f"row {i}: expected a mapping of fields, got {type(row).__name__}")
            items.append(check_item(adapters[fmt](row, i), i))
        except (DataError, TypeError, ValueError, KeyError, AttributeError, IndexError) as err:
            if not isinstance(err, DataError):  # a malformed value the adapter did not foresee
                err = DataError(f"row {i}: {type(err).__name__}: {err}")
            if bad_rows == "raise":
                raise err from None
            errors.append(str(err))
    if errors:
        if len(errors) > max_bad_fraction * len(rows):
            hint = (" (is the format right?)" if len(errors) == len(rows) else
                    f": more than the {max_bad_fraction:g} share of bad rows that is skipped (--max-bad-rows); fix "
                    f"those rows, or raise --max-bad-rows to {math.ceil(100 * len(errors) / len(rows)) / 100:g} to skip them")
            raise DataError(f"{len(errors)} of {len(rows)} rows are bad{hint}. " + "; ".join(errors[:5])
                            + ("; ..." if len(errors) > 5 else ""))
        log.warning("skipped %d of %d bad rows: %s", len(errors), len(rows), "; ".join(errors[:3]))
    return items


def _hh_or_messages(row: dict, index: int) -> dict:
    return from_messages(row, index) if isinstance(row.get("chosen"), list) else from_hh(row, index)


def _ranked_or_genies(row: dict, index: int) -> dict:
    return from_genies(row, index) if isinstance(row.get("responses"), dict) else from_ranked(row, index)
