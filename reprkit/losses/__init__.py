"""Losses on hidden states and log-probabilities, built on the reprkit core; one file per family.

``LOSSES`` maps a name to its class; each declares ``layer_spec()``, ``needs_logps`` and
``needs_reference`` and maps ``LossInputs`` to ``(loss, metrics)``.
"""

from .base import LossInputs, Side
from .dpo import DPO, PlackettLuce, dr_dpo_loss, plackett_luce_loss, preference_loss
from .prefvec import PrefVec
from .reprpo import ReprPO
from .reroute import Reroute
from .steering import BiPO, RePS, bipo_loss, reps_terms

LOSSES = {"dpo": DPO, "reprpo": ReprPO, "reroute": Reroute, "plackett_luce": PlackettLuce, "prefvec": PrefVec, "bipo": BiPO,
          "reps": RePS}

__all__ = ["BiPO", "DPO", "RePS", "bipo_loss", "reps_terms", "LOSSES", "PlackettLuce", "PrefVec", "LossInputs", "ReprPO", "Reroute", "Side", "dr_dpo_loss", "plackett_luce_loss",
           "preference_loss"]
