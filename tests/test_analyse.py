"""The comparison's overview table quotes the paired statistics of the cells it is given."""

import importlib.util
import sys
from pathlib import Path

EXPERIMENTS = Path(__file__).parents[1] / "experiments"
sys.path.insert(0, str(EXPERIMENTS))
spec = importlib.util.spec_from_file_location("analyse", EXPERIMENTS / "analyse.py")
analyse = importlib.util.module_from_spec(spec)
spec.loader.exec_module(analyse)


def _cell(shift, target, method, source_ok, target_ok, ppl=None, seed=0):
    def scores(ok):
        return {"items": {"id": [f"i{k}" for k in range(len(ok))], "correct": ok}, "accuracy_mean": sum(ok) / len(ok)}

    return {"shift": shift, "method": method, "seed": seed, "seconds": 60.0,
            "scores": {"source test": scores(source_ok), f"target {target}": scores(target_ok)},
            **({"retain_perplexity": {"ratio": ppl}} if ppl is not None else {})}


def test_overview_rows_columns_and_differences():
    n = 40
    cells = [
        _cell("a", "b", "base", [1] * 20 + [0] * 20, [1] * 20 + [0] * 20),
        _cell("a", "b", "dpo", [1] * 30 + [0] * 10, [1] * 20 + [0] * 20),
        # wins on every target item DPO lost: +0.5, far outside any interval
        _cell("a", "b", "reprpo", [1] * 20 + [0] * 20, [1] * n),
        _cell("c", "d", "base", [1] * 10 + [0] * 30, [0] * n),
    ]
    lines = analyse.overview_lines(cells, analyse.paired_rows(cells), ["base", "dpo", "reprpo"])
    assert lines[0] == "| method | a -> b | c -> d | pooled target |"
    rows = {line.split(" | ")[0].strip("| "): line for line in lines[2:]}
    assert list(rows) == ["base", "dpo", "reprpo"]
    assert "0.500 / 1.000<br>vs DPO +0.500 (+0.350, +0.650)" in rows["reprpo"] and rows["reprpo"].count("*") == 2
    assert "0.750 / 0.500<br>vs base +0.000" in rows["dpo"] and "*" not in rows["dpo"]
    assert "| not run |" in rows["reprpo"] and "(1 shift)" in rows["reprpo"]
    assert "0.250 / 0.000 |" in rows["base"]  # no DPO on that shift: accuracies only


def test_overview_damage_names_seeds_past_the_bound():
    ok = [1] * 30 + [0] * 10
    cells = [_cell("a", "b", "base", ok, ok),
             _cell("a", "b", "dpo", ok, ok, ppl=2.5, seed=0), _cell("a", "b", "dpo", ok, ok, ppl=3.5, seed=1),
             _cell("a", "b", "reprpo", ok, ok, ppl=1.2)]
    rows = {line.split(" | ")[0].strip("| "): line for line in
            analyse.overview_lines(cells, analyse.paired_rows(cells), ["base", "dpo", "reprpo"], bound=3.0)[2:]}
    assert "<br>retain ppl x3.00 (seed 1 x3.50: past the x3 bound)" in rows["dpo"]
    assert "<br>retain ppl x1.20 |" in rows["reprpo"] and "bound" not in rows["reprpo"]
    assert "retain ppl" not in rows["base"]
    # without a bound the mean alone
    assert analyse.ppl_text(cells[1:3]) == "3.00"


def test_seed_table_tells_a_seed_disagreement_from_a_difference_that_holds():
    base = [1] * 100 + [0] * 100
    dpo = [1] * 100 + [0] * 100
    # reprpo: seed 0 wins 40 items DPO loses, seed 1 wins 2; reroute: both seeds win 20
    r0, r1 = [1] * 140 + [0] * 60, [1] * 102 + [0] * 98
    rr = [1] * 120 + [0] * 80
    cells = [_cell("a", "b", "base", base, base)]
    for seed in (0, 1):
        cells += [_cell("a", "b", "dpo", dpo, dpo, seed=seed),
                  _cell("a", "b", "reprpo", dpo, [r0, r1][seed], seed=seed),
                  _cell("a", "b", "reroute", dpo, rr, seed=seed)]
    paired = analyse.paired_rows(cells)
    rows = {(r["shift"], r["method"]): r for r in paired if r["eval"] != "source test" and r["vs"] == "dpo"}
    assert rows[("a", "reprpo")]["per_seed"] == "+0.200 / +0.010"
    assert rows[("a", "reprpo")]["significant"] and not rows[("a", "reprpo")]["seed_significant"]
    assert rows[("a", "reroute")]["seed_significant"]
    lines = {line.split(" | ")[1]: line for line in analyse.seed_lines(paired) if line.startswith("| a |")}
    assert lines["reprpo"].endswith("items only: not across seeds |")
    assert lines["reroute"].endswith("holds across seeds |")
    assert lines["dpo"].endswith("not significant |")


def test_a_followup_seed_stays_out_of_the_design_tables_and_gets_its_own():
    ok = [1] * 100 + [0] * 100
    r0, r1, r2 = [1] * 140 + [0] * 60, [1] * 102 + [0] * 98, [1] * 130 + [0] * 70  # +0.200, +0.010, +0.150
    cells = [_cell("a", "b", "base", ok, ok), _cell("c", "d", "base", ok, ok)]
    for seed in (0, 1, 2):
        cells += [_cell("a", "b", "dpo", ok, ok, seed=seed), _cell("a", "b", "reprpo", ok, [r0, r1, r2][seed], seed=seed)]
    main, extra = analyse.split_followup(cells, {"seeds": [0, 1]})
    assert {(c["method"], c["seed"]) for c in extra} == {("dpo", 2), ("reprpo", 2)} and len(main) == 6
    paired = analyse.paired_rows(main)
    grid_row = next(r for r in paired if (r["method"], r["vs"], r["eval"]) == ("reprpo", "dpo", "target b"))
    assert grid_row["per_seed"] == "+0.200 / +0.010" and abs(grid_row["difference"] - 0.105) < 1e-9
    follow = analyse.followup_rows(cells, extra)
    # the follow-up's shift and methods only: dpo against base, reprpo against DPO, each eval set
    assert {(r["shift"], r["method"], r["vs"]) for r in follow} == {("a", "dpo", "base"), ("a", "reprpo", "dpo")}
    row = next(r for r in follow if (r["method"], r["eval"]) == ("reprpo", "target b"))
    assert row["seeds"] == "3 / 3" and row["per_seed"] == "+0.200 / +0.010 / +0.150"
    assert abs(row["difference"] - 0.12) < 1e-9
    lines = analyse.followup_lines(extra, follow, paired)
    assert "a: dpo seed 2, reprpo seed 2; 2 cells" in lines[1]
    line = next(x for x in lines if x.startswith("| a | target b | reprpo | dpo |"))
    assert "| +0.105, (" in line and "| 3 / 3 | +0.120 |" in line
    assert analyse.followup_lines([], [], paired) == []
