"""Every check of ``reprkit.verify`` fails on the seeded bug it exists for (``reprkit.mutations``),
on an architecture where that bug is a bug; and passes without it. The full table, every mutation
against every check on all 23 architectures, is in docs/supported-models.md."""

import pytest
import torch

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


def _inputs():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 128, (2, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _equality_cases():
    from . import test_shared_prompt as SP
    from . import test_steering as ST
    from .conftest import tiny_llama

    return [
        ("shared-prompt scoring, adapter on and off", SP.test_shared_prompt_with_adapter_on_and_off, (),
         ["response_positions_off_by_one", "cache_of_other_rows", "prompt_padding_attended"]),
        ("shared-prompt training step (ReprPO)", SP.test_shared_prompt_step_equals_the_concatenated_step_float64,
         ("reprpo",), ["response_positions_off_by_one", "cache_of_other_rows"]),
        ("sliding windows equal one unpadded item", SP.test_sliding_window_models_equal_unpadded_one_item_at_a_time,
         ("gemma3",), ["prompts_right_padded", "response_positions_off_by_one"]),
        ("steering two layers in one call", ST.test_steer_at_two_layers_in_one_call_equals_nested_single_layer_captures,
         lambda: (tiny_llama(), _inputs()), ["steer_wrong_layer_vector", "steer_not_undone"]),
        ("steer takes capture's layer specs", ST.test_steer_takes_the_layer_specs_of_capture, ("5:7", [5, 6]),
         ["steer_wrong_layer_vector"]),
    ]


def _cases():
    return [(label, name) for label, _, _, names in _equality_cases() for name in names]


@pytest.mark.parametrize("label,name", _cases(), ids=[f"{n}-{label}" for label, n in _cases()])
def test_the_library_equality_tests_fail_on_their_mutations(label, name):
    """The equality tests of scoring, training and steering are checks too: each fails on the bug it
    exists for (and passes without it, as the suite shows)."""
    fn, args = next((f, a) for lab, f, a, _ in _equality_cases() if lab == label)
    with M.mutation(name), pytest.raises(AssertionError):
        fn(*(args() if callable(args) else args))
