"""Shared pieces of the benchmarks: the model, fixed batches, interleaved timing, peak memory.

Timing: every repeat runs every variant once in rotating order, and ratios are medians of
per-repeat ratios, so machine noise hits all variants alike. Memory: peak RSS growth of a child
process that runs only one variant (after model load and a warm-up), read from /proc (VmHWM
after resetting it), so allocator caches of one variant never flatter another.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

MODEL = "SmolLM2-135M-Instruct"
OUT_DIR = Path(os.environ.get("REPRKIT_BENCH_OUT", "bench-results"))


def machine() -> dict:
    """What a figure was measured on: bf16 timings in particular depend on the CPU's instruction set
    (without AVX512-BF16 or AMX, bf16 matmuls are emulated and far slower than float32)."""
    info = {"cpus": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "gpu": torch.cuda.is_available(), "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    lines = dict(line.split(":", 1) for line in cpuinfo.splitlines() if ":" in line)
    flags = set(lines.get("flags\t\t", lines.get("flags", "")).split())
    info["cpu"] = lines.get("model name\t", "").strip()
    info["native_bf16"] = bool(flags & {"avx512_bf16", "amx_bf16"})
    return info


def random_batch(tok, batch: int, seq: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(100, tok.vocab_size - 1, (batch, seq), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def genies_pairs(tok, pairs: int, tokens: int, source: str = "genies:alpaca_long"):
    """``pairs`` real GENIES pairs, prompts cut to tokens/2 and pair sequences to ``tokens``."""
    from reprkit import data as D

    items = D.load_items(source, "train", limit=pairs)
    enc = D.encode_pairs(D.to_pairs(items), tok, max_length=tokens, max_prompt_length=tokens // 2)
    return items, enc


def interleaved(fns: dict, repeats: int, reference: str | None = None, warmup: int = 1) -> dict:
    """Median seconds of each variant and its median per-repeat ratio to ``reference``."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    times = {n: [] for n in names}
    for r in range(repeats):
        for n in names[r % len(names):] + names[: r % len(names)]:
            t0 = time.perf_counter()
            fns[n]()
            times[n].append(time.perf_counter() - t0)
    out = {n: {"median_s": statistics.median(t), "times": t} for n, t in times.items()}
    if reference:
        for n in names:
            out[n]["ratio"] = statistics.median(a / b for a, b in zip(times[n], times[reference]))
    return out


def status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak() -> int:
    """Reset the peak-RSS mark to the current RSS; returns the current RSS in kB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return status_kb("VmRSS")


def peak_growth_mb(before_kb: int) -> float:
    return (status_kb("VmHWM") - before_kb) / 1024


class RssParts:
    """Peak anonymous and file-backed RSS (MB) over a block, sampled from /proc every few ms.

    VmHWM counts both; only anonymous memory is allocated, while file-backed pages (memory-mapped
    weights or caches that were read) are clean and dropped by the kernel under pressure. Sampling
    can miss a spike shorter than the interval; the split is what it is for."""

    def __init__(self, interval_s: float = 0.003):
        import threading

        self.interval_s, self.peak = interval_s, {"RssAnon": 0, "RssFile": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for k in self.peak:
                self.peak[k] = max(self.peak[k], status_kb(k))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssParts:
        self.before = {k: status_kb(k) for k in self.peak}
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def growth_mb(self) -> dict:
        return {f"peak_{k[3:].lower()}_mb": (self.peak[k] - self.before[k]) / 1024 for k in self.peak}


def run_child(script: str, *args: str, env: dict | None = None) -> dict:
    """Run ``script --child ...`` in a fresh process; its last stdout line is a JSON object."""
    cmd = [sys.executable, script, "--child", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def save(name: str, results: dict) -> Path:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **results}, indent=2))
    print(f"wrote {path}")
    return path


def table(rows: list[list], header: list[str]) -> str:
    widths = [max(len(str(h)), *(len(_fmt(r[i])) for r in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(_fmt(v).ljust(w) for v, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)
