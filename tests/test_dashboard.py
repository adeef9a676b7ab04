"""The Streamlit dashboard renders (AppTest) and shows its charts in a real headless browser."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .test_figures import synthetic_run

APP = str(Path(__file__).parents[1] / "reprkit" / "app" / "dashboard.py")


def write_run(root: Path, run: dict, corrupt: bool = False) -> Path:
    path = root / run["name"]
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(run["config"]))
    lines = "".join(json.dumps(r) + "\n" for r in run["metrics"])
    (path / "metrics.jsonl").write_text(lines + ('{"step": 99, "loss": 0.' if corrupt else ""))
    (path / "eval.json").write_text(json.dumps(run["eval"]))
    (path / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in run["samples"]))
    return path


def app_test(root: Path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("REPRKIT_RUNS_DIR", str(root))
    return AppTest.from_file(APP, default_timeout=60)


def test_one_run(tmp_path, monkeypatch):
    write_run(tmp_path, synthetic_run("a"))
    at = app_test(tmp_path, monkeypatch).run()
    assert not at.exception
    assert at.sidebar.multiselect[0].value == ["a"]
    assert len(at.get("plotly_chart")) >= 5
    assert not at.warning


def test_several_runs(tmp_path, monkeypatch):
    for name in ("a", "b", "c"):
        write_run(tmp_path, synthetic_run(name))
    at = app_test(tmp_path, monkeypatch).run()
    at.sidebar.multiselect[0].set_value(["a", "b", "c"]).run()
    assert not at.exception
    assert len(at.get("plotly_chart")) >= 3 + 3 * 5


def test_empty_directory(tmp_path, monkeypatch):
    at = app_test(tmp_path, monkeypatch).run()
    assert not at.exception and "No runs" in at.info[0].value
    at = app_test(tmp_path / "missing", monkeypatch).run()
    assert not at.exception and "No runs" in at.info[0].value


def test_corrupt_metrics_shows_a_notice(tmp_path, monkeypatch):
    write_run(tmp_path, synthetic_run("a"), corrupt=True)
    broken = tmp_path / "b"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    (broken / "metrics.jsonl").write_bytes(b"\xff\xfe garbage\n")
    at = app_test(tmp_path, monkeypatch).run()
    at.sidebar.multiselect[0].set_value(["a", "b"]).run()
    assert not at.exception
    texts = " ".join(w.value for w in at.warning)
    assert "could not be read" in texts and "config.json unreadable" in texts


STEER = {"n": 2, "layers": [3], "strengths": [-1.0, 0.0, 1.0], "rule": "log-odds", "data": "f.jsonl items 0..2",
         "mean_slope": 0.5, "slope_ci95": [0.1, 0.9], "anti_steerable": 0.5, "anti_steerable_ci95": [0.1, 0.9],
         "unsteered_matching_rate": 0.5,
         "table": [{"strength": s, "mean_change": s / 2, "change_ci95": [0, 1], "wrong_way": 0.5, "kl_mean": abs(s),
                    "kl_q90": abs(s)} for s in (-1.0, 0.0, 1.0)],
         "per_item": {"change": [[-1, 0, 1], [1, 0, -1]], "slope": [1.0, -1.0], "log_odds_0": [0.1, -0.1]}}


def broken_runs(root: Path) -> None:
    """A runs folder holding each file the dashboard once showed a traceback for: a metrics row
    without a step, a ``layers`` field that is not a mapping, NaN losses, a steerability result whose
    interval is null; beside a healthy run."""
    write_run(root, synthetic_run("healthy"))
    run = synthetic_run("no-step")
    run["metrics"][2] = {k: v for k, v in run["metrics"][2].items() if k != "step"}
    write_run(root, run)
    run = synthetic_run("layers-a-list")
    run["metrics"][1]["layers"] = [1, 2, 3]
    write_run(root, run)
    run = synthetic_run("nan-loss")
    for row in run["metrics"][2:]:
        row["loss"] = float("nan")
    write_run(root, run)
    (root / "null-interval.steerability.json").write_text(json.dumps({**STEER, "slope_ci95": None}))


def test_broken_files_render_what_they_can_and_say_what_they_skipped(tmp_path, monkeypatch):
    broken_runs(tmp_path)
    at = app_test(tmp_path, monkeypatch).run()
    names = ["healthy", "no-step", "layers-a-list", "nan-loss"]
    at.sidebar.multiselect[0].set_value(names).run()
    assert not at.exception
    warnings = " | ".join(w.value for w in at.warning)
    assert "no-step: 1 line(s) of metrics.jsonl have no step" in warnings
    assert "layers-a-list: 1 line(s) of metrics.jsonl have a 'layers' field that is not a mapping" in warnings
    assert "nan-loss: the loss is NaN or infinite at 3 step(s) (first: step 3)" in warnings
    assert "null-interval.steerability.json: cannot be shown (TypeError" in warnings
    assert "Traceback" not in warnings
    # every panel of every run still drew: 4 layer curves, per run 4 heatmaps and direction-vs-magnitude,
    # the training curves and the evaluation bars
    assert len(at.get("plotly_chart")) >= 4 + 4 * 5 + 2


def test_a_panel_that_fails_says_so_and_the_rest_renders(tmp_path, monkeypatch):
    """A figure that raises (a value the figures did not foresee) becomes one warning naming its panel."""
    write_run(tmp_path, synthetic_run("a"))
    run = tmp_path / "a" / "eval.json"
    run.write_text(json.dumps({"step": 5, "datasets": {"x": {"n": "many", "accuracy_mean": "high"}}}))
    at = app_test(tmp_path, monkeypatch).run()
    assert not at.exception
    assert any(w.value.startswith("the evaluation: cannot be shown") for w in at.warning), [w.value for w in at.warning]
    assert len(at.get("plotly_chart")) >= 4 + 5 + 1  # the layer and training panels


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.mark.skipif(not os.path.exists(CHROMIUM) and not os.environ.get("CI"),
                    reason="Debian chromium is not installed here (.ci/run installs it; CI never skips)")
def test_dashboard_in_a_headless_browser(tmp_path):
    from playwright.sync_api import sync_playwright

    runs = tmp_path / "runs"
    broken_runs(runs)  # beside the run shown, each file that once put a traceback in the page
    time.sleep(0.05)
    write_run(runs, synthetic_run("demo-run", steps=20, layers=(9, 15, 19)))  # the newest: shown first
    port = _free_port()
    cmd = [sys.executable, "-m", "reprkit.cli", "dashboard", str(runs), "--port", str(port)]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    shot = Path(__file__).parents[1] / "docs" / "dashboard-test.png" if os.environ.get("REPRKIT_SCREENSHOT") else tmp_path / "dashboard.png"
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.3)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded")
            page.wait_for_selector(".js-plotly-plot .main-svg", timeout=60_000)
            page.wait_for_timeout(1500)
            plots = page.locator(".js-plotly-plot").count()
            text = page.inner_text("body")
            page.get_by_role("tab", name="steerability").click()
            page.wait_for_timeout(1000)
            steer_text = page.inner_text("body")
            lines = page.locator(".js-plotly-plot .scatterlayer .trace").count()
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=False)
            browser.close()
        assert plots >= 5, plots
        for shown in (text, steer_text):
            assert "Traceback" not in shown and 'File "' not in shown and "site-packages" not in shown, shown[-2000:]
        assert "null-interval.steerability.json: cannot be shown" in steer_text
        assert lines >= 6, lines  # cosine curves: 3 layers x chosen/rejected
        assert shot.stat().st_size > 10_000
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_steerability_results_are_shown_and_a_broken_file_only_warns(tmp_path, monkeypatch):
    write_run(tmp_path, synthetic_run("a"))
    (tmp_path / "happy.steerability.json").write_text(json.dumps(STEER))
    (tmp_path / "broken.steerability.json").write_text("{not json")
    at = app_test(tmp_path, monkeypatch).run()
    assert not at.exception
    assert any("broken.steerability.json" in w.value for w in at.warning)
    assert any("anti-steerable 0.500" in c.value for c in at.caption)


def test_a_comparison_folder_shows_its_answer(tmp_path, monkeypatch):
    """A `reprkit compare` folder under the runs directory: the comparison view draws the answer's
    figure and tables; an answer file of another shape only warns."""
    entry = {"dpo": {"difference": 0.1, "ci95": [0.05, 0.15], "p": 0.001, "learnt": True},
             "reroute": {"difference": 0.0, "ci95": [-0.02, 0.02], "p": 0.9, "learnt": False}}
    answer = {"src": {"entry": entry, "positive_control": {"target": "near", "difference": 0.08, "ci95": [0.01, 0.15],
                                                           "p": 0.03, "shown": True},
                      "normalised": {"near": {"dpo": {"normalised": 0.5, "ci95": [0.2, 0.9]}}},
                      "family": {"targets": ["near"], "rows": {}, "not_learnt": ["reroute"],
                                 "why_empty": "no hidden-state method learnt the source at seed level"}},
              "other": {"entry": "not a table"}}
    (tmp_path / "cmp").mkdir()
    (tmp_path / "cmp" / "answer.json").write_text(json.dumps(answer))
    at = app_test(tmp_path, monkeypatch).run()
    assert not at.exception
    at.sidebar.radio[0].set_value("comparison").run()
    assert not at.exception
    assert len(at.get("plotly_chart")) == 1 and any("transfer is visible" in c.value for c in at.caption)
    assert any("source other: cannot be shown" in w.value for w in at.warning)


def test_answer_figure_marks_what_was_not_learnt_and_the_undetectable_band():
    from reprkit.app.figures import answer_figure

    res = {"entry": {"dpo": {"difference": 0.1, "ci95": [0.05, 0.15], "learnt": True},
                     "reprpo": {"difference": 0.09, "ci95": [0.04, 0.14], "learnt": True},
                     "reroute": {"difference": 0.0, "ci95": [-0.02, 0.02], "learnt": False}},
           "family": {"rows": {"reprpo": {"difference": -0.01, "simultaneous_ci": [-0.08, 0.06], "mde80_family": 0.07}}}}
    fig = answer_figure(res)
    bars = fig.data[0]
    assert list(bars.marker.color) == ["seagreen", "seagreen", "lightgrey"]
    assert list(fig.data[1].error_y.array) == pytest.approx([0.07]) and list(fig.data[1].error_y.arrayminus) == pytest.approx([0.07])
    band = [s for s in fig.layout.shapes if s.type == "rect"][0]
    assert (band.y0, band.y1) == (-0.07, 0.07)
    # one seed so far: undecided, neither learnt nor not, and its hover says why
    res["entry"]["reroute"] = {"difference": 0.0, "ci95": [-0.02, 0.02], "learnt": None,
                               "undecided": "undecided: 1 seed so far (the seed-level test needs 2)"}
    bars = answer_figure(res).data[0]
    assert bars.marker.color[2] == "white" and "1 seed so far" in bars.hovertext[2]


def test_intervention_runs_show_their_layer_curves_and_what_they_train(tiny_folder, tmp_path, monkeypatch):
    """Real runs of a vector (BiPO) and a LoReFT (ReprPO) on the tiny model: the dashboard draws
    their cosine and norm curves as for an adapter and says what each trains."""
    from reprkit.config import ReftSettings, TrainConfig, VectorSettings
    from reprkit.train import train

    for name, kw in (("vec", dict(intervention="vector", loss="bipo", vector=VectorSettings(layers="1"))),
                     ("reft", dict(intervention="reft", loss="reprpo", reft=ReftSettings(layers="1", positions="all")))):
        train(TrainConfig(model=str(tiny_folder), run_dir=str(tmp_path / name), steps=2, batch_size=4, limit=8,
                          eval_limit=4, n_samples=0, progress=False, lr=1e-2, eval_data=("embedded:arithmetic",), **kw))
    at = app_test(tmp_path, monkeypatch).run()
    at.sidebar.multiselect[0].set_value(["reft", "vec"]).run()
    assert not at.exception and not at.warning
    assert len(at.get("plotly_chart")) >= 4 + 2 * 5
    captions = " ".join(c.value for c in at.caption)
    assert "**vec** trains a vector at layers 1 (positions all) with bipo" in captions
    assert "**reft** trains LoReFT rank 4 at layers 1 (positions all) with reprpo" in captions
