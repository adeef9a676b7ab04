"""Tables on the research page (docs/research/comparison.md) and in the grid's notebook quote the
committed result files."""

from pathlib import Path


def test_notebook_alpaca_easy_table_matches_results_csv():
    """The notebook's alpaca_easy table of the decisive grid (seed 0) quotes results/decisive/results.csv."""
    import csv
    import statistics

    root = Path(__file__).resolve().parents[1]
    lines = (root / "results/decisive/NOTES.md").read_text().splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("| method | alpaca_easy test |"))
    rows = []
    for line in lines[head + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows.append((cells[0], float(cells[1]), float(cells[3])))
    with (root / "results/decisive/results.csv").open() as f:
        csv_rows = [r for r in csv.DictReader(f) if r["shift"] == "alpaca_easy" and r["seed"] in ("0", "")]

    def acc(method: str, eval_: str) -> float:
        vals = [float(r["accuracy"]) for r in csv_rows if r["method"] == method and r["eval"] == eval_]
        assert vals, f"{method} {eval_} is in the notebook but not in results.csv"
        return statistics.mean(vals)

    assert len(rows) >= 4
    for method, source, target in rows:
        assert round(acc(method, "source test"), 3) == source, method
        assert round(acc(method, "target alpaca_hard"), 3) == target, method
    assert {m for m, *_ in rows} == {r["method"] for r in csv_rows}, "a finished cell is missing from the notebook's table"


def test_readme_revised_sweep_table_matches_its_records():
    """The research page's table of the whole-epoch learning-rate sweep quotes results/decisive/lr-epoch/:
    each finished rate's validation accuracy and margin, and the chosen rate once a method is done."""
    import json

    root = Path(__file__).resolve().parents[1]
    folder = root / "results/decisive/lr-epoch"
    lines = (root / "docs/research/comparison.md").read_text().splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("| method (whole epoch) |"))
    rates = [float(c) for c in lines[head].strip("|").split("|")[1:-1]]
    methods = set()
    for line in lines[head + 2:]:
        if not line.startswith("|"):
            break
        method, *cells, chosen = [c.strip() for c in line.strip("|").split("|")]
        methods.add(method)
        for lr, cell in zip(rates, cells, strict=True):
            rec = folder / method / f"lr{lr:g}.json"
            if rec.is_file():
                r = json.loads(rec.read_text())
                assert cell.startswith(f"{r['accuracy']:.3f} / {r['margin']:.3f} / x"), (method, lr, cell)
            else:
                assert not cell[:1].isdigit(), f"{method} {lr:g}: the research page quotes a point with no record"
        done = folder / f"{method}.json"
        if done.is_file():
            assert float(chosen.split()[0]) == json.loads(done.read_text())["lr"], method
        else:
            assert chosen.startswith("running"), method
    started = {p.name for p in folder.iterdir() if p.is_dir() and any(p.glob("lr*.json"))}
    assert started <= methods, f"sweep points missing from the research page's table: {sorted(started - methods)}"


def test_readme_overview_table_is_the_analysis_one():
    """The research page's at-a-glance table of the decisive grid is the one `experiments/analyse.py`
    last wrote to results/decisive/results.md (regenerate and copy it when cells land)."""
    root = Path(__file__).resolve().parents[1]

    def block(text: str) -> list[str]:
        lines = text.splitlines()
        head = next((i for i, line in enumerate(lines) if line.startswith("| method | alpaca_easy -> ")), None)
        assert head is not None, "no at-a-glance table"
        end = next((i for i in range(head, len(lines)) if not lines[i].startswith("|")), len(lines))
        return lines[head:end]

    readme = block((root / "docs/research/comparison.md").read_text())
    assert len(readme) >= 4
    assert readme == block((root / "results/decisive/results.md").read_text())


def _sync_tables():
    import importlib.util

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("sync_tables", root / "experiments" / "sync_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pages_quote_the_remeasure_grids_committed_tables():
    """Every table a page marks (``<!-- tables:NAME -->``) is the one results/remeasure/results.md holds."""
    sync = _sync_tables()
    root = Path(__file__).resolve().parents[1]
    results = (root / "results/remeasure/results.md").read_text()
    quoted = 0
    for page in (root / "docs/research/comparison.md", root / "README.md"):
        for name, lines in sync.marked(page.read_text()).items():
            assert lines == sync.table_block(results, name), (
                f"{page.name}: table {name!r} differs from results/remeasure/results.md; run "
                "python experiments/sync_tables.py results/remeasure docs/research/comparison.md README.md")
            quoted += 1
    assert quoted >= 2


def test_sync_tables_replaces_only_the_marked_lines(tmp_path):
    sync = _sync_tables()
    results = tmp_path / "results.md"
    results.write_text("intro\n\nAt a glance: what it shows\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\nafter\n")
    page = tmp_path / "page.md"
    page.write_text("before\n<!-- tables:at-a-glance -->\nold\n<!-- /tables:at-a-glance -->\nafter\n")
    sync.sync(results, [page])
    assert page.read_text() == ("before\n<!-- tables:at-a-glance -->\nAt a glance: what it shows\n\n| a | b |\n"
                                "|---|---|\n| 1 | 2 |\n<!-- /tables:at-a-glance -->\nafter\n")
    assert sync.marked(page.read_text())["at-a-glance"] == sync.table_block(results.read_text(), "at-a-glance")


def test_remeasure_at_a_glance_accuracies_are_results_csv():
    """Each 'source / target' pair of the remeasure grid's at-a-glance table, as the README and the
    research page quote it, is the seed mean of the accuracies results/remeasure/results.csv holds."""
    import csv
    import statistics

    sync = _sync_tables()
    root = Path(__file__).resolve().parents[1]
    with (root / "results/remeasure/results.csv").open() as f:
        rows = list(csv.DictReader(f))

    def acc(shift: str, method: str, eval_: str) -> float:
        vals = [float(r["accuracy"]) for r in rows if (r["shift"], r["method"], r["eval"]) == (shift, method, eval_)]
        assert vals, f"{shift} {method} {eval_}: quoted but not in results.csv"
        return statistics.mean(vals)

    checked = 0
    for page in (root / "README.md", root / "docs/research/comparison.md"):
        table = [line for line in sync.marked(page.read_text()).get("at-a-glance", []) if line.startswith("| ")]
        assert table, f"{page.name} quotes no at-a-glance table"
        head = [c.strip() for c in table[0].strip("|").split("|")]
        shifts = [(h.split(" -> ")[0], f"target {h.split(' -> ')[1].split(' (')[0]}") for h in head[1:]
                  if " -> " in h and not h.startswith("pooled")]
        for line in table[2:]:
            method, *cells = [c.strip() for c in line.strip("|").split("|")]
            for (shift, target), cell in zip(shifts, cells):
                if cell == "not run":
                    assert not [r for r in rows if (r["shift"], r["method"]) == (shift, method)], (shift, method)
                    continue
                source, tgt = (float(x) for x in cell.split("<br>")[0].split(" / "))
                assert source == round(acc(shift, method, "source test"), 3), (page.name, shift, method)
                assert tgt == round(acc(shift, method, target), 3), (page.name, shift, method)
                checked += 1
    assert checked >= 8


def test_every_committed_star_is_the_rows_p():
    """In every committed table of paired differences, a row is significant exactly when its p is
    below 0.05, and the dagger marks exactly the rows whose interval alone excludes 0."""
    import csv

    root = Path(__file__).resolve().parents[1]
    files = sorted((root / "results").glob("*/*paired*.csv"))
    assert len(files) >= 4
    checked = 0
    for path in files:
        with path.open() as f:
            for row in csv.DictReader(f):
                if row.get("p") in (None, "") or row.get("significant") in (None, ""):
                    continue
                p, star = float(row["p"]), row["significant"] == "True"
                assert star == (p < 0.05), (path.name, row)
                if row.get("interval_disagrees") not in (None, ""):
                    outside = float(row["ci_low"]) > 0 or float(row["ci_high"]) < 0
                    assert (row["interval_disagrees"] == "True") == (outside != star), (path.name, row)
                checked += 1
    assert checked > 100
