"""The design's answer: the entry condition, the positive control, normalised transfer and the
evidence family, on cells whose outcomes are set by hand; and `reprkit compare` end to end on data
of one's own, with ceilings, on a tiny model."""

import json

import numpy as np
import pytest

from reprkit.compare import design
from reprkit.compare.settings import Grid
from reprkit.stats import seed_t_difference

N = 250


def _outcomes(rng, accuracy):
    return [int(v) for v in rng.random(N) < accuracy]


def _cell(shift, method, seed, cols, role=None):
    """A cell with per-item outcomes per column: {col: list of 0/1}, item ids named for the column
    (a ceiling's "source test" is its target's items: ids of "target <target>")."""
    def ids(c):
        return f"target {shift}" if role == "ceiling" else c

    cell = {"shift": shift, "method": method, "seed": seed,
            "scores": {c: {"items": {"id": [f"{ids(c)}-{i}" for i in range(N)], "correct": v}} for c, v in cols.items()}}
    if role:
        cell["role"] = role
    return cell


def _grid_cells(gains, seeds=3, rng_seed=0):
    """Cells of one source s with targets t1, t2: method -> (source gain, t1 gain, t2 gain) over a
    frozen model at 0.4, each seed's accuracy shifted by its own seed effect (shared by its columns)."""
    rng = np.random.default_rng(rng_seed)
    cols = ("source test", "target t1", "target t2")
    cells = [_cell("s", "base", 0, {c: _outcomes(rng, 0.4) for c in cols})]
    for method, g in gains.items():
        for seed in range(seeds):
            effect = rng.normal(0, 0.01)
            cells.append(_cell("s", method, seed, {c: _outcomes(rng, 0.4 + x + effect) for c, x in zip(cols, g)}))
    return cells


def test_entry_condition_keeps_out_a_method_that_did_not_learn_its_source():
    cells = _grid_cells({"dpo": (0.2, 0.1, 0.1), "reprpo": (0.2, 0.05, 0.05), "reroute": (0.0, 0.0, 0.0)})
    res = design.answer(cells, [], {"primary_targets": ["t1", "t2"]})["s"]
    assert res["entry"]["dpo"]["learnt"] and res["entry"]["reprpo"]["learnt"]
    assert not res["entry"]["reroute"]["learnt"]
    fam = res["family"]
    assert set(fam["rows"]) == {"reprpo"} and fam["not_learnt"] == ["reroute"]
    row = fam["rows"]["reprpo"]
    assert row["difference"] < 0 and row["p_holm"] == row["p"]  # a family of one
    # the simultaneous bound of a family of one is the 95% interval; the detectable difference is positive
    assert row["simultaneous_ci"] == pytest.approx(row["ci95"]) and row["mde80_family"] > 0
    text = "\n".join(design.answer_lines({"s": res}))
    assert "no: did not learn this source" in text and "Not compared (did not learn the source at seed level): reroute" in text


def test_no_family_where_dpo_did_not_learn():
    cells = _grid_cells({"dpo": (0.0, 0.0, 0.0), "reprpo": (0.2, 0.1, 0.1)})
    fam = design.answer(cells, [], {})["s"]["family"]
    assert fam["rows"] == {} and "DPO did not learn" in fam["why_empty"]


def test_one_seed_leaves_the_entry_and_the_control_undecided():
    """With one training seed the seed-level test is the items' alone: a strong source gain is not
    called learnt, the control not shown, and no family is formed, until a second seed is in."""
    cells = _grid_cells({"dpo": (0.2, 0.1, 0.1), "reprpo": (0.2, 0.05, 0.05), "reroute": (0.0, 0.0, 0.0)}, seeds=1)
    res = design.answer(cells, [], {"primary_targets": ["t1", "t2"], "positive_control": "t1"})["s"]
    assert res["entry"]["dpo"]["p"] < 0.001  # the items alone would call it learnt
    assert all(e["learnt"] is None and "1 seed" in e["undecided"] for e in res["entry"].values())
    assert res["positive_control"]["shown"] is None
    fam = res["family"]
    assert fam["rows"] == {} and fam["not_learnt"] == [] and "undecided" in fam["why_empty"]
    assert fam["undecided"] == ["dpo", "reprpo", "reroute"]
    text = "\n".join(design.answer_lines({"s": res}))
    assert "| yes |" not in text and "no: did not learn" not in text and "Not compared yet" in text
    # a second seed decides it
    two = design.answer(_grid_cells({"dpo": (0.2, 0.1, 0.1)}, seeds=2), [], {})["s"]
    assert two["entry"]["dpo"]["learnt"] is True


def test_family_pools_targets_of_the_same_runs_and_adjusts_by_holm():
    cells = _grid_cells({"dpo": (0.2, 0.05, 0.05), "reprpo": (0.2, 0.3, 0.3), "prefvec": (0.2, 0.05, 0.06)})
    fam = design.answer(cells, [], {"primary_targets": ["t1", "t2"]})["s"]["family"]
    assert set(fam["rows"]) == {"reprpo", "prefvec"}
    by = fam["rows"]
    assert by["reprpo"]["significant_holm"] and not by["prefvec"]["significant_holm"]
    assert by["reprpo"]["p_holm"] == pytest.approx(min(1.0, 2 * by["reprpo"]["p"]))  # the smaller p, times 2
    # the two targets are scored by the same runs: the seed part is pooled per run
    from reprkit.stats import pooled_seed_t_difference

    strata = {t: (design.per_seed_items(cells, "s", "reprpo", f"target {t}"), design.per_seed_items(cells, "s", "dpo", f"target {t}"))
              for t in ("t1", "t2")}
    shared = pooled_seed_t_difference(strata, shared={"t1": "s", "t2": "s"})
    assert by["reprpo"]["se"] == pytest.approx(shared["se"]) != pytest.approx(pooled_seed_t_difference(strata)["se"])
    lo, hi = by["prefvec"]["simultaneous_ci"]
    assert lo < by["prefvec"]["ci95"][0] and hi > by["prefvec"]["ci95"][1]  # wider than the 95% interval


def test_positive_control_and_normalised_transfer():
    rng = np.random.default_rng(3)
    cells = _grid_cells({"dpo": (0.2, 0.1, 0.0)}, rng_seed=4)
    ceilings = [_cell("t1", "dpo", s, {"source test": _outcomes(rng, 0.6)}, role="ceiling") for s in range(3)]
    res = design.answer(cells, ceilings, {"positive_control": "t1"})["s"]
    assert res["positive_control"]["shown"] and res["positive_control"]["target"] == "t1"
    nt = res["normalised"]["t1"]["dpo"]
    frozen = design.per_seed_items(cells, "s", "base", "target t1")
    gain = seed_t_difference(design.per_seed_items(cells, "s", "dpo", "target t1"), frozen)["difference"]
    ceiling = seed_t_difference(design.per_seed_items(ceilings, "t1", "dpo", "source test"), frozen)["difference"]
    assert nt["normalised"] == pytest.approx(gain / ceiling) and 0.2 < nt["normalised"] < 0.9
    assert nt["bounded"] and nt["ci95"][0] < nt["normalised"] < nt["ci95"][1]
    # a control target where DPO gained nothing: not shown
    assert not design.answer(cells, ceilings, {"positive_control": "t2"})["s"]["positive_control"]["shown"]
    # a ceiling no better than the frozen model: no finite interval
    flat = [_cell("t1", "dpo", s, {"source test": _outcomes(rng, 0.4)}, role="ceiling") for s in range(3)]
    assert design.answer(cells, flat, {})["s"]["normalised"]["t1"]["dpo"]["ci95"] is None


def test_compare_on_your_own_data_with_ceilings(tiny_folder, tmp_path):
    """`reprkit compare` on sets named in `data` (no shift list), with a ceiling per target: every
    cell, the ceilings, and the answer."""
    from reprkit.cli import parse

    cfg = Grid(model=str(tiny_folder), shifts=["arith->caps"], data={"arith": "embedded:arithmetic",
                                                                      "caps": "embedded:capitals"},
               methods=["base", "length", "dpo", "reprpo"], seeds=[0, 1], train_split="train[:16]",
               val_split="train[16:24]", test_split="test", batch_size=4, max_length=96, max_prompt_length=64,
               lora_r=2, eval_max_length=96, curve_points=1, curve_target_limit=4, retain_data="embedded:capitals",
               retain_limit=4, lr_sweep=[1e-3], sweep_steps=None, n_samples=1, truthfulqa_limit=0,
               sycophancy_limit=0, ceiling_methods=["dpo"], ceiling_seeds=[0], positive_control="caps")
    path = tmp_path / "mine.json"
    import dataclasses

    path.write_text(json.dumps(dataclasses.asdict(cfg)))
    out = tmp_path / "out"
    parse(["compare", str(path), "--out", str(out), "--poll", "0.1"]).run()
    found = sorted(str(p.relative_to(out)) for p in out.rglob("cell.json"))
    assert found == ["ceiling/caps/dpo/seed0/cell.json", "cells/arith/base/seed0/cell.json", "cells/arith/dpo/seed0/cell.json",
                     "cells/arith/dpo/seed1/cell.json", "cells/arith/length/seed0/cell.json",
                     "cells/arith/reprpo/seed0/cell.json", "cells/arith/reprpo/seed1/cell.json"]
    ceiling = json.loads((out / "ceiling/caps/dpo/seed0/cell.json").read_text())
    base = json.loads((out / "cells/arith/base/seed0/cell.json").read_text())
    assert ceiling["role"] == "ceiling" and ceiling["lr"] == 1e-3 and list(ceiling["scores"]) == ["source test"]
    assert ceiling["scores"]["source test"]["data"] == "embedded:capitals"
    # the ceiling is scored on the target's items, under the same ids as the frozen model's target column
    assert ceiling["scores"]["source test"]["items"]["id"] == base["scores"]["target caps"]["items"]["id"]
    res = json.loads((out / "answer.json").read_text())["arith"]
    assert set(res["entry"]) == {"dpo", "reprpo"} and "positive_control" in res and "caps" in res["normalised"]
    assert "## The design's answer" in (out / "results.md").read_text()
    assert "Interim report" not in (out / "results.md").read_text()
    assert "epoch(s) of each source's train[:16] in batches" in (out / "results.md").read_text()  # the grid's split
    # a report from part of the design (a seed's cell gone), written by `--report` without training
    (out / "cells/arith/reprpo/seed1/cell.json").unlink()
    parse(["compare", str(path), "--out", str(out), "--report"]).run()
    text = (out / "results.md").read_text()
    assert text.startswith("## Interim report") and "6 of 7 cells" in text and "reprpo on arith: 0." in text
    assert not (out / "cells/arith/reprpo/seed1/cell.json").exists()  # nothing was trained
    with pytest.raises(SystemExit, match="no grid.json.*reprkit compare CONFIG --out"):
        parse(["compare", str(path), "--out", str(tmp_path / "empty"), "--report"]).run()


def test_a_local_file_scored_on_its_own_training_rows_is_refused(tmp_path):
    """A local file has one split: its "test" is every row, the training rows among them. The grid
    refuses before any run and names the fix; separate files per split pass."""
    from reprkit.compare.command import check_held_out

    rows = [{"prompt": f"q{i}?", "chosen": "yes", "rejected": "no"} for i in range(20)]
    one, held = tmp_path / "all.jsonl", tmp_path / "held.jsonl"
    one.write_text("".join(json.dumps(r) + "\n" for r in rows))
    held.write_text("".join(json.dumps({**r, "prompt": f"h{i}?"}) + "\n" for i, r in enumerate(rows)))
    grid = Grid(shifts=["mine->other"], data={"mine": str(one), "other": str(held)}, train_split="train[:75%]",
                val_split="train[75%:]")
    with pytest.raises(ValueError, match=r"(?s)mine test vs train\[:75%\]: 15 of 20.*separate test file"):
        check_held_out(grid, {"mine": ["other"]})
    split = Grid(shifts=["mine->other"], data={"mine": {"train": str(one), "test": str(held)}, "other": str(held)},
                 train_split="train[:75%]", val_split="train[75%:]", ceiling_methods=["dpo"])
    with pytest.raises(ValueError, match=r"other test vs train\[:75%\]: 15 of 20"):  # the ceiling trains on other
        check_held_out(split, {"mine": ["other"]})
    split.ceiling_methods = []
    report = check_held_out(split, {"mine": ["other"]})
    assert report["mine test vs train[:75%]"]["training_prompts"] == 0
    assert report["mine train[75%:] vs train[:75%]"] == {"n": 5, "training_prompts": 0, "share": 0.0}
