"""The comparison grid runs, keeps per-item outcomes, writes its paired statistics, and resumes."""

import csv
import dataclasses
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from reprkit import cli
from reprkit import data as D
from reprkit.compare import cells, command
from reprkit.compare import scoring as grid_scoring
from reprkit.compare import settings as grid_settings
from reprkit.compare import sweep as grid_sweep
from reprkit.compare import training as grid_training


def _main():
    """``reprkit compare`` on the command line the grid script took (``--grid FILE`` first), raising
    what the command raises."""
    import sys

    argv = sys.argv[1:]
    i = argv.index("--grid")
    cli.parse(["compare", argv[i + 1], *argv[:i], *argv[i + 2:]]).run()


compare = SimpleNamespace(main=_main, dataclasses=dataclasses, D=D, time=time, Grid=grid_settings.Grid,
                          resolve_shifts=grid_settings.resolve_shifts,
                          machine=grid_settings.machine, tune_lr=grid_sweep.tune_lr, claim=cells.claim,
                          run_cell=cells.run_cell, cell_order=cells.cell_order, work=cells.work)
GRID_MODULES = (cells, command, grid_settings, grid_scoring, grid_training, grid_sweep)


def patch(monkeypatch, name: str, value) -> None:
    """Replace ``name`` in every grid module that holds it (each imports the names it uses)."""
    held = [m for m in GRID_MODULES if hasattr(m, name)]
    assert held, name
    for m in held:
        monkeypatch.setattr(m, name, value)


def test_grid_outputs_and_resume(tiny_folder, tmp_path, monkeypatch):
    grid = compare.Grid(model=str(tiny_folder), shifts=["alpaca_easy->alpaca_hard"],
                        methods=["base", "mms", "dpo", "reprpo"], seeds=[0, 1], train_limit=8, batch_size=2,
                        max_length=96, max_prompt_length=48, lora_r=2, eval_max_length=96, eval_limit=6,
                        curve_points=2, curve_target_limit=4, val_limit=5, retain_data="embedded:capitals", retain_limit=4,
                        lr_sweep=[1e-3], sweep_steps=1, mms_layers="0,1", n_samples=1,
                        truthfulqa_limit=3, sycophancy_limit=3)
    gfile = tmp_path / "grid.json"
    gfile.write_text(json.dumps(compare.dataclasses.asdict(grid)))
    out = tmp_path / "out"
    monkeypatch.setattr("sys.argv", ["compare", "--grid", str(gfile), "--out", str(out)])
    compare.main()
    rows = list(csv.DictReader(open(out / "results.csv")))
    cells = {(r["method"], r["seed"]) for r in rows}
    assert cells == {("base", "0"), ("mms", "0"), ("dpo", "0"), ("dpo", "1"), ("reprpo", "0"), ("reprpo", "1")}
    assert {r["eval"] for r in rows} == {"source test", "target alpaca_hard"}
    assert all(r["n"] == "6" for r in rows)
    # per-item outcomes: the same item ids under every method, so differences are paired
    cell = json.loads((out / "cells/alpaca_easy/dpo/seed0/cell.json").read_text())
    base = json.loads((out / "cells/alpaca_easy/base/seed0/cell.json").read_text())
    items = cell["scores"]["target alpaca_hard"]["items"]
    assert len(items["id"]) == 6 and set(items["correct"]) <= {0, 1}
    assert items["id"] == base["scores"]["target alpaca_hard"]["items"]["id"]
    assert [p["step"] for p in cell["curve"]] == [2, 4] and cell["steps"] == 4  # 8 pairs / 2, two curve points
    assert cell["curve"][0]["source val"]["n"] == 5 and cell["curve"][0]["target alpaca_hard"]["n"] == 4
    assert cell["retain_perplexity"]["ratio"] > 0 and len(cell["samples"]) == 1
    parts = cell["timing"]
    assert {"train", "of which steps", "curve scoring", "final scoring", "retain perplexity", "behaviour"} <= set(parts)
    assert 0 < parts["of which steps"] <= parts["train"] and sum(parts.values()) - parts["of which steps"] <= cell["seconds"] + 1
    assert set(cell["behaviour"]) == {"truthfulqa_mc1", "truthfulqa_mc2", "sycophancy"}
    assert cell["behaviour"]["sycophancy"]["n"] == 3 and "behaviour" not in json.loads(
        (out / "cells/alpaca_easy/dpo/seed1/cell.json").read_text())
    mms = json.loads((out / "cells/alpaca_easy/mms/seed0/cell.json").read_text())
    assert mms["mms"]["layer"] in (0, 1)
    paired = list(csv.DictReader(open(out / "paired.csv")))
    assert {(r["method"], r["vs"]) for r in paired if r["shift"] == "alpaca_easy"} >= {
        ("dpo", "base"), ("reprpo", "dpo"), ("reprpo", "base"), ("mms", "dpo")}
    assert any(r["shift"] == "pooled" for r in paired)
    matched = list(csv.DictReader(open(out / "matched.csv")))
    assert {r["method"] for r in matched} == {"dpo", "reprpo", "mms"}
    mms_row = next(r for r in matched if r["method"] == "mms")  # its own point, not the frozen model's
    assert float(mms_row["final_source_val"]) == mms["curve"][0]["source val"]["accuracy_mean"]
    md = (out / "results.md").read_text()
    assert "| alpaca_easy | target alpaca_hard | reprpo |" in md and "vs DPO" in md and "truthfulqa_mc1" in md
    assert "| dpo | 2 |" in md  # wall time by part, two DPO cells
    assert (out / "matched-accuracy.html").stat().st_size > 1000
    lr = json.loads((out / "lr" / "dpo.json").read_text())
    assert lr["lr"] == 1e-3 and lr["split"] == "train[90%:]" and set(lr["sweep"]) == {"0.001"}
    assert {"accuracy", "margin", "ppl_ratio", "n"} <= set(lr["sweep"]["0.001"])
    # the base row of the grid is what `reprkit eval` gives for the base model
    base_row = next(r for r in rows if r["method"] == "base" and r["eval"] == "source test")
    from reprkit.evalrun import evaluate_target

    again = evaluate_target(str(tiny_folder), ["genies:alpaca_easy"], split="test", limit=6, max_length=96)
    assert float(base_row["accuracy"]) == again["datasets"]["genies:alpaca_easy"]["accuracy_mean"]
    # resumable: a second invocation recomputes nothing
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("cell.json")}
    calls = []
    patch(monkeypatch, "train_to", lambda *a: calls.append(a))
    patch(monkeypatch, "score_sets", lambda *a, **k: calls.append(a))
    compare.main()
    assert calls == [] and {p: p.stat().st_mtime_ns for p in out.rglob("cell.json")} == stamps


def test_segments_equal_one_run(tiny_folder, tmp_path):
    """Training in curve segments (resumed from checkpoints) gives the one-run adapter."""
    from safetensors.torch import load_file

    grid = compare.Grid(model=str(tiny_folder), train_limit=8, batch_size=2, max_length=96, max_prompt_length=48,
                        lora_r=2)
    whole = grid_training.train_config(grid, "reprpo", "alpaca_easy", 0, 1e-3, tmp_path / "whole", 4)
    parts = grid_training.train_config(grid, "reprpo", "alpaca_easy", 0, 1e-3, tmp_path / "parts", 4)
    grid_training.train_to(whole, 4)
    grid_training.train_to(parts, 2)
    grid_training.train_to(parts, 4)
    a = load_file(tmp_path / "whole/adapter/adapter_model.safetensors")
    b = load_file(tmp_path / "parts/adapter/adapter_model.safetensors")
    for k in a:
        assert (a[k] - b[k]).abs().max() <= 1e-6 * (1 + a[k].abs().max()), k


@pytest.mark.parametrize("acc,margin,ppl,bound,expect", [
    ({1e-4: 0.6667, 1e-3: 0.6667, 3e-3: 0.5}, {1e-4: 0.01, 1e-3: 0.20, 3e-3: 0.9}, None, 3.0, 1e-3),  # tie: margin
    ({1e-4: 0.7, 1e-3: 0.6}, {1e-4: 0.0, 1e-3: 1.0}, None, 3.0, 1e-4),  # accuracy first
    ({1e-4: 0.5, 1e-3: 0.5}, {}, None, 3.0, 1e-4),  # nothing else to go on: the smaller rate
    ({1e-4: 0.5, 1e-3: 0.9}, {}, {1e-4: 1.1, 1e-3: 47.0}, 3.0, 1e-4),  # a rate that broke the model is out
    ({1e-4: 0.5, 1e-3: 0.9}, {}, {1e-4: 5.0, 1e-3: 47.0}, 3.0, 1e-4),  # all broke: the smallest
])
def test_learning_rate_rule(acc, margin, ppl, bound, expect):
    assert grid_sweep.choose_lr(acc, margin, ppl, bound) == expect


def test_shift_list_file_and_errors(tmp_path, monkeypatch):
    shifts = tmp_path / "shifts.json"
    shifts.write_text(json.dumps([{"source": "a", "target": "b"}, {"source": "a", "target": "c"},
                                  {"source": "d", "target": "b"}]))
    grid = compare.Grid(shifts=["a", "d->b"], shift_file=str(shifts))
    assert compare.resolve_shifts(grid) == {"a": ["b", "c"], "d": ["b"]}
    with pytest.raises(compare.D.DataError, match="targets of a"):
        compare.resolve_shifts(compare.Grid(shifts=["a->x"], shift_file=str(shifts)))
    with pytest.raises(compare.D.DataError, match="sources"):
        compare.resolve_shifts(compare.Grid(shifts=["zzz"], shift_file=str(shifts)))


def test_new_distributions_through_the_data_dir_and_a_shift_file(tiny_folder, tmp_path, monkeypatch):
    """Any GENIES-format folder works: distributions the shipped list has never heard of, found
    through $REPRKIT_DATA_DIR, and a shift list given on the command line; no code changes."""
    import shutil

    fixtures = Path(__file__).parent / "data" / "genies" / "distributions"
    root = tmp_path / "data"
    for old, new in (("alpaca_easy", "persona_unhelpful"), ("alpaca_hard", "persona_other")):
        shutil.copytree(fixtures / old, root / "genies" / "distributions" / new)
    shift_file = tmp_path / "my-shifts.json"
    shift_file.write_text(json.dumps([{"source": "persona_unhelpful", "target": "persona_other"}]))
    monkeypatch.setenv("REPRKIT_DATA_DIR", str(root))
    grid = compare.Grid(model=str(tiny_folder), shifts=["persona_unhelpful"], methods=["base", "mms"], seeds=[0],
                        eval_max_length=96, eval_limit=5, val_limit=4, curve_target_limit=3, mms_layers="0,1",
                        n_samples=1, truthfulqa_limit=0, sycophancy_limit=0, retain_data="embedded:capitals")
    gfile = tmp_path / "grid.json"
    gfile.write_text(json.dumps(compare.dataclasses.asdict(grid)))
    out = tmp_path / "out"
    monkeypatch.setattr("sys.argv", ["compare", "--grid", str(gfile), "--shift-file", str(shift_file), "--out", str(out)])
    compare.main()
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert {(r["shift"], r["method"], r["eval"]) for r in rows} == {
        (s, m, e) for s in ["persona_unhelpful"] for m in ["base", "mms"]
        for e in ["source test", "target persona_other"]}
    assert all(r["n"] == "5" for r in rows)
    assert json.loads((out / "grid.json").read_text())["shift_file"] == str(shift_file)


def test_sycophancy_subset_is_balanced_by_answer_letter():
    rows = [{"responses": [" (A)", " (B)"], "matching": [True, False]} for _ in range(6)]
    rows += [{"responses": [" (A)", " (B)"], "matching": [False, True]} for _ in range(2)]
    picked = grid_scoring.letter_balanced(rows, 4)
    letters = [r["responses"][r["matching"].index(True)] for r in picked]
    assert sorted(letters) == [" (A)", " (A)", " (B)", " (B)"]
    assert len(grid_scoring.letter_balanced(rows, 100)) == 8  # all rows when n exceeds them


def test_curve_points_of_a_lost_run_are_scored_again(tiny_folder, tmp_path):
    """A cell's curve.json can outlive its run directory (runs are not committed): points past the
    run's last checkpoint belong to another run and are scored again on this one."""
    grid = compare.Grid(model=str(tiny_folder), methods=["dpo"], seeds=[0, 1], train_limit=4, batch_size=2,
                        max_length=96, max_prompt_length=48, lora_r=2, eval_max_length=96, eval_limit=2,
                        curve_points=2, curve_target_limit=2, val_limit=2, retain_data="embedded:capitals",
                        retain_limit=2, n_samples=1, reference_cache=None)
    out = tmp_path / "out"
    cell_dir = out / "cells" / "alpaca_easy" / "dpo" / "seed1"
    cell_dir.mkdir(parents=True)
    (cell_dir / "curve.json").write_text(json.dumps([{"step": 1, "stale": True}]))
    cell = compare.run_cell(grid, out, "alpaca_easy", ["alpaca_hard"], "dpo", 1, {"dpo": 1e-3})
    assert [p["step"] for p in cell["curve"]] == [1, 2]
    assert not any("stale" in p for p in cell["curve"]) and "source val" in cell["curve"][0]


def test_cell_order_reference_rows_first_then_seed_by_seed():
    grid = compare.Grid(methods=["base", "mms", "dpo", "reprpo"], seeds=[0, 1])
    order = compare.cell_order(grid, ["a", "b"])
    assert order[:4] == [(0, "a", "base"), (0, "a", "mms"), (0, "b", "base"), (0, "b", "mms")]
    assert order[4:8] == [(0, "a", "dpo"), (0, "a", "reprpo"), (0, "b", "dpo"), (0, "b", "reprpo")]
    assert [c[0] for c in order[8:]] == [1] * 4 and len(order) == 12  # untrained methods: one seed


def test_a_sitting_can_run_some_methods_only(tmp_path, monkeypatch):
    calls, tuned = [], []
    patch(monkeypatch, "tune_lr", lambda *a: tuned.append(a[1]) or 1e-3)
    patch(monkeypatch, "run_cell", lambda grid, out, source, targets, method, seed, lrs:
                        calls.append((seed, source, method)))
    gfile = tmp_path / "grid.json"
    gfile.write_text(json.dumps({"shifts": ["alpaca_easy->alpaca_hard"], "methods": ["base", "mms", "dpo"]}))
    monkeypatch.setattr("sys.argv", ["compare", "--grid", str(gfile), "--out", str(tmp_path / "out"), "--methods", "mms"])
    compare.main()
    assert calls == [(0, "alpaca_easy", "mms")] and tuned == []  # no sweep for a method this sitting skips
    assert json.loads((tmp_path / "out" / "grid.json").read_text())["methods"] == ["base", "mms", "dpo"]
    monkeypatch.setattr("sys.argv", ["compare", "--grid", str(gfile), "--out", str(tmp_path / "out"), "--methods", "dpx"])
    with pytest.raises(ValueError, match="dpx"):
        compare.main()


def test_a_sitting_can_run_some_shifts_only(tmp_path, monkeypatch):
    patch(monkeypatch, "check_held_out", lambda *a: {})  # these sources have no data: the cells are stand-ins
    calls = []
    patch(monkeypatch, "tune_lr", lambda *a: 1e-3)
    patch(monkeypatch, "adopt_sweep_run", lambda *a: None)
    patch(monkeypatch, "run_cell", lambda grid, out, source, targets, method, seed, lrs:
                        calls.append((seed, source, method)))
    gfile = tmp_path / "grid.json"
    gfile.write_text(json.dumps({"shifts": ["alpaca_easy->alpaca_hard", "alpaca_short->alpaca_long"],
                                 "methods": ["base", "dpo", "reprpo"], "seeds": [0, 1],
                                 "sweep_steps": None}))
    argv = ["compare", "--grid", str(gfile), "--out", str(tmp_path / "out"), "--sources", "alpaca_short"]
    monkeypatch.setattr("sys.argv", argv)
    (tmp_path / "out" / "lr-epoch").mkdir(parents=True)
    (tmp_path / "out" / "lr-epoch" / "dpo.json").write_text(json.dumps({"lr": 1e-3}))
    compare.main()
    # reprpo is not tuned yet: its sweep's chosen run is finished as its first-shift cell this sitting
    assert calls == [(0, "alpaca_short", "base"), (0, "alpaca_easy", "reprpo"), (0, "alpaca_short", "dpo"),
                     (0, "alpaca_short", "reprpo"), (1, "alpaca_short", "dpo"), (1, "alpaca_short", "reprpo")]
    monkeypatch.setattr("sys.argv", argv[:-1] + ["alpaca_hard"])
    with pytest.raises(ValueError, match="alpaca_hard"):
        compare.main()



def test_with_per_shift_rates_a_sitting_leaves_the_other_shifts_sweeps_to_their_own_sitting(tmp_path, monkeypatch):
    """Two sittings side by side, one shift each: neither runs the other's sweep (each shift tunes on
    itself), so neither writes into the other's folders."""
    patch(monkeypatch, "check_held_out", lambda *a: {})  # these sources have no data: the cells are stand-ins
    calls, tuned = [], []
    patch(monkeypatch, "tune_lr", lambda grid, method, source, *a: tuned.append((method, source)) or 1e-3)
    patch(monkeypatch, "adopt_sweep_run", lambda *a: None)
    patch(monkeypatch, "run_cell", lambda grid, out, source, targets, method, seed, lrs:
                        calls.append((seed, source, method)))
    gfile = tmp_path / "grid.json"
    gfile.write_text(json.dumps({"shifts": ["alpaca_easy->alpaca_hard", "alpaca_short->alpaca_long"],
                                 "methods": ["base", "dpo"], "seeds": [0, 1], "sweep_steps": None,
                                 "tune_per_shift": True}))
    monkeypatch.setattr("sys.argv", ["compare", "--grid", str(gfile), "--out", str(tmp_path / "out"),
                                     "--sources", "alpaca_short"])
    compare.main()
    assert calls == [(0, "alpaca_short", "base"), (0, "alpaca_short", "dpo"), (1, "alpaca_short", "dpo")]
    assert tuned == [("dpo", "alpaca_short")]


def test_a_cell_records_the_threads_and_load_its_timing_ran_under():
    m = compare.machine()
    assert m["threads"] == grid_settings.torch.get_num_threads() and len(m["load_avg"]) == 3

def test_a_sitting_can_add_a_seed_beyond_the_grids(tmp_path, monkeypatch):
    patch(monkeypatch, "check_held_out", lambda *a: {})  # these sources have no data: the cells are stand-ins
    calls = []
    patch(monkeypatch, "tune_lr", lambda *a: 1e-3)
    patch(monkeypatch, "adopt_sweep_run", lambda *a: None)
    patch(monkeypatch, "run_cell", lambda grid, out, source, targets, method, seed, lrs:
                        calls.append((seed, source, method, grid.seeds)))
    gfile = tmp_path / "grid.json"
    gfile.write_text(json.dumps({"shifts": ["alpaca_easy->alpaca_hard", "alpaca_short->alpaca_long"],
                                 "methods": ["base", "dpo", "reprpo"], "seeds": [0, 1], "sweep_steps": None}))
    monkeypatch.setattr("sys.argv", ["compare", "--grid", str(gfile), "--out", str(tmp_path / "out"),
                                     "--sources", "alpaca_short", "--methods", "dpo", "--seeds", "2"])
    (tmp_path / "out" / "lr-epoch").mkdir(parents=True)
    (tmp_path / "out" / "lr-epoch" / "dpo.json").write_text(json.dumps({"lr": 1e-3}))
    compare.main()
    # only the new seed's cell; the grid (and what it records) keeps its seeds, seed 0 still tunes
    assert calls == [(2, "alpaca_short", "dpo", [0, 1])]
    assert json.loads((tmp_path / "out" / "grid.json").read_text())["seeds"] == [0, 1]


def sweep_table(monkeypatch, table):
    """sweep_point replaced by a table of (accuracy, ppl ratio) per rate; returns the rates run."""
    ran = []

    def fake(grid, out, method, source, targets, lr):
        ran.append(lr)
        acc, ppl = table[lr]
        return {"accuracy": acc, "margin": 0.0, "n": 10, "ppl_ratio": ppl}

    patch(monkeypatch, "sweep_point", fake)
    return ran


@pytest.mark.parametrize("table,expect_run,expect", [
    # every swept rate broke the model: smaller rates in turn until one does not
    ({3e-4: (0.7, 3.4), 1e-3: (0.6, 9.0), 1e-4: (0.65, 5.0), 3e-5: (0.6, 1.5)}, [3e-4, 1e-3, 1e-4, 3e-5], 3e-5),
    ({3e-4: (0.7, 3.4), 1e-3: (0.6, 9.0), 1e-4: (0.65, 1.2), 3e-5: (0.6, 1.5)}, [3e-4, 1e-3, 1e-4], 1e-4),
    # the largest rate is the choice: a larger one is tried, and only while it stays the choice
    ({3e-4: (0.6, 1.0), 1e-3: (0.7, 1.0), 1e-2: (0.8, 1.0), 3e-2: (0.5, 1.0)}, [3e-4, 1e-3, 1e-2, 3e-2], 1e-2),
    ({3e-4: (0.7, 1.0), 1e-3: (0.6, 1.0)}, [3e-4, 1e-3], 3e-4),
])
def test_sweep_extends_below_when_all_broke_and_above_when_the_largest_wins(tmp_path, monkeypatch, table,
                                                                            expect_run, expect):
    ran = sweep_table(monkeypatch, table)
    grid = compare.Grid(lr_sweep=[3e-4, 1e-3], lr_below=[1e-4, 3e-5], lr_above=[1e-2, 3e-2], max_ppl_ratio=3.0,
                        sweep_steps=None)
    assert compare.tune_lr(grid, "dpo", "alpaca_easy", tmp_path) == expect
    assert ran == expect_run
    rec = json.loads((tmp_path / "lr-epoch" / "dpo.json").read_text())
    assert rec["lr"] == expect and rec["steps"] == "epochs" and len(rec["sweep"]) == len(expect_run)


def test_sweep_stops_above_a_rate_that_broke_the_model(tmp_path, monkeypatch):
    """With ``stop_above_broken`` a rate above one that broke the model in this sweep is not run; the
    smaller rates are tried while every rate run broke it, and the record lists what was skipped."""
    table = {3e-3: (0.22, 4e5), 1e-2: (0.2, 1e6), 3e-2: (0.2, 1e6), 1e-3: (0.40, 2.0), 3e-4: (0.45, 1.0)}
    ran = sweep_table(monkeypatch, table)
    grid = compare.Grid(lr_sweep=[3e-3, 1e-2, 3e-2], lr_below=[1e-3, 3e-4], sweep_steps=None, stop_above_broken=True)
    assert compare.tune_lr(grid, "reroute", "alpaca_easy", tmp_path) == 1e-3
    assert ran == [3e-3, 1e-3]
    rec = json.loads((tmp_path / "lr-epoch" / "reroute.json").read_text())
    assert rec["skipped (above a rate that broke the model)"] == [1e-2, 3e-2]
    # without the setting every listed rate runs
    ran.clear()
    (tmp_path / "lr-epoch" / "reroute.json").unlink()
    grid = compare.Grid(lr_sweep=[3e-3, 1e-2, 3e-2], lr_below=[1e-3, 3e-4], sweep_steps=None)
    compare.tune_lr(grid, "reroute", "alpaca_easy", tmp_path)
    assert ran == [3e-3, 1e-2, 3e-2, 1e-3]


def test_most_accurate_rule_records_what_validation_says_and_rates_run_before(tmp_path, monkeypatch):
    """The accuracy rule picks the most accurate valid rate even where McNemar cannot tell the rates
    apart (the not-worse rule would take the largest), records the McNemar figures beside it, and
    lists a rate whose record is on disk from another rule's sweep without letting it choose."""
    n = 150
    def ones(a, b):  # items a..b-1 right: the rates disagree on many items, as real sweeps do
        return [int(a <= i < b) for i in range(n)]

    outcomes = {3e-5: ones(0, 67), 1e-4: ones(40, 114), 3e-4: ones(77, 150)}

    def fake(grid, out, method, source, targets, lr):
        return {"accuracy": sum(outcomes[lr]) / n, "margin": 0.0, "n": n, "ppl_ratio": 1.0 + lr * 1000,
                "val_correct": outcomes[lr]}

    patch(monkeypatch, "sweep_point", fake)
    old = tmp_path / "lr-epoch" / "dpo"
    old.mkdir(parents=True)
    (old / "lr0.001.json").write_text(json.dumps({"accuracy": 0.9, "ppl_ratio": 2.0}))
    grid = compare.Grid(lr_sweep=[3e-5, 1e-4, 3e-4], sweep_steps=None, lr_rule="accuracy-margin-smaller")
    assert compare.tune_lr(grid, "dpo", "alpaca_easy", tmp_path) == 1e-4
    rec = json.loads((tmp_path / "lr-epoch" / "dpo.json").read_text())
    assert rec["lr_rule"] == "accuracy-margin-smaller" and rec["why"]["told_apart"] is False
    assert rec["why"]["why"].startswith("the most accurate rate")
    assert list(rec["also run (not part of this rule's sweep)"]) == ["0.001"]
    # the same sweep under the not-worse rule: the largest rate within the bound
    (tmp_path / "lr-epoch" / "dpo.json").unlink()
    grid = compare.Grid(lr_sweep=[3e-5, 1e-4, 3e-4], sweep_steps=None, lr_rule="not-worse-larger")
    assert compare.tune_lr(grid, "dpo", "alpaca_easy", tmp_path) == 3e-4


def test_sweep_skips_rates_that_broke_the_model_in_a_shorter_sweep(tmp_path, monkeypatch):
    ran = sweep_table(monkeypatch, {3e-4: (0.6, 1.0), 1e-3: (0.7, 1.0)})
    (tmp_path / "lr").mkdir()
    (tmp_path / "lr" / "dpo.json").write_text(json.dumps(
        {"lr": 3e-4, "sweep": {"0.0003": {"ppl_ratio": 1.4}, "0.001": {"ppl_ratio": 2.0}, "0.003": {"ppl_ratio": 4e5}}}))
    grid = compare.Grid(lr_sweep=[3e-4, 1e-3, 3e-3], sweep_steps=None, skip_broken_from="lr")
    assert compare.tune_lr(grid, "dpo", "alpaca_easy", tmp_path) == 1e-3
    assert ran == [3e-4, 1e-3]
    assert json.loads((tmp_path / "lr-epoch" / "dpo.json").read_text())["skipped (broke the model in a shorter sweep)"] == [3e-3]
    (tmp_path / "lr-epoch" / "dpo.json").unlink()
    # the largest rate run wins, but a larger one broke the model before: no rate above is tried
    ran.clear()
    grid = compare.Grid(lr_sweep=[3e-4, 1e-3, 3e-3], lr_above=[1e-2], sweep_steps=None, skip_broken_from="lr")
    assert compare.tune_lr(grid, "dpo", "alpaca_easy", tmp_path) == 1e-3
    assert ran == [3e-4, 1e-3]
    (tmp_path / "lr-epoch" / "dpo.json").unlink()
    grid = compare.Grid(lr_sweep=[3e-3], sweep_steps=None, skip_broken_from="lr")
    with pytest.raises(SystemExit, match="smaller rates"):
        compare.tune_lr(grid, "dpo", "alpaca_easy", tmp_path)


def test_whole_budget_sweep_becomes_the_first_cell(tiny_folder, tmp_path, monkeypatch):
    """With ``sweep_steps: null`` each rate trains a cell's budget; the chosen rate's run is the
    first shift's seed-0 cell (not trained again), and a finished cell of another rate (a record of
    that rate: read, not run again) moves into the sweep's folder."""
    grid = compare.Grid(model=str(tiny_folder), shifts=["alpaca_easy->alpaca_hard"], methods=["dpo"], seeds=[0],
                        train_limit=4, batch_size=2, max_length=96, max_prompt_length=48, lora_r=2,
                        eval_max_length=96, eval_limit=2, curve_points=2, curve_target_limit=2, val_limit=2,
                        retain_data="embedded:capitals", retain_limit=2, n_samples=1, truthfulqa_limit=0,
                        sycophancy_limit=0, lr_sweep=[5e-4, 1e-3], sweep_steps=None, max_ppl_ratio=50.0)
    out = tmp_path / "out"
    old = out / "cells" / "alpaca_easy" / "dpo" / "seed0"
    old.mkdir(parents=True)
    val = {"accuracy_mean": 1.0, "margin_mean": 0.5, "n": 2}
    (old / "cell.json").write_text(json.dumps({"lr": 5e-4, "steps": 2, "retain_perplexity": {"ratio": 1000.0},
                                               "curve": [{"step": 2, "source val": val}]}))
    gfile = tmp_path / "grid.json"
    gfile.write_text(json.dumps(compare.dataclasses.asdict(grid)))
    trained = []
    real_train_to = grid_training.train_to
    patch(monkeypatch, "train_to", lambda cfg, step: trained.append((cfg.run_dir, cfg.lr, step)) or
                        real_train_to(cfg, step))
    monkeypatch.setattr("sys.argv", ["compare", "--grid", str(gfile), "--out", str(out)])
    compare.main()
    sweep = json.loads((out / "lr-epoch" / "dpo.json").read_text())
    assert sweep["lr"] == 1e-3  # 5e-4 broke the model (x1000 > 50)
    assert sweep["sweep"]["0.0005"]["from"] == "cells/alpaca_easy/dpo/seed0/cell.json"
    assert sweep["sweep"]["0.0005"]["seconds"] is None  # that cell kept no time per curve point
    assert sweep["sweep"]["0.001"]["val_curve"][-1][0] == 2 and sweep["sweep"]["0.001"]["steps"] == 2
    assert json.loads((out / "lr-epoch" / "dpo" / "lr0.0005" / "cell.json").read_text())["lr"] == 5e-4
    cell = json.loads((old / "cell.json").read_text())
    assert cell["lr"] == 1e-3 and cell["curve"] == json.loads((out / "lr-epoch" / "dpo" / "lr0.001" / "curve.json").read_text())
    # trained once, in the sweep's folder; the cell only loaded the finished run
    assert {(Path(r).parent.name, lr) for r, lr, _ in trained} == {("lr0.001", 1e-3), ("seed0", 1e-3)}
    assert [s for r, _, s in trained if Path(r).parent.name == "seed0"] == [2]
    assert "of which steps" in cell["timing"] and cell["scores"]["source test"]["n"] == 2
    md = (out / "results.md").read_text()
    assert "Learning-rate sweep `lr-epoch/` (the cells' whole budget" in md
    assert "| dpo | 1.000 / 0.500 / x1000 | " in md and md.rstrip().endswith("| 0.001 |")


def test_choose_lr_not_worse_prefers_the_larger_rate_unless_it_is_significantly_worse():
    same = [1] * 30 + [0] * 30
    # three rates the 60 items cannot tell apart: the largest within the bound
    lr, why = grid_sweep.choose_lr_not_worse({1e-4: same, 3e-4: same[::-1], 1e-3: same}, {1e-4: 1.0, 3e-4: 1.1, 1e-3: 2.0}, 3.0)
    assert lr == 1e-3 and not why["told_apart"] and "cannot tell" in why["why"]
    # the largest rate broke the model: the largest valid one
    lr, _ = grid_sweep.choose_lr_not_worse({1e-4: same, 1e-3: same}, {1e-4: 1.0, 1e-3: 5.0}, 3.0)
    assert lr == 1e-4
    # the largest rate is far worse on the same items (McNemar p < 0.05): not chosen
    good, bad = [1] * 50 + [0] * 10, [0] * 50 + [1] * 10
    lr, why = grid_sweep.choose_lr_not_worse({1e-4: good, 1e-3: bad}, {1e-4: 1.0, 1e-3: 1.0}, 3.0)
    assert lr == 1e-4 and why["told_apart"] and why["mcnemar_p_vs_best"]["0.001"] < 0.05
    # every rate broke the model: the smallest
    assert grid_sweep.choose_lr_not_worse({1e-4: good, 1e-3: bad}, {1e-4: 9.0, 1e-3: 9.0}, 3.0)[0] == 1e-4


def test_a_grid_refuses_sets_cut_past_its_share_and_names_the_fitting_lengths(tiny_folder, tmp_path, monkeypatch):
    grid = compare.Grid(model=str(tiny_folder), shifts=["alpaca_easy->alpaca_hard"], methods=["base"], seeds=[0],
                        max_length=48, max_prompt_length=24, eval_max_length=48, eval_limit=6, val_limit=5,
                        curve_target_limit=4, max_cut_share=0.05)
    gfile = tmp_path / "grid.json"
    gfile.write_text(json.dumps(compare.dataclasses.asdict(grid)))
    monkeypatch.setattr("sys.argv", ["compare", "--grid", str(gfile), "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="(?s)refused.*would fit at max_length"):
        compare.main()
    assert not (tmp_path / "out" / "cells").exists()  # nothing ran
    report = json.loads((tmp_path / "out" / "truncation.json").read_text()) if (tmp_path / "out" / "truncation.json").exists() else None
    assert report is None  # refused before writing the report: it names the sets in the error instead


def test_per_shift_tuning_with_length_and_reading_baselines(tiny_folder, tmp_path, monkeypatch):
    grid = compare.Grid(model=str(tiny_folder), shifts=["alpaca_easy->alpaca_hard"],
                        methods=["base", "length", "meandiff-last", "dpo"], seeds=[0], train_limit=4, batch_size=2,
                        max_length=96, max_prompt_length=48, lora_r=2, eval_max_length=128, eval_max_prompt_length=80,
                        eval_limit=4, curve_points=1, curve_target_limit=3, val_limit=3,
                        retain_data="embedded:capitals", retain_limit=3, lr_sweep={"dpo": [1e-4, 1e-3]}, sweep_steps=None,
                        tune_per_shift=True, lr_rule="not-worse-larger", mms_layers="0,1", n_samples=1,
                        truthfulqa_limit=0, sycophancy_limit=0)
    gfile = tmp_path / "grid.json"
    gfile.write_text(json.dumps(compare.dataclasses.asdict(grid)))
    out = tmp_path / "out"
    monkeypatch.setattr("sys.argv", ["compare", "--grid", str(gfile), "--out", str(out)])
    compare.main()
    for source in ("alpaca_easy",):  # swept on the shift's own source, in its own folder
        rec = json.loads((out / "lr-epoch" / source / "dpo.json").read_text())
        assert rec["source"] == source and set(rec["sweep"]) == {"0.0001", "0.001"} and "why" in rec
        assert len(rec["sweep"]["0.001"]["val_correct"]) == 3
        cell = json.loads((out / "cells" / source / "dpo" / "seed0" / "cell.json").read_text())
        assert cell["lr"] == rec["lr"]
        items = cell["scores"]["source test"]["items"]
        assert {"correct_sum", "logps", "n_tokens", "shortest", "longest"} <= set(items)
        assert "truncation" in cell["scores"]["source test"]
    length = json.loads((out / "cells/alpaca_easy/length/seed0/cell.json").read_text())
    short = length["scores"]["target alpaca_hard"]
    assert short["items"]["id"] == cell["scores"]["target alpaca_hard"]["items"]["id"]  # paired with the methods
    assert set(short["items"]["correct"]) <= {0, 0.5, 1, 1 / 3, 0.25} and "correct_longest" in short["items"]
    reader = json.loads((out / "cells/alpaca_easy/meandiff-last/seed0/cell.json").read_text())
    assert reader["mms"]["token"] == "last"
    rules = list(csv.DictReader(open(out / "rules.csv")))
    assert {r["rule"] for r in rules} == {"mean", "sum", "ratio"}
    assert {r["method"] for r in rules if r["rule"] == "ratio"} == {"shortest", "longest", "meandiff-last", "dpo"}
    assert any(r.get("seed_p_holm") for r in rules)  # the headline family is Holm-adjusted
    assert "depends on the rule" in (out / "results.md").read_text()
    assert "Learning-rate sweep `lr-epoch/alpaca_easy/`" in (out / "results.md").read_text()  # the per-source record


def test_the_ratio_rule_uses_the_frozen_models_log_probs_on_the_same_items():
    from reprkit.compare import rules as rule_tables

    def cell(method, seed, logps):
        return {"shift": "s", "method": method, "seed": seed,
                "scores": {"target t": {"chance": 0.5, "items": {"id": ["a", "b"], "correct": [1, 1], "correct_sum": [1, 1],
                                                                 "logps": logps}}}}

    cells = [cell("base", 0, [[-5.0, -1.0], [-1.0, -5.0]]), cell("dpo", 0, [[-4.0, -1.5], [-2.0, -5.5]])]
    # item a: ratios +1.0 vs -0.5 -> right; item b: -1.0 vs -0.5 -> wrong (though its raw log-prob is higher)
    assert rule_tables.outcomes(cells, "s", "dpo", "target t", "ratio") == [{"a": 1, "b": 0}]
    assert rule_tables.outcomes(cells, "s", "base", "target t", "ratio") == []


def test_holm_adjusts_each_rules_family_alike_and_leaves_the_length_rows_out():
    """A verdict that changes between rules must not come from adjusting one rule and not another:
    every rule's comparisons on targets form their own Holm family of the same size."""
    import random

    from reprkit.compare import rules as rule_tables

    rng = random.Random(0)
    ids = [f"i{k}" for k in range(40)]

    def cell(method, seed, p_right):
        right = [int(rng.random() < p_right) for _ in ids]
        logps = [[-1.0, -2.0] if r else [-2.0, -1.0] for r in right]
        items = {"id": ids, "correct": right, "correct_sum": right, "logps": logps}
        if method == "length":
            items["correct_longest"] = [1 - r for r in right]
        return {"shift": "s", "method": method, "seed": seed,
                "scores": {"target t": {"chance": 0.5, "items": items}, "source test": {"chance": 0.5, "items": items}}}

    cells = [cell("base", 0, 0.5), cell("length", 0, 0.5)] + [cell(m, s, p) for m, p in
                                                               (("dpo", 0.5), ("reprpo", 0.8), ("reroute", 0.55))
                                                               for s in (0, 1, 2)]
    rows = rule_tables.rule_rows(cells, ["base", "length", "dpo", "reprpo", "reroute"])
    family = {rule: [r for r in rows if r["rule"] == rule and "seed_p_holm" in r] for rule in rule_tables.RULES}
    assert {rule: len(f) for rule, f in family.items()} == {"mean": 3, "sum": 3, "ratio": 2}  # base has no ratio
    assert all(r["eval"].startswith("target") and r["family_size"] == len(family[r["rule"]]) for f in family.values()
               for r in f)
    assert all(r["seed_p_holm"] >= r["seed_p"] for f in family.values() for r in f)
    assert not any("seed_p_holm" in r for r in rows if r["method"] in rule_tables.MODEL_FREE)
    calls = {(v["method"]): v["call_mean"] for v in rule_tables.verdicts(rows)}
    assert set(calls.values()) <= {"better", "worse", "no difference"}  # 3 seeds: decided
    # on one seed each the seed-level test is the items' alone: no verdict yet, though p is tiny
    first = [c for c in cells if c["seed"] == 0]
    rows = rule_tables.rule_rows(first, ["base", "length", "dpo", "reprpo", "reroute"])
    assert next(r for r in rows if r["method"] == "reprpo" and r["rule"] == "mean" and r["eval"] == "target t")["seed_p"] < 0.05
    assert {v["call_mean"] for v in rule_tables.verdicts(rows)} == {"undecided (1 seed)"}


def test_a_reading_cell_stopped_in_its_final_scoring_resumes_from_its_finished_stages(tiny_folder, tmp_path,
                                                                                     monkeypatch):
    """A cell can outlast a sitting: the direction, the layer choice and each finished eval set are
    kept in the cell's partial folder and read back, and the cell equals one run straight through."""
    grid = compare.Grid(model=str(tiny_folder), methods=["meandiff-last"], train_limit=4, eval_max_length=96,
                        eval_limit=3, curve_target_limit=2, val_limit=3, mms_layers="0,1")
    args = ("alpaca_easy", ["alpaca_hard"], "meandiff-last", 0, {})
    straight = compare.run_cell(grid, tmp_path / "a", *args)
    assert not (tmp_path / "a/cells/alpaca_easy/meandiff-last/seed0/partial").exists()

    real = grid_scoring.score_direction

    def stop_at_target(grid_, model, tok, direction, source, split, limit):
        if source == "genies:alpaca_hard" and split == "test" and limit == grid.eval_limit:
            raise KeyboardInterrupt  # the sitting ends here
        return real(grid_, model, tok, direction, source, split, limit)

    patch(monkeypatch, "score_direction", stop_at_target)
    with pytest.raises(KeyboardInterrupt):
        compare.run_cell(grid, tmp_path / "b", *args)
    partial = tmp_path / "b/cells/alpaca_easy/meandiff-last/seed0/partial"
    assert (partial / "direction/choice.json").is_file() and set(json.loads((partial / "scores.json").read_text())) \
        == {"source test"}

    scored = []
    patch(monkeypatch, "score_direction", lambda *a: scored.append(a[4:6]) or real(*a))
    monkeypatch.setattr("reprkit.directions.from_pairs", lambda *a, **k: pytest.fail("the direction was read again"))
    resumed = compare.run_cell(grid, tmp_path / "b", *args)
    assert scored == [("genies:alpaca_hard", "test")]  # only the set that had not finished
    assert resumed["resumed_parts"] == ["curve.json", "direction", "scores.json"] and straight["resumed_parts"] == []
    assert resumed["mms"] == straight["mms"] and resumed["scores"] == straight["scores"]
    assert resumed["curve"] == straight["curve"] and not partial.exists()


def test_item_ids_are_unique_when_a_set_repeats_a_prompt_and_its_best_response():
    a = {"prompt_ids": [1, 2], "responses_ids": [[3], [4]]}
    b = {"prompt_ids": [1, 2], "responses_ids": [[3], [5]]}  # same question, another worse answer
    c = {"prompt_ids": [9], "responses_ids": [[3], [4]]}
    ids = grid_scoring.item_ids([a, b, c, b])
    assert ids[0] == grid_scoring.item_id(a) and ids[2] == grid_scoring.item_id(c)  # unrepeated ids unchanged
    assert len(set(ids)) == 4 and ids[1] == f"{grid_scoring.item_id(a)}~2" and ids[3].endswith("~3")


def test_a_sweep_point_finished_in_a_later_sitting_counts_the_earlier_sittings_training(tmp_path, monkeypatch):
    """The run's curve points carry their own seconds; a sitting that only scores the perplexity
    must not record its few minutes as the whole rate's cost."""
    curve = [{"step": 10, "source val": {"accuracy_mean": 0.5, "margin_mean": 0.1, "n": 6},
              "seconds": {"train": 300.0, "scoring": 100.0}}]
    patch(monkeypatch, "train_curve", lambda *a: (curve, None, None, 10))
    patch(monkeypatch, "retain_ratio", lambda *a: {"ratio": 1.1})
    grid = compare.Grid(shifts=["alpaca_easy->alpaca_hard"], sweep_steps=None)
    rec = grid_sweep.sweep_point(grid, tmp_path, "dpo", "alpaca_easy", ["alpaca_hard"], 1e-4)
    assert 400.0 <= rec["seconds"] < 460.0 and rec["ppl_ratio"] == 1.1


def _hold(out, name):
    """Another process's claim: an flock on its own open file description."""
    import fcntl

    (out / "claims").mkdir(parents=True, exist_ok=True)
    f = open(out / "claims" / f"{name}.lock", "a")
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return f


def test_two_processes_share_a_grid_each_cell_runs_once(tmp_path, monkeypatch):
    """A cell another process holds is left to it; a method another process is sweeping waits and is
    taken up again once its sweep is done; the claims end with their holder."""
    out = tmp_path / "out"
    grid = compare.Grid(shifts=["alpaca_easy->alpaca_hard"], methods=["base", "dpo", "reprpo"], seeds=[0, 1],
                        sweep_steps=None)
    calls, tuned = [], []
    patch(monkeypatch, "tune_lr", lambda g, method, *a: tuned.append(method) or 1e-3)
    patch(monkeypatch, "adopt_sweep_run", lambda *a: None)
    patch(monkeypatch, "run_cell", lambda g, o, source, targets, method, seed, lrs: calls.append((seed, method)))
    held_cell = _hold(out, "cell-alpaca_easy-base-seed0")
    held_sweep = _hold(out, "sweep-alpaca_easy-dpo")

    def pause(seconds):  # the other process finishes dpo's sweep while this one waits
        calls.append("pause")
        held_sweep.close()

    monkeypatch.setattr(compare.time, "sleep", pause)
    order = compare.cell_order(grid, ["alpaca_easy"])
    n = compare.work(grid, out, {"alpaca_easy": ["alpaca_hard"]}, "alpaca_easy", order)
    assert calls == [(0, "reprpo"), (1, "reprpo"), "pause", (0, "dpo"), (1, "dpo")]
    assert tuned == ["reprpo", "dpo"] and n == 4  # the base cell was the other process's
    held_cell.close()
    with compare.claim(out, "cell-alpaca_easy-base-seed0") as mine:
        assert mine  # the other process ended: its claim went with it
        with compare.claim(out, "cell-alpaca_easy-base-seed0") as again:
            assert not again  # a claim is exclusive even within one process


def test_two_real_processes_on_one_grid_split_its_cells(tiny_folder, tmp_path):
    """Two `reprkit compare` processes started together on one grid: every cell is run by exactly one
    of them, and the sweep once."""
    import subprocess
    import sys

    grid = compare.Grid(model=str(tiny_folder), shifts=["alpaca_easy->alpaca_hard"], methods=["base", "length", "dpo"],
                        seeds=[0, 1], train_limit=4, batch_size=2, max_length=96, max_prompt_length=48, lora_r=2,
                        eval_max_length=96, eval_limit=2, curve_points=1, curve_target_limit=2, val_limit=2,
                        retain_data="embedded:capitals", retain_limit=2, n_samples=1, truthfulqa_limit=0,
                        sycophancy_limit=0, lr_sweep=[1e-3], sweep_steps=None)
    gfile = tmp_path / "grid.json"
    gfile.write_text(json.dumps(compare.dataclasses.asdict(grid)))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "reprkit.cli", "compare", str(gfile), "--out", str(out), "--poll", "0.5"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for _ in range(2)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    done = [{line for line in log.splitlines() if line.startswith("cell ") and line.endswith(" done")} for log in logs]
    expect = {"cell alpaca_easy base seed0 done", "cell alpaca_easy length seed0 done",
              *(f"cell alpaca_easy dpo seed{k} done" for k in range(2))}
    assert done[0] | done[1] == expect and not done[0] & done[1], logs
    assert len([log for log in logs if "lr sweep dpo 0.001" in log]) == 1  # swept by one process only
    assert len(list((out / "cells").rglob("cell.json"))) == 4 and (out / "results.md").is_file()


def test_retain_ratio_reads_the_frozen_models_nll_once_computed(tiny_folder, tmp_path, monkeypatch):
    import pytest as _pytest
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    grid = compare.Grid(model=str(tiny_folder), retain_data="embedded:capitals", retain_limit=4, eval_max_length=96)
    tok = AutoTokenizer.from_pretrained(tiny_folder)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_folder), LoraConfig(r=2, target_modules=["q_proj"]))
    for n, p in model.named_parameters():
        if "lora_B" in n:
            grid_settings.torch.nn.init.normal_(p, std=0.5)
    plain = grid_scoring.retain_ratio(grid, model, tok)
    cache = tmp_path / "retain-frozen.json"
    first = grid_scoring.retain_ratio(grid, model, tok, cache)
    assert json.loads(cache.read_text())["n"] == 4
    real = grid_scoring.sequence_nll
    calls = []
    monkeypatch.setattr(grid_scoring, "sequence_nll", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = grid_scoring.retain_ratio(grid, model, tok, cache)
    assert calls == []  # read, not computed
    assert again["ratio"] == _pytest.approx(plain["ratio"], rel=1e-6) == first["ratio"] and plain["ratio"] != 1.0
    grid.retain_limit = 3  # other items: computed again
    grid_scoring.retain_ratio(grid, model, tok, cache)
    assert calls == [1] and json.loads(cache.read_text())["n"] == 3


def test_status_counts_what_is_done_started_and_left_and_estimates_from_recorded_times(tmp_path):
    from reprkit.compare import status as grid_status

    grid = compare.Grid(shifts=["a->b"], methods=["base", "dpo"], seeds=[0, 1], lr_sweep={"dpo": [1e-4, 3e-4]},
                        tune_per_shift=True, sweep_steps=None)
    sweep = tmp_path / "lr-epoch" / "a" / "dpo"
    sweep.mkdir(parents=True)
    (sweep / "lr0.0001.json").write_text(json.dumps({"seconds": 100.0}))
    (sweep / "lr0.0003" / "run").mkdir(parents=True)  # started: its run resumes
    (sweep / "lr0.001.json").write_text(json.dumps({"seconds": 140.0}))  # a rate above the sweep, run
    for method, seconds in (("base", 10.0), ("dpo", 50.0)):
        cell = tmp_path / "cells" / "a" / method / "seed0"
        cell.mkdir(parents=True)
        (cell / "cell.json").write_text(json.dumps({"seconds": seconds}))
    rows = grid_status.grid_status(grid, tmp_path, ["a"], "a", compare.cell_order(grid, ["a"]))
    states = {(r["kind"], r["which"]): r["state"] for r in rows}
    assert states == {("sweep point", "lr 0.0001"): "done", ("sweep point", "lr 0.0003"): "started",
                      ("sweep point", "lr 0.001"): "done", ("untrained cell", "seed 0"): "done",
                      ("seed-0 cell", "seed 0"): "done", ("later-seed cell", "seed 1"): "left"}
    # the started point at the sweep points' mean (120), seed 1 at a sweep point's plus a seed-0 cell's (170)
    assert grid_status.estimate_left(rows) == pytest.approx(120 + 170)
    text = grid_status.format_status(rows, workers=2)
    assert "| sweep point | 2 | 1 | 0 | 0 |" in text and "left: a dpo seed 1" in text and "0.1 worker-hours" in text
    (sweep.parent / "dpo.json").write_text(json.dumps({"lr": 1e-4}))  # the sweep chose: 3e-4 is not needed
    rows = grid_status.grid_status(grid, tmp_path, ["a"], "a", compare.cell_order(grid, ["a"]))
    assert [r["state"] for r in rows if r["which"] == "lr 0.0003"] == ["skipped"]
    assert grid_status.estimate_left(rows) == pytest.approx(170)
    # a rate above one that broke the model in this sweep is skipped where the grid says so
    (sweep.parent / "dpo.json").unlink()
    (sweep / "lr0.0001.json").write_text(json.dumps({"seconds": 100.0, "ppl_ratio": 9.0}))
    for stop, state in ((False, "started"), (True, "skipped")):
        grid.stop_above_broken = stop
        rows = grid_status.grid_status(grid, tmp_path, ["a"], "a", compare.cell_order(grid, ["a"]))
        assert [r["state"] for r in rows if r["which"] == "lr 0.0003"] == [state]


@pytest.mark.parametrize("method", ["bipo-reft"])  # reprpo-vector loads the same way
def test_a_grid_cell_trains_and_scores_a_vector_or_a_loreft(tiny_folder, tmp_path, method):
    """The comparison's methods are presets: <loss>-vector and <loss>-reft train the intervention and
    the cell scores the run with it attached (its source accuracy is not the frozen model's)."""
    grid = compare.Grid(model=str(tiny_folder), methods=[method], seeds=[0], train_limit=4, batch_size=2,
                        max_length=96, max_prompt_length=48, eval_max_length=96, eval_limit=2, curve_points=1,
                        curve_target_limit=2, val_limit=2, retain_data="embedded:capitals", retain_limit=2,
                        n_samples=0, reference_cache=None)
    out = tmp_path / "out"
    cell = compare.run_cell(grid, out, "alpaca_easy", ["alpaca_hard"], method, 0, {method: 1e-2})
    run = out / "cells" / "alpaca_easy" / method / "seed0" / "run"
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["intervention"] == method.split("-")[1] and cfg["loss"] == method.split("-")[0]
    assert (run / "adapter" / "intervention_config.json").is_file()
    assert "source test" in json.dumps(cell)
