import pytest
import torch

from reprkit.directions import Direction
from reprkit.steering import calibrate_strength, read_gguf, steering_kl, to_gguf

from .conftest import tiny_llama


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
