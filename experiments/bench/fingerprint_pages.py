"""How much of the memory-mapped weights the frozen-model cache's key reads (file-backed RSS).

    python experiments/bench/fingerprint_pages.py

``reprkit.train.model_fingerprint`` hashes the base weights so that a cache never serves another
model's outputs. The weights are memory-mapped from safetensors, so whatever it reads is paged in
and counted in the process's RSS. Each variant runs in a fresh process: load the default model,
then fingerprint it; prints RssFile (MB) before and after. "strided" is the earlier fingerprint
(a sample spread over every tensor), "prefix" today's (the first 1024 elements of each).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import run_child, status_kb  # noqa: E402


def strided(model) -> str:
    import hashlib

    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in model.named_parameters():
            flat = p.detach().reshape(-1)
            h.update(f"{name} {flat[:: max(1, flat.numel() // 64)].float().sum().item():.6e}".encode())
    return h.hexdigest()[:16]


def child(variant: str) -> dict:
    from reprkit.models import load_model
    from reprkit.train import model_fingerprint

    model, _ = load_model()
    before = status_kb("RssFile") / 1024
    (strided if variant == "strided" else model_fingerprint)(model)
    return {"variant": variant, "rss_file_before_mb": before, "rss_file_after_mb": status_kb("RssFile") / 1024}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--child")
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child)))
        return
    for variant in ("strided", "prefix"):
        r = run_child(str(Path(__file__).resolve()), variant)
        print(f"{variant:8s} RssFile {r['rss_file_before_mb']:.0f} -> {r['rss_file_after_mb']:.0f} MB")


if __name__ == "__main__":
    main()
