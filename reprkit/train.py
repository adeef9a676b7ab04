"""The training loop: LoRA on a causal LM, a loss on hidden states (or log-probs), tracking vs the frozen model.

One step, top to bottom:

1. the frozen model (same weights, adapter disabled, eval mode, no grad) runs on chosen + rejected,
   stopping after the deepest layer the loss or the tracker needs (the LM head only for log-probs);
2. the policy runs on the same batch with hooks capturing those layers in the graph;
3. ``loss(LossInputs) -> (loss, metrics)``; backward; clip; optimiser and scheduler step;
4. the tracker logs per-layer cosine and norm ratio policy vs frozen, chosen and rejected,
   masked to completion tokens, with the loss terms, to ``metrics.jsonl``.

>>> from reprkit.config import TrainConfig
>>> run_dir = train(TrainConfig(loss="reprpo", steps=50))
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import time
from datetime import datetime
from pathlib import Path

import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from reprkit.losses import LossInputs, Side
from reprkit.losses.reprpo import ReprPO

from . import data as D
from .config import TrainConfig
from .evaluate import forward_logps, generate_samples, item_accuracy
from .geometry import masked_mean, similarity
from .hooks import capture
from .layers import find_blocks, select_layers
from .models import enable_gradient_checkpointing, load_model
from .reference import adapter_disabled, eval_mode
from .truncation import describe as describe_truncation, truncation_report
from .runlog import RunLog, checkpoints, commit_checkpoint, new_checkpoint_dir, read_config, write_json

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot go on (a guard fired, or the loss diverged); what was written is kept."""


# ---------------------------------------------------------------- the adapter and its guards


def plan_layers(model, loss, track_layers: str | None = None) -> tuple[list[int], list[int], int | None]:
    """(loss layers, layers to capture, last block that gets LoRA or None for all) for a loss and a
    tracking request: the one place that decides what a step captures and where the adapter stops.

    Tracking defaults to the loss's layers (ReprPO's for losses without any); a hidden-state loss
    that needs no log-probs puts LoRA only on blocks up to its deepest layer (later blocks get no
    gradient), a loss that reads the LM head on every block."""
    spec = loss.layer_spec()
    loss_layers = list(select_layers(model, spec).indices) if spec is not None else []
    tracked = select_layers(model, track_layers or spec or ReprPO().layers).indices
    capture_layers = sorted(set(tracked) | set(loss_layers))
    lora_last = max(loss_layers) if loss_layers and not loss.needs_logps else None
    return loss_layers, capture_layers, lora_last


def add_lora(model, cfg: TrainConfig, last_layer: int | None):
    """Wrap ``model`` with a fresh LoRA adapter named ``default``."""
    from peft import LoraConfig, get_peft_model

    if getattr(model, "peft_config", None):
        raise TrainingError(
            f"the model already has adapter(s) {list(model.peft_config)}: adding another would train one "
            "adapter while another is active. Pass the base model, or this PeftModel to continue its adapter"
        )
    lc = cfg.lora
    layers = list(range(last_layer + 1)) if (lc.up_to_last_loss_layer and last_layer is not None) else None
    if lc.target_modules != "all-linear":
        targets = [t.strip() for t in lc.target_modules.split(",")]
    elif layers is None:
        targets = "all-linear"
    else:  # peft takes layers_to_transform only with named targets: every linear layer inside the blocks
        _, blocks = find_blocks(model)
        targets = sorted({n.rsplit(".", 1)[-1] for n, m in blocks[0].named_modules() if isinstance(m, torch.nn.Linear)})
    config = LoraConfig(
        r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout, target_modules=targets,
        use_rslora=lc.rslora, use_dora=lc.dora, layers_to_transform=layers, task_type="CAUSAL_LM",
        exclude_modules=not_plain_linear(model) or None,
    )
    return get_peft_model(model, config)


def not_plain_linear(model) -> list[str]:
    """Modules that subclass ``nn.Linear`` with a forward that does not return a tensor (Llama 4's
    MoE router returns a tuple): peft's LoRA layer cannot wrap them, so they are left out of the
    adapter. Each subclass with its own forward is probed once on a zero input."""
    out = []
    for n, m in model.named_modules():
        if not isinstance(m, torch.nn.Linear) or type(m).forward is torch.nn.Linear.forward:
            continue
        with torch.no_grad():
            try:
                result = m(torch.zeros(1, m.in_features, dtype=m.weight.dtype, device=m.weight.device))
            except Exception:  # noqa: BLE001 - a forward that cannot run alone is not a plain linear either
                result = None
        if not isinstance(result, torch.Tensor):
            out.append(n)
    return out


def check_adapter(model) -> str:
    """Refuse the classic ways an adapter silently does not train; return the adapter being trained.

    - a PeftModel wrapped in another (``get_peft_model`` called twice): the outer adapter trains, the
      inner one, active in the inner model, is a second adapter nobody meant;
    - trainable parameters that belong to another adapter than the active one, or none at all.
    """
    if not getattr(model, "peft_config", None):
        raise TrainingError("the model has no LoRA adapter to train")
    nested = [n for n, m in model.named_modules() if n and getattr(m, "peft_config", None) and hasattr(m, "disable_adapter")]
    if nested:
        raise TrainingError(
            f"a PeftModel is nested inside another (at {nested[0]}): get_peft_model was called on a model that "
            "already had an adapter. Build the adapter once: get_peft_model(base_model, config)"
        )
    active = model.active_adapter if isinstance(model.active_adapter, str) else model.active_adapter[0]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise TrainingError(f"adapter {active!r} has no trainable parameters (was it loaded with is_trainable=False?)")
    others = [n for n in trainable if f".{active}." not in n and "lora_" in n]
    if others:
        raise TrainingError(
            f"trainable LoRA weights belong to another adapter than the active one ({active!r}), e.g. {others[0]}; "
            f"call model.set_adapter(<the adapter to train>) or delete the extra adapter"
        )
    return active


def snapshot_trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def assert_changed(model, before: dict[str, torch.Tensor], adapter: str, accelerator=None) -> None:
    """Raise unless some trainable weight moved (in any process: under FSDP each holds a shard)."""
    changed = any(not torch.equal(local(p.detach()), local(before[n]))
                  for n, p in model.named_parameters() if n in before)
    if accelerator is not None:
        changed = bool(all_processes(torch.tensor(float(changed)), accelerator) > 0)
    if not changed:
        raise TrainingError(
            f"adapter {adapter!r} did not change after an optimiser step with a positive learning rate: its "
            "weights are not in the optimiser or receive no gradient"
        )


# ---------------------------------------------------------------- one step


def forward_pair_batch(model, batch: dict, layers: list[int], loss, progress: float,
                       sharded: bool = False, reference=None, shared_prompt: bool = False) -> LossInputs:
    """Reference pass then policy pass on chosen + rejected in one batch; returns the loss inputs.
    With ``reference`` (a ``refcache.ReferenceCache``) the frozen outputs are read from it instead.
    With ``shared_prompt`` each pair's prompt runs once and both completions run on its KV cache
    (``shared_prompt.pair_states``); the loss inputs then hold completion positions only, which is
    all any pair loss reads (everything is masked to the completion), so the loss is the same.

    ``model`` is the PeftModel (FSDP2-sharded in place when ``sharded``): its blocks carry the hooks
    and its adapter is disabled for the reference. Sharded models see every forward to the end (a
    forward stopped half-way would leave FSDP's gather/reshard hooks half-run).
    """
    from .shared_prompt import pair_layout, pair_states

    inputs, comp, b = D.pair_sides(batch)
    stop = not loss.needs_logps and not sharded
    lay = pair_layout(batch) if shared_prompt else None
    if lay is not None:
        comp = lay["completion_mask"][lay["order"]]
    ref_hidden, ref_logps = {}, None
    if loss.needs_reference and reference is not None:
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
    logps = None
    if lay is not None:
        hidden, logps, _ = pair_states(model, lay, layers, logps=loss.needs_logps, stop=stop, detach=False)
    else:
        with capture(model, layers, detach=False, stop=stop) as cap:
            if loss.needs_logps:
                logps = forward_logps(model, inputs["input_ids"], inputs["attention_mask"], comp)
            else:
                model(**inputs, use_cache=False)
        hidden = cap.hidden_states

    def side(sl):
        return Side(
            mask=comp[sl],
            hidden={k: v[sl] for k, v in hidden.items()},
            ref_hidden={k: v[sl] for k, v in ref_hidden.items()},
            logps=None if logps is None else logps[sl],
            ref_logps=None if ref_logps is None else ref_logps[sl],
        )

    return LossInputs(chosen=side(slice(0, b)), rejected=side(slice(b, None)), progress=progress)


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
    n_tokens = comp[:, 1:].sum(-1).clamp_min(1)
    best = torch.arange(b, device=ids.device) * k
    others = torch.tensor([i * k + j for i in range(b) for j in range(1, k)], dtype=torch.long, device=ids.device)
    other_mask = comp[others] * valid[:, 1:].reshape(-1, 1).to(comp.dtype)

    def side(rows, mask):
        return Side(mask=mask, hidden={n: h[rows] for n, h in hidden.items()},
                    ref_hidden={n: h[rows] for n, h in ref_hidden.items()})

    ranked = {"logps": logps.view(b, k), "ref_logps": ref_logps.view(b, k), "n_tokens": n_tokens.view(b, k),
              "valid": valid}
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


# ---------------------------------------------------------------- processes


def make_accelerator():
    """An Accelerator on the GPU when there is one, else on the CPU, where ``torchrun`` or
    ``accelerate launch --multi_gpu`` with several processes gives gloo data parallelism."""
    from datetime import timedelta

    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    # the main process evaluates alone at the end while the others wait in a barrier
    wait = InitProcessGroupKwargs(timeout=timedelta(hours=6))
    return Accelerator(cpu=not torch.accelerator.is_available(), kwargs_handlers=[wait])


def is_sharded(accelerator) -> bool:
    """Whether accelerate shards the model (FSDP2). Engines reprkit does not run are refused here,
    before the model loads: FSDP1 (whose flat parameters hide the modules hooks and adapters work
    on) and DeepSpeed / Megatron-LM (not tested)."""
    from accelerate import DistributedType

    kind = accelerator.distributed_type
    if kind == DistributedType.FSDP:
        version = getattr(accelerator.state.fsdp_plugin, "fsdp_version", 1)
        if version != 2:
            raise TrainingError(
                f"accelerate is set to FSDP version {version}; reprkit trains under FSDP2 only. Set "
                "`fsdp_version: 2` in the accelerate config (as configs/accelerate/fsdp.yaml does)"
            )
        return True
    if kind in (DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM):
        raise TrainingError(
            f"reprkit does not run under {kind.value}. For data parallelism use "
            "configs/accelerate/ddp.yaml; to shard a model too big for one device, configs/accelerate/fsdp.yaml (FSDP2)"
        )
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and accelerator.is_main_process:
        log.warning("the accelerate config asks for FSDP, but accelerate enables it on GPUs only; these %s "
                    "processes run data parallel (%s), each with the whole model", accelerator.num_processes, kind.value)
    return False


def wrap_decoder_blocks(accelerator, model) -> None:
    """FSDP2 units are decoder blocks (the transformer wrap policy). When the config names a block
    class this model does not have (the shipped config names LlamaDecoderLayer), use the class of
    the blocks reprkit hooks instead of failing in accelerate, and say so."""
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    plugin = accelerator.state.fsdp_plugin
    names = plugin.transformer_cls_names_to_wrap
    if plugin.auto_wrap_policy is not transformer_auto_wrap_policy or not names:
        return
    present = {type(m).__name__ for m in model.modules()}
    if set(names) <= present:
        return
    block = type(find_blocks(model)[1][0]).__name__
    if accelerator.is_main_process:
        log.warning("the accelerate config wraps %s, which %s does not have; wrapping its decoder blocks (%s) "
                    "instead (set fsdp_transformer_layer_cls_to_wrap: %s)", ",".join(names),
                    type(model.get_base_model()).__name__, block, block)
    plugin.transformer_cls_names_to_wrap = [block]


def first_forward(model, accelerator) -> None:
    """One token through the freshly sharded model, adapter on. FSDP2 fixes each unit's gradient
    dtypes at the model's first forward from which parameters require grad then; the first forward
    of a step is the frozen pass, where peft's ``disable_adapter()`` has switched requires_grad off,
    and under mixed precision the bf16 gradients would then never be cast back to the float32
    weights (torch refuses to assign them)."""
    with torch.no_grad():
        model(input_ids=torch.zeros(1, 1, dtype=torch.long, device=accelerator.device), use_cache=False)


def local(t: torch.Tensor) -> torch.Tensor:
    """This process's shard of an FSDP2 parameter (a DTensor); any other tensor as is."""
    return t.to_local() if hasattr(t, "to_local") else t


def _full_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)


def training_state(model, optimizer, sharded: bool) -> tuple[dict | None, dict]:
    """(adapter weights, optimiser state) to write. Unsharded: (None: the PeftModel saves its own
    weights, the optimiser's own state dict). Sharded: every process takes part in gathering the
    trainable weights and the optimiser state to full tensors keyed by parameter name; the main
    process gets them, the others empty dicts. Frozen weights are never gathered."""
    if not sharded:
        return None, optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper -> torch's optimiser
    return (get_model_state_dict(model, options=_full_options()),
            get_optimizer_state_dict(model, optimizer, options=_full_options()))


def broadcast_trainable(params: list[torch.Tensor], accelerator) -> None:
    """Every process starts from the main process's adapter weights."""
    if accelerator.num_processes == 1:
        return
    import torch.distributed as dist

    with torch.no_grad():
        for p in params:
            dist.broadcast(p.data, src=0)


def sync_gradients(params: list[torch.Tensor], accelerator) -> None:
    """Average the trainable gradients over data-parallel processes: one all-reduce per step of one
    flat buffer (what DDP does, without its wrapper, so a forward may stop after the last loss
    layer and hooks see the plain model)."""
    if accelerator.num_processes == 1:
        return
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    dist.all_reduce(flat)
    flat /= accelerator.num_processes
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset: offset + n].view_as(g).to(g.dtype)
        offset += n


def all_processes(value, accelerator, op: str = "mean"):
    """A tensor, or a list/dict tree of scalars, reduced over processes (itself in one process) with
    one collective for the whole tree, on the accelerator's device (NCCL takes no CPU tensors)."""
    if accelerator.num_processes == 1:
        return value
    import torch.distributed as dist
    from torch.utils._pytree import tree_flatten, tree_unflatten

    leaves, spec = tree_flatten(value)
    flat = torch.stack([torch.as_tensor(v, dtype=torch.float64).detach().cpu() for v in leaves]).to(accelerator.device)
    dist.all_reduce(flat, op=dist.ReduceOp.MIN if op == "min" else dist.ReduceOp.SUM)
    if op == "mean":
        flat /= accelerator.num_processes
    return tree_unflatten(list(flat.cpu()), spec)


# ---------------------------------------------------------------- diagnosis


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


# ---------------------------------------------------------------- data


def load_pairs(cfg: TrainConfig, tokenizer) -> tuple[list[dict], dict[str, list[dict]], dict[str, list]]:
    """Encoded training pairs (or ranked items), encoded eval items (all their responses) per eval
    source, and a few eval prompts per source."""
    kw = dict(max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length, chat_template=cfg.chat_template)
    if getattr(cfg.loss_fn(), "ranked", False):  # all K responses of an item, best first
        train_pairs = D.encode_ranked(D.load_items(cfg.data, cfg.train_split, limit=cfg.limit, ranking=cfg.ranking),
                                      tokenizer, **kw)
    elif cfg.retain_data:
        pairs = D.zip_retain_reroute(D.load_items(cfg.retain_data, cfg.train_split, limit=cfg.limit),
                                     D.load_items(cfg.reroute_data, cfg.train_split, limit=cfg.limit))
        train_pairs = D.encode_pairs(pairs, tokenizer, **kw)
    else:
        pairs = D.to_pairs(D.load_items(cfg.data, cfg.train_split, limit=cfg.limit, ranking=cfg.ranking), cfg.pairs)
        train_pairs = D.encode_pairs(pairs, tokenizer, **kw)
    evals, prompts = {}, {}
    for source in cfg.eval_data:
        items = D.load_items(source, cfg.eval_split)
        evals[source] = D.encode_ranked(items[: cfg.eval_limit], tokenizer, **kw)
        prompts[source] = [it["prompt"] for it in items[:1]]
    return train_pairs, evals, prompts


def micro_batches(encoded: list[dict], batch_size: int, seed: int, start: int, pad_token_id: int,
                  rank: int = 0, world: int = 1, collate=D.collate):
    """Micro-batch ``start``, ``start + 1``, ... of a fixed order: epoch e is a permutation seeded with
    ``seed + e``, so resuming at any micro-batch reproduces the data order. Each process takes its
    share of a global batch of ``batch_size * world`` pairs."""
    per_epoch = len(encoded) // (batch_size * world)
    if per_epoch == 0:
        raise D.DataError(f"{len(encoded)} pairs is fewer than one batch of {batch_size * world}; lower --batch-size")
    m, perm_epoch, perm = start, -1, None
    while True:
        epoch, b = divmod(m, per_epoch)
        if epoch != perm_epoch:
            perm = torch.randperm(len(encoded), generator=torch.Generator().manual_seed(seed + epoch))
            perm_epoch = epoch
        global_idx = perm[b * batch_size * world: (b + 1) * batch_size * world]
        mine = global_idx[rank::world].tolist()
        batch = collate([encoded[i] for i in mine], pad_token_id)
        batch["index"] = torch.tensor(mine, dtype=torch.long)  # which pairs (the reference cache reads by it)
        yield batch
        m += 1


FINGERPRINT_ELEMENTS = 1024


def model_fingerprint(model) -> str:
    """A cheap fingerprint of the base weights (the exact bytes of the first ``FINGERPRINT_ELEMENTS``
    of every non-adapter tensor, with its name and shape), so that a cache never serves outputs of
    other weights stored under the same model name.

    Only a prefix is read: weights loaded from safetensors are memory-mapped, and a sample spread
    over each tensor paged in nearly the whole file (about 400 MB for SmolLM2 in float32, counted
    in the process's RSS), including layers past the loss's deepest one that training never runs.
    A prefix is a few pages per tensor. Any fine-tune, merge or other checkpoint changes it."""
    import hashlib

    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                continue
            head = p.detach().reshape(-1)[:FINGERPRINT_ELEMENTS].float().cpu().contiguous()
            h.update(name.replace("base_model.model.", "").replace(".base_layer", "").encode())  # wherever LoRA sits
            h.update(f"{tuple(p.shape)}".encode())
            h.update(head.numpy().tobytes())
    return h.hexdigest()[:16]


def open_reference_cache(cfg: TrainConfig, model, tokenizer, train_pairs: list[dict], layers: list[int], loss,
                         sharded: bool):
    """The frozen-model cache of this run's training pairs (built on first use): ``--reference-cache``."""
    from .refcache import ReferenceCache

    if sharded:
        raise TrainingError("--reference-cache works with one process or data parallelism, not FSDP sharding")
    settings = {"dtype": cfg.dtype, "quantization": cfg.quantization, "mixed_precision": cfg.mixed_precision}
    model_id = f"{cfg.model}:{model_fingerprint(model)}"
    device = next(model.parameters()).device
    with torch.autocast(device.type, torch.bfloat16, enabled=cfg.mixed_precision == "bf16"):
        return ReferenceCache.open(cfg.reference_cache, model, train_pairs, layers, loss.needs_logps, settings,
                                   tokenizer.pad_token_id, model_id, batch_size=cfg.batch_size)


# ---------------------------------------------------------------- checkpoints


def _write_failed(what: str, run_dir: Path, err: OSError) -> TrainingError:
    found = checkpoints(run_dir)
    kept = f"the last complete checkpoint is {found[-1][1].name}" if found else "no checkpoint was complete yet"
    return TrainingError(
        f"could not write {what} in {run_dir}: {err.strerror or err}. Nothing half-written was published: "
        f"{kept}, metrics.jsonl is intact. Free space (or fix permissions), then --resume {run_dir}"
    )


def save_checkpoint(run_dir: Path, step: int, model, state: tuple[dict | None, dict], scheduler) -> None:
    """Write everything to ``.checkpoint-N.tmp``, then publish it with one rename; on a write error
    (full disk, permissions) the temporary directory is removed and earlier checkpoints stay.
    ``state``: ``training_state(...)``."""
    adapter_weights, optimizer_state = state
    tmp = None
    try:
        tmp, final = new_checkpoint_dir(run_dir, step)
        model.save_pretrained(tmp / "adapter", state_dict=adapter_weights)
        torch.save(optimizer_state, tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save({"torch": torch.get_rng_state()}, tmp / "rng.pt")
        write_json(tmp / "trainer_state.json", {"step": step})
        commit_checkpoint(tmp, final)
    except OSError as err:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise _write_failed(f"the checkpoint of step {step}", run_dir, err) from err


def save_adapter(run_dir: Path, model, adapter_weights: dict | None = None) -> None:
    """The final adapter (PEFT format), published with one rename like a checkpoint."""
    tmp, final = run_dir / ".adapter.tmp", run_dir / "adapter"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp, state_dict=adapter_weights)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_failed("the final adapter", run_dir, err) from err


def together(accelerator, write, what: str) -> None:
    """Run ``write`` on the main process; every process then learns whether it worked, so a failed
    write stops them all at once instead of leaving the others waiting in the next collective."""
    error = None
    if accelerator.is_main_process:
        try:
            write()
        except Exception as err:  # re-raised below, after the others are told
            error = err
    failed = accelerator.num_processes > 1 and bool(all_processes(torch.tensor(float(error is not None)), accelerator) > 0)
    if error is not None:
        raise error
    if failed:
        raise TrainingError(f"the main process could not write {what}; its error says why")


def checkpoint(run_dir: Path, step: int, model, optimizer, scheduler, accelerator, sharded: bool):
    """Gather (sharded: every process takes part) and write (main process) one checkpoint; returns
    the gathered ``training_state``."""
    state = training_state(model, optimizer, sharded)
    together(accelerator, lambda: save_checkpoint(run_dir, step, model, state, scheduler),
             f"the checkpoint of step {step}")
    return state


def checkpoint_bytes(params: list[torch.Tensor]) -> int:
    """Disk a checkpoint takes: the adapter, and AdamW's two moments per weight (float32)."""
    return sum(p.numel() * (p.element_size() + 8) for p in params)


def check_disk(run_dir: Path, params: list[torch.Tensor]) -> None:
    """Refuse to start when the run directory's disk cannot hold two checkpoints (a new one is
    written before the old one is deleted) and the final adapter."""
    need = 2 * checkpoint_bytes(params) + sum(p.numel() * p.element_size() for p in params) + (1 << 20)
    free = shutil.disk_usage(run_dir).free
    if free < need:
        raise TrainingError(
            f"{run_dir} has {free / 2**20:.1f} MiB free; checkpoints of this adapter need {need / 2**20:.1f} MiB. "
            "Free space or choose another --run-dir"
        )


def load_adapter_weights(path: Path, model) -> None:
    """A checkpoint's adapter weights into the (not yet sharded) PeftModel; safetensors only."""
    from peft import set_peft_model_state_dict

    adapter_file = path / "adapter" / "adapter_model.safetensors"
    result = set_peft_model_state_dict(model, load_file(adapter_file))
    if getattr(result, "unexpected_keys", None):
        raise TrainingError(f"checkpoint {path} does not match the model: unexpected keys {result.unexpected_keys[:3]}")


def load_training_state(path: Path, model, optimizer, scheduler, sharded: bool) -> int:
    """Optimiser, scheduler and RNG state of a checkpoint (``torch.load(weights_only=True)`` only);
    returns its step. The optimiser state is keyed by parameter index (unsharded runs) or by
    parameter name (sharded runs: spread back over the shards)."""
    import json

    state = torch.load(path / "optimizer.pt", weights_only=True)
    by_name = any(isinstance(k, str) for k in state.get("state", {}))
    if sharded and not by_name:  # written unsharded: index i is the i-th trainable parameter
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        state = {"state": {names[i]: v for i, v in state["state"].items()},
                 "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]}
        by_name = True
    if by_name:  # written sharded (or converted above): spread over this run's parameters, sharded or not
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, getattr(optimizer, "optimizer", optimizer), state,
                                 options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(state)
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    torch.set_rng_state(torch.load(path / "rng.pt", weights_only=True)["torch"])
    return json.loads((path / "trainer_state.json").read_text())["step"]


# ---------------------------------------------------------------- the loop


def _item(x):
    if hasattr(x, "full_tensor"):  # a DTensor (FSDP2's gradient norm)
        x = x.full_tensor()
    return x.item() if isinstance(x, torch.Tensor) else x


def _mean_dicts(rows: list[dict]) -> dict:
    out = {}
    for k, v in rows[0].items():
        out[k] = _mean_dicts([r[k] for r in rows]) if isinstance(v, dict) else sum(_item(r[k]) for r in rows) / len(rows)
    return out


def evaluate_run(model, tokenizer, evals: dict, prompts: dict, step: int, cfg: TrainConfig, runlog: RunLog,
                 train_truncation: dict | None = None) -> dict:
    results = {"step": step, "datasets": {}}
    if train_truncation is not None:
        results["train_truncation"] = train_truncation
    for source, encoded in evals.items():
        results["datasets"][source] = item_accuracy(model, encoded, tokenizer.pad_token_id)
    runlog.write_eval(results)
    for source, ps in prompts.items():
        for row in generate_samples(model, tokenizer, ps[: cfg.n_samples], chat_template=cfg.chat_template):
            runlog.sample({"step": step, "data": source, **row})
    return results


def discard_new_run(run_dir: Path) -> None:
    """Remove a run directory that holds nothing but what ``RunLog.create`` wrote (config.json)."""
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {"config.json"}:
        shutil.rmtree(run_dir, ignore_errors=True)


def default_run_dir(cfg: TrainConfig) -> Path:
    return Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{cfg.loss}"


def train(cfg: TrainConfig, model=None, tokenizer=None) -> Path:
    """Train per ``cfg``; return the run directory. ``model`` may be a base model (an adapter is added)
    or a PeftModel whose active adapter is trained (checked by ``check_adapter``)."""
    from transformers import get_scheduler

    resume_from = None
    if cfg.resume:
        saved = type(cfg).from_dict(read_config(cfg.resume))  # type(cfg): registered losses included
        saved.resume, saved.run_dir = cfg.resume, cfg.resume
        saved.steps = max(saved.steps, cfg.steps) if cfg.steps != type(cfg).steps else saved.steps
        cfg = saved
        found = checkpoints(cfg.resume)
        resume_from = found[-1][1] if found else None
    cfg.validate()
    run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg)

    accelerator = make_accelerator()
    sharded = is_sharded(accelerator)
    if sharded and cfg.shared_prompt:
        raise TrainingError("--shared-prompt works with one process or data parallelism, not FSDP sharding: drop it")
    runlog = RunLog(run_dir, enabled=accelerator.is_main_process)
    if not cfg.resume:  # before loading anything: fail fast on an unusable directory, in every process
        together(accelerator, lambda: runlog.create(cfg.to_dict()), f"the run directory {run_dir}")
    try:  # a run that fails before its first step leaves no directory behind (it holds only config.json)
        torch.manual_seed(cfg.seed)

        if model is None:
            model, tokenizer = load_model(cfg.model, dtype=cfg.dtype, quantization=cfg.quantization)
        loss = cfg.loss_fn()
        loss_layers, layers, lora_last = plan_layers(model, loss, cfg.track_layers)
        if loss_layers and not loss.needs_logps and max(layers) > max(loss_layers) and accelerator.is_main_process:
            log.warning("--track-layers %s reaches layer %d, deeper than the loss needs (%d): every forward now runs "
                        "to layer %d; the loss itself still reads only layers %s", cfg.track_layers, max(layers),
                        max(loss_layers), max(layers), loss_layers)
        if getattr(model, "peft_config", None) is None or not model.peft_config:
            model = add_lora(model, cfg, lora_last)
        adapter = check_adapter(model)
        if cfg.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        model.train()

        train_pairs, evals, prompts = load_pairs(cfg, tokenizer)
        train_cut = truncation_report(train_pairs)
        if accelerator.is_main_process and not cfg.resume:
            print(f"training data {cfg.data} ({cfg.train_split}): {describe_truncation(train_cut)}", flush=True)
        params = [p for p in model.parameters() if p.requires_grad]
        if accelerator.is_main_process:
            check_disk(run_dir, params)
        optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate(), weight_decay=cfg.weight_decay)
        scheduler = get_scheduler(
            "constant_with_warmup" if cfg.schedule == "constant" else "cosine",
            optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=cfg.steps,
        )
        if resume_from is not None:  # before sharding: the PeftModel loads its own adapter file
            load_adapter_weights(resume_from, model)
        if sharded:  # FSDP2 shards the PeftModel in place (it stays a PeftModel): hooks and adapters work as before
            wrap_decoder_blocks(accelerator, model)
            model, optimizer = accelerator.prepare(model, optimizer)
            params = [p for p in model.parameters() if p.requires_grad]  # now DTensors
            first_forward(model, accelerator)
        else:  # one process, or data parallel: placed but not wrapped in DDP, gradients averaged by sync_gradients
            model = accelerator.prepare_model(model, evaluation_mode=True)
            optimizer = accelerator.prepare_optimizer(optimizer)
            broadcast_trainable(params, accelerator)

        reference = None
        if cfg.reference_cache and loss.needs_reference:
            reference = open_reference_cache(cfg, model, tokenizer, train_pairs, layers, loss, sharded)

        start = 0
        if resume_from is not None:
            start = load_training_state(resume_from, model, optimizer, scheduler, sharded)
            runlog.resume(start)
        elif cfg.resume:
            runlog.resume(0)
        log.info("training %s from step %d to %d in %s", cfg.loss, start, cfg.steps, run_dir)
        if accelerator.num_processes > 1 and accelerator.is_main_process:
            print(f"{accelerator.num_processes} processes ({'FSDP2' if sharded else accelerator.distributed_type.value}, "
                  f"{accelerator.state.backend}): global batch {cfg.batch_size * accelerator.num_processes} "
                  f"= --batch-size {cfg.batch_size} x {accelerator.num_processes}", flush=True)

    except BaseException:
        if not cfg.resume and accelerator.is_main_process:
            discard_new_run(run_dir)
        raise

    ranked = getattr(loss, "ranked", False)
    batches = micro_batches(train_pairs, cfg.batch_size, cfg.seed, start * cfg.grad_accum, tokenizer.pad_token_id,
                            accelerator.process_index, accelerator.num_processes,
                            collate=D.collate_ranked if ranked else D.collate)
    forward = forward_ranked_batch if ranked else forward_pair_batch
    shared = {"shared_prompt": True} if cfg.shared_prompt else {}
    bar = tqdm(total=cfg.steps, initial=start, disable=not (cfg.progress and accelerator.is_main_process),
               desc=f"{cfg.loss}", dynamic_ncols=True)
    checked = False
    try:
        for step in range(start + 1, cfg.steps + 1):
            t0 = time.perf_counter()
            lr = scheduler.get_last_lr()[0]
            if not checked and lr > 0:
                before = snapshot_trainable(model)
            rows = []
            for micro in range(cfg.grad_accum):
                batch = {k: v.to(accelerator.device) for k, v in next(batches).items()}
                with torch.autocast(accelerator.device.type, torch.bfloat16, enabled=cfg.mixed_precision == "bf16"):
                    inputs = forward(model, batch, layers, loss, progress=(step - 1) / cfg.steps,
                                     sharded=sharded, reference=reference, **shared)
                value, terms = loss(only_layers(inputs, loss_layers))  # tracked layers never reach the loss
                if not bool(all_processes(torch.isfinite(value.detach()), accelerator, "min")):
                    raise TrainingError(
                        f"loss is {value.item()} at step {step} (terms: { {k: _item(v) for k, v in terms.items()} }); "
                        f"{nonfinite_source(model, batch, ranked=ranked)}. "
                        f"The run directory {run_dir} keeps everything written up to step {step - 1}. "
                        "Lower --lr or check the data"
                    )
                if not value.requires_grad:
                    raise TrainingError(
                        f"the {cfg.loss} loss does not depend on any trainable weight: the adapter has no LoRA "
                        f"weights on blocks up to the deepest layer the loss reads ({max(layers)}); put LoRA there"
                    )
                accelerator.backward(value / cfg.grad_accum)
                row = {"loss": value.detach(), **terms, "layers": track(inputs, layers)}
                if (acc := batch_accuracy(inputs)) is not None:
                    row["accuracy"] = acc
                rows.append(row)
            if not sharded:
                sync_gradients(params, accelerator)
            grad_norm = accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if not checked and lr > 0:
                assert_changed(model, before, adapter, accelerator)
                checked = True
                del before

            if step % cfg.log_every == 0 or step == cfg.steps:
                metrics = {"step": step, **_mean_dicts(all_processes(rows, accelerator)), "lr": lr,
                           "grad_norm": _item(grad_norm),
                           "step_time": time.perf_counter() - t0}
                runlog.log(metrics)
                postfix = {"loss": f"{metrics['loss']:.4g}"}
                if "accuracy" in metrics:
                    postfix["acc"] = f"{metrics['accuracy']:.2f}"
                cos = [v["cos_rejected"] for v in metrics["layers"].values() if "cos_rejected" in v]
                if cos:
                    postfix["cos_r"] = f"{sum(cos) / len(cos):.4f}"
                bar.set_postfix(postfix)
            bar.update(1)
            if cfg.save_every and step % cfg.save_every == 0 and step < cfg.steps:
                checkpoint(run_dir, step, model, optimizer, scheduler, accelerator, sharded)
            if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps and (sharded or accelerator.is_main_process):
                evaluate_run(model, tokenizer, evals, prompts, step, cfg, runlog, train_cut)  # sharded: every process runs it
    finally:
        bar.close()
        runlog.close()

    state = checkpoint(run_dir, cfg.steps, model, optimizer, scheduler, accelerator, sharded)
    together(accelerator, lambda: save_adapter(run_dir, model, state[0]), "the final adapter")
    if sharded or accelerator.is_main_process:
        results = evaluate_run(model, tokenizer, evals, prompts, cfg.steps, cfg, runlog, train_cut)
        runlog.close()
        if accelerator.is_main_process:
            print(summary(run_dir, results, cfg))
    accelerator.wait_for_everyone()
    return run_dir


def summary(run_dir: Path, results: dict, cfg: TrainConfig) -> str:
    """Accuracy before (frozen model) vs after per eval set, the final per-layer cosines, where the run is."""
    from .runlog import read_jsonl

    from .stats import paired_difference

    lines = [f"\nrun: {run_dir}  (loss {cfg.loss}, {cfg.steps} steps)", "",
             f"{'eval data (test)':<40}{'n':>5}{'before':>9}{'after':>9}{'change (paired 95% CI)':>27}{'McNemar p':>11}"]
    for i, (source, r) in enumerate(results["datasets"].items()):
        tag = " (in-distribution)" if i == 0 else " (shifted)"
        base = r.get("base", r)
        change = ""
        if "items" in r and "items" in base:
            d = paired_difference(dict(enumerate(r["items"]["correct"])), dict(enumerate(base["items"]["correct"])))
            lo, hi = d["ci95"]
            change = f"{d['difference']:>+9.3f} ({lo:+.3f}, {hi:+.3f}){'*' if d['significant'] else ' '}{d['p']:>11.3g}"
        lines.append(f"{source + tag:<40}{r['n']:>5}{base['accuracy_mean']:>9.3f}{r['accuracy_mean']:>9.3f}{change}")
    lines.append(f"{'':<40}accuracy by mean log-prob per token; * the paired interval excludes 0")
    from .truncation import describe as describe_truncation

    if cut := results.get("train_truncation"):
        lines.append(f"training pairs: {describe_truncation(cut)}")
    for source, r in results["datasets"].items():
        if r.get("truncation", {}).get("cut") or r.get("truncation", {}).get("dropped"):
            lines.append(f"{source}: {describe_truncation(r['truncation'])}")
    rows, _ = read_jsonl(run_dir / "metrics.jsonl")
    if rows:
        last = rows[-1]["layers"]
        lines += ["", f"{'layer':>6}{'cos chosen':>12}{'cos rejected':>14}{'norm chosen':>13}{'norm rejected':>15}"
                  "   policy vs frozen, last step"]
        for k, v in last.items():
            if "cos_chosen" in v:
                lines.append(f"{k:>6}{v['cos_chosen']:>12.4f}{v['cos_rejected']:>14.4f}"
                             f"{v['norm_chosen']:>13.4f}{v['norm_rejected']:>15.4f}")
    lines += ["", f"metrics: {run_dir / 'metrics.jsonl'}   adapter: {run_dir / 'adapter'}   eval: {run_dir / 'eval.json'}"]
    return "\n".join(lines)
