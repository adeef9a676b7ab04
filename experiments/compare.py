"""Compare methods under distribution shift: methods x GENIES shifts x seeds, one shared budget.

    python experiments/compare.py --grid experiments/grids/genies3.json --out results/genies3

Each cell (shift, method, seed) trains on the shift's source distribution (``train[:90%]``) and
is evaluated on: its training items, the source test split, the target test split (out of
distribution), an unrelated distribution, and the perplexity of a retain set relative to the
frozen model. The ``base`` method is the frozen model itself (no training).

Learning rates are tuned per method on a small sweep that only sees source-distribution
validation data (``train[90%:]`` of the first shift's source), never a target.

Resumable: a finished cell writes ``cell.json`` and is never recomputed; an interrupted cell's
training resumes from its last checkpoint. Outputs: ``results.csv`` (one row per cell and eval
set), ``results.md`` (mean and spread over seeds, absolute and relative to base) and
``results.html`` (plotly).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import statistics
import time
from pathlib import Path

from reprkit import data as D
from reprkit.config import LoraSettings, TrainConfig, preset
from reprkit.evalrun import evaluate_target
from reprkit.runlog import checkpoints, write_json

TRAIN_SPLIT, VAL_SPLIT = "train[:90%]", "train[90%:]"


@dataclasses.dataclass
class Grid:
    model: str = "smollm2-135m-instruct"
    shifts: list[str] = dataclasses.field(default_factory=lambda: ["alpaca_easy", "alpaca_short", "code_easy"])
    methods: list[str] = dataclasses.field(default_factory=lambda: ["base", "dpo", "reprpo", "reroute"])
    """presets (see reprkit.config.PRESETS) or "base" for the frozen model"""
    extra_methods_first_shift: list[str] = dataclasses.field(default_factory=lambda: ["reprpo-direction-only"])
    """methods run on the first shift only (the direction-only variants)"""
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0, 1])
    steps: int = 40
    batch_size: int = 4
    max_length: int = 192
    lora_r: int = 16
    eval_limit: int = 100
    """items per eval set"""
    train_eval_limit: int = 50
    """training items re-scored for the 'train' column"""
    unrelated: str = "genies:us_history"
    retain_data: str = "hh-rlhf:helpful-base"
    lr_sweep: list[float] = dataclasses.field(default_factory=lambda: [1e-4, 3e-4, 1e-3])
    sweep_steps: int = 20


def train_config(grid: Grid, method: str, source: str, seed: int, lr: float, run_dir: Path, steps: int) -> TrainConfig:
    cfg = preset(method)
    return dataclasses.replace(
        cfg, model=grid.model, data=f"genies:{source}", train_split=TRAIN_SPLIT, eval_data=(), seed=seed, lr=lr,
        steps=steps, batch_size=grid.batch_size, max_length=grid.max_length, max_prompt_length=grid.max_length // 2,
        lora=LoraSettings(r=grid.lora_r, alpha=2 * grid.lora_r), run_dir=str(run_dir), progress=False,
        save_every=10, warmup_steps=max(1, steps // 10), n_samples=0,
    )


def run_training(cfg: TrainConfig) -> Path:
    from reprkit.train import train

    run = Path(cfg.run_dir)
    if (run / "adapter" / "adapter_config.json").is_file() and checkpoints(run) and checkpoints(run)[-1][0] >= cfg.steps:
        return run
    if (run / "config.json").is_file():
        return train(dataclasses.replace(cfg, resume=str(run)))
    return train(cfg)


def tune_lr(grid: Grid, method: str, out: Path) -> float:
    """Best learning rate by source-validation accuracy (first shift's source, seed 0), ties broken
    by the larger mean margin (best response minus the best other, per-token log-prob): with a few
    dozen items accuracy often ties, and the margin says which rate moved preferences further.
    Cached in ``lr/<method>.json``."""
    cache = out / "lr" / f"{method}.json"
    if cache.is_file():
        return json.loads(cache.read_text())["lr"]
    source = grid.shifts[0]
    scores, margins = {}, {}
    for lr in grid.lr_sweep:
        run = out / "lr" / method / f"lr{lr:g}"
        run_training(train_config(grid, method, source, 0, lr, run, grid.sweep_steps))
        res = evaluate_target(str(run), [f"genies:{source}"], split=VAL_SPLIT, limit=grid.eval_limit, base=False)
        scores[lr] = res["datasets"][f"genies:{source}"]["accuracy_mean"]
        margins[lr] = res["datasets"][f"genies:{source}"]["margin_mean"]
    best = choose_lr(scores, margins)
    write_json(cache, {"lr": best, "validation_accuracy": scores, "validation_margin": margins, "source": source,
                       "split": VAL_SPLIT})
    return best


def choose_lr(accuracy: dict[float, float], margin: dict[float, float]) -> float:
    """Highest validation accuracy; among ties, the larger mean margin; then the smaller rate."""
    return max(accuracy, key=lambda lr: (round(accuracy[lr], 6), margin.get(lr, float("-inf")), -lr))


def eval_sets(grid: Grid, source: str) -> dict[str, tuple[str, str, int]]:
    """column -> (dataset, split, limit)"""
    targets = [s for s in D.shift_sources(source)[1:]]
    cols = {"train": (f"genies:{source}", TRAIN_SPLIT, grid.train_eval_limit),
            "source test": (f"genies:{source}", "test", grid.eval_limit)}
    for i, t in enumerate(targets):
        cols["target" if i == 0 else f"target {i + 1}"] = (t, "test", grid.eval_limit)
    cols["unrelated"] = (grid.unrelated, "test", grid.eval_limit)
    return cols


def run_cell(grid: Grid, out: Path, source: str, method: str, seed: int, lrs: dict) -> dict:
    cell_dir = out / "cells" / source / method / f"seed{seed}"
    done = cell_dir / "cell.json"
    if done.is_file():
        return json.loads(done.read_text())
    cell_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    if method == "base":
        target = grid.model
    else:
        target = str(run_training(train_config(grid, method, source, seed, lrs[method], cell_dir / "run", grid.steps)))
    scores = {}
    for col, (dataset, split, limit) in eval_sets(grid, source).items():
        # the frozen model has its own row (method "base"): no second base pass per cell
        res = evaluate_target(target, [dataset], split=split, limit=limit, base=False)
        scores[col] = {"data": dataset, "split": split, **res["datasets"][dataset]}
    ppl = evaluate_target(target, [], split="test", limit=grid.eval_limit, retain_data=grid.retain_data)
    cell = {"shift": source, "method": method, "seed": seed, "lr": lrs.get(method), "scores": scores,
            "retain_perplexity": ppl.get("retain_perplexity"), "seconds": time.time() - start}
    write_json(done, cell)
    return cell


def write_outputs(cells: list[dict], out: Path, grid: Grid, wall: float) -> None:
    rows = []
    for c in cells:
        for col, s in c["scores"].items():
            rows.append({"shift": c["shift"], "method": c["method"], "seed": c["seed"], "lr": c["lr"], "eval": col,
                         "data": s["data"], "n": s["n"], "accuracy": s["accuracy_mean"],
                         "accuracy_sum": s["accuracy_sum"], "chance": s["chance"],
                         "perplexity_ratio": (c["retain_perplexity"] or {}).get("ratio")})
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "results.md").write_text(markdown_table(cells, grid, wall))
    figure(cells).write_html(out / "results.html", include_plotlyjs="cdn")


def _mean_sd(values: list[float]) -> str:
    if not values:
        return ""
    m = statistics.mean(values)
    return f"{m:.3f}" + (f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else "")


def markdown_table(cells: list[dict], grid: Grid, wall: float) -> str:
    cols = ["train", "source test", "target", "unrelated"]
    base = {(c["shift"], col): c["scores"][col]["accuracy_mean"] for c in cells if c["method"] == "base"
            for col in cols if col in c["scores"]}
    lines = [f"Model {grid.model}; budget: {grid.steps} steps x {grid.batch_size} pairs, max length {grid.max_length}, "
             f"LoRA r{grid.lora_r}; seeds {grid.seeds}; {grid.eval_limit} items per eval set; compute time of the cells "
             f"{wall / 60:.1f} min (learning-rate sweep not included).", "",
             "| shift | method | " + " | ".join(cols) + " | " + " | ".join(f"{c} vs base" for c in cols) + " | retain ppl ratio |",
             "|" + "---|" * (3 + 2 * len(cols))]
    groups: dict[tuple, list[dict]] = {}
    for c in cells:
        groups.setdefault((c["shift"], c["method"]), []).append(c)
    for (shift, method), cs in groups.items():
        absolute = [_mean_sd([c["scores"][col]["accuracy_mean"] for c in cs if col in c["scores"]]) for col in cols]
        relative = [_mean_sd([c["scores"][col]["accuracy_mean"] - base[(shift, col)] for c in cs
                              if col in c["scores"] and (shift, col) in base]) if method != "base" else "" for col in cols]
        ppl = [c["retain_perplexity"]["ratio"] for c in cs if c.get("retain_perplexity") and c["retain_perplexity"].get("ratio")]
        lines.append(f"| {shift} | {method} | " + " | ".join(absolute) + " | " + " | ".join(relative) + f" | {_mean_sd(ppl)} |")
    return "\n".join(lines) + "\n"


def figure(cells: list[dict]):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    shifts = list(dict.fromkeys(c["shift"] for c in cells))
    methods = list(dict.fromkeys(c["method"] for c in cells))
    cols = ["train", "source test", "target", "unrelated"]
    fig = make_subplots(rows=1, cols=len(shifts), subplot_titles=shifts, shared_yaxes=True)
    for j, method in enumerate(methods):
        for i, shift in enumerate(shifts, start=1):
            cs = [c for c in cells if c["shift"] == shift and c["method"] == method]
            if not cs:
                continue
            ys = [statistics.mean(c["scores"][col]["accuracy_mean"] for c in cs) for col in cols]
            fig.add_trace(go.Bar(x=cols, y=ys, name=method, legendgroup=method, showlegend=i == 1,
                                 marker_color=["#aaaaaa", "#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a"][j % 6]),
                          row=1, col=i)
    fig.update_layout(barmode="group", yaxis_title="accuracy (mean over seeds)", height=420)
    return fig


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--grid", help="JSON file of Grid fields (default: the built-in 3-shift grid)")
    p.add_argument("--out", default="results/compare")
    args = p.parse_args()
    grid = Grid(**json.loads(Path(args.grid).read_text())) if args.grid else Grid()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "grid.json", dataclasses.asdict(grid))
    trained = [m for m in dict.fromkeys(grid.methods + grid.extra_methods_first_shift) if m != "base"]
    lrs = {m: tune_lr(grid, m, out) for m in trained}
    cells = []
    for i, source in enumerate(grid.shifts):
        methods = grid.methods + (grid.extra_methods_first_shift if i == 0 else [])
        for method in methods:
            for seed in ([0] if method == "base" else grid.seeds):
                cells.append(run_cell(grid, out, source, method, seed, lrs))
                write_outputs(cells, out, grid, sum(c["seconds"] for c in cells))
    print((out / "results.md").read_text())


if __name__ == "__main__":
    main()
