import gzip
import json

import pytest
import torch

from reprkit import data as D

# ------------------------------------------------------------------ adapters on the real files


def test_genies_real_file(shared_data):
    items = D.load_items("genies:alpaca_easy", "train")
    raw = json.loads((shared_data / "genies/distributions/alpaca_easy/train.json").read_text())
    assert len(items) == len(raw) == 600
    for item, row in zip(items[:50], raw[:50]):
        best = [t for t, s in row["responses"].items() if s == 1.0]
        assert item["responses"][0] == best[0] and item["scores"][0] == 1.0
        assert len(item["responses"]) == len(row["responses"]) and item["scores"][1:] == [0.0] * (len(row["responses"]) - 1)
        assert item["prompt"] == [{"role": "user", "content": row["prompt"]}]
    pairs_all = D.to_pairs(items[:10], "best_vs_all")
    assert len(pairs_all) == sum(len(i["responses"]) - 1 for i in items[:10])
    worst = D.to_pairs(items, "best_vs_worst")
    assert len(worst) == 600 and all(p["chosen"] != p["rejected"] for p in worst)
    # ties among the wrong answers are spread, not always the same slot
    slots = {items[i]["responses"].index(p["rejected"]) for i, p in enumerate(worst)}
    assert len(slots) > 1


def test_hh_real_file(shared_data):
    with gzip.open(shared_data / "hh-rlhf/harmless-base/test.jsonl.gz", "rt") as f:
        raw = [json.loads(line) for _, line in zip(range(30), f)]
    items = D.to_items(raw, "hh", bad_rows="skip")
    item, row = items[0], raw[0]
    cut = row["chosen"].rfind("\n\nAssistant:")
    assert item["responses"][0] == row["chosen"][cut + len("\n\nAssistant:"):].strip()
    assert item["responses"][1] == row["rejected"][cut + len("\n\nAssistant:"):].strip()
    assert item["prompt"][0]["role"] == "user" and item["prompt"][-1]["role"] == "user"
    assert [m["role"] for m in item["prompt"]] == ["user", "assistant"] * (len(item["prompt"]) // 2) + ["user"]
    full = D.load_items("hh-rlhf:harmless-base", "train")
    test = D.load_items("hh-rlhf:harmless-base", "test")
    assert len(full) > 1800 and 150 < len(test) < 260  # only a test split ships: the last 10% is held out
    assert full[0]["responses"] != test[0]["responses"]


def test_helpsteer_columns_binarise_and_rank():
    cols = dict(coherence=4, complexity=2, verbosity=1)
    rows = [
        {"prompt": "p1", "response": "a", "helpfulness": 4, "correctness": 4, **cols},
        {"prompt": "p1", "response": "b", "helpfulness": 1, "correctness": 0, **cols},
        {"prompt": "p1", "response": "c", "helpfulness": 2, "correctness": 3, **cols},
        {"prompt": "p2", "response": "x", "helpfulness": 3, "correctness": 3, **cols},
        {"prompt": "p2", "response": "y", "helpfulness": 3, "correctness": 3, **cols},  # a tie: dropped
    ]
    items = D.to_items(rows)
    assert len(items) == 1 and items[0]["responses"] == ["a", "b"] and items[0]["scores"] == [4.0, 0.5]
    ranked = D.from_scored_rows(rows, ranking="full")
    assert ranked[0]["responses"] == ["a", "c", "b"]


def test_messages_and_trl_pairs():
    row = {
        "chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello!"}],
        "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "go away"}],
    }
    item = D.to_items([row])[0]
    assert item["prompt"] == [{"role": "user", "content": "hi"}] and item["responses"] == ["hello!", "go away"]
    pair = D.to_items([{"prompt": "q", "chosen": "good", "rejected": "bad"}])[0]
    assert pair["responses"] == ["good", "bad"]
    ranked = D.to_items([{"prompt": "q", "responses": ["a", "b", "c"]}])[0]
    assert ranked["responses"] == ["a", "b", "c"] and D.to_pairs([ranked], "best_vs_worst")[0]["rejected"] == "c"


@pytest.mark.parametrize(
    "rows, match",
    [
        ([{"prompt": "q", "chosen": "a", "rejected": "b"}, {"prompt": "q", "chosen": "a"}], r"row 1: field 'rejected' is missing"),
        ([{"prompt": "q", "chosen": "a", "rejected": ""}], r"row 0: field 'rejected' is empty"),
        ([{"prompt": 3, "chosen": "a", "rejected": "b"}], r"row 0: field 'prompt' is int"),
        ([{"prompt": "q", "responses": {"only": 1.0}}], r"row 0: 'responses' must map at least two"),
        ([{"text": "x"}], r"cannot tell the format"),
        ([], r"empty"),
    ],
)
def test_bad_rows_name_index_and_field(rows, match):
    with pytest.raises(D.DataError, match=match):
        D.to_items(rows)


def test_skip_counts_bad_rows_but_refuses_a_format_mismatch(caplog):
    rows = [{"prompt": "q", "chosen": "a", "rejected": "b"}] * 19 + [{"prompt": "q", "chosen": "a", "rejected": ""}]
    with caplog.at_level("WARNING"):
        items = D.to_items(rows, bad_rows="skip")
    assert len(items) == 19 and "skipped 1 of 20 bad rows: row 19" in caplog.text
    with pytest.raises(D.DataError, match="10 of 20 rows are bad"):
        D.to_items(rows[:10] + [{"prompt": "q", "chosen": "a"}] * 10, bad_rows="skip")


# ------------------------------------------------------------------ sources and file formats


@pytest.mark.parametrize("ext", ["json", "jsonl", "jsonl.gz", "csv", "parquet"])
def test_local_files(tmp_path, ext):
    import datasets

    rows = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(5)]
    ds = datasets.Dataset.from_list(rows)
    path = tmp_path / f"prefs.{ext}"
    if ext == "json":
        path.write_text(json.dumps(rows))
    elif ext == "jsonl":
        ds.to_json(str(path))
    elif ext == "jsonl.gz":
        with gzip.open(path, "wt") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    elif ext == "csv":
        ds.to_csv(str(path), index=False)
    else:
        ds.to_parquet(str(path))
    items = D.load_items(str(path))
    assert [i["responses"] for i in items] == [[r["chosen"], r["rejected"]] for r in rows]


def test_missing_file_and_unknown_embedded_task(tmp_path):
    with pytest.raises(D.DataError, match="does not exist"):
        D.load_items(str(tmp_path / "nope.jsonl"))
    with pytest.raises(D.DataError, match="embedded task 'poetry' does not exist"):
        D.load_items("embedded:poetry")
    with pytest.raises(D.DataError, match="no GENIES distribution 'nope'"):
        D.load_items("genies:nope")


def test_hub_sources_go_through_datasets(monkeypatch):
    import datasets

    calls = []

    def fake_load(name, config=None, split=None, **kw):
        calls.append((name, config, split, kw))
        return [{"prompt": "q", "chosen": "a", "rejected": "b"}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    monkeypatch.setattr(D.sources, "shared_data_dir", lambda: None)
    monkeypatch.setattr(D.sources, "hub_unreachable", lambda: None)  # as online
    D.load_items("someone/prefs:cfg", "train")
    D.load_items("genies:alpaca_easy", "test", fmt="pair")
    D.load_items("hh-rlhf:helpful-base", "train", fmt="pair")
    assert calls[0][:3] == ("someone/prefs", "cfg", "train")
    assert calls[1][:3] == ("wassname/genies_preferences", "alpaca_easy", "test")
    assert calls[2][0] == "Anthropic/hh-rlhf" and calls[2][3] == {"data_dir": "helpful-base"}


def test_embedded_set_is_made_by_its_script():
    from reprkit.embedded import PATH, TASKS
    from reprkit.embedded.make import build

    shipped = [json.loads(line) for line in PATH.read_text().splitlines()]
    assert shipped == build()
    assert {r["task"] for r in shipped} == set(TASKS) and 300 <= len(shipped) <= 600
    for task in TASKS:
        assert D.load_items(f"embedded:{task}", "train") and D.load_items(f"embedded:{task}", "test")
    assert not {r["prompt"] for r in shipped if r["split"] == "train"} & {r["prompt"] for r in shipped if r["split"] == "test" and r["task"] == "capitals"}


# ------------------------------------------------------------------ tokenization and collation


def test_encode_applies_chat_template_and_masks_completion(tokenizer):
    pairs = [{"prompt": [{"role": "user", "content": "What is 2 + 2?"}], "chosen": "4.", "rejected": "5."}]
    enc = D.encode_pairs(pairs, tokenizer, max_length=128, max_prompt_length=64)
    batch = D.collate(enc, tokenizer.pad_token_id)
    ids, comp = batch["chosen_input_ids"][0], batch["chosen_completion_mask"][0].bool()
    text = tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system") and "<|im_start|>user\nWhat is 2 + 2?<|im_end|>" in text
    assert tokenizer.decode(ids[comp]) == "4.<|im_end|>\n"
    plain = D.encode_pairs(pairs, tokenizer, 128, 64, chat_template=False)
    assert tokenizer.decode(plain[0]["chosen_prompt_ids"]) == "What is 2 + 2?"


def test_render_prompt_uses_the_template_only_where_the_tokenizer_has_one(tokenizer):
    import copy

    messages = [{"role": "user", "content": "What is 12 + 30?"}]
    assert D.render_prompt(tokenizer, messages).endswith("<|im_start|>assistant\n")
    base = copy.deepcopy(tokenizer)
    base.chat_template = None  # a base model's tokenizer (Gemma 3 270M's has none)
    assert D.render_prompt(base, messages) == "What is 12 + 30?"
    assert D.render_prompt(tokenizer, messages, chat=False) == "What is 12 + 30?"


def test_truncation_prompt_left_completion_right(tokenizer):
    long_prompt = " ".join(f"w{i}" for i in range(200))
    pairs = [{"prompt": [{"role": "user", "content": long_prompt + " END"}],
              "chosen": " ".join(["yes"] * 100), "rejected": "no"}]
    enc = D.encode_pairs(pairs, tokenizer, max_length=60, max_prompt_length=40)[0]
    assert len(enc["chosen_prompt_ids"]) == 40
    assert "END" in tokenizer.decode(enc["chosen_prompt_ids"])  # the end of the prompt survives
    assert len(enc["chosen_prompt_ids"]) + len(enc["chosen_ids"]) == 60
    assert tokenizer.decode(enc["chosen_ids"]).startswith("yes yes")  # the start of the answer survives
    assert tokenizer.decode(enc["rejected_ids"]) == "no<|im_end|>\n"
    with pytest.raises(ValueError, match="must be below max_length"):
        D.encode_pairs(pairs, tokenizer, max_length=40, max_prompt_length=40)


def test_collate_pads_both_sides_to_one_length(tokenizer):
    examples = [
        {"chosen_prompt_ids": [1, 2], "chosen_ids": [3, 4, 5], "rejected_prompt_ids": [1, 2], "rejected_ids": [6]},
        {"chosen_prompt_ids": [7], "chosen_ids": [8], "rejected_prompt_ids": [7], "rejected_ids": [9, 9, 9, 9, 9]},
    ]
    b = D.collate(examples, pad_token_id=0)
    assert all(v.shape == (2, 6) for v in b.values())
    assert b["chosen_input_ids"][0].tolist() == [1, 2, 3, 4, 5, 0]
    assert b["chosen_attention_mask"][0].tolist() == [1, 1, 1, 1, 1, 0]
    assert b["chosen_completion_mask"][0].tolist() == [0, 0, 1, 1, 1, 0]
    assert b["rejected_completion_mask"][1].tolist() == [0, 1, 1, 1, 1, 1]
    assert b["chosen_input_ids"].dtype == torch.long


def test_separate_retain_and_reroute_prompts(tokenizer):
    retain = [{"prompt": [{"role": "user", "content": "Say hi"}], "responses": ["hi"], "scores": [1.0]}]
    reroute = [{"prompt": [{"role": "user", "content": "Do harm"}], "responses": ["Sure, here is how"], "scores": [1.0]}] * 2
    pairs = D.zip_retain_reroute(retain, reroute)
    assert len(pairs) == 2
    enc = D.encode_pairs(pairs, tokenizer, 128, 64)
    assert "Say hi" in tokenizer.decode(enc[0]["chosen_prompt_ids"])
    assert "Do harm" in tokenizer.decode(enc[0]["rejected_prompt_ids"])


def test_split_slices():
    full = D.load_items("genies:alpaca_easy", "train")
    head = D.load_items("genies:alpaca_easy", "train[:90%]")
    tail = D.load_items("genies:alpaca_easy", "train[90%:]")
    assert len(full) == 60 and len(head) == 54 and len(tail) == 6 and head + tail == full  # the fixture's 60 rows
    assert D.load_items("genies:alpaca_easy", "test[:10]") == D.load_items("genies:alpaca_easy", "test")[:10]
    assert D.split_slice("train") == ("train", None)


def test_missing_dataset_offline_names_the_data_dir_and_the_hub_id(monkeypatch):
    monkeypatch.setattr(D.sources, "shared_data_dir", lambda: None)
    with pytest.raises(D.DataError, match=r"REPRKIT_DATA_DIR.*'wassname/genies_preferences'"):
        D.load_items("genies:alpaca_easy", "test")
    with pytest.raises(D.DataError, match=r"'someone/not-here'.*could not be loaded"):
        D.load_items("someone/not-here", "train")


def test_an_unreachable_hub_fails_at_once_without_trying_datasets(monkeypatch):
    import socket
    import time

    import datasets

    monkeypatch.setattr(D.sources, "shared_data_dir", lambda: None)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("the hub was tried"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(D.DataError, match=r"'wassname/genies_preferences' could not be loaded \(HF_HUB_OFFLINE is set\)"):
        D.load_items("genies:alpaca_easy", "test")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)

    def no_route(*a, **k):
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_route)
    start = time.time()
    with pytest.raises(D.DataError, match=r"huggingface.co cannot be reached \(Network is unreachable\)"):
        D.load_items("genies:alpaca_easy", "test")
    assert time.time() - start < 2


def test_helpsteer_full_ranking_is_reachable(tmp_path):
    """Defect: the documented full ranking of scored rows was unreachable (always best vs worst)."""
    import json

    rows = [{"prompt": "p", "response": r, "helpfulness": h, "correctness": c}
            for r, h, c in [("good", 4, 4), ("ok", 3, 2), ("bad", 0, 1)]]
    path = tmp_path / "helpsteer.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert D.load_items(str(path))[0]["responses"] == ["good", "bad"]
    full = D.load_items(str(path), ranking="full")[0]
    assert full["responses"] == ["good", "ok", "bad"] and full["scores"] == [4.0, 2.5, 0.5]
    from reprkit.cli import parse_train

    assert parse_train(["--ranking", "full"]).ranking == "full"
    with pytest.raises(D.DataError, match="ranking must be"):
        D.load_items(str(path), ranking="pairs")


def test_prompt_key_is_shared_by_pairs_and_items_of_one_prompt_only():
    item = D.to_items([{"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"}])[0]
    pair = D.to_pairs([item])[0]
    other = D.to_items([{"prompt": "What is 2+3?", "chosen": "5", "rejected": "4"}])[0]
    assert D.prompt_key(pair) == D.prompt_key(item)
    assert D.prompt_key(other) != D.prompt_key(item)
    system = {**item, "prompt": [{"role": "system", "content": "Be brief."}, *item["prompt"]]}
    assert D.prompt_key(system) != D.prompt_key(item)  # a different conversation, not the same prompt


def test_items_sharing_prompt_and_best_response_stay_separate_questions(tokenizer):
    """GENIES' change_my_view repeats a prompt and its best response with a different worse one: two
    2-way questions (chance 0.5 each), not one 3-way question."""
    prompt = [{"role": "user", "content": "Change my view: tabs beat spaces."}]
    items = [{"prompt": prompt, "responses": ["Spaces render the same everywhere.", "Tabs."], "scores": [1.0, 0.0]},
             {"prompt": prompt, "responses": ["Spaces render the same everywhere.", "No."], "scores": [1.0, 0.0]},
             {"prompt": [{"role": "user", "content": "Hi"}], "responses": ["Hello!", "Bye."], "scores": [1.0, 0.0]}]
    enc = D.encode_ranked(items, tokenizer, max_length=64, max_prompt_length=32)
    assert len(enc) == 3 and enc.dropped == 0 and enc.kept == [0, 1, 2]
    assert [len(e["responses_ids"]) for e in enc] == [2, 2, 2]
    assert enc[0]["responses_ids"][1] != enc[1]["responses_ids"][1]
    # an item that gives no pair (one response) is dropped and counted; the rest keep their order
    enc = D.encode_ranked([items[2], {**items[0], "responses": ["Spaces."], "scores": [1.0]}, items[1]], tokenizer,
                          64, 32)
    assert enc.kept == [0, 2] and enc.dropped == 1
