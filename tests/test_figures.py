import json
import math

import pytest

from reprkit.app import figures
from reprkit.runlog import read_run


def synthetic_run(name="run-a", steps=5, layers=(9, 15)):
    metrics = []
    for s in range(1, steps + 1):
        metrics.append({
            "step": s, "loss": 1.0 / s, "retain": 0.01 * s, "direction": 1.0 - 0.1 * s, "lr": 1e-4, "grad_norm": 0.5,
            "layers": {str(k): {"cos_chosen": 1 - 0.001 * s, "cos_rejected": 1 - 0.01 * s * (k / 10),
                                "norm_chosen": 1.0, "norm_rejected": 1 + 0.01 * s} for k in layers},
        })
    return {"name": name, "path": name, "config": {"loss": "reprpo", "steps": steps, "lora": {"r": 16}},
            "metrics": metrics, "samples": [{"step": steps, "prompt": "p", "completion": "c"}], "notices": [],
            "eval": {"step": steps, "datasets": {"embedded:arithmetic": {
                "n": 40, "accuracy_mean": 0.8, "accuracy_mean_ci95": [0.65, 0.9], "accuracy_sum": 0.7,
                "margin_mean": 0.1, "chance": 0.25, "length_baseline": {"accuracy_shortest": 0.3, "accuracy_longest": 0.2},
                "truncation": {"n": 40, "cut": 2}, "base": {"accuracy_mean": 0.7, "accuracy_sum": 0.6}}}}}


def test_layer_curves_have_a_trace_per_run_layer_and_side():
    runs = [synthetic_run("a"), synthetic_run("b", layers=(9,))]
    fig = figures.layer_curves(runs, "cos")
    assert len(fig.data) == 2 * (2 + 1)
    trace = next(t for t in fig.data if t.name == "a L15" and t.xaxis == "x2")
    assert list(trace.x) == [1, 2, 3, 4, 5] and trace.y[-1] == pytest.approx(1 - 0.01 * 5 * 1.5)
    assert len(figures.layer_curves(runs, "norm").data) == 6


def test_heatmap_is_layer_by_step():
    fig = figures.layer_heatmap(synthetic_run(), "cos", "rejected")
    z = fig.data[0].z
    assert len(z) == 2 and len(z[0]) == 5 and list(fig.data[0].y) == ["L9", "L15"]
    assert z[1][4] == pytest.approx(1 - 0.01 * 5 * 1.5)


def test_rotation_scaling_split_is_exact():
    rot, sca = figures.rotation_scaling(math.cos(0.3), 1.2)
    # |h' - h|^2 / |h|^2 for h = e1, h' = 1.2 (cos .3, sin .3)
    direct = (1.2 * math.cos(0.3) - 1) ** 2 + (1.2 * math.sin(0.3)) ** 2
    assert rot + sca == pytest.approx(direct)
    assert figures.rotation_scaling(1.0, 2.0) == (0.0, 1.0)  # pure scaling
    fig = figures.direction_vs_magnitude(synthetic_run())
    assert {t.name for t in fig.data} == {"rotation", "scaling"}
    shares = [t.y for t in fig.data if t.name == "rotation"][0]
    assert all(0 <= v <= 1 for v in shares)


def test_training_curves_smoothing_and_keys():
    runs = [synthetic_run()]
    keys = figures.scalar_keys(runs)
    assert keys[:3] == ["loss", "retain", "direction"] and "lr" in keys and "layers" not in keys
    fig = figures.training_curves(runs, smoothing=0.5)
    loss = next(t for t in fig.data if t.xaxis == "x")
    assert loss.y[0] == 1.0 and loss.y[1] == pytest.approx(0.5 * 1.0 + 0.5 * 0.5)
    assert figures.smooth([1.0, None, 3.0], 0.0) == [1.0, None, 3.0]


def test_eval_and_config_tables():
    a, b = synthetic_run("a"), synthetic_run("b")
    b["config"]["lora"]["r"] = 4
    rows = figures.eval_rows([a, b])
    assert rows[0]["accuracy (mean)"] == 0.8 and rows[0]["frozen (mean)"] == 0.7 and rows[0]["n"] == 40
    assert (rows[0]["accuracy (sum)"], rows[0]["frozen (sum)"], rows[0]["chance"]) == (0.7, 0.6, 0.25)
    assert (rows[0]["shortest"], rows[0]["longest"], rows[0]["cut"]) == (0.3, 0.2, "2 of 40")
    assert rows[0]["accuracy (ratio)"] is None  # not recorded: an empty cell, not a number
    fig = figures.eval_bars([a, b])
    assert [t.name for t in fig.data] == ["frozen model", "a", "b", "chance"]
    assert list(fig.data[-1].y) == [0.25] and "mean log-prob" in fig.layout.yaxis.title.text
    table = figures.config_table([a, b], only_differences=True)
    assert table == {"lora.r": {"a": 16, "b": 4}}


def test_figures_tolerate_empty_and_partial_runs(tmp_path):
    empty = read_run(tmp_path / "nothing")
    assert empty["metrics"] == [] and empty["notices"]
    for fig in (figures.layer_curves([empty]), figures.layer_heatmap(empty), figures.direction_vs_magnitude(empty),
                figures.training_curves([empty]), figures.eval_bars([empty])):
        assert fig is not None
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"loss": "dpo"}))
    rows = synthetic_run()["metrics"]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 6, "lo')
    partial = read_run(run)
    assert len(partial["metrics"]) == 5 and "could not be read" in partial["notices"][0]
    assert len(figures.layer_curves([partial]).data) == 4


def test_run_names_cannot_escape(tmp_path):
    from reprkit.runlog import resolve_run

    (tmp_path / "ok").mkdir()
    assert resolve_run(tmp_path, "ok") == (tmp_path / "ok").resolve()
    for bad in ("..", "../etc", "/etc", "a/b", "", "."):
        with pytest.raises(ValueError):
            resolve_run(tmp_path, bad)


def test_a_layer_has_one_colour_in_both_panels():
    fig = figures.layer_curves([synthetic_run("a"), synthetic_run("b")], "cos")
    by_name = {}
    for t in fig.data:
        by_name.setdefault(t.name, set()).add(t.line.color)
    assert all(len(c) == 1 for c in by_name.values()) and len({next(iter(c)) for c in by_name.values()}) == 4


@pytest.mark.integration
def test_figures_on_a_real_short_run_of_smollm(tmp_path):
    from reprkit.config import TrainConfig
    from reprkit.train import train

    cfg = TrainConfig(run_dir=str(tmp_path / "real"), steps=2, batch_size=2, warmup_steps=0, eval_limit=4,
                      eval_data=("embedded:capitals",), n_samples=1, progress=False, limit=8)
    run = read_run(train(cfg))
    assert not run["notices"] and len(run["metrics"]) == 2
    fig = figures.layer_curves([run], "cos")
    assert len(fig.data) == 2 * 3  # layers 9, 15, 19 x chosen / rejected
    assert all(len(t.x) == 2 for t in fig.data)
    assert len(figures.layer_heatmap(run).data[0].z) == 3
    assert {"loss", "retain", "direction", "magnitude", "lr", "grad_norm"} <= set(figures.scalar_keys([run]))
    assert figures.eval_rows([run])[0]["n"] == 4
    assert figures.config_table([run])["loss"] == {"real": "reprpo"}


def test_eval_bars_show_the_asymmetric_interval():
    fig = figures.eval_bars([synthetic_run("a")])
    bar = fig.data[1]
    assert bar.error_y.array[0] == pytest.approx(0.1) and bar.error_y.arrayminus[0] == pytest.approx(0.15)


def lens_result():
    # two layers, one prompt of three tokens; the top token at layer 5 is "b" everywhere
    top = {2: [[[("a", 0.5), ("b", 0.2)], [("c", 0.4), ("a", 0.3)], [("a", 0.9), ("b", 0.1)]]],
           5: [[[("b", 0.6), ("a", 0.1)], [("b", 0.7), ("c", 0.1)], [("b", 0.8), ("a", 0.1)]]]}
    target = {"token": "b", "id": 7, "prob": {2: [[0.2, 0.05, 0.1]], 5: [[0.6, 0.7, 0.8]]},
              "rank": {2: [[1, 3, 1]], 5: [[0, 0, 0]]}}
    return {"tokens": [["x", "y", "z"]], "layers": [2, 5], "top": top, "target": target}


def test_logit_lens_heatmap_is_layer_by_position():
    fig = figures.logit_lens_heatmap(lens_result())
    hm = fig.data[0]
    assert list(hm.y) == ["L2", "L5"] and list(hm.x) == ["0:x", "1:y", "2:z"]
    assert [list(r) for r in hm.z] == [[0.5, 0.4, 0.9], [0.6, 0.7, 0.8]]
    assert [list(r) for r in hm.text] == [["a", "c", "a"], ["b", "b", "b"]]
    fig = figures.logit_lens_heatmap(lens_result(), value="target")
    assert [list(r) for r in fig.data[0].z] == [[0.2, 0.05, 0.1], [0.6, 0.7, 0.8]]
    assert list(fig.data[0].text[0]) == ["#1", "#3", "#1"]
    res = lens_result()
    del res["target"]
    with pytest.raises(ValueError, match="target="):
        figures.logit_lens_heatmap(res, value="target")


def test_layer_curve_titles_are_short_per_panel_and_the_metric_is_the_figure_title():
    from reprkit.app.figures import layer_curves

    fig = layer_curves([synthetic_run("a")], "along")
    panels = [a.text for a in fig.layout.annotations]
    assert panels == ["chosen", "rejected"]  # short: they cannot run into each other at 1400 px
    assert "moved along the frozen preference direction" in fig.layout.title.text


def test_other_measures_rows_name_what_they_measure_with_chance():
    run = synthetic_run("a")
    run["eval"]["truthfulqa"] = {"mc1": {"n": 20, "accuracy": 0.1, "chance": 0.17, "ci95": [0.03, 0.3]},
                                 "mc2": {"n": 20, "score": 0.32, "chance": 0.47, "ci95": [0.15, 0.48]},
                                 "base": {"mc1": {"accuracy": 0.15}}}
    run["eval"]["behaviour"] = {"evals/syc.jsonl": {"n": 200, "rate": 0.6, "chance": 0.5, "ci95": [0.53, 0.67],
                                                    "base": {"rate": 0.5}}}
    rows = figures.other_rows([run, synthetic_run("b")])  # b has none
    assert [(r["run"], r["measure"], r["value"], r["chance"], r["frozen"]) for r in rows] == [
        ("a", "truthfulqa mc1: accuracy", 0.1, 0.17, 0.15),
        ("a", "truthfulqa mc2: probability on true answers", 0.32, 0.47, None),
        ("a", "behaviour syc: matching rate", 0.6, 0.5, 0.5)]
