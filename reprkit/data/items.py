"""The item shape every format becomes, the error bad data raises, and where the shared data lives."""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("reprkit.data")

Messages = list[dict]
"""A chat prompt: ``[{"role": ..., "content": ...}, ...]``."""


class DataError(ValueError):
    """A dataset row or source that cannot be used; the message names the row and the fix."""


def shared_data_dir() -> Path | None:
    """``$REPRKIT_DATA_DIR``, or ``../shared/data`` next to the project or the working directory."""
    env = os.environ.get("REPRKIT_DATA_DIR")
    candidates = [Path(env)] if env else []
    candidates += [Path(__file__).resolve().parents[3] / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    return next((c for c in candidates if c.is_dir()), None)
