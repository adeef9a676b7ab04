"""The error training raises when it cannot go on; what was written is kept."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

class TrainingError(RuntimeError):
    """Training cannot go on (a guard fired, or the loss diverged); what was written is kept."""


