"""Checkpoints and resume: the adapter, optimiser and scheduler state written atomically, disk
checks before training, and reading them back (falling back to the checkpoint before when the
latest cannot be read)."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..runlog import checkpoints, commit_checkpoint, new_checkpoint_dir, write_json
from .errors import TrainingError
from .processes import all_processes, training_state
from .signals import Stopped

log = logging.getLogger(__name__)

KEEP = 2
"""checkpoints kept: the latest and the one before, to fall back to when the latest is unreadable"""

# ---------------------------------------------------------------- checkpoints


def _reason(err: BaseException) -> str:
    text = getattr(err, "strerror", None) or str(err).strip() or type(err).__name__
    return " ".join(text.split())[:300]


def write_failed(what: str, run_dir: Path, err: BaseException) -> TrainingError:
    found = checkpoints(run_dir)
    kept = f"the last complete checkpoint is {found[-1][1]}" if found else "no checkpoint was complete yet"
    try:  # torch's own message on a full disk ("unexpected pos ...") does not say so
        free = f" (its disk has {shutil.disk_usage(run_dir).free / 2**20:.1f} MiB free)"
    except OSError:
        free = ""
    return TrainingError(
        f"could not write {what} in {run_dir}{free}: {_reason(err)}. Nothing half-written was kept: "
        f"{kept}, metrics.jsonl is intact. Free space (or fix permissions), then --resume {run_dir}"
    )


def save_checkpoint(run_dir: Path, step: int, model, state: tuple[dict | None, dict], scheduler) -> None:
    """Write everything to ``.checkpoint-N.tmp``, then publish it with one rename; on a write error
    (full disk, permissions) the temporary directory is removed and earlier checkpoints stay.
    ``state``: ``training_state(...)``."""
    adapter_weights, optimizer_state = state
    tmp = None
    try:
        # room first: of the KEEP kept, the oldest goes before the new one is written (the newest stays
        # until the new one is complete), so the disk holds at most KEEP checkpoints at any moment
        for _, old in checkpoints(run_dir)[: -(KEEP - 1) or None]:
            if old.name != f"checkpoint-{step:06d}":
                shutil.rmtree(old, ignore_errors=True)
        tmp, final = new_checkpoint_dir(run_dir, step)
        save_trained(model, tmp / "adapter", adapter_weights)
        torch.save(optimizer_state, tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save({"torch": torch.get_rng_state()}, tmp / "rng.pt")
        write_json(tmp / "trainer_state.json", {"step": step})
        commit_checkpoint(tmp, final, keep=KEEP)
    except Exception as err:  # OSError, safetensors' SafetensorError, torch's "PytorchStreamWriter failed"
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, Stopped):  # a second signal: stop at once, the temporary files removed
            raise
        raise write_failed(f"the checkpoint of step {step}", run_dir, err) from err


def save_trained(model, path: Path, adapter_weights: dict | None = None) -> None:
    """What the run trains, in its own format: a LoRA adapter in PEFT's (``save_pretrained``), an
    intervention as ``intervention.safetensors`` + ``intervention_config.json``."""
    from ..interventions import attached

    iv = attached(model)
    if iv is not None:
        iv.save_pretrained(path)
    else:
        model.save_pretrained(path, state_dict=adapter_weights)


def trained_weights_file(path: Path) -> Path:
    """A checkpoint's (or run's) ``adapter/`` weights file: PEFT's, or an intervention's."""
    from ..interventions import WEIGHTS_FILE

    own = path / "adapter" / WEIGHTS_FILE
    return own if own.is_file() else path / "adapter" / "adapter_model.safetensors"


def save_adapter(run_dir: Path, model, adapter_weights: dict | None = None) -> None:
    """The final adapter (PEFT format), published with one rename like a checkpoint."""
    tmp, final = run_dir / ".adapter.tmp", run_dir / "adapter"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        save_trained(model, tmp, adapter_weights)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except Exception as err:  # as in save_checkpoint
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, Stopped):
            raise
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
    """Refuse to start when the run directory's disk cannot hold what the run will write at its
    peak: ``KEEP`` checkpoints (the oldest is removed before a new one is written) and the final
    adapter. Checkpoints and an adapter already there (a resumed run) count as written: the check
    asks only for what is new."""
    one = checkpoint_bytes(params)
    have = min(len(checkpoints(run_dir)), KEEP)
    adapter = 0 if (run_dir / "adapter").is_dir() else sum(p.numel() * p.element_size() for p in params)
    need = (KEEP - have) * one + adapter + (1 << 20)
    free = shutil.disk_usage(run_dir).free
    if free < need:
        raise TrainingError(
            f"{run_dir} has {free / 2**20:.1f} MiB free; checkpoints of this adapter need {need / 2**20:.1f} MiB "
            f"more ({KEEP - have} of {one / 2**20:.1f} MiB and the final adapter). Free space or choose another "
            "--run-dir"
        )


class Unreadable(TrainingError):
    """A checkpoint file that cannot be read; ``path`` names it."""

    def __init__(self, path: Path, err: BaseException):
        super().__init__(f"{path} cannot be read ({_reason(err)})")
        self.path = path


def read_checkpoint(path: Path) -> dict:
    """Every file of a checkpoint, read into memory before any is applied (``weights_only`` loads and
    safetensors only), so a damaged one is found before the model or optimiser is touched. Raises
    ``Unreadable`` naming the file."""
    out = {}
    parts = {"adapter": (trained_weights_file(path), load_file),
             "optimizer": (path / "optimizer.pt", lambda f: torch.load(f, weights_only=True)),
             "scheduler": (path / "scheduler.pt", lambda f: torch.load(f, weights_only=True)),
             "rng": (path / "rng.pt", lambda f: torch.load(f, weights_only=True)["torch"]),
             "step": (path / "trainer_state.json", lambda f: int(json.loads(Path(f).read_text())["step"]))}
    for key, (file, read) in parts.items():
        try:
            out[key] = read(str(file))
        except Exception as err:
            raise Unreadable(file, err) from err
    return out


def latest_readable(run_dir: Path, say=print) -> tuple[Path, dict] | None:
    """The newest checkpoint whose files all read, newest first; each one passed over is said in one
    line. None when there is none; ``TrainingError`` naming every damaged file when none reads."""
    found = checkpoints(run_dir)
    damaged = []
    for _, path in reversed(found):
        try:
            state = read_checkpoint(path)
        except Unreadable as err:
            damaged.append(err)
            continue
        for err in damaged:  # set aside, so that keeping the newest checkpoints never keeps a damaged one
            bad = err.path.relative_to(run_dir).parts[0]
            aside = run_dir / f"{bad}.damaged"
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(run_dir / bad, aside)
            say(f"reprkit: {err}; resuming from {path.name} instead (the steps after it run again; the damaged "
                f"checkpoint is kept as {aside.name})")
        return path, state
    if damaged:
        raise TrainingError(
            "no checkpoint of " + str(run_dir) + " can be read: " + "; ".join(str(e) for e in damaged)
            + f". Remove them (rm -r {run_dir}/checkpoint-*) to train this run again from step 0 with --resume, "
            "or start a new run"
        )
    return None


def load_adapter_weights(path: Path, model, weights: dict | None = None) -> None:
    """A checkpoint's adapter weights (read by ``read_checkpoint``, or from ``path``) into the (not
    yet sharded) PeftModel; safetensors only."""
    from peft import set_peft_model_state_dict

    from ..interventions import attached

    if weights is None:
        weights = load_file(trained_weights_file(path))
    if (iv := attached(model)) is not None:
        try:
            iv.load_state_dict(weights)
        except RuntimeError as err:
            raise TrainingError(f"checkpoint {path} does not match the {iv.kind} intervention: {err}") from err
        return
    result = set_peft_model_state_dict(model, weights)
    if getattr(result, "unexpected_keys", None):
        raise TrainingError(f"checkpoint {path} does not match the model: unexpected keys {result.unexpected_keys[:3]}")


def load_training_state(path: Path, model, optimizer, scheduler, sharded: bool, state: dict | None = None) -> int:
    """Optimiser, scheduler and RNG state of a checkpoint (``read_checkpoint``'s, or read from
    ``path``); returns its step. The optimiser state is keyed by parameter index (unsharded runs) or
    by parameter name (sharded runs: spread back over the shards)."""
    if state is None:
        state = read_checkpoint(path)
    opt = state["optimizer"]
    by_name = any(isinstance(k, str) for k in opt.get("state", {}))
    if sharded and not by_name:  # written unsharded: index i is the i-th trainable parameter
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        opt = {"state": {names[i]: v for i, v in opt["state"].items()},
               "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in opt["param_groups"]]}
        by_name = True
    if by_name:  # written sharded (or converted above): spread over this run's parameters, sharded or not
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, getattr(optimizer, "optimizer", optimizer), opt,
                                 options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(opt)
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    return state["step"]
