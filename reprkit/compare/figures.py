"""Figures of the comparison grid (plotly): matched-accuracy curves and paired differences."""

from __future__ import annotations

from pathlib import Path

COLOURS = {"base": "#888888", "mms": "#17becf", "dpo": "#d62728", "reprpo": "#1f77b4",
           "reprpo-direction-only": "#9467bd", "reroute": "#ff7f0e", "prefvec": "#2ca02c"}


def fmt_diff(row: dict | None) -> str:
    """'+0.052 (+0.020, +0.084) p=0.003 *' for a paired-difference row (* when p < 0.05, ``stats.ALPHA``; † when the interval alone excludes 0).

    The p names its test when it is not exact McNemar: 'perm' for the sign-flip permutation test
    of per-item differences (used where a side averages several seeds, so outcomes are not 0/1),
    and 'p<=' where that p sits at the test's floor (the smallest p its resamples can give)."""
    if not row:
        return ""
    p = ""
    if row.get("p") not in (None, ""):
        pv = float(row["p"])
        if row.get("test") == "sign-flip permutation":
            floor = row.get("p_floor")
            at_floor = floor not in (None, "") and pv <= float(floor) * 1.0001
            p = f" p<={float(floor):.1g} perm" if at_floor else f" p={pv:.3g} perm"
        else:
            p = f" p={pv:.3g}"
    star = " *" if row["significant"] in (True, "True") else " †" if row.get("interval_disagrees") in (True, "True") else ""
    return f"{float(row['difference']):+.3f} ({float(row['ci_low']):+.3f}, {float(row['ci_high']):+.3f}){p}{star}"


def run_points(base: dict, cell: dict) -> list[dict]:
    """A run's curve points with the frozen model as its step 0; a method without training (mms)
    has only its own point."""
    trained = [p for p in cell["curve"] if p["step"] > 0]
    return [base["curve"][0]] + trained if trained else list(cell["curve"])


def curve_figure(cells: list[dict]):
    """Target (curve subset) against source-validation accuracy along training, one line per run,
    one panel per shift and target; the base model is every trained run's first point."""
    from ..extras import require

    go = require("plotly.graph_objects", "figures")
    make_subplots = require("plotly.subplots", "figures").make_subplots

    panels = [(c["shift"], t) for c in cells if c["method"] == "base" for t in c["targets"]]
    fig = make_subplots(rows=1, cols=max(1, len(panels)), subplot_titles=[f"{s} -> {t}" for s, t in panels])
    shown = set()
    for j, (shift, target) in enumerate(panels, start=1):
        base = next(c for c in cells if c["shift"] == shift and c["method"] == "base")
        col = f"target {target}"
        for c in cells:
            if c["shift"] != shift or not c.get("curve"):
                continue
            points = run_points(base, c)
            if not points or any(col not in p for p in points):
                continue  # a target the grid no longer scores (cut for budget after the base cell ran)
            fig.add_trace(go.Scatter(
                x=[p["source val"]["accuracy_mean"] for p in points], y=[p[col]["accuracy_mean"] for p in points],
                mode="lines+markers", name=c["method"], legendgroup=c["method"], showlegend=c["method"] not in shown,
                line={"color": COLOURS.get(c["method"]), "dash": "solid" if c["seed"] == 0 else "dot"},
                text=[f"{c['method']} seed {c['seed']} step {p['step']}" for p in points]), row=1, col=j)
            shown.add(c["method"])
        fig.update_xaxes(title_text="source validation accuracy", row=1, col=j)
    fig.update_yaxes(title_text="target accuracy (curve subset)", row=1, col=1)
    fig.update_layout(height=460, width=max(520, 430 * len(panels)), title="Target vs source accuracy along training")
    return fig


def difference_figure(paired: list[dict]):
    """Paired difference in target accuracy vs DPO and vs base, per shift and pooled, with 95% intervals."""
    from ..extras import require

    go = require("plotly.graph_objects", "figures")
    make_subplots = require("plotly.subplots", "figures").make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=["target: method - DPO", "target: method - base"],
                        shared_yaxes=True)
    for j, vs in enumerate(("dpo", "base"), start=1):
        rows = [r for r in paired if r["vs"] == vs and (r["eval"].startswith("target") or r["shift"] == "pooled")
                and r["eval"] != "source"]
        for method in dict.fromkeys(r["method"] for r in rows):
            rs = [r for r in rows if r["method"] == method]
            fig.add_trace(go.Scatter(
                x=[r["difference"] for r in rs], y=[f"{r['shift']}" for r in rs], mode="markers", name=method,
                legendgroup=method, showlegend=j == 1, marker={"color": COLOURS.get(method), "size": 9},
                error_x={"type": "data", "symmetric": False, "array": [r["ci_high"] - r["difference"] for r in rs],
                         "arrayminus": [r["difference"] - r["ci_low"] for r in rs]}), row=1, col=j)
        fig.add_vline(x=0, line_dash="dash", line_color="#444", row=1, col=j)
    fig.update_layout(height=120 + 40 * len({r["shift"] for r in paired}), width=1000,
                      title="Paired differences in target accuracy (95% bootstrap intervals)")
    return fig


def save(fig, stem: Path) -> None:
    """HTML always; PNG when kaleido and a browser are available (said, not raised, when not)."""
    fig.write_html(f"{stem}.html", include_plotlyjs="cdn")
    try:
        fig.write_image(f"{stem}.png", scale=2)
    except Exception as err:  # kaleido missing, or no browser for it
        print(f"(no {Path(stem).name}.png: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})")
