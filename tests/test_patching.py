"""Activation patching (reprkit.patching): exact patching against a hand-written patch, its limits
(everything patched is the clean run, nothing differing patched is the corrupted run), heads,
alignment and refusals, and how far attribution patching agrees with it on a tiny model."""

import pytest
import torch

from reprkit.hooks import capture
from reprkit.patching import attribute, logit_difference, patch
from reprkit.verify import tiny_model


@pytest.fixture(scope="module")
def setup():
    model = tiny_model("llama")
    g = torch.Generator().manual_seed(3)
    clean = torch.randint(3, 256, (1, 6), generator=g)
    corrupt = clean.clone()
    corrupt[0, 1] = (clean[0, 1] + 7) % 256  # one token differs, as in the Eiffel Tower / Colosseum pair
    return model, clean, corrupt, logit_difference(5, 9)


def _by_hand(model, clean, corrupt, metric, point, layer, position, head=None):
    with torch.no_grad(), capture(model, layer, point=point) as c:
        model(input_ids=clean)

    def put(t, name):
        t = t.clone()
        if head is None:
            t[:, position] = c[layer][:, position]
        else:
            t[:, position, head] = c[layer][:, position, head]
        return t

    with torch.no_grad(), capture(model, layer, point=point, edit_output=put):
        return metric(model(input_ids=corrupt).logits).mean().item()


@pytest.mark.parametrize("point", ["resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post", "z"])
def test_each_cell_is_the_corrupted_run_with_that_one_activation_from_the_clean_run(setup, point):
    model, clean, corrupt, metric = setup
    res = patch(model, None, clean, corrupt, metric=metric, points=[point], layers=[1, 3], batch_size=4)
    assert res.values[point].shape == (2, 6)
    for li, layer in enumerate((1, 3)):
        for pos in (0, 1, 5):
            assert res.values[point][li, pos].item() == pytest.approx(
                _by_hand(model, clean, corrupt, metric, point, layer, pos), abs=1e-4)


def test_heads_at_z_and_the_limits_of_the_sweep(setup):
    model, clean, corrupt, metric = setup
    res = patch(model, None, clean, corrupt, metric=metric, points=["z"], layers=[2], heads=True)
    assert res.values["z"].shape == (1, 6, 4)
    assert res.values["z"][0, 4, 2].item() == pytest.approx(_by_hand(model, clean, corrupt, metric, "z", 2, 4, head=2), abs=1e-4)
    # the embeddings at every position are the clean run; positions before the differing token are no change
    full = patch(model, None, clean, corrupt, metric=metric, points=["resid_pre"], layers=[0], positions="all")
    assert full.values["resid_pre"][0, 0].item() == pytest.approx(full.clean, abs=1e-4)
    assert full.normalised()["resid_pre"][0, 0].item() == pytest.approx(1.0, abs=1e-4)
    each = patch(model, None, clean, corrupt, metric=metric, points=["resid_pre"], layers=[0, 2])
    assert each.values["resid_pre"][:, 0].tolist() == pytest.approx([each.corrupt] * 2, abs=1e-5)  # position 0 is equal
    assert each.values["resid_pre"][0, 1].item() == pytest.approx(each.clean, abs=1e-4)  # layer 0, the one token that differs


def test_attribution_is_exact_where_the_metric_is_linear_in_the_activation(setup):
    """With the final norm removed, the logits are linear in the last block's output: attribution
    patching there equals exact patching (as a change from the corrupted run)."""
    model, clean, corrupt, metric = setup
    linear = tiny_model("llama")
    linear.model.norm = torch.nn.Identity()
    exact = patch(linear, None, clean, corrupt, metric=metric, points=["resid_post"], layers=[3])
    approx = attribute(linear, None, clean, corrupt, metric=metric, points=["resid_post"], layers=[3])
    torch.testing.assert_close(approx.values["resid_post"], exact.values["resid_post"] - exact.corrupt, atol=1e-4, rtol=1e-4)
    assert approx.corrupt == pytest.approx(exact.corrupt, abs=1e-5) and approx.clean == pytest.approx(exact.clean, abs=1e-5)


def test_how_far_attribution_agrees_with_patching_on_a_tiny_model(setup):
    """Measured on this tiny Llama (one of 6 tokens differs; 4 layers x 6 positions): the correlation
    of attribution with exact patching is 0.92 at mlp_out, 0.59 at attn_out and z, and -0.17 at
    resid_pre, where swapping a token changes the residual by about its own norm and the first-order
    estimate through the next RMSNorm fails (a known limit of attribution patching). Asserted a little
    below what was measured, so that a broken gradient shows."""
    model, clean, corrupt, metric = setup
    points = ["resid_pre", "attn_out", "mlp_out", "z"]
    exact = patch(model, None, clean, corrupt, metric=metric, points=points)
    approx = attribute(model, None, clean, corrupt, metric=metric, points=points)
    r = {p: torch.corrcoef(torch.stack([(exact.values[p] - exact.corrupt).flatten(), approx.values[p].flatten()]))[0, 1].item()
         for p in points}
    assert r["mlp_out"] > 0.9 and r["attn_out"] > 0.5 and r["z"] > 0.5, r
    assert approx.values["resid_pre"][:, 0].abs().max() == 0  # position 0 is the same in both runs
    heads = attribute(model, None, clean, corrupt, metric=metric, points=["z"], heads=True)
    whole = attribute(model, None, clean, corrupt, metric=metric, points=["z"])
    torch.testing.assert_close(heads.values["z"].sum(-1), whole.values["z"], atol=1e-5, rtol=1e-5)


def test_chosen_positions_are_the_same_cells_as_the_whole_sweep(setup):
    model, clean, corrupt, metric = setup
    every = patch(model, None, clean, corrupt, metric=metric, points=["resid_pre", "z"], layers=[1, 2], heads=True)
    some = patch(model, None, clean, corrupt, metric=metric, points=["resid_pre", "z"], layers=[1, 2], heads=True,
                 positions=[-1, 1])
    assert some.positions == [1, 5] and some.values["z"].shape == (2, 2, 4)
    torch.testing.assert_close(some.values["resid_pre"], every.values["resid_pre"][:, [1, 5]])
    torch.testing.assert_close(some.values["z"], every.values["z"][:, [1, 5]])
    approx = attribute(model, None, clean, corrupt, metric=metric, points=["mlp_out"], positions=[2])
    whole = attribute(model, None, clean, corrupt, metric=metric, points=["mlp_out"])
    torch.testing.assert_close(approx.values["mlp_out"], whole.values["mlp_out"][:, [2]])
    with pytest.raises(ValueError, match="outside the 6 positions"):
        patch(model, None, clean, corrupt, metric=metric, positions=[6])
    with pytest.raises(ValueError, match="'each', 'all' or a list"):
        patch(model, None, clean, corrupt, metric=metric, positions="last")


def test_unequal_lengths_are_refused_or_aligned_from_the_end(setup):
    model, clean, corrupt, metric = setup
    longer = torch.cat([torch.tensor([[4]]), corrupt], dim=1)
    with pytest.raises(ValueError, match="6 tokens and the corrupted 7.*align='end'"):
        patch(model, None, clean, longer, metric=metric)
    res = patch(model, None, clean, longer, metric=metric, layers=[0], align="end")
    assert res.positions == [-6, -5, -4, -3, -2, -1]
    plain = patch(model, None, clean, corrupt, metric=metric, layers=[0])
    # the extra leading token moves every position of the longer prompt by one; the pairing still holds at -5
    assert res.values["resid_pre"][0, 1].item() != pytest.approx(res.corrupt, abs=1e-3)
    assert plain.values["resid_pre"][0, 1].item() == pytest.approx(plain.clean, abs=1e-4)


def test_answers_and_metrics(tokenizer):
    model = tiny_model("llama", vocab_size=len(tokenizer))
    with pytest.raises(ValueError, match="is 4 tokens.*one token"):
        patch(model, tokenizer, "The capital is", "The capital is", answers=(" Paris", " Antananarivo"))
    with pytest.raises(ValueError, match="give answers="):
        patch(model, tokenizer, "a b", "a c")
    with pytest.raises(ValueError, match="cannot patch \\['pattern'\\]"):
        patch(model, tokenizer, "a b", "a c", answers=(" a", " b"), points=["pattern"])
    res = patch(model, tokenizer, "The city of Paris", "The city of Rome", answers=(" is", " was"), layers=[0, 1])
    assert res.tokens[-1] in ("ĠRome", " Rome") and "logit(' is') - logit(' was')" in res.rule
    fig = res.figure("resid_pre")
    assert fig.data[0].type == "heatmap" and len(fig.data[0].z) == 2


def test_the_command_prints_the_grid_and_writes_json_and_html(tiny_folder, tmp_path, capsys):
    import json

    from reprkit.cli import main

    out, html = tmp_path / "p.json", tmp_path / "p.html"
    main(["patch", "--model", str(tiny_folder), "--points", "resid_pre", "z", "--heads", "--layers", "0,2",
          "--positions", "-1", "--json", str(out), "--html", str(html)])
    printed = capsys.readouterr().out
    assert "exact patching; metric logit(' Paris') - logit(' Rome') at the last position" in printed
    res = json.loads(out.read_text())
    assert res["layers"] == [0, 2] and len(res["positions"]) == 1 and len(res["values"]["z"][0][0]) == 4
    assert html.read_text().count("plotly") > 0
    with pytest.raises(SystemExit) as stop:
        main(["patch", "--model", str(tiny_folder), "--corrupt", "The Colosseum is in"])
    assert stop.value.code == 2 and "align='end'" in capsys.readouterr().err
