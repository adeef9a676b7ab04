"""``reprkit train --dry-run``: what a run will cost, measured on two of its own steps (the first
on its longest pairs, for peak memory; the second on its first batch, for time), printed before
anything is written."""

from __future__ import annotations

import torch

from .. import data as D
from ..config import TrainConfig


class DryRun(Exception):
    """``--dry-run`` measured what it needed; ``report`` is what it prints."""

    def __init__(self, report: str):
        super().__init__(report)
        self.report = report


def pair_tokens(e: dict) -> int:
    """Tokens one encoded pair (or ranked item) puts through the model: each response with its prompt."""
    if "responses_ids" in e:
        return sum(len(e["prompt_ids"]) + len(r) for r in e["responses_ids"])
    return sum(len(e[f"{side}_prompt_ids"]) + len(e[f"{side}_ids"]) for side in ("chosen", "rejected"))


def longest_pieces(encoded: list[dict], cfg: TrainConfig, pad_token_id: int, ranked: bool) -> list[dict]:
    """The micro-batches of one step made of the longest pairs (the run's peak activation memory)."""
    order = sorted(range(len(encoded)), key=lambda i: -pair_tokens(encoded[i]))
    collate = D.collate_ranked if ranked else D.collate
    out = []
    for a in range(cfg.grad_accum):
        idx = order[a * cfg.batch_size:(a + 1) * cfg.batch_size] or order[: cfg.batch_size]
        batch = collate([encoded[i] for i in idx], pad_token_id)
        batch["index"] = torch.tensor(idx, dtype=torch.long)
        out.append(batch)
    return out


def peak_memory(accelerator) -> tuple[float, str]:
    """Bytes at the process's peak so far, and what was counted: the accelerator's allocations, or
    the resident set (Linux / macOS) on a CPU."""
    if accelerator.device.type == "cuda":
        return float(torch.cuda.max_memory_allocated(accelerator.device)), "GPU memory allocated by torch"
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return float(rss if sys.platform == "darwin" else rss * 1024), "resident memory of the process (peak)"


def dry_run_report(cfg: TrainConfig, encoded: list[dict], start: int, step_seconds: float, accelerator) -> str:
    per_pair = [pair_tokens(e) for e in encoded]
    total = sum(per_pair)
    steps = cfg.steps - start
    pairs_per_step = cfg.batch_size * cfg.grad_accum * accelerator.num_processes
    memory, what = peak_memory(accelerator)
    minutes = steps * step_seconds / 60
    return "\n".join([
        f"dry run of {cfg.loss} on {cfg.data} (nothing was written):",
        f"  data: {len(encoded)} training pairs, {total:,} tokens (mean {total / max(1, len(encoded)):.0f} per pair, "
        f"longest {max(per_pair, default=0)})",
        f"  steps: {steps} of {pairs_per_step} pairs = {steps * pairs_per_step / max(1, len(encoded)):.2f} epochs"
        + (f" (from step {start}, resumed)" if start else ""),
        f"  time per step: {step_seconds:.2f} s (measured on the run's first batch, after a step on its longest pairs)"
        f" -> training about {minutes:.0f} min" if minutes >= 1 else f"  time per step: {step_seconds:.2f} s -> "
        f"training about {steps * step_seconds:.0f} s",
        f"  peak memory: {memory / 2**30:.2f} GiB ({what}, after a step on the {pairs_per_step} longest pairs)",
        "  not counted: the evaluations (before and after, and every --eval-every steps) and checkpoint writes;"
        " memory is bounded by --batch-size, --max-length, --gradient-checkpointing and --dtype bfloat16",
        "  run the same command without --dry-run to train",
    ])
