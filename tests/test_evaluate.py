import torch

from reprkit.evaluate import _ci95, completion_logps, forward_logps, preference_accuracy


def test_forward_logps_matches_full_logits(model, inputs):
    comp = torch.zeros_like(inputs["input_ids"])
    comp[:, 4:] = 1
    comp[1, 6] = 0
    full = completion_logps(model(**inputs).logits, inputs["input_ids"], comp)
    fast = forward_logps(model, inputs["input_ids"], inputs["attention_mask"], comp)
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-5)
    # by hand for one row
    logp = torch.log_softmax(model(**inputs).logits[0, 3:-1], -1)
    by_hand = logp.gather(-1, inputs["input_ids"][0, 4:, None]).sum()
    torch.testing.assert_close(fast[0], by_hand, rtol=1e-5, atol=1e-5)


def test_forward_logps_gradients_match(model, inputs):
    comp = torch.zeros_like(inputs["input_ids"])
    comp[:, 3:] = 1
    forward_logps(model, inputs["input_ids"], inputs["attention_mask"], comp).sum().backward()
    fast = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    completion_logps(model(**inputs).logits, inputs["input_ids"], comp).sum().backward()
    for n, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(fast[n], p.grad, rtol=1e-4, atol=1e-6)


def test_preference_accuracy_counts_and_base(tokenizer, tiny_folder):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from reprkit import data as D

    model = AutoModelForCausalLM.from_pretrained(tiny_folder)
    pairs = D.to_pairs(D.load_items("embedded:capitals", "test"))
    enc = D.encode_pairs(pairs, tokenizer, 128, 64)
    plain = preference_accuracy(model, enc, tokenizer.pad_token_id, batch_size=5)
    assert plain["n"] == len(enc) and "base" not in plain
    assert 0 <= plain["accuracy_mean"] <= 1 and plain["accuracy_mean_ci95"][0] <= plain["accuracy_mean"] <= plain["accuracy_mean_ci95"][1]
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    res = preference_accuracy(peft_model, enc, tokenizer.pad_token_id, batch_size=4)
    # a fresh adapter (B = 0) is the base model: both scores agree and equal the plain model's
    assert res["accuracy_mean"] == res["base"]["accuracy_mean"] == plain["accuracy_mean"]
    assert abs(res["margin_mean"] - plain["margin_mean"]) < 1e-5
    # swapping chosen and rejected mirrors the accuracy
    swapped = [{**e, "chosen_ids": e["rejected_ids"], "rejected_ids": e["chosen_ids"]} for e in enc]
    mirrored = preference_accuracy(model, swapped, tokenizer.pad_token_id)
    ties = sum(e["chosen_ids"] == e["rejected_ids"] for e in enc)
    assert abs(mirrored["accuracy_mean"] + plain["accuracy_mean"] - 1) <= ties / len(enc)


def test_wilson_interval():
    lo, hi = _ci95(0.5, 100)
    assert 0.40 < lo < 0.41 and 0.59 < hi < 0.60
