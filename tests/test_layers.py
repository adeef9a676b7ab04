import pytest
from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM

from reprkit.layers import find_blocks, select_layers


def test_find_blocks_llama(model):
    names, blocks = find_blocks(model)
    assert names == [f"model.layers.{i}" for i in range(4)]
    assert all(type(b).__name__ == "LlamaDecoderLayer" for b in blocks)


def test_find_blocks_by_class_name(model):
    names, _ = find_blocks(model, block_name="LlamaDecoderLayer")
    assert names == [f"model.layers.{i}" for i in range(4)]
    with pytest.raises(ValueError, match="no module of class 'Nope'"):
        find_blocks(model, block_name="Nope")


def test_find_blocks_other_architectures():
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=16, n_head=2, vocab_size=50))
    assert find_blocks(gpt2)[0] == ["transformer.h.0", "transformer.h.1", "transformer.h.2"]
    neox = GPTNeoXForCausalLM(
        GPTNeoXConfig(num_hidden_layers=2, hidden_size=16, num_attention_heads=2, intermediate_size=32, vocab_size=50)
    )
    assert find_blocks(neox)[0] == ["gpt_neox.layers.0", "gpt_neox.layers.1"]


@pytest.mark.parametrize("arch", ["qwen2", "mistral", "gemma"])
def test_find_blocks_llama_family(arch):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(
        arch, vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8,
    )
    names, _ = find_blocks(AutoModelForCausalLM.from_config(cfg))
    assert names == ["model.layers.0", "model.layers.1", "model.layers.2"]


def test_find_blocks_through_peft(model):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    names, _ = find_blocks(peft_model)
    assert names[0] == "base_model.model.model.layers.0" and len(names) == 4
    assert select_layers(peft_model, -1).names == ("base_model.model.model.layers.3",)


@pytest.mark.parametrize(
    "spec, expected",
    [
        (0, [0]),
        (-1, [3]),
        (0.5, [2]),
        ("0.5", [2]),
        ("range(.25,-1)", [1, 2]),
        ("range(0,4,2)", [0, 2]),
        ("range(2)", [0, 1]),
        (slice(1, None), [1, 2, 3]),
        ("1:3", [1, 2]),
        ("3,0,-1", [0, 3]),
        ([3, 1, 1, "model.layers.0"], [0, 1, 3]),
        ("model.layers.2", [2]),
    ],
)
def test_specs(model, spec, expected):
    sel = select_layers(model, spec)
    assert list(sel.indices) == expected
    assert list(sel.names) == [f"model.layers.{i}" for i in expected]
    assert sel.num_layers == 4


def test_submodule_names_keep_their_block(model):
    sel = select_layers(model, ["model.layers.2.mlp", 1, "model.embed_tokens"])
    assert sel.names == ("model.embed_tokens", "model.layers.1", "model.layers.2.mlp")
    assert sel.block_of == (None, 1, 2)
    assert sel.indices == (1,) and sel.last == 2


@pytest.mark.parametrize(
    "spec, match",
    [
        (4, "out of range"),
        (-5, "out of range"),
        (1.5, r"must lie in \[-1, 1\]"),
        ("range(3,1)", "selects no layers"),
        ("range(1,2,0.5)", "bad range spec"),
        ("model.layers.9", "neither a layer number"),
        ("banana", "neither a layer number"),
        ([], "selects no layers"),
        (True, "bool"),
        ({"a": 1}, "not supported"),
    ],
)
def test_bad_specs_name_the_valid_range(model, spec, match):
    with pytest.raises(ValueError, match=match) as err:
        select_layers(model, spec)
    assert "valid layers are 0..3" in str(err.value)
    assert "model.layers.0" in str(err.value)


def test_unknown_architecture_asks_for_block_name():
    import torch

    with pytest.raises(ValueError, match="block_name="):
        find_blocks(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_all_is_every_block_and_a_range_end_is_exclusive(model):
    from reprkit.layers import select_layers

    n = len(select_layers(model, ":").indices)
    assert list(select_layers(model, "all").indices) == list(select_layers(model, ":").indices) == list(range(n))
    assert n - 1 not in select_layers(model, "range(0,1.0,3)").indices or (n - 1) % 3 == 0
    assert select_layers(model, f"range(0,{n})").indices[-1] == n - 1
