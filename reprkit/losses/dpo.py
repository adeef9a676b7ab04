"""DPO and relatives: the output-space baseline that hidden-state losses are compared against.

Log-probabilities are of the completion tokens given the prompt, summed (or averaged per token).
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

from .base import LossInputs, world_size


def preference_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    ipo: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair DPO loss (Rafailov et al. 2023) and the implicit rewards.

    h = (log pi(y_c|x) - log ref(y_c|x)) - (log pi(y_r|x) - log ref(y_r|x))
    sigmoid DPO:  loss = -(1 - eps) * log sigmoid(beta * h) - eps * log sigmoid(-beta * h)
    IPO:          loss = (h - 1 / (2 * beta))^2
    rewards:      beta * (log pi(y|x) - log ref(y|x)), detached

    Returns ``(losses [B], chosen_rewards [B], rejected_rewards [B])``.
    """
    logits = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)
    if ipo:
        losses = (logits - 1 / (2 * beta)) ** 2
    else:
        losses = -F.logsigmoid(beta * logits) * (1 - label_smoothing) - F.logsigmoid(-beta * logits) * label_smoothing
    chosen_rewards = beta * (policy_chosen_logps - reference_chosen_logps).detach()
    rejected_rewards = beta * (policy_rejected_logps - reference_rejected_logps).detach()
    return losses, chosen_rewards, rejected_rewards


def dr_dpo_loss(losses: torch.Tensor, beta_prime: float = 1.0) -> torch.Tensor:
    """Dr. DPO (Wu et al. 2024), distributionally robust over the batch:

    loss = -beta' * log mean_i exp(-loss_i / beta')

    Pairs with a large loss (likely mislabelled) get exponentially less weight; beta' -> inf
    recovers the plain mean.
    """
    n = torch.tensor(float(losses.numel()), device=losses.device)
    return -beta_prime * (torch.logsumexp(-losses / beta_prime, dim=0) - torch.log(n))


def dr_dpo_split(losses: torch.Tensor, beta_prime: float, total_exp: torch.Tensor, total_n: torch.Tensor,
                 pieces: int) -> torch.Tensor:
    """Dr. DPO on one piece of a split batch, given the whole batch's ``Z = sum_j exp(-loss_j / beta')``
    and pair count ``N`` (``DPO.batch_totals``, summed over every piece and process): its value is
    the whole batch's ``-beta' log(Z / N)``, its gradient ``pieces * sum_{i in piece} exp(-loss_i /
    beta') / Z * grad loss_i``, so that the ``pieces`` accumulated (and averaged) gradients equal the
    whole batch's."""
    z = total_exp.to(losses.device)
    value = -beta_prime * (torch.log(z) - torch.log(total_n.to(losses.device)))
    surrogate = -beta_prime * torch.exp(-losses.to(z.dtype) / beta_prime).sum() / z * pieces
    return (value + surrogate - surrogate.detach()).float()


def plackett_luce_loss(
    policy_logps: torch.Tensor,
    reference_logps: torch.Tensor,
    beta: float = 0.1,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """DPO for K ranked responses under the Plackett-Luce model (Rafailov et al. 2023, App. A.3).

    r_k = beta * (log pi(y_k|x) - log ref(y_k|x)), responses ordered best first;
    loss = -sum_{k=1}^{K-1} [ r_k - log sum_{j>=k} exp(r_j) ]

    ``policy_logps`` / ``reference_logps``: ``[B, K]``; ``valid``: ``[B, K]`` bool for items with
    fewer than K responses (padding slots are False and must come last). K = 2 is sigmoid DPO.
    Returns per-item losses ``[B]``.
    """
    rewards = beta * (policy_logps - reference_logps)
    if valid is None:
        valid = torch.ones_like(rewards, dtype=torch.bool)
    rewards = rewards.masked_fill(~valid, float("-inf"))
    # log sum_{j>=k} exp(r_j): reverse cumulative logsumexp
    tail = torch.logcumsumexp(rewards.flip(-1), dim=-1).flip(-1)
    terms = rewards - tail
    last = valid.sum(-1, keepdim=True) - 1  # the final valid position contributes log 1 = 0
    positions = torch.arange(rewards.shape[-1], device=rewards.device).expand_as(rewards)
    use = valid & (positions < last)
    return -(terms.masked_fill(~use, 0.0)).sum(-1)


@dataclass
class DPO:
    """Sigmoid DPO / IPO / Dr. DPO on completion log-probs; the baseline."""

    beta: float = 0.1
    """strength of the KL anchor to the frozen model"""
    label_smoothing: float = 0.0
    """conservative DPO: assumed probability that a label is flipped"""
    ipo: bool = False
    """IPO's squared loss instead of the sigmoid"""
    average_log_prob: bool = False
    """per-token mean log-probs instead of sums (length-normalised)"""
    dr_beta: float | None = None
    """Dr. DPO's beta' (None: plain mean over the batch)"""

    default_lr: ClassVar[float] = 1e-4
    default_lr_source: ClassVar[str] = (
        "the most accurate rate on alpaca_mmlu validation in both whole-budget sweeps (LoRA r16, SmolLM2-135M; "
        "retain perplexity x1.19-1.28); on alpaca_short it raised perplexity x3.1, where 3e-5 was the choice")
    needs_logps: ClassVar[bool] = True
    needs_reference: ClassVar[bool] = True
    totals_need_policy: ClassVar[bool] = True  # Dr. DPO's weights come from the policy's losses

    def layer_spec(self):
        return None

    @property
    def split_totals(self) -> bool:
        """Dr. DPO's log-mean-exp is over the whole batch: a split batch needs its totals."""
        return self.dr_beta is not None

    def _losses(self, inputs: LossInputs):
        c, r = inputs.chosen, inputs.rejected
        norm_c = c.n_tokens if self.average_log_prob else 1
        norm_r = r.n_tokens if self.average_log_prob else 1
        return preference_loss(c.logps / norm_c, r.logps / norm_r, c.ref_logps / norm_c, r.ref_logps / norm_r,
                               beta=self.beta, label_smoothing=self.label_smoothing, ipo=self.ipo)

    def batch_totals(self, inputs: LossInputs) -> dict[str, torch.Tensor]:
        """Dr. DPO: ``sum_i exp(-loss_i / beta')`` and the pair count of this batch (float64; float32 on MPS)."""
        from reprkit.devices import wide_float

        losses, _, _ = self._losses(inputs)
        wide = wide_float(losses.device)
        return {"dr/sum_exp": torch.exp(-losses.to(wide) / self.dr_beta).sum(),
                "dr/n": torch.tensor(float(losses.numel()), dtype=wide, device=losses.device)}

    def __call__(self, inputs: LossInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        losses, chosen_rewards, rejected_rewards = self._losses(inputs)
        if self.dr_beta is None:
            loss = losses.mean()
        elif inputs.totals and "dr/sum_exp" in inputs.totals:
            loss = dr_dpo_split(losses, self.dr_beta, inputs.totals["dr/sum_exp"], inputs.totals["dr/n"],
                                world_size() * inputs.pieces)
        else:
            loss = dr_dpo_loss(losses, self.dr_beta)
        metrics = {
            "dpo": losses.detach().mean(),
            "reward_chosen": chosen_rewards.mean(),
            "reward_rejected": rejected_rewards.mean(),
            "reward_accuracy": (chosen_rewards > rejected_rewards).float().mean(),
            "reward_margin": (chosen_rewards - rejected_rewards).mean(),
        }
        return loss, metrics


@dataclass
class PlackettLuce:
    """DPO over K ranked responses (Plackett-Luce); K = 2 is sigmoid DPO. Trains on every response
    of an item at once (GENIES' 4, HelpSteer's full ranking) instead of best-vs-one pairs."""

    beta: float = 0.1
    """strength of the KL anchor to the frozen model"""
    average_log_prob: bool = False
    """per-token mean log-probs instead of sums"""

    default_lr: ClassVar[float] = 1e-4
    default_lr_source: ClassVar[str] = "DPO's (not swept on its own)"
    needs_logps: ClassVar[bool] = True
    needs_reference: ClassVar[bool] = True
    ranked: ClassVar[bool] = True

    def layer_spec(self):
        return None

    def __call__(self, inputs: LossInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``inputs.ranked``: {"logps", "ref_logps", "n_tokens", "valid"}, each ``[B, K]``."""
        r = inputs.ranked
        norm = r["n_tokens"] if self.average_log_prob else 1
        losses = plackett_luce_loss(r["logps"] / norm, r["ref_logps"] / norm, self.beta, r["valid"])
        rewards = (self.beta * (r["logps"] - r["ref_logps"]) / norm).detach()
        best_wins = (rewards[:, :1] > rewards[:, 1:]) | ~r["valid"][:, 1:]
        return losses.mean(), {"plackett_luce": losses.detach().mean(),
                               "reward_accuracy": best_wins.all(-1).float().mean(),
                               "reward_best": rewards[:, 0].mean()}
