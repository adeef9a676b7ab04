"""Every loss gives the same gradient however a step's batch is split: one batch of 8 pairs, two
micro-batches of 4 accumulated (``--grad-accum 2``), and two processes of 4 (data parallel: their
gradients averaged, ``global_sum`` an all-reduce; emulated here in one process by replaying each
process's contributions, the arithmetic DDP does)."""

import dataclasses

import pytest
import torch

from reprkit.config import preset
from reprkit.data import collate, collate_ranked
from reprkit.losses import base as loss_base
from reprkit.losses import reprpo as reprpo_module
from reprkit.train import forward_pair_batch, forward_ranked_batch, only_layers, plan_layers
from reprkit.training.step import batch_totals

from .conftest import TINY, tiny_llama

PRESETS = ["dpo", "ipo", "dr-dpo", "reprpo", "reprpo-direction", "reprpo-direction-only", "reroute", "prefvec",
           "prefvec-hinges", "plackett-luce", "bipo", "reps"]


def _rows(n: int = 8, seed: int = 5) -> list[dict]:
    g = torch.Generator().manual_seed(seed)

    def ids(lo, hi):
        return torch.randint(1, TINY["vocab_size"], (int(torch.randint(lo, hi, (1,), generator=g)),), generator=g).tolist()

    rows = []
    for _ in range(n):
        prompt = ids(3, 14)
        rows.append({"chosen_prompt_ids": prompt, "rejected_prompt_ids": prompt, "chosen_ids": ids(2, 9),
                     "rejected_ids": ids(2, 9)})
    return rows


def _ranked(rows):
    return [{"prompt_ids": r["chosen_prompt_ids"], "responses_ids": [r["chosen_ids"], r["rejected_ids"]]} for r in rows]


def _model():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_llama().double(), LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    return model.train()


def _gradient(model, loss, pieces: list[list[dict]], ranked: bool) -> tuple[dict, float]:
    """The trainer's step on ``pieces`` (micro-batches of rows): totals, then each piece's loss / pieces
    backward. Returns the gradients and the mean logged loss."""
    loss_layers, layers, _ = plan_layers(model, loss)
    model.zero_grad()
    if ranked:
        batches = [collate_ranked(_ranked(p), 0) for p in pieces]
    else:
        batches = [collate(p, 0) | {"index": torch.arange(len(p))} for p in pieces]
    totals = None if ranked else batch_totals(model, batches, layers, loss_layers, loss)
    values = []
    for batch in batches:
        if ranked:
            inputs = forward_ranked_batch(model, batch, layers, loss, progress=0.5)
        else:
            inputs = forward_pair_batch(model, batch, layers, loss, progress=0.5)
        inputs = dataclasses.replace(inputs, totals=totals, pieces=len(batches) if totals else 1)
        value, _ = loss(only_layers(inputs, loss_layers))
        (value / len(batches)).backward()
        values.append(float(value.detach()))
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, sum(values) / len(values)


def _two_processes(model, loss, halves, ranked, monkeypatch) -> tuple[dict, float]:
    """Data parallel over two emulated processes: each runs its half; every ``global_sum`` returns
    the sum of both processes' values at that call (recorded in a first pass), and the gradients
    are averaged, as DDP's all-reduce does."""
    recorded = {0: [], 1: []}
    state = {"process": 0, "call": 0, "replay": False}

    def fake_sum(x):
        if not state["replay"]:
            recorded[state["process"]].append(x.detach().clone())
            return x
        i = state["call"]
        state["call"] += 1
        return recorded[0][i].to(x.dtype) + recorded[1][i].to(x.dtype)

    monkeypatch.setattr(loss_base, "global_sum", fake_sum)
    monkeypatch.setattr(reprpo_module, "global_sum", fake_sum)
    for module in (loss_base, reprpo_module):
        monkeypatch.setattr(module, "world_size", lambda: 2)
    import reprkit.losses.dpo as dpo_module

    monkeypatch.setattr(dpo_module, "world_size", lambda: 2)
    for p in (0, 1):  # record each process's contributions
        state["process"] = p
        _gradient(model, loss, [halves[p]], ranked)
    grads, values = [], []
    state["replay"] = True
    for p in (0, 1):
        state["process"], state["call"] = p, 0
        g, v = _gradient(model, loss, [halves[p]], ranked)
        grads.append(g)
        values.append(v)
    return {n: (grads[0][n] + grads[1][n]) / 2 for n in grads[0]}, sum(values) / 2


def _same(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys()
    scale = max(g.abs().max() for g in a.values())
    assert scale > 1e-6, "no gradient to compare"
    for n in a:
        assert (a[n] - b[n]).abs().max() <= 1e-6 * scale, (what, n, float((a[n] - b[n]).abs().max()), float(scale))


@pytest.mark.parametrize("name", PRESETS)
def test_gradient_of_a_batch_equals_its_pieces_accumulated_and_over_processes(name, monkeypatch):
    cfg = preset(name)
    loss = cfg.loss_fn()
    ranked = getattr(loss, "ranked", False)
    model = _model()
    rows = _rows()
    whole, value = _gradient(model, loss, [rows], ranked)
    accumulated, value_acc = _gradient(model, loss, [rows[:4], rows[4:]], ranked)
    _same(whole, accumulated, "2 x 4 accumulated")
    assert value_acc == pytest.approx(value, rel=1e-6)  # the logged loss is the whole batch's too
    processes, value_dp = _two_processes(model, loss, [rows[:4], rows[4:]], ranked, monkeypatch)
    _same(whole, processes, "2 processes x 4")
    assert value_dp == pytest.approx(value, rel=1e-6)


def test_the_split_check_sees_a_batch_statistic():
    """The mutation this test exists for: ReprPO's direction term normalised by each piece's own sum
    (what it did before the trainer passed whole-batch totals) gives another gradient."""
    loss = preset("reprpo").loss_fn()
    model = _model()
    rows = _rows()
    whole, _ = _gradient(model, loss, [rows], False)
    unsplit = type(loss).split_totals
    try:
        type(loss).split_totals = False  # the piece's own denominator
        accumulated, _ = _gradient(model, loss, [rows[:4], rows[4:]], False)
    finally:
        type(loss).split_totals = unsplit
    with pytest.raises(AssertionError):
        _same(whole, accumulated, "2 x 4 with per-piece denominators")
