"""Every check of ``reprkit.verify`` fails on the seeded bug it exists for (``reprkit.mutations``),
on an architecture where that bug is a bug; and passes without it. The full table, every mutation
against every check on all 23 architectures, is in docs/supported-models.md."""

import pytest

from reprkit import mutations as M
from reprkit.verify import CHECKS, run_check, tiny_model

# the smallest architectures that exercise each mutation: Llama (plain), Gemma 3 (sliding window),
# Gemma 2 (softcapped head)
ARCH_FOR = {name: "gemma2" if name == "head_unscaled" else "gemma3" if name == "prompts_right_padded" else "llama"
            for name in M.MUTATIONS}
CASES = [(name, check) for name, m in M.MUTATIONS.items() for check in m.caught_by]


@pytest.mark.parametrize("name,check", CASES, ids=[f"{n}-{c}" for n, c in CASES])
def test_each_check_fails_on_its_mutation_and_passes_without_it(name, check):
    arch = ARCH_FOR[name]
    assert M.MUTATIONS[name].applies(tiny_model(arch).config)
    assert run_check(tiny_model(arch), check)["status"] == "pass"
    with M.mutation(name):
        result = run_check(tiny_model(arch), check)
    assert result["status"] == "fail", f"{check} did not see {name} on {arch}"


def test_every_check_has_a_mutation_it_must_catch():
    caught = {c for m in M.MUTATIONS.values() for c in m.caught_by}
    assert caught == set(CHECKS)


def test_a_mutation_is_undone_on_exit_and_unknown_ones_are_refused():
    import reprkit.shared_prompt as S

    before = S.run_responses
    with M.mutation("response_positions_off_by_one"):
        assert S.run_responses is not before
    assert S.run_responses is before
    with pytest.raises(ValueError, match="unknown mutation 'x'; choose from"):
        with M.mutation("x"):
            pass


def test_right_padding_is_a_bug_only_where_a_window_counts_cache_slots():
    """On Llama right-padded prompts with explicit positions score the same (not a bug there); on
    the sliding-window architectures the shared-prompt check fails."""
    assert not M.MUTATIONS["prompts_right_padded"].applies(tiny_model("llama").config)
    with M.mutation("prompts_right_padded"):
        assert run_check(tiny_model("llama"), "shared_prompt")["status"] == "pass"
        assert run_check(tiny_model("mistral"), "shared_prompt")["status"] == "fail"
