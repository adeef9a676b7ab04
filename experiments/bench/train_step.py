"""Training step: reprkit's DPO, ReprPO and reroute steps vs TRL's DPOTrainer, same model, data, LoRA.

    python experiments/bench/train_step.py [--steps 5] [--rounds 2] [--settings fp32 bf16 bf16+gc]

Every measurement is a fresh child process that loads SmolLM2-135M-Instruct, resets the peak-RSS
mark, builds its trainer and runs ``--steps`` optimiser steps on the same 4 GENIES pairs
(alpaca_long, truncated to 128 tokens per sequence), LoRA r16 alpha 32 on all linear layers,
AdamW, grad clipping 1.0. Step time is the trainer's own step (reprkit: ``step_time`` in
metrics.jsonl; TRL: a callback from step begin to step end), median over the steps after the first.
Runs alternate reprkit / TRL within each round; ratios are medians over rounds of
(reprkit step / TRL step) from the same round. Peak memory is the peak RSS growth after model load.
Settings: fp32; bf16 = autocast (TRL ``bf16=True``, reprkit ``--mixed-precision bf16``);
+gc = gradient checkpointing.

``--live-memory`` runs the children with glibc's mmap threshold fixed at 128 KiB
(``MALLOC_MMAP_THRESHOLD_``): freed blocks go back to the OS, so the peak RSS follows the live
peak instead of what the allocator kept (slower steps; for the memory columns only).
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
from common import genies_pairs, peak_growth_mb, reset_peak, run_child, save, table  # noqa: E402

PAIRS, TOKENS, RANK = 4, 128, 16


def write_pairs(tok, path: Path) -> list[dict]:
    items, _ = genies_pairs(tok, PAIRS, TOKENS)
    rows = [{"prompt": it["prompt"][0]["content"], "chosen": it["responses"][0], "rejected": it["responses"][-1]}
            for it in items]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def child_reprkit(loss: str, setting: str, steps: int, threads: int) -> dict:
    from reprkit.config import LoraSettings, TrainConfig
    from reprkit.models import load_model
    from reprkit.runlog import read_jsonl
    from reprkit.train import train

    torch.set_num_threads(threads)
    model, tok = load_model()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "pairs.jsonl"
        write_pairs(tok, data)
        cfg = TrainConfig(loss=loss, data=str(data), steps=steps, batch_size=PAIRS, max_length=TOKENS,
                          max_prompt_length=TOKENS // 2, warmup_steps=0, lr=1e-5, eval_data=(), n_samples=0,
                          save_every=0, progress=False, run_dir=str(Path(tmp) / "run"),
                          lora=LoraSettings(r=RANK, alpha=2 * RANK),
                          mixed_precision="bf16" if "bf16" in setting else "no",
                          gradient_checkpointing="gc" in setting)
        before = reset_peak()
        run = train(cfg, model=model, tokenizer=tok)
        peak = peak_growth_mb(before)
        rows, _ = read_jsonl(run / "metrics.jsonl")
    times = [r["step_time"] for r in rows][1:]
    return {"step_s": statistics.median(times), "times": times, "peak_MB": peak}


def child_trl(setting: str, steps: int, threads: int) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from reprkit.models import load_model

    torch.set_num_threads(threads)
    model, tok = load_model()
    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t0)

    with tempfile.TemporaryDirectory() as tmp:
        rows = write_pairs(tok, Path(tmp) / "pairs.jsonl")
        conv = [{"prompt": [{"role": "user", "content": r["prompt"]}],
                 "chosen": [{"role": "assistant", "content": r["chosen"]}],
                 "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows]
        args = DPOConfig(output_dir=tmp, per_device_train_batch_size=PAIRS, max_steps=steps, learning_rate=1e-5,
                         max_length=TOKENS, logging_steps=1, report_to="none", save_strategy="no",
                         bf16="bf16" in setting, gradient_checkpointing="gc" in setting, use_cpu=True,
                         dataloader_num_workers=0, lr_scheduler_type="constant", warmup_steps=0,
                         max_grad_norm=1.0, disable_tqdm=True)
        lora = LoraConfig(r=RANK, lora_alpha=2 * RANK, target_modules="all-linear", task_type="CAUSAL_LM")
        before = reset_peak()
        trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(conv), processing_class=tok,
                             peft_config=lora, callbacks=[StepTimer()])
        trainer.train()
        peak = peak_growth_mb(before)
        lengths = [len(x) for x in trainer.train_dataset["chosen_ids"]] if "chosen_ids" in trainer.train_dataset.column_names else None
    return {"step_s": statistics.median(times[1:]), "times": times[1:], "peak_MB": peak, "chosen_lengths": lengths}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--settings", nargs="+", default=None,
                   help="default: fp32 bf16 bf16+gc on a CPU with native bf16, fp32 alone otherwise "
                        "(emulated bf16 runs about 15x slower and measures nothing useful)")
    p.add_argument("--methods", nargs="+", default=["trl-dpo", "dpo", "reprpo", "reroute"])
    p.add_argument("--live-memory", action="store_true",
                   help="children with MALLOC_MMAP_THRESHOLD_=131072: peak RSS ~ live peak (times are then not comparable)")
    p.add_argument("--child", nargs="*")
    args = p.parse_args()
    if args.child is not None:
        method, setting = args.child
        res = (child_trl(setting, args.steps, args.threads) if method == "trl-dpo"
               else child_reprkit(method, setting, args.steps, args.threads))
        print(json.dumps(res))
        return

    if args.settings is None:
        from common import machine

        args.settings = ["fp32", "bf16", "bf16+gc"] if machine().get("native_bf16") else ["fp32"]
        if args.settings == ["fp32"]:
            print("this CPU has no native bf16 (AVX512-BF16 / AMX): timing fp32 only; --settings overrides")
    env = {"MALLOC_MMAP_THRESHOLD_": "131072"} if args.live_memory else None
    results: dict = {"pairs": PAIRS, "tokens": TOKENS, "lora_r": RANK, "steps": args.steps, "rounds": args.rounds,
                     "live_memory": args.live_memory, "settings": {}}
    for setting in args.settings:
        runs = {m: [] for m in args.methods}
        for r in range(args.rounds):
            order = args.methods[r % len(args.methods):] + args.methods[: r % len(args.methods)]
            for m in order:
                runs[m].append(run_child(__file__, m, setting, "--steps", str(args.steps),
                                         "--threads", str(args.threads), env=env))
                print(f"  {setting} round {r} {m}: {runs[m][-1]['step_s']:.2f} s/step, "
                      f"peak +{runs[m][-1]['peak_MB']:.0f} MB", flush=True)
        summary = {}
        for m in args.methods:
            summary[m] = {
                "step_s": statistics.median(x["step_s"] for x in runs[m]),
                "peak_MB": statistics.median(x["peak_MB"] for x in runs[m]),
                "x_trl_time": statistics.median(a["step_s"] / b["step_s"] for a, b in zip(runs[m], runs["trl-dpo"])),
                "x_trl_memory": statistics.median(a["peak_MB"] / b["peak_MB"] for a, b in zip(runs[m], runs["trl-dpo"])),
                "runs": runs[m],
            }
        results["settings"][setting] = summary
    rows = [[s, m, v["step_s"], v["x_trl_time"], v["peak_MB"], v["x_trl_memory"]]
            for s, ms in results["settings"].items() for m, v in ms.items()]
    print(f"\nSmolLM2-135M-Instruct, {PAIRS} pairs x {TOKENS} tokens, LoRA r{RANK} all-linear, "
          f"{args.threads} threads, medians over {args.rounds} alternating rounds of {args.steps} steps")
    print(table(rows, ["setting", "method", "step s", "x TRL", "peak +MB", "x TRL mem"]))
    save("train_step_live" if args.live_memory else "train_step", results)


if __name__ == "__main__":
    main()
