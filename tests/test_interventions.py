"""Interventions besides LoRA: each forward equals its formula, the frozen model is the model with it
off, positions are where they say, saving and loading change nothing, a trained vector is a Direction,
and a vector trained with DPO equals a hand-written loop step for step."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from reprkit import interventions as I
from reprkit.config import ReftSettings, TrainConfig, VectorSettings
from reprkit.hooks import capture
from reprkit.losses import BiPO, LossInputs, RePS, Side, bipo_loss, reps_terms
from reprkit.runlog import read_jsonl
from reprkit.steering import steered
from reprkit.train import TrainingError, train
from tests.conftest import tiny_llama


def _random_vector(layers=(1, 2), hidden=32, positions="all", scale=False, seed=0):
    iv = I.VectorIntervention(list(layers), hidden, positions=positions, scale=scale)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in iv.vectors.values():
            p.copy_(torch.randn(hidden, generator=g))
        if scale:
            for p in iv.scales.values():
                p.fill_(0.5)
    return iv


def _block_outputs(model, ids, layers):
    with torch.no_grad(), capture(model, list(layers)) as cap:
        model(input_ids=ids)
    return cap.hidden_states


def test_vector_forward_is_h_plus_scaled_v_at_each_layer_and_off_when_disabled(inputs):
    model = tiny_llama()
    ids = inputs["input_ids"]
    before = _block_outputs(model, ids, [0])[0]
    iv = I.attach(model, _random_vector(layers=(0,), scale=True))
    after = _block_outputs(model, ids, [0])[0]
    torch.testing.assert_close(after, before + 0.5 * iv.vectors["0"].detach(), rtol=0, atol=1e-6)
    with iv.disabled():
        torch.testing.assert_close(_block_outputs(model, ids, [0])[0], before, rtol=0, atol=0)
    with I.scaled(model, -1.0):  # BiPO's -v
        torch.testing.assert_close(_block_outputs(model, ids, [0])[0], before - 0.5 * iv.vectors["0"].detach(),
                                   rtol=0, atol=1e-6)
    assert all(not p.requires_grad for n, p in model.named_parameters() if not n.startswith(I.ATTRIBUTE))
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        "reprkit_intervention.vectors.0", "reprkit_intervention.scales.0"}


def test_reft_forward_is_loreft_formula_with_orthonormal_R(inputs):
    model = tiny_llama()
    ids = inputs["input_ids"]
    iv = I.LoReFTIntervention([1], 32, positions="all", rank=3)
    R = iv.R(1).detach()
    torch.testing.assert_close(R @ R.T, torch.eye(3), rtol=0, atol=1e-5)  # orthonormal rows
    h = _block_outputs(model, ids, [1])[1]
    I.attach(model, iv)
    got = _block_outputs(model, ids, [1])[1]
    W, b = iv.source["1"].weight.detach(), iv.source["1"].bias.detach()
    want = h + (h @ W.T + b - h @ R.T) @ R  # h + R^T (W h + b - R h), h as a row vector
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    # a gradient step keeps R orthonormal (the parametrization, not a penalty)
    opt = torch.optim.SGD(iv.parameters(), lr=0.5)
    with capture(model, [1], detach=False) as cap:
        model(input_ids=ids)
    cap.hidden_states[1].pow(2).sum().backward()
    opt.step()
    R2 = iv.R(1).detach()
    assert not torch.allclose(R2, R)
    torch.testing.assert_close(R2 @ R2.T, torch.eye(3), rtol=0, atol=1e-5)


@pytest.mark.parametrize(("spec", "want"), [
    ("all", None),
    ("prompt", [[1, 1, 1, 0, 0, 0], [0, 1, 1, 0, 0, 0]]),
    ("response", [[0, 0, 0, 1, 1, 0], [0, 0, 0, 1, 0, 0]]),
    ("f1+l1", [[1, 0, 1, 0, 0, 0], [0, 1, 1, 0, 0, 0]]),
    ("l2", [[0, 1, 1, 0, 0, 0], [0, 1, 1, 0, 0, 0]]),
    ("f2", [[1, 1, 0, 0, 0, 0], [0, 1, 1, 0, 0, 0]]),
])
def test_positions_are_where_they_say(spec, want):
    attn = torch.tensor([[1, 1, 1, 1, 1, 0], [0, 1, 1, 1, 0, 0]])  # row 2 starts with a pad
    comp = torch.tensor([[0, 0, 0, 1, 1, 0], [0, 0, 0, 1, 0, 0]])
    got = I.position_mask(spec, attn, comp)
    assert (got is None) if want is None else got.long().tolist() == want


@pytest.mark.parametrize("bad", ["first", "f+l", "f1+", "+l1", "l-1", ""])
def test_bad_positions_are_refused_by_name(bad):
    with pytest.raises(ValueError, match="positions must be"):
        I.parse_positions(bad)


def test_a_position_limited_forward_without_the_split_names_the_fix(inputs):
    model = tiny_llama()
    I.attach(model, _random_vector(positions="response"))
    with pytest.raises(RuntimeError, match="at_positions"):
        model(input_ids=inputs["input_ids"])
    comp = torch.zeros_like(inputs["input_ids"])
    comp[:, -2:] = 1
    before = None
    with I.disabled(model):
        before = _block_outputs(model, inputs["input_ids"], [1])[1]
    with I.at_positions(model, torch.ones_like(comp), comp):
        after = _block_outputs(model, inputs["input_ids"], [1])[1]
    iv = I.attached(model)
    # the prompt's tokens see no vector (layer 1's input is unchanged there: layer 0 is not intervened)
    torch.testing.assert_close(after[:, :-2], before[:, :-2], rtol=0, atol=0)
    assert not torch.allclose(after[:, -2:], before[:, -2:])
    assert iv._set is False  # the context is gone after the block


def test_saved_intervention_loads_with_one_call_and_gives_the_same_logits(inputs, tmp_path):
    model = tiny_llama()
    iv = I.attach(model, I.LoReFTIntervention([0, 2], 32, positions="all", rank=2))
    with torch.no_grad():  # away from the seeded start, which a fresh one would repeat
        for p in iv.parameters():
            p.add_(0.1 * torch.randn_like(p))
        want = model(input_ids=inputs["input_ids"]).logits
    iv.save_pretrained(tmp_path / "iv")
    assert json.loads((tmp_path / "iv" / I.CONFIG_FILE).read_text())["kind"] == "reft"
    fresh = tiny_llama()
    I.load(fresh, tmp_path / "iv")
    with torch.no_grad():
        got = fresh(input_ids=inputs["input_ids"]).logits
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    with pytest.raises(ValueError, match="already carries"):
        I.attach(fresh, I.VectorIntervention([0], 32))
    other = tiny_llama(hidden_size=64, num_attention_heads=4)
    with pytest.raises(ValueError, match="hidden size 32"):
        I.load(other, tmp_path / "iv")
    assert I.detach(fresh) is not None and I.attached(fresh) is None
    with torch.no_grad():
        plain = fresh(input_ids=inputs["input_ids"]).logits
    assert not torch.allclose(plain, want)


def test_a_trained_vector_is_a_direction_that_steers_and_exports_to_gguf_with_the_same_logits(inputs, tmp_path):
    from reprkit.directions import Direction

    model = tiny_llama()
    iv = I.attach(model, _random_vector(layers=(1, 3), scale=True))
    with torch.no_grad():
        want = model(input_ids=inputs["input_ids"]).logits
    d = Direction.from_intervention(iv)
    I.detach(model)
    with torch.no_grad(), steered(model, d, 1.0):
        got = model(input_ids=inputs["input_ids"]).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    d.to_gguf(tmp_path / "v.gguf")
    back = Direction.from_gguf(tmp_path / "v.gguf")
    with torch.no_grad(), steered(model, back, 1.0):
        again = model(input_ids=inputs["input_ids"]).logits
    torch.testing.assert_close(again, want, rtol=0, atol=1e-5)


def _side(logps, ref, n=None):
    mask = torch.ones(len(logps), n or 1)
    return Side(mask=mask, hidden={}, ref_hidden={}, logps=torch.tensor(logps), ref_logps=torch.tensor(ref))


def test_bipo_is_dpo_with_the_sign_on_the_margin_by_hand():
    c, r = _side([-3.0, -5.0], [-4.0, -4.5]), _side([-6.0, -2.0], [-5.0, -2.5])
    for sign in (1.0, -1.0):
        value, _ = BiPO(beta=0.5)(LossInputs(chosen=c, rejected=r, sign=sign))
        by_hand = [-math.log(1 / (1 + math.exp(-sign * 0.5 * ((-3 + 4) - (-6 + 5))))),
                   -math.log(1 / (1 + math.exp(-sign * 0.5 * ((-5 + 4.5) - (-2 + 2.5)))))]
        assert value.item() == pytest.approx(sum(by_hand) / 2, rel=1e-6)
    assert bipo_loss(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.0]), -1).item() == \
        pytest.approx(math.log(2))
    signs = [BiPO(seed=3).signs(s)[0] for s in range(200)]
    assert set(signs) == {1.0, -1.0} and 70 < signs.count(1.0) < 130  # uniform draws
    assert signs == [BiPO(seed=3).signs(s)[0] for s in range(200)]  # the same on resume


def test_reps_terms_by_hand():
    # chosen (the concept) 4 tokens, the other 2; policy sums and frozen sums
    c, r = _side([-8.0], [-10.0], n=4), _side([-3.0], [-4.0], n=2)
    plus, _ = RePS()(LossInputs(chosen=c, rejected=r, sign=1.0))
    beta_plus = max(-4.0 - (-10.0), 1.0)  # 6
    delta_plus = beta_plus * (-8.0 / 4) - (-3.0 / 2)
    assert plus.item() == pytest.approx(-math.log(1 / (1 + math.exp(-delta_plus))), rel=1e-6)
    minus, _ = RePS()(LossInputs(chosen=c, rejected=r, sign=-1.0))
    beta_minus = max(-10.0 - (-4.0), 1.0)  # clamped to 1
    delta_minus = beta_minus * (-3.0 / 2) - (-8.0 / 4)
    assert minus.item() == pytest.approx(-math.log(1 / (1 + math.exp(-delta_minus))), rel=1e-6)
    loss, delta = reps_terms(torch.tensor([-1.0]), torch.tensor([-1.0]), torch.tensor([0.0]), torch.tensor([0.0]), 1)
    assert delta.item() == pytest.approx(0.0) and loss.item() == pytest.approx(math.log(2))
    assert RePS().signs(7) == (1.0, -1.0)


def _cfg(tiny_folder, run_dir, **kw):
    base = dict(model=str(tiny_folder), run_dir=str(run_dir), steps=3, batch_size=4, warmup_steps=1, limit=8,
                eval_limit=6, n_samples=1, save_every=2, progress=False, lr=1e-2,
                eval_data=("embedded:arithmetic",), vector=VectorSettings(layers="1"), reft=ReftSettings(layers="1"))
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize(("intervention", "loss"), [("vector", "bipo"), ("reft", "reprpo"), ("vector", "reps"),
                                                    ("lora", "bipo")])
def test_each_intervention_trains_with_the_loss_and_writes_a_run_eval_reads(tiny_folder, tmp_path, intervention, loss):
    from reprkit.evalrun import load_target

    run = train(_cfg(tiny_folder, tmp_path / "run", intervention=intervention, loss=loss))
    assert json.loads((run / "config.json").read_text())["intervention"] == intervention
    files = {p.name for p in (run / "adapter").iterdir()}
    assert ({I.CONFIG_FILE, I.WEIGHTS_FILE} <= files) == (intervention != "lora")
    rows, _ = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    moved = [abs(v[k] - 1.0) for v in rows[-1]["layers"].values() for k in ("cos_chosen", "norm_chosen")]
    assert max(moved) > 1e-5  # the policy moved off the frozen model (LoReFT at f1+l1: from layer 2 on)
    if loss == "reps":  # both passes in every step, the loss their sum
        assert {"reps_plus", "reps_minus"} <= set(rows[-1])
        assert rows[-1]["loss"] == pytest.approx(rows[-1]["reps_plus"] + rows[-1]["reps_minus"], rel=1e-5)
    model, _, run_dir, _ = load_target(str(run))
    assert run_dir == run
    if intervention != "lora":
        assert I.attached(model).kind == intervention


def test_an_intervention_deeper_than_the_loss_reads_is_refused_by_name(tiny_folder, tmp_path):
    from reprkit.losses import ReprPO

    with pytest.raises(TrainingError, match="stops before the intervention"):
        train(_cfg(tiny_folder, tmp_path / "deep", intervention="vector", vector=VectorSettings(layers="3"),
                   loss="reprpo", reprpo=ReprPO(layers="1")))
    assert not (tmp_path / "deep").exists()


def test_a_prompt_only_intervention_at_the_deepest_loss_layer_is_refused_by_name(tiny_folder, tmp_path):
    """ReprPO reads the completion's tokens: a LoReFT on the prompt's first and last tokens at the
    layer it reads (and not before) could only reach them through a later block, and none runs."""
    from reprkit.losses import ReprPO

    with pytest.raises(TrainingError, match="edits prompt tokens .* no block after the edit"):
        train(_cfg(tiny_folder, tmp_path / "blind", intervention="reft", reft=ReftSettings(layers="1", positions="f1+l1"),
                   loss="reprpo", reprpo=ReprPO(layers="1")))
    assert not (tmp_path / "blind").exists()


def test_vector_run_resumes_from_its_checkpoint_to_the_same_vector(tiny_folder, tmp_path):
    straight = train(_cfg(tiny_folder, tmp_path / "a", intervention="vector", loss="dpo", steps=4))
    half = train(_cfg(tiny_folder, tmp_path / "b", intervention="vector", loss="dpo", steps=2))
    train(TrainConfig(resume=str(half), steps=4, progress=False))
    from safetensors.torch import load_file

    a, b = (load_file(str(r / "adapter" / I.WEIGHTS_FILE)) for r in (straight, half))
    torch.testing.assert_close(a["vectors.1"], b["vectors.1"], rtol=0, atol=1e-6)


def test_a_vector_trained_with_dpo_equals_a_hand_written_loop_step_for_step(tiny_folder, tmp_path):
    """The trainer against plain torch: the same pairs (all four in every step), a forward hook adding
    v at block 1's output, DPO by hand, AdamW without warm-up or clipping."""
    from reprkit.models import load_model
    from reprkit.training.batches import load_pairs, read_items

    cfg = _cfg(tiny_folder, tmp_path / "run", intervention="vector", loss="dpo", steps=3, limit=4, warmup_steps=0,
               max_grad_norm=1e9, lr=5e-2, eval_limit=2)
    run = train(cfg)
    rows, _ = read_jsonl(run / "metrics.jsonl")

    model, tok = load_model(str(tiny_folder))
    pairs, _, _, _ = load_pairs(cfg, tok, read_items(cfg))
    from reprkit.data import collate

    batch = collate(pairs, tok.pad_token_id)
    for p in model.parameters():
        p.requires_grad_(False)
    v = torch.zeros(model.config.hidden_size, requires_grad=True)
    hook = model.model.layers[1].register_forward_hook(lambda m, a, out: out + v if torch.is_tensor(out) else (out[0] + v, *out[1:]))
    opt = torch.optim.AdamW([v], lr=5e-2, weight_decay=0.0)

    def logps(side, use_v):
        ids, attn, comp = (batch[f"{side}_{k}"] for k in ("input_ids", "attention_mask", "completion_mask"))
        if use_v:
            logits = model(input_ids=ids, attention_mask=attn).logits
        else:
            hook.remove()
            with torch.no_grad():
                logits = model(input_ids=ids, attention_mask=attn).logits
        lp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None])[..., 0]
        return (lp * comp[:, 1:]).sum(-1)

    model.eval()
    hand = []
    for _ in range(3):
        hook.remove()
        ref_c, ref_r = logps("chosen", False), logps("rejected", False)
        hook = model.model.layers[1].register_forward_hook(
            lambda m, a, out: out + v if torch.is_tensor(out) else (out[0] + v, *out[1:]))
        pc, pr = logps("chosen", True), logps("rejected", True)
        loss = -F.logsigmoid(0.1 * ((pc - ref_c) - (pr - ref_r))).mean()
        hand.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    hook.remove()
    assert [r["loss"] for r in rows] == pytest.approx(hand, abs=2e-5)
    from safetensors.torch import load_file

    trained = load_file(str(run / "adapter" / I.WEIGHTS_FILE))["vectors.1"]
    torch.testing.assert_close(trained, v.detach(), rtol=0, atol=1e-5)
    assert v.detach().norm() > 0.05  # it moved: the comparison is not of two zeros


def test_the_minus_pass_runs_the_policy_with_the_edit_negated(tiny_folder):
    """BiPO's and RePS's -1 pass: the policy log-probs are those of the model with -v; the frozen ones
    stay the model's without it, and are reused from the +1 pass, not run again."""
    from reprkit.data import collate
    from reprkit.losses import DPO
    from reprkit.models import load_model
    from reprkit.training.batches import load_pairs, read_items
    from reprkit.training.step import forward_pair_batch

    cfg = _cfg(tiny_folder, "unused", limit=4)
    model, tok = load_model(str(tiny_folder))
    pairs, _, _, _ = load_pairs(cfg, tok, read_items(cfg))
    batch = collate(pairs, tok.pad_token_id)
    iv = I.attach(model, _random_vector(layers=(1,), hidden=model.config.hidden_size))
    plus = forward_pair_batch(model, batch, [1], DPO(), 0.0, sign=1.0)
    minus = forward_pair_batch(model, batch, [1], DPO(), 0.0, sign=-1.0, frozen=plus.frozen_pass)
    with torch.no_grad():
        iv.vectors["1"].neg_()
    by_hand = forward_pair_batch(model, batch, [1], DPO(), 0.0)
    torch.testing.assert_close(minus.chosen.logps, by_hand.chosen.logps, rtol=0, atol=1e-5)
    torch.testing.assert_close(minus.rejected.ref_logps, by_hand.rejected.ref_logps, rtol=0, atol=1e-5)
    assert not torch.allclose(plus.chosen.logps, minus.chosen.logps)
    assert minus.sign == -1.0


@pytest.mark.parametrize("positions", ["f1+l1", "prompt", "response", "all"])
def test_scoring_on_the_prompt_cache_equals_whole_sequences_at_every_positions_spec(tiny_folder, positions):
    """Scoring runs prompts once and responses on their cache (the default) or prompt + response as
    one sequence; an intervention at chosen positions must be told the split on both paths."""
    from reprkit import data as D
    from reprkit.evaluate import ranked_logps
    from reprkit.models import load_model

    model, tok = load_model(str(tiny_folder))
    iv = I.attach(model, I.LoReFTIntervention([1], model.config.hidden_size, positions=positions, rank=2))
    with torch.no_grad():
        for p in iv.source.parameters():
            p.add_(torch.randn_like(p))
    items = D.load_items("embedded:arithmetic", "test", limit=4)
    encoded = D.encode_ranked(items, tok, 64, 32)
    cached = ranked_logps(model, encoded, tok.pad_token_id, base=True, shared_prompt=True)
    whole = ranked_logps(model, encoded, tok.pad_token_id, base=True, shared_prompt=False)
    torch.testing.assert_close(cached["policy"]["logps"], whole["policy"]["logps"], rtol=0, atol=2e-4)
    assert (cached["policy"]["logps"] - cached["base"]["logps"]).abs().max() > 1e-3  # it acts


def test_cli_trains_a_bipo_vector_that_eval_and_steer_evaluate_read(tiny_folder, tmp_path, capsys):
    """`reprkit train --intervention vector --loss bipo`, then `reprkit eval RUN` and `reprkit steer
    --direction RUN --evaluate` on an A/B behaviour file (the shipped fixture rows)."""
    from reprkit.cli import main
    from reprkit.directions import Direction

    run = tmp_path / "run"
    main(["train", "--model", str(tiny_folder), "--run-dir", str(run), "--intervention", "vector", "--loss", "bipo",
          "--vector.layers", "1", "--vector.scale", "--steps", "3", "--batch-size", "4", "--limit", "8", "--eval-limit",
          "4", "--n-samples", "1", "--no-progress", "--lr", "1e-2", "--eval-data", "embedded:arithmetic"])
    assert json.loads((run / "config.json").read_text())["vector"] == {"layers": "1", "positions": "all", "scale": True}
    capsys.readouterr()
    main(["eval", str(run), "--data", "embedded:arithmetic", "--limit", "4"])
    assert "embedded:arithmetic" in capsys.readouterr().out
    d = Direction.load(run)
    assert sorted(d.vectors) == [1] and d.info["method"] == "trained_vector" and d.info["loss"] == "bipo"
    assert d.vectors[1].norm() > 0
    behaviour = tmp_path / "b.jsonl"
    from tests.conftest import FIXTURES

    behaviour.write_text((FIXTURES / "anthropic-evals" / "advanced-ai-risk" / "corrigible-neutral-HHH.jsonl").read_text())
    main(["steer", "--direction", str(run), "--model", str(tiny_folder), "--evaluate", str(behaviour), "--limit", "6",
          "--strengths", "-1", "0", "1", "--kl", "0.002", "--out", str(tmp_path / "steer.json")])
    res = json.loads((tmp_path / "steer.json").read_text())
    strengths = [row["strength"] for row in res["table"]]
    assert len(strengths) == 3 and strengths[1] == 0.0 and strengths[0] == -strengths[2] != 0
    with pytest.raises(ValueError, match="not a vector"):
        reft = train(_cfg(tiny_folder, tmp_path / "reft", intervention="reft", loss="dpo", steps=1))
        Direction.load(reft)


def test_guard_detects_an_intervention_that_does_not_change(tiny_folder, tmp_path, monkeypatch):
    """A vector on the prompt's end tokens at block 1, and a loss on block 1's completion tokens alone:
    the graph reaches the vector but its gradient is zero, so it never moves; with the up-front
    refusal of that layout switched off, the guard refuses it at the first step with a positive rate,
    before any checkpoint (the run directory is removed)."""
    import reprkit.training.adapter as A
    from reprkit.losses import ReprPO

    monkeypatch.setattr(A, "blind_layers", lambda *args: [])

    with pytest.raises(TrainingError, match="did not change after an optimiser step"):
        train(_cfg(tiny_folder, tmp_path / "r", eval_data=(), intervention="vector",
                   vector=VectorSettings(layers="1", positions="f1+l1"), loss="reprpo", reprpo=ReprPO(layers="1")))
    assert not (tmp_path / "r").exists()


def test_model_apply_still_walks_a_model_that_carries_an_intervention():
    """``nn.Module.apply(fn)`` (weight init, dtype casts in other libraries) recurses into every
    submodule: the intervention's own edit is not named ``apply``, so it does not break the walk."""
    model = tiny_llama()
    I.attach(model, I.LoReFTIntervention([1], 32, rank=2))
    seen = []
    model.apply(lambda m: seen.append(type(m).__name__))
    assert "LoReFTIntervention" in seen and "LlamaDecoderLayer" in seen
