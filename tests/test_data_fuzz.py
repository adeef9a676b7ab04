"""Fuzzed dataset rows: every bad row is skipped with a count or raises naming the row; none crashes
inside an adapter, tokenization or collation."""

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from reprkit import data as D

weird_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", "   ", "\n\nHuman: hi\n\nAssistant: yo", "a\ud800b", "\x00\x01", "\u202e\ufeff", "日本語 🙂"]),
    st.builds(lambda c, n: c * n, st.sampled_from(["x", "é", "🙂 ", "word "]), st.integers(2000, 20000)),  # huge
)
scalar = st.one_of(st.none(), st.integers(), st.floats(allow_nan=True), st.booleans(), weird_text)
message = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "bogus"]), "content": scalar}),
    st.dictionaries(st.sampled_from(["role", "content", "x"]), scalar, max_size=3),
    scalar,
)
value = st.one_of(
    scalar,
    st.lists(scalar, max_size=4),
    st.lists(message, max_size=4),
    st.dictionaries(weird_text, st.one_of(st.floats(allow_nan=True), st.integers(), st.none(), weird_text), max_size=4),
)
text = st.one_of(st.text(min_size=1, max_size=30), weird_text)


@st.composite
def valid_looking_row(draw, fmt):
    """A row of ``fmt`` built from fuzzed text (so usually well-formed, often with odd content)."""
    p, c, r = draw(text), draw(text), draw(text)
    if fmt == "pair":
        return {"prompt": p, "chosen": c, "rejected": r}
    if fmt == "hh":
        return {"chosen": f"\n\nHuman: {p}\n\nAssistant: {c}", "rejected": f"\n\nHuman: {p}\n\nAssistant: {r}"}
    if fmt == "genies":
        return {"prompt": p, "responses": draw(st.dictionaries(text, st.floats(-5, 5), min_size=2, max_size=4))}
    if fmt == "ranked":
        responses = draw(st.lists(text, min_size=2, max_size=4))
        row = {"prompt": p, "responses": responses}
        if draw(st.booleans()):
            row["scores"] = draw(st.lists(st.floats(-5, 5), min_size=len(responses), max_size=len(responses)))
        return row
    return {"chosen": [{"role": "user", "content": p}, {"role": "assistant", "content": c}],
            "rejected": [{"role": "user", "content": p}, {"role": "assistant", "content": r}]}


@st.composite
def fuzzed_row(draw, fmt):
    """A well-formed row with up to two faults: a field deleted, replaced by any value, or one
    element inside a list / message / map replaced."""
    row = draw(valid_looking_row(fmt))
    for _ in range(draw(st.integers(0, 2))):
        key = draw(st.sampled_from(sorted(row) + ["scores"]))
        how = draw(st.sampled_from(["delete", "replace", "inner"]))
        if how == "delete":
            row.pop(key, None)
        elif how == "replace" or not isinstance(row.get(key), (list, dict)) or not row[key]:
            row[key] = draw(value)
        elif isinstance(row[key], list):
            i = draw(st.integers(0, len(row[key]) - 1))
            if isinstance(row[key][i], dict) and draw(st.booleans()):
                row[key][i] = {**row[key][i], draw(st.sampled_from(["role", "content"])): draw(scalar)}
            else:
                row[key][i] = draw(st.one_of(scalar, message))
        else:
            k = draw(st.sampled_from(sorted(row[key], key=repr)))
            row[key][k] = draw(scalar)
    return row


FORMATS = ["pair", "hh", "genies", "ranked", "messages"]
rows = st.sampled_from(FORMATS).flatmap(lambda f: st.tuples(st.just(f), fuzzed_row(f)))


def _exercise(items, tokenizer):
    """What training and evaluation do with items: pairs, tokenization, collation, ranked encoding."""
    try:
        enc = D.encode_pairs(D.to_pairs(items), tokenizer, max_length=48, max_prompt_length=24)
    except D.DataError as err:
        assert "no pairs left" in str(err)
        return
    batch = D.collate(enc, tokenizer.pad_token_id)
    assert batch["chosen_input_ids"].shape[0] == len(enc)
    assert batch["chosen_completion_mask"].sum(-1).min() > 0
    ranked = D.encode_ranked(items, tokenizer, max_length=48, max_prompt_length=24)
    D.collate_ranked(ranked, tokenizer.pad_token_id)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=rows)
def test_a_fuzzed_row_is_used_or_refused_by_name(tokenizer, case):
    fmt, row = case
    try:
        items = D.to_items([row], fmt=fmt)
    except D.DataError as err:
        assert str(err).startswith("row 0: "), str(err)
        event(f"{fmt}: refused")
        return
    event(f"{fmt}: used")
    _exercise(items, tokenizer)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scored=st.lists(st.fixed_dictionaries({"prompt": st.sampled_from(["a?", "b?"]), "response": text,
                                               "helpfulness": scalar, "correctness": st.floats(0, 4)}),
                       min_size=1, max_size=6))
def test_fuzzed_scored_rows(tokenizer, scored):
    try:
        items = D.to_items(scored, fmt="scored")
    except D.DataError as err:
        assert str(err).startswith("row "), str(err)
        return
    if items:
        _exercise(items, tokenizer)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fmt=st.sampled_from(FORMATS), data=st.data())
def test_skipping_counts_every_bad_row(tokenizer, fmt, data):
    all_rows = [data.draw(valid_looking_row(fmt)) for _ in range(3)]
    all_rows += data.draw(st.lists(fuzzed_row(fmt), min_size=1, max_size=5))
    usable = 0
    for row in all_rows:
        try:
            D.to_items([row], fmt=fmt)
            usable += 1
        except D.DataError:
            pass
    try:
        items = D.to_items(all_rows, fmt=fmt, bad_rows="skip", max_bad_fraction=1.0)
    except D.DataError as err:
        assert usable == 0 and "rows are bad" in str(err)
        return
    assert len(items) == usable
    _exercise(items, tokenizer)
    if usable < len(all_rows):
        with pytest.raises(D.DataError, match=r"^row \d+: "):
            D.to_items(all_rows, fmt=fmt, bad_rows="raise")
