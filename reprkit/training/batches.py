"""The training data as the loop sees it: encoded pairs (or ranked items) and eval sets, and a
resumable order of micro-batches."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .. import data as D
from ..config import TrainConfig, split_entries

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- data


def read_items(cfg: TrainConfig) -> dict:
    """The training and eval items of ``cfg``, read and checked before any model loads (bad rows,
    rows that prefer nothing, empty or broken files fail here, in a second, not after the model).
    ``load_pairs`` encodes them."""
    bad = dict(max_bad_fraction=cfg.max_bad_rows)
    out: dict = {"ranked": getattr(cfg.loss_fn(), "ranked", False)}
    if cfg.retain_data:
        out["retain"] = D.load_items(cfg.retain_data, cfg.train_split, limit=cfg.limit, **bad)
        out["reroute"] = D.load_items(cfg.reroute_data, cfg.train_split, limit=cfg.limit, **bad)
    else:
        out["train"] = D.without_preference(
            D.load_items(cfg.data, cfg.train_split, limit=cfg.limit, ranking=cfg.ranking, **bad), cfg.data)
    default, named = split_entries(cfg.eval_split)
    unknown = [name for name in named if name not in cfg.eval_data]
    if unknown:
        raise ValueError(f"--eval-split names {unknown}, which are not among --eval-data {list(cfg.eval_data)}")
    local = [s for s in cfg.eval_data if Path(s).is_file()]
    sliced = [s for s in cfg.eval_data if s not in local and s not in named]
    if "[" in default and local and sliced:
        log.warning("--eval-split %r applies to every eval set: %s get a slice of their own split too; name the "
                    "set it is for (--eval-split '%s=%s') to slice only that one", cfg.eval_split,
                    ", ".join(sliced), local[0], default)
    out["evals"] = {source: D.load_items(source, cfg.eval_split_for(source)) for source in cfg.eval_data}
    return out


def load_pairs(cfg: TrainConfig, tokenizer, items: dict | None = None
               ) -> tuple[list[dict], dict[str, list[dict]], dict[str, list], dict[str, int]]:
    """Encoded training pairs (or ranked items), encoded eval items (all their responses) per eval
    source, a few eval prompts per source, and per source how many of its scored items are also
    training items (a local file's every split is the same rows: its "test" split is not held out).
    ``items``: ``read_items(cfg)`` (read here when not given)."""
    items = items if items is not None else read_items(cfg)
    kw = dict(max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length, chat_template=cfg.chat_template)
    if items["ranked"]:  # all K responses of an item, best first
        pairs = items["train"]
        train_pairs = D.encode_ranked(pairs, tokenizer, **kw)
    elif cfg.retain_data:
        pairs = D.zip_retain_reroute(items["retain"], items["reroute"])
        train_pairs = D.encode_pairs(pairs, tokenizer, **kw)
    else:
        pairs = D.to_pairs(items["train"], cfg.pairs)
        train_pairs = D.encode_pairs(pairs, tokenizer, **kw)
    seen = {D.prompt_key(p) for p in pairs}
    evals, prompts, overlap = {}, {}, {}
    for source, scored in items["evals"].items():
        evals[source] = D.encode_ranked(scored[: cfg.eval_limit], tokenizer, **kw)
        prompts[source] = [it["prompt"] for it in scored[:1]]
        overlap[source] = sum(D.prompt_key(it) in seen for it in scored[: cfg.eval_limit])
        if overlap[source]:
            log.warning("%d of the %d items scored on %s %s are training prompts: its accuracy is not held out "
                        "(a local file's splits are the same rows; pass slices, e.g. --train-split 'train[:80%%]' "
                        "--eval-split 'train[80%%:]')", overlap[source], len(evals[source]), source, cfg.eval_split_for(source))
    return train_pairs, evals, prompts, overlap


def micro_batches(encoded: list[dict], batch_size: int, seed: int, start: int, pad_token_id: int,
                  rank: int = 0, world: int = 1, collate=D.collate):
    """Micro-batch ``start``, ``start + 1``, ... of a fixed order: epoch e is a permutation seeded with
    ``seed + e``, so resuming at any micro-batch reproduces the data order. Each process takes its
    share of a global batch of ``batch_size * world`` pairs."""
    per_epoch = len(encoded) // (batch_size * world)
    if per_epoch == 0:
        raise D.DataError(f"{len(encoded)} pairs is fewer than one batch of {batch_size * world}; lower --batch-size")
    m, perm_epoch, perm = start, -1, None
    while True:
        epoch, b = divmod(m, per_epoch)
        if epoch != perm_epoch:
            perm = torch.randperm(len(encoded), generator=torch.Generator().manual_seed(seed + epoch))
            perm_epoch = epoch
        global_idx = perm[b * batch_size * world: (b + 1) * batch_size * world]
        mine = global_idx[rank::world].tolist()
        batch = collate([encoded[i] for i in mine], pad_token_id)
        batch["index"] = torch.tensor(mine, dtype=torch.long)  # which pairs (the reference cache reads by it)
        yield batch
        m += 1


