"""Bidirectional steering objectives: BiPO and RePS. Each trains the intervention (a vector, a
LoReFT, or a LoRA adapter) applied with a sign: the trainer runs the policy once per sign the loss
asks for (``signs(step)``), with the trained edit multiplied by it (``reprkit.interventions.scaled``:
``-v`` for a vector, ``-(Phi(h) - h)`` for LoReFT, ``W - BA`` for LoRA), and calls the loss on
each pass with ``inputs.sign`` set; a step's loss is the sum over its passes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from reprkit.lazy import lazy_module

if TYPE_CHECKING:
    import torch
    import torch.nn.functional as F
else:
    torch = lazy_module("torch")
    F = lazy_module("torch.nn.functional")

from .base import LossInputs


def bipo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
              ref_rejected: torch.Tensor, sign: float, beta: float = 0.1) -> torch.Tensor:
    """BiPO (Cao et al. 2024, "Personalized steering of LLMs via bi-directional preference
    optimization"), per pair, for one sampled direction ``d`` in {+1, -1}:

        loss = -log sigmoid( d * beta * [ log pi_d(y_c|x) - log ref(y_c|x) - log pi_d(y_r|x) + log ref(y_r|x) ] )

    where ``pi_d`` is the model with ``d`` x the intervention (``+v`` or ``-v``) and ``ref`` the model
    without it: with ``+v`` the preferred response gains, with ``-v`` the other one does. The paper
    samples ``d`` uniformly each step. Returns ``[B]``."""
    logits = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return -F.logsigmoid(sign * beta * logits)


def reps_terms(policy_chosen_mean: torch.Tensor, policy_rejected_mean: torch.Tensor, ref_chosen: torch.Tensor,
               ref_rejected: torch.Tensor, sign: float) -> tuple[torch.Tensor, torch.Tensor]:
    """RePS (Wu et al. 2025, "Improved representation steering for language models"), reference-free
    and bidirectional, with ``y_c`` the response showing the concept (chosen) and ``y`` the other:

        positive pass (intervention +1):
            Delta+ = beta+ * (1/|y_c|) log p+(y_c|x) - (1/|y|) log p+(y|x),   beta+ = max(log p(y|x) - log p(y_c|x), 1)
        negative pass (intervention -1, the paper's negative factor for LoRA and LoReFT):
            Delta- = beta- * (1/|y|) log p-(y|x) - (1/|y_c|) log p-(y_c|x),   beta- = max(log p(y_c|x) - log p(y|x), 1)
        loss = -log sigmoid(Delta+) - log sigmoid(Delta-)

    ``p`` is the frozen model (summed log-probs, no gradient): it only weights the up-weighted side
    by how unlikely the frozen model finds it. The ``*_mean`` arguments are the policy's per-token
    mean log-probs, ``ref_*`` the frozen sums. Returns ``(loss [B], Delta [B])`` of the pass ``sign``.
    For steering vectors the paper's negative pass removes the vector's component from ``h`` instead
    of subtracting it; reprkit subtracts for every intervention (said in the guide)."""
    if sign > 0:
        weight = torch.clamp(ref_rejected - ref_chosen, min=1.0).detach()
        delta = weight * policy_chosen_mean - policy_rejected_mean
    else:
        weight = torch.clamp(ref_chosen - ref_rejected, min=1.0).detach()
        delta = weight * policy_rejected_mean - policy_chosen_mean
    return -F.logsigmoid(delta), delta


@dataclass
class BiPO:
    """BiPO: DPO on the trained edit applied with a sign d ~ U{+1, -1} each step (Cao et al. 2024)."""

    beta: float = 0.1
    """DPO's beta"""
    seed: int = 0
    """seed of the per-step signs (step s's sign is the same on resume and on every process)"""

    default_lr: ClassVar[float] = 5e-4
    default_lr_source: ClassVar[str] = "BiPO's paper (a steering vector; not swept here)"
    needs_logps: ClassVar[bool] = True
    needs_reference: ClassVar[bool] = True

    def layer_spec(self):
        return None

    def signs(self, step: int) -> tuple[float, ...]:
        return (1.0 if random.Random(f"bipo:{self.seed}:{step}").random() < 0.5 else -1.0,)

    def __call__(self, inputs: LossInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c, r = inputs.chosen, inputs.rejected
        losses = bipo_loss(c.logps, r.logps, c.ref_logps, r.ref_logps, inputs.sign, self.beta)
        margin = ((c.logps - c.ref_logps) - (r.logps - r.ref_logps)).detach() * inputs.sign
        return losses.mean(), {"bipo": losses.detach().mean(), "sign": torch.tensor(float(inputs.sign)),
                               "signed_margin": margin.mean()}


@dataclass
class RePS:
    """RePS: reference-free, bidirectional preference steering (Wu et al. 2025): the +1 pass raises
    the chosen response, the -1 pass the other, each weighted by how unlikely the frozen model finds it."""

    default_lr: ClassVar[float] = 5e-4
    default_lr_source: ClassVar[str] = "not swept here (AxBench trains vectors at 1e-3 to 4e-2)"
    needs_logps: ClassVar[bool] = True
    needs_reference: ClassVar[bool] = True  # the frozen log-probs weight each side (no KL anchor)

    def layer_spec(self):
        return None

    def signs(self, step: int) -> tuple[float, ...]:
        return (1.0, -1.0)

    def __call__(self, inputs: LossInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c, r = inputs.chosen, inputs.rejected
        losses, delta = reps_terms(c.logps / c.n_tokens, r.logps / r.n_tokens, c.ref_logps, r.ref_logps, inputs.sign)
        name = "reps_plus" if inputs.sign > 0 else "reps_minus"
        return losses.mean(), {name: losses.detach().mean(), f"delta_{name[5:]}": delta.detach().mean()}
