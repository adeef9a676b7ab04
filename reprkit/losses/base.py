"""What a loss receives: the policy's (and frozen model's) hidden states and log-probs of a batch of pairs.

A loss is a small dataclass: its fields are its hyperparameters, and it declares what it needs:

- ``layer_spec()``: the layers whose block outputs it reads (``None``: none);
- ``needs_logps``: whether it needs completion log-probabilities (and so the LM head);
- ``needs_reference``: whether it needs the frozen model's pass (adapter disabled);
- ``batch_totals(inputs) -> {name: tensor}`` (optional): sums over the batch of frozen-model
  quantities the loss normalises by (ReprPO's starting gap). When a step's batch is split (micro-
  batches of ``--grad-accum``, or processes) the trainer sums them over the whole global batch
  first and passes them in ``LossInputs.totals``, with ``pieces`` the number of micro-batches:
  so the accumulated gradient equals that of the whole batch in one piece.

The trainer computes exactly that and calls ``loss(inputs) -> (scalar, metrics)``. A loss that
is a mean over pairs needs nothing of this: equal micro-batches average to the batch's mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from reprkit.lazy import lazy_module

if TYPE_CHECKING:
    import torch
else:  # imported on first use: the command line's parser needs this module, not torch
    torch = lazy_module("torch")


@dataclass
class Side:
    """One side (chosen or rejected) of a batch of ``B`` pairs, right-padded to ``T`` tokens.

    ``hidden`` / ``ref_hidden``: ``{layer: [B, T, H]}`` block outputs of the policy (in the graph) and
    of the frozen model (no grad). ``mask``: ``[B, T]``, 1 on completion tokens. ``logps`` /
    ``ref_logps``: ``[B]`` summed completion log-probabilities. ``n_tokens``: ``[B]`` completion lengths.
    """

    mask: torch.Tensor
    hidden: dict[int, torch.Tensor]
    ref_hidden: dict[int, torch.Tensor]
    logps: torch.Tensor | None = None
    ref_logps: torch.Tensor | None = None

    @property
    def n_tokens(self) -> torch.Tensor:
        """Completion lengths ``[B]``, beside the log-probs they divide (the mask can live elsewhere)."""
        n = self.mask.sum(-1).clamp_min(1)
        return n.to(self.logps.device) if self.logps is not None else n


@dataclass
class LossInputs:
    chosen: Side
    rejected: Side
    progress: float = 0.0  # step / total steps, in [0, 1]
    ranked: dict | None = None  # K-response losses: {"logps", "ref_logps", "n_tokens", "valid"} [B, K]
    totals: dict | None = None  # the global batch's ``batch_totals`` (all micro-batches, all processes)
    pieces: int = 1  # micro-batches this process splits the step's batch into (--grad-accum)
    sign: float = 1.0  # the multiplier of the trained edit in this policy pass (losses with ``signs``)
    frozen_pass: tuple | None = None  # the frozen pass's (hidden, logps), reused by another sign's pass


def mean_over_layers(values: list[torch.Tensor]) -> torch.Tensor:
    """The mean of per-layer values; under a ``device_map`` the layers live on different devices,
    so they meet on the first one's."""
    return torch.stack([v.to(values[0].device) for v in values]).mean(0)


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def global_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of a no-grad tensor over all data-parallel processes (itself in one process).

    For batch statistics that are not means over pairs (e.g. a ratio of batch sums): with the
    local numerator scaled by the process count, gradients averaged over processes then equal
    the single-process gradient of the global batch.
    """
    if world_size() == 1:
        return x
    import torch.distributed as dist

    x = x.detach().clone()
    dist.all_reduce(x)
    return x
