"""Circuit breakers' "reroute" loss (Zou et al. 2024, representation rerouting), on hidden states.

Chosen (retain) completions keep the frozen model's states; rejected (reroute) completions are
pushed orthogonal to where the frozen model had them. The schedule moves weight from rerouting to
retaining over training.

The reroute term starts at its maximum: a fresh LoRA adapter (B = 0) leaves every state equal to
the frozen one, where cos(h, h*) = 1 and its gradient is zero. The adapter leaves that point only
as fast as the small differences between the policy's and the frozen states grow (float rounding
at first, then the retain term's steps), so reroute moves slowly at small rates and then may move
all at once. On SmolLM2-135M (alpaca_mmlu, one epoch of 135 steps, `results/remeasure`) the reroute
term was 0.9999 after the epoch at lr 1e-3 and 0.997 at 3e-3.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from reprkit.lazy import lazy_module

if TYPE_CHECKING:
    import torch
else:  # imported on first use: the command line's parser needs this module, not torch
    torch = lazy_module("torch")

from reprkit.geometry import cosine, masked_mean

from .base import LossInputs, mean_over_layers
from .reprpo import retain_l2


def reroute_cosine(policy: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """mean_t ReLU(cos(h_t, h*_t)): zero once each token's state is orthogonal (or opposed) to the frozen one. ``[B]``."""
    return masked_mean(torch.relu(cosine(policy, reference)), mask)


def coefficients(alpha: float, progress: float) -> tuple[float, float]:
    """(c_retain, c_reroute) = (alpha * t / (2T), alpha * (1 - t / (2T))) with progress = t / T."""
    return alpha * progress / 2, alpha * (1 - progress / 2)


@dataclass
class Reroute:
    """loss = alpha * t/(2T) * retain(chosen) + alpha * (1 - t/(2T)) * ReLU(cos(h_r, h*_r))

    with retain the relative per-token L2 distance (as in ReprPO), averaged over layers and pairs.
    Separate retain / reroute sets (helpful vs harmful prompts) come in as pairs with different
    prompts per side (``reprkit.data.zip_retain_reroute``).
    """

    layers: str = "0.33,0.66"
    """layer spec of the target layers (circuit breakers: 10 and 20 of 32)"""
    alpha: float = 5.0
    """overall scale; split between retain and reroute by the schedule"""

    default_lr: ClassVar[float] = 1e-3
    default_lr_source: ClassVar[str] = (
        "the largest rate that did not break the model in the whole-budget sweeps (LoRA r16, SmolLM2-135M; "
        "3e-3 raised perplexity x4.9e4-x4.8e5); 3e-4 left it the frozen model")
    needs_logps: ClassVar[bool] = False
    needs_reference: ClassVar[bool] = True

    def layer_spec(self):
        return self.layers

    def __call__(self, inputs: LossInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c, r = inputs.chosen, inputs.rejected
        retain = mean_over_layers([retain_l2(c.hidden[k], c.ref_hidden[k], c.mask) for k in c.hidden]).mean()
        reroute = mean_over_layers([reroute_cosine(r.hidden[k], r.ref_hidden[k], r.mask) for k in r.hidden]).mean()
        c_retain, c_reroute = coefficients(self.alpha, inputs.progress)
        loss = c_retain * retain + c_reroute * reroute
        return loss, {"retain": retain.detach(), "reroute": reroute.detach(), "c_retain": torch.tensor(c_retain)}
