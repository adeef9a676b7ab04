"""The comparison grid runs, writes its tables, and is resumable (a finished cell is not recomputed)."""

import csv
import importlib.util
import json
import sys
from pathlib import Path

spec = importlib.util.spec_from_file_location("compare", Path(__file__).parents[1] / "experiments" / "compare.py")
compare = importlib.util.module_from_spec(spec)
sys.modules["compare"] = compare  # dataclasses look their module up there
spec.loader.exec_module(compare)


def test_grid_outputs_and_resume(tiny_folder, tmp_path, monkeypatch):
    grid = compare.Grid(model=str(tiny_folder), shifts=["alpaca_easy"], methods=["base", "dpo"],
                        extra_methods_first_shift=["reprpo"], seeds=[0, 1], steps=2, batch_size=2, max_length=96,
                        lora_r=2, eval_limit=4, train_eval_limit=4, unrelated="embedded:capitals",
                        retain_data="embedded:capitals", lr_sweep=[1e-3, 1e-4], sweep_steps=1)
    gfile = tmp_path / "grid.json"
    gfile.write_text(json.dumps(compare.dataclasses.asdict(grid)))
    out = tmp_path / "out"
    monkeypatch.setattr("sys.argv", ["compare", "--grid", str(gfile), "--out", str(out)])
    compare.main()
    rows = list(csv.DictReader(open(out / "results.csv")))
    cells = {(r["method"], r["seed"]) for r in rows}
    assert cells == {("base", "0"), ("dpo", "0"), ("dpo", "1"), ("reprpo", "0"), ("reprpo", "1")}
    assert {r["eval"] for r in rows} == {"train", "source test", "target", "unrelated"}
    assert all(r["data"] == "genies:alpaca_hard" for r in rows if r["eval"] == "target")
    md = (out / "results.md").read_text()
    assert "| alpaca_easy | dpo |" in md and "vs base" in md and "± " in md
    assert (out / "results.html").stat().st_size > 1000
    lr = json.loads((out / "lr" / "dpo.json").read_text())
    assert lr["lr"] in (1e-3, 1e-4) and lr["split"] == "train[90%:]"
    # the base row of the grid is what `reprkit eval` gives for the base model
    base_row = next(r for r in rows if r["method"] == "base" and r["eval"] == "source test")
    from reprkit.evalrun import evaluate_target

    again = evaluate_target(str(tiny_folder), ["genies:alpaca_easy"], split="test", limit=4)
    assert float(base_row["accuracy"]) == again["datasets"]["genies:alpaca_easy"]["accuracy_mean"]
    # resumable: a second invocation recomputes nothing
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("cell.json")}
    calls = []
    monkeypatch.setattr(compare, "run_training", lambda cfg: calls.append(cfg))
    monkeypatch.setattr(compare, "evaluate_target", lambda *a, **k: calls.append(a))
    compare.main()
    assert calls == [] and {p: p.stat().st_mtime_ns for p in out.rglob("cell.json")} == stamps


def test_learning_rate_choice_breaks_accuracy_ties_by_margin():
    acc = {1e-4: 0.6667, 1e-3: 0.6667, 3e-3: 0.5}
    assert compare.choose_lr(acc, {1e-4: 0.01, 1e-3: 0.20, 3e-3: 0.9}) == 1e-3  # tie on accuracy: larger margin
    assert compare.choose_lr({1e-4: 0.7, 1e-3: 0.6}, {1e-4: 0.0, 1e-3: 1.0}) == 1e-4  # accuracy first
    assert compare.choose_lr({1e-4: 0.5, 1e-3: 0.5}, {}) == 1e-4  # nothing else to go on: the smaller rate
