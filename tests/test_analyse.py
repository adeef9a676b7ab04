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

    return {"shift": shift, "method": method, "seed": seed,
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
