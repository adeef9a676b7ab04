"""Integration tests on the real default model, SmolLM2-135M-Instruct."""

import pytest
import torch

from reprkit.hooks import capture, forward_hidden_states

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def batch(smollm):
    _, tok = smollm
    texts = ["The capital of France is", "Write a haiku about the sea, please."]
    return dict(tok(texts, return_tensors="pt", padding=True))


def test_capture_matches_hidden_states_on_smollm(smollm, batch):
    model, _ = smollm
    with torch.no_grad(), capture(model, [0, 10, 20, 28, 29]) as cap:
        out = model(**batch, output_hidden_states=True)
    for i in (0, 10, 20, 28):
        torch.testing.assert_close(cap[i], out.hidden_states[i + 1], rtol=0, atol=0)
    assert not torch.allclose(cap[29], out.hidden_states[30])
    torch.testing.assert_close(model.model.norm(cap[29]), out.hidden_states[30], rtol=0, atol=0)


def test_stopped_forward_gives_the_same_states(smollm, batch):
    model, _ = smollm
    with torch.no_grad():
        full = model(**batch, output_hidden_states=True).hidden_states
        early = forward_hidden_states(model, batch, "range(.3,-2)")
    assert sorted(early) == list(range(9, 28))
    for i, h in early.items():
        torch.testing.assert_close(h, full[i + 1], rtol=0, atol=0)
