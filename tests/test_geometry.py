import math

import pytest
import torch

from reprkit import geometry as G


def test_decompose_roundtrip_and_zero_vectors():
    h = torch.randn(2, 5, 16)
    h[0, 0] = 0
    mag, d = G.decompose(h)
    assert mag.shape == (2, 5) and d.shape == (2, 5, 16)
    torch.testing.assert_close(G.compose(mag, d), h)
    assert mag[0, 0] == 0 and torch.equal(d[0, 0], torch.zeros(16))
    torch.testing.assert_close(d[1].norm(dim=-1), torch.ones(5))
    assert torch.isfinite(d).all()


def test_float32_inside_for_low_precision_inputs():
    h = torch.randn(3, 4, 8, dtype=torch.bfloat16)
    mag, d = G.decompose(h)
    assert mag.dtype == torch.float32 and d.dtype == torch.float32
    assert G.cosine(h, h).dtype == torch.float32


def test_cosine_is_exactly_one_on_identical_inputs():
    h = torch.randn(4, 9, 576) * 30
    assert torch.equal(G.cosine(h, h), torch.ones(4, 9))
    assert torch.equal(G.norm_ratio(h, h), torch.ones(4, 9))
    torch.testing.assert_close(G.cosine(h, -h), -torch.ones(4, 9))
    torch.testing.assert_close(G.cosine(h, 3 * h), torch.ones(4, 9))


def test_zero_vectors_give_defined_values():
    z = torch.zeros(2, 3, 8)
    h = torch.randn(2, 3, 8)
    for value in (G.cosine(z, h), G.cosine(z, z), G.norm_ratio(z, z), G.norm_ratio(h, z), G.angle(z, h)):
        assert torch.isfinite(value).all()
    assert torch.equal(G.cosine(z, h), torch.zeros(2, 3))
    assert torch.equal(G.norm_ratio(z, z), torch.zeros(2, 3))


def test_angle_projection_rejection():
    a = torch.tensor([1.0, 0.0])
    b = torch.tensor([1.0, 1.0])
    assert math.isclose(G.angle(a, b).item(), math.pi / 4, rel_tol=1e-6)
    h = torch.randn(3, 4, 8)
    d = torch.randn(8)
    p, r = G.project(h, d), G.reject(h, d)
    torch.testing.assert_close(p + r, h)
    assert (r @ d).abs().max() < 1e-5
    torch.testing.assert_close(G.cosine(p, d.expand_as(p)).abs(), torch.ones(3, 4))


def test_masked_mean_ignores_masked_positions():
    x = torch.tensor([[1.0, 2.0, 100.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    torch.testing.assert_close(G.masked_mean(x, mask), torch.tensor([1.5, 0.0]))
    h = torch.randn(2, 3, 4)
    torch.testing.assert_close(G.masked_mean(h, mask)[0], h[0, :2].mean(0))
    torch.testing.assert_close(G.masked_mean(h, None), h.mean(1))


def test_without_sinks_drops_outlier_norm_tokens():
    h = torch.randn(1, 20, 8)
    h[0, 0] *= 100  # an attention sink
    mask = torch.ones(1, 20, dtype=torch.bool)
    kept = G.without_sinks(h, mask, k=2.0)
    assert not kept[0, 0] and kept[0, 1:].all()
    mask[0, 5] = False
    assert not G.without_sinks(h, mask, k=2.0)[0, 5]


def test_similarity_per_sample():
    a = torch.randn(2, 4, 8)
    b = a.clone()
    b[1] *= 2
    s = G.similarity(b, a, torch.ones(2, 4))
    torch.testing.assert_close(s["cosine"], torch.ones(2))
    torch.testing.assert_close(s["norm_ratio"], torch.tensor([1.0, 2.0]))


@pytest.mark.parametrize("fn", [G.cosine, G.norm_ratio])
def test_gradients_are_finite_at_zero(fn):
    a = torch.zeros(2, 8, requires_grad=True)
    b = torch.randn(2, 8)
    out = fn(a, b)  # exactly zero, not a + 1e-12
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(a.grad).all()
