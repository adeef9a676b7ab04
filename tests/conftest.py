import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

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
    """The default model's tokenizer (chat template included)."""
    from transformers import AutoTokenizer

    from reprkit.models import default_model_path

    return AutoTokenizer.from_pretrained(default_model_path())


@pytest.fixture(scope="session")
def shared_data():
    from reprkit.data import shared_data_dir

    path = shared_data_dir()
    if path is None:
        pytest.fail("../shared/data is missing; the data tests read the real files there")
    return path


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory, tokenizer):
    """A tiny random Llama saved with the default model's tokenizer, like any local checkpoint."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny = tiny_llama(vocab_size=49152, hidden_size=64, num_attention_heads=4, intermediate_size=128)
    tiny.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
