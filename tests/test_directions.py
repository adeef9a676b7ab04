import pytest
import torch

from reprkit.directions import Direction, direction_from_states


def _planted(n=200, h=32, seed=0, scale=0.6):
    g = torch.Generator().manual_seed(seed)
    true = torch.randn(h, generator=g)
    true /= true.norm()
    base = torch.randn(n, h, generator=g) * 3  # shared content of a pair, large
    noise = lambda: torch.randn(n, h, generator=g) * 0.1  # noqa: E731
    coef = scale + 2 * torch.rand(n, 1, generator=g)  # varied strength, so the differences have a main axis
    chosen = base + coef / 2 * true + noise()
    rejected = base - coef / 2 * true + noise()
    return chosen, rejected, true


@pytest.mark.parametrize("method", ["mean_diff", "pca", "probe"])
def test_each_method_recovers_a_planted_direction(method):
    chosen, rejected, true = _planted()
    v = direction_from_states(chosen, rejected, method)
    assert torch.nn.functional.cosine_similarity(v, true, dim=0) > 0.99
    assert ((chosen - rejected) @ v > 0).float().mean() > 0.95  # chosen projects higher: the probe separates
    # swapping the sides flips the sign
    assert torch.nn.functional.cosine_similarity(direction_from_states(rejected, chosen, method), true, dim=0) < -0.99


def test_unknown_method_names_the_choices():
    with pytest.raises(ValueError, match="mean_diff"):
        direction_from_states(torch.zeros(3, 4), torch.zeros(3, 4), "lda")


def test_save_and_load_round_trip(tmp_path):
    d = Direction({3: torch.tensor([0.6, 0.8]), 5: torch.tensor([1.0, 0.0])}, {"method": "mean_diff", "n": 7})
    d.save(tmp_path / "d")
    back = Direction.load(tmp_path / "d")
    assert set(back.vectors) == {3, 5} and torch.equal(back.vectors[3], d.vectors[3])
    assert back.info == d.info
    assert back.project(torch.tensor([[3.0, 4.0]]), 3).item() == pytest.approx(5.0)


def test_score_ranks_responses_by_projection(tiny_folder, tokenizer):
    from transformers import AutoModelForCausalLM

    from reprkit import data as D
    from reprkit.directions import from_pairs

    model = AutoModelForCausalLM.from_pretrained(tiny_folder)
    items = D.load_items("embedded:arithmetic", "train", limit=24)
    d = from_pairs(model, tokenizer, items, layers=[0, 1], max_length=96)
    assert set(d.vectors) == {0, 1} and d.info["n"] == 24
    # on the very items it was read from, a mean-difference direction orders most pairs
    res = d.score(model, tokenizer, items, layer=1, max_length=96)
    assert res["n"] == 24 and len(res["items"]["correct"]) == 24
    assert res["accuracy_mean"] == pytest.approx(d.info["stats"]["1"]["pair_accuracy"])
    layer, per_layer = d.best_layer(model, tokenizer, items, max_length=96)
    assert layer in (0, 1) and set(per_layer) == {0, 1}


def test_direction_and_steer_commands(tiny_folder, tmp_path, capsys):
    from reprkit.cli import main
    from reprkit.steering import read_gguf

    out = tmp_path / "dir"
    main(["direction", "--model", str(tiny_folder), "--data", "embedded:arithmetic", "--layers", "1,2", "--out", str(out),
          "--limit", "16", "--max-length", "96", "--gguf", str(tmp_path / "v.gguf")])
    printed = capsys.readouterr().out
    assert "<- best" in printed and "separation" in printed
    d = Direction.load(out)
    assert d.info["best_layer"] in (1, 2) and set(d.info["heldout"]) == {"1", "2"}
    assert set(read_gguf(tmp_path / "v.gguf")) == {1, 2}
    main(["eval", str(out), "--data", "embedded:arithmetic", "--limit", "8"])  # a direction scores like an adapter
    printed = capsys.readouterr().out
    assert "embedded:arithmetic" in printed and "n" in printed
    main(["steer", "--direction", str(out), "--model", str(tiny_folder), "--max-new-tokens", "3", "--kl", "0.002",
          "--prompt", "Hi"])
    printed = capsys.readouterr().out
    assert "[unsteered]" in printed and printed.count("'Hi' ->") == 3 and "gives KL" in printed


def test_from_prompts_reads_the_last_prompt_token_of_two_paired_sets(tiny_folder, tokenizer):
    from transformers import AutoModelForCausalLM

    from reprkit.directions import from_prompts, prompt_states

    model = AutoModelForCausalLM.from_pretrained(tiny_folder)
    pos = ["Act happy. Tell me about your day", "Act happy. Hi"]
    neg = ["Act sad. Tell me about your day", "Act sad. Hi there, how was the weekend?"]
    # padded batch = each prompt alone, at its own last token (hidden_states[k + 1] is block k's output)
    batched = prompt_states(model, tokenizer, pos + neg, layers=[1], token="last")[1]
    for i, p in enumerate(pos + neg):
        with torch.no_grad():
            alone = model(**tokenizer(p, return_tensors="pt"), output_hidden_states=True).hidden_states[2][0, -1]
        torch.testing.assert_close(batched[i], alone, rtol=1e-4, atol=1e-5)
    d = from_prompts(model, tokenizer, pos, neg, layers=[1])
    expected = (batched[:2] - batched[2:]).mean(0)
    torch.testing.assert_close(d.vectors[1], expected / expected.norm(), rtol=1e-4, atol=1e-5)
    assert d.info["contrast"] == "prompts" and d.info["n"] == 2 and d.info["stats"]["1"]["pair_accuracy"] == 1.0
    mean = prompt_states(model, tokenizer, pos[:1], layers=[1], token="mean", chat=True)[1]
    assert mean.shape == (1, model.config.hidden_size)
    with pytest.raises(ValueError, match="paired"):
        from_prompts(model, tokenizer, pos, neg[:1], layers=[1])


def test_last_token_reads_the_answer_not_the_chat_templates_end(tiny_folder, tokenizer):
    """With a chat template the completion ends '<|im_end|>' '\\n': "last" must read the answer's own
    last token, "last_completion" the template's; they differ, and "last" equals a state read by hand
    at the answer token."""
    import torch
    from transformers import AutoModelForCausalLM

    from reprkit import data as D
    from reprkit.directions import completion_states
    from reprkit.hooks import capture

    model, tok = AutoModelForCausalLM.from_pretrained(tiny_folder), tokenizer
    items = [{"prompt": [{"role": "user", "content": "Pick one"}], "responses": [" (A)", " (B)"], "scores": [1.0, 0.0]}]
    enc = D.encode_ranked(items, tok, 64, 32)
    suffix = enc[0]["suffix_lens"][0]
    assert suffix >= 1, "the chat template adds end tokens after the answer"
    last, _ = completion_states(model, enc, tok.pad_token_id, [1], token="last")
    tail, _ = completion_states(model, enc, tok.pad_token_id, [1], token="last_completion")
    assert not torch.allclose(last[1], tail[1])
    ids = torch.tensor([enc[0]["prompt_ids"] + enc[0]["responses_ids"][0]])
    with torch.no_grad(), capture(model, [1], stop=True) as cap:
        model(input_ids=ids)
    answer_pos = ids.shape[1] - suffix - 1
    torch.testing.assert_close(last[1][0, 0], cap[1][0, answer_pos].float())


@pytest.mark.parametrize("items, message", [
    ([], "no items given"),
    ([{"prompt": "Is it?", "responses": ["yes"], "scores": [1.0]}], "at least two"),
    ([{"prompt": "Is it?", "chosen": "yes", "rejected": "no"}], "at least 2 pairs"),
    ([{"prompt": "Is it?", "chosen": "yes", "rejected": "yes"}, {"prompt": "Or?", "chosen": "no", "rejected": "no"}],
     "identical"),
])
def test_bad_pairs_get_one_line_that_names_the_fix(tiny_folder, tokenizer, items, message):
    from transformers import AutoModelForCausalLM

    from reprkit.directions import from_pairs

    model = AutoModelForCausalLM.from_pretrained(tiny_folder)
    with pytest.raises(ValueError, match=message):
        from_pairs(model, tokenizer, items, layers=[1], max_length=64)


def test_responses_cut_to_their_shared_start_name_max_length(tiny_folder, tokenizer):
    """Different responses cut to the tokens they share read identical states: the error says to
    raise max_length, not only that the pairs do not contrast."""
    from transformers import AutoModelForCausalLM

    from reprkit.directions import from_pairs

    model = AutoModelForCausalLM.from_pretrained(tiny_folder)
    pairs = [{"prompt": "Is it?", "chosen": "The answer is yes", "rejected": "The answer is no"},
             {"prompt": "Or?", "chosen": "The answer is no", "rejected": "The answer is yes"}]
    with pytest.raises(ValueError, match="raise max_length: 2 of 2 pairs had responses cut at max_length 2"):
        from_pairs(model, tokenizer, pairs, layers=[1], max_length=2)
    assert from_pairs(model, tokenizer, pairs, layers=[1], max_length=64).vectors[1].norm() > 0


def test_pairs_in_the_formats_reprkit_accepts_elsewhere(tiny_folder, tokenizer):
    """{prompt, chosen, rejected} with a string prompt reads like the same item in reprkit's shape."""
    from transformers import AutoModelForCausalLM

    from reprkit.directions import from_pairs

    model = AutoModelForCausalLM.from_pretrained(tiny_folder)
    pairs = [{"prompt": f"Is {k} even?", "chosen": "yes" if k % 2 == 0 else "no", "rejected": "no" if k % 2 == 0 else "yes"}
             for k in range(4)]
    items = [{"prompt": [{"role": "user", "content": p["prompt"]}], "responses": [p["chosen"], p["rejected"]],
              "scores": [1.0, 0.0]} for p in pairs]
    a = from_pairs(model, tokenizer, pairs, layers=[1], max_length=64)
    b = from_pairs(model, tokenizer, items, layers=[1], max_length=64)
    torch.testing.assert_close(a.vectors[1], b.vectors[1])


def test_from_prompts_refuses_a_string(tiny_folder, tokenizer):
    from transformers import AutoModelForCausalLM

    from reprkit.directions import from_prompts

    model = AutoModelForCausalLM.from_pretrained(tiny_folder)
    with pytest.raises(ValueError, match="list of prompt strings"):
        from_prompts(model, tokenizer, "Act happy", "Act sad", layers=[1])


def test_direction_from_a_local_file_is_scored_on_rows_it_was_not_read_from(tiny_folder, tmp_path, capsys):
    """A local file has no separate test split: load_items(file, 'test') returns the training rows.
    The held-out score must be on other rows, and the output must say which."""
    import json

    from reprkit.cli import main

    rows = [{"prompt": f"Is {k} even?", "chosen": "yes" if k % 2 == 0 else "no",
             "rejected": "no" if k % 2 == 0 else "yes"} for k in range(20)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "dir"
    main(["direction", "--model", str(tiny_folder), "--data", str(path), "--layers", "1", "--out", str(out),
          "--max-length", "64"])
    printed = capsys.readouterr().out
    d = Direction.load(out)
    assert d.info["n"] == 16  # read from 16 rows only
    assert "4 of" in d.info["heldout_data"] and "held out at random (--seed 0" in printed
    assert "chance 0.500" in printed  # pairs: two responses per item
    # the held-out rows are a seeded shuffle's, not the file's last rows
    from reprkit import data as D

    held = {r["prompt"] for r in D.shuffled(rows, 0)[16:]}
    assert held != {r["prompt"] for r in rows[16:]} and len(held) == 4


def _ab_rows(n, matching_a_share, seed=0):
    """A/B behaviour rows in the pre-release sycophancy format, ordered: the rows where the matching
    (sycophantic, the "incorrects") answer is (A) first."""
    k = round(n * matching_a_share)
    return [{"prompt": f"Question {i}: pick one.\n (A) this\n (B) that\n\nAnswer:",
             "incorrects": [" (A)"] if i < k else [" (B)"], "corrects": [" (B)"] if i < k else [" (A)"]} for i in range(n)]


def test_a_direction_that_reads_the_answer_letter_is_flagged(tiny_folder, tmp_path, capsys):
    """The pre-release sycophancy format is read by `reprkit direction` (one loader with `steer
    --evaluate`); the answers are letters, so the held-out output has the answer-letter baseline,
    and a direction whose held-out outcomes follow one letter is flagged. The questions are alike
    and the answers are only letters: whatever the tiny model reads is the letter."""
    import json

    from reprkit.cli import main

    path = tmp_path / "syc.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in _ab_rows(150, 0.7)))
    out = tmp_path / "dir"
    main(["direction", "--model", str(tiny_folder), "--data", str(path), "--layers", "1,2", "--out", str(out),
          "--max-length", "64", "--max-prompt-length", "48", "--token", "last", "--no-both-orders"])
    printed = capsys.readouterr().out
    d = Direction.load(out)
    assert "answer-letter baseline on the held-out items" in printed and "always (A)" in printed
    assert set(d.info["letter_baseline"]) == {"A", "B"}
    assert d.info["reads_the_letter"] and set(d.info["reads_the_letter"].values()) <= {"A", "B"}
    assert "reads the answer letter" in printed and "letter-balanced" in printed
    # by default each question is read and scored in both answer orders: the letter baseline is 1/2
    # each, and the same letter-reading direction scores chance on the held-out questions
    main(["direction", "--model", str(tiny_folder), "--data", str(path), "--layers", "1,2", "--out", str(out),
          "--max-length", "64", "--max-prompt-length", "48", "--token", "last"])
    printed = capsys.readouterr().out
    d = Direction.load(out)
    assert "both answer orders: 120 read and 30 held-out A/B questions" in printed
    assert d.info["letter_baseline"] == {"A": 0.5, "B": 0.5}
    assert all(d.info["heldout"][k] == 0.5 for k in d.info["reads_the_letter"])
    # read balanced, a PCA takes the letter's axis (the differences are behaviour +/- letter): the
    # flag then names another method, not the --both-orders it already had
    main(["direction", "--model", str(tiny_folder), "--data", str(path), "--layers", "1,2", "--out", str(out),
          "--max-length", "64", "--max-prompt-length", "48", "--token", "last", "--method", "pca"])
    printed = capsys.readouterr().out
    d = Direction.load(out)
    assert d.info["reads_the_letter"], printed
    assert "--method mean_diff" in printed and "letter-balanced" not in printed


def test_both_orders_swaps_the_choices_and_their_letters():
    from reprkit.scoring import both_orders, letter_baseline

    plain = {"prompt": "Pick.\n (A) red\n (B) blue\nAnswer:", "responses": [" (B)", " (A)"], "scores": [1.0, 0.0], "id": 7}
    chat = {"prompt": [{"role": "user", "content": "Pick.\n\nChoices:\n (A) Yes\n (B) No"}], "responses": [" (A)", " (B)"]}
    three = {"prompt": "Pick.\n (A) x\n (B) y\n (C) z", "responses": [" (C)", " (A)"]}  # not the letters A and B
    words = {"prompt": "Pick.", "responses": ["yes", "no"]}
    out, n = both_orders([plain, chat, three, words])
    assert n == 2 and len(out) == 6
    assert out[1] == {**plain, "prompt": "Pick.\n (A) blue\n (B) red\nAnswer:", "responses": [" (A)", " (B)"], "id": "7/swapped"}
    assert out[3]["prompt"][0]["content"].endswith(" (A) No\n (B) Yes") and out[3]["responses"] == [" (B)", " (A)"]
    assert out[4] is three and out[5] is words
    assert letter_baseline(out[:4])["always"] == {"A": 0.5, "B": 0.5}


def test_letter_baseline_and_the_flag():
    from reprkit.scoring import letter_baseline, reads_the_letter

    items = [{"responses": [" (A)", " (B)"] if i % 3 else [" (B)", " (A)"], "scores": [1.0, 0.0]} for i in range(30)]
    base = letter_baseline(items)
    assert base["always"] == {"A": 20 / 30, "B": 10 / 30}
    follows_a = [int(b == "A") for b in base["best_letter"]]
    assert reads_the_letter(follows_a, base) == "A"
    assert reads_the_letter([1 - x for x in follows_a], base) == "B"
    # right on 24 of 30 items regardless of letter: not a letter reading
    mixed = [1] * 24 + [0] * 6
    assert reads_the_letter(mixed, base) is None
    assert letter_baseline([{"responses": ["yes", "no"], "scores": [1, 0]}]) is None  # not letters
    assert reads_the_letter(follows_a[:10], letter_baseline(items[:10])) is None  # too few items to say


def test_steer_evaluate_shuffles_with_the_same_seed_as_direction():
    from reprkit import data as D
    from reprkit.data.formats import to_items

    rows = _ab_rows(40, 0.5)
    a = D.shuffled(to_items(rows), 0)
    assert [it["prompt"] for it in a] == [it["prompt"] for it in D.shuffled(to_items(rows), 0)]
    assert [it["prompt"] for it in a] != [it["prompt"] for it in to_items(rows)]


def test_direction_command_from_contrast_prompt_files(tiny_folder, tmp_path, capsys):
    from reprkit.cli import main

    (tmp_path / "pos.txt").write_text("Act happy. Hi\nAct happy. Hello\nAct happy. Hey\n")
    (tmp_path / "neg.txt").write_text("Act sad. Hi\nAct sad. Hello\nAct sad. Hey\n")
    out = tmp_path / "dir"
    main(["direction", "--model", str(tiny_folder), "--positive", str(tmp_path / "pos.txt"), "--negative",
          str(tmp_path / "neg.txt"), "--layers", "1,2", "--out", str(out)])
    d = Direction.load(out)
    assert d.info["contrast"] == "prompts" and d.info["n"] == 3 and sorted(d.vectors) == [1, 2]
    assert "3 prompt pairs" in capsys.readouterr().out


@pytest.mark.parametrize("token", ["mean", "mean_response", "last", "last_completion"])
def test_shared_prompt_states_equal_one_sequence_per_response(tiny_folder, tokenizer, token):
    """Reading each prompt once (its responses on its KV cache) gives the states of one sequence per
    response, for every token rule, with prompts and responses of different lengths and an item
    with fewer responses than the others."""
    import torch
    from transformers import AutoModelForCausalLM

    from reprkit import data as D
    from reprkit.directions import completion_states

    model = AutoModelForCausalLM.from_pretrained(tiny_folder)
    items = D.load_items("genies:alpaca_easy", "test", limit=5) + [
        {"prompt": [{"role": "user", "content": "Pick one, briefly"}], "responses": [" (A)", " (B) because"],
         "scores": [1.0, 0.0]}]
    enc = D.encode_ranked(items, tokenizer, 96, 48)
    ref, ref_valid = completion_states(model, enc, tokenizer.pad_token_id, [0, 1], token=token, shared_prompt=False)
    got, valid = completion_states(model, enc, tokenizer.pad_token_id, [0, 1], token=token)
    assert torch.equal(valid, ref_valid) and not bool(valid.all())  # the last item has 2 of 4 slots
    for layer in (0, 1):
        torch.testing.assert_close(got[layer], ref[layer], atol=1e-4, rtol=1e-4)
