"""Run ``reprkit`` and SIGKILL the process at an exact point of training, so that the kill-and-resume
test is deterministic (no timer racing a training loop):

    KILL_AT_STEP=5 KILL_WHERE=logged python -m tests.kill_at train ...

``KILL_WHERE``: ``logged`` (just after step N's metrics line is written, before any checkpoint of
that step), ``mid-checkpoint`` (step N's checkpoint files are written but not yet published) or
``checkpointed`` (just after step N's checkpoint is published). With ``KILL_SIGNAL=TERM`` (or
``INT``) that signal is sent instead of SIGKILL, and ``KILL_WHERE=forward`` sends it during the first
micro-batch's forward of step N (``KILL_ACCUM``: micro-batches per step, default 1).
"""

import os
import signal
import sys

from reprkit import runlog
from reprkit.cli import main
from reprkit.training import checkpoints as train
from reprkit.training import loop

STEP, WHERE = int(os.environ["KILL_AT_STEP"]), os.environ["KILL_WHERE"]
SIGNAL = getattr(signal, "SIG" + os.environ.get("KILL_SIGNAL", "KILL"))
ACCUM = int(os.environ.get("KILL_ACCUM", "1"))


def _die():
    os.kill(os.getpid(), SIGNAL)


_forward, _calls = loop.forward_pair_batch, [0]


def forward(*args, **kwargs):
    _calls[0] += 1
    if WHERE == "forward" and _calls[0] == (STEP - 1) * ACCUM + 1:
        _die()
    return _forward(*args, **kwargs)


_log = runlog.RunLog.log


def log(self, row):
    _log(self, row)
    if WHERE == "logged" and row.get("step") == STEP:
        _die()


def commit(tmp, final, keep=1):
    step = int(final.name.split("-")[-1])
    if WHERE == "mid-checkpoint" and step == STEP:
        _die()
    runlog.commit_checkpoint(tmp, final, keep)
    if WHERE == "checkpointed" and step == STEP:
        _die()


if WHERE not in ("logged", "mid-checkpoint", "checkpointed", "forward"):
    raise SystemExit(f"KILL_WHERE must be logged, mid-checkpoint, checkpointed or forward, not {WHERE!r}")
runlog.RunLog.log = log
loop.forward_pair_batch = forward
train.commit_checkpoint = commit
main(sys.argv[1:])
