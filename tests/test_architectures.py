"""Every capability on every architecture of the support table (tiny random models from
transformers' config classes), and the published table equal to what the checks give now."""

from pathlib import Path

import pytest

from reprkit import verify as V

TABLE = Path(__file__).parents[1] / "docs" / "supported-models.md"


def committed() -> dict:
    return V.parse_table(TABLE.read_text())


@pytest.mark.parametrize("arch", list(V.ARCHITECTURES))
def test_architecture_row_matches_the_published_table(arch):
    """Run every check on a tiny ``arch`` and compare with its row of docs/supported-models.md: a
    check that starts failing, or starts passing, makes the table wrong and this test fail (the fix:
    repair the code, or regenerate the table with `python -m reprkit.verify --write
    docs/supported-models.md` and say why in the commit)."""
    results = V.verify([arch])[arch]
    now = {c: r["status"] for c, r in results.items()}
    table = committed()
    assert arch in table, f"{arch} is missing from {TABLE}; regenerate it"
    differ = {c: (table[arch].get(c), now[c], results[c]["reason"]) for c in now if table[arch].get(c) != now[c]}
    assert not differ, f"{arch}: the table says / the check gives / reason: {differ}"


def test_the_table_lists_every_architecture_and_check():
    table = committed()
    assert list(table) == list(V.ARCHITECTURES)
    assert all(list(row) == list(V.CHECKS) for row in table.values())


def test_a_masked_edit_on_the_wrong_positions_of_a_left_padded_batch_is_caught(monkeypatch):
    """The left-padding check must fail when an edit lands on the wrong positions: here the mask is
    laid out for right padding (each prompt's last real token counted from the left)."""
    from reprkit import edits

    model = V.tiny_model("llama")
    real = edits.add_vector

    def misplaced(vector, scale=1.0, mask=None):
        if mask is not None and mask.shape[0] == 2 and mask.shape[1] == 7:  # the left-padded batch
            wrong = mask.clone()
            wrong[0] = 0
            wrong[0, 3] = 1  # where the short prompt's last token would be without left padding
            mask = wrong
        return real(vector, scale, mask)

    monkeypatch.setattr(edits, "add_vector", misplaced)
    result = V.run_check(model, "left_padding")
    assert result["status"] == "fail" and "left-padded row 0" in result["reason"]


@pytest.mark.parametrize("arch", ["qwen3-moe", "gemma3", "gpt2"])
def test_a_saved_tiny_model_loads_like_any_checkpoint(arch, tmp_path):
    """`--save-tiny`: a table architecture (named without its tag; a hybrid-attention pattern and
    GPT-2's own layer key) saved with the default tokenizer loads through load_model and captures."""
    import torch

    from reprkit import capture, load_model

    V.main(["--save-tiny", arch, str(tmp_path / arch)])
    model, tokenizer = load_model(str(tmp_path / arch))
    assert model.config.vocab_size == len(tokenizer) and model.config.eos_token_id == tokenizer.eos_token_id
    assert V.run_check(model, "capture")["status"] == "pass"
    batch = dict(tokenizer(["The capital of France is"], return_tensors="pt"))
    with torch.no_grad(), capture(model, [0, 19], stop=True) as cap:
        model(**batch)
    assert cap[19].shape[:2] == batch["input_ids"].shape  # 20 blocks, as saved


def test_an_unknown_architecture_or_check_is_refused_by_name(capsys):
    with pytest.raises(SystemExit):
        V.main(["--arch", "qwen9"])
    assert "unknown architecture 'qwen9'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        V.main(["--arch", "llama", "--check", "capture", "speed"])
    assert "unknown check(s) ['speed']" in capsys.readouterr().err
