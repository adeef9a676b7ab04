"""Does training on hidden states generalise better than DPO? A comparison grid, on any model and data.

    reprkit compare experiments/grids/transfer.json --out results/transfer
    reprkit compare my-config.json --out results/mine          # your model, your sets (``Grid.data``)
    reprkit compare my-config.json --out results/mine --status # what is done and left

>>> from reprkit.compare import Grid, run
>>> run(Grid.from_file("my-config.json"), "results/mine")

A shift trains on one set (its source) and tests on others (its targets): GENIES distributions by
name, or any set ``reprkit.data.load_items`` reads, named in ``Grid.data``. Phases,
each resumable (a finished piece writes its JSON and is never recomputed; an interrupted training
resumes from its last checkpoint):

0. **Lengths** (``max_cut_share``, ``--check-lengths``): what truncation cuts in every training and
   eval set is counted first (``truncation.json``); a set cut more than the share refuses the grid,
   naming the lengths that would fit.
1. **Learning rate per method** (per method and shift with ``tune_per_shift``, on that shift's
   source; rule ``lr_rule``: the first grids' ``choose_lr`` or ``choose_lr_not_worse``, the largest
   rate within the damage bound not significantly below the most accurate), from a sweep on the first shift's source only: ``sweep_steps``
   steps on ``train[:90%]`` (or, with ``sweep_steps: null``, a cell's whole budget, whose chosen
   run then *is* the first shift's seed-0 cell), scored on the held-out ``train[90%:]``
   (validation) and on the retain set's perplexity. The rule (``choose_lr``): among rates whose
   retain perplexity ratio is at most ``max_ppl_ratio``, the highest validation accuracy, ties
   broken by the validation margin, then the smaller rate. Never a target. ``lr_below`` rates are
   tried while every rate broke the model, ``lr_above`` rates while the largest rate is the choice;
   ``skip_broken_from`` names a shorter sweep whose broken rates are not run again. A method is
   tuned when its first cell comes up.
2. **Cells** (source, method, seed): base and mms on every shift first, then every trained method on
   every shift for seed 0 before any second seed (``cell_order``).
   A trained method runs ``epochs`` over ``train[:90%]`` in ``curve_points`` segments; after each,
   source validation and the first ``curve_target_limit`` target items are scored (the curve that
   compares methods at matched source accuracy). Then the whole test split of the source and of
   every target, the retain perplexity ratio and a few greedy samples. ``base`` is the frozen
   model; ``length`` the model-free length baselines; ``meandiff-mean`` / ``meandiff-last`` (``mms``
   in the first grids) a mean-difference residual direction read from the source's training pairs
   (token mean, or the response's own last token; layer chosen on source validation), scoring by
   projection, no training. Every log-prob score keeps, per item, the mean and sum rules' outcomes
   and each response's summed log-prob and token count (the ratio rule is computed against the
   base cell's in ``rules``). Every score keeps its per-item
   outcomes (item id, correct, margin) in the cell's ``cell.json``, and its wall time by part
   (``timing``: training, of which optimiser steps, curve scoring, final scoring, ...; summed over
   the sittings a cell took, where ``seconds`` is the last sitting's).
3. **Extras** (seed 0 of each method): TruthfulQA MC1/MC2 and the sycophancy eval on fixed subsets
   (sycophancy: rows taken in turn from each answer letter, ``letter_balanced``).
4. **Analysis** (``report``): paired differences with intervals, tables, figures.

5. **Ceilings** (``ceiling_methods``): each method named there trained on each target itself (the
   denominator of normalised transfer), after every other cell.

Several processes can run one grid side by side (``experiments/run_remeasure.sh`` starts two of one
thread each): each claims the cell or the sweep it runs (``claim``), and the others pass over it.
``--status`` says, without touching the grid, what is done, started and left, and about how long
the rest takes (``status``).

Modules: ``settings`` (``Grid``), ``cells`` (a cell, the order, the claims), ``sweep`` (phase 1),
``training`` (training in segments), ``scoring`` (phase 0 and every score, stable item ids),
``paired`` (paired statistics of runs by item id), ``design`` (the entry condition, normalised
transfer, pooled targets and the detectable difference), ``report`` (phase 4: tables and figures),
``rules``, ``matched``, ``figures``, ``status``.
"""
from __future__ import annotations

from .settings import Grid

__all__ = ["Grid", "run"]


def run(grid: Grid, out, **kwargs):
    """Run ``grid`` into the folder ``out`` (resumable): ``reprkit.compare.command.run``."""
    from .command import run as _run

    return _run(grid, out, **kwargs)
