"""Streamlit dashboard of reprkit runs: ``reprkit dashboard [RUNS_DIR]``.

Reads only the runs directory given on the command line (``-- --runs-dir DIR``, or the
``REPRKIT_RUNS_DIR`` environment variable, default ``runs``); the figures come from
``reprkit.app.figures``, this file only lays them out.
"""

from __future__ import annotations

import argparse
import os
from contextlib import contextmanager
from pathlib import Path

import streamlit as st

from reprkit.app import figures
from reprkit.packaged import model_note
from reprkit.runlog import OTHER_MEASURES_NOTE, list_runs, read_run, resolve_run


@contextmanager
def panel(what: str):
    """One panel of the page: an error while drawing it becomes a warning naming the panel and the
    error in one line (no traceback), and the panels after it still render."""
    try:
        yield
    except Exception as err:  # a file of another version, or a value the figures did not foresee
        st.warning(f"{what}: cannot be shown ({type(err).__name__}: {' '.join(str(err).split())[:200]})")


def _ci_as_text(rows: list[dict]) -> list[dict]:
    """Table rows with their ``ci95`` pair as 'low–high' text."""
    return [{**r, "ci95": "–".join(f"{x:.3f}" for x in r["ci95"]) if r.get("ci95") else ""} for r in rows]


def runs_dir() -> Path:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--runs-dir", default=os.environ.get("REPRKIT_RUNS_DIR", "runs"))
    args, _ = parser.parse_known_args()
    return Path(args.runs_dir)


def _stamp(path: Path) -> tuple:
    """Sizes and mtimes of a run's files: a run is re-read only when one of them changed."""
    out = []
    for name in ("config.json", "metrics.jsonl", "eval.json", "samples.jsonl"):
        try:
            s = (path / name).stat()
            out.append((name, s.st_size, s.st_mtime_ns))
        except OSError:
            out.append((name, None, None))
    return tuple(out)


@st.cache_data(max_entries=64, show_spinner=False)
def _load(path: str, stamp: tuple) -> dict:
    return read_run(path)


def load(root: Path, name: str) -> dict:
    path = resolve_run(root, name)
    return _load(str(path), _stamp(path))


def comparisons(root: Path) -> list[Path]:
    """Comparison folders (``reprkit compare --out``) at or under the runs directory, two levels deep."""
    found = [p.parent for pattern in ("answer.json", "*/answer.json", "*/*/answer.json") for p in root.glob(pattern)]
    return sorted(set(found))


def comparison_view(folders: list[Path]) -> None:
    """A comparison's answer: the entry condition, the positive control, the family against DPO
    with its detectable difference, normalised transfer; a broken file only warns."""
    import json

    folder = st.sidebar.selectbox("comparison", folders, format_func=str)
    try:
        answer = json.loads((folder / "answer.json").read_text())
    except (ValueError, OSError) as err:
        st.warning(f"{folder}/answer.json cannot be read ({type(err).__name__}: {err})")
        return
    for source, res in answer.items():
        try:
            st.subheader(f"source {source}")
            st.plotly_chart(figures.answer_figure(res), key=f"answer-{folder}-{source}")
            st.dataframe([{"method": m, "gain": e["difference"], "ci95": e["ci95"], "p": e["p"],
                           "learnt its source": e.get("undecided") if e["learnt"] is None else e["learnt"]} for m, e in res["entry"].items()], hide_index=True)
            if pc := res.get("positive_control"):
                st.caption(f"positive control ({pc['target']}): DPO's target gain {pc['difference']:+.3f}, p "
                           f"{pc['p']:.3g}: " + (pc.get("undecided", "undecided") if pc["shown"] is None else
                                                 "transfer is visible where expected" if pc["shown"] else
                                                 "not significant, so the design has shown no power to see transfer"))
            for target, rows in res.get("normalised", {}).items():
                st.dataframe([{"target": target, "method": m, "normalised transfer": n["normalised"],
                               "ci95": n["ci95"] or "no finite interval"} for m, n in rows.items()], hide_index=True)
        except Exception as err:  # a file of another version never takes the page down
            st.warning(f"{folder}/answer.json, source {source}: cannot be shown ({type(err).__name__}: {err})")


def main() -> None:
    st.set_page_config(page_title="reprkit runs", layout="wide")
    try:  # also when the app is started by hand (``streamlit run``): no traceback on the page
        st.set_option("client.showErrorDetails", "none")
    except Exception:  # an option this Streamlit cannot set at run time: the command line sets it
        pass
    root = runs_dir()
    st.sidebar.title("reprkit")
    st.sidebar.caption(f"runs directory: `{root}`")
    if (found := comparisons(root)) and st.sidebar.radio("view", ["runs", "comparison"], horizontal=True) == "comparison":
        comparison_view(found)
        return
    names = list_runs(root)
    if not names:
        st.info(f"No runs in `{root}` yet. Start one with `reprkit train --run-dir {root}/my-run`.")
        return
    chosen = st.sidebar.multiselect("runs", names, default=names[:1])
    smoothing = st.sidebar.slider("smoothing", 0.0, 0.99, 0.6, 0.01)
    live = st.sidebar.toggle("live refresh", value=True, help="re-read runs that changed, every few seconds")
    every = st.sidebar.number_input("refresh every (s)", min_value=2, max_value=120, value=5, disabled=not live)
    if not chosen:
        st.info("Pick one or more runs in the sidebar.")
        return

    @st.fragment(run_every=f"{int(every)}s" if live else None)
    def body() -> None:
        runs = []
        for name in chosen:
            try:
                runs.append(load(root, name))
            except ValueError as err:
                st.error(str(err))
        for run in runs:
            for notice in run["notices"]:
                st.warning(f"{run['name']}: {notice}")
        runs = [r for r in runs if r["metrics"] or r["eval"] or r["config"]]
        if not runs:
            return
        with panel("progress"):
            steps = {r["name"]: (r["metrics"][-1]["step"] if r["metrics"] else 0) for r in runs}
            st.caption("  ·  ".join(f"**{r['name']}**: step {steps[r['name']]}/{r['config'].get('steps', '?')}"
                                    for r in runs))
            st.caption("  ·  ".join(f"**{r['name']}** model: {model_note(r['config'].get('model'))}" for r in runs))
            st.caption("  ·  ".join(f"**{r['name']}** trains {figures.trained_note(r['config'])}" for r in runs))
        tabs = st.tabs(["layers", "training", "evaluation", "samples", "config", "steerability"])
        with tabs[0]:
            for metric in ("cos", "norm"):
                with panel(f"the {metric} curves"):
                    st.plotly_chart(figures.layer_curves(runs, metric, smoothing), key=metric)
            st.caption("Movement of each side's mean state along the frozen model's own preference direction "
                       "(frozen mean chosen minus mean rejected) and off it, in units of that gap: moving toward "
                       "the preference, or just moving.")
            for metric in ("along", "off"):
                with panel(f"the {metric} curves"):
                    st.plotly_chart(figures.layer_curves(runs, metric, smoothing), key=metric)
            for run in runs:
                for metric in ("cos", "norm"):
                    left, right = st.columns(2)
                    for column, side in ((left, "chosen"), (right, "rejected")):
                        with column, panel(f"{run['name']}: the {metric} heatmap ({side})"):
                            st.plotly_chart(figures.layer_heatmap(run, metric, side),
                                            key=f"{metric[0]}{side[0]}-{run['name']}")
                with panel(f"{run['name']}: direction vs magnitude"):
                    st.plotly_chart(figures.direction_vs_magnitude(run), key=f"dm-{run['name']}")
        with tabs[1], panel("the training curves"):
            st.plotly_chart(figures.training_curves(runs, smoothing), key="train")
        with tabs[2], panel("the evaluation"):
            rows = figures.eval_rows(runs)
            if rows:
                st.dataframe(_ci_as_text(rows), hide_index=True)
                st.caption(figures.EVAL_CAPTION)
                st.plotly_chart(figures.eval_bars(runs), key="eval")
                if other := figures.other_rows(runs):
                    st.dataframe(_ci_as_text(other), hide_index=True)
                    st.caption(OTHER_MEASURES_NOTE)
            else:
                st.info("No eval.json yet: it is written at the end of training (and every --eval-every steps).")
        with tabs[3]:
            for run in runs:
                with panel(f"{run['name']}: samples"):
                    st.subheader(run["name"])
                    if run["samples"]:
                        st.dataframe(run["samples"], hide_index=True)
                    else:
                        st.caption("no samples yet")
        with tabs[4], panel("the config"):
            diff = st.checkbox("only differences", value=len(runs) > 1)
            table = figures.config_table(runs, only_differences=diff)
            st.dataframe([{"field": k, **{n: str(v) for n, v in vals.items()}} for k, vals in table.items()],
                         hide_index=True)

        with tabs[5]:
            steerability_tab(root)

    body()


def steerability_tab(root: Path) -> None:
    """Steerability results (``reprkit steer --evaluate FILE --out RUNS/NAME.steerability.json``):
    the table and the per-item figure of each file found under the runs directory."""
    import json

    files = sorted(root.rglob("*.steerability.json"))
    if not files:
        st.info(f"No steerability results under `{root}`. Write one with `reprkit steer --direction DIR --evaluate "
                f"FILE --out {root}/NAME.steerability.json`.")
        return
    for f in files:
        try:
            res = json.loads(f.read_text())
            st.subheader(f.name)
            st.caption(f"{res.get('data', '')}: mean slope {res['mean_slope']:+.4f} "
                       f"({res['slope_ci95'][0]:+.4f}, {res['slope_ci95'][1]:+.4f}); anti-steerable "
                       f"{res['anti_steerable']:.3f}; {res['rule']}")
            st.dataframe([{k: v for k, v in r.items() if k != "change_ci95"} for r in res["table"]], hide_index=True)
            st.plotly_chart(figures.steerability_figure(res), key=f"steer-{f}")
        except Exception as err:  # a broken file never takes the dashboard down
            st.warning(f"{f}: cannot be shown ({type(err).__name__}: {' '.join(str(err).split())[:200]})")


main()
