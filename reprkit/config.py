"""The training config: one dataclass, parsed by tyro (``reprkit train --help`` documents every field)."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from reprkit.losses import DPO, LOSSES, PlackettLuce, PrefVec, Reroute, ReprPO

from .models import DEFAULT_MODEL


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
class TrainConfig:
    """Train a LoRA adapter with a hidden-state loss (or DPO) and track it against the frozen model."""

    loss: Literal["reprpo", "dpo", "reroute", "plackett_luce", "prefvec"] = "reprpo"
    """which loss to train; its settings are under --reprpo.*, --dpo.*, --reroute.*, --plackett-luce.*, --prefvec.*"""
    model: str = DEFAULT_MODEL
    """hub id, local folder, or the default model's name"""
    data: str = "embedded:arithmetic"
    """training data: embedded[:task], genies:<name>, hh-rlhf:<subset>, a local file, or a hub id"""
    eval_data: tuple[str, ...] = ("embedded:arithmetic", "embedded:comparisons", "embedded:capitals")
    """held-out data for preference accuracy (test splits); the first is in-distribution"""
    train_split: str = "train"
    """split of the training data (slices as in HF datasets: train[:90%])"""
    eval_split: str = "test"
    """split of the eval data to score"""
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
    max_length: int = 192
    """tokens of prompt + completion (completions are cut from the right)"""
    max_prompt_length: int = 128
    """tokens of prompt (prompts are cut from the left)"""
    chat_template: bool | None = None
    """apply the tokenizer's chat template (None: when it has one)"""

    reprpo: ReprPO = field(default_factory=ReprPO)
    """settings of the reprpo loss"""
    dpo: DPO = field(default_factory=DPO)
    """settings of the dpo loss"""
    reroute: Reroute = field(default_factory=Reroute)
    """settings of the reroute loss"""
    plackett_luce: PlackettLuce = field(default_factory=PlackettLuce)
    """settings of the plackett_luce loss (all K ranked responses of an item at once)"""
    prefvec: PrefVec = field(default_factory=PrefVec)
    """settings of the prefvec loss (move the chosen-rejected gap along the frozen preference vector)"""
    lora: LoraSettings = field(default_factory=LoraSettings)
    """the LoRA adapter"""
    track_layers: str | None = None
    """layers to track (cosine / norm ratio vs frozen); default: the loss layers, or ReprPO's for DPO"""

    steps: int = 120
    """optimiser steps"""
    batch_size: int = 8
    """pairs per micro-batch (per process)"""
    grad_accum: int = 1
    """micro-batches per optimiser step"""
    lr: float | None = None
    """learning rate (None: the loss's preset, see LR_PRESETS)"""
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
    seed: int = 0
    """seed of the data order and of LoRA's initialisation"""

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

    def validate(self) -> None:
        """Raise ValueError naming the fix for settings that cannot work (before anything is written)."""
        if (self.retain_data is None) != (self.reroute_data is None) or (self.retain_data and self.loss != "reroute"):
            raise ValueError("--retain-data and --reroute-data go together, with --loss reroute")
        if self.max_prompt_length >= self.max_length:
            raise ValueError(f"--max-prompt-length ({self.max_prompt_length}) must be below --max-length ({self.max_length})")
        for name in ("steps", "batch_size", "grad_accum", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
        if self.warmup_steps < 0 or self.save_every < 0 or self.eval_every < 0:
            raise ValueError("--warmup-steps, --save-every and --eval-every cannot be negative")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"--lr must be positive (got {self.lr}); typical LoRA rates are 1e-4 to 3e-3")
        if self.max_prompt_length < 1:
            raise ValueError("--max-prompt-length must be at least 1")
        if self.limit is not None and self.limit < 1 or self.eval_limit is not None and self.eval_limit < 1:
            raise ValueError("--limit and --eval-limit must be at least 1 (or omitted for all items)")
        if self.weight_decay < 0 or self.max_grad_norm <= 0:
            raise ValueError("--weight-decay cannot be negative and --max-grad-norm must be positive")
        if self.lora.r < 1 or self.lora.alpha <= 0 or not 0 <= self.lora.dropout < 1:
            raise ValueError("--lora.r must be at least 1, --lora.alpha positive, --lora.dropout in [0, 1)")
        loss = self.loss_fn()
        for name, value in vars(loss).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and (name.startswith("w_") or name in (
                    "alpha", "target")) and value < 0:
                raise ValueError(f"--{self.loss.replace('_', '-')}.{name.replace('_', '-')} cannot be negative (got {value})")
        if getattr(loss, "beta", 1.0) <= 0:
            raise ValueError(f"--{self.loss}.beta must be positive (got {loss.beta})")

    def loss_fn(self):
        return getattr(self, self.loss)

    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else LR_PRESETS[self.loss]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        nested = {**LOSSES, "lora": LoraSettings}
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


# Learning rates per loss for LoRA r16 on SmolLM2-135M.
LR_PRESETS = {"reprpo": 3e-4, "dpo": 1e-4, "reroute": 3e-4, "plackett_luce": 1e-4, "prefvec": 1e-3}

# Named presets (``reprkit train --preset NAME``): a method and its settings; flags still override.
PRESETS: dict[str, dict] = {
    "reprpo": {"loss": "reprpo"},
    "reprpo-direction": {"loss": "reprpo", "reprpo": ReprPO(retain="direction")},
    "reprpo-no-magnitude": {"loss": "reprpo", "reprpo": ReprPO(w_magnitude=0.0)},
    "reprpo-direction-only": {"loss": "reprpo", "reprpo": ReprPO(retain="direction", w_magnitude=0.0)},
    "dpo": {"loss": "dpo"},
    "ipo": {"loss": "dpo", "dpo": DPO(ipo=True)},
    "dr-dpo": {"loss": "dpo", "dpo": DPO(dr_beta=1.0)},
    "reroute": {"loss": "reroute"},
    "plackett-luce": {"loss": "plackett_luce"},
    "prefvec": {"loss": "prefvec"},
    "prefvec-hinges": {"loss": "prefvec", "prefvec": PrefVec(w_orth=1.0, w_logp=1.0, w_nll=1.0)},
}


def preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {sorted(PRESETS)}")
    return dataclasses.replace(TrainConfig(), **copy.deepcopy(PRESETS[name]))
