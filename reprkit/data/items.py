"""The item shape every format becomes, the error bad data raises, and where the shared data lives."""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("reprkit.data")

Messages = list[dict]
"""A chat prompt: ``[{"role": ..., "content": ...}, ...]``."""


def prompt_key(item: dict) -> str:
    """The key under which two items (or pairs) share a prompt: the one rule for "trained on this
    prompt" (a run's overlap with the sets it scores) and for GENIES' seeded choice among tied
    rejected responses. Message lists compare by their printed form: same roles, contents, order."""
    return str(item["prompt"])


class DataError(ValueError):
    """A dataset row or source that cannot be used; the message names the row and the fix."""


def shared_data_dir() -> Path | None:
    """``$REPRKIT_DATA_DIR``, or ``../shared/data`` next to the project or the working directory."""
    env = os.environ.get("REPRKIT_DATA_DIR")
    candidates = [Path(env)] if env else []
    candidates += [Path(__file__).resolve().parents[3] / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    return next((c for c in candidates if c.is_dir()), None)
