"""Minutes per comparison-grid cell, before and after the throughput work, part by part.

    python experiments/bench/grid_throughput.py [--steps 12] [--items 40] [--repeats 2] [--threads 2] [--limit 64]

A grid cell (``experiments/compare.py``, ``experiments/grids/decisive.json``) is one epoch of a
GENIES source's ``train[:90%]`` (540 pairs: 135 steps of 4, max length 192) plus scoring: 4 curve
points of 60 source-validation and 60 target items, then the whole test split of source and target
(250 items each). Running a whole cell twice would take an hour, so each part is timed on a sample
and the cell is composed from the rates:

- training step, per method (DPO, ReprPO): the median ``step_time`` of ``--steps`` steps after the
  first two, in a fresh child process per variant, with the frozen pass run every step ("before"),
  read from ``--reference-cache`` ("after, cache"), or read from it with each pair's prompt run once
  for both completions ("after": the grid's setting, ``shared_prompt``), and with ``--bf16`` also
  the cache under bf16 autocast ("after, bf16"); the one-time cache build is timed too (one child builds it over ``--limit`` training
  pairs, a second reads it; the build is the difference of their wall times, scaled to 540 pairs).
  Peak memory is the child's peak RSS growth after model load, split into anonymous (allocated)
  and file-backed (memory-mapped weights and cache pages read) by sampling /proc. With
  ``--live-memory`` the children run with glibc's mmap threshold fixed at 128 KiB
  (``MALLOC_MMAP_THRESHOLD_``), so freed blocks go back to the OS and the peak follows live memory
  (step times are then not the default allocator's: read memory from that run, times from one
  without it);
- scoring: seconds per item of ``item_accuracy`` on ``--items`` alpaca_easy test items, one
  sequence per response ("before"), the shared-prompt path with length-chunked responses ("after") and (``--bf16``) the
  shared-prompt path under bf16 autocast, interleaved in one process.

Cell minutes = 135 x step + 980 x item (+ the cache build once per source and method family,
shown apart). Only for a machine with nothing else running.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import RssParts, interleaved, peak_growth_mb, reset_peak, run_child, save, table  # noqa: E402

SOURCE, BATCH, MAX_LEN, MAX_PROMPT = "alpaca_easy", 4, 192, 96
CELL_STEPS, CELL_ITEMS = 135, 4 * (60 + 60) + 250 + 250


def child_train(loss: str, steps: int, cache: str, threads: int, limit: int | None, mixed: str = "no",
                shared_prompt: bool = False) -> dict:
    from reprkit.config import LoraSettings, preset
    from reprkit.models import load_model
    from reprkit.runlog import read_jsonl
    from reprkit.train import train

    torch.set_num_threads(threads)
    model, tok = load_model()
    base_kb = reset_peak()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = preset(loss)
        cfg.data, cfg.train_split, cfg.eval_data = f"genies:{SOURCE}", "train[:90%]", ()
        cfg.steps, cfg.batch_size, cfg.max_length, cfg.max_prompt_length = steps, BATCH, MAX_LEN, MAX_PROMPT
        cfg.lora, cfg.warmup_steps, cfg.save_every, cfg.n_samples, cfg.progress = LoraSettings(r=16, alpha=32), 1, 0, 0, False
        cfg.run_dir, cfg.reference_cache, cfg.limit = str(Path(tmp) / "run"), cache or None, limit
        cfg.mixed_precision, cfg.shared_prompt = mixed, shared_prompt
        t0 = time.perf_counter()
        with RssParts() as parts:
            run = train(cfg, model, tok)
        wall = time.perf_counter() - t0
        rows, _ = read_jsonl(run / "metrics.jsonl")
    times = [r["step_time"] for r in rows][2:] or [r["step_time"] for r in rows]
    return {"step_s": statistics.median(times), "wall_s": wall, "peak_mb": peak_growth_mb(base_kb),
            **parts.growth_mb()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--items", type=int, default=40)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--losses", nargs="+", default=["dpo", "reprpo"])
    p.add_argument("--limit", type=int, default=64, help="training items read (the cache covers these; its build is scaled to 540)")
    p.add_argument("--live-memory", action="store_true",
                   help="children with MALLOC_MMAP_THRESHOLD_=131072: peak RSS ~ live peak (times then not comparable)")
    p.add_argument("--skip-eval", action="store_true", help="training steps only (with --live-memory, say)")
    p.add_argument("--shared-prompt", action="store_true", help="(with --child) train with shared-prompt pairs")
    p.add_argument("--child", action="store_true")
    p.add_argument("--loss")
    p.add_argument("--cache", default="")
    p.add_argument("--mixed", default="no")
    p.add_argument("--bf16", action="store_true",
                   help="also time bf16 autocast (only worth it on a CPU with native bf16: AVX512-BF16 or AMX)")
    args = p.parse_args()
    if args.child:
        print(json.dumps(child_train(args.loss, args.steps, args.cache, args.threads, args.limit, args.mixed,
                                     args.shared_prompt)))
        return

    script = str(Path(__file__).resolve())
    limit = ["--limit", str(args.limit)] if args.limit else []
    common = ["--steps", str(args.steps), "--threads", str(args.threads), *limit]
    short = ["--steps", "3", "--threads", str(args.threads), *limit]
    pairs = args.limit or 540
    env = {"MALLOC_MMAP_THRESHOLD_": "131072"} if args.live_memory else None
    train_rows, raw = [], {"train": {}, "eval": {}}
    with tempfile.TemporaryDirectory() as cache_root:
        for loss in args.losses:
            cache = str(Path(cache_root) / loss)
            before = run_child(script, "--loss", loss, *common, env=env)
            build = run_child(script, "--loss", loss, "--cache", cache, *short, env=env)
            hit = run_child(script, "--loss", loss, "--cache", cache, *short, env=env)
            cached = run_child(script, "--loss", loss, "--cache", cache, *common, env=env)
            after = run_child(script, "--loss", loss, "--cache", cache, "--shared-prompt", *common, env=env)
            raw["train"][loss] = {"before": before, "build": build, "hit": hit, "after_cache": cached, "after": after}
            variants = [("before", before, None, None), ("after, cache", cached, build, hit), ("after", after, None, None)]
            if args.bf16:
                bf16 = ["--mixed", "bf16"]
                raw["train"][loss].update(
                    build_bf16=run_child(script, "--loss", loss, "--cache", cache, *short, *bf16, env=env),
                    hit_bf16=run_child(script, "--loss", loss, "--cache", cache, *short, *bf16, env=env),
                    after_bf16=run_child(script, "--loss", loss, "--cache", cache, *common, *bf16, env=env))
                t = raw["train"][loss]
                variants.append(("after, bf16", t["after_bf16"], t["build_bf16"], t["hit_bf16"]))
            for name, run, b, h in variants:
                build_min = (b["wall_s"] - h["wall_s"]) / 60 * 540 / pairs if b else None
                train_rows.append([loss, name, run["step_s"], run["step_s"] / before["step_s"], build_min, run["peak_mb"],
                                   run["peak_anon_mb"], run["peak_file_mb"]])
    print(table(train_rows, ["loss", "", "step s", "x before", "cache build min (540 pairs)", "peak MB",
                             "of it anon MB", "file MB"]))
    if args.skip_eval:
        save("grid_throughput_live" if args.live_memory else "grid_throughput_train",
             {**raw, "args": vars(args)})
        return

    from reprkit import data as D
    from reprkit.evaluate import item_accuracy
    from reprkit.models import load_model

    torch.set_num_threads(args.threads)
    model, tok = load_model()
    items = D.load_items(f"genies:{SOURCE}", "test", limit=args.items)
    enc = D.encode_ranked(items, tok, 256, 128)
    def bf16_shared():
        with torch.autocast("cpu", torch.bfloat16):
            return item_accuracy(model, enc, tok.pad_token_id, base=False, shared_prompt=True)

    fns = {"one_sequence": lambda: item_accuracy(model, enc, tok.pad_token_id, base=False, shared_prompt=False),
           "shared_prompt": lambda: item_accuracy(model, enc, tok.pad_token_id, base=False, shared_prompt=True)}
    if args.bf16:
        fns["shared_prompt_bf16"] = bf16_shared
    ev = interleaved(fns, args.repeats, reference="one_sequence", warmup=0)
    per_item = {k: v["median_s"] / len(enc) for k, v in ev.items()}
    raw["eval"] = {k: {**v, "per_item_s": per_item[k]} for k, v in ev.items()}
    print(table([[k, per_item[k], ev[k]["ratio"]] for k in ev], ["scoring", "s per item", "x one_sequence"]))

    rows = []
    for loss, t in raw["train"].items():
        whens = [("before", t["before"]["step_s"], per_item["one_sequence"]),
                 ("after", t["after"]["step_s"], per_item["shared_prompt"])]
        if args.bf16:
            whens.append(("after, bf16", t["after_bf16"]["step_s"], per_item["shared_prompt_bf16"]))
        for when, step, item in whens:
            train_min, eval_min = CELL_STEPS * step / 60, CELL_ITEMS * item / 60
            rows.append([loss, when, train_min, eval_min, train_min + eval_min, train_min / (train_min + eval_min)])
    print(table(rows, ["cell", "", "train min", "score min", "cell min", "train share"]))
    save("grid_throughput", {**raw, "cells": rows, "args": vars(args), "cell_steps": CELL_STEPS,
                             "cell_items": CELL_ITEMS})


if __name__ == "__main__":
    main()
