import os
from pathlib import Path

# Tests read small fixtures of real rows (tests/data) through the ordinary loaders, and never the
# network: a clone of the repository alone passes. Tests of the whole shared sets take the
# `shared_data` fixture below (marker `shared_data`).
FIXTURES = Path(__file__).parent / "data"
SHARED = Path(os.environ.get("REPRKIT_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
os.environ["REPRKIT_DATA_DIR"] = str(FIXTURES)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on two cores: one thread each, or the workers' thread pools
    # fight over the cores (measured: 78 s with two threads each against 31 s with one, on the
    # tiny-model files, where one process alone took 42 s).
    torch.set_num_threads(1)
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

TINY = dict(
    vocab_size=128,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
)


def tiny_llama(seed: int = 0, **overrides) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**{**TINY, **overrides}))
    return model.eval()


@pytest.fixture
def model():
    return tiny_llama()


@pytest.fixture
def inputs():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, TINY["vocab_size"], (2, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # left padding on the second row
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(scope="session")
def smollm():
    """The real default model (converted and cached once)."""
    from reprkit.models import load_model

    return load_model()


@pytest.fixture(scope="session")
def tokenizer():
    """The default model's tokenizer (chat template included), from the GGUF file: no conversion of
    the weights, so `make test-fast` never needs the converted model."""
    from reprkit.models import default_tokenizer

    return default_tokenizer()


@pytest.fixture
def shared_data(monkeypatch):
    """The whole public sets (../shared/data, or $REPRKIT_SHARED_DATA), read by the loaders for this
    test. Skipped with the reason where the folder is absent; never skipped in CI."""
    if not SHARED.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{SHARED} is missing; CI runs the shared_data tests (set REPRKIT_SHARED_DATA)")
        pytest.skip(f"the whole shared datasets are not here ({SHARED}); these tests run in CI")
    monkeypatch.setenv("REPRKIT_DATA_DIR", str(SHARED))
    return SHARED


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "shared_data" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.shared_data)


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory, tokenizer):
    """A tiny random Llama saved with the default model's tokenizer, like any local checkpoint."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny = tiny_llama(vocab_size=49152, hidden_size=64, num_attention_heads=4, intermediate_size=128)
    tiny.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
