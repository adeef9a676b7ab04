"""Checkpoints and resume: the adapter, optimiser and scheduler state written atomically, disk
checks before training, and reading them back."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..runlog import checkpoints, commit_checkpoint, new_checkpoint_dir, write_json
from .errors import TrainingError
from .processes import all_processes, training_state

log = logging.getLogger(__name__)

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- checkpoints


def write_failed(what: str, run_dir: Path, err: OSError) -> TrainingError:
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
        raise write_failed(f"the checkpoint of step {step}", run_dir, err) from err


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
        raise write_failed("the final adapter", run_dir, err) from err


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


