"""A few optimiser steps on the real default model reduce each loss (same batch, so the change is the model's)."""

import pytest
import torch

from reprkit import data as D
from reprkit.config import TrainConfig
from reprkit.train import add_lora, forward_pair_batch, plan_layers

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("loss_name", ["reprpo", "dpo", "reroute"])
def test_steps_on_smollm_reduce_the_loss(loss_name):
    from reprkit.models import load_model

    model, tok = load_model()  # a fresh copy: the adapter must not leak into other tests
    cfg = TrainConfig(loss=loss_name)
    loss = cfg.loss_fn()
    _, layers, lora_last = plan_layers(model, loss)
    peft_model = add_lora(model, cfg, lora_last)
    peft_model.train()
    pairs = D.to_pairs(D.load_items("genies:alpaca_easy", "train", limit=2))
    batch = D.collate(D.encode_pairs(pairs, tok, max_length=96, max_prompt_length=64), tok.pad_token_id)
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-3)
    values = []
    for _ in range(4):
        inputs = forward_pair_batch(peft_model, batch, layers, loss, progress=0.0)
        value, _ = loss(inputs)
        values.append(value.item())
        value.backward()
        opt.step()
        opt.zero_grad()
    assert values[-1] < values[0], values
