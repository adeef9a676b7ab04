"""Inputs that cannot be right, given to the Python API and the commands that load models: one
error naming both sides of a mismatch or the bad value, never a raw broadcast, reshape or
``size mismatch`` dump, and never NaN generations."""

import json
import shutil

import pytest
import torch

from reprkit.cli import main
from reprkit.directions import Direction
from reprkit.steering import calibrate_strength, steered

from .conftest import tiny_llama


@pytest.fixture
def tiny_and_tokenizer(tiny_folder):
    from transformers import AutoTokenizer

    return tiny_llama(vocab_size=49152, hidden_size=64, num_attention_heads=4, intermediate_size=128), \
        AutoTokenizer.from_pretrained(tiny_folder)


def test_a_direction_of_another_hidden_size_names_both_sizes_and_its_model(tiny_and_tokenizer):
    model, tok = tiny_and_tokenizer
    other = Direction({1: torch.randn(32)}, {"model": "some/other-model", "hidden_size": 32})
    with pytest.raises(ValueError, match=r"layer 1 has 32 dimensions and the model .*hidden size 64 "
                                         r"\(it was read on some/other-model\)"):
        with steered(model, other, 2.0):
            pass
    with pytest.raises(ValueError, match="32 dimensions .* hidden size 64"):
        calibrate_strength(model, tok, other, ["a prompt"], layer=1)


@pytest.mark.parametrize("vector,strength,expect", [
    (torch.full((64,), float("nan")), 1.0, "holds NaN or inf"),
    (torch.randn(64), float("nan"), "strength must be a finite number, not nan"),
    (torch.randn(64), float("inf"), "strength must be a finite number, not inf"),
])
def test_a_nan_vector_or_strength_is_refused_before_it_reaches_the_logits(tiny_and_tokenizer, vector, strength, expect):
    model, _ = tiny_and_tokenizer
    with pytest.raises(ValueError, match=expect):
        with steered(model, Direction({1: vector}), strength):
            pass


def test_calibrating_on_empty_prompts_says_so(tiny_and_tokenizer):
    model, tok = tiny_and_tokenizer
    with pytest.raises(ValueError, match="at least one non-empty prompt"):
        calibrate_strength(model, tok, Direction({1: torch.randn(64)}), [""], layer=1)


def test_a_direction_records_the_model_it_was_read_on(tiny_folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reprkit.directions import from_prompts

    model, tok = AutoModelForCausalLM.from_pretrained(tiny_folder), AutoTokenizer.from_pretrained(tiny_folder)
    d = from_prompts(model, tok, ["yes please", "sure"], ["no thanks", "never"], "1")
    assert d.info["model"] == str(tiny_folder) and d.info["hidden_size"] == 64


def test_lora_rank_above_a_layers_side_is_refused_in_one_line(tiny_folder, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--model", str(tiny_folder), "--lora.r", "100", "--run-dir", str(tmp_path / "r"),
              "--steps", "1", "--eval-data", "--no-progress"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and "Traceback" not in err
    assert "--lora.r 100 is above the smaller side of every layer it adapts (at most 64" in err
    assert "--lora.r 64 or less" in err
    assert not (tmp_path / "r").exists()


def test_damaged_model_weights_name_the_file(tiny_folder, tmp_path, capsys):
    broken = tmp_path / "model"
    shutil.copytree(tiny_folder, broken)
    weights = next(broken.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", str(broken), "--data", "embedded:arithmetic", "--limit", "2"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and f"{weights} cannot be read" in err and "incomplete or damaged" in err


def test_an_adapter_of_another_base_names_both(tiny_folder, tmp_path, capsys):
    from peft import LoraConfig, get_peft_model

    small = tiny_llama(vocab_size=49152, hidden_size=32, num_attention_heads=4, intermediate_size=64)
    adapter = tmp_path / "adapter"
    get_peft_model(small, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tiny_folder)  # as if moved onto another base
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", str(adapter), "--data", "embedded:arithmetic", "--limit", "2"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("reprkit: error:")]
    assert exit_info.value.code == 2 and len(errors) == 1 and "size mismatch" in errors[0]
    assert f"does not fit {tiny_folder}" in errors[0] and "Evaluate it on its own base model" in errors[0]
    assert len(err.splitlines()) < 6
