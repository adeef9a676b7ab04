"""Deprecated name of ``reprkit.frozen`` (the frozen model: one name, not three). It goes in the next
release; ``reference_hidden_states`` and ``cosine_to_reference`` are ``frozen_hidden_states`` and
``cosine_to_frozen``."""

import warnings

from .frozen import *  # noqa: F403
from .frozen import adapter_disabled, cosine_to_frozen, eval_mode, frozen_hidden_states  # noqa: F401

reference_hidden_states = frozen_hidden_states
cosine_to_reference = cosine_to_frozen

warnings.warn("reprkit.reference is now reprkit.frozen (reference_hidden_states -> frozen_hidden_states, "
              "cosine_to_reference -> cosine_to_frozen)", DeprecationWarning, stacklevel=2)
