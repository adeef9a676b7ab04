"""How reliably a direction steers behaviour, item by item: beyond its average effect.

Steering vectors are unreliable per example: on many model-written evaluation sets a large share of
inputs move the opposite way (Tan et al. 2024, "Analyzing the generalization and reliability of
steering vectors"), which an average effect hides. For a direction, the layers it steers and a range
of strengths, on held-out A/B items (Anthropic's model-written evaluations, ``behaviour.load_behaviour``):

- per item, the change in the behaviour-matching answer's log-odds from the unsteered model
  (log-odds: logsumexp of the matching answers' summed log-probs minus the others');
- per item, its slope in strength (least squares through the strengths, the change at 0 being 0);
  the mean slope with a bootstrap interval;
- the fraction of items whose slope is negative (anti-steerable), with a Wilson interval; at each
  strength, the fraction of items that moved against the strength's sign;
- the KL divergence of the next-token distributions from the unsteered model's at each strength
  (over the prompts' tokens: mean and 0.9 quantile), so strengths are read on a common scale.

>>> res = steerability(model, tokenizer, direction, load_behaviour(path)[100:200], strengths=[-8, -4, 0, 4, 8])
>>> print(format_steerability(res))                      # the table
>>> app.figures.steerability_figure(res)                   # plotly: per-item lines and the slopes
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .data import encode_ranked, render_prompt, uses_chat
from .evaluate import ranked_logps
from .scoring import wilson_ci95
from .steering import default_layers, steered, steering_kl

RULE = ("log-odds of the behaviour-matching answer(s): logsumexp of their summed log-probs minus the others'; "
        "steered at every position of prompt and answer")


def _log_odds(logps: torch.Tensor, valid: torch.Tensor, matching: torch.Tensor) -> torch.Tensor:
    lp = logps.masked_fill(~valid, float("-inf"))
    return (torch.logsumexp(lp.masked_fill(~matching, float("-inf")), -1)
            - torch.logsumexp(lp.masked_fill(matching | ~valid, float("-inf")), -1))


def _bootstrap_mean(x: np.ndarray, n: int = 4000, seed: int = 0) -> list[float]:
    if len(x) < 2:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    draws = x[rng.integers(0, len(x), (n, len(x)))].mean(1)
    return [float(v) for v in np.percentile(draws, [2.5, 97.5])]


@torch.no_grad()
def steerability(model, tokenizer, direction, items: list[dict], strengths, layers=None, max_length: int = 512,
                 kl_prompts: int = 16, batch_size: int = 16) -> dict:
    """The per-item steerability of ``direction`` at ``layers`` (default: its best layer(s)) over
    ``strengths`` on behaviour ``items`` (each with ``matching``); see the module docstring."""
    strengths = sorted(float(s) for s in strengths)
    if 0.0 not in strengths:
        strengths = sorted([0.0, *strengths])
    if len(strengths) < 3:
        raise ValueError("give at least two non-zero strengths (e.g. -4 4) to fit a slope")
    if not items or any("matching" not in it for it in items):
        raise ValueError("steerability needs behaviour items with 'matching' flags (reprkit.behaviour.load_behaviour)")
    from .layers import block_indices

    layers = default_layers(direction) if layers is None else block_indices(model, layers)
    encoded = [encode_ranked([it], tokenizer, max_length, max_length // 2)[0] for it in items]
    k = max(len(it["responses"]) for it in items)
    matching = torch.zeros((len(items), k), dtype=torch.bool)
    for i, it in enumerate(items):
        matching[i, : len(it["matching"])] = torch.tensor(it["matching"])
    chat = uses_chat(tokenizer)
    prompts = [render_prompt(tokenizer, it["prompt"], chat) for it in items[:kl_prompts]]
    from .devices import to_model

    kl_batch = to_model(model, tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=not chat))
    odds, kls = {}, {}
    for s in strengths:
        with steered(model, direction, s, layers):
            sc = ranked_logps(model, encoded, tokenizer.pad_token_id, batch_size, base=False)["policy"]
        odds[s] = _log_odds(sc["logps"], sc["valid"], matching)
        kl = steering_kl(model, kl_batch, layers, [direction.vector(x) for x in layers], s) if s else torch.zeros(1)
        kls[s] = {"mean": float(kl.mean()), "q90": float(torch.quantile(kl, 0.9))}
    change = torch.stack([odds[s] - odds[0.0] for s in strengths], 1).double().numpy()  # [N, S]
    xs = np.array(strengths)
    slopes = change @ xs / float(xs @ xs)  # least squares through the origin (the change at 0 is 0)
    n = len(items)
    anti = float((slopes < 0).mean())
    table = []
    for j, s in enumerate(strengths):
        c = change[:, j]
        wrong = float((np.sign(c) == -np.sign(s)).mean()) if s else float("nan")
        table.append({"strength": s, "mean_change": float(c.mean()), "change_ci95": _bootstrap_mean(c),
                      "wrong_way": wrong, "kl_mean": kls[s]["mean"], "kl_q90": kls[s]["q90"]})
    base = odds[0.0].double().numpy()
    return {"n": n, "layers": layers, "strengths": strengths, "rule": RULE,
            "direction": {k2: direction.info.get(k2) for k2 in ("method", "token", "data")},
            "mean_slope": float(slopes.mean()), "slope_ci95": _bootstrap_mean(slopes),
            "anti_steerable": anti, "anti_steerable_ci95": wilson_ci95(anti, n),
            "unsteered_matching_rate": float((base > 0).mean()),
            "table": table, "per_item": {"change": change.tolist(), "slope": slopes.tolist(), "log_odds_0": base.tolist()}}


def format_steerability(res: dict) -> str:
    lo, hi = res["slope_ci95"]
    alo, ahi = res["anti_steerable_ci95"]
    lines = [f"steerability over {res['n']} items, layer(s) {res['layers']} ({res['rule']})",
             f"mean slope {res['mean_slope']:+.4f} log-odds per unit strength (95% {lo:+.4f}, {hi:+.4f}); "
             f"anti-steerable (slope < 0) {res['anti_steerable']:.3f} ({alo:.3f}-{ahi:.3f}); unsteered matching rate "
             f"{res['unsteered_matching_rate']:.3f}",
             f"{'strength':>10}{'mean change':>13}{'95% interval':>20}{'wrong way':>11}{'KL mean':>9}{'KL q90':>9}"]
    for r in res["table"]:
        clo, chi = r["change_ci95"]
        wrong = "" if math.isnan(r["wrong_way"]) else f"{r['wrong_way']:.3f}"
        lines.append(f"{r['strength']:>10.3g}{r['mean_change']:>+13.3f}{f'({clo:+.3f}, {chi:+.3f})':>20}{wrong:>11}"
                     f"{r['kl_mean']:>9.3f}{r['kl_q90']:>9.3f}")
    return "\n".join(lines)
