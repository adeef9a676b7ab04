"""reprkit: capture, edit and train the residual stream of HuggingFace causal LMs.

The names below are imported on first use (``import reprkit`` itself loads neither torch nor
transformers), so ``reprkit --help`` and a notebook's first import stay fast.

>>> import reprkit
>>> model, tok = reprkit.load_model()                          # SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised)
>>> with reprkit.capture(model, [3, 10]) as cap: ...           # residual streams per layer
>>> d = reprkit.from_pairs(model, tok, items, "range(.2,.9)")  # a direction from contrast pairs
>>> with reprkit.steered(model, d, 4.0): ...                   # steering at a chosen strength
>>> res = reprkit.patch(model, tok, clean, corrupt, answers=(" Paris", " Rome"))   # activation patching
>>> reprkit.train(reprkit.TrainConfig(loss="reprpo", steps=40)) # a LoRA adapter with a hidden-state loss
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "compare": ("Grid",),
    "config": ("TrainConfig",),
    "directions": ("Direction", "from_pairs", "from_prompts"),
    "evaluate": ("item_accuracy",),
    "lens": ("logit_lens",),
    "patching": ("Patching", "attribute", "patch"),
    "points": ("block_layout", "head_outputs"),
    "stats": ("paired_difference", "seed_t_difference"),
    "steering": ("calibrate_strength", "steered"),
    "training.loop": ("train",),
    "geometry": ("angle", "compose", "cosine", "decompose", "magnitude", "masked_mean", "norm_ratio", "project",
                 "reject", "similarity"),
    "hooks": ("Capture", "Trace", "TraceDict", "capture", "forward_hidden_states"),
    "layers": ("LayerSelection", "find_blocks", "select_layers"),
    "models": ("load_model",),
    "packaged": ("DEFAULT_MODEL",),
    "frozen": ("adapter_disabled", "cosine_to_frozen", "frozen_hidden_states"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


_RENAMED = {"reference_hidden_states": "frozen_hidden_states", "cosine_to_reference": "cosine_to_frozen"}
"""old name -> new name: the old ones work, with a DeprecationWarning, until the next release"""


def __getattr__(name: str):
    if name in _RENAMED:
        import warnings

        warnings.warn(f"reprkit.{name} is now reprkit.{_RENAMED[name]}", DeprecationWarning, stacklevel=2)
        return __getattr__(_RENAMED[name])
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'reprkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
