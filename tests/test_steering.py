import pytest
import torch

from reprkit.directions import Direction
from reprkit.steering import calibrate_strength, read_gguf, steering_kl, to_gguf

from .conftest import TINY, tiny_llama


class _Tok:
    pad_token, eos_token = "\0", "\0"

    def __call__(self, texts, return_tensors=None, padding=False):
        rows = [[ord(c) % 128 for c in t] for t in texts]
        n = max(map(len, rows))
        ids = torch.tensor([r + [0] * (n - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (n - len(r)) for r in rows])
        return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("target", [0.1, 1.0])
def test_calibration_lands_within_5_percent_of_the_asked_kl(target):
    model = tiny_llama(initializer_range=0.3)  # peaked outputs: steering can move them by a KL of 1
    v = torch.randn(32, generator=torch.Generator().manual_seed(0))
    d = Direction({1: v / v.norm()})
    res = calibrate_strength(model, _Tok(), d, ["hello there", "a longer prompt, this one"], layer=1, kl=target)
    assert res["kl"] == pytest.approx(target, rel=0.05)
    # measured again independently at the returned strength
    batch = _Tok()(["hello there", "a longer prompt, this one"], padding=True)
    again = torch.quantile(steering_kl(model, batch, 1, d.vectors[1], res["strength"]), 0.9).item()
    assert again == pytest.approx(target, rel=0.05)
    assert steering_kl(model, batch, 1, d.vectors[1], 0.0).abs().max() < 1e-5


def test_gguf_control_vector_reads_back(tmp_path):
    d = Direction({3: torch.tensor([0.6, 0.8, 0.0]), 7: torch.tensor([0.0, 0.0, 1.0])})
    to_gguf(d, tmp_path / "v.gguf", strength=2.0)
    back = read_gguf(tmp_path / "v.gguf")
    assert set(back) == {3, 7}
    torch.testing.assert_close(back[3], torch.tensor([1.2, 1.6, 0.0]))
    import gguf

    reader = gguf.GGUFReader(str(tmp_path / "v.gguf"))
    assert reader.fields["general.architecture"].contents() == "controlvector"
    assert reader.fields["controlvector.layer_count"].contents() == 2
    with pytest.raises(ValueError, match="block 1"):
        to_gguf(Direction({0: torch.ones(3)}), tmp_path / "w.gguf")


def _direction(model, layers=(1, 2), seed=0):
    from reprkit.directions import Direction

    g = torch.Generator().manual_seed(seed)
    h = model.config.hidden_size
    return Direction({k: torch.nn.functional.normalize(torch.randn(h, generator=g), dim=0) for k in layers},
                     {"method": "mean_diff"})


def test_steer_at_two_layers_in_one_call_equals_nested_single_layer_captures(model, inputs):
    from reprkit.hooks import capture
    from reprkit.steering import steered

    d = _direction(model)
    with torch.no_grad():
        plain = model(**inputs).logits
        with steered(model, d, 3.0, layers=[1, 2]):
            one_call = model(**inputs).logits
        with capture(model, 1, edit_output=d.edit(3.0, 1)), capture(model, 2, edit_output=d.edit(3.0, 2)):
            nested = model(**inputs).logits
        after = model(**inputs).logits
    torch.testing.assert_close(one_call, nested)
    assert not torch.allclose(one_call, plain)
    torch.testing.assert_close(after, plain)  # undone on exit


def test_steer_refuses_a_layer_the_direction_does_not_hold(model):
    from reprkit.steering import steered

    d = _direction(model)
    with pytest.raises(ValueError, match=r"no vector at layer\(s\) \[3\]; it holds layers \[1, 2\]"):
        with steered(model, d, 1.0, layers=[1, 3]):
            pass
    with pytest.raises(ValueError, match="no vector at layer 3; it holds layers"):
        d.edit(4.0, 3)


def test_steer_with_a_mask_edits_only_the_masked_positions(model, inputs):
    from reprkit.hooks import capture
    from reprkit.steering import steered

    d = _direction(model, layers=(1,))
    mask = torch.zeros_like(inputs["input_ids"])
    mask[:, -1] = 1
    with torch.no_grad(), steered(model, d, 5.0, mask=mask), capture(model, 1) as cap:
        model(**inputs)
    with torch.no_grad(), capture(model, 1) as ref:
        model(**inputs)
    diff = (cap[1] - ref[1]).norm(dim=-1)
    assert (diff[:, :-1] == 0).all() and (diff[:, -1] > 1).all()


def test_direction_arithmetic_on_shared_layers(model):
    a, b = _direction(model, (1, 2), seed=0), _direction(model, (2, 3), seed=1)
    s = a + b
    assert sorted(s.vectors) == [2] and torch.allclose(s.vectors[2], a.vectors[2] + b.vectors[2])
    assert torch.allclose((a - b).vectors[2], a.vectors[2] - b.vectors[2])
    assert torch.allclose((2 * a).vectors[1], 2 * a.vectors[1]) and torch.allclose((-a).vectors[1], -a.vectors[1])
    assert torch.allclose(s.normalised().vectors[2].norm(), torch.tensor(1.0))
    with pytest.raises(ValueError, match="share no layer"):
        _ = _direction(model, (1,)) + _direction(model, (3,))


def test_direction_from_gguf_round_trips_to_gguf(model, tmp_path):
    from reprkit.directions import Direction

    d = _direction(model, (1, 2))
    d.to_gguf(tmp_path / "v.gguf", strength=2.0)
    back = Direction.from_gguf(tmp_path / "v.gguf")
    assert sorted(back.vectors) == [1, 2] and torch.allclose(back.vectors[1], 2.0 * d.vectors[1])


def test_uncentred_pca_agrees_with_mean_diff_where_the_centred_one_can_fail():
    from reprkit.directions import direction_from_states

    g = torch.Generator().manual_seed(0)
    shared = torch.nn.functional.normalize(torch.randn(16, generator=g), dim=0)
    noise_dir = torch.nn.functional.normalize(torch.randn(16, generator=g), dim=0)
    # every pair differs by the shared direction plus a large spread along another one
    diff = shared * 1.0 + noise_dir * torch.randn(200, 1, generator=g) * 3.0
    rejected = torch.randn(200, 16, generator=g)
    chosen = rejected + diff
    md = direction_from_states(chosen, rejected, "mean_diff")
    unc = direction_from_states(chosen, rejected, "pca_uncentered")
    cen = direction_from_states(chosen, rejected, "pca")
    assert abs(float(md @ unc)) > abs(float(md @ cen))
    assert float((diff @ unc).mean()) > 0  # signed so the paired differences project positive


def test_calibrate_strength_over_several_layers_and_its_errors():
    model = tiny_llama(initializer_range=0.3)
    d = _direction(model, (1, 2))
    d.info["best_layer"] = 2
    prompts = ["hello there", "a longer prompt, this one"]
    one = calibrate_strength(model, _Tok(), d, prompts, kl=0.5)
    assert one["layers"] == [2]  # the direction's best layer, not its shallowest
    both = calibrate_strength(model, _Tok(), d, prompts, layer=[1, 2], kl=0.5)
    assert both["layers"] == [1, 2] and both["kl"] == pytest.approx(0.5, rel=0.05)
    assert both["strength"] < one["strength"]  # two layers at once need less of each
    with pytest.raises(ValueError, match="at least one non-empty prompt"):
        calibrate_strength(model, _Tok(), d, [], kl=0.5)
    with pytest.raises(ValueError, match="no vector at layer"):
        calibrate_strength(model, _Tok(), d, ["a b"], layer=0, kl=0.5)
    with pytest.raises(ValueError, match="layer 20 is out of range. The model has 4 decoder blocks"):  # capture's words
        calibrate_strength(model, _Tok(), d, ["a b"], layer=20, kl=0.5)
    assert calibrate_strength(model, _Tok(), d, prompts, layer="1:3", kl=0.5)["layers"] == [1, 2]


@pytest.mark.parametrize("spec,blocks", [("5:7", [5, 6]), ("range(5,7)", [5, 6]), ([5, 6], [5, 6]), (6, [6]),
                                         ("-2", [6]), ("5,7", [5, 7])])
def test_steer_takes_the_layer_specs_of_capture(spec, blocks):
    """``steered(layers=...)`` edits exactly the blocks the spec selects (a string is a spec, never a
    list of characters: ``"5:7"`` once steered all 8 blocks), counted at each block's output: a
    block's output differs from the unsteered run's only from the first steered block on, and each
    steered block adds exactly its own vector to what the block computed."""
    from reprkit.directions import Direction
    from reprkit.hooks import capture
    from reprkit.layers import block_indices
    from reprkit.steering import steered

    model = tiny_llama(num_hidden_layers=8)
    h = TINY["hidden_size"]
    g = torch.Generator().manual_seed(1)
    d = Direction({k: torch.nn.functional.normalize(torch.randn(h, generator=g), dim=0) for k in range(8)})
    ids = torch.randint(0, TINY["vocab_size"], (1, 5), generator=torch.Generator().manual_seed(0))
    assert block_indices(model, spec) == blocks
    seen = {}

    def record(out, name):  # runs before steer's edit (registered first): the block's own output
        seen[int(name.rsplit(".", 1)[1])] = out.clone()
        return out

    with torch.no_grad(), capture(model, list(range(8)), edit_output=record, retain_output=False), \
            steered(model, d, 4.0, layers=spec), capture(model, list(range(8))) as after:
        model(input_ids=ids)
    added = [k for k in range(8) if not torch.allclose(after[k], seen[k], atol=1e-6)]
    assert added == blocks
    for k in blocks:
        torch.testing.assert_close(after[k] - seen[k], (4.0 * d.vectors[k]).expand_as(seen[k]), rtol=1e-5, atol=1e-5)


def test_steer_refuses_a_bad_spec_with_captures_message():
    from reprkit.directions import Direction
    from reprkit.steering import steered

    model = tiny_llama()
    d = Direction({1: torch.ones(TINY["hidden_size"])})
    with pytest.raises(ValueError, match="bad layer spec 'x:y'.*The model has 4 decoder blocks"):
        with steered(model, d, 1.0, layers="x:y"):
            pass


def test_steerability_counts_items_that_move_the_wrong_way(tiny_folder, tmp_path):
    """A planted case: steering along +v raises the log-odds on some items and lowers it on others;
    the anti-steerable fraction equals a hand count of negative slopes, and the table's wrong-way
    share at each strength equals a count of items whose change has the opposite sign."""
    import numpy as np
    from transformers import AutoModelForCausalLM

    from reprkit.models import load_tokenizer_only
    from reprkit.steerability import format_steerability, steerability

    model = AutoModelForCausalLM.from_pretrained(tiny_folder)
    tok = load_tokenizer_only(str(tiny_folder))
    items = [{"prompt": [{"role": "user", "content": f"Question {k // 2}: pick one"}], "responses": [" (A)", " (B)"],
              "scores": [1.0, 0.0], "matching": [True, False] if k % 2 else [False, True]} for k in range(8)]
    g = torch.Generator().manual_seed(0)
    d = Direction({1: torch.nn.functional.normalize(torch.randn(model.config.hidden_size, generator=g), dim=0)},
                  {"method": "mean_diff", "best_layer": 1})
    res = steerability(model, tok, d, items, strengths=[-4, -2, 2, 4])
    slopes = np.array(res["per_item"]["slope"])
    assert res["strengths"] == [-4, -2, 0, 2, 4] and res["n"] == 8
    assert res["anti_steerable"] == pytest.approx((slopes < 0).mean())
    change = np.array(res["per_item"]["change"])
    assert np.allclose(change[:, 2], 0)  # the change at strength 0 is 0 by construction
    row = res["table"][-1]
    assert row["wrong_way"] == pytest.approx((change[:, -1] < 0).mean())
    # items whose matching answer is swapped move in opposite directions along the same vector
    assert np.allclose(change[0::2, -1], -change[1::2, -1], atol=1e-4)
    assert res["table"][2]["kl_mean"] == 0 and res["table"][-1]["kl_mean"] > 0
    assert "anti-steerable" in format_steerability(res)
    from reprkit.app.figures import steerability_figure

    assert len(steerability_figure(res).data) >= 10


def test_the_old_steering_names_still_work_and_warn():
    """``steering.steer`` and ``Direction.steer`` (the docs' names before ``steered`` and ``edit``)
    work for one release, each with a DeprecationWarning naming the new name."""
    import warnings

    from reprkit.steering import steer

    model = tiny_llama()
    d = Direction({1: torch.ones(model.config.hidden_size)})
    ids = torch.tensor([[1, 2, 3]])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with steer(model, d, 2.0, layers=[1]):
            old = model(ids).logits
        edit = d.steer(2.0, 1)
    assert [str(w.message).split(" is now ")[1].split(" ")[0] for w in caught] == [
        "reprkit.steering.steered", "Direction.edit"]
    from reprkit.steering import steered

    with steered(model, d, 2.0, layers=[1]):
        assert torch.equal(old, model(ids).logits)
    assert callable(edit)
