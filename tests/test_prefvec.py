import pytest
import torch

from reprkit.losses import LossInputs, PrefVec, Side


def _inputs(shift_chosen, shift_rejected, b=3, t=5, h=8, seed=0, logps=None):
    g = torch.Generator().manual_seed(seed)
    ref_c = torch.randn(b, t, h, generator=g)
    ref_r = torch.randn(b, t, h, generator=g)
    mask = torch.ones(b, t)
    mask[0, -2:] = 0  # padding never counts
    pol_c = (ref_c + shift_chosen(ref_c, ref_r, mask)).requires_grad_()
    pol_r = (ref_r + shift_rejected(ref_c, ref_r, mask)).requires_grad_()
    lp = logps or {}
    chosen = Side(mask=mask, hidden={3: pol_c}, ref_hidden={3: ref_c}, logps=lp.get("c"), ref_logps=lp.get("rc"))
    rejected = Side(mask=mask, hidden={3: pol_r}, ref_hidden={3: ref_r}, logps=lp.get("r"), ref_logps=lp.get("rr"))
    return LossInputs(chosen=chosen, rejected=rejected), pol_c, pol_r


def _pref_vector(ref_c, ref_r, mask):
    m = mask[..., None]
    return (ref_c * m).sum(1) / m.sum(1) - (ref_r * m).sum(1) / m.sum(1)  # [B, H]


def zero(ref_c, ref_r, mask):
    return torch.zeros_like(ref_c)


def test_no_movement_costs_the_hinge_and_a_full_angle():
    inputs, *_ = _inputs(zero, zero)
    loss, m = PrefVec()(inputs)
    assert m["along"].item() == pytest.approx(0, abs=1e-6)
    assert m["angle"].item() == pytest.approx(1, abs=1e-6)
    assert loss.item() == pytest.approx(2, abs=1e-6)


@pytest.mark.parametrize("alpha", [0.25, 0.5, 2.0])
def test_movement_along_the_vector_known_answer(alpha):
    # chosen moves by +alpha/2 v, rejected by -alpha/2 v (every token): the gap moves by alpha v
    def up(ref_c, ref_r, mask):
        return 0.5 * alpha * _pref_vector(ref_c, ref_r, mask)[:, None].expand_as(ref_c)

    def down(ref_c, ref_r, mask):
        return -up(ref_c, ref_r, mask)

    inputs, *_ = _inputs(up, down)
    loss, m = PrefVec()(inputs)
    assert m["along"].item() == pytest.approx(alpha, rel=1e-5)
    assert m["angle"].item() == pytest.approx(0, abs=1e-5)
    assert m["orth"].item() == pytest.approx(0, abs=1e-4)
    assert loss.item() == pytest.approx(max(0.0, 1 - alpha), abs=1e-5)


def test_orthogonal_movement_is_penalised_as_orthogonal():
    def sideways(ref_c, ref_r, mask):
        v = _pref_vector(ref_c, ref_r, mask)
        u = torch.randn(v.shape, generator=torch.Generator().manual_seed(5))
        u = u - (u * v).sum(-1, keepdim=True) / (v * v).sum(-1, keepdim=True) * v  # u orthogonal to v
        u = u / u.norm(dim=-1, keepdim=True) * v.norm(dim=-1, keepdim=True) * 0.3
        return u[:, None].expand_as(ref_c)

    inputs, *_ = _inputs(sideways, zero)
    loss, m = PrefVec(w_orth=1.0)(inputs)
    assert m["along"].item() == pytest.approx(0, abs=1e-5)
    assert m["angle"].item() == pytest.approx(1, abs=1e-5)
    assert m["orth"].item() == pytest.approx(0.3, rel=1e-4)
    assert loss.item() == pytest.approx(1 + 1 + 0.3, rel=1e-5)


def test_a_gradient_step_moves_the_gap_along_the_vector():
    def small(ref_c, ref_r, mask):
        return 0.01 * torch.randn(ref_c.shape, generator=torch.Generator().manual_seed(9))

    inputs, pol_c, pol_r = _inputs(small, zero)
    loss, before = PrefVec()(inputs)
    loss.backward()
    with torch.no_grad():
        stepped = LossInputs(
            chosen=Side(mask=inputs.chosen.mask, hidden={3: pol_c - 0.5 * pol_c.grad}, ref_hidden=inputs.chosen.ref_hidden),
            rejected=Side(mask=inputs.rejected.mask, hidden={3: pol_r - 0.5 * pol_r.grad}, ref_hidden=inputs.rejected.ref_hidden),
        )
        after_loss, after = PrefVec()(stepped)
    assert after["along"] > before["along"] and after_loss < loss


def test_logprob_hinges_known_answer():
    # per-token log ratios: chosen -0.5 (its NLL rose), rejected +0.25 (rose): both hinges fire
    n = torch.tensor([4.0, 4.0, 4.0])
    lp = {"c": torch.full((3,), -2.0), "rc": torch.zeros(3), "r": torch.full((3,), 1.0), "rr": torch.zeros(3)}
    lp["c"] = lp["c"] * n / n  # summed log-probs over 4 tokens
    loss_fn = PrefVec(w_along=0, w_angle=0, w_logp=1.0, w_nll=2.0)
    assert loss_fn.needs_logps and not PrefVec().needs_logps
    inputs, *_ = _inputs(zero, zero, logps=lp)
    inputs.chosen.mask[0, -2:] = 1  # 5 tokens... keep n_tokens known: set every row to 4 tokens
    inputs.chosen.mask[:, 4:] = 0
    inputs.rejected.mask[:] = inputs.chosen.mask
    loss, m = loss_fn(inputs)
    # ratio_c = -2/4 = -0.5, ratio_r = 1/4 = 0.25: logp hinge 0.75, nll hinge 0.5
    assert m["logp_hinge"].item() == pytest.approx(0.75)
    assert m["nll_hinge"].item() == pytest.approx(0.5)
    assert loss.item() == pytest.approx(0.75 + 2 * 0.5)
