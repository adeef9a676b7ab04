"""What a loss receives: the policy's (and frozen model's) hidden states and log-probs of a batch of pairs.

A loss is a small dataclass: its fields are its hyperparameters, and it declares what it needs:

- ``layer_spec()``: the layers whose block outputs it reads (``None``: none);
- ``needs_logps``: whether it needs completion log-probabilities (and so the LM head);
- ``needs_reference``: whether it needs the frozen model's pass (adapter disabled).

The trainer computes exactly that and calls ``loss(inputs) -> (scalar, metrics)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
        return self.mask.sum(-1).clamp_min(1)


@dataclass
class LossInputs:
    chosen: Side
    rejected: Side
    progress: float = 0.0  # step / total steps, in [0, 1]
    ranked: dict | None = None  # K-response losses: {"logps", "ref_logps", "n_tokens", "valid"} [B, K]


def mean_over_layers(values: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(values).mean(0)


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
