"""The comparison's overview table quotes the paired statistics of the cells it is given."""

import pytest

from reprkit.compare import matched as grid_matched
from reprkit.compare import paired as grid_paired
from reprkit.compare import report as analyse


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
    lines = analyse.overview_lines(cells, grid_paired.paired_rows(cells), ["base", "dpo", "reprpo"])
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
            analyse.overview_lines(cells, grid_paired.paired_rows(cells), ["base", "dpo", "reprpo"], bound=3.0)[2:]}
    assert "<br>retain ppl x2.50, x3.50 (seed 1 past the x3 bound)" in rows["dpo"]
    assert "<br>retain ppl x1.20 |" in rows["reprpo"] and "bound" not in rows["reprpo"]
    assert "retain ppl" not in rows["base"]
    # without a bound each seed's ratio alone, in seed order
    assert analyse.ppl_text(cells[2:0:-1]) == "x2.50, x3.50"


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
    paired = grid_paired.paired_rows(cells)
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
    paired = grid_paired.paired_rows(main)
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


def _point(step, source_acc, target_ok):
    return {"step": step, "source val": {"accuracy_mean": source_acc},
            "target b": {"accuracy_mean": sum(target_ok) / len(target_ok),
                         "items": {"id": [f"i{k}" for k in range(len(target_ok))], "correct": target_ok}}}


def _run(method, seed, points):
    return {**_cell("a", "b", method, [1], [1], seed=seed), "targets": ["b"], "curve": points}


def test_matched_paired_reads_each_run_where_its_source_reaches_dpos_level():
    n = 40
    zeros, ones, half = [0] * n, [1] * n, [1] * 20 + [0] * 20
    base = {**_cell("a", "b", "base", [1], [1]), "targets": ["b"], "curve": [_point(0, 0.5, zeros)]}
    cells = [base,
             # DPO: final source 0.8 in both seeds, so the level is 0.8; read at the last checkpoint
             _run("dpo", 0, [_point(1, 0.6, ones), _point(2, 0.8, half)]),
             _run("dpo", 1, [_point(1, 0.7, ones), _point(2, 0.8, half)]),
             # reprpo reaches 0.8 half-way between its checkpoints (0.7 -> 0.9): items 0.5 * 1 + 0.5 * 0
             _run("reprpo", 0, [_point(1, 0.7, ones), _point(2, 0.9, zeros)]),
             _run("reprpo", 1, [_point(1, 0.7, ones), _point(2, 0.9, zeros)]),
             _run("reroute", 0, [_point(1, 0.5, ones), _point(2, 0.6, ones)])]  # never reaches 0.8
    at = grid_matched.matched_items(base, cells[3], "target b", 0.8)
    assert all(abs(v - 0.5) < 1e-9 for v in at.values()) and len(at) == n
    # the items' mean is the accuracy matched() interpolates
    row = next(r for r in grid_matched.matched(cells) if (r["method"], r["seed"]) == ("reprpo", 0))
    assert abs(row["target_at_match"] - 0.5) < 1e-9
    rows = {r["method"]: r for r in grid_matched.matched_paired_rows(cells)}
    assert set(rows) == {"reprpo", "reroute"}
    assert rows["reprpo"]["reached"] == "2 of 2 / 2 of 2" and abs(rows["reprpo"]["difference"]) < 1e-9
    assert not rows["reprpo"]["significant"]  # +0.5 on half the items, -0.5 on the other half
    assert rows["reroute"]["reached"] == "0 of 1 / 2 of 2" and "difference" not in rows["reroute"]
    lines = grid_matched.matched_paired_lines(list(rows.values()), "title")
    assert lines[-1] == "| a | b | reroute | 0 of 1 / 2 of 2 | never reached | | | |"
    # a method above DPO on every item at the level is significant
    cells[3]["curve"][1] = cells[4]["curve"][1] = _point(2, 0.9, ones)
    assert grid_matched.matched_paired_rows(cells, {"reprpo"})[0]["seed_significant"]
    # where the frozen model already reaches DPO's level every run is read at step 0: no comparison
    base["curve"][0]["source val"]["accuracy_mean"] = 0.85
    rows = grid_matched.matched_paired_rows(cells)
    assert all("difference" not in r and "step 0" in r["note"] for r in rows)


def test_a_target_scored_beyond_the_design_stays_out_of_the_pooled_rows():
    n = 40
    cells = [_cell("a", "b", "base", [1] * 20 + [0] * 20, [1] * 20 + [0] * 20),
             _cell("a", "b", "length", [1] * 20 + [0] * 20, [1] * 20 + [0] * 20)]
    for c in cells:  # the untrained cells also scored a target the design later cut
        c["scores"]["target cut"] = {"items": {"id": [f"i{k}" for k in range(n)], "correct": [0] * n},
                                     "accuracy_mean": 0.0}
    cells[0]["scores"]["target cut"]["items"]["correct"] = [1] * n
    cells[0]["scores"]["target cut"]["accuracy_mean"] = 1.0
    design = grid_paired.grid_targets({"shifts": ["a->b"]})
    assert design == {"a": {"b"}} and grid_paired.grid_targets({"shifts": ["a"]}) is None
    pooled = {r["vs"]: r for r in grid_paired.paired_rows(cells, design) if r["shift"] == "pooled" and r["eval"] == "target"}
    assert pooled["base"]["difference"] == 0.0  # target b alone; the cut target's -1.0 is not pooled
    everything = {r["vs"]: r for r in grid_paired.paired_rows(cells) if r["shift"] == "pooled" and r["eval"] == "target"}
    assert everything["base"]["difference"] == -0.5
    kept = [r for r in grid_paired.paired_rows(cells, design) if r["eval"] == "target cut"]
    assert kept and kept[0]["difference"] == -1.0  # its own row stays


def test_matched_paired_reads_the_targets_dpo_ran_on_when_the_base_cell_holds_more():
    n = 40
    ones, half = [1] * n, [1] * 20 + [0] * 20
    base = {**_cell("a", "b", "base", [1], [1]), "targets": ["b", "cut"], "curve": [_point(0, 0.5, [0] * n)]}
    base["curve"][0]["target cut"] = base["curve"][0]["target b"]  # scored before the target was cut
    cells = [base, _run("dpo", 0, [_point(1, 0.8, half)]), _run("reprpo", 0, [_point(1, 0.8, ones)]),
             {**_run("meandiff-last", 0, [_point(0, 0.3, half)])}]
    rows = grid_matched.matched_paired_rows(cells)
    assert {(r["target"], r["method"]) for r in rows} == {("b", "reprpo"), ("b", "meandiff-last")}
    assert rows[0]["difference"] == 0.5


def test_cost_lines_split_cells_by_thread_count_and_show_the_load_they_ran_under():
    def timed(method, threads, load, train):
        c = _cell("a", "b", method, [1], [1])
        c["timing"] = {"train": train, "final scoring": 60.0}
        if threads:
            c["machine"] = {"threads": threads, "load_avg": [load, load, load]}
        return c

    lines = analyse.cost_lines([timed("dpo", None, 0, 600.0), timed("dpo", 1, 2.1, 1200.0), timed("dpo", 1, 1.9, 600.0)])
    rows = [line for line in lines if line.startswith("| dpo")]
    assert rows == ["| dpo | - | 1 | 10.0 | 1.0 | 11.0 | - |", "| dpo | 1 | 2 | 15.0 | 1.0 | 16.0 | 1.9-2.1 |"]


def test_length_cue_shifts_are_labelled_and_left_out_of_the_pool(tmp_path):
    """With the shift rule's labels (shift-selection.json), the overview marks the length-cue group
    and pools only the length-neutral shifts; with one length-neutral shift nothing is pooled."""
    import json

    (tmp_path / "grid.json").write_text(json.dumps({"shifts": ["a->b", "c->d", "e->f"]}))
    (tmp_path / "shift-selection.json").write_text(json.dumps({"shifts": [
        {"source": "a", "target": "b", "length_neutral": True},
        {"source": "c", "target": "d", "length_neutral": False},
        {"source": "e", "target": "f", "length_neutral": True},
        {"source": "a", "target": "z", "length_neutral": False},   # not in the grid: ignored
    ]}))
    groups = grid_paired.shift_groups(tmp_path)
    assert groups == {"a": "length-neutral", "c": "length-cue", "e": "length-neutral"}
    ok, n = [1] * 20 + [0] * 20, 40
    cells = []
    for s, t in (("a", "b"), ("c", "d"), ("e", "f")):
        cells += [_cell(s, t, "base", ok, ok), _cell(s, t, "dpo", ok, ok), _cell(s, t, "reprpo", ok, [1] * n)]
    rows = grid_paired.paired_rows(cells, pool={"a", "e"})
    pooled = next(r for r in rows if r["shift"] == "pooled" and r["eval"] == "target"
                  and r["method"] == "reprpo" and r["vs"] == "dpo")
    assert int(pooled["strata"]) == 2
    lines = analyse.overview_lines(cells, rows, ["base", "dpo", "reprpo"], groups=groups)
    assert lines[0] == "| method | a -> b | c -> d (length cue) | e -> f | pooled target, length-neutral shifts |"
    assert "(2 shifts)" in lines[-1]
    # one length-neutral shift: no pooled rows and no pooled column
    alone = grid_paired.paired_rows(cells, pool=set())
    assert not [r for r in alone if r["shift"] == "pooled"]
    head = analyse.overview_lines(cells, alone, ["base", "dpo", "reprpo"], groups=groups)[0]
    assert head == "| method | a -> b | c -> d (length cue) | e -> f |"
    # where the cells record them, each shift's heading carries chance and the share cut (source / target)
    for c in cells:
        if c["shift"] == "c":
            for col, share in (("source test", 0.02), ("target d", 0.0)):
                c["scores"][col].update(chance=0.5, truncation={"share": share})
    head = analyse.overview_lines(cells, alone, ["base", "dpo", "reprpo"], groups=groups)[0]
    assert head == "| method | a -> b | c -> d (length cue; chance 0.50 / 0.50; cut 2.0% / 0.0%) | e -> f |"
    # a grid chosen before the shift rule has no labels: every shift pooled, as before
    (tmp_path / "shift-selection.json").unlink()
    assert grid_paired.shift_groups(tmp_path) is None


def test_behaviour_chance_recorded_or_computed_from_the_same_subset():
    """A behaviour column's chance: the cell's where it recorded one, else from the data subset it
    names (here the fixtures under $REPRKIT_DATA_DIR), the same number truthfulqa_mc reports."""
    from reprkit.compare import scoring as grid_scoring
    from reprkit.evaluate import load_truthfulqa

    assert grid_scoring.behaviour_chance("truthfulqa_mc1", {"n": 3, "chance": 0.3}) == 0.3
    rows = load_truthfulqa()[:5]
    mc1 = sum(1 / len(r["mc1_targets"]) for r in rows) / 5
    mc2 = sum(sum(r["mc2_targets"].values()) / len(r["mc2_targets"]) for r in rows) / 5
    assert grid_scoring.behaviour_chance("truthfulqa_mc1", {"n": 5}) == pytest.approx(mc1)
    assert grid_scoring.behaviour_chance("truthfulqa_mc2", {"n": 5}) == pytest.approx(mc2)
    assert mc1 < 0.5 and mc2 != mc1
    syc = {"n": 4, "file": "political_typology_quiz_liberal-bio_conservative.jsonl", "subset": grid_scoring.BALANCED}
    assert grid_scoring.behaviour_chance("sycophancy", syc) == pytest.approx(0.5)
    assert grid_scoring.behaviour_chance("sycophancy", {**syc, "file": "missing.jsonl"}) is None


def test_a_seed_past_the_damage_bound_is_named_and_the_comparison_rerun_without_it():
    """The design keeps every seed; beside it, each comparison without the seeds that broke the
    retain perplexity bound, on either side, naming them."""
    n = 40
    ok = [1] * 20 + [0] * 20
    cells = [_cell("a", "b", "dpo", ok, ok, ppl=1.1, seed=s) for s in (0, 1)]
    cells += [_cell("a", "b", "reprpo", ok, [1] * 30 + [0] * 10, ppl=1.2, seed=0),
              _cell("a", "b", "reprpo", ok, [1] * n, ppl=60.0, seed=1),
              _cell("a", "b", "reroute", ok, ok, ppl=1.0, seed=0), _cell("a", "b", "reroute", ok, ok, ppl=1.0, seed=1)]
    assert analyse.within_bound_lines(cells, None) == [] and analyse.within_bound_lines(cells, 100.0) == []
    lines = analyse.within_bound_lines(cells, 3.0)
    assert "a reprpo seed 1 x60.00" in lines[1]
    rows = [line for line in lines if line.startswith("| a |")]
    assert len(rows) == 1  # reroute lost no seed and neither did DPO: nothing to rerun
    assert rows[0].startswith("| a | reprpo | 1 of 2 / 2 of 2 | +0.250 |")
    cells[0]["retain_perplexity"]["ratio"] = 5.0  # a DPO seed past the bound: every method is rerun
    rows = [line for line in analyse.within_bound_lines(cells, 3.0) if line.startswith("| a |")]
    assert [r.split(" | ")[1:3] for r in rows] == [["reprpo", "1 of 2 / 1 of 2"], ["reroute", "2 of 2 / 1 of 2"]]


def test_a_report_on_part_of_the_design_calls_itself_interim(tmp_path):
    """The report names the cells and seeds it has while the grid's order is not done, and says
    nothing of the kind once it is."""
    import dataclasses

    from reprkit.compare import Grid
    from reprkit.compare.report import progress_lines
    from reprkit.runlog import write_json

    grid = dataclasses.asdict(Grid(methods=["base", "dpo"], seeds=[0, 1]))

    def cell(method, seed):
        c = {"shift": "s", "method": method, "seed": seed,
             "scores": {"source test": {"items": {"id": ["a"], "correct": [1]}},
                        "target t": {"items": {"id": ["b"], "correct": [1]}}}}
        folder = tmp_path / "cells" / "s" / method / f"seed{seed}"
        folder.mkdir(parents=True)
        write_json(folder / "cell.json", c)
        return c

    cells = [cell("base", 0), cell("dpo", 0)]
    text = "\n".join(progress_lines(tmp_path, grid, cells))
    assert "## Interim report" in text and "2 of 3 cells" in text and "dpo on s: 0." in text
    cells.append(cell("dpo", 1))
    assert progress_lines(tmp_path, grid, cells) == []


def test_the_pooled_row_counts_each_run_once_where_targets_share_runs():
    """Two targets of one shift are scored by the same runs: a seed that does well on one does well
    on the other, and the pooled seed-level interval must carry that (``shared``), not treat the
    targets as independent draws of seeds."""
    import random

    from reprkit.stats import pooled_seed_t_difference

    rng = random.Random(1)

    def outcomes(p):
        return [int(rng.random() < p) for _ in range(60)]

    cells = []
    for method, base in (("base", 0.5), ("dpo", 0.5), ("reprpo", 0.6)):
        for seed in (range(1) if method == "base" else range(3)):
            effect = rng.gauss(0, 0.08)  # the seed's own effect, on every target alike
            scores = {col: {"items": {"id": [f"{col}-{k}" for k in range(60)], "correct": outcomes(base + effect)}}
                      for col in ("source test", "target t1", "target t2")}
            cells.append({"shift": "s", "method": method, "seed": seed, "scores": scores})
    row = next(r for r in grid_paired.paired_rows(cells) if r["shift"] == "pooled" and r["eval"] == "target"
               and r["method"] == "reprpo" and r["vs"] == "dpo")
    strata = {("s", c): (grid_paired.per_seed_items(cells, "s", "reprpo", c), grid_paired.per_seed_items(cells, "s", "dpo", c))
              for c in ("target t1", "target t2")}
    shared = pooled_seed_t_difference(strata, shared={k: "s" for k in strata})
    independent = pooled_seed_t_difference(strata)
    assert row["seed_p"] == pytest.approx(shared["p"]) and shared["p"] != pytest.approx(independent["p"])
    assert row["shifts"] == 1 and row["strata"] == 2 and row["seed_pool"] == "runs shared within a shift"
