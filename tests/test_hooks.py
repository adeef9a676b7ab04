import pytest
import torch
from torch import nn

from reprkit import edits
from reprkit.geometry import cosine, project
from reprkit.hooks import Trace, TraceDict, capture, forward_hidden_states


def hook_counts(model):
    return {
        name: (len(m._forward_hooks), len(m._forward_pre_hooks))
        for name, m in model.named_modules()
    }


def test_capture_equals_hidden_states_except_last(model, inputs):
    with capture(model, "range(0,4)") as cap:
        out = model(**inputs, output_hidden_states=True)
    hs = out.hidden_states
    assert len(hs) == 5
    for i in range(3):
        torch.testing.assert_close(cap[i], hs[i + 1], rtol=0, atol=0)
    # the last entry of hidden_states has the final norm applied; the capture is the raw block output
    assert not torch.allclose(cap[3], hs[4])
    torch.testing.assert_close(model.model.norm(cap[3]), hs[4], rtol=0, atol=0)


def test_analysis_capture_is_detached_loss_capture_is_not(model, inputs):
    with capture(model, 1) as cap:
        model(**inputs)
    assert cap[1].grad_fn is None and not cap[1].requires_grad
    with capture(model, 1, detach=False) as cap:
        model(**inputs)
    assert cap[1].grad_fn is not None


def test_capture_device_dtype(model, inputs):
    with capture(model, 1, device="cpu", dtype=torch.bfloat16) as cap:
        model(**inputs)
    assert cap[1].dtype == torch.bfloat16
    with pytest.raises(ValueError, match="analysis captures"):
        capture(model, 1, detach=False, dtype=torch.bfloat16)


def test_stop_skips_later_modules(model, inputs):
    calls = {}
    handles = [
        m.register_forward_hook(lambda mod, a, o, n=n: calls.__setitem__(n, calls.get(n, 0) + 1))
        for n, m in model.named_modules()
        if n in {f"model.layers.{i}" for i in range(4)} | {"lm_head", "model.norm"}
    ]
    try:
        with capture(model, [0, 1], stop=True) as cap:
            model(**inputs)
            pytest.fail("the forward should have stopped")  # never reached
    finally:
        for h in handles:
            h.remove()
    assert calls == {"model.layers.0": 1, "model.layers.1": 1}
    assert cap[1] is not None


def test_forward_hidden_states_matches_full_forward(model, inputs):
    hs = forward_hidden_states(model, inputs, [0, 2])
    full = model(**inputs, output_hidden_states=True).hidden_states
    torch.testing.assert_close(hs[0], full[1], rtol=0, atol=0)
    torch.testing.assert_close(hs[2], full[3], rtol=0, atol=0)


def test_hooks_removed_after_exception(model, inputs):
    before = hook_counts(model)
    with pytest.raises(RuntimeError, match="boom"):
        with TraceDict(model, ["model.layers.0", "model.layers.2.mlp"], retain_input=True):
            assert hook_counts(model) != before
            raise RuntimeError("boom")
    assert hook_counts(model) == before


def test_hooks_removed_when_forward_raises(model, inputs):
    before = hook_counts(model)

    def bad_edit(h, name):
        raise KeyError("edit failed")

    with pytest.raises(KeyError):
        with capture(model, [1, 2], edit_output=bad_edit):
            model(**inputs)
    assert hook_counts(model) == before


def test_nested_contexts_swallow_only_their_own_stop(model, inputs):
    before = hook_counts(model)
    with capture(model, 3) as outer:
        with capture(model, 1, stop=True) as inner:
            model(**inputs)
        assert inner[1] is not None
        assert outer[3] is None  # the inner stop ended the forward before layer 3
        model(**inputs)
        assert outer[3] is not None
    # the outer stop propagates through an inner context that does not own it
    with capture(model, 1, stop=True) as outer:
        with capture(model, 3) as inner:
            model(**inputs)
        pytest.fail("outer stop must propagate through the inner context")
    assert outer[1] is not None and inner[3] is None
    assert hook_counts(model) == before


def test_single_trace_retains_keyword_input(model, inputs):
    with Trace(model, "model.layers.2", retain_input=True) as t:
        model(**inputs)
    with capture(model, 1) as cap:
        model(**inputs)
    torch.testing.assert_close(t.input, cap[1])
    assert t.calls == 1

    class Block(nn.Module):
        def forward(self, hidden_states=None):
            return (hidden_states * 2, "extra")

    block = Block()
    x = torch.randn(1, 3, 4)
    with Trace(block, retain_input=True) as t:
        out = block(hidden_states=x)
    assert torch.equal(t.input, x) and torch.equal(t.output, x * 2)
    assert out[1] == "extra"


def test_edit_tuple_output_keeps_the_rest():
    class Block(nn.Module):  # transformers 4.x style: blocks return tuples
        def forward(self, x):
            return (x + 1, "cache")

    block = Block()
    with Trace(block, edit_output=lambda h, name: h * 0):
        out = block(torch.ones(2, 3))
    assert torch.equal(out[0], torch.zeros(2, 3)) and out[1] == "cache"


def test_ablate_zeroes_projection_and_changes_logits(model, inputs):
    direction = torch.randn(32)
    base = model(**inputs).logits
    with capture(model, 1, edit_output=edits.ablate(direction)) as cap:
        edited = model(**inputs).logits
    proj = (cap[1] @ (direction / direction.norm()))
    assert proj.abs().max() < 1e-5
    assert not torch.allclose(base, edited)


def test_add_vector_changes_next_layer_only_where_masked(model, inputs):
    v = torch.randn(32)
    with capture(model, [1, 2]) as before:
        model(**inputs)
    mask = torch.zeros(2, 7, dtype=torch.bool)
    mask[:, -1] = True
    with TraceDict(model, ["model.layers.1"], edit_output=edits.add_vector(v, 3.0, mask=mask)):
        with capture(model, [1, 2]) as after:
            model(**inputs)
    torch.testing.assert_close(after[1][:, -1], before[1][:, -1] + 3.0 * v)
    torch.testing.assert_close(after[1][:, :-1], before[1][:, :-1], rtol=0, atol=0)
    assert not torch.allclose(after[2][:, -1], before[2][:, -1])
    # causal: earlier positions of the next layer are untouched
    torch.testing.assert_close(after[2][:, :-1], before[2][:, :-1])


def test_direction_and_magnitude_edits(model, inputs):
    with capture(model, 1) as ref:
        model(**inputs)
    v = torch.randn(32)
    with capture(model, 1, edit_output=edits.steer_direction(v, 1.0)) as cap:
        model(**inputs)
    torch.testing.assert_close(cap[1].norm(dim=-1), ref[1].norm(dim=-1))
    assert (cosine(cap[1], v) > cosine(ref[1], v)).all()
    with capture(model, 1, edit_output=edits.set_magnitude(5.0)) as cap:
        model(**inputs)
    torch.testing.assert_close(cap[1].norm(dim=-1), torch.full((2, 7), 5.0))
    torch.testing.assert_close(cosine(cap[1], ref[1]), torch.ones(2, 7))
    with pytest.raises(ValueError, match=r"\[batch, seq\] mask"):
        with capture(model, 1, edit_output=edits.add_vector(v, mask=torch.ones(3, 3))):
            model(**inputs)


def test_steering_during_generate(model, inputs):
    v = torch.randn(32) * 10
    ids = inputs["input_ids"][:1]
    plain = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
    with capture(model, 1, edit_output=edits.add_vector(v)):
        steered = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert not torch.equal(plain, steered)
    assert torch.equal(plain, model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0))


def _lora(model):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"]))
    for n, p in peft_model.named_parameters():
        if "lora_B" in n:
            nn.init.normal_(p, std=0.1)
    return peft_model


def _train_copy(checkpointing: str | None):
    from reprkit.models import enable_gradient_checkpointing

    from .conftest import tiny_llama

    peft_model = _lora(tiny_llama())
    peft_model.train()
    if checkpointing:
        enable_gradient_checkpointing(peft_model, use_reentrant=checkpointing == "reentrant")
    return peft_model


@pytest.mark.parametrize("checkpointing", ["non-reentrant", "reentrant"])
def test_gradients_reach_lora_through_loss_capture(inputs, checkpointing):
    grads = {}
    for mode in (None, checkpointing):
        peft_model = _train_copy(mode)
        block = "base_model.model.model.layers.2"
        inner = "base_model.model.model.layers.1.mlp"
        with Trace(peft_model, inner) as sub:  # open during backward: sees any recompute
            with TraceDict(peft_model, [block], detach=False, stop=True) as ret:
                peft_model(**inputs, use_cache=False)
            ret[block].output.pow(2).mean().backward()
        # one capture per module per forward, also after the backward recomputed checkpointed blocks
        assert ret[block].calls == 1 and sub.calls == 1
        g = {n: p.grad.clone() for n, p in peft_model.named_parameters() if "lora_" in n and p.grad is not None}
        assert any(v.abs().sum() > 0 for v in g.values())
        assert any("layers.2" in n for n in g) and not any("layers.3" in n for n in g)
        grads[mode] = g
    for n, g in grads[checkpointing].items():
        torch.testing.assert_close(g, grads[None][n], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("checkpointing", ["non-reentrant", "reentrant"])
def test_edits_are_replayed_in_checkpoint_recompute(inputs, checkpointing):
    v = torch.randn(32)
    results = []
    for mode in (None, checkpointing):
        peft_model = _train_copy(mode)
        name = "base_model.model.model.layers.1.self_attn"
        with TraceDict(peft_model, [name], edit_output=edits.add_vector(v)):
            loss = peft_model(**inputs, use_cache=False).logits.pow(2).mean()
            loss.backward()
        results.append([p.grad.clone() for n, p in peft_model.named_parameters() if "lora_" in n])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_project_helper_consistent_with_ablate():
    h = torch.randn(2, 3, 8)
    d = torch.randn(8)
    assert torch.allclose(edits.ablate(d)(h) + project(h, d), h, atol=1e-6)


def test_checkpointing_recomputes_inside_a_block_but_not_the_block_hook(inputs):
    """What enable_gradient_checkpointing's docstring says, against the pinned transformers: a hook on
    a block runs once (the block's forward is checkpointed, not its __call__); a hook inside it runs
    again in the recompute."""
    peft_model = _train_copy("non-reentrant")
    blocks = peft_model.base_model.model.model.layers
    counts = {"block": 0, "inside": 0, "last": 0}

    def count(key):
        def hook(module, args, output):
            counts[key] += 1
        return hook

    handles = [blocks[1].register_forward_hook(count("block")), blocks[1].self_attn.register_forward_hook(count("inside")),
               blocks[1].mlp.register_forward_hook(count("last"))]
    try:
        peft_model(**inputs, use_cache=False).logits.pow(2).mean().backward()
    finally:
        for h in handles:
            h.remove()
    # torch stops a recompute once the saved tensors are back: the block's last sub-module (its MLP)
    # is not run to its end again, so its hook fires once
    assert counts == {"block": 1, "inside": 2, "last": 1}


def test_the_one_private_torch_call_tells_a_backward_recompute_from_a_forward():
    """``hooks._in_backward`` is reprkit's only use of a private torch API
    (``torch._C._current_graph_task_id``): False in a forward, True while a checkpointed block is
    recomputed in the backward pass. If a torch release changes it, this test says so first."""
    import torch.utils.checkpoint as cp

    from reprkit import hooks

    seen = []
    lin = torch.nn.Linear(3, 3)

    def body(x):
        seen.append(hooks._in_backward())
        return lin(x)

    x = torch.randn(2, 3, requires_grad=True)
    assert hooks._in_backward() is False
    cp.checkpoint(body, x, use_reentrant=False).sum().backward()
    assert seen == [False, True]
