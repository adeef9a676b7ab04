"""Cost of reprkit's hook core on SmolLM2-135M-Instruct: capture and early stop vs plain forwards.

    python experiments/bench_hooks.py [--repeats 15] [--batch 4] [--seq 128] [--out bench_hooks.json]

Times are interleaved in one process (every repeat runs every variant once, in rotating order) and
reported as medians of per-repeat ratios to the plain forward, so machine noise hits all variants
alike. Memory is the peak RSS growth (VmHWM after a reset) of a child process that runs only that
variant, after model load and warm-up, plus the bytes
the variant's result keeps alive.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

from reprkit.hooks import capture, forward_hidden_states
from reprkit.models import load_model


def make_batch(tok, batch: int, seq: int) -> dict:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, tok.vocab_size - 1, (batch, seq), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def variants(model, batch):
    def plain():
        return model(**batch, use_cache=False).logits

    def capture3():
        with capture(model, [5, 15, 25]) as cap:
            out = model(**batch, use_cache=False).logits
        return out, cap.hidden_states

    def hidden_states():
        return model(**batch, use_cache=False, output_hidden_states=True)

    def stop10():
        return forward_hidden_states(model, batch, [10])

    return {"plain": plain, "capture_3_layers": capture3, "output_hidden_states": hidden_states, "stop_after_10": stop10}


def retained_bytes(result) -> int:
    if isinstance(result, torch.Tensor):
        return result.numel() * result.element_size()
    if isinstance(result, dict):
        return sum(retained_bytes(v) for v in result.values())
    if isinstance(result, (tuple, list)):
        return sum(retained_bytes(v) for v in result)
    if hasattr(result, "logits"):
        return retained_bytes(result.logits) + retained_bytes(result.hidden_states or ())
    return 0


def peak_rss_child(name: str, args) -> float:
    """Peak RSS growth (MB) of a fresh process running only ``name``, after model load and one warm-up."""
    cmd = [sys.executable, __file__, "--child", name, "--batch", str(args.batch), "--seq", str(args.seq)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    return float(out)


def child(args) -> None:
    torch.set_num_threads(args.threads)
    model, tok = load_model()
    batch = make_batch(tok, args.batch, args.seq)
    fns = variants(model, batch)
    with torch.no_grad():
        fns["stop_after_10"]()  # warm up kernels with the smallest variant
        before = _status_kb("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:  # reset the high-water mark (VmHWM) to now
            f.write("5")
        for _ in range(3):
            fns[args.child]()
        peak = _status_kb("VmHWM")
    print((peak - before) / 1024)


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="bench_hooks.json")
    p.add_argument("--child", default=None)
    args = p.parse_args()
    if args.child:
        return child(args)

    torch.set_num_threads(args.threads)
    model, tok = load_model()
    batch = make_batch(tok, args.batch, args.seq)
    fns = variants(model, batch)
    names = list(fns)
    times = {n: [] for n in names}
    kept = {}
    with torch.no_grad():
        for n in names:  # warm-up
            kept[n] = retained_bytes(fns[n]())
        for r in range(args.repeats):
            order = names[r % len(names):] + names[: r % len(names)]
            for n in order:
                t0 = time.perf_counter()
                fns[n]()
                times[n].append(time.perf_counter() - t0)
    ratios = {n: statistics.median(a / b for a, b in zip(times[n], times["plain"])) for n in names}
    rss = {n: peak_rss_child(n, args) for n in names}
    results = {
        "model": "SmolLM2-135M-Instruct",
        "batch": args.batch,
        "seq": args.seq,
        "threads": args.threads,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "variants": {
            n: {
                "median_s": statistics.median(times[n]),
                "ratio_to_plain": ratios[n],
                "result_MB": kept[n] / 2**20,
                "peak_rss_growth_MB": rss[n],
            }
            for n in names
        },
    }
    print(f"SmolLM2-135M-Instruct, batch {args.batch} x {args.seq} tokens, fp32, {args.threads} threads, "
          f"median of {args.repeats} interleaved repeats")
    print(f"{'variant':<22}{'median s':>10}{'x plain':>10}{'result MB':>11}{'peak RSS +MB':>14}")
    for n, v in results["variants"].items():
        print(f"{n:<22}{v['median_s']:>10.4f}{v['ratio_to_plain']:>10.4f}{v['result_MB']:>11.1f}{v['peak_rss_growth_MB']:>14.1f}")
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
