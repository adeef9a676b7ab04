"""The training loop: LoRA on a causal LM, a loss on hidden states (or log-probs), tracking vs the frozen model.

One step, top to bottom:

1. the frozen model (same weights, adapter disabled, eval mode, no grad) runs on chosen + rejected,
   stopping after the deepest layer the loss or the tracker needs (the LM head only for log-probs);
2. the policy runs on the same batch with hooks capturing those layers in the graph;
3. ``loss(LossInputs) -> (loss, metrics)``; backward; clip; optimiser and scheduler step;
4. the tracker logs per-layer cosine and norm ratio policy vs frozen, chosen and rejected,
   masked to completion tokens, with the loss terms, to ``metrics.jsonl``.

>>> from reprkit.config import TrainConfig
>>> run_dir = train(TrainConfig(loss="reprpo", steps=50))
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import data as D
from ..config import TrainConfig
from ..devices import input_device
from ..evaluate import generate_samples, item_accuracy
from ..models import enable_gradient_checkpointing, load_model
from ..runlog import RunLog
from ..truncation import describe as describe_truncation
from ..truncation import truncation_report
from .adapter import add_intervention, add_lora, assert_changed, check_trained, plan_layers, snapshot_trainable
from .batches import load_pairs, micro_batches, read_items
from .checkpoints import (
    check_disk,
    checkpoint,
    latest_readable,
    load_adapter_weights,
    load_training_state,
    save_adapter,
    together,
)
from .dryrun import DryRun, dry_run_report, longest_pieces
from .errors import TrainingError
from .frozen_cache import open_reference_cache
from .processes import (
    all_processes,
    broadcast_trainable,
    first_forward,
    is_sharded,
    make_accelerator,
    sync_gradients,
    wrap_decoder_blocks,
)
from .runs import RunLock, default_run_dir, discard_new_run, resume_settings
from .signals import Stopped, StopSignals
from .step import (
    as_number,
    batch_accuracy,
    batch_totals,
    check_loss,
    forward_pair_batch,
    forward_ranked_batch,
    only_layers,
    track,
)

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- the loop


def mean_of_dicts(rows: list[dict]) -> dict:
    out = {}
    for k, v in rows[0].items():
        out[k] = mean_of_dicts([r[k] for r in rows]) if isinstance(v, dict) else sum(as_number(r[k]) for r in rows) / len(rows)
    return out


def evaluate_run(model, tokenizer, evals: dict, prompts: dict, step: int, cfg: TrainConfig, runlog: RunLog,
                 train_truncation: dict | None = None, overlap: dict | None = None) -> dict:
    results = {"step": step, "datasets": {}}
    if train_truncation is not None:
        results["train_truncation"] = train_truncation
    for source, encoded in evals.items():
        results["datasets"][source] = item_accuracy(model, encoded, tokenizer.pad_token_id, progress=source,
                                                    progress_bar=cfg.progress)
        if overlap is not None:
            results["datasets"][source]["training_items"] = overlap.get(source, 0)  # scored items also trained on
    try:
        runlog.write_eval(results)
        for source, ps in prompts.items():
            for row in generate_samples(model, tokenizer, ps[: cfg.n_samples], chat_template=cfg.chat_template):
                runlog.sample({"step": step, "data": source, **row})
    except OSError as err:
        from .checkpoints import write_failed

        raise write_failed(f"the evaluation of step {step} (eval.json, samples.jsonl)", runlog.path, err) from err
    return results


def train(cfg: TrainConfig, model=None, tokenizer=None) -> Path:
    """Train per ``cfg``; return the run directory. ``model`` may be a base model (an adapter is added)
    or a PeftModel whose active adapter is trained (checked by ``check_adapter``).

    SIGTERM and SIGINT stop the run at the next safe point with a checkpoint and the resume command
    (``reprkit.training.signals``); a second ``train`` on the same directory is refused (``RunLock``)."""
    if cfg.resume:
        if not Path(cfg.resume).is_dir():
            raise FileNotFoundError(f"--resume {cfg.resume}: no such run directory")
        cfg = resume_settings(cfg)
    cfg.validate()
    with StopSignals() as stop:
        try:
            return _train(cfg, model, tokenizer, stop)
        except DryRun as done:
            print(done.report, flush=True)
            return Path(cfg.run_dir) if cfg.run_dir else Path(".")


def _train(cfg: TrainConfig, model, tokenizer, stop: StopSignals) -> Path:
    run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg)
    resume_line = f"reprkit train --resume {run_dir}"
    existed = run_dir.exists()

    accelerator = make_accelerator()
    sharded = is_sharded(accelerator)
    if sharded and cfg.shared_prompt:
        raise TrainingError("--shared-prompt works with one process or data parallelism, not FSDP sharding: drop it")
    runlog = RunLog(run_dir, enabled=accelerator.is_main_process)
    if not cfg.resume:  # before loading anything: fail fast on an unusable directory, in every process
        together(accelerator, lambda: runlog.create(cfg.to_dict()), f"the run directory {run_dir}")
    lock = RunLock(run_dir)
    if accelerator.is_main_process:
        try:
            lock.__enter__()
        except BaseException:
            if not cfg.resume:
                discard_new_run(run_dir, keep_dir=existed)
            raise
    stop.now_message = lambda name: (f"stopped by {name} while setting up: " + (
        f"the run is as it was; {resume_line}" if cfg.resume else "nothing was kept"))
    try:
        return _train_locked(cfg, model, tokenizer, stop, run_dir, resume_line, existed, accelerator, sharded, runlog)
    finally:
        lock.__exit__()


def _train_locked(cfg, model, tokenizer, stop, run_dir, resume_line, existed, accelerator, sharded, runlog) -> Path:
    from transformers import get_scheduler

    resume_from = resume_state = None
    try:  # a new run that fails before its first checkpoint leaves no directory behind
        if cfg.resume and accelerator.is_main_process:
            found = latest_readable(run_dir)
        elif cfg.resume:
            found = latest_readable(run_dir, say=lambda line: None)
        else:
            found = None
        if found is not None:
            resume_from, resume_state = found
        del found  # only resume_state holds the checkpoint's tensors, and is dropped once applied
        items = read_items(cfg)  # the data's problems are found before the model loads
        torch.manual_seed(cfg.seed)

        if model is None:
            model, tokenizer = load_model(cfg.model, dtype=cfg.dtype, quantization=cfg.quantization)
        loss = cfg.loss_fn()
        loss_layers, layers, lora_last = plan_layers(model, loss, cfg.track_layers)
        if loss_layers and not loss.needs_logps and max(layers) > max(loss_layers) and accelerator.is_main_process:
            log.warning("--track-layers %s reaches layer %d, deeper than the loss needs (%d): every forward now runs "
                        "to layer %d; the loss itself still reads only layers %s", cfg.track_layers, max(layers),
                        max(loss_layers), max(layers), loss_layers)
        if cfg.intervention != "lora":
            if sharded:
                raise TrainingError(f"--intervention {cfg.intervention} runs on one process or data parallel, not under "
                                    "FSDP sharding (its hooks are outside the sharded blocks): use --intervention lora")
            add_intervention(model, cfg, loss, loss_layers)
        elif getattr(model, "peft_config", None) is None or not model.peft_config:
            model = add_lora(model, cfg, lora_last)
        adapter = check_trained(model)
        if cfg.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        model.train()

        train_pairs, evals, prompts, overlap = load_pairs(cfg, tokenizer, items)
        del items
        train_cut = truncation_report(train_pairs)
        if accelerator.is_main_process and not cfg.resume:
            print(f"training data {cfg.data} ({cfg.train_split}): {describe_truncation(train_cut)}", flush=True)
        params = [p for p in model.parameters() if p.requires_grad]
        if accelerator.is_main_process:
            check_disk(run_dir, params)
        optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate(), weight_decay=cfg.weight_decay)
        scheduler = get_scheduler(
            "constant_with_warmup" if cfg.schedule == "constant" else "cosine",
            optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=cfg.steps,
        )
        if resume_from is not None:  # before sharding: the PeftModel loads its own adapter file
            load_adapter_weights(resume_from, model, resume_state["adapter"])
        if sharded:  # FSDP2 shards the PeftModel in place (it stays a PeftModel): hooks and adapters work as before
            wrap_decoder_blocks(accelerator, model)
            model, optimizer = accelerator.prepare(model, optimizer)
            params = [p for p in model.parameters() if p.requires_grad]  # now DTensors
            first_forward(model, accelerator)
        else:  # one process, or data parallel: placed but not wrapped in DDP, gradients averaged by sync_gradients
            model = accelerator.prepare_model(model, evaluation_mode=True)
            optimizer = accelerator.prepare_optimizer(optimizer)
            broadcast_trainable(params, accelerator)

        reference = None
        if cfg.reference_cache and loss.needs_reference:
            reference = open_reference_cache(cfg, model, tokenizer, train_pairs, layers, loss, sharded)

        start = 0
        if resume_from is not None:
            start = load_training_state(resume_from, model, optimizer, scheduler, sharded, resume_state)
            if not cfg.dry_run:
                runlog.resume(start)
        elif cfg.resume and not cfg.dry_run:
            runlog.resume(0)
        del resume_state  # a checkpoint removed later must not stay held in memory (on tmpfs: on the disk)
        log.info("training %s from step %d to %d in %s", cfg.loss, start, cfg.steps, run_dir)
        if accelerator.num_processes > 1 and accelerator.is_main_process:
            print(f"{accelerator.num_processes} processes ({'FSDP2' if sharded else accelerator.distributed_type.value}, "
                  f"{accelerator.state.backend}): global batch {cfg.batch_size * accelerator.num_processes} "
                  f"= --batch-size {cfg.batch_size} x {accelerator.num_processes}", flush=True)

        ranked = getattr(loss, "ranked", False)
        batches = micro_batches(train_pairs, cfg.batch_size, cfg.seed, start * cfg.grad_accum, tokenizer.pad_token_id,
                                accelerator.process_index, accelerator.num_processes,
                                collate=D.collate_ranked if ranked else D.collate)
        forward = forward_ranked_batch if ranked else forward_pair_batch
        shared = {"shared_prompt": True} if cfg.shared_prompt else {}
        saved_at = start  # the step of the newest checkpoint on disk (start: the one resumed from, or none)

        def requested() -> bool:
            flag = stop.signum is not None
            if accelerator.num_processes > 1:  # every process stops at the same point
                flag = bool(all_processes(torch.tensor(float(flag)), accelerator, "sum") > 0)
            return flag

        def stopped(step_done: int, abandoned: int | None = None) -> Stopped:
            nonlocal saved_at
            if step_done > saved_at:
                checkpoint(run_dir, step_done, model, optimizer, scheduler, accelerator, sharded)
                saved_at = step_done
            name = stop.name or "a signal on another process"
            what = f"step {abandoned} was abandoned; " if abandoned else ""
            if step_done == 0:
                kept = "no step had finished, so nothing was kept" if not cfg.resume else \
                       f"no step had finished since the start: {resume_line}"
            else:
                kept = f"checkpoint-{step_done:06d} holds step {step_done} of {cfg.steps}. Resume with: {resume_line}"
            return Stopped(f"stopped by {name}: {what}{kept}", stop.signum or 15)

        bar = tqdm(total=cfg.steps, initial=start, disable=not (cfg.progress and accelerator.is_main_process),
                   desc=f"{cfg.loss}", dynamic_ncols=True)
        checked = False
        stop.deferring = True
        stop.now_message = lambda name: (f"stopped at once by a second {name}: " + (
            f"the newest checkpoint is checkpoint-{saved_at:06d}. Resume with: {resume_line}" if saved_at else
            "no checkpoint had been written"))
        try:
            for step in range(start + 1, cfg.steps + 1):
                if requested():  # between steps: the previous one is complete
                    raise stopped(step - 1)
                t0 = time.perf_counter()
                rng = torch.get_rng_state()  # to checkpoint this step's start if it is abandoned
                lr = scheduler.get_last_lr()[0]
                if not checked and lr > 0:
                    before = snapshot_trainable(model)
                rows = []
                if cfg.dry_run and step == start + 1:  # the longest pairs first: the run's peak memory
                    pieces = longest_pieces(train_pairs, cfg, tokenizer.pad_token_id, ranked)
                else:
                    pieces = [next(batches) for _ in range(cfg.grad_accum)]
                pieces = [{k: v.to(input_device(model)) for k, v in piece.items()} for piece in pieces]
                totals = None
                if not ranked:  # a loss normalised by batch sums sees the whole batch's, however it is split
                    with torch.autocast(accelerator.device.type, torch.bfloat16, enabled=cfg.mixed_precision == "bf16"):
                        totals = batch_totals(model, pieces, layers, loss_layers, loss, sharded=sharded,
                                              reference=reference, **shared)
                signs = loss.signs(step) if hasattr(loss, "signs") else (1.0,)
                for i, batch in enumerate(pieces):
                    if i and requested():  # between micro-batches: abandon the step, checkpoint the one before
                        optimizer.zero_grad(set_to_none=True)
                        torch.set_rng_state(rng)
                        raise stopped(step - 1, abandoned=step)
                    frozen, row = None, {}
                    for sign in signs:  # one policy pass per sign (BiPO: one drawn; RePS: +1 and -1); the step's loss sums them
                        signed = {"sign": sign, "frozen": frozen} if signs != (1.0,) else {}
                        with torch.autocast(accelerator.device.type, torch.bfloat16, enabled=cfg.mixed_precision == "bf16"):
                            inputs = forward(model, batch, layers, loss, progress=(step - 1) / cfg.steps,
                                             sharded=sharded, reference=reference, **shared, **signed)
                        frozen = inputs.frozen_pass
                        inputs = dataclasses.replace(inputs, totals=totals, pieces=cfg.grad_accum if totals else 1)
                        value, terms = loss(only_layers(inputs, loss_layers))  # tracked layers never reach the loss
                        check_loss(value, terms, step, cfg, layers, model, batch, ranked, accelerator,
                                   kept=bool(saved_at or cfg.resume), run_dir=run_dir)
                        accelerator.backward(value / cfg.grad_accum)
                        if not row:  # the tracked states of the first pass (+1 where there are two)
                            row = {"loss": value.detach(), **terms, "layers": track(inputs, layers)}
                            if (acc := batch_accuracy(inputs)) is not None:
                                row["accuracy"] = acc
                        else:
                            row = {**row, **terms, "loss": row["loss"] + value.detach()}
                    rows.append(row)
                if not sharded:
                    sync_gradients(params, accelerator)
                grad_norm = accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                if not checked and lr > 0:
                    assert_changed(model, before, adapter, accelerator)
                    checked = True
                    del before

                if step % cfg.log_every == 0 or step == cfg.steps:
                    metrics = {"step": step, **mean_of_dicts(all_processes(rows, accelerator)), "lr": lr,
                               "grad_norm": as_number(grad_norm),
                               "step_time": time.perf_counter() - t0}
                    try:
                        if not cfg.dry_run:
                            runlog.log(metrics)
                    except OSError as err:
                        from .checkpoints import write_failed

                        raise write_failed(f"the metrics of step {step} (metrics.jsonl)", run_dir, err) from err
                    postfix = {"loss": f"{metrics['loss']:.4g}"}
                    if "accuracy" in metrics:
                        postfix["acc"] = f"{metrics['accuracy']:.2f}"
                    cos = [v["cos_rejected"] for v in metrics["layers"].values() if "cos_rejected" in v]
                    if cos:
                        postfix["cos_r"] = f"{sum(cos) / len(cos):.4f}"
                    bar.set_postfix(postfix)
                bar.update(1)
                if cfg.save_every and step % cfg.save_every == 0 and step < cfg.steps and not cfg.dry_run:
                    checkpoint(run_dir, step, model, optimizer, scheduler, accelerator, sharded)
                    saved_at = step
                if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps and not cfg.dry_run and (
                        sharded or accelerator.is_main_process):
                    evaluate_run(model, tokenizer, evals, prompts, step, cfg, runlog, train_cut, overlap)  # sharded: every process runs it
                if cfg.dry_run and step >= min(start + 2, cfg.steps):
                    raise DryRun(dry_run_report(cfg, train_pairs, start, time.perf_counter() - t0, accelerator))
                if step < cfg.steps and requested():  # the step is complete: checkpoint it
                    raise stopped(step)
        finally:
            bar.close()
            runlog.close()

        stop.deferring = False
        stop.now_message = lambda name: (f"stopped by {name} while writing the final checkpoint and adapter: "
                                         f"checkpoint-{saved_at:06d} is the newest. Resume with: {resume_line}")
        state = checkpoint(run_dir, cfg.steps, model, optimizer, scheduler, accelerator, sharded)
        saved_at = cfg.steps
        together(accelerator, lambda: save_adapter(run_dir, model, state[0]), "the final adapter")
    except BaseException:
        if not cfg.resume and accelerator.is_main_process:
            discard_new_run(run_dir, keep_dir=existed)
        raise

    late = stop.signum  # a signal during the last step: the run is complete, the evaluation is skipped
    stop.now_message = lambda name: (f"stopped by {name} during the final evaluation: training is complete and the "
                                     f"adapter is in {run_dir / 'adapter'}; score it with reprkit eval {run_dir}")
    if late is not None:
        raise Stopped(stop.now_message(stop.name), late)
    if sharded or accelerator.is_main_process:
        results = evaluate_run(model, tokenizer, evals, prompts, cfg.steps, cfg, runlog, train_cut, overlap)
        runlog.close()
        if accelerator.is_main_process:
            print(summary(run_dir, results, cfg))
    accelerator.wait_for_everyone()
    return run_dir


def summary(run_dir: Path, results: dict, cfg: TrainConfig) -> str:
    """Accuracy before (frozen model) vs after per eval set, the final per-layer cosines, where the run is."""
    from ..models import model_note
    from ..runlog import read_jsonl
    from ..stats import paired_difference

    lines = [f"\nrun: {run_dir}  (loss {cfg.loss}, {cfg.steps} steps; model: {model_note(cfg.model)})", "",
             f"{f'eval data ({cfg.eval_split})':<40}{'n':>5}{'chance':>8}{'before':>9}{'after':>9}"
             f"{'change (paired 95% CI)':>27}{'McNemar p':>11}"]
    for i, (source, r) in enumerate(results["datasets"].items()):
        tag = " (in-distribution)" if i == 0 else " (shifted)"
        if "=" in cfg.eval_split:
            tag += f" [{cfg.eval_split_for(source)}]"
        if r.get("training_items"):
            tag += f" [{r['training_items']} trained on]"
        base = r.get("base", r)
        change = ""
        if "items" in r and "items" in base:
            d = paired_difference(*(dict(zip(x["items"].get("id", range(len(x["items"]["correct"]))), x["items"]["correct"]))
                                    for x in (r, base)))
            lo, hi = d["ci95"]
            change = f"{d['difference']:>+9.3f} ({lo:+.3f}, {hi:+.3f}){'*' if d['significant'] else '†' if d['interval_disagrees'] else ' '}{d['p']:>11.3g}"
        chance = f"{r['chance']:>8.3f}" if r.get("chance") is not None else f"{'':>8}"
        lines.append(f"{source + tag:<40}{r['n']:>5}{chance}{base['accuracy_mean']:>9.3f}{r['accuracy_mean']:>9.3f}{change}")
    lines.append(f"{'':<40}accuracy by mean log-prob per token; chance 1 / responses; * McNemar p < 0.05; † the interval alone excludes 0")
    width = max([38, *(len(source) + 2 for source in results["datasets"])])  # columns aligned, whatever the names
    length = [f"  {source:<{width}}{lb['accuracy_shortest']:.3f} / {lb['accuracy_longest']:.3f}"
              for source, r in results["datasets"].items() if (lb := r.get("length_baseline"))]
    if length:
        lines += ["length only, no model (prefer the shortest / the longest response; ties split):", *length]
    if any(r.get("training_items") for r in results["datasets"].values()):
        lines.append(f"{'':<40}[k trained on]: k scored items are training prompts, so not held out; "
                     "hold rows out with --train-split 'train[:80%]' --eval-split 'train[80%:]'")
    from ..truncation import describe as describe_truncation

    if cut := results.get("train_truncation"):
        lines.append(f"training pairs: {describe_truncation(cut)}")
    for source, r in results["datasets"].items():
        if r.get("truncation", {}).get("cut") or r.get("truncation", {}).get("dropped"):
            lines.append(f"{source}: {describe_truncation(r['truncation'])}")
    rows, _ = read_jsonl(run_dir / "metrics.jsonl")
    if rows:
        last = rows[-1]["layers"]
        lines += ["", f"{'layer':>6}{'cos chosen':>12}{'cos rejected':>14}{'norm chosen':>13}{'norm rejected':>15}"
                  "   policy vs frozen, last step"]
        for k, v in last.items():
            if "cos_chosen" in v:
                lines.append(f"{k:>6}{v['cos_chosen']:>12.4f}{v['cos_rejected']:>14.4f}"
                             f"{v['norm_chosen']:>13.4f}{v['norm_rejected']:>15.4f}")
    lines += ["", f"metrics: {run_dir / 'metrics.jsonl'}   adapter: {run_dir / 'adapter'}   eval: {run_dir / 'eval.json'}"]
    return "\n".join(lines)
