"""The shift rule (experiments/select_shifts.py) applied to constructed distributions."""

import importlib.util
import sys
from pathlib import Path

EXPERIMENTS = Path(__file__).parents[1] / "experiments"
sys.path.insert(0, str(EXPERIMENTS))
spec = importlib.util.spec_from_file_location("select_shifts", EXPERIMENTS / "select_shifts.py")
select = importlib.util.module_from_spec(spec)
spec.loader.exec_module(select)


def dist(frozen=0.5, short=0.25, long=0.25, chance=0.25, cut=0.0, source=False):
    rep = {"share": cut, "cut": int(cut * 100)}
    row = {"test_truncation": rep, "chance": chance, "shortest": short, "longest": long,
           "frozen": {"n": 100, "mean": frozen, "sum": frozen}}
    if source:
        row["train_truncation"] = row["val_truncation"] = rep
    return row


def test_a_length_neutral_shift_in_range_passes():
    v = select.verdict({"source": "s", "target": "t"}, {"s": dist(0.5, source=True), "t": dist(0.4)})
    assert v["verdict"] == "passes: length-neutral" and not v["reasons"]


def test_each_rule_names_its_reason():
    cases = {
        "target 0.34 below chance + 0.10": {"s": dist(0.5, source=True), "t": dist(0.34)},
        "target 0.95 above 0.90": {"s": dist(0.5, source=True), "t": dist(0.95)},
        "source 0.91 above 0.90": {"s": dist(0.91, source=True), "t": dist(0.5)},
        "target test 20% cut": {"s": dist(0.5, source=True), "t": dist(0.5, cut=0.2)},
        "source train 10% cut": {"s": dist(0.5, cut=0.1, source=True), "t": dist(0.5)},
    }
    for reason, dists in cases.items():
        v = select.verdict({"source": "s", "target": "t"}, dists)
        assert v["verdict"] == "fails" and any(reason in r for r in v["reasons"]), (reason, v["reasons"])


def test_a_length_cue_passes_only_as_the_labelled_group():
    v = select.verdict({"source": "s", "target": "t"}, {"s": dist(0.3, short=1.0, long=0.0, chance=0.5, source=True),
                                                        "t": dist(0.7, short=0.0, long=1.0, chance=0.5)})
    assert v["verdict"] == "passes: length-cue group" and not v["length_neutral"]
