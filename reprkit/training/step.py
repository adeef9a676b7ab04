"""One step's forward pass: the frozen and the policy pass on a batch, the loss inputs they make,
what the tracker logs of them, and where a non-finite value first appeared."""

from __future__ import annotations

import contextlib
import dataclasses
import logging

import torch

from reprkit.losses import LossInputs, Side

from .. import data as D
from ..devices import follow
from ..evaluate import forward_logps
from ..frozen import adapter_disabled, eval_mode
from ..geometry import masked_mean, similarity
from ..hooks import capture
from ..layers import find_blocks

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- one step


def forward_pair_batch(model, batch: dict, layers: list[int], loss, progress: float,
                       sharded: bool = False, reference=None, shared_prompt: bool = False,
                       policy: bool = True, sign: float = 1.0, frozen: tuple | None = None) -> LossInputs:
    """Reference pass then policy pass on chosen + rejected in one batch; returns the loss inputs.
    With ``reference`` (a ``frozen_cache.ReferenceCache``) the frozen outputs are read from it instead.
    With ``shared_prompt`` each pair's prompt runs once and both completions run on its KV cache
    (``shared_prompt.pair_states``); the loss inputs then hold completion positions only, which is
    all any pair loss reads (everything is masked to the completion), so the loss is the same.

    ``model`` is the PeftModel (FSDP2-sharded in place when ``sharded``): its blocks carry the hooks
    and its adapter is disabled for the reference. Sharded models see every forward to the end (a
    forward stopped half-way would leave FSDP's gather/reshard hooks half-run). ``policy=False``:
    the frozen pass alone (the inputs' policy states are empty), for ``batch_totals``.

    ``sign``: the trained edit's multiplier in the policy pass (BiPO's and RePS's -1 passes);
    ``frozen``: a previous call's ``frozen_pass`` on the same batch, reused instead of run again.
    An intervention acting at chosen positions is told the batch's prompt / completion split.
    """
    from ..interventions import at_positions, scaled
    from ..shared_prompt import pair_states

    inputs, comp, b = D.pair_sides(batch)
    stop = not loss.needs_logps and not sharded
    lay = D.pair_layout(batch) if shared_prompt else None
    if lay is not None:
        comp = lay["completion_mask"][lay["order"]]
    ref_hidden, ref_logps = {}, None
    if frozen is not None:
        ref_hidden, ref_logps = frozen
    elif loss.needs_reference and reference is not None:
        ref_hidden, ref_logps = reference.batch(batch["index"], comp, device=comp.device)
    elif loss.needs_reference:
        with torch.no_grad(), adapter_disabled(model), eval_mode(model):
            if lay is not None:
                ref_hidden, ref_logps, _ = pair_states(model, lay, layers, logps=loss.needs_logps, stop=stop, detach=True)
            else:
                with capture(model, layers, stop=stop) as cap:
                    if loss.needs_logps:
                        ref_logps = forward_logps(model, inputs["input_ids"], inputs["attention_mask"], comp)
                    else:
                        model(**inputs, use_cache=False)
                ref_hidden = cap.hidden_states
    frozen_pass = (ref_hidden, ref_logps)
    logps, hidden = None, {}
    if policy and lay is not None:
        with scaled(model, sign):
            hidden, logps, _ = pair_states(model, lay, layers, logps=loss.needs_logps, stop=stop, detach=False)
    elif policy:
        with (scaled(model, sign), at_positions(model, inputs["attention_mask"], comp),
              capture(model, layers, detach=False, stop=stop) as cap):
            if loss.needs_logps:
                logps = forward_logps(model, inputs["input_ids"], inputs["attention_mask"], comp)
            else:
                model(**inputs, use_cache=False)
        hidden = cap.hidden_states

    # frozen states and log-probs beside the policy's (a cache reads them onto the input's device;
    # under a device_map each layer's block lives elsewhere)
    ref_hidden = {k: v.to(hidden[k].device) if k in hidden else v for k, v in ref_hidden.items()}
    if ref_logps is not None and logps is not None:
        ref_logps = ref_logps.to(logps.device)

    def side(sl):
        return Side(
            mask=comp[sl],
            hidden={k: v[sl] for k, v in hidden.items()},
            ref_hidden={k: v[sl] for k, v in ref_hidden.items()},
            logps=None if logps is None else logps[sl],
            ref_logps=None if ref_logps is None else ref_logps[sl],
        )

    return LossInputs(chosen=side(slice(0, b)), rejected=side(slice(b, None)), progress=progress, sign=sign,
                      frozen_pass=frozen_pass)


def batch_totals(model, batches: list[dict], layers: list[int], loss_layers: list[int], loss, **options) -> dict | None:
    """The ``batch_totals`` of ``loss`` summed over a step's micro-batches and then over processes
    (``losses.base.global_sum``), without gradients: what a loss that normalises by batch sums
    (ReprPO's starting gap, Dr. DPO's log-mean-exp) needs so that ``--grad-accum`` pieces and
    processes give the whole batch's gradient. None for a loss without ``split_totals``, or a step
    in one piece on one process. Costs one extra frozen pass per micro-batch (ReprPO, to the deepest
    loss layer), and a policy pass too where the totals need it (Dr. DPO)."""
    from reprkit.losses.base import global_sum, world_size

    if not getattr(loss, "split_totals", False) or (len(batches) < 2 and world_size() == 1):
        return None
    totals: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for batch in batches:
            inputs = forward_pair_batch(model, batch, layers, loss, 0.0, policy=getattr(loss, "totals_need_policy", False),
                                        **options)
            for key, value in loss.batch_totals(only_layers(inputs, loss_layers)).items():
                totals[key] = value + totals[key].to(value.device) if key in totals else value
    return {key: global_sum(value) for key, value in totals.items()}


def forward_ranked_batch(model, batch: dict, layers: list[int], loss, progress: float,
                         sharded: bool = False, reference=None) -> LossInputs:
    """Reference then policy log-probs of all K responses of each item (Plackett-Luce losses).

    The tracked sides are the best response (chosen) and all other valid responses (rejected).
    """
    ids, attn, comp, valid = batch["input_ids"], batch["attention_mask"], batch["completion_mask"], batch["valid"]
    b, k = valid.shape
    with torch.no_grad(), adapter_disabled(model), eval_mode(model):
        with capture(model, layers) as cap:
            ref_logps = forward_logps(model, ids, attn, comp)
        ref_hidden = cap.hidden_states
    with capture(model, layers, detach=False) as cap:
        logps = forward_logps(model, ids, attn, comp)
    hidden = cap.hidden_states
    n_tokens = comp[:, 1:].sum(-1).clamp_min(1).to(logps.device)  # beside the log-probs it divides
    best = torch.arange(b, device=ids.device) * k
    others = torch.tensor([i * k + j for i in range(b) for j in range(1, k)], dtype=torch.long, device=ids.device)
    other_mask = comp[others] * valid[:, 1:].reshape(-1, 1).to(comp.dtype)

    def side(rows, mask):
        return Side(mask=mask, hidden={n: h[follow(rows, h)] for n, h in hidden.items()},
                    ref_hidden={n: h[follow(rows, h)] for n, h in ref_hidden.items()})

    ranked = {"logps": logps.view(b, k), "ref_logps": ref_logps.view(b, k), "n_tokens": n_tokens.view(b, k),
              "valid": valid.to(logps.device)}
    return LossInputs(chosen=side(best, comp[best]), rejected=side(others, other_mask), progress=progress,
                      ranked=ranked)


def only_layers(inputs: LossInputs, keep: list[int]) -> LossInputs:
    """The loss inputs with hidden states of the ``keep`` layers only (the rest were captured for tracking)."""
    def side(s: Side) -> Side:
        return dataclasses.replace(s, hidden={k: v for k, v in s.hidden.items() if k in keep},
                                   ref_hidden={k: v for k, v in s.ref_hidden.items() if k in keep})

    return dataclasses.replace(inputs, chosen=side(inputs.chosen), rejected=side(inputs.rejected))


def track(inputs: LossInputs, layers: list[int]) -> dict:
    """Per layer: mean cosine and norm ratio policy vs frozen over completion tokens, chosen and
    rejected; and how far each side's mean state moved along the frozen model's own preference
    direction (each pair's frozen mean chosen minus mean rejected) and off it, both in units of that
    frozen gap (``along_*``, ``off_*``): "moved toward the preference" vs "moved"."""
    out = {}
    for k in layers:
        row = {}
        for name, s in (("chosen", inputs.chosen), ("rejected", inputs.rejected)):
            if k not in s.ref_hidden:
                continue
            sim = similarity(s.hidden[k].detach(), s.ref_hidden[k], s.mask)
            row[f"cos_{name}"] = sim["cosine"].mean()
            row[f"norm_{name}"] = sim["norm_ratio"].mean()
        if (k in inputs.chosen.ref_hidden and k in inputs.rejected.ref_hidden
                and inputs.chosen.mask.shape[0] == inputs.rejected.mask.shape[0]):  # pairs (not K-response items)
            row |= preference_movement(inputs, k)
        out[str(k)] = row
    return out


def preference_movement(inputs: LossInputs, layer: int) -> dict[str, torch.Tensor]:
    """Per pair, with m the token-mean state of a side, u the unit vector of the pair's frozen
    chosen-minus-rejected gap and g its length: ``along_{side}`` = (m - m*) . u / g and ``off_{side}``
    = |the rest| / g, averaged over pairs (a mean over pairs, so data-parallel processes average to
    the global batch's value)."""
    means = {name: (masked_mean(s.hidden[layer].detach(), s.mask), masked_mean(s.ref_hidden[layer], s.mask))
             for name, s in (("chosen", inputs.chosen), ("rejected", inputs.rejected))}
    gap = means["chosen"][1] - means["rejected"][1]  # [B, H]
    g = gap.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    u = gap / g
    row = {}
    for name, (policy, frozen) in means.items():
        moved = policy - frozen
        along = (moved * u).sum(-1, keepdim=True)
        row[f"along_{name}"] = (along / g).mean()
        row[f"off_{name}"] = ((moved - along * u).norm(dim=-1, keepdim=True) / g).mean()
    return row


def batch_accuracy(inputs: LossInputs) -> torch.Tensor | None:
    c, r = inputs.chosen, inputs.rejected
    if c.logps is None:
        return None
    return (c.logps / c.n_tokens > r.logps / r.n_tokens).float().mean()


# ---------------------------------------------------------------- diagnosis


def as_number(x):
    if hasattr(x, "full_tensor"):  # a DTensor (FSDP2's gradient norm)
        x = x.full_tensor()
    return x.item() if isinstance(x, torch.Tensor) else x


def check_loss(value, terms: dict, step: int, cfg, layers: list[int], model, batch: dict, ranked: bool, accelerator,
               kept: bool, run_dir) -> None:
    """Refuse a loss that is not finite (on any process), naming where it first went non-finite, or
    that reaches no trainable weight (naming the adapter's or the intervention's reach); ``kept``:
    whether the run directory keeps a checkpoint (else it is removed)."""
    from .errors import TrainingError
    from .processes import all_processes

    if not bool(all_processes(torch.isfinite(value.detach()), accelerator, "min")):
        where = (f"The run directory {run_dir} keeps everything written up to step {step - 1}" if kept else
                 f"No checkpoint had been written, so {run_dir} is removed")
        raise TrainingError(f"loss is {value.item()} at step {step} (terms: { {k: as_number(v) for k, v in terms.items()} }); "
                            f"{nonfinite_source(model, batch, ranked=ranked)}. {where}. Lower --lr or check the data")
    if not value.requires_grad:
        reach = (f"the adapter has no LoRA weights on blocks up to the deepest layer the loss reads ({max(layers)}); "
                 "put LoRA there") if cfg.intervention == "lora" else (
                 f"the {cfg.intervention} at layer(s) {getattr(cfg, cfg.intervention).layers} does not reach what "
                 f"the loss reads (layers up to {max(layers)})")
        raise TrainingError(f"the {cfg.loss} loss does not depend on any trainable weight: {reach}")


def nonfinite_source(model, batch: dict, ranked: bool = False) -> str:
    """Where a non-finite loss comes from: the first block whose output is NaN/inf, in the frozen
    model (adapter disabled) and in the policy, from one extra pass each over every block; or, when
    every block's output is finite, the loss itself."""
    inputs = ({"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]} if ranked
              else D.pair_sides(batch)[0])
    names, _ = find_blocks(model)

    def first_bad(disabled: bool):
        with torch.no_grad(), eval_mode(model), contextlib.ExitStack() as stack:
            if disabled:
                stack.enter_context(adapter_disabled(model))
            cap = stack.enter_context(capture(model, list(range(len(names)))))
            model(**inputs, use_cache=False)
            return next((k for k in range(len(names)) if not torch.isfinite(cap[k]).all()), None)

    frozen, policy = first_bad(True), first_bad(False)
    if frozen is not None:
        return (f"hidden states are non-finite from layer {frozen} ({names[frozen]}) in the frozen model "
                "itself (adapter disabled): the base weights or the input are broken")
    if policy is not None:
        return (f"the policy's hidden states are first non-finite at layer {policy} ({names[policy]}); "
                "the frozen model's are finite: the adapter diverged")
    return "hidden states are finite at every layer in both models: the loss itself overflowed"


