"""Sources: the embedded sets, GENIES, HH-RLHF, local files and hub datasets -> items, with split
slices; items -> pairs; GENIES' shift list."""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path

from .formats import to_items
from .items import DataError, prompt_key, shared_data_dir

log = logging.getLogger(__name__)

_HUB = {"genies": "wassname/genies_preferences", "hh-rlhf": "Anthropic/hh-rlhf"}
_EXTENSIONS = {".json": "json", ".jsonl": "json", ".gz": "json", ".csv": "csv", ".parquet": "parquet"}


def _check_text(path: Path) -> None:
    """A text file (json, jsonl, csv, gzipped or not) that holds no rows or is not UTF-8 gets one line
    naming the problem and where it is, before datasets reads it (its errors name neither)."""
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise DataError(f"{path} could not be read: {err}") from None
    if not data:
        raise DataError(f"{path} is empty: no rows to read (a preference file holds one JSON object per line)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise DataError(f"{path} is not UTF-8 text: line {line}, byte {column} is 0x{data[err.start]:02x}; "
                        "save the file as UTF-8") from None
    if not text.strip():
        raise DataError(f"{path} holds only blank lines: no rows to read")


def _load_file(path: Path):
    import datasets

    builder = _EXTENSIONS.get(path.suffix)
    if builder is None:
        raise DataError(f"{path}: unsupported file type; use .json, .jsonl, .jsonl.gz, .csv or .parquet")
    if builder != "parquet" and path.stat().st_size < (256 << 20):  # larger files: datasets' own errors
        _check_text(path)
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


def hub_unreachable() -> str | None:
    """Why the hub cannot be reached, found at once (offline mode set, or no connection to its host
    within 3 s), else None: a missing local set then fails in a second, not after datasets' retries."""
    from urllib.parse import urlparse

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{var} is set"
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    import socket

    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError as err:
        return f"{host} cannot be reached ({err.strerror or err})"
    return None


def _from_hub(source: str, hub_id: str, *args, **kwargs):
    """``datasets.load_dataset`` for a hub fallback; an unreachable hub (offline, no network, no
    such dataset) becomes a DataError naming where reprkit looked."""
    import datasets

    local = os.environ.get("REPRKIT_DATA_DIR")
    if why := hub_unreachable():
        raise DataError(f"{source}: not found locally ($REPRKIT_DATA_DIR={local or 'unset'}, ../shared/data) and the hub "
                        f"dataset {hub_id!r} could not be loaded ({why}). Set REPRKIT_DATA_DIR to a folder holding it, "
                        "or go online")
    try:
        return datasets.load_dataset(hub_id, *args, **kwargs)
    except Exception as err:  # ConnectionError, OfflineModeIsEnabled, DatasetNotFoundError, ...
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
        from ..embedded import PATH, TASKS

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
               bad_rows: str = "skip", ranking: str = "best_vs_worst", max_bad_fraction: float = 0.1) -> list[dict]:
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
                         ranking=ranking, max_bad_fraction=max_bad_fraction)
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


def shuffled(items: list, seed: int = 0) -> list:
    """``items`` in a seeded random order (Python's ``random.Random(seed)``): how a local file is
    split into read and held-out parts, since files are often ordered (the sycophancy file's first
    200 rows are one question). The same seed and length give the same order in every command."""
    import random

    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    return [items[i] for i in order]


def without_preference(items: list[dict], source: str) -> list[dict]:
    """Training items that say which response is preferred: an item whose responses are all the same
    text, or whose scores are all equal, carries no preference (DPO's margin is 0 whatever the
    weights; a hidden-state loss would train on an arbitrary order). Some: dropped, said in one
    warning with their rows. All: ``DataError`` saying what is wrong with the data."""
    same_text = [i for i, it in enumerate(items) if len({r.strip() for r in it["responses"]}) == 1]
    same_score = [i for i, it in enumerate(items) if i not in same_text and len(set(it["scores"])) == 1]
    bad = sorted(same_text + same_score)
    if not bad:
        return items

    def rows(idx: list[int]) -> str:
        return ", ".join(map(str, idx[:5])) + (", ..." if len(idx) > 5 else "")

    what = "; ".join(x for x in (
        f"{len(same_text)} with every response the same text (rows {rows(same_text)})" if same_text else "",
        f"{len(same_score)} with every response scored the same (rows {rows(same_score)})" if same_score else "") if x)
    if len(bad) == len(items):
        raise DataError(f"{source}: none of its {len(items)} rows prefers one response to another: {what}. "
                        "Check that chosen and rejected (or the scores) are the right columns")
    log.warning("%s: %d of %d rows prefer no response and are left out of training: %s", source, len(bad),
                len(items), what)
    keep = set(range(len(items))) - set(bad)
    return [it for i, it in enumerate(items) if i in keep]


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
            h = int(hashlib.sha1(prompt_key(item).encode()).hexdigest(), 16)
            chosen_others = [worst[h % len(worst)]]
        else:
            raise DataError(f"pair mode {mode!r} is not one of 'best_vs_worst', 'best_vs_all'")
        pairs += [{"prompt": item["prompt"], "chosen": best, "rejected": r} for r in chosen_others]
    return pairs


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
