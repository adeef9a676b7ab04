"""The frozen-model cache (--reference-cache): same losses and adapter as the frozen pass, a cache
per setting, a damaged file rebuilt."""

import pytest
import torch

from reprkit.runlog import read_jsonl
from reprkit.train import train

from .test_train import _adapter, tiny_config


def _run(tiny_folder, path, **kw):
    run = train(tiny_config(tiny_folder, path, steps=3, warmup_steps=0, eval_data=(), **kw))
    return run, read_jsonl(run / "metrics.jsonl")[0]


def _same(run_a, rows_a, run_b, rows_b):
    for a, b in zip(rows_a, rows_b):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-7), a["step"]
        for layer, v in a["layers"].items():  # the tracker reads the reference too
            for k, x in v.items():
                assert x == pytest.approx(b["layers"][layer][k], rel=1e-5, abs=1e-6), (a["step"], layer, k)
    wa, wb = _adapter(run_a)[0], _adapter(run_b)[0]
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-3, atol=2e-5)


@pytest.mark.parametrize("loss", ["reprpo", "reroute", "prefvec", "dpo"])
def test_cached_run_equals_the_frozen_pass(tiny_folder, tmp_path, loss):
    cache = tmp_path / "cache"
    plain = _run(tiny_folder, tmp_path / "plain", loss=loss)
    built = _run(tiny_folder, tmp_path / "built", loss=loss, reference_cache=str(cache))
    files = list(cache.glob("reference-*.safetensors"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    read = _run(tiny_folder, tmp_path / "read", loss=loss, reference_cache=str(cache))
    assert files[0].stat().st_mtime_ns == stamp  # a hit: read, not rebuilt
    _same(*built, *plain)
    _same(*read, *plain)


def test_a_changed_setting_misses_and_a_damaged_file_is_rebuilt(tiny_folder, tmp_path, caplog):
    from reprkit.losses import ReprPO

    cache = tmp_path / "cache"
    first = _run(tiny_folder, tmp_path / "a", reference_cache=str(cache))
    _run(tiny_folder, tmp_path / "b", reference_cache=str(cache), reprpo=ReprPO(layers="1"))  # other layers
    _run(tiny_folder, tmp_path / "c", reference_cache=str(cache), max_length=64, max_prompt_length=32)  # other encoding
    files = sorted(cache.glob("reference-*.safetensors"), key=lambda p: p.stat().st_mtime_ns)
    assert len(files) == 3
    size = files[0].stat().st_size
    with open(files[0], "r+b") as f:  # a copy cut short
        f.truncate(size // 2)
    with caplog.at_level("WARNING"):
        again = _run(tiny_folder, tmp_path / "d", reference_cache=str(cache))
    assert "does not read back" in caplog.text and files[0].stat().st_size == size
    _same(*again, *first)
    assert not list(cache.glob(".*.tmp"))  # nothing half-written left behind


def test_cache_batch_matches_a_frozen_forward(tiny_folder, tmp_path, tokenizer):
    """The cache's tensors for a batch equal the frozen pass's on that batch, position by position."""
    from transformers import AutoModelForCausalLM

    from reprkit import data as D
    from reprkit.frozen_cache import ReferenceCache
    from reprkit.hooks import capture
    from reprkit.train import micro_batches

    model = AutoModelForCausalLM.from_pretrained(tiny_folder).eval()
    items = D.load_items("embedded:arithmetic", "train", limit=12)
    encoded = D.encode_pairs(D.to_pairs(items), tokenizer, 64, 32)
    cache = ReferenceCache.open(tmp_path, model, encoded, [0, 2], True, {}, tokenizer.pad_token_id, "tiny", batch_size=5)
    batch = next(micro_batches(encoded, 4, seed=3, start=1, pad_token_id=tokenizer.pad_token_id))
    ids = torch.cat([batch["chosen_input_ids"], batch["rejected_input_ids"]])
    attn = torch.cat([batch["chosen_attention_mask"], batch["rejected_attention_mask"]])
    comp = torch.cat([batch["chosen_completion_mask"], batch["rejected_completion_mask"]])
    from reprkit.evaluate import forward_logps

    with torch.no_grad(), capture(model, [0, 2]) as cap:
        logps = forward_logps(model, ids, attn, comp)
    hidden, cached_logps = cache.batch(batch["index"], comp)
    for layer in (0, 2):
        m = comp.bool()
        torch.testing.assert_close(hidden[layer][m], cap.hidden_states[layer][m].float(), rtol=1e-5, atol=1e-5)
        assert (hidden[layer][~m] == 0).all()
    torch.testing.assert_close(cached_logps, logps, rtol=1e-5, atol=1e-5)


def test_ranked_losses_refuse_the_cache():
    from reprkit.config import TrainConfig

    with pytest.raises(ValueError, match="drop --reference-cache"):
        TrainConfig(loss="plackett_luce", reference_cache="c").validate()


def test_model_fingerprint_follows_the_base_weights_not_the_adapter():
    from peft import LoraConfig, get_peft_model

    from reprkit.train import model_fingerprint

    from .conftest import tiny_llama

    plain = model_fingerprint(tiny_llama())
    some = get_peft_model(tiny_llama(), LoraConfig(r=2, target_modules=["q_proj"]))
    other = get_peft_model(tiny_llama(), LoraConfig(r=4, target_modules=["v_proj", "up_proj"]))
    assert model_fingerprint(some) == model_fingerprint(other) == plain
    changed = tiny_llama()
    with torch.no_grad():
        changed.model.layers[1].mlp.down_proj.weight[0, 0] += 1.0
    assert model_fingerprint(changed) != plain
    assert model_fingerprint(tiny_llama(seed=1)) != plain


def test_model_fingerprint_reads_only_a_prefix_of_each_tensor():
    """Memory-mapped weights: a sample spread over each tensor paged in the whole file; the
    fingerprint reads the first FINGERPRINT_ELEMENTS of each, and nothing past them."""
    from reprkit.train import FINGERPRINT_ELEMENTS, model_fingerprint

    from .conftest import tiny_llama

    plain = model_fingerprint(tiny_llama())
    tail, head = tiny_llama(), tiny_llama()
    with torch.no_grad():
        for p in tail.parameters():
            p.view(-1)[FINGERPRINT_ELEMENTS:] += 1.0
        head.model.embed_tokens.weight.view(-1)[FINGERPRINT_ELEMENTS - 1] += 1.0
    assert any(p.numel() > FINGERPRINT_ELEMENTS for p in tail.parameters())
    assert model_fingerprint(tail) == plain
    assert model_fingerprint(head) != plain
