"""Models placed by accelerate's big-model loading (``device_map``), with blocks offloaded to disk:
capture, edits, stopping early and the logit lens give what the model in memory gives."""

import pytest
import torch

from reprkit import edits
from reprkit.hooks import capture
from reprkit.lens import lens_logits

from .conftest import tiny_llama


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("tiny-offload")
    model = tiny_llama()
    model.save_pretrained(folder)
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
                  "model.layers.1": "disk", "model.layers.2": "disk", "model.layers.3": "cpu", "model.norm": "cpu",
                  "lm_head": "cpu"}
    offloaded = AutoModelForCausalLM.from_pretrained(folder, device_map=device_map,
                                                     offload_folder=str(folder / "offload")).eval()
    assert getattr(offloaded, "hf_device_map", {}).get("model.layers.1") == "disk"
    return model, offloaded


def test_capture_edit_stop_and_lens_on_an_offloaded_model(pair, inputs):
    model, offloaded = pair
    v = torch.nn.functional.normalize(torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(0)), dim=0)
    results = []
    for m in (model, offloaded):
        with torch.no_grad():
            with capture(m, [0, 1, 2, 3]) as cap:
                logits = m(**inputs).logits
            with capture(m, 1, edit_output=edits.add_vector(v, 5.0)), capture(m, 2) as edited:
                m(**inputs)
            with capture(m, 2, stop=True) as stopped:
                m(**inputs)
            lens = lens_logits(m, cap[3])
        results.append((cap, logits, edited[2], stopped[2], lens))
    (cap_a, logits_a, edit_a, stop_a, lens_a), (cap_b, logits_b, edit_b, stop_b, lens_b) = results
    for k in range(4):
        torch.testing.assert_close(cap_b[k], cap_a[k])
    torch.testing.assert_close(logits_b, logits_a)
    torch.testing.assert_close(edit_b, edit_a)
    torch.testing.assert_close(stop_b, stop_a)
    torch.testing.assert_close(lens_b, logits_b, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(edit_a, cap_a[2])
    # after a stopped forward the offloaded model still runs whole and gives the same logits
    with torch.no_grad():
        torch.testing.assert_close(offloaded(**inputs).logits, logits_a)


def test_training_through_offloaded_weights_is_refused_with_the_fix(tmp_path):
    """LoRA cannot train through weights accelerate keeps on disk (the backward pass finds them on the
    meta device: "expected device meta but got cpu"); the trainer's adapter check says so first."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from reprkit.training.adapter import check_adapter
    from reprkit.training.errors import TrainingError

    tiny_llama().save_pretrained(tmp_path / "m")
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
                  "model.layers.1": "disk", "model.layers.2": "cpu", "model.layers.3": "cpu", "model.norm": "cpu",
                  "lm_head": "cpu"}
    offloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m", device_map=device_map,
                                                     offload_folder=str(tmp_path / "offload"))
    peft_model = get_peft_model(offloaded, LoraConfig(r=4, target_modules="all-linear"))
    with pytest.raises(TrainingError, match="offloaded by accelerate.*model.layers.1.*FSDP2"):
        check_adapter(peft_model)
    in_memory = get_peft_model(AutoModelForCausalLM.from_pretrained(tmp_path / "m"), LoraConfig(r=4, target_modules="all-linear"))
    assert check_adapter(in_memory) == "default"
