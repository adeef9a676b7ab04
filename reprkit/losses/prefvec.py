"""Preference-vector loss: move the chosen-minus-rejected gap of hidden states along the frozen
model's own preference vector.

The frozen model already separates a pair's chosen and rejected answers somewhat: the difference
of their token-mean states at a layer is its preference vector for that pair. This loss asks the
policy to widen that gap *in that direction*, and penalises the angle between the movement and
the vector, so the adapter pushes along what the model itself treats as "better" instead of
anywhere the loss happens to fall. Optional terms keep outputs in check: movement orthogonal to the
vector, a DPO-style hinge on log-prob ratios and a hinge on the chosen answer's NLL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from reprkit.lazy import lazy_module

if TYPE_CHECKING:
    import torch
    import torch.nn.functional as F
else:  # imported on first use: the command line's parser needs this module, not torch
    torch = lazy_module("torch")
    F = lazy_module("torch.nn.functional")

from reprkit.geometry import EPS, masked_mean

from .base import LossInputs, mean_over_layers


def preference_movement(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
                        reference_rejected: torch.Tensor, chosen_mask: torch.Tensor,
                        rejected_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(movement ``[B, H]``, preference vector ``[B, H]``) from token-mean states of one layer:

    v = mean_t h*_c - mean_t h*_r          (the frozen model's preference vector)
    m = (mean_t h_c - mean_t h*_c) - (mean_t h_r - mean_t h*_r)   (how the gap moved)
    """
    pc, pr = masked_mean(policy_chosen, chosen_mask), masked_mean(policy_rejected, rejected_mask)
    rc, rr = masked_mean(reference_chosen, chosen_mask), masked_mean(reference_rejected, rejected_mask)
    return (pc - rc) - (pr - rr), rc - rr


@dataclass
class PrefVec:
    """Per pair and layer, with m the movement of the gap and v the frozen preference vector:

    along  = (m . v / |v|) / |v|                         movement along v, in units of |v|
    angle  = 1 - cos(m, v)                               0 when the gap moves exactly along v
    orth   = |m - (m . v / |v|^2) v| / |v|               movement off v, in units of |v|
    logp   = ReLU(-(log ratio chosen - log ratio rejected)), log ratio = per-token mean log pi - log ref
    nll    = ReLU(nll_c - nll*_c), per-token mean NLL of the chosen answer

    loss = w_along * ReLU(target - along) + w_angle * angle + w_orth * orth + w_logp * logp + w_nll * nll

    averaged over loss layers and pairs. The along term is a hinge: once the gap has grown by
    ``target`` frozen gaps it stops pulling, so nothing rewards pushing states off to infinity.
    ``w_logp`` or ``w_nll`` above 0 need log-probs (the forward then runs to the LM head).
    """

    layers: str = "0.33,0.5,0.66"
    """layer spec of the loss layers (as ReprPO's)"""
    target: float = 1.0
    """how far the gap should move along v, in units of |v| (the hinge's knee)"""
    w_along: float = 1.0
    """weight of the movement along the frozen preference vector"""
    w_angle: float = 1.0
    """weight of the angle between movement and vector"""
    w_orth: float = 0.0
    """weight of movement orthogonal to the vector"""
    w_logp: float = 0.0
    """weight of the hinge keeping the chosen log-prob ratio above the rejected one's (needs the LM head)"""
    w_nll: float = 0.0
    """weight of the hinge on the chosen answer's NLL rising above the frozen model's (needs the LM head)"""

    default_lr: ClassVar[float] = 1e-3
    default_lr_source: ClassVar[str] = (
        "the rate chosen on alpaca_mmlu validation (whole-budget sweep, LoRA r16, SmolLM2-135M, perplexity x2.2); "
        "alpaca_short chose 3e-3")
    needs_reference: ClassVar[bool] = True

    @property
    def needs_logps(self) -> bool:
        return self.w_logp > 0 or self.w_nll > 0

    def layer_spec(self):
        return self.layers

    def __call__(self, inputs: LossInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c, r = inputs.chosen, inputs.rejected
        along, angle, orth = [], [], []
        for k in c.hidden:
            m, v = preference_movement(c.hidden[k], r.hidden[k], c.ref_hidden[k], r.ref_hidden[k], c.mask, r.mask)
            v_norm = v.norm(dim=-1).clamp_min(EPS)
            proj = (m * v).sum(-1) / v_norm
            along.append(proj / v_norm)
            angle.append(1 - F.cosine_similarity(m, v, dim=-1, eps=EPS))
            orth.append((m - (proj / v_norm)[:, None] * v).norm(dim=-1) / v_norm)
        along, angle, orth = (mean_over_layers(x) for x in (along, angle, orth))
        loss = self.w_along * torch.relu(self.target - along) + self.w_angle * angle + self.w_orth * orth
        metrics = {"along": along.mean().detach(), "angle": angle.mean().detach(), "orth": orth.mean().detach()}
        if self.needs_logps:
            ratio_c = (c.logps - c.ref_logps) / c.n_tokens
            ratio_r = (r.logps - r.ref_logps) / r.n_tokens
            logp = torch.relu(-(ratio_c - ratio_r))
            nll = torch.relu(-ratio_c)  # nll_c - nll*_c = -(log pi - log ref) per token
            loss = loss + (self.w_logp * logp + self.w_nll * nll).to(loss.device)  # the head's device under a map
            metrics |= {"logp_hinge": logp.mean().detach(), "nll_hinge": nll.mean().detach()}
        return loss.mean(), metrics
