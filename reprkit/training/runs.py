"""A run directory as a unit: its default name, its lock while it trains, the settings a resumed
run keeps or may change, and removing a new run that failed before it had anything to resume."""

from __future__ import annotations

import os
import shutil
import socket
from datetime import datetime
from pathlib import Path

from ..config import TrainConfig
from ..runlog import checkpoints, read_config
from .errors import TrainingError


def discard_new_run(run_dir: Path, keep_dir: bool = False) -> None:
    """Remove a new run that has no checkpoint (what it holds cannot be resumed and would block a
    rerun there): its files, and the directory itself unless it existed before (``keep_dir``)."""
    if not run_dir.is_dir() or checkpoints(run_dir) or (run_dir / "adapter").exists():
        return
    if keep_dir:
        for p in run_dir.iterdir():
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    else:
        shutil.rmtree(run_dir, ignore_errors=True)


def default_run_dir(cfg: TrainConfig) -> Path:
    return Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{cfg.loss}"


class RunLock:
    """An flock on ``<run>/.lock`` for as long as a run trains (the system drops it when the process
    ends, however it ends): a second ``train`` or ``--resume`` on the same directory is refused with
    who holds it. A no-op where ``fcntl`` is missing (Windows)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self.file = None

    def __enter__(self) -> RunLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover (Windows)
            return self
        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            self.file = None
            raise TrainingError(f"{self.path.parent} is being trained by {holder}: wait for it to finish, or stop it "
                                f"(kill -TERM writes a checkpoint), then --resume {self.path.parent}") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"process {os.getpid()} on {socket.gethostname()} since {datetime.now():%Y-%m-%d %H:%M:%S}")
        self.file.flush()
        return self

    def __exit__(self, *exc) -> None:
        if self.file is not None:
            self.file.close()  # releases the lock
            self.path.unlink(missing_ok=True)
            self.file = None


# settings a resumed run may change: how long it runs and what it writes along the way
RESUME_MAY_CHANGE = ("steps", "save_every", "eval_every", "log_every", "n_samples", "progress", "dry_run")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def resume_settings(cfg: TrainConfig) -> TrainConfig:
    """The saved config of ``cfg.resume`` with the flags given on this command line that may change
    (``RESUME_MAY_CHANGE``) applied and said; a flag that contradicts the run's own settings is
    refused (``ValueError`` naming each, with the run's value)."""
    default = type(cfg)()
    saved = type(cfg).from_dict(read_config(cfg.resume))  # type(cfg): registered losses included
    given, run, base = cfg.to_dict(), saved.to_dict(), default.to_dict()
    clashes, changes = [], []

    def compare(a: dict, b: dict, d: dict, prefix: str = "") -> None:
        for key, value in a.items():
            if key in ("resume", "run_dir"):
                continue
            if isinstance(value, dict) and isinstance(b.get(key), dict):
                if key in (cfg.loss, saved.loss, "lora"):  # the other losses' groups are not used
                    compare(value, b[key], d.get(key, {}), f"{prefix}{key}.")
                continue
            if value == d.get(key) or value == b.get(key):
                continue  # not given (the default), or the run's own value
            if not prefix and key in RESUME_MAY_CHANGE:
                changes.append(key)
            else:
                clashes.append(f"{_flag(prefix + key)} {value!r} (the run's: {b.get(key)!r})")

    compare(given, run, base)
    if cfg.run_dir and Path(cfg.run_dir) != Path(cfg.resume):
        clashes.append(f"--run-dir {cfg.run_dir} (the run is {cfg.resume})")
    if clashes:
        raise ValueError(f"--resume {cfg.resume} continues that run with its own settings; these flags contradict "
                         f"them: {', '.join(clashes)}. Drop them, or start a new run with its own --run-dir")
    if "steps" in changes and cfg.steps < saved.steps:
        raise ValueError(f"--steps {cfg.steps} is below the run's {saved.steps}: a resumed run is not shortened "
                         "(its schedule was set for its steps); drop --steps")
    for key in changes:
        print(f"reprkit: resuming with {_flag(key)} {given[key]!r} (the run had {run[key]!r})", flush=True)
        setattr(saved, key, getattr(cfg, key))
    saved.resume, saved.run_dir = cfg.resume, cfg.resume
    return saved
