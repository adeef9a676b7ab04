"""Kill a real training run with SIGKILL at a random step, resume it, and compare with an
uninterrupted run: every step logged once, same losses, same final adapter.

    python experiments/kill_and_resume.py [--model smollm2-135m-instruct] [--steps 10] [--save-every 3] [--seed N]

The test suite does the same on a tiny model (tests/test_train.py); this is the by-hand check on
the real default model.
"""

from __future__ import annotations

import argparse
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from safetensors.torch import load_file

from reprkit.runlog import checkpoints, read_jsonl


def cli(model: str, run: Path, steps: int, save_every: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "reprkit.cli", "train", "--model", model, "--run-dir", str(run), "--steps", str(steps),
            "--save-every", str(save_every), "--eval-data", "embedded:arithmetic", "--eval-limit", "8",
            "--n-samples", "1", "--no-progress", *extra]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--save-every", type=int, default=3)
    p.add_argument("--seed", type=int, default=None, help="seed of the kill step (default: random)")
    args = p.parse_args()
    rng = random.Random(args.seed)
    kill_after = rng.randint(2, args.steps - 1)
    with tempfile.TemporaryDirectory() as tmp:
        full, run = Path(tmp) / "full", Path(tmp) / "killed"
        t0 = time.time()
        subprocess.run(cli(args.model, full, args.steps, args.save_every), check=True, capture_output=True)
        proc = subprocess.Popen(cli(args.model, run, args.steps, args.save_every), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        while len(read_jsonl(run / "metrics.jsonl")[0]) < kill_after and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        logged = len(read_jsonl(run / "metrics.jsonl")[0])
        ckpt = checkpoints(run)[-1][0] if checkpoints(run) else 0
        subprocess.run(cli(args.model, run, args.steps, args.save_every, "--resume", str(run)), check=True,
                       capture_output=True)
        rows, bad = read_jsonl(run / "metrics.jsonl")
        ref, _ = read_jsonl(full / "metrics.jsonl")
        steps = [r["step"] for r in rows]
        worst_loss = max(abs(a["loss"] - b["loss"]) / max(abs(b["loss"]), 1e-12) for a, b in zip(rows, ref))
        a, b = load_file(run / "adapter/adapter_model.safetensors"), load_file(full / "adapter/adapter_model.safetensors")
        worst_w = max(((a[k] - b[k]).norm() / b[k].norm().clamp_min(1e-12)).item() for k in a)
        ok = steps == list(range(1, args.steps + 1)) and bad == 0 and worst_loss < 1e-4 and worst_w < 1e-4
        print(f"model {args.model}, {args.steps} steps, checkpoint every {args.save_every}")
        print(f"killed (SIGKILL) after {logged} logged steps; last complete checkpoint: step {ckpt}")
        print(f"after resume: steps logged {steps[0]}..{steps[-1]} ({len(steps)} lines, {bad} unreadable, "
              f"duplicates {len(steps) - len(set(steps))})")
        print(f"largest relative loss difference vs the uninterrupted run: {worst_loss:.2e}")
        print(f"largest relative adapter difference (per tensor, Frobenius): {worst_w:.2e}")
        print(f"wall {time.time() - t0:.0f} s; {'OK' if ok else 'MISMATCH'}")
        sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
