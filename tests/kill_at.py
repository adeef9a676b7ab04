"""Run ``reprkit`` and SIGKILL the process at an exact point of training, so that the kill-and-resume
test is deterministic (no timer racing a training loop):

    KILL_AT_STEP=5 KILL_WHERE=logged python -m tests.kill_at train ...

``KILL_WHERE``: ``logged`` (just after step N's metrics line is written, before any checkpoint of
that step), ``mid-checkpoint`` (step N's checkpoint files are written but not yet published) or
``checkpointed`` (just after step N's checkpoint is published).
"""

import os
import signal
import sys

from reprkit import runlog
from reprkit.cli import main
from reprkit.training import checkpoints as train

STEP, WHERE = int(os.environ["KILL_AT_STEP"]), os.environ["KILL_WHERE"]


def _die():
    os.kill(os.getpid(), signal.SIGKILL)


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


if WHERE not in ("logged", "mid-checkpoint", "checkpointed"):
    raise SystemExit(f"KILL_WHERE must be logged, mid-checkpoint or checkpointed, not {WHERE!r}")
runlog.RunLog.log = log
train.commit_checkpoint = commit
main(sys.argv[1:])
