"""ReprPO, "retain magnitude, change direction": a preference loss on hidden states only.

On chosen completions the policy's hidden states stay where the frozen model has them; on rejected
completions their *direction* turns toward the frozen model's chosen direction while each token's
*magnitude* stays where the frozen model had it. No log-probs, no LM head: a forward that stops
after the deepest loss layer is enough.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

from reprkit.lazy import lazy_module

if TYPE_CHECKING:
    import torch
else:  # imported on first use: the command line's parser needs this module, not torch
    torch = lazy_module("torch")

from reprkit.geometry import EPS, cosine, magnitude, masked_mean

from .base import LossInputs, global_sum, mean_over_layers, world_size


def retain_l2(policy: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token L2 distance, relative to the frozen token's norm, masked mean over tokens: ``[B]``.

    retain = mean_t |h_t - h*_t| / |h*_t|

    (circuit breakers' per-token L2 distance, not MSE; dividing by |h*_t| makes one weight work
    across layers whose norms differ by 10-100x.)
    """
    dist = torch.linalg.vector_norm(policy.float() - reference.float(), dim=-1)
    return masked_mean(dist / magnitude(reference).clamp_min(EPS), mask)


def retain_direction(policy: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Direction-only retain: mean_t (1 - cos(h_t, h*_t)), norms left free. ``[B]``."""
    return masked_mean(1 - cosine(policy, reference), mask)


def starting_gap(reference_rejected: torch.Tensor, rejected_mask: torch.Tensor, reference_chosen: torch.Tensor,
                 chosen_mask: torch.Tensor) -> torch.Tensor:
    """The frozen model's own gap per pair, ``1 - cos(mean_t h*_r, mean_t h*_c)``: ``[B]``, no grad."""
    target = masked_mean(reference_chosen, chosen_mask)
    return (1 - cosine(masked_mean(reference_rejected, rejected_mask), target)).detach()


def direction_toward(policy_rejected: torch.Tensor, rejected_mask: torch.Tensor, reference_rejected: torch.Tensor,
                     reference_chosen: torch.Tensor, chosen_mask: torch.Tensor, total_start: torch.Tensor | None = None,
                     pieces: int = 1) -> torch.Tensor:
    """How far the rejected completion's mean state still is from the frozen chosen direction, as a
    fraction of where the frozen model started (a scalar, 1 at the start, 0 when aligned):

    direction = sum_b (1 - cos(mean_t h_r, mean_t h*_c)) / sum_b (1 - cos(mean_t h*_r, mean_t h*_c))

    Means over completion tokens, as chosen and rejected tokens do not align. Dividing by the frozen
    model's own gap (ratio of batch sums, stable when one pair's gap is tiny) keeps the term near 1
    whatever the data: answers that differ in one token start with cosines of 0.998 and would
    otherwise give this term no weight against the retain term.

    The denominator is the whole global batch's: ``total_start`` (the sum over every micro-batch
    and process, ``ReprPO.batch_totals``) when the trainer split the batch into ``pieces``
    micro-batches, else this batch's summed over processes. The numerator is scaled by the
    processes and pieces, so that averaged (processes) and accumulated (pieces) gradients equal
    those of the whole batch in one piece.
    """
    target = masked_mean(reference_chosen, chosen_mask)
    gap = 1 - cosine(masked_mean(policy_rejected, rejected_mask), target)
    if total_start is None:
        total_start = global_sum(starting_gap(reference_rejected, rejected_mask, reference_chosen, chosen_mask).sum())
    return gap.sum() * world_size() * pieces / total_start.to(gap.device).clamp_min(EPS)


def magnitude_kept(policy: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """mean_t (log |h_t| - log |h*_t|)^2: each token keeps the frozen model's norm. ``[B]``.

    Log ratio, so shrinking toward zero costs without bound: the loss cannot escape the direction
    term by collapsing norms.
    """
    log_ratio = torch.log(magnitude(policy).clamp_min(EPS)) - torch.log(magnitude(reference).clamp_min(EPS))
    return masked_mean(log_ratio**2, mask)


@dataclass
class ReprPO:
    """loss = w_retain * retain(chosen) + w_direction * direction(rejected -> frozen chosen) + w_magnitude * (log|h_r| - log|h*_r|)^2

    averaged over loss layers and pairs. Variants by config:

    - ``retain="l2"`` (default): chosen states keep direction *and* norm (relative L2 distance);
    - ``retain="direction"``: chosen states keep only their direction (1 - cos), norms free;
    - ``w_magnitude=0``: rejected norms unconstrained, only their mean direction is trained.
    """

    layers: str = "0.33,0.5,0.66"
    """layer spec of the loss layers (default 9, 15, 19 of 30: the forward stops after 19)"""
    retain: Literal["l2", "direction"] = "l2"
    """what the chosen side keeps: 'l2' (state) or 'direction' (cosine only)"""
    w_retain: float = 1.0
    """weight of the retain term on chosen completions"""
    w_direction: float = 1.0
    """weight of turning rejected completions toward the frozen chosen direction"""
    w_magnitude: float = 1.0
    """weight of keeping rejected token norms (0: the no-magnitude variant)"""

    default_lr: ClassVar[float] = 3e-3
    default_lr_source: ClassVar[str] = (
        "the most accurate rate on validation in all three whole-budget sweeps (alpaca_mmlu twice, alpaca_short; "
        "LoRA r16, SmolLM2-135M; perplexity x1.08-1.96); 1e-2 broke the model (x9-x129); the previous default 3e-4 lies below every rate swept")
    needs_logps: ClassVar[bool] = False
    needs_reference: ClassVar[bool] = True
    split_totals: ClassVar[bool] = True  # the direction term divides by a batch sum (``batch_totals``)

    def layer_spec(self):
        return self.layers

    def batch_totals(self, inputs: LossInputs) -> dict[str, torch.Tensor]:
        """Per loss layer, the batch's summed starting gap (``starting_gap``): the denominator of
        the direction term, which the trainer sums over a split batch's pieces."""
        c, r = inputs.chosen, inputs.rejected
        return {f"start/{layer}": starting_gap(r.ref_hidden[layer], r.mask, c.ref_hidden[layer], c.mask).sum()
                for layer in c.ref_hidden}

    def __call__(self, inputs: LossInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c, r = inputs.chosen, inputs.rejected
        retain_fn = retain_l2 if self.retain == "l2" else retain_direction
        retain, direction, mag = [], [], []
        for layer in c.hidden:
            retain.append(retain_fn(c.hidden[layer], c.ref_hidden[layer], c.mask))
            total = inputs.totals.get(f"start/{layer}") if inputs.totals else None
            direction.append(direction_toward(r.hidden[layer], r.mask, r.ref_hidden[layer], c.ref_hidden[layer], c.mask,
                                              total, inputs.pieces))
            mag.append(magnitude_kept(r.hidden[layer], r.ref_hidden[layer], r.mask))
        retain, direction, mag = (mean_over_layers(x).mean() for x in (retain, direction, mag))
        loss = self.w_retain * retain + self.w_direction * direction + self.w_magnitude * mag
        return loss, {"retain": retain.detach(), "direction": direction.detach(), "magnitude": mag.detach()}
