"""The training config: one dataclass, parsed by tyro (``reprkit train --help`` documents every field)."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field, make_dataclass
from typing import Annotated, Literal

from reprkit.losses import DPO, LOSSES, PrefVec, ReprPO

from .packaged import DEFAULT_MODEL


@dataclass
class LoraSettings:
    r: int = 16
    """rank"""
    alpha: int = 32
    """scale numerator: the update is (alpha / r) * B A"""
    dropout: float = 0.0
    """dropout on the LoRA input"""
    target_modules: str = "all-linear"
    """'all-linear' or a comma list of module names (q_proj,v_proj)"""
    rslora: bool = False
    """rank-stabilised scaling alpha / sqrt(r)"""
    dora: bool = False
    """weight-decomposed LoRA (DoRA)"""
    up_to_last_loss_layer: bool = True
    """put LoRA only on blocks up to the deepest loss layer (later blocks get no gradient anyway)"""


@dataclass
class VectorSettings:
    layers: str = "0.5"
    """layer spec of the blocks whose outputs get a learnt vector (one per block; '0.5': the middle one)"""
    positions: str = "all"
    """where it is added: all, prompt, response, or pyreft's f<k>+l<k> (first / last k prompt tokens)"""
    scale: bool = False
    """learn a per-layer scale beside each vector"""


@dataclass
class ReftSettings:
    layers: str = "0.5"
    """layer spec of the blocks whose outputs get a LoReFT intervention"""
    rank: int = 4
    """rank r of R (orthonormal rows) and W"""
    positions: str = "f1+l1"
    """where it acts: pyreft's f<k>+l<k> (first / last k prompt tokens), prompt, response or all"""


@dataclass
class _Settings:
    """Train a LoRA adapter with a hidden-state loss (or DPO) and track it against the frozen model."""

    loss: str = "reprpo"
    """which loss to train (a name in reprkit.losses.LOSSES); TrainConfig makes this a choice"""
    model: str = DEFAULT_MODEL
    """hub id, local folder, or the default model's name"""
    data: str = "embedded:arithmetic"
    """training data: embedded[:task], genies:<name>, hh-rlhf:<subset>, a local file, or a hub id"""
    eval_data: tuple[str, ...] = ("embedded:arithmetic", "embedded:comparisons", "embedded:capitals")
    """held-out data for preference accuracy (test splits); the first is in-distribution"""
    train_split: str = "train"
    """split of the training data (slices as in HF datasets: train[:90%])"""
    eval_split: str = "test"
    """split of the eval data to score: one split for every set, or per set as SET=SPLIT entries
    separated by commas outside brackets (`my.jsonl=train[80%:],test`: the slice for my.jsonl, test for
    the others)"""
    pairs: Literal["best_vs_worst", "best_vs_all"] = "best_vs_worst"
    """how items with more than two responses become pairs"""
    ranking: Literal["best_vs_worst", "full"] = "best_vs_worst"
    """scored rows (HelpSteer): keep each prompt's best and worst response, or all of them ranked (full)"""
    retain_data: str | None = None
    """reroute only: a separate retain set (chosen side), paired with --reroute-data"""
    reroute_data: str | None = None
    """reroute only: a separate set to reroute (rejected side)"""
    limit: int | None = None
    """use at most this many training items"""
    eval_limit: int | None = 100
    """use at most this many items per eval set"""
    max_bad_rows: float = 0.1
    """share of the training rows that may be bad (skipped, with a warning naming them); more stops
    before training, naming the rows"""
    max_length: int = 192
    """tokens of prompt + completion (completions are cut from the right)"""
    max_prompt_length: int = 128
    """tokens of prompt (prompts are cut from the left)"""
    chat_template: bool | None = None
    """apply the tokenizer's chat template (None: when it has one)"""

    intervention: Literal["lora", "vector", "reft"] = "lora"
    """what training changes: a LoRA adapter (--lora.*), a steering vector per layer (--vector.*) or a
    LoReFT intervention per layer (--reft.*); the frozen model is the model with it switched off"""
    lora: LoraSettings = field(default_factory=LoraSettings)
    """the LoRA adapter"""
    vector: VectorSettings = field(default_factory=VectorSettings)
    """the steering vectors (--intervention vector)"""
    reft: ReftSettings = field(default_factory=ReftSettings)
    """the LoReFT interventions (--intervention reft)"""
    track_layers: str | None = None
    """layers to track (cosine / norm ratio vs frozen); default: the loss layers, or ReprPO's for DPO"""

    steps: int = 120
    """optimiser steps"""
    batch_size: int = 8
    """pairs per micro-batch (per process)"""
    grad_accum: int = 1
    """micro-batches per optimiser step"""
    lr: float | None = None
    """learning rate (None: the loss's default_lr)"""
    weight_decay: float = 0.0
    """AdamW weight decay"""
    warmup_steps: int = 10
    """linear warm-up from 0 to the learning rate"""
    schedule: Literal["constant", "cosine"] = "constant"
    """learning-rate schedule after warm-up"""
    max_grad_norm: float = 1.0
    """gradient clipping"""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """weights dtype (bfloat16 halves memory; hidden-state maths stays float32)"""
    mixed_precision: Literal["no", "bf16"] = "no"
    """autocast: float32 weights and optimiser, matmuls in bfloat16 (accelerate's mixed precision)"""
    quantization: Literal["4bit", "8bit"] | None = None
    """load the base model in 4-bit (nf4) or 8-bit with bitsandbytes"""
    gradient_checkpointing: bool = False
    """recompute block activations in the backward (less memory, more time)"""
    shared_prompt: bool = False
    """run each pair's prompt once and both completions on its KV cache (fewer tokens per step; the
    same loss to float rounding; not with gradient checkpointing, FSDP or ranked losses)"""
    seed: int = 0
    """seed of the data order and of LoRA's initialisation"""
    reference_cache: str | None = None
    """directory of the frozen-model cache: the frozen pass's outputs on the training pairs are computed
    once (per model, data, encoding, layers and precision) and read back instead of recomputed each step"""

    run_dir: str | None = None
    """where to write the run (default: runs/<time>-<loss>)"""
    resume: str | None = None
    """continue the run in this directory from its last checkpoint (its config is used)"""
    log_every: int = 1
    """append a metrics line every n steps"""
    save_every: int = 40
    """write a checkpoint every n steps (the last one is kept)"""
    eval_every: int = 0
    """evaluate (and sample) every n steps; 0: only before and after training"""
    n_samples: int = 3
    """sample generations per evaluation"""
    progress: bool = True
    """show a progress bar"""
    dry_run: bool = False
    """load, encode and run two training steps (the first on the longest pairs, for peak memory; the
    second on the run's first batch, for time), print the cost of the whole run and exit: nothing is
    written"""

    def validate(self) -> None:
        """Raise ValueError naming the flag, its valid range and the fix for settings that cannot
        work, before anything is loaded or written: every number finite and in its range (the
        active loss's settings too), and the combinations that cannot run."""
        if (self.retain_data is None) != (self.reroute_data is None) or (self.retain_data and self.loss != "reroute"):
            raise ValueError("--retain-data and --reroute-data go together, with --loss reroute")
        for name in ("steps", "batch_size", "grad_accum", "log_every"):
            in_range(_flag(name), getattr(self, name), lo=1)
        for name in ("warmup_steps", "save_every", "eval_every", "n_samples"):
            in_range(_flag(name), getattr(self, name), lo=0)
        in_range("--max-length", self.max_length, lo=2)
        in_range("--max-bad-rows", self.max_bad_rows, lo=0, hi=1)
        in_range("--max-prompt-length", self.max_prompt_length, lo=1)
        if self.max_prompt_length >= self.max_length:
            raise ValueError(f"--max-prompt-length ({self.max_prompt_length}) must be below --max-length ({self.max_length})")
        for name in ("limit", "eval_limit"):
            if getattr(self, name) is not None:
                in_range(_flag(name), getattr(self, name), lo=1, fix="or omit it for every item")
        if self.lr is not None:
            in_range("--lr", self.lr, lo=0, lo_open=True, hi=1.0,
                     fix="LoRA rates that train lie between about 1e-5 and 1e-2")
        in_range("--weight-decay", self.weight_decay, lo=0)
        if self.learning_rate() * self.weight_decay >= 1:
            raise ValueError(f"--lr x --weight-decay is {self.learning_rate() * self.weight_decay:g}: at 1 or more "
                             "AdamW's decoupled decay zeroes or flips every weight each step; typical weight decay is 0 to 0.1")
        in_range("--max-grad-norm", self.max_grad_norm, lo=0, lo_open=True, fix="1.0 is usual")
        in_range("--lora.r", self.lora.r, lo=1, hi=65536)
        in_range("--lora.alpha", self.lora.alpha, lo=0, lo_open=True)
        in_range("--lora.dropout", self.lora.dropout, lo=0, hi=1, hi_open=True)
        self.validate_loss()
        self.validate_intervention()
        loss = self.loss_fn()
        if self.shared_prompt and (self.gradient_checkpointing or getattr(loss, "ranked", False)):
            raise ValueError("--shared-prompt needs the KV cache in the training forward and chosen/rejected pairs: "
                             "drop it with --gradient-checkpointing or a ranked loss")
        if self.reference_cache and getattr(loss, "ranked", False):
            raise ValueError(f"--reference-cache covers chosen/rejected pairs; the {self.loss} loss ranks K responses: "
                             "drop --reference-cache")

    def validate_intervention(self) -> None:
        """The intervention's settings, and the combinations it cannot run with."""
        from reprkit.interventions import parse_positions

        if self.intervention == "lora":
            return
        settings = getattr(self, self.intervention)
        try:
            parse_positions(settings.positions)
        except ValueError as err:
            raise ValueError(f"--{self.intervention}.positions: {err}") from None
        if self.intervention == "reft":
            in_range("--reft.rank", self.reft.rank, lo=1)
        if getattr(self.loss_fn(), "ranked", False):
            raise ValueError(f"--intervention {self.intervention} trains on chosen/rejected pairs; the {self.loss} loss "
                             "ranks K responses: use --intervention lora with it")

    def validate_loss(self) -> None:
        """The active loss's numbers: each finite; weights (``w_*``), ``alpha`` at least 0 and not all
        weights 0; ``beta``, ``target``, ``dr_beta`` above 0; ``label_smoothing`` in [0, 0.5). A
        registered loss may add its own checks as a ``validate()`` method."""
        loss, group = self.loss_fn(), "--" + self.loss.replace("_", "-")
        numbers = {f.name: getattr(loss, f.name) for f in dataclasses.fields(loss)
                   if isinstance(getattr(loss, f.name), (int, float)) and not isinstance(getattr(loss, f.name), bool)}
        for name, value in numbers.items():
            flag = f"{group}.{name.replace('_', '-')}"
            if name.startswith("w_") or name == "alpha":
                in_range(flag, value, lo=0)
            elif name in ("beta", "target", "dr_beta"):
                in_range(flag, value, lo=0, lo_open=True)
            elif name == "label_smoothing":
                in_range(flag, value, lo=0, hi=0.5, hi_open=True,
                         fix="at 0.5 chosen and rejected count the same, above it DPO learns the reverse preference")
            else:
                in_range(flag, value)
        weights = {k: v for k, v in numbers.items() if k.startswith("w_")}
        if weights and not any(weights.values()):
            raise ValueError(f"every weight of the {self.loss} loss is 0 ({', '.join(f'{group}.' + k.replace('_', '-') for k in weights)}): "
                             "the loss is constant and trains nothing; set one above 0")
        if hasattr(loss, "validate"):
            loss.validate()

    def eval_split_for(self, source: str) -> str:
        """The split ``--eval-split`` names for ``source`` (``split_for``)."""
        return split_for(self.eval_split, source)

    def loss_fn(self):
        return getattr(self, self.loss)

    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else LOSSES[self.loss].default_lr

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> _Settings:
        d = dict(d)
        nested = {**LOSSES, "lora": LoraSettings, "vector": VectorSettings, "reft": ReftSettings}
        for key, typ in nested.items():
            if key in d and isinstance(d[key], dict):
                d[key] = typ(**d[key])
        for key in ("eval_data",):
            if key in d and isinstance(d[key], list):
                d[key] = tuple(d[key])
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown config fields {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


def split_entries(spec: str) -> tuple[str, dict[str, str]]:
    """A split spec's default split (``"test"`` when it names none) and its ``SET=SPLIT`` entries;
    commas inside brackets belong to the split."""
    import re

    default, named = "test", {}
    for e in (e.strip() for e in re.split(r",(?![^\[]*\])", spec)):
        name, eq, split = e.rpartition("=")
        if eq:
            named[name.strip()] = split.strip()
        elif e:
            default = e
    return default, named


def split_for(spec: str, source: str) -> str:
    """The split of ``source`` a split spec names: a plain split (``"test"``, ``"train[80%:]"``) for
    every set, or comma-separated ``SET=SPLIT`` entries with an optional plain default."""
    default, named = split_entries(spec)
    return named.get(source, default)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def in_range(flag: str, value, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
             hi_open: bool = False, fix: str = "") -> None:
    """``ValueError`` naming ``flag``, its value and its range unless ``value`` is a finite number in
    it (``lo``/``hi`` inclusive unless ``*_open``)."""
    import math

    low = "" if lo is None else ("(" if lo_open else "[") + f"{lo:g}"
    high = "" if hi is None else f"{hi:g}" + (")" if hi_open else "]")
    where = f" in {low or '(-inf'}, {high or 'inf)'}" if (lo is not None or hi is not None) else ""
    bad = not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)
    if not bad:
        bad = (lo is not None and (value <= lo if lo_open else value < lo)) or \
              (hi is not None and (value >= hi if hi_open else value > hi))
    if bad:
        raise ValueError(f"{flag} must be a finite number{where} (got {value!r})" + (f"; {fix}" if fix else ""))


def _config_class(losses: dict[str, type]) -> type:
    """``TrainConfig``: the settings above plus one ``--<name>.*`` group per registered loss, and
    ``--loss`` choosing among them. Built from the registry, so a loss is added in one place."""
    import tyro

    choice = tyro.conf.arg(help="which loss to train; its settings are under --<loss>.* (registry: reprkit.losses.LOSSES)")
    rates = "; ".join(f"{name} {cls.default_lr:g} ({getattr(cls, 'default_lr_source', 'not swept')})"
                      for name, cls in losses.items())
    lr_help = tyro.conf.arg(help=f"learning rate (None: the loss's default: {rates})")
    fields = [("loss", Annotated[Literal[tuple(losses)], choice], field(default="reprpo")),
              ("lr", Annotated[float | None, lr_help], field(default=None))]
    for name, cls in losses.items():
        summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        fields.append((name, Annotated[cls, tyro.conf.arg(help=f"settings of the {name} loss: {summary}")],
                       field(default_factory=cls)))
    made = make_dataclass("TrainConfig", fields, bases=(_Settings,))
    made.__module__, made.__doc__ = __name__, _Settings.__doc__
    return made


TrainConfig = _config_class(LOSSES)


def register_loss(name: str, cls: type, preset_name: str | None = None) -> None:
    """Add a loss (a dataclass with ``layer_spec()``, ``needs_logps``, ``needs_reference``,
    ``default_lr`` and ``__call__(LossInputs) -> (loss, metrics)``) to the registry: ``--loss NAME``,
    ``--NAME.*`` flags and a preset follow. Losses shipped with reprkit are one line in
    ``reprkit.losses.LOSSES`` instead."""
    if not name.isidentifier():
        raise ValueError(f"a loss name must be a Python identifier, got {name!r}")
    global TrainConfig
    LOSSES[name] = cls
    TrainConfig = _config_class(LOSSES)
    PRESETS.setdefault(preset_name or name.replace("_", "-"), {"loss": name})


# Named presets (``reprkit train --preset NAME``): a method and its settings; flags still override.
PRESETS: dict[str, dict] = {
    **{name.replace("_", "-"): {"loss": name} for name in LOSSES},  # each loss with its defaults
    "reprpo-direction": {"loss": "reprpo", "reprpo": ReprPO(retain="direction")},
    "reprpo-no-magnitude": {"loss": "reprpo", "reprpo": ReprPO(w_magnitude=0.0)},
    "reprpo-direction-only": {"loss": "reprpo", "reprpo": ReprPO(retain="direction", w_magnitude=0.0)},
    "ipo": {"loss": "dpo", "dpo": DPO(ipo=True)},
    "dr-dpo": {"loss": "dpo", "dpo": DPO(dr_beta=1.0)},
    "prefvec-hinges": {"loss": "prefvec", "prefvec": PrefVec(w_orth=1.0, w_logp=1.0, w_nll=1.0)},
    # the same objectives training a vector or a LoReFT at the middle block instead of LoRA (the
    # comparison's methods are presets, so these are what `reprkit compare` can name)
    **{f"{loss.replace('_', '-')}-{kind}": {"loss": loss, "intervention": kind}
       for loss in ("dpo", "bipo", "reps", "reprpo", "reroute", "prefvec") for kind in ("vector", "reft")},
    # `make demo`: a task the frozen model gets mostly wrong (0.350), so that 40 steps can show an effect
    "demo": {"loss": "dpo", "data": "embedded:comparisons", "steps": 40,
             "eval_data": ("embedded:comparisons", "embedded:arithmetic", "embedded:capitals")},
}


def preset(name: str):
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {sorted(PRESETS)}")
    return dataclasses.replace(TrainConfig(), **copy.deepcopy(PRESETS[name]))
