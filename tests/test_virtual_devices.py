"""reprkit's capabilities on a model on an accelerator and on one split over two by a device_map,
checked without a GPU: ``reprkit.virtual_devices`` gives every tensor a virtual device and fails on
an operation that mixes two without an explicit move. The harness is first shown to fail on the
bugs it exists for; then every capability runs under it, on the whole-model placement
(``split=False``: nothing moves inputs for you) and the split one (blocks on two devices)."""

import dataclasses

import pytest
import torch

from reprkit import data as D
from reprkit.virtual_devices import VirtualDeviceError, device_of, put, virtual_devices

from .conftest import FIXTURES, TINY, tiny_llama

PLACEMENTS = [pytest.param(False, id="one-device"), pytest.param(True, id="device-map")]


# ---------------------------------------------------------------- the harness catches what it exists for


def test_a_host_tensor_meeting_a_device_tensor_fails():
    model = tiny_llama()
    ids = torch.randint(0, TINY["vocab_size"], (2, 5))
    with virtual_devices(model, split=False) as vd, torch.no_grad():
        with pytest.raises(VirtualDeviceError, match="mixes tensors on"):
            model(input_ids=ids)  # a CPU batch fed to a model on the accelerator
        out = model(input_ids=ids.to(vd.input_device))
        assert device_of(out.logits) == "privateuseone:0"
        with pytest.raises(VirtualDeviceError, match="numpy"):
            out.logits.numpy()
        out.logits.cpu().numpy()
        out.logits[torch.tensor([0])]  # a host index into a device tensor is allowed, as on CUDA
        assert out.logits.device == torch.device("privateuseone:0")


def test_a_mask_beside_the_input_meets_states_on_the_second_device():
    """Under a device map the last blocks' states are on the second device: a mask built beside
    the input (first device) and used on them without a move fails, and with one passes."""
    from reprkit.hooks import capture

    model = tiny_llama()
    ids = torch.randint(0, TINY["vocab_size"], (2, 5))
    with virtual_devices(model) as vd:
        batch = {"input_ids": ids.to(vd.input_device), "attention_mask": torch.ones(2, 5, dtype=torch.long).to(vd.input_device)}
        with torch.no_grad(), capture(model, 3) as cap:
            model(**batch)
        assert vd.block_devices == ["privateuseone:0"] * 2 + ["privateuseone:1"] * 2
        assert device_of(cap[3]) == "privateuseone:1"
        with pytest.raises(VirtualDeviceError):
            (cap[3] * batch["attention_mask"][..., None]).sum()
        (cap[3] * batch["attention_mask"].to(cap[3].device)[..., None]).sum()


def test_the_harness_fails_on_the_device_bugs_fixed_here(monkeypatch):
    """Two bugs of the review, put back: a mask not moved in an edit, a collated CPU batch not
    moved in scoring. Each fails under the harness."""
    import reprkit.edits as E
    import reprkit.evaluate as EV
    from reprkit.hooks import capture

    model = tiny_llama()
    ids = torch.randint(0, TINY["vocab_size"], (2, 5))
    mask = torch.zeros(2, 5, dtype=torch.long)
    mask[:, -1] = 1

    def unmoved(fn, mask):
        def edit(h, name=""):
            return torch.where(mask.bool().unsqueeze(-1), fn(h).to(h.dtype), h)
        return edit

    monkeypatch.setattr(E, "_masked", unmoved)
    with virtual_devices(model) as vd, torch.no_grad():
        with pytest.raises(VirtualDeviceError):
            with capture(model, 3, edit_output=E.add_vector(torch.ones(TINY["hidden_size"]), 1.0, mask)):
                model(input_ids=ids.to(vd.input_device))
    monkeypatch.undo()
    monkeypatch.setattr(EV, "input_device", lambda model: torch.device("cpu"))  # batches left on the host
    items = _ranked_items()
    with virtual_devices(model, split=False), pytest.raises(VirtualDeviceError):
        EV.ranked_logps(model, items, 0, base=False, shared_prompt=False)


# ---------------------------------------------------------------- every capability under it


def _ranked_items(n: int = 5, seed: int = 3) -> list[dict]:
    g = torch.Generator().manual_seed(seed)

    def ids(lo, hi):
        return torch.randint(3, TINY["vocab_size"], (int(torch.randint(lo, hi, (1,), generator=g)),), generator=g).tolist()

    return [{"prompt_ids": ids(3, 12), "responses_ids": [ids(2, 7) for _ in range(2 + i % 2)]} for i in range(n)]


@pytest.fixture(scope="module")
def vocab_model(tokenizer):
    """A tiny random Llama over the default tokenizer's vocabulary, for the text-level capabilities."""
    return tiny_llama(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, initializer_range=0.3)


@pytest.mark.parametrize("split", PLACEMENTS)
def test_capture_stop_edits_and_generation(split):
    from reprkit import edits
    from reprkit.hooks import capture, forward_hidden_states

    model = tiny_llama()
    ids = torch.randint(3, TINY["vocab_size"], (2, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(2, 6, dtype=torch.long)  # built on the host, as a user does
    mask[:, -1] = 1
    v = torch.randn(TINY["hidden_size"])
    plain = forward_hidden_states(model, {"input_ids": ids}, [1, 3])
    with virtual_devices(model, split=split) as vd, torch.no_grad():
        batch = {"input_ids": ids.to(vd.input_device)}
        states = forward_hidden_states(model, batch, [1, 3])
        for k in (1, 3):
            torch.testing.assert_close(states[k].cpu(), plain[k])
        with capture(model, 2, stop=True) as cap:
            model(**batch)
        with capture(model, 3, edit_output=edits.chain(edits.add_vector(v, 2.0, mask), edits.ablate(v, mask),
                                                      edits.steer_direction(v, 0.5, mask))):
            model(**batch)
        with capture(model, 1, edit_output=edits.add_vector(v, 2.0)):
            model.generate(**batch, attention_mask=torch.ones_like(ids).to(vd.input_device), max_new_tokens=3,
                           do_sample=False, pad_token_id=0)
    assert cap[2] is not None


def _model(arch: str):
    """A tiny Llama, or a tiny architecture of the support table (gemma3: sliding-window caches,
    tied head; gpt-oss: experts and attention sinks)."""
    if arch == "llama":
        return tiny_llama()
    from reprkit.verify import tiny_model

    return tiny_model(arch)


ARCHS = ["llama", "gemma3", "gpt-oss"]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("split", PLACEMENTS)
def test_scoring_both_layouts_perplexity_and_accuracy(split, arch):
    from reprkit.evaluate import item_accuracy, perplexity_ratio, preference_accuracy, ranked_logps

    model = _model(arch)
    items = _ranked_items()
    pairs = [{"chosen_prompt_ids": e["prompt_ids"], "rejected_prompt_ids": e["prompt_ids"],
              "chosen_ids": e["responses_ids"][0], "rejected_ids": e["responses_ids"][1]} for e in items]
    want = ranked_logps(model, items, 0, base=False, shared_prompt=False)["policy"]
    with virtual_devices(model, split=split):
        for shared in (True, False):
            got = ranked_logps(model, items, 0, base=False, shared_prompt=shared)["policy"]
            assert device_of(got["logps"]) == "cpu" and torch.equal(got["valid"], want["valid"])
            torch.testing.assert_close(got["logps"][got["valid"]], want["logps"][want["valid"]], rtol=1e-4, atol=1e-4)
        item_accuracy(model, items, 0, base=False)
        preference_accuracy(model, pairs, 0, base=False)
        perplexity_ratio(model, pairs, 0, frozen_nll=[1.0] * len(pairs))


@pytest.mark.parametrize("split", PLACEMENTS)
def test_reading_steering_calibration_the_lens_and_behaviour(split, vocab_model, tokenizer):
    from reprkit.behaviour import behaviour_rate, load_behaviour
    from reprkit.directions import from_pairs, from_prompts
    from reprkit.inspection import layer_table
    from reprkit.lens import logit_lens
    from reprkit.steerability import steerability
    from reprkit.steering import calibrate_strength, steered

    model = vocab_model
    items = D.load_items("embedded:arithmetic", "train", limit=6)
    with virtual_devices(model, split=split) as vd, torch.no_grad():
        d = from_pairs(model, tokenizer, items, layers=[1, 3])
        for method in ("pca", "probe"):
            from_pairs(model, tokenizer, items, layers=[3], method=method)
        from_prompts(model, tokenizer, ["yes a", "yes b"], ["no a", "no b"], layers=[1, 3])
        assert device_of(d.vectors[3]) == "cpu"  # a read direction is for analysis: on the host
        cal = calibrate_strength(model, tokenizer, d, ["What is 2 + 2?", "Hello"], layer=[1, 3], kl=0.5)
        enc = tokenizer(["What is 2 + 2?"], return_tensors="pt")
        with steered(model, d, cal["strength"], layers="1,3"):
            model(**{k: v.to(vd.input_device) for k, v in enc.items()})
        logit_lens(model, tokenizer, ["The capital of France is"], layers=[1, 3], target=" Paris")
        layer_table(model, tokenizer, ["a b", "c d e"], layers=[0, 3], chat=False)
        behaviour = load_behaviour(FIXTURES / "anthropic-evals/advanced-ai-risk/corrigible-neutral-HHH.jsonl", limit=3)
        behaviour_rate(model, tokenizer, behaviour, base=False)
        steerability(model, tokenizer, d, behaviour, [-1.0, 1.0], layers=[3], kl_prompts=2)


LOSS_CASES = [("llama", name) for name in ["dpo", "ipo", "dr-dpo", "reprpo", "reprpo-direction-only", "reroute",
                                          "prefvec", "prefvec-hinges", "plackett-luce"]] + [
    (arch, name) for arch in ("gemma3", "gpt-oss") for name in ("dpo", "reprpo")]


@pytest.mark.parametrize("split", PLACEMENTS)
@pytest.mark.parametrize("arch,name", LOSS_CASES)
def test_every_loss_steps_on_both_layouts(split, arch, name):
    """A training step of every loss (forward, loss, backward, tracking, optimiser step), in the
    concatenated and the shared-prompt layout, with a batch split in two pieces (whole-batch totals)."""
    from peft import LoraConfig, get_peft_model

    from reprkit.config import preset
    from reprkit.train import forward_pair_batch, forward_ranked_batch, only_layers, plan_layers, track
    from reprkit.training.step import batch_totals

    model = get_peft_model(_model(arch), LoraConfig(r=2, target_modules="all-linear", init_lora_weights=False)).train()
    loss = preset(name).loss_fn()
    ranked = getattr(loss, "ranked", False)
    items = _ranked_items(4)
    loss_layers, layers, _ = plan_layers(model, loss)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    with virtual_devices(model, split=split) as vd:
        def on(batch):
            return {k: v.to(vd.input_device) for k, v in batch.items()}

        if ranked:
            batch = on(D.collate_ranked(items, 0))
            layouts = [forward_ranked_batch(model, batch, layers, loss, 0.5)]
        else:
            rows = [{"chosen_prompt_ids": e["prompt_ids"], "rejected_prompt_ids": e["prompt_ids"],
                     "chosen_ids": e["responses_ids"][0], "rejected_ids": e["responses_ids"][1]} for e in items]
            pieces = [on(D.collate(rows[:2], 0) | {"index": torch.arange(2)}),
                      on(D.collate(rows[2:], 0) | {"index": torch.arange(2, 4)})]
            totals = batch_totals(model, pieces, layers, loss_layers, loss)
            layouts = [dataclasses.replace(forward_pair_batch(model, p, layers, loss, 0.5, shared_prompt=shared),
                                           totals=totals, pieces=2 if totals else 1)
                       for p in pieces for shared in (False, True)]
        for inputs in layouts:
            value, terms = loss(only_layers(inputs, loss_layers))
            value.backward()
            track(inputs, layers)
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()


@pytest.mark.parametrize("split", PLACEMENTS)
def test_points_inside_blocks_and_patching(split):
    from reprkit.hooks import capture
    from reprkit.patching import attribute, logit_difference, patch
    from reprkit.points import head_outputs

    model = tiny_llama()
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(3, TINY["vocab_size"], (1, 6), generator=g)
    corrupt = clean.clone()
    corrupt[0, 2] = (clean[0, 2] + 5) % TINY["vocab_size"]
    metric = logit_difference(3, 4)
    points = ["resid_pre", "attn_out", "resid_mid", "mlp_out", "z"]
    want = patch(model, None, clean, corrupt, metric=metric, points=points, layers=[1, 3])
    want_a = attribute(model, None, clean, corrupt, metric=metric, points=points, layers=[1, 3])
    mask = torch.zeros(1, 6, dtype=torch.long)
    mask[:, -1] = 1
    from reprkit import edits

    with virtual_devices(model, split=split) as vd:
        with torch.no_grad(), capture(model, [1, 3], point="z") as z, \
                capture(model, 3, point="resid_mid", edit_output=edits.add_vector(torch.ones(TINY["hidden_size"]), 1.0, mask)):
            model(input_ids=clean.to(vd.input_device))
            head_outputs(model, 3, z[3])
        got = patch(model, None, clean, corrupt, metric=metric, points=points, layers=[1, 3])
        got_a = attribute(model, None, clean, corrupt, metric=metric, points=points, layers=[1, 3])
    for p in points:
        torch.testing.assert_close(got.values[p], want.values[p], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got_a.values[p], want_a.values[p], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("split", PLACEMENTS)
def test_the_frozen_model_cache_on_devices(split, tmp_path):
    from peft import LoraConfig, get_peft_model

    from reprkit.config import preset
    from reprkit.frozen_cache import ReferenceCache
    from reprkit.train import forward_pair_batch, only_layers, plan_layers

    model = get_peft_model(tiny_llama(), LoraConfig(r=2, target_modules="all-linear", init_lora_weights=False))
    items = _ranked_items(4)
    rows = [{"chosen_prompt_ids": e["prompt_ids"], "rejected_prompt_ids": e["prompt_ids"],
             "chosen_ids": e["responses_ids"][0], "rejected_ids": e["responses_ids"][1]} for e in items]
    for name in ("reprpo", "dpo"):
        loss = preset(name).loss_fn()
        loss_layers, layers, _ = plan_layers(model, loss)
        with virtual_devices(model, split=split) as vd:
            cache = ReferenceCache.open(tmp_path / name, model, rows, layers, loss.needs_logps, {"t": name}, 0, "tiny")
            batch = {k: v.to(vd.input_device) for k, v in (D.collate(rows, 0) | {"index": torch.arange(4)}).items()}
            live = loss(only_layers(forward_pair_batch(model, batch, layers, loss, 0.0), loss_layers))[0]
            cached = loss(only_layers(forward_pair_batch(model, batch, layers, loss, 0.0, reference=cache), loss_layers))[0]
        torch.testing.assert_close(cached.detach().cpu(), live.detach().cpu(), rtol=1e-4, atol=1e-5)


def test_put_says_where_a_tensor_is():
    t = put(torch.ones(2), "privateuseone:1")
    assert device_of(t) == "privateuseone:1"


INTERVENTION_CASES = [(kind, name) for kind in ("vector", "reft") for name in ("dpo", "reprpo", "bipo")]


@pytest.mark.parametrize("split", PLACEMENTS)
@pytest.mark.parametrize("kind,name", INTERVENTION_CASES)
def test_interventions_train_score_and_generate_on_both_layouts(split, kind, name):
    """A vector (response positions) and a LoReFT (first and last prompt tokens) at blocks 1 and 2,
    attached after placement as ``reprkit train`` does (so under the device map one sits on each
    device): a training step of each sign of the loss in both layouts, scoring on both paths, and
    generation. The trained parameters stay beside their blocks and receive gradients."""
    from reprkit import interventions as I
    from reprkit.config import preset
    from reprkit.evaluate import ranked_logps
    from reprkit.train import forward_pair_batch, only_layers, plan_layers

    model = tiny_llama()
    items = _ranked_items(4)
    rows = [{"chosen_prompt_ids": e["prompt_ids"], "rejected_prompt_ids": e["prompt_ids"],
             "chosen_ids": e["responses_ids"][0], "rejected_ids": e["responses_ids"][1]} for e in items]
    loss = preset(name).loss_fn()
    with virtual_devices(model, split=split) as vd:
        iv = (I.VectorIntervention([1, 2], TINY["hidden_size"], positions="response") if kind == "vector" else
              I.LoReFTIntervention([1, 2], TINY["hidden_size"], positions="f1+l1", rank=2))
        with torch.no_grad():  # off zero (DPO's gradient at a zero edit is not zero, but ReprPO's may be); R as made
            for n, p in iv.named_parameters():
                if "rotate" not in n:
                    p.normal_(0, 0.1)
        I.attach(model, iv)
        for n, p in iv.named_parameters():  # under the device map block 1 is on the first device, 2 on the second
            assert device_of(p) == vd.block_devices[int(n.split(".")[1])], n
        loss_layers, layers, _ = plan_layers(model, loss)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        batch = {k: v.to(vd.input_device) for k, v in (D.collate(rows, 0) | {"index": torch.arange(4)}).items()}
        for shared in (False, True):
            frozen = None
            for sign in loss.signs(0) if hasattr(loss, "signs") else (1.0,):
                inputs = forward_pair_batch(model, batch, layers, loss, 0.5, shared_prompt=shared, sign=sign, frozen=frozen)
                frozen = inputs.frozen_pass
                value, _ = loss(only_layers(inputs, loss_layers))
                value.backward()
        no_grad = {n.split(".")[1] for n, p in iv.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)}
        # ReprPO reads block 2's output at the completion, which a LoReFT at block 2's prompt tokens cannot reach
        assert no_grad == ({"2"} if (kind, name) == ("reft", "reprpo") else set()), no_grad
        opt.step()
        with torch.no_grad():
            for shared in (False, True):
                ranked_logps(model, items, 0, base=True, shared_prompt=shared)
            ids = torch.randint(3, TINY["vocab_size"], (2, 6)).to(vd.input_device)
            attn = torch.ones(2, 6, dtype=torch.long).to(vd.input_device)
            with I.generating(model, attn):
                model.generate(input_ids=ids, attention_mask=attn, max_new_tokens=3, do_sample=False, pad_token_id=0)
        I.detach(model)
