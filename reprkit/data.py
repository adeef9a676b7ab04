"""Preference data: load, adapt formats, tokenize, collate with masks.

Every format becomes an *item*: ``{"prompt": [messages], "responses": [best, ..., worst],
"scores": [...]}``. Pair losses see ``{"prompt", "chosen", "rejected"}`` pairs made from items
(best vs worst, or best vs each other response); a pair is the K = 2 item.

>>> items = load_items("genies:alpaca_easy", split="train")          # local ../shared/data or the hub
>>> pairs = to_pairs(items, mode="best_vs_worst")
>>> encoded = encode_pairs(pairs, tokenizer, max_length=256, max_prompt_length=128)
>>> batch = collate(encoded[:4], pad_token_id=tokenizer.pad_token_id)   # chosen_/rejected_ ids, masks

Over 400 lines: sources, format adapters, tokenization with its truncation counts and collation
all work on the one item shape defined here; splitting it (sources / adapters / encoding) is
planned, not yet done.

Sources: ``embedded[:task]`` (shipped with reprkit), ``genies:<distribution>``,
``hh-rlhf:<subset>``, a local json / jsonl / jsonl.gz / csv / parquet file, or a hub dataset id
(``name`` or ``name:config``).
"""

from __future__ import annotations

import hashlib
import re
import logging
import os
from collections import defaultdict
from pathlib import Path

import torch

log = logging.getLogger(__name__)

Messages = list[dict]
_HUB = {"genies": "wassname/genies_preferences", "hh-rlhf": "Anthropic/hh-rlhf"}
_EXTENSIONS = {".json": "json", ".jsonl": "json", ".gz": "json", ".csv": "csv", ".parquet": "parquet"}
HELPSTEER_SCORES = ("helpfulness", "correctness")


class DataError(ValueError):
    """A dataset row or source that cannot be used; the message names the row and the fix."""


def shared_data_dir() -> Path | None:
    """``$REPRKIT_DATA_DIR``, or ``../shared/data`` next to the project or the working directory."""
    env = os.environ.get("REPRKIT_DATA_DIR")
    candidates = [Path(env)] if env else []
    candidates += [Path(__file__).resolve().parents[2] / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    return next((c for c in candidates if c.is_dir()), None)


# ---------------------------------------------------------------- format adapters (row -> item)


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


_ASSISTANT = "\n\nAssistant:"


def parse_transcript(text: str, index: int) -> Messages:
    """``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` -> messages."""
    messages = []
    for chunk in text.split("\n\nHuman:")[1:]:
        human, *assistant = chunk.split(_ASSISTANT)
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
    cut = chosen.rfind(_ASSISTANT)
    if cut < 0 or rejected[: cut + len(_ASSISTANT)] != chosen[: cut + len(_ASSISTANT)]:
        raise DataError(f"row {index}: chosen and rejected do not share a prompt ending in '\\n\\nAssistant:'")
    prompt = parse_transcript(chosen[:cut], index)
    c, r = chosen[cut + len(_ASSISTANT):].strip(), rejected[cut + len(_ASSISTANT):].strip()
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
    raise DataError(f"cannot tell the format of a dataset with columns {sorted(cols)}; expected "
                    "{prompt, chosen, rejected}, {chosen, rejected} transcripts or messages, "
                    "{prompt, responses} or {prompt, response, helpfulness, correctness}")


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
                "messages": from_messages}
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
            raise DataError(f"{len(errors)} of {len(rows)} rows are bad (is the format right?); first: {errors[0]}")
        log.warning("skipped %d of %d bad rows: %s", len(errors), len(rows), "; ".join(errors[:3]))
    return items


def _hh_or_messages(row: dict, index: int) -> dict:
    return from_messages(row, index) if isinstance(row.get("chosen"), list) else from_hh(row, index)


def _ranked_or_genies(row: dict, index: int) -> dict:
    return from_genies(row, index) if isinstance(row.get("responses"), dict) else from_ranked(row, index)


# ---------------------------------------------------------------- sources


def _load_file(path: Path):
    import datasets

    builder = _EXTENSIONS.get(path.suffix)
    if builder is None:
        raise DataError(f"{path}: unsupported file type; use .json, .jsonl, .jsonl.gz, .csv or .parquet")
    try:
        return datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as err:
        if builder == "json":
            _raise_bad_json_line(path)
        raise DataError(f"{path} could not be read as {builder}: {type(err).__name__}: {err}") from err


def _raise_bad_json_line(path: Path) -> None:
    """Name the first line of a JSON-lines file that is not a JSON object (datasets' own error names neither)."""
    import gzip
    import json

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        text = f.read()
    try:  # a whole-file JSON document (array) is fine as such
        json.loads(text)
        return
    except json.JSONDecodeError:
        pass
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            if not isinstance(json.loads(line), dict):
                raise DataError(f"{path} line {number} is not a JSON object; each line must be one record")
        except json.JSONDecodeError as err:
            raise DataError(f"{path} line {number} is not valid JSON ({err.msg} at column {err.colno}); "
                            "fix or remove that line") from None


def _holdout(rows: list, split: str, fraction: float = 0.1) -> list:
    """A deterministic train/test split for sources that ship one file."""
    n_test = max(1, int(len(rows) * fraction))
    return rows[:-n_test] if split == "train" else rows[-n_test:]


def _from_hub(source: str, hub_id: str, *args, **kwargs):
    """``datasets.load_dataset`` for a hub fallback; an unreachable hub (offline, no network, no
    such dataset) becomes a DataError naming where reprkit looked."""
    import datasets

    try:
        return datasets.load_dataset(hub_id, *args, **kwargs)
    except Exception as err:  # ConnectionError, OfflineModeIsEnabled, DatasetNotFoundError, ...
        local = os.environ.get("REPRKIT_DATA_DIR")
        raise DataError(
            f"{source}: not found locally ($REPRKIT_DATA_DIR={local or 'unset'}, ../shared/data) and the hub dataset "
            f"{hub_id!r} could not be loaded ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). "
            "Set REPRKIT_DATA_DIR to a folder holding it, or go online"
        ) from err


def load_rows(source: str, split: str = "train"):
    """Raw rows of a source (see the module docstring) and their format name."""
    kind, _, name = source.partition(":")
    shared = shared_data_dir()
    if kind == "embedded":
        from .embedded import PATH, TASKS

        task = name or "arithmetic"
        if task not in TASKS and task != "all":
            raise DataError(f"embedded task {task!r} does not exist; choose from {list(TASKS)} or 'all'")
        rows = _load_file(PATH)
        return [r for r in rows if r["split"] == split and (task == "all" or r["task"] == task)], "pair"
    if kind == "genies":
        if shared and (shared / "genies").is_dir():
            path = shared / "genies" / "distributions" / name / f"{split}.json"
            if not path.is_file():
                names = sorted(p.name for p in (shared / "genies" / "distributions").iterdir())
                raise DataError(f"no GENIES distribution {name!r} split {split!r}; distributions: {names}")
            return _load_file(path), "genies"
        return _from_hub(source, _HUB["genies"], name, split=split), "genies"
    if kind == "hh-rlhf":
        if shared and (shared / "hh-rlhf" / name).is_dir():
            rows = list(_load_file(shared / "hh-rlhf" / name / "test.jsonl.gz"))
            return _holdout(rows, split), "hh"  # only test splits are shipped: hold out the last 10%
        return _from_hub(source, _HUB["hh-rlhf"], data_dir=name or None, split=split), "hh"
    path = Path(source)
    if path.is_file():
        return _load_file(path), "auto"
    if path.suffix in _EXTENSIONS or source.startswith((".", "/")):
        raise DataError(f"data file {source} does not exist")
    hub_name, _, config = source.partition(":")
    return _from_hub(source, hub_name, config or None, split=split), "auto"


_SLICE = re.compile(r"^(\w+)\[(\d*)(%?):(\d*)(%?)\]$")


def split_slice(split: str) -> tuple[str, slice | None]:
    """``"train[:90%]"`` -> ``("train", <first 90%>)``; HF-style slices of a split, by count or percent."""
    m = _SLICE.match(split.replace(" ", ""))
    if not m:
        return split, None
    name, a, a_pct, b, b_pct = m.groups()
    return name, slice(int(a) if a else None, int(b) if b else None, ("%" if a_pct or b_pct else None))


def _apply_slice(rows: list, sl: slice) -> list:
    if sl.step == "%":
        n = len(rows)
        start = None if sl.start is None else n * sl.start // 100
        stop = None if sl.stop is None else n * sl.stop // 100
        return rows[start:stop]
    return rows[sl.start:sl.stop]


def load_items(source: str, split: str = "train", fmt: str = "auto", limit: int | None = None,
               bad_rows: str = "skip", ranking: str = "best_vs_worst") -> list[dict]:
    """Items of a source and split; ``limit`` keeps the first n. An empty result is an error.

    ``split`` may slice, as in HF datasets: ``"train[:90%]"``, ``"train[90%:]"``, ``"test[:100]"``.

    Bad rows are skipped with a counted warning by default (real datasets have a few, e.g. HH-RLHF
    rows with an empty last answer); ``bad_rows="raise"`` stops at the first, naming it.
    """
    base_split, sl = split_slice(split)
    rows, native = load_rows(source, base_split)
    if sl is not None:
        rows = _apply_slice(list(rows), sl)
    rows = list(rows)[:limit] if limit else rows
    try:
        items = to_items(rows, native if fmt == "auto" and native != "auto" else fmt, bad_rows=bad_rows,
                         ranking=ranking)
    except DataError as err:
        raise DataError(f"{source} ({split}): {err}") from None
    if not items:
        raise DataError(f"{source} ({split}) has no usable items")
    return items


def zip_retain_reroute(retain: list[dict], reroute: list[dict]) -> list[dict]:
    """Pairs from two separate sets (circuit breakers): the best response of each ``retain`` item is
    the chosen side, the best response of each ``reroute`` item (e.g. a harmful completion) the
    rejected side, each with its own prompt. The shorter set is cycled."""
    n = max(len(retain), len(reroute))
    return [
        {"prompt": retain[i % len(retain)]["prompt"], "chosen": retain[i % len(retain)]["responses"][0],
         "rejected_prompt": reroute[i % len(reroute)]["prompt"], "rejected": reroute[i % len(reroute)]["responses"][0]}
        for i in range(n)
    ]


def to_pairs(items: list[dict], mode: str = "best_vs_worst") -> list[dict]:
    """Items -> ``{prompt, chosen, rejected}`` pairs.

    ``best_vs_worst``: one pair per item (ties for worst broken by a fixed hash of the prompt, so
    GENIES' three equally-scored wrong answers are used evenly); ``best_vs_all``: one pair per
    other response.
    """
    pairs = []
    for item in items:
        best, others, scores = item["responses"][0], item["responses"][1:], item["scores"][1:]
        if mode == "best_vs_all":
            chosen_others = others
        elif mode == "best_vs_worst":
            low = min(scores)
            worst = [o for o, s in zip(others, scores) if s == low] or others[-1:]
            h = int(hashlib.sha1(str(item["prompt"]).encode()).hexdigest(), 16)
            chosen_others = [worst[h % len(worst)]]
        else:
            raise DataError(f"pair mode {mode!r} is not one of 'best_vs_worst', 'best_vs_all'")
        pairs += [{"prompt": item["prompt"], "chosen": best, "rejected": r} for r in chosen_others]
    return pairs


# ---------------------------------------------------------------- tokenization and collation


def render_prompt(tokenizer, messages: Messages, chat: bool) -> str:
    if chat:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    turns = "".join(f"\n\n{'Human' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in messages)
    return turns + _ASSISTANT


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
    chat = bool(tokenizer.chat_template) if chat_template is None else chat_template
    if chat and not tokenizer.chat_template:
        raise ValueError("chat_template=True but the tokenizer has no chat template")
    out, dropped = Encoded(), 0
    cache: dict[str, list[int]] = {}

    def prompt_ids(messages):
        text = render_prompt(tokenizer, messages, chat)
        if text not in cache:
            cache[text] = tokenizer(text, add_special_tokens=not chat)["input_ids"]
        return text, cache[text]

    for pair in pairs:
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
    out.dropped, out.limits = dropped, {"max_length": max_length, "max_prompt_length": max_prompt_length}
    if dropped:
        log.warning("dropped %d of %d pairs with no completion tokens left after truncation", dropped, len(pairs))
    if not out:
        raise DataError(f"no pairs left after tokenization and truncation (max_length {max_length}, "
                        f"max_prompt_length {max_prompt_length}); raise max_length")
    if warn:
        from .truncation import warn_if_cut

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


def pair_sides(batch: dict) -> tuple[dict, torch.Tensor, int]:
    """A collated pair batch as one forward: chosen rows then rejected rows, ``({input_ids,
    attention_mask}, completion_mask, number of pairs)``."""
    ids = torch.cat([batch["chosen_input_ids"], batch["rejected_input_ids"]])
    attn = torch.cat([batch["chosen_attention_mask"], batch["rejected_attention_mask"]])
    comp = torch.cat([batch["chosen_completion_mask"], batch["rejected_completion_mask"]])
    return {"input_ids": ids, "attention_mask": attn}, comp, batch["chosen_input_ids"].shape[0]


def encode_ranked(items: list[dict], tokenizer, max_length: int = 256, max_prompt_length: int = 128,
                  chat_template: bool | None = None, max_responses: int | None = None) -> Encoded:
    """Tokenize items with all their responses, best first (for Plackett-Luce losses and K-way
    scoring): ``{"prompt_ids", "responses_ids": [[...], ...], "suffix_lens": [...]}`` plus the cut
    fields of ``Encoded`` (the most cut from any response). Truncation as in ``encode_pairs``; an
    item whose best response has no token left is dropped and counted."""
    pairs = [{"prompt": it["prompt"], "chosen": it["responses"][0], "rejected": r}
             for it in items for r in it["responses"][1:(max_responses or len(it["responses"]))]]
    encoded = encode_pairs(pairs, tokenizer, max_length, max_prompt_length, chat_template, warn=False)
    out: dict[tuple, dict] = {}
    for e in encoded:  # regroup the pairs of one item (they share prompt and best response)
        key = (tuple(e["chosen_prompt_ids"]), tuple(e["chosen_ids"]))
        cut = {k: e[k] for k in ("prompt_cut", "response_cut", "full_prompt_length", "full_length")}
        entry = out.setdefault(key, {"prompt_ids": e["chosen_prompt_ids"], "responses_ids": [e["chosen_ids"]],
                                     "suffix_lens": [e["chosen_suffix_len"]], **cut})
        entry["responses_ids"].append(e["rejected_ids"])
        entry["suffix_lens"].append(e["rejected_suffix_len"])
        entry.update(_merge_cut({k: entry[k] for k in cut}, cut))
    result = Encoded(out.values())
    result.dropped = len(items) - len(result)
    result.limits = encoded.limits
    from .truncation import warn_if_cut

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


def genies_shifts(path=None) -> list[dict]:
    """GENIES' distribution shifts: ``[{source, target[, target_reference], label, category}]``."""
    import json

    if path is None:
        root = shared_data_dir()
        if root is None or not (root / "genies/distribution_shifts/GENIES.json").is_file():
            raise DataError("GENIES' shift list is read from ../shared/data/genies/distribution_shifts/GENIES.json "
                            "(set REPRKIT_DATA_DIR to the folder that holds genies/)")
        path = root / "genies/distribution_shifts/GENIES.json"
    return json.loads(Path(path).read_text())


def shift_sources(source: str) -> list[str]:
    """The eval sources of the GENIES shift that trains on ``source``: source, target(s), reference."""
    shifts = [s for s in genies_shifts() if s["source"] == source]
    if not shifts:
        raise DataError(f"no GENIES shift has source {source!r}; sources: {sorted({s['source'] for s in genies_shifts()})}")
    names = [source]
    for s in shifts:
        names += [s["target"]] + ([s["target_reference"]] if s.get("target_reference") else [])
    return [f"genies:{n}" for n in dict.fromkeys(names)]
