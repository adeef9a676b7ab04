"""The adapter: which layers a step captures, where LoRA goes, and the guards that refuse an adapter
that would silently not train."""

from __future__ import annotations

import logging

import torch

from reprkit.losses.reprpo import ReprPO

from ..config import TrainConfig
from ..layers import find_blocks, select_layers
from .errors import TrainingError
from .processes import all_processes, local

log = logging.getLogger(__name__)

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
    from peft import get_peft_model

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
    check_rank(model, lc.r, targets, layers)
    config = lora_config(model, r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout, target_modules=targets,
                         use_rslora=lc.rslora, use_dora=lc.dora, layers_to_transform=layers)
    return get_peft_model(model, config)


def add_intervention(model, cfg: TrainConfig, loss, loss_layers: list[int]):
    """Attach a fresh ``--intervention vector|reft`` (``reprkit.interventions``) to ``model`` in place;
    the base weights are frozen. A hidden-state loss that stops before every intervened layer could
    not train it, and is refused naming both."""
    from .. import interventions as I

    if getattr(model, "peft_config", None):
        raise TrainingError(f"--intervention {cfg.intervention} trains on the base model, and this one already has LoRA "
                            f"adapter(s) {list(model.peft_config)}: pass the base model")
    settings = getattr(cfg, cfg.intervention)
    layers = list(select_layers(model, settings.layers).indices)
    if loss_layers and not loss.needs_logps and min(layers) > max(loss_layers):
        raise TrainingError(
            f"the {cfg.intervention} is at layer(s) {layers} and the {cfg.loss} loss reads layers up to {max(loss_layers)}: "
            f"its forward stops before the intervention, which would get no gradient. Put it at or before layer "
            f"{max(loss_layers)} (--{cfg.intervention}.layers {max(loss_layers)})")
    blind = blind_layers(layers, settings.positions, loss, loss_layers)
    if blind == layers:  # layers is never empty
        raise TrainingError(
            f"the {cfg.intervention} edits prompt tokens ({settings.positions}) at layer(s) {layers}, and the {cfg.loss} "
            f"loss reads the completion's tokens at layers up to {max(loss_layers)}: no block after the edit carries it "
            f"to what the loss reads, so it would get no gradient. Put it before layer {max(loss_layers)} "
            f"(--{cfg.intervention}.layers {max(loss_layers) - 1}) or act on the response (--{cfg.intervention}.positions "
            "response or all)")
    if blind:
        log.warning("the %s at layer(s) %s edits prompt tokens at or after the deepest layer the %s loss reads (%d): "
                    "those layers get no gradient", cfg.intervention, blind, cfg.loss, max(loss_layers))
    torch.manual_seed(cfg.seed)  # LoReFT's random start, like LoRA's, follows --seed
    if cfg.intervention == "vector":
        iv = I.VectorIntervention(layers, I.hidden_size_of(model), positions=settings.positions, scale=settings.scale)
    else:
        iv = I.LoReFTIntervention(layers, I.hidden_size_of(model), positions=settings.positions, rank=settings.rank)
    iv.base_model_name = cfg.model
    return I.attach(model, iv)


def blind_layers(layers: list[int], positions: str, loss, loss_layers: list[int]) -> list[int]:
    """The intervened layers a hidden-state loss cannot train: it reads the completion's tokens, so an
    edit of prompt tokens reaches them only through a later block's attention, and at (or after) the
    deepest layer the loss reads none runs."""
    from ..interventions import parse_positions

    if not loss_layers or loss.needs_logps or parse_positions(positions)[0] not in ("prompt", "prompt_ends"):
        return []
    return [k for k in layers if k >= max(loss_layers)]


def check_trained(model) -> str:
    """``check_adapter`` for a LoRA adapter; for an intervention, that it is attached, trainable and
    the only thing that is: returns a name for messages (the adapter's, or the intervention's kind)."""
    from ..interventions import attached

    iv = attached(model)
    if iv is None:
        return check_adapter(model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    mine = {f"{n}" for n, _ in model.named_parameters() if n.startswith("reprkit_intervention.")}
    if not trainable:
        raise TrainingError(f"the {iv.kind} intervention has no trainable parameters")
    others = [n for n in trainable if n not in mine]
    if others:
        raise TrainingError(f"base weights are trainable beside the {iv.kind} intervention (e.g. {others[0]}): "
                            "the frozen model would not be the base model. Attach it with reprkit.interventions.attach")
    return iv.kind


def check_rank(model, r: int, targets, layers: list[int] | None) -> None:
    """Refuse a LoRA rank above every adapted layer's smaller side: no update could use it, so it
    only costs memory (``--lora.r 100000`` would otherwise end in an allocator error). A rank above
    some layers' side (a MoE router with 4 outputs) is peft's to handle: their update is just full
    rank."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    sides = [(min(m.in_features, m.out_features), n) for n, m in model.named_modules()
             if isinstance(m, torch.nn.Linear) and m is not head
             and (targets == "all-linear" or n.rsplit(".", 1)[-1] in targets)]
    if sides and r > (largest := max(sides))[0]:
        raise TrainingError(f"--lora.r {r} is above the smaller side of every layer it adapts (at most {largest[0]}, "
                            f"{largest[1]}): no LoRA update can have that rank. Use --lora.r {largest[0]} or less")


def lora_config(model, r: int = 8, **kwargs):
    """peft's ``LoraConfig`` placed as reprkit places its adapters: every linear layer
    (``"all-linear"``: peft's rule, the LM head left out) except those LoRA cannot wrap
    (``not_plain_linear``: Llama 4's router), for a causal LM. ``kwargs`` go to ``LoraConfig``.

    >>> peft_model = get_peft_model(model, lora_config(model, r=8))  # doctest: +SKIP
    """
    from peft import LoraConfig

    settings = dict(r=r, target_modules="all-linear", task_type="CAUSAL_LM",
                    exclude_modules=not_plain_linear(model) or None)
    return LoraConfig(**{**settings, **kwargs})


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
    - trainable parameters that belong to another adapter than the active one, or none at all;
    - base weights offloaded by accelerate (``device_map`` with "disk" or CPU offload: the weights
      wait on the meta device between forwards), which the backward pass cannot reach.
    """
    if not getattr(model, "peft_config", None):
        raise TrainingError("the model has no LoRA adapter to train")
    offloaded = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if offloaded:
        placed = getattr(model, "hf_device_map", None) or getattr(getattr(model, "base_model", None), "hf_device_map", {})
        where = sorted(k for k, v in (placed or {}).items() if v == "disk")
        raise TrainingError(
            f"{len(offloaded)} base weights are offloaded by accelerate (e.g. {offloaded[0]}"
            + (f"; on disk: {', '.join(where[:4])}" if where else "") + "): the backward pass needs every weight it "
            "goes through in memory, so LoRA cannot train through them. Load the model without offloading (a "
            "smaller dtype, --quantization 4bit), or shard it over processes with FSDP2 "
            "(configs/accelerate/fsdp.yaml). Capture, edits, stop and the logit lens do work on an offloaded model"
        )
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


