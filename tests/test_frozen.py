import torch
from peft import LoraConfig, get_peft_model

from reprkit.frozen import cosine_to_frozen, frozen_hidden_states
from reprkit.hooks import forward_hidden_states


def _peft(model, init_b: float = 0.0):
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"]))
    if init_b:
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=init_b)
    return peft_model


def test_unadapted_model_is_exactly_its_reference(model, inputs):
    sim = cosine_to_frozen(_peft(model), inputs, [0, 2, 3])
    assert set(sim) == {0, 2, 3}
    for layer in sim.values():
        assert layer == {"cosine": 1.0, "norm_ratio": 1.0}


def test_perturbed_lora_moves_hidden_states(model, inputs):
    sim = cosine_to_frozen(_peft(model, init_b=0.2), inputs, [0, 3])
    assert all(s["cosine"] < 1.0 for s in sim.values())
    assert all(s["norm_ratio"] != 1.0 for s in sim.values())


def test_reference_disables_adapter_and_restores_training_mode(model, inputs):
    base = forward_hidden_states(model, inputs, [2])
    peft_model = _peft(model, init_b=0.2)
    peft_model.train()
    ref = frozen_hidden_states(peft_model, inputs, [2])
    torch.testing.assert_close(ref[2], base[2], rtol=0, atol=0)
    assert not ref[2].requires_grad
    assert peft_model.training and all(m.training for m in peft_model.modules())
    adapted = forward_hidden_states(peft_model.eval(), inputs, [2])
    assert not torch.allclose(adapted[2], base[2])


def test_mask_restricts_the_comparison(model, inputs):
    peft_model = _peft(model, init_b=0.2)
    full = cosine_to_frozen(peft_model, inputs, [1])
    last_only = torch.zeros_like(inputs["attention_mask"])
    last_only[:, -1] = 1
    part = cosine_to_frozen(peft_model, inputs, [1], mask=last_only)
    assert full[1]["cosine"] != part[1]["cosine"]


def test_the_frozen_models_old_names_work_and_warn():
    """`reprkit.reference`, `reprkit.refcache` and the two old function names (the docs used them)
    work for one release, each with a DeprecationWarning naming its new name."""
    import importlib
    import sys
    import warnings

    import reprkit
    from reprkit import frozen, frozen_cache

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for old in ("reprkit.reference", "reprkit.refcache"):
            sys.modules.pop(old, None)
            importlib.import_module(old)
        assert reprkit.cosine_to_reference is frozen.cosine_to_frozen
        assert reprkit.reference_hidden_states is frozen.frozen_hidden_states
    import reprkit.refcache as old_cache
    import reprkit.reference as old

    assert old.cosine_to_reference is frozen.cosine_to_frozen and old_cache.ReferenceCache is frozen_cache.ReferenceCache
    said = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
    assert any("reprkit.reference is now reprkit.frozen" in m for m in said)
    assert any("reprkit.refcache is now reprkit.frozen_cache" in m for m in said)
    assert any("reprkit.cosine_to_reference is now reprkit.cosine_to_frozen" in m for m in said)
