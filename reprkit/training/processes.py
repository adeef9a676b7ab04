"""Several processes: the accelerator, FSDP2 sharding of the decoder blocks, and the collectives a
step needs (broadcast of the initial adapter, gradient averaging, reductions of logged values)."""

from __future__ import annotations

import logging
import os

import torch

from ..layers import find_blocks
from .errors import TrainingError

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- processes


FSDP2_ACCELERATE = "1.14"
"""The lowest accelerate whose FSDP2 reprkit trains under (tested; the rest of reprkit needs 1.10)."""


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
        import accelerate
        from packaging.version import Version

        if Version(accelerate.__version__) < Version(FSDP2_ACCELERATE):
            # before 1.14 accelerate's FSDP2 preparation leaves LoRA weights as plain tensors beside
            # DTensors: "aten.mm.default got mixed torch.Tensor and DTensor" on the first step
            raise TrainingError(f"FSDP2 training needs accelerate>={FSDP2_ACCELERATE} (this is "
                                f"{accelerate.__version__}): pip install -U 'accelerate>={FSDP2_ACCELERATE}'")
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


def full_state_options():
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
    return (get_model_state_dict(model, options=full_state_options()),
            get_optimizer_state_dict(model, optimizer, options=full_state_options()))


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
    from ..devices import wide_float

    wide = wide_float(accelerator.device)  # float64, but MPS has none
    flat = torch.stack([torch.as_tensor(v, dtype=wide).detach().cpu() for v in leaves]).to(accelerator.device)
    dist.all_reduce(flat, op=dist.ReduceOp.MIN if op == "min" else dist.ReduceOp.SUM)
    if op == "mean":
        flat /= accelerator.num_processes
    return tree_unflatten(list(flat.cpu()), spec)


