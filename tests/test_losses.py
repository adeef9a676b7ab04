import math

import pytest
import torch

from reprkit.losses import DPO, LossInputs, ReprPO, Reroute, Side, dr_dpo_loss, plackett_luce_loss, preference_loss


def make_inputs(b=3, t=5, h=16, layers=(2, 4), seed=0, logps=False):
    g = torch.Generator().manual_seed(seed)

    def side():
        ref = {k: torch.randn(b, t, h, generator=g) * 10 for k in layers}
        pol = {k: v.clone().requires_grad_(True) for k, v in ref.items()}
        mask = torch.ones(b, t)
        mask[:, :2] = 0  # prompt tokens
        s = Side(mask=mask, hidden=pol, ref_hidden=ref)
        if logps:
            s.ref_logps = -torch.rand(b, generator=g) * 10
            s.logps = s.ref_logps.clone().requires_grad_(True)
        return s

    return LossInputs(chosen=side(), rejected=side())


# ------------------------------------------------------------------ DPO


def test_dpo_matches_formula_and_gradient_direction():
    pc, pr, rc, rr = (torch.tensor([v], requires_grad=i < 2) for i, v in enumerate([-1.0, -2.0, -1.5, -1.5]))
    losses, cr, rj = preference_loss(pc, pr, rc, rr, beta=0.5)
    expected = -math.log(1 / (1 + math.exp(-0.5 * ((-1.0 + 1.5) - (-2.0 + 1.5)))))
    assert losses.item() == pytest.approx(expected, rel=1e-6)
    assert cr.item() == pytest.approx(0.25) and rj.item() == pytest.approx(-0.25)
    losses.sum().backward()
    assert pc.grad.item() < 0 < pr.grad.item()  # descent raises chosen, lowers rejected


def test_dpo_at_reference_is_log2_and_ipo_and_smoothing():
    z = torch.zeros(4)
    losses, _, _ = preference_loss(z, z, z, z, beta=0.1)
    torch.testing.assert_close(losses, torch.full((4,), math.log(2)))
    ipo, _, _ = preference_loss(z, z, z, z, beta=0.1, ipo=True)
    torch.testing.assert_close(ipo, torch.full((4,), (1 / 0.2) ** 2))
    big = torch.full((1,), 100.0)
    plain, _, _ = preference_loss(big, -big, 0 * big, 0 * big, beta=1.0)
    smooth, _, _ = preference_loss(big, -big, 0 * big, 0 * big, beta=1.0, label_smoothing=0.1)
    assert plain.item() < 1e-6 and smooth.item() > 1.0  # smoothing penalises over-confidence


def test_dr_dpo_downweights_large_losses():
    losses = torch.tensor([0.1, 0.1, 5.0])
    assert dr_dpo_loss(losses, beta_prime=1.0) < losses.mean()
    torch.testing.assert_close(dr_dpo_loss(losses, beta_prime=1e3), losses.mean(), rtol=2e-3, atol=2e-3)


def test_plackett_luce_reduces_to_dpo_for_two_and_handles_padding():
    pol = torch.tensor([[-1.0, -2.0], [-3.0, -1.0]])
    ref = torch.tensor([[-1.5, -1.5], [-2.0, -2.0]])
    pl = plackett_luce_loss(pol, ref, beta=0.5)
    dpo, _, _ = preference_loss(pol[:, 0], pol[:, 1], ref[:, 0], ref[:, 1], beta=0.5)
    torch.testing.assert_close(pl, dpo)
    # a 3-way item padded to 4 equals the unpadded 3-way item
    pol3, ref3 = torch.tensor([[-1.0, -2.0, -3.0]]), torch.zeros(1, 3)
    padded = plackett_luce_loss(torch.cat([pol3, torch.zeros(1, 1)], 1), torch.zeros(1, 4), 0.5,
                                valid=torch.tensor([[True, True, True, False]]))
    torch.testing.assert_close(padded, plackett_luce_loss(pol3, ref3, 0.5))
    # the right ranking costs less than the reversed one
    assert plackett_luce_loss(pol3, ref3, 0.5) < plackett_luce_loss(pol3.flip(-1), ref3, 0.5)


def test_dpo_loss_module_average_log_prob():
    inputs = make_inputs(logps=True)
    loss, metrics = DPO(beta=0.1)(inputs)
    assert loss.item() == pytest.approx(math.log(2), rel=1e-6)
    assert metrics["reward_margin"].item() == 0
    loss_avg, _ = DPO(beta=0.1, average_log_prob=True, dr_beta=1.0)(inputs)
    assert torch.isfinite(loss_avg)


# ------------------------------------------------------------------ ReprPO


@pytest.mark.parametrize("retain", ["l2", "direction"])
def test_reprpo_direction_term_only_at_start(retain):
    inputs = make_inputs()
    loss, m = ReprPO(layers="", retain=retain)(inputs)
    assert m["retain"].item() == 0 and m["magnitude"].item() == 0
    assert m["direction"].item() == pytest.approx(1.0, rel=1e-5)  # a fraction of the frozen model's own gap
    loss.backward()
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in inputs.rejected.hidden.values())


def test_reprpo_minimum_when_rejected_direction_matches_chosen():
    inputs = make_inputs()
    c, r = inputs.chosen, inputs.rejected
    for k in r.hidden:
        # rejected completion tokens: the frozen chosen mean direction, at the frozen rejected norms
        mean_c = (c.ref_hidden[k] * c.mask[..., None]).sum(1) / c.mask.sum(1, keepdim=True)
        unit = mean_c / mean_c.norm(dim=-1, keepdim=True)
        r.hidden[k] = (unit[:, None, :] * r.ref_hidden[k].norm(dim=-1, keepdim=True)).detach()
    loss, m = ReprPO()(inputs)
    assert loss.item() == pytest.approx(0.0, abs=1e-5)


def test_reprpo_gradient_step_reduces_loss():
    inputs = make_inputs()
    fn = ReprPO()
    first, _ = fn(inputs)
    first.backward()
    with torch.no_grad():
        for v in inputs.rejected.hidden.values():
            v -= 0.5 * v.grad / v.grad.norm()
    second, _ = fn(inputs)
    assert second < first


def test_reprpo_cannot_escape_by_shrinking_norms():
    fn = ReprPO()
    losses = []
    for scale in (1.0, 0.5, 1e-3, 0.0):
        inputs = make_inputs()
        for k in inputs.rejected.hidden:
            inputs.rejected.hidden[k] = inputs.rejected.ref_hidden[k] * scale
        loss, m = fn(inputs)
        assert torch.isfinite(loss)
        losses.append(loss.item())
    assert losses == sorted(losses)  # the smaller the norms, the higher the loss
    assert losses[-1] > 100 * losses[0]


def test_reprpo_variants_constrain_what_they_say():
    inputs = make_inputs()
    for k in inputs.chosen.hidden:  # chosen states scaled: same direction, different norm
        inputs.chosen.hidden[k] = inputs.chosen.ref_hidden[k] * 2
    _, l2 = ReprPO(retain="l2")(inputs)
    _, direction = ReprPO(retain="direction")(inputs)
    assert l2["retain"].item() == pytest.approx(1.0, rel=1e-5)  # |2h - h| / |h|
    assert direction["retain"].item() == pytest.approx(0.0, abs=1e-6)
    for k in inputs.rejected.hidden:
        inputs.rejected.hidden[k] = inputs.rejected.ref_hidden[k] * 3
    loss_nomag, m = ReprPO(w_magnitude=0.0)(inputs)
    loss_mag, _ = ReprPO()(inputs)
    assert loss_mag.item() == pytest.approx(loss_nomag.item() + m["magnitude"].item(), rel=1e-5)


def test_masks_exclude_prompt_and_padding():
    inputs = make_inputs()
    for k in inputs.chosen.hidden:  # garbage where the mask is 0 must not count
        h = inputs.chosen.ref_hidden[k].clone()
        h[:, :2] = 1e6
        inputs.chosen.hidden[k] = h
    _, m = ReprPO()(inputs)
    assert m["retain"].item() == 0


# ------------------------------------------------------------------ reroute


def test_reroute_schedule_and_minimum():
    inputs = make_inputs()
    fn = Reroute(alpha=4.0)
    loss0, m0 = fn(inputs)
    assert m0["reroute"].item() == pytest.approx(1.0, rel=1e-5)  # identical states: cos 1
    assert loss0.item() == pytest.approx(4.0, rel=1e-5)  # c_reroute = alpha at t = 0
    inputs.progress = 1.0
    loss1, m1 = fn(inputs)
    assert loss1.item() == pytest.approx(2.0, rel=1e-5)  # alpha * (1 - 1/2)
    assert m1["c_retain"].item() == pytest.approx(2.0)
    for k in inputs.rejected.hidden:  # opposed states: ReLU(cos) = 0, the minimum
        inputs.rejected.hidden[k] = -inputs.rejected.ref_hidden[k]
    loss2, m2 = fn(inputs)
    assert m2["reroute"].item() == 0 and loss2.item() == pytest.approx(0.0, abs=1e-6)


def test_reroute_gradient_lowers_cosine():
    inputs = make_inputs()
    for k in inputs.rejected.hidden:
        inputs.rejected.hidden[k] = (inputs.rejected.ref_hidden[k] + torch.randn_like(inputs.rejected.ref_hidden[k])).requires_grad_(True)
    fn = Reroute()
    first, m1 = fn(inputs)
    first.backward()
    with torch.no_grad():
        for v in inputs.rejected.hidden.values():
            v -= 5.0 * v.grad / v.grad.norm()
    _, m2 = fn(inputs)
    assert m2["reroute"] < m1["reroute"]


def test_reroute_has_no_gradient_at_the_frozen_model():
    """cos(h, h*) is at its maximum where h = h*: the reroute term's gradient there is zero (to float
    rounding) and grows with the distance from h*, why reroute barely moves a fresh adapter."""
    grads = []
    for scale in (0.0, 1e-2, 1.0):
        inputs = make_inputs()
        for k in inputs.rejected.hidden:
            ref = inputs.rejected.ref_hidden[k]
            inputs.rejected.hidden[k] = (ref + scale * torch.randn_like(ref)).requires_grad_(True)
        loss, m = Reroute()(inputs)
        loss.backward()
        assert m["reroute"].item() == pytest.approx(1.0, abs=1e-2)
        grads.append(sum(v.grad.norm().item() for v in inputs.rejected.hidden.values()))
    assert grads[0] < 1e-3 * grads[1] < 1e-3 * grads[2]


def test_ipo_away_from_the_reference():
    """IPO is (h - 1/(2 beta))^2: at h = 0 alone, (h + 1/(2 beta))^2 would pass too."""
    pc, pr = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.0])
    rc, rr = torch.tensor([-2.0, -2.0]), torch.tensor([-2.0, -2.0])
    ipo, _, _ = preference_loss(pc, pr, rc, rr, beta=0.25, ipo=True)
    h = (pc - rc) - (pr - rr)  # [2, -1]
    torch.testing.assert_close(ipo, (h - 2.0) ** 2)  # [0, 9]
    assert ipo[0].item() == 0.0 and ipo[1].item() == 9.0


def test_reroute_both_coefficients_over_the_schedule():
    """retain weight alpha t/(2T), reroute weight alpha (1 - t/(2T)), with a retain term that is not 0."""
    inputs = make_inputs()
    for k in inputs.chosen.hidden:
        inputs.chosen.hidden[k] = inputs.chosen.ref_hidden[k] * 1.5  # relative L2 distance 0.5 per token
    fn = Reroute(alpha=4.0)
    for progress, c_retain, c_reroute in ((0.0, 0.0, 4.0), (0.5, 1.0, 3.0), (1.0, 2.0, 2.0)):
        inputs.progress = progress
        loss, m = fn(inputs)
        assert m["retain"].item() == pytest.approx(0.5, rel=1e-5)
        assert m["c_retain"].item() == pytest.approx(c_retain)
        assert loss.item() == pytest.approx(c_retain * 0.5 + c_reroute * m["reroute"].item(), rel=1e-5)


def test_plackett_luce_gradient_is_finite_with_padded_responses():
    pol = torch.tensor([[-1.0, -2.0, 0.0, 0.0], [-3.0, -1.0, -2.0, 0.0]], requires_grad=True)
    valid = torch.tensor([[True, True, False, False], [True, True, True, False]])
    loss = plackett_luce_loss(pol, torch.zeros(2, 4), 0.5, valid=valid)
    loss.sum().backward()
    assert torch.isfinite(pol.grad).all()
    assert (pol.grad[~valid] == 0).all() and (pol.grad[valid] != 0).all()
