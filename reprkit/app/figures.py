"""Plotly figures of reprkit runs: pure functions from run data (``reprkit.runlog.read_run``) to figures.

Usable from notebooks as well as the dashboard:

>>> from reprkit.runlog import read_run
>>> from reprkit.app import figures
>>> figures.layer_curves([read_run("runs/my-run")], "cos").show()
"""

from __future__ import annotations

import math

from reprkit.extras import require
from reprkit.runlog import other_measures

go = require("plotly.graph_objects", "figures")
make_subplots = require("plotly.subplots", "figures").make_subplots

SIDES = ("chosen", "rejected")
_LABEL = {"cos": "cosine to frozen", "norm": "norm ratio policy / frozen",
          "along": "moved along the frozen preference direction (x frozen gap)",
          "off": "moved off the frozen preference direction (x frozen gap)"}
_SKIP = {"step", "layers", "lr", "grad_norm", "step_time"}


def _layer_series(run: dict, metric: str, side: str) -> dict[str, tuple[list, list]]:
    """{layer: (steps, values)} of ``<metric>_<side>`` from the run's metrics rows."""
    key = f"{metric}_{side}"
    series: dict[str, tuple[list, list]] = {}
    for row in run["metrics"]:
        for layer, values in (row.get("layers") or {}).items():
            if isinstance(values, dict) and values.get(key) is not None:
                steps, vals = series.setdefault(layer, ([], []))
                steps.append(row.get("step"))
                vals.append(values[key])
    return dict(sorted(series.items(), key=lambda kv: int(kv[0]) if kv[0].lstrip("-").isdigit() else 0))


def layer_curves(runs: list[dict], metric: str = "cos", smoothing: float = 0.0) -> go.Figure:
    """Per-layer ``metric`` ("cos", "norm", "along" or "off") over steps, chosen and rejected side by side
    (``smoothing``: exponential moving average weight, 0 for raw values)."""
    # the metric's (long) name once, as the figure's title; the panels say only which side they show,
    # so their titles cannot run into each other at any width
    fig = make_subplots(rows=1, cols=2, subplot_titles=list(SIDES), shared_yaxes=True)
    colors: dict[str, str] = {}  # one colour per (run, layer), the same in both panels
    for col, side in enumerate(SIDES, start=1):
        for run in runs:
            for layer, (steps, vals) in _layer_series(run, metric, side).items():
                name = f"{run['name']} L{layer}"
                color = colors.setdefault(name, _color(len(colors)))
                fig.add_trace(go.Scatter(x=steps, y=smooth(vals, smoothing), mode="lines", name=name, line=dict(color=color),
                                         legendgroup=name, showlegend=col == 1), row=1, col=col)
    fig.update_xaxes(title_text="step")
    fig.update_layout(height=400, margin=dict(t=70, b=30), legend=dict(font=dict(size=10)),
                      title=dict(text=_LABEL[metric], x=0.5, xanchor="center"))
    return fig


def layer_heatmap(run: dict, metric: str = "cos", side: str = "rejected") -> go.Figure:
    """Layer x step heatmap of ``<metric>_<side>`` for one run."""
    series = _layer_series(run, metric, side)
    steps = sorted({s for st, _ in series.values() for s in st})
    index = {s: i for i, s in enumerate(steps)}
    z = []
    for _, (st, vals) in series.items():
        row = [None] * len(steps)
        for s, v in zip(st, vals):
            row[index[s]] = v
        z.append(row)
    fig = go.Figure(go.Heatmap(z=z, x=steps, y=[f"L{k}" for k in series], colorscale="Viridis",
                               colorbar=dict(title=metric)))
    fig.update_layout(title=f"{run['name']}: {side} {_LABEL[metric]}", xaxis_title="step", yaxis_title="layer",
                      height=320, margin=dict(t=40, b=30))
    return fig


def logit_lens_heatmap(res: dict, prompt: int = 0, value: str = "top") -> go.Figure:
    """Layer x position heatmap of a ``reprkit.lens.logit_lens`` result for one prompt.

    ``value="top"``: colour is the top token's probability and each cell is labelled with that
    token; ``value="target"``: colour is the target token's probability, labels its rank (needs
    ``logit_lens(..., target=...)``).
    """
    if value not in ("top", "target"):
        raise ValueError(f"value must be 'top' or 'target', got {value!r}")
    if value == "target" and "target" not in res:
        raise ValueError("this lens result has no target: call logit_lens(..., target=' token')")
    layers, tokens = res["layers"], res["tokens"][prompt]
    if value == "top":
        cells = [[res["top"][layer][prompt][t][0] for t in range(len(tokens))] for layer in layers]
        z = [[p for _, p in row] for row in cells]
        text = [[tok for tok, _ in row] for row in cells]
        title = "top token and its probability"
    else:
        z = [res["target"]["prob"][layer][prompt] for layer in layers]
        text = [[f"#{r}" for r in res["target"]["rank"][layer][prompt]] for layer in layers]
        title = f"probability (and rank) of {res['target']['token']!r}"
    x = [f"{i}:{tok}" for i, tok in enumerate(tokens)]
    fig = go.Figure(go.Heatmap(z=z, x=x, y=[f"L{k}" for k in layers], text=text, texttemplate="%{text}",
                               zmin=0, zmax=1, colorscale="Viridis", colorbar=dict(title="p")))
    fig.update_layout(title=f"logit lens, prompt {prompt}: {title}", xaxis_title="position: input token",
                      yaxis_title="layer", height=max(320, 24 * len(layers) + 120), margin=dict(t=40, b=30))
    return fig


def rotation_scaling(cos: float, ratio: float) -> tuple[float, float]:
    """Split the relative change of a hidden state into rotation and scaling.

    For h' with |h'| = r |h| at cosine c to h:  |h' - h|^2 / |h|^2 = (r - 1)^2 + 2 r (1 - c),
    the first term from scaling alone, the second from rotation. Returns (rotation, scaling).
    """
    return 2 * ratio * (1 - cos), (ratio - 1) ** 2


def direction_vs_magnitude(run: dict, step: int | None = None) -> go.Figure:
    """Per layer, the share of the change (policy vs frozen) that is rotation vs scaling, at ``step``
    (default: the last logged). Uses the per-layer mean cosine and norm ratio."""
    rows = [r for r in run["metrics"] if r.get("layers")]
    if step is not None:
        rows = [r for r in rows if r.get("step") == step]
    fig = make_subplots(rows=1, cols=2, subplot_titles=[f"{s} completions" for s in SIDES], shared_yaxes=True)
    if not rows:
        return fig
    last = rows[-1]
    for col, side in enumerate(SIDES, start=1):
        layers, rot, sca = [], [], []
        for layer, v in last["layers"].items():
            c, r = v.get(f"cos_{side}"), v.get(f"norm_{side}")
            if c is None or r is None:
                continue
            a, b = rotation_scaling(c, r)
            total = a + b
            layers.append(f"L{layer}")
            rot.append(a / total if total > 0 else 0.0)
            sca.append(b / total if total > 0 else 0.0)
        fig.add_trace(go.Bar(x=layers, y=rot, name="rotation", marker_color="#636efa", showlegend=col == 1), row=1, col=col)
        fig.add_trace(go.Bar(x=layers, y=sca, name="scaling", marker_color="#ef553b", showlegend=col == 1), row=1, col=col)
    fig.update_layout(barmode="stack", height=320, title=f"{run['name']}: share of change, step {last.get('step')}",
                      yaxis_title="share of |h' - h|^2", margin=dict(t=60, b=30))
    return fig


def smooth(values: list, alpha: float) -> list:
    """Exponential moving average (``alpha`` = 0: none); None values are passed over."""
    out, acc = [], None
    for v in values:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            out.append(None)
            continue
        acc = v if acc is None or alpha <= 0 else alpha * acc + (1 - alpha) * v
        out.append(acc)
    return out


def scalar_keys(runs: list[dict]) -> list[str]:
    """The scalar metrics logged by any of the runs (loss, its terms, accuracy, ...)."""
    keys = []
    for run in runs:
        for row in run["metrics"]:
            for k, v in row.items():
                if k not in keys and k not in ("step", "layers") and isinstance(v, (int, float)):
                    keys.append(k)
    return keys


def training_curves(runs: list[dict], smoothing: float = 0.0, keys: list[str] | None = None) -> go.Figure:
    """Loss, each loss term, accuracy, learning rate and grad norm over steps, one panel each."""
    keys = keys or scalar_keys(runs)
    if not keys:
        return go.Figure()
    cols = 3
    rows = math.ceil(len(keys) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=keys)
    for i, key in enumerate(keys):
        r, c = i // cols + 1, i % cols + 1
        for j, run in enumerate(runs):
            pts = [(row["step"], row.get(key)) for row in run["metrics"] if "step" in row]
            steps = [s for s, _ in pts]
            vals = smooth([v for _, v in pts], smoothing if key not in ("lr",) else 0.0)
            fig.add_trace(go.Scatter(x=steps, y=vals, mode="lines", name=run["name"], legendgroup=run["name"],
                                     line=dict(color=_color(j)), showlegend=i == 0), row=r, col=c)
    fig.update_layout(height=260 * rows, margin=dict(t=40, b=30))
    return fig


def _color(i: int) -> str:
    palette = ["#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692", "#b6e880"]
    return palette[i % len(palette)]


EVAL_CAPTION = (
    "accuracy: the best response scores strictly highest. mean = mean log-prob per response token (the "
    "bars), sum = summed log-prob, ratio = summed log-prob ratio to the frozen model; frozen = the same "
    "rule with the adapter off. chance = a uniform pick (1 / responses, the dashes on the bars). "
    "shortest / longest: accuracy of the model-free 'prefer the shortest / longest response' (where "
    "one is near 1, the set is about length). cut: items whose prompt or a response was truncated.")


def eval_rows(runs: list[dict]) -> list[dict]:
    """One row per (run, eval dataset): accuracy under each scoring rule (the mean rule's with its
    95% interval), the frozen model's, chance, the length-only baselines and how many items were cut."""
    rows = []
    for run in runs:
        ev = run.get("eval") or {}
        for data, r in (ev.get("datasets") or {}).items():
            base = r.get("base") or {}
            length = r.get("length_baseline") or {}
            cut = r.get("truncation") or {}
            rows.append({
                "run": run["name"], "data": data, "n": r.get("n"), "chance": r.get("chance"),
                "accuracy (mean)": r.get("accuracy_mean"), "ci95": r.get("accuracy_mean_ci95"),
                "frozen (mean)": base.get("accuracy_mean"), "accuracy (sum)": r.get("accuracy_sum"),
                "frozen (sum)": base.get("accuracy_sum"), "accuracy (ratio)": r.get("accuracy_ratio"),
                "shortest": length.get("accuracy_shortest"), "longest": length.get("accuracy_longest"),
                "cut": f"{cut['cut']} of {cut['n'] + cut.get('dropped', 0)}" if "cut" in cut else None,
                "margin (mean)": r.get("margin_mean"), "step": ev.get("step"),
            })
    return rows


def other_rows(runs: list[dict]) -> list[dict]:
    """One row per (run, measure that is not a preference accuracy): TruthfulQA MC1 / MC2 and the
    behaviour rates ``reprkit eval`` merged into the run's ``eval.json`` (``runlog.other_measures``)."""
    return [{"run": run["name"], **r} for run in runs for r in other_measures(run.get("eval") or {})]


def eval_bars(runs: list[dict]) -> go.Figure:
    """Preference accuracy (mean rule) per eval dataset, one bar group per run, the frozen model as a
    reference run, chance as a dash over each dataset."""
    rows = eval_rows(runs)
    fig = go.Figure()
    datasets = list(dict.fromkeys(r["data"] for r in rows))
    base = {r["data"]: r["frozen (mean)"] for r in rows if r["frozen (mean)"] is not None}
    if base:
        fig.add_trace(go.Bar(x=datasets, y=[base.get(d) for d in datasets], name="frozen model", marker_color="#aaaaaa"))
    for j, run in enumerate(runs):
        mine = {r["data"]: r for r in rows if r["run"] == run["name"]}
        if not mine:
            continue
        acc = [mine[d]["accuracy (mean)"] if d in mine else None for d in datasets]
        ci = [mine[d]["ci95"] if d in mine and mine[d]["ci95"] else [a, a] for d, a in zip(datasets, acc)]
        upper = [(c[1] - a) if a is not None and c[1] is not None else None for c, a in zip(ci, acc)]
        lower = [(a - c[0]) if a is not None and c[0] is not None else None for c, a in zip(ci, acc)]
        fig.add_trace(go.Bar(x=datasets, y=acc, name=run["name"], marker_color=_color(j),
                             error_y=dict(type="data", array=upper, arrayminus=lower, symmetric=False)))
    chance = {r["data"]: r["chance"] for r in rows if r["chance"] is not None}
    if chance:
        fig.add_trace(go.Scatter(x=list(chance), y=list(chance.values()), mode="markers", name="chance",
                                 marker=dict(symbol="line-ew", size=40, line=dict(width=2, color="#444444"))))
    fig.update_layout(barmode="group", yaxis_title="accuracy (mean log-prob per token)", yaxis_range=[0, 1],
                      height=340, margin=dict(t=30, b=30))
    return fig


def flatten(config: dict, prefix: str = "") -> dict:
    """Nested config -> {"lora.r": 16, ...} for a side-by-side table."""
    out = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if not isinstance(v, (list, tuple)) else ", ".join(map(str, v))
    return out


def trained_note(config: dict) -> str:
    """What a run trains, in a few words: its intervention and loss (runs written before
    interventions existed trained LoRA)."""
    kind = config.get("intervention", "lora")
    loss = config.get("loss", "?")
    if kind == "vector":
        v = config.get("vector", {})
        what = f"a vector at layers {v.get('layers', '?')} (positions {v.get('positions', 'all')})"
    elif kind == "reft":
        v = config.get("reft", {})
        what = f"LoReFT rank {v.get('rank', '?')} at layers {v.get('layers', '?')} (positions {v.get('positions', '?')})"
    else:
        what = f"LoRA r{config.get('lora', {}).get('r', '?')}"
    return f"{what} with {loss}"


def config_table(runs: list[dict], only_differences: bool = False) -> dict[str, dict]:
    """{field: {run: value}} over the selected runs' configs."""
    flat = {run["name"]: flatten(run.get("config") or {}) for run in runs}
    fields = list(dict.fromkeys(k for cfg in flat.values() for k in cfg))
    table = {f: {name: cfg.get(f) for name, cfg in flat.items()} for f in fields}
    if only_differences and len(runs) > 1:
        table = {f: v for f, v in table.items() if len({str(x) for x in v.values()}) > 1}
    return table


def steerability_figure(res: dict, max_lines: int = 100) -> go.Figure:
    """Left: each item's change in the behaviour-matching log-odds against strength (thin grey,
    those that move the wrong way in red) and the mean (black). Right: the per-item slopes, with 0
    marked: the share left of it is the anti-steerable fraction."""
    strengths = res["strengths"]
    change, slopes = res["per_item"]["change"], res["per_item"]["slope"]
    fig = make_subplots(rows=1, cols=2, column_widths=[0.6, 0.4], horizontal_spacing=0.12,
                        subplot_titles=(f"change in log-odds per item (n {res['n']})",
                                        f"per-item slope (anti-steerable {res['anti_steerable']:.0%})"))
    for row, slope in list(zip(change, slopes))[:max_lines]:
        fig.add_trace(go.Scatter(x=strengths, y=row, mode="lines", showlegend=False, hoverinfo="skip",
                                 line={"width": 1, "color": "rgba(200,60,60,0.35)" if slope < 0 else "rgba(120,120,120,0.25)"}),
                      row=1, col=1)
    mean = [r["mean_change"] for r in res["table"]]
    fig.add_trace(go.Scatter(x=strengths, y=mean, mode="lines+markers", name="mean", line={"width": 3, "color": "black"}),
                  row=1, col=1)
    fig.add_trace(go.Histogram(x=slopes, nbinsx=30, name="slopes", marker={"color": "steelblue"}, showlegend=False),
                  row=1, col=2)
    fig.add_vline(x=0, line={"dash": "dash", "color": "red"}, row=1, col=2)
    fig.update_xaxes(title_text="strength", row=1, col=1)
    fig.update_yaxes(title_text="log-odds change", row=1, col=1)
    fig.update_xaxes(title_text="log-odds per unit strength", row=1, col=2)
    fig.update_layout(height=420, margin={"t": 60, "l": 60, "r": 20, "b": 50},
                      title=f"steerability at layer(s) {res['layers']}: mean slope {res['mean_slope']:+.3g}")
    return fig


def answer_figure(res: dict) -> go.Figure:
    """A comparison's answer for one source (``answer.json``'s entry): left, each method's
    seed-level source gain over the frozen model with its 95% interval (grey: did not learn the
    source, so not compared; white: undecided, fewer seeds than the test needs); right, each compared hidden-state method minus DPO on the pooled
    primary targets with its simultaneous interval, and the band of differences the design could
    not have detected (80% power at Holm's first step)."""
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.15,
                        subplot_titles=("source gain over the frozen model (95% CI)",
                                        "method - DPO on the primary targets (simultaneous CI)"))
    entry = res.get("entry", {})
    names = list(entry)
    gains = [entry[m]["difference"] for m in names]
    lo = [entry[m]["difference"] - entry[m]["ci95"][0] for m in names]
    hi = [entry[m]["ci95"][1] - entry[m]["difference"] for m in names]
    fig.add_trace(go.Bar(x=names, y=gains, error_y={"type": "data", "array": hi, "arrayminus": lo},
                         marker={"color": ["seagreen" if entry[m]["learnt"] else "white" if entry[m]["learnt"] is None
                                           else "lightgrey" for m in names],
                                 "line": {"color": "grey", "width": 1}},
                         showlegend=False, hovertext=[entry[m].get("undecided", "undecided") if entry[m]["learnt"] is None
                                                      else "learnt its source" if entry[m]["learnt"] else
                                                      "did not learn this source" for m in names]), row=1, col=1)
    rows = res.get("family", {}).get("rows", {})
    if rows:
        methods = list(rows)
        diff = [rows[m]["difference"] for m in methods]
        fig.add_trace(go.Scatter(x=methods, y=diff, mode="markers", marker={"size": 10, "color": "black"},
                                 error_y={"type": "data", "array": [rows[m]["simultaneous_ci"][1] - rows[m]["difference"]
                                                                    for m in methods],
                                          "arrayminus": [rows[m]["difference"] - rows[m]["simultaneous_ci"][0]
                                                         for m in methods]}, showlegend=False), row=1, col=2)
        mde = max(rows[m]["mde80_family"] for m in methods)
        fig.add_hrect(y0=-mde, y1=mde, fillcolor="orange", opacity=0.15, line_width=0, row=1, col=2,
                      annotation_text=f"not detectable: |d| < {mde:.3f}", annotation_position="top left")
    else:
        why = res.get("family", {}).get("why_empty", "no family")
        fig.add_annotation(text=why, xref="x2 domain", yref="y2 domain", x=0.5, y=0.5, showarrow=False)
    fig.add_hline(y=0, line={"dash": "dash", "color": "grey"})
    fig.update_layout(height=420, margin={"t": 60, "l": 60, "r": 20, "b": 50})
    return fig
