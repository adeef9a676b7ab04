"""Losses on hidden states and log-probabilities, built on the reprkit core; one file per family.

``LOSSES`` maps a name to its class; each declares ``layer_spec()``, ``needs_logps`` and
``needs_reference`` and maps ``LossInputs`` to ``(loss, metrics)``.
"""

from .base import LossInputs, Side
from .dpo import DPO, PlackettLuce, dr_dpo_loss, plackett_luce_loss, preference_loss
from .prefvec import PrefVec
from .reprpo import ReprPO
from .reroute import Reroute

LOSSES = {"dpo": DPO, "reprpo": ReprPO, "reroute": Reroute, "plackett_luce": PlackettLuce, "prefvec": PrefVec}

__all__ = ["DPO", "LOSSES", "PlackettLuce", "PrefVec", "LossInputs", "ReprPO", "Reroute", "Side", "dr_dpo_loss", "plackett_luce_loss",
           "preference_loss"]
