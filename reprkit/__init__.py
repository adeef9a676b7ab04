"""reprkit: capture, edit and train the residual stream of HuggingFace causal LMs."""

from .geometry import angle, compose, cosine, decompose, magnitude, masked_mean, norm_ratio, project, reject, similarity
from .hooks import Capture, Trace, TraceDict, capture, forward_hidden_states
from .layers import LayerSelection, find_blocks, select_layers
from .models import DEFAULT_MODEL, load_model
from .reference import adapter_disabled, cosine_to_reference, reference_hidden_states

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "Capture",
    "LayerSelection",
    "Trace",
    "TraceDict",
    "adapter_disabled",
    "angle",
    "capture",
    "compose",
    "cosine",
    "cosine_to_reference",
    "decompose",
    "find_blocks",
    "forward_hidden_states",
    "load_model",
    "magnitude",
    "masked_mean",
    "norm_ratio",
    "project",
    "reference_hidden_states",
    "reject",
    "select_layers",
    "similarity",
]
