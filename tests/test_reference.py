import torch
from peft import LoraConfig, get_peft_model

from reprkit.hooks import forward_hidden_states
from reprkit.reference import cosine_to_reference, reference_hidden_states


def _peft(model, init_b: float = 0.0):
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"]))
    if init_b:
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=init_b)
    return peft_model


def test_unadapted_model_is_exactly_its_reference(model, inputs):
    sim = cosine_to_reference(_peft(model), inputs, [0, 2, 3])
    assert set(sim) == {0, 2, 3}
    for layer in sim.values():
        assert layer == {"cosine": 1.0, "norm_ratio": 1.0}


def test_perturbed_lora_moves_hidden_states(model, inputs):
    sim = cosine_to_reference(_peft(model, init_b=0.2), inputs, [0, 3])
    assert all(s["cosine"] < 1.0 for s in sim.values())
    assert all(s["norm_ratio"] != 1.0 for s in sim.values())


def test_reference_disables_adapter_and_restores_training_mode(model, inputs):
    base = forward_hidden_states(model, inputs, [2])
    peft_model = _peft(model, init_b=0.2)
    peft_model.train()
    ref = reference_hidden_states(peft_model, inputs, [2])
    torch.testing.assert_close(ref[2], base[2], rtol=0, atol=0)
    assert not ref[2].requires_grad
    assert peft_model.training and all(m.training for m in peft_model.modules())
    adapted = forward_hidden_states(peft_model.eval(), inputs, [2])
    assert not torch.allclose(adapted[2], base[2])


def test_mask_restricts_the_comparison(model, inputs):
    peft_model = _peft(model, init_b=0.2)
    full = cosine_to_reference(peft_model, inputs, [1])
    last_only = torch.zeros_like(inputs["attention_mask"])
    last_only[:, -1] = 1
    part = cosine_to_reference(peft_model, inputs, [1], mask=last_only)
    assert full[1]["cosine"] != part[1]["cosine"]
