import logging

import pytest

from reprkit import data as D
from reprkit.truncation import TruncationError, check_fits, describe, truncation_report


def _items(n_long: int, n_short: int, words: int = 120):
    long = " ".join(f"w{i}" for i in range(words))
    out = [{"prompt": [{"role": "user", "content": f"{long} {k}"}], "responses": ["yes it is", "no"], "scores": [1.0, 0.0]}
           for k in range(n_long)]
    out += [{"prompt": [{"role": "user", "content": f"short {k}"}], "responses": ["yes it is", "no"], "scores": [1.0, 0.0]}
            for k in range(n_short)]
    return out


def test_long_prompts_are_counted_and_named_with_the_length_that_fits(tokenizer, caplog):
    with caplog.at_level(logging.WARNING):
        enc = D.encode_ranked(_items(3, 7), tokenizer, max_length=96, max_prompt_length=64)
    rep = truncation_report(enc)
    assert rep["n"] == 10 and rep["cut"] == 3 and rep["prompt_cut"] == 3 and rep["response_cut"] == 0
    assert rep["share"] == pytest.approx(0.3)
    assert rep["max_prompt_cut"] > 100 and rep["fit_all"]["max_prompt_length"] == rep["max_prompt_cut"] + 64
    assert "3 of 10 cut" in describe(rep) and "would fit" in describe(rep)
    assert "3 of 10 cut" in caplog.text  # warned at encoding: never silent
    with pytest.raises(TruncationError, match="max_prompt_length"):
        check_fits(rep, 0.05, "long set")
    # at the length it names, nothing is cut
    fit = rep["fit_all"]
    enc = D.encode_ranked(_items(3, 7), tokenizer, fit["max_length"] + 1, fit["max_prompt_length"])
    assert truncation_report(enc)["cut"] == 0
    check_fits(truncation_report(enc), 0.05)


def test_responses_cut_from_the_right_are_counted(tokenizer):
    items = [{"prompt": [{"role": "user", "content": "hi"}], "responses": ["a " * 80, "b"], "scores": [1.0, 0.0]}]
    rep = truncation_report(D.encode_ranked(items, tokenizer, max_length=96, max_prompt_length=64))
    assert rep["response_cut"] == 1 and rep["prompt_cut"] == 0 and rep["max_response_cut"] == rep["fit_all"]["max_length"] - 96


def test_eval_prints_how_many_items_were_cut(tiny_folder, tmp_path):
    import json

    from reprkit.evalrun import evaluate_target, format_results

    path = tmp_path / "long.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": it["prompt"][0]["content"], "chosen": it["responses"][0],
                                          "rejected": it["responses"][1]}) for it in _items(4, 4)))
    res = evaluate_target(str(tiny_folder), [str(path)], split="train", max_length=96, max_prompt_length=64)
    table = format_results(res)
    assert res["datasets"][str(path)]["truncation"]["cut"] == 4
    assert "4 of 8 cut" in table
