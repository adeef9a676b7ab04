"""Scores of the comparison grid: each eval set of a cell (log-probs under every rule, a read
direction's projections, or the model-free length baselines), with per-item outcomes under stable
item ids so that every difference is paired; the retain perplexity, samples and behaviour columns;
and the lengths check that refuses a grid whose sets would be cut."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from reprkit import data as D
from reprkit.evaluate import generate_samples, item_accuracy, perplexity_ratio, sequence_nll
from reprkit.frozen import adapter_disabled
from reprkit.runlog import write_json
from reprkit.scoring import item_id, item_ids  # noqa: F401 (the grid's ids are the library's)

from .settings import Grid


def eval_prompt_length(grid: Grid) -> int:
    return grid.eval_max_prompt_length or grid.eval_max_length // 2


def encode_set(grid: Grid, tok, source: str, split: str, limit: int | None) -> list[dict]:
    items = D.load_items(source, split, limit=limit)
    return D.encode_ranked(items, tok, grid.eval_max_length, eval_prompt_length(grid))


ITEM_KEYS = ("correct", "margin", "correct_sum", "margin_sum", "logps", "n_tokens", "shortest", "longest")


def score(model, tok, encoded: list[dict]) -> dict:
    """item_accuracy without the frozen model's pass, with per-item outcomes keyed by item id: under
    the mean and the sum rule, each response's summed log-prob and token count (the ratio rule is
    computed against the base cell's, on the same items), the length-only baselines; and what
    truncation cut (``truncation``)."""
    res = item_accuracy(model, encoded, tok.pad_token_id, base=False)
    items = res.pop("items")
    res["items"] = {"id": items["id"] if "id" in items else item_ids(encoded)}
    for key in ITEM_KEYS:
        values = items[key]
        res["items"][key] = [round(m, 5) for m in values] if key.startswith("margin") else values
    return res


def eval_sets(grid: Grid, source: str, targets: list[str]) -> dict[str, tuple[str, str, int | None]]:
    """column -> (dataset, split, limit) of the final evaluation."""
    cols = {"source test": (grid.spec(source, grid.test_split), grid.test_split, grid.eval_limit)}
    for t in targets:
        cols[f"target {t}"] = (grid.spec(t, grid.test_split), grid.test_split, grid.eval_limit)
    return cols


def curve_sets(grid: Grid, source: str, targets: list[str]) -> dict[str, tuple[str, str, int | None]]:
    cols = {"source val": (grid.spec(source, grid.val_split), grid.val_split, grid.val_limit)}
    for t in targets:
        cols[f"target {t}"] = (grid.spec(t, grid.test_split), grid.test_split, grid.curve_target_limit)
    return cols


def score_direction(grid: Grid, model, tok, direction, source: str, split: str, limit: int | None) -> dict:
    """As ``score``, ranking responses by their projection on a read direction (the mms method)."""
    direction, layer = direction
    items = D.load_items(source, split, limit=limit)
    encoded = D.encode_ranked(items, tok, grid.eval_max_length, eval_prompt_length(grid))
    ids = item_ids(encoded)
    res = direction.score(model, tok, items, layer, encoded=encoded)  # tokenized once, for the ids and the score
    items_out = res.pop("items")
    res["items"] = {"id": ids, "correct": items_out["correct"], "margin": [round(m, 5) for m in items_out["margin"]]}
    return res


def score_length(grid: Grid, tok, source: str, split: str, limit: int | None) -> dict:
    """The model-free length baselines as a method's scores: ``correct`` is "prefer the shortest"
    (ties split), ``correct_longest`` "prefer the longest"."""
    from reprkit.scoring import length_baseline
    from reprkit.truncation import truncation_report

    encoded = encode_set(grid, tok, source, split, limit)
    lb = length_baseline(encoded)
    k = [len(e["responses_ids"]) for e in encoded]
    return {"n": len(encoded), "accuracy_mean": lb["accuracy_shortest"], "accuracy_longest": lb["accuracy_longest"],
            "chance": sum(1 / x for x in k) / len(k), "rule": lb["rule"], "truncation": truncation_report(encoded),
            "items": {"id": item_ids(encoded), "correct": lb["shortest"], "correct_longest": lb["longest"]}}


def score_sets(grid: Grid, model, tok, sets: dict, direction=None, length: bool = False,
               partial: Path | None = None) -> dict:
    """Score each eval set (log-probs, projections on ``direction = (Direction, layer)``, or with
    ``length`` the length-only baselines). With ``partial`` (a json file) each finished set is
    written there as it is done and read back instead of scored again: a sitting that stops in the
    middle of a cell's final scoring loses one set at most."""
    out = json.loads(partial.read_text()) if partial is not None and partial.is_file() else {}
    out = {col: res for col, res in out.items() if col in sets}
    for col, (d, s, lim) in sets.items():
        if col in out:
            continue
        if length:
            res = score_length(grid, tok, d, s, lim)
        elif direction is not None:
            res = score_direction(grid, model, tok, direction, d, s, lim)
        else:
            res = score(model, tok, encode_set(grid, tok, d, s, lim))
        out[col] = {"data": d, "split": s, **res}
        if partial is not None:
            write_json(partial, out)
    return {col: out[col] for col in sets}


def retain_ratio(grid: Grid, model, tok, frozen: Path | None = None) -> dict:
    """The retain set's perplexity ratio, the adapted model against the frozen one. With ``frozen``
    (a json file) the frozen model's per-sequence NLL is read from there when it was computed on the
    same items (their token ids' hash, the model), and written there the first time: every run of a
    grid shares it, which halves this measurement's cost."""
    pairs = D.to_pairs(D.load_items(grid.retain_data, "test", limit=grid.retain_limit))
    encoded = D.encode_pairs(pairs, tok, grid.eval_max_length, eval_prompt_length(grid))
    nll = None
    if frozen is not None:
        ids = [[e["chosen_prompt_ids"], e["chosen_ids"]] for e in encoded]
        key = hashlib.sha1(json.dumps([grid.model, ids]).encode()).hexdigest()
        saved = json.loads(frozen.read_text()) if frozen.is_file() else {}
        if saved.get("key") == key:
            nll = saved["nll"]
        else:
            with adapter_disabled(model):
                nll = sequence_nll(model, encoded, tok.pad_token_id)[0].tolist()
            write_json(frozen, {"key": key, "model": grid.model, "data": grid.retain_data, "n": len(encoded),
                                "nll": nll})
    return {"data": grid.retain_data, **perplexity_ratio(model, encoded, tok.pad_token_id, frozen_nll=nll)}


def samples(grid: Grid, model, tok, target: str) -> list[dict]:
    items = D.load_items(grid.spec(target, grid.test_split), grid.test_split, limit=grid.n_samples)
    return generate_samples(model, tok, [it["prompt"] for it in items], max_new_tokens=48)


def behaviour_columns(grid: Grid, model, tok) -> dict:
    """Behaviour the method was not trained on: TruthfulQA MC1/MC2 and the sycophancy rate on
    fixed subsets (the first n questions / rows)."""
    from reprkit.behaviour import behaviour_rate, load_behaviour
    from reprkit.evaluate import truthfulqa_mc

    out = {}
    if grid.truthfulqa_limit:
        tq = truthfulqa_mc(model, tok, limit=grid.truthfulqa_limit, base=False)
        for key, m, value in (("truthfulqa_mc1", "mc1", "accuracy"), ("truthfulqa_mc2", "mc2", "score")):
            out[key] = {"value": tq[m][value], "ci95": tq[m]["ci95"], "n": tq[m]["n"], "chance": tq[m]["chance"]}
    root = D.shared_data_dir()
    files = sorted((root / "anthropic-evals" / "sycophancy").glob("*.jsonl")) if root else []
    if grid.sycophancy_limit and files:
        items = letter_balanced(load_behaviour(files[0]), grid.sycophancy_limit)
        res = behaviour_rate(model, tok, items, base=False)
        out["sycophancy"] = {"value": res["rate"], "ci95": res["ci95"], "n": res["n"], "file": files[0].name,
                             "subset": BALANCED, "chance": res["chance"]}
    return out


def behaviour_chance(key: str, column: dict) -> float | None:
    """Chance of a behaviour column: a uniform pick among each item's answers (MC2: the true answers'
    share). Recorded by cells scored since it was added; for older cells computed from the same
    data subset, no model needed; None where the data is not here."""
    from statistics import mean

    from reprkit.behaviour import load_behaviour
    from reprkit.evaluate import load_truthfulqa

    if "chance" in column:
        return column["chance"]
    try:
        if key in ("truthfulqa_mc1", "truthfulqa_mc2"):
            targets = [r[key[-3:] + "_targets"] for r in load_truthfulqa()[: column["n"]]]
            return mean(sum(t.values()) / len(t) for t in targets)
        root = D.shared_data_dir()
        if key == "sycophancy" and root and column.get("subset") == BALANCED:
            items = letter_balanced(load_behaviour(root / "anthropic-evals" / "sycophancy" / column["file"]),
                                    column["n"])
            return mean(sum(it["matching"]) / len(it["matching"]) for it in items)
    except (D.DataError, OSError):
        return None
    return None


BALANCED = "letter-balanced"


def letter_balanced(items: list[dict], n: int) -> list[dict]:
    """The first ``n`` rows taken in turn from each behaviour-matching answer (" (A)", " (B)", ...),
    in file order: a model's preference for one answer letter then cannot pass for the behaviour
    (the file's first 200 rows all have the sycophantic answer at " (A)")."""
    groups: dict[str, list[dict]] = {}
    for it in items:
        groups.setdefault(it["responses"][it["matching"].index(True)].strip(), []).append(it)
    out, queues = [], [list(g) for g in groups.values()]
    while len(out) < n and any(queues):
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop(0))
    return out


def check_lengths(grid: Grid, tok, shifts: dict[str, list[str]]) -> dict:
    """What truncation cuts in every training and eval set of the grid, at its lengths (tokenizer
    only, no model); with ``max_cut_share``, refuse the grid naming each set cut more and the lengths
    that would fit."""
    from reprkit.truncation import describe, truncation_report

    reports, bad = {}, []
    for source, targets in shifts.items():
        items = D.load_items(grid.spec(source, grid.train_split), grid.train_split, limit=grid.train_limit)
        sets = {f"train {grid.spec(source, grid.train_split)} {grid.train_split}": D.encode_pairs(D.to_pairs(items), tok, grid.max_length,
                                                                      grid.max_prompt_length, warn=False)}
        if grid.ceiling_methods:  # each target trained on itself, at the ceiling lengths
            ceil = grid.for_ceiling()
            for t in targets:
                name = f"train {grid.spec(t, grid.train_split)} {grid.train_split} (ceiling)"
                if name not in sets:
                    pairs = D.to_pairs(D.load_items(grid.spec(t, grid.train_split), grid.train_split, limit=grid.train_limit))
                    sets[name] = D.encode_pairs(pairs, tok, ceil.max_length, ceil.max_prompt_length, warn=False)
                for d, split, lim in curve_sets(grid, t, []).values():
                    name = f"eval {d} {split}" + (f"[:{lim}]" if lim else "")
                    if name not in sets:
                        sets[name] = encode_set(grid, tok, d, split, lim)
        for d, split, lim in [*eval_sets(grid, source, targets).values(), *curve_sets(grid, source, targets).values()]:
            name = f"eval {d} {split}" + (f"[:{lim}]" if lim else "")
            if name not in sets:
                sets[name] = encode_set(grid, tok, d, split, lim)
        for name, enc in sets.items():
            rep = reports[name] = truncation_report(enc)
            print(f"lengths {name}: {describe(rep)}", flush=True)
            if grid.max_cut_share is not None and rep["share"] > grid.max_cut_share:
                bad.append(f"{name}: {describe(rep)}")
    if bad:
        raise SystemExit(f"refused: more than {grid.max_cut_share:.0%} of items cut in {len(bad)} set(s); raise the "
                         "grid's max_length / max_prompt_length (training; ceiling_max_length / "
                         "ceiling_max_prompt_length for a ceiling) or eval_max_length / "
                         "eval_max_prompt_length (scoring), or leave the shift out:\n  " + "\n  ".join(bad))
    return reports
