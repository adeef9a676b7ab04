"""Tables in the README quote the committed result files."""

from pathlib import Path


def test_readme_decisive_table_matches_results_csv():
    """The README's table of the decisive grid quotes results/decisive/results.csv (seed means)."""
    import csv
    import statistics

    root = Path(__file__).resolve().parents[1]
    lines = (root / "README.md").read_text().splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("| method | alpaca_easy test |"))
    rows = []
    for line in lines[head + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows.append((cells[0], float(cells[1]), float(cells[3])))
    with (root / "results/decisive/results.csv").open() as f:
        csv_rows = [r for r in csv.DictReader(f) if r["shift"] == "alpaca_easy"]

    def acc(method: str, eval_: str) -> float:
        vals = [float(r["accuracy"]) for r in csv_rows if r["method"] == method and r["eval"] == eval_]
        assert vals, f"{method} {eval_} is in the README but not in results.csv"
        return statistics.mean(vals)

    assert len(rows) >= 4
    for method, source, target in rows:
        assert round(acc(method, "source test"), 3) == source, method
        assert round(acc(method, "target alpaca_hard"), 3) == target, method
    assert {m for m, *_ in rows} == {r["method"] for r in csv_rows}, "a finished cell is missing from the README table"
