"""LoRA on 4-bit (nf4) and 8-bit bases: every loss trains end to end, the adapter-disabled reference
pass works, and LoRA gradients through the quantized layers equal those through their
dequantized float32 weights."""

import zlib

import pytest
import torch

from reprkit.config import TrainConfig
from reprkit.frozen import adapter_disabled
from reprkit.hooks import capture
from reprkit.models import load_model
from reprkit.runlog import read_jsonl
from reprkit.train import add_lora, train

from .test_train import tiny_config


@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
@pytest.mark.parametrize("loss", ["reprpo", "dpo", "reroute"])
def test_each_loss_trains_on_a_quantized_base(tiny_folder, tmp_path, loss, quantization):
    run = train(tiny_config(tiny_folder, tmp_path / "r", loss=loss, quantization=quantization, steps=3,
                            warmup_steps=0, eval_data=("embedded:arithmetic",), eval_limit=4))
    rows, _ = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3] and all(r["loss"] is not None for r in rows)
    # the reference pass (adapter disabled) matched the policy at step 1 and the adapter then moved it
    first, last = rows[0]["layers"], rows[-1]["layers"]
    assert all(v["cos_chosen"] == pytest.approx(1.0, abs=1e-5) for v in first.values())
    assert any(v["cos_rejected"] < 1 - 1e-6 for v in last.values())


def _dequantized_copy(quantized, tiny_folder):
    """A float32 model whose every quantized linear weight is the dequantized quantized weight."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as F
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(tiny_folder, dtype=torch.float32)
    modules = dict(plain.named_modules())
    n = 0
    for name, m in quantized.named_modules():
        if isinstance(m, bnb.nn.Linear4bit):
            w = F.dequantize_4bit(m.weight.data, m.weight.quant_state)
        elif isinstance(m, bnb.nn.Linear8bitLt):
            w = m.weight.CB.float() * m.weight.SCB.float().unsqueeze(1) / 127
        else:
            continue
        modules[name].weight.data.copy_(w.float())
        n += 1
    assert n > 0
    return plain


@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_lora_gradients_through_quantized_layers_are_right(tiny_folder, quantization):
    quantized, _ = load_model(str(tiny_folder), quantization=quantization)
    plain = _dequantized_copy(quantized, tiny_folder)
    cfg = TrainConfig()
    models = []
    for m in (quantized, plain):
        torch.manual_seed(0)
        peft = add_lora(m, cfg, None)
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.05, generator=torch.Generator().manual_seed(zlib.crc32(n.encode())))
        models.append(peft)
    ids = torch.randint(0, 1000, (2, 9), generator=torch.Generator().manual_seed(3))
    direction = torch.randn(64, generator=torch.Generator().manual_seed(4))
    grads, refs = [], []
    for peft in models:
        with adapter_disabled(peft), torch.no_grad(), capture(peft, [1, 3]) as cap:
            peft(input_ids=ids)
        refs.append(cap[3])
        with capture(peft, [1, 3], detach=False) as cap:
            peft(input_ids=ids)
        assert cap[3].dtype == torch.float32  # compute dtype float32: the hidden-state maths stays float32
        loss = (cap[1].float() @ direction).pow(2).mean() + (cap[3].float() - refs[-1].float()).pow(2).mean()
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in peft.named_parameters() if p.requires_grad})
    def rel(a, b):
        return ((a.float() - b.float()).norm() / b.float().norm()).item()

    # 4-bit: the weights are exactly the dequantized ones; 8-bit (LLM.int8) also quantizes the
    # activations in the forward, so it only approximates the float32 product
    tol = 1e-4 if quantization == "4bit" else 3e-2
    assert rel(refs[0], refs[1]) < tol
    assert grads[0].keys() == grads[1].keys() and grads[0]
    errors = {n: rel(grads[0][n], grads[1][n]) for n in grads[0]}
    worst = max(errors, key=errors.get)
    assert errors[worst] < tol, (worst, errors[worst])
