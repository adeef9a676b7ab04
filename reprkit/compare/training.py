"""Training a grid run in segments: a cell's budget in ``curve_points`` segments that equal one
run (the schedule is the whole run's), resumed from the last checkpoint after a sitting ends, with
the source validation and first target items scored after each segment (the curve)."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

from reprkit import data as D
from reprkit.config import LoraSettings, TrainConfig, preset
from reprkit.models import load_model
from reprkit.runlog import checkpoints, read_config, write_json

from .scoring import curve_sets, score_sets
from .settings import Grid


def n_steps(grid: Grid, source: str) -> int:
    pairs = D.to_pairs(D.load_items(grid.spec(source, grid.train_split), grid.train_split, limit=grid.train_limit))
    return math.ceil(grid.epochs * len(pairs) / grid.batch_size)


def train_config(grid: Grid, method: str, source: str, seed: int, lr: float, run_dir: Path, total: int,
                 cache: Path | None = None, shared_prompt: bool = False) -> TrainConfig:
    cfg = preset(method)
    return dataclasses.replace(
        cfg, model=grid.model, data=grid.spec(source, grid.train_split), train_split=grid.train_split, eval_data=(), seed=seed, lr=lr,
        steps=total, batch_size=grid.batch_size, max_length=grid.max_length, max_prompt_length=grid.max_prompt_length,
        lora=LoraSettings(r=grid.lora_r, alpha=2 * grid.lora_r), run_dir=str(run_dir), progress=False,
        save_every=0, warmup_steps=max(1, total // 10), n_samples=0, limit=grid.train_limit,
        reference_cache=str(cache) if cache is not None else None, shared_prompt=shared_prompt,
    )


def train_to(cfg: TrainConfig, step: int) -> Path:
    """Train ``cfg``'s run up to ``step`` (from scratch, or resumed from its last checkpoint). The
    schedule is the whole run's (warm-up from ``cfg.steps``), so segments equal one run."""
    from reprkit.train import train

    run = Path(cfg.run_dir)
    done = checkpoints(run)
    if done and done[-1][0] >= step:
        return run
    if not (run / "config.json").is_file():
        return train(dataclasses.replace(cfg, steps=step))
    saved = read_config(run)
    saved["steps"] = step
    write_json(run / "config.json", saved)
    return train(TrainConfig(resume=str(run)))


def load_adapter(grid: Grid, run: Path):
    """The run's trained thing on the grid's model: a LoRA adapter (a PeftModel) or an intervention
    (attached to the model in place)."""
    from peft import PeftModel

    from ..interventions import is_saved_intervention
    from ..interventions import load as load_intervention

    model, tok = load_model(grid.model)
    if is_saved_intervention(run / "adapter"):
        load_intervention(model, run / "adapter")
        return model, tok
    return PeftModel.from_pretrained(model, run / "adapter"), tok


def cache_dir(grid: Grid, out: Path) -> Path | None:
    return out / grid.reference_cache if grid.reference_cache else None


def train_curve(grid: Grid, out: Path, source: str, targets: list[str], method: str, seed: int, lr: float,
                folder: Path) -> tuple[list[dict], object, object, int]:
    """Train ``method`` at ``lr`` for a cell's budget in ``curve_points`` segments (run in
    ``folder/run``), scoring source validation and the first target items after each
    (``folder/curve.json``, resumable): (curve, model with the final adapter, tokenizer, steps)."""
    total = n_steps(grid, source)
    cfg = train_config(grid, method, source, seed, lr, folder / "run", total, cache_dir(grid, out),
                       shared_prompt=grid.shared_prompt)
    curve_file = folder / "curve.json"
    curve = json.loads(curve_file.read_text()) if curve_file.is_file() else []
    # a curve point belongs to the run it was scored on: when the run's checkpoints are gone
    # (a run directory is not committed), its points are scored again on the new run
    last = max((s for s, _ in checkpoints(folder / "run")), default=0)
    if any(p["step"] > last for p in curve):
        print(f"cell {folder}: curve points past the run's last checkpoint ({last}) are scored again", flush=True)
        curve = [p for p in curve if p["step"] <= last]
    model = tok = None
    for k in range(1, grid.curve_points + 1):
        step = round(total * k / grid.curve_points)
        if any(p["step"] == step for p in curve):
            continue
        t0 = time.time()
        run = train_to(cfg, step)
        t1 = time.time()
        model, tok = load_adapter(grid, run)
        curve.append({"step": step, **score_sets(grid, model, tok, curve_sets(grid, source, targets)),
                      "seconds": {"train": t1 - t0, "scoring": time.time() - t1}})
        write_json(curve_file, curve)
    if model is None:  # every point was scored before (an adopted sweep run, or a sitting that stopped here)
        model, tok = load_adapter(grid, train_to(cfg, total))
    return curve, model, tok, total
