"""SIGTERM (what schedulers send before killing a job) and SIGINT (Ctrl-C) during training: the
run stops at a safe point, writes a checkpoint, says how to resume and exits with the conventional
code (128 + the signal's number: 143, 130).

A safe point is the end of a step (its optimiser step done: the checkpoint is of that step) or the
boundary between two micro-batches of a step (the step is abandoned: its gradients are dropped and
the checkpoint is of the step before, with the random state as it was when the abandoned step
began). A second signal stops at once, keeping only the checkpoints already written. Outside the
loop (loading, the final evaluation) a signal stops at once, since nothing is half-done there
that a checkpoint could keep.
"""

from __future__ import annotations

import signal
import sys
import threading

from .errors import TrainingError

NAMES = {signal.SIGINT: "SIGINT (Ctrl-C)", signal.SIGTERM: "SIGTERM"}


class Stopped(TrainingError):
    """Training stopped on a signal; ``exit_code`` is 128 + the signal's number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + int(signum)


class StopSignals:
    """Context manager: while ``deferring`` a signal is only recorded (``requested``), else it
    raises ``Stopped`` with the message ``now_message`` gives. Handlers are installed from the
    main thread only (elsewhere Python cannot) and restored on exit."""

    def __init__(self, now_message=lambda name: f"stopped by {name}"):
        self.signum: int | None = None
        self.deferring = False
        self.now_message = now_message
        self._old: dict = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in NAMES:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def _handle(self, signum, frame) -> None:
        name = NAMES.get(signum, str(signum))
        if self.deferring and self.signum is None:
            self.signum = signum
            print(f"reprkit: {name} received: stopping at the end of this step (or micro-batch) with a "
                  "checkpoint; send it again to stop at once", file=sys.stderr, flush=True)
            return
        self.signum = signum
        raise Stopped(self.now_message(name), signum)

    @property
    def name(self) -> str:
        return NAMES.get(self.signum, str(self.signum)) if self.signum is not None else ""
