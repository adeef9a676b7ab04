import pytest
import torch

from reprkit.evaluate import item_accuracy, ranked_logps
from reprkit.shared_prompt import length_batches

from .conftest import TINY, tiny_llama


def _items(seed: int, n: int = 9) -> list[dict]:
    g = torch.Generator().manual_seed(seed)

    def ids(lo, hi):
        return torch.randint(1, TINY["vocab_size"], (int(torch.randint(lo, hi, (1,), generator=g)),), generator=g).tolist()

    return [{"prompt_ids": ids(1, 30), "responses_ids": [ids(1, 20) for _ in range(int(torch.randint(2, 5, (1,), generator=g)))]}
            for _ in range(n)]


def _assert_same(a: dict, b: dict, tol: float) -> None:
    assert torch.equal(a["valid"], b["valid"])
    v = a["valid"]
    assert torch.equal(a["n_tokens"][v], b["n_tokens"][v])
    torch.testing.assert_close(a["logps"][v].double(), b["logps"][v].double(), rtol=0, atol=tol)


@pytest.mark.parametrize("budget", [64, 100_000])
def test_shared_prompt_equals_one_sequence_per_response_float64(budget, monkeypatch):
    model = tiny_llama().double()
    items = _items(0)
    import reprkit.shared_prompt as S

    monkeypatch.setattr(S.shared_prompt_logps, "__defaults__", (budget, 64))
    shared = ranked_logps(model, items, 0, batch_size=4, base=False, shared_prompt=True)["policy"]
    concat = ranked_logps(model, items, 0, batch_size=4, base=False, shared_prompt=False)["policy"]
    _assert_same(shared, concat, 1e-9)
    # and the result is not trivially equal: responses differ
    assert shared["logps"][shared["valid"]].std() > 0.1


def test_shared_prompt_with_adapter_on_and_off():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_llama().double(), LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    items = _items(1)
    shared = ranked_logps(model, items, 0, batch_size=3, base=True, shared_prompt=True)
    concat = ranked_logps(model, items, 0, batch_size=3, base=True, shared_prompt=False)
    for name in ("policy", "base"):
        _assert_same(shared[name], concat[name], 1e-9)
    # the adapter changes the scores, so "on" and "off" were really two different passes
    v = shared["policy"]["valid"]
    assert (shared["policy"]["logps"][v] - shared["base"]["logps"][v]).abs().max() > 1e-3


def test_length_batches_cover_every_item_once_within_budget():
    items = _items(2, n=40)
    batches = length_batches(items, token_budget=300, max_items=8)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(40))
    for b in batches:
        assert len(b) <= 8
        p = max(len(items[i]["prompt_ids"]) for i in b)
        r = sum(len(x) for i in b for x in items[i]["responses_ids"])
        assert len(b) == 1 or len(b) * p + r <= 300
    prompts = [len(items[i]["prompt_ids"]) for b in batches for i in b]
    assert prompts == sorted(prompts)  # batches of similar prompt length


def test_length_batches_bound_the_prompt_padding():
    items = _items(2, n=40)
    batches = length_batches(items, token_budget=10**6, max_items=64, max_waste=0.1)
    assert sorted(i for b in batches for i in b) == list(range(40))
    for b in batches:
        lengths = [len(items[i]["prompt_ids"]) for i in b]
        assert len(b) == 1 or len(b) * max(lengths) <= 1.1 * sum(lengths)
    assert 1 < len(batches) < 40
    assert len(length_batches(items, token_budget=10**6, max_items=64, max_waste=10.0)) == 1


def test_chunk_cache_rows_leave_the_batch_cache_as_it_was():
    from transformers import DynamicCache

    from reprkit.shared_prompt import _rows_of, cache_kwargs

    model = tiny_llama()
    ids = torch.randint(3, 100, (4, 7), generator=torch.Generator().manual_seed(0))
    cache = DynamicCache(config=model.config)
    model(input_ids=ids, use_cache=True, **cache_kwargs(model, cache))  # filled in place, under either keyword
    before = [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]
    rows = _rows_of(cache, torch.tensor([2, 0]))
    extra = torch.randint(3, 100, (2, 3), generator=torch.Generator().manual_seed(1))
    model(input_ids=extra, use_cache=True, **cache_kwargs(model, rows))  # grows the chunk's cache only
    for layer, (k, v), chunk in zip(cache.layers, before, rows.layers):
        assert torch.equal(layer.keys, k) and torch.equal(layer.values, v)
        assert chunk.keys.shape[0] == 2 and chunk.keys.shape[-2] == 10
        assert torch.equal(chunk.keys[:, :, :7], k[[2, 0]])


def test_item_accuracy_same_either_path():
    model = tiny_llama().double()
    items = _items(3, n=12)
    a = item_accuracy(model, items, 0, base=False, shared_prompt=True)
    b = item_accuracy(model, items, 0, base=False, shared_prompt=False)
    assert a["accuracy_mean"] == b["accuracy_mean"] and a["accuracy_sum"] == b["accuracy_sum"]
    assert a["margin_mean"] == pytest.approx(b["margin_mean"], abs=1e-9)


@pytest.mark.integration
def test_shared_prompt_on_smollm_float32_truncated_and_with_an_adapter():
    """SmolLM2 in float32, GENIES items cut on both sides (prompts from the left to 48 tokens,
    responses from the right to fit 64): the two paths agree to 1e-4 in summed log-probs, with a
    LoRA adapter on and off."""
    from peft import LoraConfig, get_peft_model

    from reprkit import data as D
    from reprkit.models import load_model

    model, tok = load_model()  # a fresh copy: the adapter must not leak into other tests
    items = D.load_items("genies:alpaca_easy", "test", limit=10)
    enc = D.encode_ranked(items, tok, 64, 48)
    assert any(len(e["prompt_ids"]) == 48 for e in enc) and any(len(e["prompt_ids"]) + len(r) == 64
                                                                  for e in enc for r in e["responses_ids"])
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    shared = ranked_logps(peft_model, enc, tok.pad_token_id, batch_size=4, base=True, shared_prompt=True)
    concat = ranked_logps(peft_model, enc, tok.pad_token_id, batch_size=4, base=True, shared_prompt=False)
    for name in ("policy", "base"):
        _assert_same(shared[name], concat[name], 1e-4)


# ---------------------------------------------------------------- training (--shared-prompt)


def _pair_batch(n: int = 5, seed: int = 3, same_prompt: bool = True) -> dict:
    """A collated pair batch of random token ids: prompts and completions of varied lengths."""
    from reprkit.data import collate

    g = torch.Generator().manual_seed(seed)

    def ids(lo, hi):
        return torch.randint(1, TINY["vocab_size"], (int(torch.randint(lo, hi, (1,), generator=g)),), generator=g).tolist()

    rows = []
    for _ in range(n):
        prompt = ids(1, 25)
        rows.append({"chosen_prompt_ids": prompt, "chosen_ids": ids(1, 12),
                     "rejected_prompt_ids": prompt if same_prompt else ids(1, 25), "rejected_ids": ids(1, 12)})
    return collate(rows, 0)


@pytest.mark.parametrize("name", ["reprpo", "dpo", "reroute", "prefvec"])
def test_shared_prompt_step_equals_the_concatenated_step_float64(name):
    """Loss value, tracked statistics and every LoRA gradient of one step agree (a float64 model; the
    losses compute in float32, which bounds the agreement at about 1e-7 relative)."""
    from peft import LoraConfig, get_peft_model

    from reprkit.config import TrainConfig
    from reprkit.train import forward_pair_batch, plan_layers, track

    model = get_peft_model(tiny_llama().double(), LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    model.train()
    loss = TrainConfig(loss=name).loss_fn()
    loss_layers, layers, _ = plan_layers(model, loss)
    batch = _pair_batch()
    results = []
    for shared in (False, True):
        model.zero_grad()
        inputs = forward_pair_batch(model, batch, layers, loss, progress=0.5, shared_prompt=shared)
        value, _ = loss(inputs)
        value.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        stats = {(k, s): float(v) for k, row in track(inputs, layers).items() for s, v in row.items()}
        results.append((value.detach(), grads, stats, inputs.chosen.mask.shape[1]))
    (v0, g0, s0, t0), (v1, g1, s1, t1) = results
    assert t1 < t0  # the shared layout holds completion positions only
    torch.testing.assert_close(v1, v0, rtol=1e-6, atol=1e-9)
    assert g1.keys() == g0.keys() and max(g.abs().max() for g in g0.values()) > 1e-6  # gradients to compare
    for n in g0:
        assert (g1[n] - g0[n]).abs().max() <= 1e-5 * g0[n].abs().max(), n  # relative to the tensor's scale
    assert s1 == pytest.approx(s0, rel=1e-4, abs=1e-6)  # along/off: float32 differences of near-equal means


def test_pair_layout_only_when_prompts_are_shared():
    from reprkit.config import TrainConfig
    from reprkit.data import pair_layout
    from reprkit.train import forward_pair_batch

    differ = _pair_batch(same_prompt=False)
    assert pair_layout(differ) is None
    model, loss = tiny_llama(), TrainConfig(loss="dpo").loss_fn()
    with torch.no_grad():  # such a batch runs the concatenated layout: the same inputs either way
        a = forward_pair_batch(model, differ, [1], loss, 0.0, shared_prompt=True)
        b = forward_pair_batch(model, differ, [1], loss, 0.0)
    assert a.chosen.mask.shape == b.chosen.mask.shape and torch.equal(a.chosen.logps, b.chosen.logps)
    batch = _pair_batch(n=4)
    lay = pair_layout(batch)
    comp = batch["chosen_completion_mask"].sum(-1), batch["rejected_completion_mask"].sum(-1)
    # chosen rows then rejected rows, after the item-major layout is put back in order
    assert torch.equal(lay["completion_mask"][lay["order"]].sum(-1), torch.cat(comp))
    prompt_len = batch["chosen_attention_mask"].sum(-1) - comp[0]
    assert torch.equal(lay["positions"][::2, 0], prompt_len)  # the first completion token follows its prompt


def test_shared_prompt_run_equals_a_plain_run(tiny_folder, tmp_path):
    """Through the trainer: same losses, tracked statistics and adapter (float32, 3 steps), with and
    without the frozen-model cache (built in the concatenated layout, read in the shared one)."""
    from .test_frozen_cache import _run, _same

    plain = {}
    for loss in ("reprpo", "dpo"):
        plain[loss] = _run(tiny_folder, tmp_path / f"plain-{loss}", loss=loss)
        shared = _run(tiny_folder, tmp_path / f"shared-{loss}", loss=loss, shared_prompt=True)
        _same(*shared, *plain[loss])
    # DPO for the cache: at a zero-initialised adapter the policy equals the frozen model, where a
    # hidden-state loss's gradient (a norm of policy minus frozen states at 0) points wherever float
    # rounding does; states from two layouts differ by that rounding, so step 1 would not compare
    cache = str(tmp_path / "cache")
    _run(tiny_folder, tmp_path / "build", reference_cache=cache, loss="dpo")
    cached = _run(tiny_folder, tmp_path / "cached", reference_cache=cache, shared_prompt=True, loss="dpo")
    _same(*cached, *plain["dpo"])


def test_shared_prompt_refused_where_it_cannot_work():
    from reprkit.config import TrainConfig

    with pytest.raises(ValueError, match="--shared-prompt"):
        TrainConfig(shared_prompt=True, gradient_checkpointing=True).validate()
    with pytest.raises(ValueError, match="--shared-prompt"):
        TrainConfig(shared_prompt=True, loss="plackett_luce").validate()


def test_response_chunks_sorted_complete_and_within_the_waste_bound():
    from reprkit.shared_prompt import response_chunks

    g = torch.Generator().manual_seed(4)
    lengths = torch.randint(1, 60, (50,), generator=g).tolist()
    chunks = response_chunks(lengths, max_waste=0.25)
    assert len(response_chunks(lengths)) >= len(chunks)  # the default bound (0.1) is tighter
    assert sorted(i for c in chunks for i in c) == list(range(50))
    flat = [lengths[i] for c in chunks for i in c]
    assert flat == sorted(flat)
    for c in chunks:
        real, padded = sum(lengths[i] for i in c), len(c) * max(lengths[i] for i in c)
        assert padded <= 1.25 * real
    assert 1 < len(chunks) < 50


@pytest.mark.parametrize("shared", [True, False])
def test_bf16_scores_are_float32_sums_of_the_bf16_models_logits(shared, monkeypatch):
    """A bf16 model's response log-probs are the float32 sums of the float32 log-softmaxes of its
    own bf16 logits, to 1e-4 relative: no sum is accumulated in bf16 (whose spacing is 1.0 beyond
    128, where these sums lie: a bf16 sum is off by up to 0.5). The reference recomputes each sum
    in float64 from the very states the scorer saw (recorded), so only the arithmetic is compared."""
    import reprkit.evaluate as EV
    import reprkit.shared_prompt as S
    from reprkit.logits import head_logits

    model = tiny_llama(initializer_range=0.2).to(torch.bfloat16)
    g = torch.Generator().manual_seed(9)
    items = [{"prompt_ids": torch.randint(1, TINY["vocab_size"], (n,), generator=g).tolist(),
              "responses_ids": [torch.randint(1, TINY["vocab_size"], (m,), generator=g).tolist() for m in (40, 55)]}
             for n in (7, 12, 9)]
    seen = []
    module = S if shared else EV
    real = module.masked_logp_sums

    def record(model, predictors, targets, mask):
        out = real(model, predictors, targets, mask)
        seen.append((predictors, targets, mask, out))
        return out

    monkeypatch.setattr(module, "masked_logp_sums", record)
    got = ranked_logps(model, items, 0, base=False, shared_prompt=shared)["policy"]
    assert got["logps"].dtype == torch.float32 and seen
    wants = []
    for predictors, targets, mask, out in seen:
        where = mask.bool()
        with torch.no_grad():
            logp = torch.log_softmax(head_logits(model, predictors[where]).double(), -1)  # the bf16 head's logits
        token = logp.gather(1, targets[where][:, None])[:, 0]
        want = torch.zeros(len(out), dtype=torch.float64).index_add(0, where.nonzero()[:, 0], token)
        assert want.abs().max() > 128
        torch.testing.assert_close(out.double(), want, rtol=1e-4, atol=1e-4)
        wants.append(want)
    # and what the scorer returns is those sums, not a copy rounded to the model's dtype on the way
    returned = got["logps"][got["valid"]].double().sort().values
    torch.testing.assert_close(returned, torch.cat(wants).sort().values, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ["gemma3", "mistral", "gpt-oss", "gemma2"])
def test_sliding_window_models_equal_unpadded_one_item_at_a_time(arch):
    """Prompts of 30, 32 and 31 tokens (windows of 8) in one batch: shared-prompt scores, read states,
    and the DPO and ReprPO losses and LoRA gradients of a training batch equal running each item
    alone with no padding at all (float32: gpt-oss's expert kernels take no float64, and Gemma 2's
    eager float64 mask turns the left padding's empty rows into NaN, a float64-only case). Before
    prompts were left-padded these were off by 0.69 (gemma3), 2.85 (mistral) and 4.79 (gpt-oss)
    nats."""
    from peft import LoraConfig, get_peft_model

    from reprkit.config import TrainConfig
    from reprkit.data import collate
    from reprkit.directions import completion_states
    from reprkit.train import forward_pair_batch, only_layers, plan_layers
    from reprkit.verify import tiny_model

    model = tiny_model(arch)
    g = torch.Generator().manual_seed(2)
    items = [{"prompt_ids": torch.randint(3, 256, (n,), generator=g).tolist(),
              "responses_ids": [torch.randint(3, 256, (m,), generator=g).tolist() for m in (3, 7)]} for n in (30, 32, 31)]
    assert len(length_batches(items, 8192, 64)) == 1  # one padded batch
    shared = ranked_logps(model, items, 0, base=False, shared_prompt=True)["policy"]["logps"]
    alone = torch.cat([ranked_logps(model, [it], 0, base=False, shared_prompt=False)["policy"]["logps"] for it in items])
    torch.testing.assert_close(shared, alone, rtol=0, atol=1e-4)
    states, _ = completion_states(model, items, 0, [1, 3], "mean", shared_prompt=True)
    for i, it in enumerate(items):
        one, _ = completion_states(model, [it], 0, [1, 3], "mean", shared_prompt=False)
        for layer in (1, 3):
            rel = (states[layer][i] - one[layer][0]).norm() / one[layer][0].norm()  # float32 states
            assert rel < 1e-4, (layer, i, float(rel))
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    rows = [{"chosen_prompt_ids": it["prompt_ids"], "rejected_prompt_ids": it["prompt_ids"],
             "chosen_ids": it["responses_ids"][1], "rejected_ids": it["responses_ids"][0]} for it in items]
    for name in ("dpo", "reprpo"):  # the shared layout vs the concatenated one (right-padded whole sequences)
        loss = TrainConfig(loss=name).loss_fn()
        loss_layers, layers, _ = plan_layers(peft_model, loss)
        results = []
        for shared_prompt in (True, False):
            peft_model.zero_grad()
            inputs = forward_pair_batch(peft_model, collate(rows, 0), layers, loss, 0.0, shared_prompt=shared_prompt)
            value, _ = loss(only_layers(inputs, loss_layers))
            value.backward()
            results.append((value.detach(), {n: p.grad.clone() for n, p in peft_model.named_parameters() if p.grad is not None}))
        (a, ga), (b, gb) = results
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        scale = max(g.abs().max() for g in gb.values())
        assert scale > 1e-6
        for n in ga:
            assert (ga[n] - gb[n]).abs().max() <= 1e-4 * scale, (name, n)
