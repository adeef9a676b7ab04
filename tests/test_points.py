"""Named points inside a block (reprkit.points): what each is, how capture, edits, stop and steering
take them, and what is refused. That they hold on all 23 architectures is the support table's
``points``, ``heads`` and ``point_edits`` columns (tests/test_architectures.py); that those checks fail
on their seeded bugs is tests/test_mutations.py."""

import contextlib

import pytest
import torch

from reprkit.hooks import TraceDict, capture
from reprkit.points import block_layout, head_outputs
from reprkit.verify import tiny_model


def _ids(model, n=7, batch=2):
    return torch.randint(3, model.config.vocab_size, (batch, n), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("arch,proj", [("gpt2", "transformer.h.{}.attn.c_proj"), ("llama", "model.layers.{}.self_attn.o_proj")])
def test_the_heads_through_the_output_projection_sum_to_the_attention_output(arch, proj):
    model = tiny_model(arch)
    ids = _ids(model)
    with torch.no_grad(), capture(model, [0, 2], point="z") as z, TraceDict(model, [proj.format(0), proj.format(2)]) as out:
        model(input_ids=ids)
    for layer in (0, 2):
        o = model.get_submodule(proj.format(layer))
        with torch.no_grad():
            parts = head_outputs(model, layer, z[layer])
            bias = o(torch.zeros(1, z[layer].shape[-2] * z[layer].shape[-1]))
        assert parts.shape == (*ids.shape, 4, 64)
        torch.testing.assert_close(parts.sum(-2) + bias, out[proj.format(layer)].output, atol=1e-5, rtol=1e-5)
        # head h's part is its own slice of the projection's input through the projection
        w = o.weight if arch == "llama" else o.weight.T  # GPT-2's Conv1D stores [in, out]
        torch.testing.assert_close(parts[..., 1, :], z[layer][..., 1, :] @ w[:, 16:32].T, atol=1e-5, rtol=1e-5)


def test_what_the_points_are_on_a_sandwich_norm_a_post_norm_and_a_parallel_block():
    gemma, olmo, neox = (block_layout(tiny_model(a)) for a in ("gemma3", "olmo2", "gpt-neox"))
    assert (gemma.attn_added, gemma.mlp_entry, gemma.mlp_added) == (
        "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm")
    assert (olmo.attn_added, olmo.mlp_entry) == ("post_attention_layernorm", "mlp")
    assert neox.parallel and neox.mlp_entry is None
    assert "refused: a parallel block" in neox.describe()
    assert block_layout(tiny_model("granite")).attn_scale == 0.5  # residual_multiplier
    llama = block_layout(tiny_model("llama"))
    assert (llama.attn_added, llama.mlp_entry, llama.out_proj) == ("self_attn", "post_attention_layernorm", "self_attn.o_proj")


def test_stop_at_a_point_ends_the_forward_there():
    model = tiny_model("llama")
    ran = []
    handles = [model.model.layers[1].mlp.register_forward_hook(lambda *a: ran.append("mlp1")),
               model.model.layers[1].self_attn.register_forward_hook(lambda *a: ran.append("attn1"))]
    try:
        with torch.no_grad(), capture(model, 1, point="attn_out", stop=True) as cap:
            model(input_ids=_ids(model))
    finally:
        for h in handles:
            h.remove()
    assert ran == ["attn1"] and cap[1].shape == (2, 7, 64)


def test_refusals_name_the_fix():
    neox, llama = tiny_model("gpt-neox"), tiny_model("llama")
    with pytest.raises(ValueError, match="parallel block.*resid_pre, attn_out or mlp_out"):
        capture(neox, 1, point="resid_mid")
    with pytest.raises(ValueError, match="unknown point 'attn'; choose from resid_pre"):
        capture(llama, 1, point="attn")
    with pytest.raises(ValueError, match="also names module"):
        capture(llama, ["model.layers.1.mlp", 2], point="z")
    with pytest.raises(ValueError, match="can be read, not edited"):
        capture(llama, 1, point="pattern", edit_output=lambda t, n: t)
    with pytest.raises(ValueError, match="attn_implementation='eager'"), torch.no_grad(), capture(llama, 1, point="pattern"):
        llama(input_ids=_ids(llama))


def test_patterns_under_eager_attention_are_causal_probabilities():
    model = tiny_model("llama")
    model.set_attn_implementation("eager")
    with torch.no_grad(), capture(model, [0, 3], point="pattern") as cap:
        model(input_ids=_ids(model))
    w = cap[3]
    assert w.shape == (2, 4, 7, 7)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 7))
    assert w.triu(1).abs().max() == 0


def test_a_point_in_the_graph_carries_gradients_and_a_lora_model_keeps_its_points():
    import peft

    from reprkit.train import lora_config

    model = peft.get_peft_model(tiny_model("llama"), lora_config(tiny_model("llama"), r=4))
    lay = block_layout(model)
    assert lay.out_proj == "self_attn.o_proj"  # the adapter's wrapper, not its lora_B
    with capture(model, 2, point="mlp_out", detach=False) as cap:
        model(input_ids=_ids(model))
    cap[2].pow(2).sum().backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n and "layers.2.mlp" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    with torch.no_grad(), capture(model, 2, point="z") as z, TraceDict(model, ["base_model.model.model.layers.2.self_attn.o_proj"]) as o:
        model(input_ids=_ids(model))
    o_out = o["base_model.model.model.layers.2.self_attn.o_proj"].output
    with torch.no_grad():
        torch.testing.assert_close(head_outputs(model, 2, z[2]).sum(-2), o_out, atol=1e-5, rtol=1e-5)


def test_an_edit_of_resid_mid_reaches_the_mlp_and_the_residual():
    model = tiny_model("gemma3")
    ids = _ids(model)
    v = torch.randn(64)
    with torch.no_grad(), capture(model, 1, point="resid_mid") as plain, capture(model, 1) as post:
        model(input_ids=ids)
    with torch.no_grad(), capture(model, 1, point="resid_mid", edit_output=lambda t, n: t + v) as mid, \
            capture(model, 1, point="mlp_out") as mlp, capture(model, 1) as post2:
        model(input_ids=ids)
    torch.testing.assert_close(mid[1], plain[1] + v, atol=1e-5, rtol=1e-5)
    # the block's output is the edited residual plus the MLP's answer to it
    torch.testing.assert_close(post2[1], mid[1] + mlp[1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(post2[1], post[1] + v, atol=1e-3)  # the MLP saw the edit


def test_steering_at_a_point_inside_the_block():
    from types import SimpleNamespace

    from reprkit.steering import steered

    model = tiny_model("llama")
    ids = _ids(model)
    v = torch.randn(64)
    d = SimpleNamespace(vectors={1: v}, info={})
    with torch.no_grad(), capture(model, 1, point="attn_out") as plain:
        model(input_ids=ids)
    with torch.no_grad(), steered(model, d, 3.0, point="attn_out"), capture(model, 1, point="attn_out") as cap:
        model(input_ids=ids)
    torch.testing.assert_close(cap[1], plain[1] + 3.0 * v, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="per head"), contextlib.ExitStack() as st:
        st.enter_context(steered(model, d, 3.0, point="z"))
