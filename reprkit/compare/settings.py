"""A comparison grid's settings (``Grid``, one JSON file per grid: ``experiments/grids/``, or your
own), its shifts, its method families, and what a timing ran on. Shared by every part of the grid:
``cells`` (the cells and their order), ``sweep`` (learning rates), ``training`` (training in
segments), ``scoring`` (scores), and the experiments' ``select_shifts.py``."""

from __future__ import annotations

import dataclasses
import os

import torch

from reprkit import data as D
from reprkit.models import DEFAULT_MODEL

TRAIN_SPLIT, VAL_SPLIT = "train[:90%]", "train[90%:]"
"""The first grids' split of a source's training data into training and validation (``Grid``'s
default)."""


@dataclasses.dataclass
class Grid:
    model: str = DEFAULT_MODEL
    shifts: list[str] = dataclasses.field(default_factory=lambda: ["alpaca_easy->alpaca_hard"])
    """'source->target', or a source alone for every target the shift file gives it. A name in
    ``data`` is that dataset; any other name is a GENIES distribution"""
    data: dict[str, str | dict[str, str]] = dataclasses.field(default_factory=dict)
    """name -> dataset (any source ``reprkit.data.load_items`` reads: a local file, a hub id, an
    ``embedded:`` set), or ``{"train": ..., "test": ...}`` where the splits are separate files (a
    local file has one split, all its rows); for your own data. A shift between two such names
    needs no shift list"""
    shift_file: str | None = None
    """a GENIES-format shift list (default: genies/distribution_shifts/GENIES.json of the data dir)"""
    train_split: str = TRAIN_SPLIT
    """the source's training pairs (a split slice, as in HF datasets)"""
    val_split: str = VAL_SPLIT
    """the source's validation items (rates are chosen on them, never on a target)"""
    test_split: str = "test"
    """the split every final score reads (source and targets; a local file has one split: all its rows)"""
    primary_targets: list[str] | None = None
    """the evidence family, named before the runs: the targets whose hidden-state-vs-DPO comparisons
    are adjusted together (Holm) and pooled; None: every length-neutral target of the shift rule
    (``shift-selection.json``), or every target where there is no such file"""
    positive_control: str | None = None
    """a near target, named before the runs, where DPO's target gain is expected to be significant:
    the design's check that it can see transfer at all"""
    ceiling_methods: list[str] = dataclasses.field(default_factory=list)
    """methods also trained on each target itself (the ceiling normalised transfer divides by), at
    the rate the method's sweep chose on the source, with ``ceiling_max_length`` /
    ``ceiling_max_prompt_length``; cells in ``ceiling/<target>/<method>/seed<k>/``"""
    ceiling_seeds: list[int] | None = None
    """seeds of the ceiling runs (None: the grid's)"""
    ceiling_max_length: int | None = None
    """training length of a ceiling run (None: ``max_length``): a target's prompts may be longer"""
    ceiling_max_prompt_length: int | None = None
    methods: list[str] = dataclasses.field(default_factory=lambda: ["base", "mms", "dpo", "reprpo", "reroute"])
    """'base' (frozen model), 'mms' (read direction) or presets of reprkit.config.PRESETS"""
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0, 1])
    epochs: float = 1.0
    """passes over the source's train[:90%] pairs (steps = ceil(epochs * pairs / batch_size))"""
    train_limit: int | None = None
    """use only the first n training items of each source (None: all of train[:90%])"""
    batch_size: int = 4
    max_length: int = 192
    max_prompt_length: int = 96
    lora_r: int = 16
    eval_max_length: int = 256
    """tokens of prompt + response when scoring"""
    eval_max_prompt_length: int | None = None
    """tokens of prompt when scoring, cut from the left (None: half of eval_max_length)"""
    max_cut_share: float | None = None
    """refuse (before any run) a training or eval set whose share of cut items exceeds this, naming
    the lengths that would fit (None: report the share, refuse nothing: the first grids' setting)"""
    max_seen_share: float = 0.05
    """refuse (before any run) a validation or test set more than this share of whose prompts are
    training prompts of the run that scores it (a local file's "test" split is all its rows, the
    training rows among them); the count is kept in ``held-out.json`` either way"""
    eval_limit: int | None = None
    """items per final eval set (None: the whole test split)"""
    curve_points: int = 4
    """evaluations along each training run (the last at its end), for the matched-accuracy curve"""
    val_limit: int | None = None
    """source validation items (train[90%:]) scored along training and in the sweep (None: all)"""
    curve_target_limit: int = 60
    """target items scored at each curve point (the first n of the target's test split)"""
    retain_data: str = "hh-rlhf:helpful-base"
    retain_limit: int = 100
    lr_sweep: list[float] | dict[str, list[float]] = dataclasses.field(default_factory=lambda: [3e-4, 1e-3, 3e-3])
    """rates swept, for every method, or per method ``{method: [rates]}``"""
    tune_per_shift: bool = False
    """sweep each method's rate on every shift's own source validation (records in
    ``lr-epoch/<source>/``); False: once, on the first shift, for all shifts (the first grids)"""
    lr_rule: str = "accuracy-margin-smaller"
    """'accuracy-margin-smaller' (``choose_lr``: highest validation accuracy, ties by margin, then
    the smaller rate) or 'not-worse-larger' (``choose_lr_not_worse``: the largest rate whose
    validation outcomes are not significantly below the best rate's)"""
    sweep_steps: int | None = 40
    """steps per swept rate (records in ``lr/``); None: each rate trains a cell's whole budget
    (``epochs``, in the cells' curve segments and layout, records in ``lr-epoch/``), and the first
    shift's seed-0 cell of each method is the chosen rate's run"""
    lr_below: list[float] | dict[str, list[float]] = dataclasses.field(default_factory=list)
    """smaller rates tried in turn, only while every rate swept so far broke the model (or per method)"""
    lr_above: list[float] | dict[str, list[float]] = dataclasses.field(default_factory=list)
    """larger rates tried in turn, only while the largest rate swept so far is the rule's choice (or per method)"""
    skip_broken_from: str | None = None
    stop_above_broken: bool = False
    """within a sweep, a rate above one that already broke the model is not run (breaking is taken
    to grow with the rate); the record lists it as skipped"""
    """a shorter sweep's folder (relative to --out): a rate that broke the model there is not run again"""
    max_ppl_ratio: float = 3.0
    """a learning rate whose retain perplexity ratio exceeds this broke the model: not a valid choice"""
    mms_layers: str = "range(.2,.9)"
    n_samples: int = 4
    """greedy samples per cell (target test prompts), for a coherence check by eye"""
    truthfulqa_limit: int = 100
    sycophancy_limit: int = 200
    reference_cache: str | None = "reference-cache"
    """frozen-model cache directory (relative to --out), shared by every run on the same source; None: off"""
    shared_prompt: bool = True
    """cells train with each pair's prompt run once (``--shared-prompt``; the same loss to float
    rounding, 0.70-0.75x the step); the learning-rate sweep runs the concatenated layout"""

    def spec(self, name: str, split: str = "train") -> str:
        """The dataset a source or target name reads for ``split`` (its slice aside): ``data[name]``
        (its entry for the split's base name where it names one per split), else the GENIES
        distribution."""
        entry = self.data.get(name, f"genies:{name}")
        if isinstance(entry, dict):
            from ..data.sources import split_slice

            base = split_slice(split)[0]
            if base not in entry:
                raise ValueError(f"data[{name!r}] names the splits {sorted(entry)}, not {base!r} (for {split!r})")
            return entry[base]
        return entry

    def for_ceiling(self) -> Grid:
        """The settings a ceiling run trains with: the grid's, at the ceiling lengths."""
        return dataclasses.replace(self, max_length=self.ceiling_max_length or self.max_length,
                                   max_prompt_length=self.ceiling_max_prompt_length or self.max_prompt_length)

    @classmethod
    def from_file(cls, path) -> Grid:
        """A grid from a JSON file of its fields; an unknown field is an error that lists the known ones."""
        import json
        from pathlib import Path

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"comparison config {path} does not exist")
        try:
            fields = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"comparison config {path}: not JSON ({err})") from None
        known = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(set(fields) - known):
            raise ValueError(f"comparison config {path}: unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**fields)


def resolve_shifts(grid: Grid) -> dict[str, list[str]]:
    """source -> its targets, in the grid's order. A shift between names of ``grid.data`` is taken
    as written; any other is checked against the shift list."""
    listed = None
    out: dict[str, list[str]] = {}
    for spec in grid.shifts:
        source, _, target = spec.partition("->")
        source, target = source.strip(), target.strip()
        if source in grid.data:
            if not target:
                raise D.DataError(f"shift {spec!r}: a source of your own data needs its targets written out "
                                  f"('{source}->TARGET'); names in data: {sorted(grid.data)}")
            out.setdefault(source, [])
            if target not in out[source]:
                out[source].append(target)
            continue
        listed = D.genies_shifts(grid.shift_file) if listed is None else listed
        known = [s["target"] for s in listed if s["source"] == source]
        if not known:
            raise D.DataError(f"no shift in the shift list has source {source!r}; sources: "
                              f"{sorted({s['source'] for s in listed})}")
        if target and target not in known:
            raise D.DataError(f"the shift list has no shift {source}->{target}; targets of {source}: {known}")
        out.setdefault(source, [])
        out[source] += [t for t in ([target] if target else known) if t not in out[source]]
    return out


UNTRAINED = ("base", "length", "mms", "meandiff-mean", "meandiff-last")
"""Methods with no training: the frozen model, the length-only baselines, and reading baselines
(a mean-difference residual direction read from the source's training pairs: ``meandiff-mean``
from each response's token-mean state, template end tokens included, as the first grids' ``mms``;
``meandiff-last`` from the response's own last token)."""


READERS = {"mms": "mean", "meandiff-mean": "mean", "meandiff-last": "last"}


def machine() -> dict:
    """What a timing ran on: torch's threads, and the load average (1, 5, 15 min) when it ended, which
    shows whether something else shared the cores (two grid processes side by side, a test run)."""
    return {"threads": torch.get_num_threads(), "load_avg": [round(x, 2) for x in os.getloadavg()]}
