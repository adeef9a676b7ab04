import pytest
import torch

from reprkit.evaluate import completion_logps, forward_logps, preference_accuracy
from reprkit.scoring import ranked_summary, wilson_ci95


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
    lo, hi = wilson_ci95(0.5, 100)
    assert 0.40 < lo < 0.41 and 0.59 < hi < 0.60
    # small n, p at or near an end: where Wilson and Wald part (Wald gives [0, 0] and [0.714, 1.086])
    lo, hi = wilson_ci95(0.0, 10)
    assert lo == pytest.approx(0.0, abs=1e-12) and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson_ci95(0.9, 10)
    assert lo == pytest.approx(0.5958, abs=1e-4) and hi == pytest.approx(0.9821, abs=1e-4)


def test_item_accuracy_on_genies_four_way(tokenizer, tiny_folder):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from reprkit import data as D
    from reprkit.evaluate import item_accuracy, ranked_logps

    model = AutoModelForCausalLM.from_pretrained(tiny_folder)
    items = D.load_items("genies:alpaca_easy", "test", limit=12)
    enc = D.encode_ranked(items, tokenizer, 128, 64)
    res = item_accuracy(model, enc, tokenizer.pad_token_id, batch_size=5)
    assert res["n"] == 12 and res["chance"] == pytest.approx(0.25)
    scores = ranked_logps(model, enc, tokenizer.pad_token_id, batch_size=5)["policy"]
    # scoring builds no autograd graph on either layout: its log-probs are values, not graph nodes
    assert not scores["logps"].requires_grad
    batched = ranked_logps(model, enc, tokenizer.pad_token_id, batch_size=5, shared_prompt=False)["policy"]
    assert not batched["logps"].requires_grad
    manual = (scores["logps"] / scores["n_tokens"]).argmax(-1).eq(0).float().mean().item()
    assert res["accuracy_mean"] == pytest.approx(manual)
    # K = 2 items give the same figure as the pair evaluation
    pairs_items = D.load_items("embedded:capitals", "test")
    two = item_accuracy(model, D.encode_ranked(pairs_items, tokenizer, 128, 64), tokenizer.pad_token_id)
    pairwise = preference_accuracy(model, D.encode_pairs(D.to_pairs(pairs_items), tokenizer, 128, 64), tokenizer.pad_token_id)
    assert two["accuracy_mean"] == pytest.approx(pairwise["accuracy_mean"])
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    with_base = item_accuracy(peft_model, enc, tokenizer.pad_token_id)
    assert with_base["base"]["accuracy_mean"] == with_base["accuracy_mean"] == res["accuracy_mean"]


def test_truthfulqa_definitions_on_known_scores(tokenizer, monkeypatch):
    import reprkit.evaluate as E

    rows = [{"question": "q1", "mc1_targets": {"t": 1, "f1": 0, "f2": 0}, "mc2_targets": {"t": 1, "t2": 1, "f": 0}},
            {"question": "q2", "mc1_targets": {"t": 1, "f1": 0}, "mc2_targets": {"t": 1, "f": 0}}]
    fake = {  # summed log-probs per answer, in file order
        "mc1": torch.tensor([[-1.0, -2.0, -3.0], [-5.0, -1.0, float("-inf")]]),
        "mc2": torch.tensor([[-1.0, -1.0, -1.0], [0.0, 0.0, float("-inf")]]),
    }
    calls = iter(["mc1", "mc2"])

    def fake_ranked(model, encoded, pad, batch_size, base):
        lp = fake[next(calls)]
        valid = torch.isfinite(lp)
        return {"policy": {"logps": lp, "n_tokens": torch.ones_like(lp), "valid": valid}}

    monkeypatch.setattr(E, "ranked_logps", fake_ranked)
    res = E.truthfulqa_mc(None, tokenizer, rows=rows)
    assert res["mc1"]["accuracy"] == 0.5 and res["mc1"]["chance"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert res["mc2"]["score"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert res["mc2"]["chance"] == pytest.approx((2 / 3 + 1 / 2) / 2)  # uniform here: exactly chance


def test_eval_table_puts_every_number_under_its_own_header():
    """Each printed number ends where its column's header ends, in the preference table and in the
    table of other measures (TruthfulQA, behaviour rates), so no number reads as another's."""
    from reprkit.evalrun import format_results

    row = {"n": 20, "chance": 0.25, "accuracy_mean": 0.5, "accuracy_mean_ci95": [0.3, 0.7], "accuracy_sum": 0.45,
           "length_baseline": {"accuracy_shortest": 0.4, "accuracy_longest": 0.35}}
    res = {"datasets": {"genies:x": row, "/a/long/path/to/my/own/preference_data_file.jsonl": row},
           "truthfulqa": {"mc1": {"n": 20, "accuracy": 0.1, "chance": 0.173, "ci95": [0.028, 0.301]},
                          "mc2": {"n": 20, "score": 0.317, "chance": 0.4, "ci95": [0.151, 0.483]},
                          "base": {"mc1": {"accuracy": 0.15}, "mc2": {"score": 0.33}}},
           "behaviour": {"evals/syc.jsonl": {"n": 200, "rate": 0.615, "chance": 0.5, "ci95": [0.546, 0.68],
                                             "base": {"rate": 0.5}}}}
    lines = format_results(res).splitlines()

    def under(header_line: str, row: str, column: str) -> str:
        end = header_line.index(column) + len(column)
        return row[:end].split()[-1]

    head = lines[0]
    for name in res["datasets"]:
        row = next(x for x in lines if x.startswith(name))
        assert [under(head, row, c) for c in ("n", "chance", "mean", "sum", "shortest", "longest")] == \
            ["20", "0.250", "0.500", "0.450", "0.400", "0.350"]
    other = next(x for x in lines if x.startswith("other measures "))
    mc1 = next(x for x in lines if x.startswith("truthfulqa mc1"))
    mc2 = next(x for x in lines if x.startswith("truthfulqa mc2"))
    syc = next(x for x in lines if x.startswith("behaviour syc"))
    cols = ("n", "chance", "value", "frozen")
    assert [under(other, mc1, c) for c in cols] == ["20", "0.173", "0.100", "0.150"]
    assert [under(other, mc2, c) for c in cols] == ["20", "0.400", "0.317", "0.330"]
    assert [under(other, syc, c) for c in cols] == ["200", "0.500", "0.615", "0.500"]


def test_truthfulqa_real_file_loads(shared_data):
    from reprkit.evaluate import load_truthfulqa

    rows = load_truthfulqa()
    assert len(rows) == 790 and all(sum(r["mc1_targets"].values()) == 1 for r in rows)


def test_perplexity_ratio_is_one_for_an_untrained_adapter(tokenizer, tiny_folder):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from reprkit import data as D
    from reprkit.evaluate import perplexity_ratio

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_folder), LoraConfig(r=2, target_modules=["q_proj"]))
    enc = D.encode_pairs(D.to_pairs(D.load_items("embedded:capitals", "test")), tokenizer, 128, 64)
    res = perplexity_ratio(model, enc, tokenizer.pad_token_id)
    assert res["ratio"] == pytest.approx(1.0) and res["perplexity"] > 1
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.5)
    trained = perplexity_ratio(model, enc, tokenizer.pad_token_id)
    assert trained["ratio"] != pytest.approx(1.0)
    # the frozen model's per-sequence NLL, computed once, gives the same result without the frozen pass
    from reprkit.evaluate import sequence_nll
    from reprkit.frozen import adapter_disabled

    with adapter_disabled(model):
        frozen, tokens = sequence_nll(model, enc, tokenizer.pad_token_id)
    assert len(frozen) == len(enc) and (tokens >= 1).all()
    again = perplexity_ratio(model, enc, tokenizer.pad_token_id, frozen_nll=frozen.tolist())
    assert again.pop("ratio_ci95") == pytest.approx(trained.pop("ratio_ci95"), rel=1e-6)
    assert again == pytest.approx(trained, rel=1e-6)
    with pytest.raises(ValueError, match="sequence_nll on the same encoded items"):
        perplexity_ratio(model, enc, tokenizer.pad_token_id, frozen_nll=frozen[:-1])


def test_eval_cli_on_a_run_directory_merges_eval_json(tiny_folder, tmp_path, capsys):
    import json

    from reprkit.cli import main
    from reprkit.config import TrainConfig
    from reprkit.train import train

    run = train(TrainConfig(model=str(tiny_folder), run_dir=str(tmp_path / "run"), steps=2, batch_size=4,
                            warmup_steps=0, eval_data=("embedded:capitals",), eval_limit=6, n_samples=1, progress=False))
    trained = json.loads((run / "eval.json").read_text())["datasets"]["embedded:capitals"]
    main(["eval", str(run), "--data", "embedded:capitals", "embedded:comparisons", "--limit", "6"])
    out = capsys.readouterr().out
    assert "embedded:comparisons" in out and "written to" in out
    merged = json.loads((run / "eval.json").read_text())
    assert set(merged["datasets"]) == {"embedded:capitals", "embedded:comparisons"}
    # evaluating later reproduces the trainer's own figure on the same items
    assert merged["datasets"]["embedded:capitals"]["accuracy_mean"] == trained["accuracy_mean"]
    assert merged["datasets"]["embedded:capitals"]["base"]["accuracy_mean"] == trained["base"]["accuracy_mean"]


def test_genies_shift_sources():
    from reprkit.data import shift_sources

    assert shift_sources("alpaca_easy") == ["genies:alpaca_easy", "genies:alpaca_hard"]
    assert shift_sources("alpaca_short") == ["genies:alpaca_short", "genies:alpaca_long", "genies:alpaca_mmlu"]
    assert shift_sources("alpaca_mmlu")[1:] == ["genies:spanish_output", "genies:raven_matrices", "genies:ranking_logic"]


def test_mc1_counts_a_tie_as_wrong_like_the_k_way_accuracy(tokenizer, monkeypatch):
    """Defect: MC1 (argmax) counted a tie at the top as right, K-way accuracy as wrong."""
    import reprkit.evaluate as E

    rows = [{"question": "q", "mc1_targets": {"t": 1, "f": 0}, "mc2_targets": {"t": 1, "f": 0}}]
    tie = torch.tensor([[-1.0, -1.0]])

    def fake_ranked(model, encoded, pad, batch_size, base):
        return {"policy": {"logps": tie, "n_tokens": torch.ones_like(tie), "valid": torch.ones_like(tie, dtype=torch.bool)}}

    monkeypatch.setattr(E, "ranked_logps", fake_ranked)
    assert E.truthfulqa_mc(None, tokenizer, rows=rows)["mc1"]["accuracy"] == 0.0
    k_way = ranked_summary(tie, torch.ones_like(tie), torch.ones_like(tie, dtype=torch.bool))
    assert k_way["accuracy_sum"] == 0.0


def test_perplexity_interval_is_of_the_token_weighted_ratio():
    """Defect: the interval came from per-sequence means while the estimate is token-weighted, so it
    could exclude the estimate. One long sequence with a large difference, many short ones with none."""
    import math

    from reprkit.evaluate import token_weighted_interval

    n_tok = torch.tensor([400.0] + [4.0] * 30)
    diff = torch.tensor([400.0 * 0.5] + [0.0] * 30)  # summed NLL differences per sequence
    r = (diff.sum() / n_tok.sum()).item()
    lo, hi = token_weighted_interval(diff, n_tok)
    assert lo <= r <= hi
    per_seq = diff / n_tok  # the old interval, from per-sequence means: it misses the estimate here
    m, se = per_seq.mean().item(), per_seq.std().item() / math.sqrt(len(per_seq))
    assert not (m - 1.96 * se <= r <= m + 1.96 * se)
    # constant per-token difference: a zero-width interval at it
    lo, hi = token_weighted_interval(torch.tensor([2.0, 4.0, 6.0]), torch.tensor([1.0, 2.0, 3.0]))
    assert lo == pytest.approx(2.0) and hi == pytest.approx(2.0)


def test_eval_dtype_bfloat16_scores_under_autocast(tiny_folder, tmp_path):
    import json

    from reprkit.cli import main

    for dtype in ("float32", "bfloat16"):
        main(["eval", str(tiny_folder), "--data", "embedded:capitals", "--limit", "8", "--eval-dtype", dtype,
              "--out", str(tmp_path / f"{dtype}.json")])
    fp32, bf16 = (json.loads((tmp_path / f"{d}.json").read_text()) for d in ("float32", "bfloat16"))
    assert fp32["eval_dtype"] == "float32" and bf16["eval_dtype"] == "bfloat16"
    a = fp32["datasets"]["embedded:capitals"]["items"]["margin"]
    b = bf16["datasets"]["embedded:capitals"]["items"]["margin"]
    assert a != b  # autocast took effect: bf16 matmuls round differently
    assert max(abs(x - y) for x, y in zip(a, b)) < 0.05  # and only by rounding
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        from reprkit.evalrun import evaluate_target

        evaluate_target(str(tiny_folder), ["embedded:capitals"], eval_dtype="fp16")


def test_response_logps_in_chunks_equal_one_pass_and_bound_the_logits(model, monkeypatch):
    """head_token_logps in chunks of 3 positions equals the whole tensor at once, with and without
    gradients, and never builds logits for more than a chunk of positions."""
    from reprkit import logits as L

    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(10, model.config.hidden_size, generator=g, requires_grad=True)
    targets = torch.randint(0, model.config.vocab_size, (10,), generator=g)
    whole = L.head_token_logps(model, hidden, targets, chunk=1000)
    grad_whole, = torch.autograd.grad(whole.sum(), hidden)
    sizes = []
    real = L.head_logits
    monkeypatch.setattr(L, "head_logits", lambda m, h: sizes.append(h.shape[0]) or real(m, h))
    parts = L.head_token_logps(model, hidden, targets, chunk=3)
    grad_parts, = torch.autograd.grad(parts.sum(), hidden)
    torch.testing.assert_close(parts, whole)
    torch.testing.assert_close(grad_parts, grad_whole)
    assert max(sizes) == 3  # forward and the backward's recomputation: one chunk at a time
    assert L.chunk_positions(262144) == 256 and L.chunk_positions(49152) == 1365


def test_scoring_with_progress_gives_the_same_numbers_in_chunks(tiny_folder, capsys):
    """With a progress label the items are scored in chunks (a bar, or one line per set): every
    item's numbers are those of one call over the whole set."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reprkit import data as D
    from reprkit.evaluate import item_accuracy

    model, tok = AutoModelForCausalLM.from_pretrained(tiny_folder), AutoTokenizer.from_pretrained(tiny_folder)
    encoded = D.encode_ranked(D.load_items("genies:alpaca_easy", "test")[:40], tok, 128, 64)
    whole = item_accuracy(model, encoded, tok.pad_token_id, batch_size=2)
    chunked = item_accuracy(model, encoded, tok.pad_token_id, batch_size=2, progress="alpaca_easy", progress_bar=False)
    assert "scored alpaca_easy: 40 items in" in capsys.readouterr().err
    assert chunked["items"]["correct"] == whole["items"]["correct"] and chunked["accuracy_mean"] == whole["accuracy_mean"]
    for a, b in zip(chunked["items"]["logps"], whole["items"]["logps"]):
        assert a == pytest.approx(b, abs=1e-4)
