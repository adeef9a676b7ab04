"""One grid process with every thread, or one process per core side by side? Throughput of both.

    python experiments/bench/side_by_side.py [--steps 12] [--items 24] [--threads 2]

The comparison grid (``experiments/compare.py``) can run as several processes that share its
cells (``run_remeasure.sh``). On a small model a second torch thread buys less than a second
process does. This measures it for the two halves of a grid cell, each in fresh child processes:

- training: median ReprPO step (shared-prompt pairs, 4 pairs of alpaca_easy at 192/96 tokens, as
  ``grid_throughput.py --child``) of one process at ``--threads`` threads, then of ``--threads``
  processes at 1 thread started together, then of one process at 1 thread alone;
- scoring: seconds per item of ``item_accuracy`` (the grid's final scoring) on ``--items``
  alpaca_mmlu test items at the remeasure grid's lengths (768 / 704), the same three ways.

Throughput is steps (items) per second summed over the processes running at once. Only for a
machine with nothing else running (pause a grid with SIGSTOP first).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import save, table  # noqa: E402

HERE = Path(__file__).resolve().parent


def child_score(items: int, threads: int) -> dict:
    import torch

    from reprkit import data as D
    from reprkit.evaluate import item_accuracy
    from reprkit.models import load_model

    torch.set_num_threads(threads)
    model, tok = load_model()
    enc = D.encode_ranked(D.load_items("genies:alpaca_mmlu", "test", limit=items), tok, 768, 704)
    item_accuracy(model, enc[:2], tok.pad_token_id, base=False)  # warm-up
    t0 = time.perf_counter()
    item_accuracy(model, enc, tok.pad_token_id, base=False)
    return {"item_s": (time.perf_counter() - t0) / len(enc)}


def together(cmds: list[list[str]], threads: int) -> list[dict]:
    """Start every command at once (each with ``threads`` torch threads); their last JSON lines."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for c in cmds]
    outs = []
    for p, c in zip(procs, cmds):
        out, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(c)} failed:\n{err[-3000:]}")
        outs.append(json.loads(out.strip().splitlines()[-1]))
    return outs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--items", type=int, default=24)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", action="store_true")
    p.add_argument("--child-threads", type=int, default=1)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child_score(args.items, args.child_threads)))
        return

    n = args.threads
    train = [sys.executable, str(HERE / "grid_throughput.py"), "--child", "--loss", "reprpo", "--steps", str(args.steps),
             "--limit", "64", "--shared-prompt"]
    score = [sys.executable, __file__, "--child", "--items", str(args.items)]
    rows, raw = [], {}
    for part, cmd, key, threads_flag in (("training step", train, "step_s", "--threads"),
                                         ("scoring item", score, "item_s", "--child-threads")):
        one_all = together([cmd + [threads_flag, str(n)]], n)[0][key]
        side = [r[key] for r in together([cmd + [threads_flag, "1"]] * n, 1)]
        one_alone = together([cmd + [threads_flag, "1"]], 1)[0][key]
        raw[part] = {f"one process, {n} threads": one_all, f"{n} processes, 1 thread each": side,
                     "one process, 1 thread alone": one_alone}
        rate_all, rate_side = 1 / one_all, sum(1 / s for s in side)
        rows.append([part, f"{one_all:.3f}", " / ".join(f"{s:.3f}" for s in side), f"{one_alone:.3f}",
                     f"{rate_side / rate_all:.2f}x"])
    print(table(rows, ["", f"s, one process at {n} threads", f"s each, {n} processes at 1 thread",
                       "s, one process at 1 thread", "throughput side by side / one process"]))
    save("side_by_side", {**raw, "args": vars(args)})


if __name__ == "__main__":
    main()
