"""Statistics, tables and figures of a comparison grid's cells (``reprkit.compare``), written when a
grid's cells are done and again on each run. About 460 lines: every table of the report, in the
order the report prints them, so that one file shows what a reader sees.

    python experiments/analyse.py results/decisive      # or: reprkit.compare.report.analyse(Path(...))

Writes ``results.csv`` (one row per cell and eval set), ``paired.csv`` (every method against DPO
and against the base model, per shift and eval set, and pooled over shifts), ``matched.csv``
(target accuracy where each run's source-validation accuracy reaches DPO's final one),
``matched-paired.csv`` (there, each method against DPO on the same items),
``results.md`` (the tables) and plotly figures (``*.html``, and ``*.png`` when kaleido can render).
Differences are paired on the same items, seeds averaged per item (``reprkit.stats``).

Cells of seeds beyond the grid's (``compare.py --seeds``) are a follow-up chosen after the grid's
result: they stay out of the tables above, which are the design's, and get their own section of
``results.md``, ``followup-results.csv`` (their cells), ``followup-paired.csv`` (the differences
they change, recomputed over every seed beside the grid's own), ``followup-matched.csv`` and
``followup-matched-paired.csv``.

The paired statistics are in ``paired``, the matched-accuracy comparison in ``matched``, every
scoring rule's tables in ``rules``, the figures in ``figures``; this module writes the files and the
tables.
"""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

from ..extras import MissingExtra
from ..runlog import write_json
from .matched import MATCHED_TITLE, matched, matched_line, matched_paired_lines, matched_paired_rows
from .paired import (
    compare_runs,
    evidence_pool,
    grid_targets,
    load_cells,
    paired_rows,
    per_seed_items,
    seed_ci_text,
    shift_groups,
    verdict,
)
from .scoring import behaviour_chance


def split_followup(cells: list[dict], grid: dict) -> tuple[list[dict], list[dict]]:
    """(the grid's cells, the cells of seeds beyond the grid's)."""
    seeds = set(grid.get("seeds") or {c["seed"] for c in cells})
    return [c for c in cells if c["seed"] in seeds], [c for c in cells if c["seed"] not in seeds]


def followup_rows(cells: list[dict], extra: list[dict]) -> list[dict]:
    """For each shift and method with follow-up cells: its differences against DPO (DPO's: against
    the base model) on every eval set, over all its seeds, grid's and follow-up's together."""
    rows = []
    for shift, method in dict.fromkeys((c["shift"], c["method"]) for c in extra):
        other = "base" if method == "dpo" else "dpo"
        for col in next(c for c in extra if c["shift"] == shift and c["method"] == method)["scores"]:
            ra, rb = per_seed_items(cells, shift, method, col), per_seed_items(cells, shift, other, col)
            if rb:
                rows.append({"shift": shift, "eval": col, "method": method, "vs": other,
                             "seeds": f"{len(ra)} / {len(rb)}", **compare_runs(ra, rb)})
    return rows


def followup_lines(extra: list[dict], follow: list[dict], paired: list[dict], match: list[dict] = (),
                   match_paired: list[dict] = ()) -> list[str]:
    """The follow-up's section: its cells and cost, then each difference with the grid's seeds
    beside the same difference with the follow-up's seeds added; then, where given, the matched
    source accuracy rows of the follow-up's methods with its seeds added."""
    if not extra:
        return []
    keys = [(c["shift"], c["method"], c["seed"]) for c in extra]
    which = "; ".join(f"{s}: " + ", ".join(f"{m} seed {d}" for s2, m, d in keys if s2 == s)
                      for s in dict.fromkeys(k[0] for k in keys))
    index = {(r["shift"], r["eval"], r["method"], r["vs"]): r for r in paired}
    lines = ["", f"Follow-up beyond the grid's seeds ({which}; {len(extra)} cells, compute "
             f"{sum(cell_seconds(c) for c in extra) / 3600:.2f} h), run after the grid's result (`compare.py --seeds`): "
             "a follow-up, not part of the design's test, and the tables above leave it out. Each difference "
             "with the grid's seeds, then with the follow-up's added "
             "(items-only and seed-level 95% intervals):", "",
             "| shift | eval | method | vs | grid's seeds: difference, items, seed level | seeds | "
             "with follow-up: difference | each seed | items only 95% CI | seed level 95% CI, p | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in follow:
        g = index.get((r["shift"], r["eval"], r["method"], r["vs"]))
        grid_text = (f"{float(g['difference']):+.3f}, ({float(g['ci_low']):+.3f}, {float(g['ci_high']):+.3f}), "
                     f"{seed_ci_text(g)}") if g else "-"
        lines.append(f"| {r['shift']} | {r['eval']} | {r['method']} | {r['vs']} | {grid_text} | {r['seeds']} | "
                     f"{r['difference']:+.3f} | {r['per_seed']} | ({r['ci_low']:+.3f}, {r['ci_high']:+.3f}) | "
                     f"{seed_ci_text(r)} | {verdict(r)} |")
    if match:
        lines += ["", "The follow-up's methods at matched source accuracy, every seed (DPO's level: the mean of "
                  "all its seeds' final source validation):", "",
                  "| shift | target | method | seed | DPO final source val | target at match | final target |",
                  "|---|---|---|---|---|---|---|"]
        lines += [matched_line(r) for r in match]
    lines += matched_paired_lines(match_paired, "The same, paired against DPO, every seed:")
    return lines


def followup_matched(everything: list[dict], extra: list[dict]) -> tuple[list[dict], list[dict]]:
    """``matched`` and ``matched_paired_rows`` over every seed, for the shifts and methods the
    follow-up ran."""
    keys = {(c["shift"], c["method"]) for c in extra}
    cells = [c for c in everything if c["shift"] in {k[0] for k in keys}]
    return ([r for r in matched(cells) if (r["shift"], r["method"]) in keys],
            [r for r in matched_paired_rows(cells, {k[1] for k in keys}) if (r["shift"], r["method"]) in keys])


def cell_seconds(cell: dict) -> float:
    """A cell's wall time over all its sittings (its ``timing`` parts where it has them)."""
    parts = cell.get("timing")
    if not parts:
        return cell["seconds"]
    return sum(v for k, v in parts.items() if not k.startswith("of which"))


PART_NAMES = {"load": "model load"}  # a cell's timing part -> its column, where the key alone misleads


def cost_lines(cells: list[dict]) -> list[str]:
    """Mean minutes per cell by part, per method and torch thread count (cells that recorded their
    parts), with the load average when the cells ended: a load above the threads means something
    else shared the cores and the minutes are not a quiet machine's."""
    timed = [c for c in cells if c.get("timing")]
    if not timed:
        return []
    parts = list(dict.fromkeys(k for c in timed for k in c["timing"]))
    lines = ["", "Wall time per cell, minutes (mean over cells that recorded their parts; a machine of 2 cores; "
                 "threads: torch's, '-' where not recorded (torch's default, 2 here); load avg: the 1-minute load "
                 "average when each cell ended, its range):", "",
             "| method | threads | cells | " + " | ".join(PART_NAMES.get(k, k) for k in parts) + " | total | load avg |",
             "|---|---|---|" + "---|" * (len(parts) + 2)]
    groups = dict.fromkeys((c["method"], (c.get("machine") or {}).get("threads")) for c in timed)
    for method, threads in groups:
        mc = [c for c in timed if c["method"] == method and (c.get("machine") or {}).get("threads") == threads]
        vals = [statistics.mean(c["timing"].get(k, 0.0) for c in mc) / 60 for k in parts]
        total = statistics.mean(cell_seconds(c) for c in mc) / 60
        loads = [c["machine"]["load_avg"][0] for c in mc if c.get("machine")]
        load = f"{min(loads):.1f}-{max(loads):.1f}" if loads else "-"
        lines.append(f"| {method} | {threads or '-'} | {len(mc)} | " + " | ".join(f"{v:.1f}" for v in vals)
                     + f" | {total:.1f} | {load} |")
    return lines


def result_rows(cells: list[dict]) -> list[dict]:
    rows = []
    for c in cells:
        ppl = (c.get("retain_perplexity") or {}).get("ratio")
        for col, s in c["scores"].items():
            rows.append({"shift": c["shift"], "method": c["method"], "seed": c["seed"], "lr": c.get("lr"), "eval": col,
                         "data": s["data"], "n": s["n"], "accuracy": s["accuracy_mean"], "margin": s.get("margin_mean"),
                         "chance": s["chance"], "perplexity_ratio": ppl, "steps": c.get("steps"),
                         "pairs_seen": c.get("pairs_seen"), "seconds": round(cell_seconds(c), 1)})
    return rows


def write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def ppl_text(cells: list[dict], bound: float | None = None) -> str:
    """The retain perplexity ratio of each of a method's cells, in seed order ('x1.02, x63.74'),
    naming each seed whose ratio is past ``bound`` (the grid's ``max_ppl_ratio``, by which rates
    were ruled out). Each seed's, not their mean: one broken seed would make a mean of ratios
    describe no run."""
    ratios = sorted((c["seed"], c["retain_perplexity"]["ratio"]) for c in cells if c.get("retain_perplexity"))
    if not ratios:
        return ""
    text = ", ".join(f"x{r:.2f}" for _, r in ratios)
    over = [f"seed {s}" for s, r in ratios if bound is not None and r > bound]
    return text + (f" ({', '.join(over)} past the x{bound:g} bound)" if over else "")


def overview_lines(cells: list[dict], paired: list[dict], order: list[str] = (),
                   bound: float | None = None, groups: dict[str, str] | None = None) -> list[str]:
    """One row per method, one column per shift: source / target test accuracy (seed means) and,
    below, the target difference against DPO (DPO's own row: against the base model) with its
    paired 95% interval and the retain perplexity ratio (damage; seeds past ``bound`` named);
    the last column pools the target difference over the shifts run (over the length-neutral ones
    where ``groups`` labels them: the length-cue group is shown, not pooled as evidence)."""
    from .figures import fmt_diff

    index = {(r["shift"], r["eval"], r["method"], r["vs"]): r for r in paired}
    shifts = list(dict.fromkeys(c["shift"] for c in cells))
    cols = {s: list(next(c for c in cells if c["shift"] == s)["scores"]) for s in shifts}
    title = {}
    for s in shifts:  # the shift's (first) target; in brackets its group, chance and items cut (source / target)
        parts = ["length cue"] if groups and groups.get(s) == "length-cue" else []
        meta = [next((c["scores"][col] for c in cells if c["shift"] == s and "chance" in c["scores"].get(col, {})), {})
                for col in cols[s][:2]]
        if all("chance" in m for m in meta):
            parts.append(f"chance {meta[0]['chance']:.2f} / {meta[1]['chance']:.2f}")
        if all("truncation" in m for m in meta):
            parts.append(f"cut {meta[0]['truncation']['share']:.1%} / {meta[1]['truncation']['share']:.1%}")
        title[s] = f"{s} -> {cols[s][1].split(' ', 1)[1]}" + (f" ({'; '.join(parts)})" if parts else "")
    pooled_title = "pooled target, length-neutral shifts" if groups else "pooled target"
    has_pool = any(r["shift"] == "pooled" for r in paired)
    lines = ["| method | " + " | ".join(title[s] for s in shifts) + (f" | {pooled_title} |" if has_pool else " |"),
             "|---|" + "---|" * (len(shifts) + has_pool)]
    present = set(c["method"] for c in cells)
    for method in [m for m in order if m in present] + sorted(present - set(order)):
        vs = "base" if method == "dpo" else "dpo"
        row = []
        for s in shifts:
            mc = [c for c in cells if c["shift"] == s and c["method"] == method]
            if not mc:
                row.append("not run")
                continue
            src, tgt = (statistics.mean(c["scores"][col]["accuracy_mean"] for c in mc) for col in cols[s][:2])
            diff = index.get((s, cols[s][1], method, vs))
            damage = ppl_text(mc, bound)
            row.append(f"{src:.3f} / {tgt:.3f}" + (f"<br>vs {vs.replace('dpo', 'DPO')} {fmt_diff(diff)}" if diff else "")
                       + (f"<br>retain ppl {damage}" if damage else ""))
        if has_pool:
            pooled = index.get(("pooled", "target", method, vs))
            n, k = (int(pooled["strata"]), int(pooled.get("shifts") or pooled["strata"])) if pooled else (0, 0)
            where = f"{n} target{'s' * (n > 1)} of {k} shift{'s' * (k > 1)}" if n != k else f"{n} shift{'s' * (n > 1)}"
            row.append(f"vs {vs.replace('dpo', 'DPO')} {fmt_diff(pooled)} ({where})" if pooled else "")
        lines.append(f"| {method} | " + " | ".join(row) + " |")
    return lines


def seed_lines(paired: list[dict]) -> list[str]:
    """Target differences against DPO (DPO's: against the base model) with the spread between seeds
    in the interval: each seed's own difference, and the seed-level t-interval
    (``reprkit.stats.seed_t_difference``).
    A difference 'holds across seeds' only where that interval excludes 0 too."""
    rows = [r for r in paired if not r["eval"].startswith("source")
            and r["vs"] == ("base" if r["method"] == "dpo" else "dpo") and "seed_ci_low" in r]
    if not rows:
        return []
    lines = ["", "Against seed-to-seed spread: target difference against DPO (DPO's row: against the base model); "
             "items only = the paired interval over items with seeds averaged (as above); seed level = Welch's t "
             "over per-seed accuracies plus the items' variance, Satterthwaite degrees of freedom (as in the "
             "every-rule table; not Holm-adjusted here). A difference holds across seeds only where that "
             "interval excludes 0 too:", "",
             "| shift | method | difference | each seed | items only 95% CI | seed level 95% CI, p | verdict |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['shift']} | {r['method']} | {float(r['difference']):+.3f} | {r.get('per_seed') or ''} | "
                     f"({float(r['ci_low']):+.3f}, {float(r['ci_high']):+.3f}) | "
                     f"{seed_ci_text(r)} | {verdict(r)} |")
    return lines


def within_bound_lines(cells: list[dict], bound: float | None) -> list[str]:
    """Each target comparison against DPO again with only the seeds whose retain perplexity stayed
    within ``bound``, where a seed of either side went past it: a check beside the design's test,
    which keeps every seed run at the chosen rate (dropping seeds after seeing them would bias it)."""
    if bound is None:
        return []

    def within(c: dict) -> bool:
        ratio = (c.get("retain_perplexity") or {}).get("ratio")
        return ratio is None or ratio <= bound

    past = [c for c in cells if not within(c)]
    if not past:
        return []
    kept = [c for c in cells if within(c)]
    names = ", ".join(f"{c['shift']} {c['method']} seed {c['seed']} x{c['retain_perplexity']['ratio']:.2f}" for c in past)
    lines = ["", f"Seeds past the x{bound:g} damage bound ({names}): each target comparison against DPO again "
                 "without them. A check, not the design's test, which keeps every seed run at the chosen rate "
                 "(not Holm-adjusted):", "",
             "| shift | method | seeds kept (method / DPO) | difference | seed level 95% CI, p | verdict |",
             "|---|---|---|---|---|---|"]
    for shift in dict.fromkeys(c["shift"] for c in past):
        col = list(next(c for c in cells if c["shift"] == shift)["scores"])[1]
        dropped_dpo = any(c["shift"] == shift and c["method"] == "dpo" for c in past)
        for method in dict.fromkeys(c["method"] for c in cells if c["shift"] == shift and c.get("retain_perplexity")):
            if method == "dpo" or not (dropped_dpo or any(c["shift"] == shift and c["method"] == method for c in past)):
                continue
            a, b = (per_seed_items(kept, shift, m, col) for m in (method, "dpo"))
            n_a, n_b = (len(per_seed_items(cells, shift, m, col)) for m in (method, "dpo"))
            if not a or not b:
                lines.append(f"| {shift} | {method} | {len(a)} of {n_a} / {len(b)} of {n_b} | no seed left | | |")
                continue
            r = compare_runs(a, b)
            lines.append(f"| {shift} | {method} | {len(a)} of {n_a} / {len(b)} of {n_b} | {r['difference']:+.3f} | "
                         f"{seed_ci_text(r)} | {verdict(r)} |")
    return lines


def markdown(cells: list[dict], paired: list[dict], match: list[dict], grid: dict, followup: list[str] = (),
             match_paired: list[dict] = (), groups: dict[str, str] | None = None) -> str:
    from .figures import fmt_diff

    wall = sum(cell_seconds(c) for c in cells)
    from reprkit.packaged import model_note

    lines = [f"Model {model_note(grid['model'])}; {grid['epochs']} epoch(s) of each source's "
             f"{grid.get('train_split') or 'train[:90%]'} in batches of "
             f"{grid['batch_size']} pairs (max length {grid['max_length']}), LoRA r{grid['lora_r']}; seeds "
             f"{grid['seeds']}; eval sets: whole test splits unless limited ({grid['eval_limit']}); "
             f"{len(cells)} cells, compute {wall / 3600:.2f} h.", "",
             "Scoring rule of every table down to the every-rule section: the mean log-prob per response token "
             "(reading baselines: projection on their direction; length: prefer the shortest). The other rules "
             "are in that section where the cells keep per-response log-probs.", "",
             "At a glance (each shift's chance and share of items cut, source / target, in its heading; the "
             "length row is 'prefer the shortest response', the by-rule table has 'prefer the longest' too): "
             "source / target test accuracy; below, the target difference against DPO (DPO's row: "
             "against the base model), paired 95% interval, p (exact McNemar where each side is one run's 0/1 "
             "outcomes; 'perm': the sign-flip permutation test of per-item differences where a side averages "
             "seeds, 'p<=' at its floor), * where p < 0.05 († where the bootstrap interval alone excludes 0 but p does not reach 0.05; items only, not adjusted for the many "
             "comparisons: the verdicts are the by-rule table's, seed level and Holm-adjusted); then the retain "
             "perplexity ratio of each seed:", "",
             *overview_lines(cells, paired, grid.get("methods", []), grid.get("max_ppl_ratio"), groups), "",
             "| shift | eval | method | seeds | accuracy | vs base (95% CI, p) | vs DPO (95% CI, p) | retain ppl ratio |",
             "|---|---|---|---|---|---|---|---|"]
    index = {(r["shift"], r["eval"], r["method"], r["vs"]): r for r in paired}
    for shift in dict.fromkeys(c["shift"] for c in cells):
        cs = [c for c in cells if c["shift"] == shift]
        for col in cs[0]["scores"]:
            for method in dict.fromkeys(c["method"] for c in cs):
                mc = [c for c in cs if c["method"] == method and col in c["scores"]]
                if not mc:
                    continue
                acc = statistics.mean(c["scores"][col]["accuracy_mean"] for c in mc)
                lines.append(f"| {shift} | {col} | {method} | {len(mc)} | {acc:.3f} | "
                             f"{fmt_diff(index.get((shift, col, method, 'base')))} | "
                             f"{fmt_diff(index.get((shift, col, method, 'dpo')))} | "
                             f"{ppl_text(mc, grid.get('max_ppl_ratio'))} |")
    design = grid_targets(grid)
    beyond = sorted({f"{c['shift']} -> {col[len('target '):]}" for c in cells for col in c["scores"]
                     if design is not None and col.startswith("target ")
                     and col[len("target "):] not in design.get(c["shift"], ())})
    if beyond:
        lines += ["", f"Scored by some cells but not in the grid's design (cut for budget), so left out of the "
                      f"pooled rows: {', '.join(beyond)}."]
    neutral = [k for k, v in (groups or {}).items() if v == "length-neutral"]
    if evidence_pool(groups) == set():
        lines += ["", f"Not pooled over shifts: the evidence is one length-neutral shift ({', '.join(neutral) or 'none'}), "
                      "and the length-cue group is shown beside it, not pooled with it."]
    else:
        which = (f"the length-neutral shifts only ({', '.join(neutral)}); the length-cue group is not evidence"
                 if groups else "every shift")
        lines += ["", f"Pooled over {which} (mean of per-shift paired differences, bootstrap stratified by shift):", "",
                  "| eval | method | vs base | vs DPO |", "|---|---|---|---|"]
        for kind in ("source", "target"):
            for method in dict.fromkeys(c["method"] for c in cells):
                b, d = index.get(("pooled", kind, method, "base")), index.get(("pooled", kind, method, "dpo"))
                if b or d:
                    lines.append(f"| {kind} | {method} | {fmt_diff(b)} | {fmt_diff(d)} |")
    lines += seed_lines(paired) + within_bound_lines(cells, grid.get("max_ppl_ratio")) + list(followup)
    extra = [c for c in cells if c.get("behaviour")]
    if extra:
        names = list(dict.fromkeys(k for c in extra for k in c["behaviour"]))
        chance = {k: next((behaviour_chance(k, c["behaviour"][k]) for c in extra if k in c["behaviour"]), None)
                  for k in names}
        lines += ["", "Behaviour it was not trained on (seed 0, fixed subsets; n in brackets; answers scored by summed "
                      "log-prob; chance: a uniform pick among each item's answers, for MC2 the true answers' share):",
                  "", "| shift | method | " + " | ".join(
                      k + (f" (chance {chance[k]:.3f})" if chance[k] is not None else "") for k in names) + " |",
                  "|---|---|" + "---|" * len(names)]
        for c in extra:
            vals = [c["behaviour"].get(k) for k in names]
            lines.append(f"| {c['shift']} | {c['method']} | " + " | ".join(
                f"{v['value']:.3f} ({v['ci95'][0]:.3f}-{v['ci95'][1]:.3f}) [{v['n']}]" if v else "" for v in vals) + " |")
    if match:
        lines += ["", "At matched source accuracy (target subset where source validation first reaches DPO's final):", "",
                  "| shift | target | method | seed | DPO final source val | target at match | final target |",
                  "|---|---|---|---|---|---|---|"]
        lines += [matched_line(r) for r in match]
    lines += matched_paired_lines(match_paired, MATCHED_TITLE)
    lines += cost_lines(cells)
    return "\n".join(lines) + "\n"


def sweep_lines(out: Path) -> list[str]:
    """The learning-rate sweeps (``lr/``, ``lr-epoch/``): validation accuracy / margin / retain
    perplexity ratio per method and rate, and the rate the rule chose."""
    lines = []
    for folder in ("lr", "lr-epoch"):
        # one record per method (``<folder>/<method>.json``, or per source with tune_per_shift); a
        # rate's own record (``<method>/lr<rate>.json``) has no "sweep"
        found = [*sorted((out / folder).glob("*.json")), *sorted((out / folder).glob("*/*.json"))]
        groups: dict[str, dict[str, dict]] = {}
        for f in found:
            rec = json.loads(f.read_text())
            if isinstance(rec, dict) and "sweep" in rec:
                where = f.parent.relative_to(out).as_posix()
                groups.setdefault(where, {})[f.stem] = rec
        for where, recs in groups.items():
            also = lambda r: r.get("also run (not part of this rule's sweep)", {})  # noqa: E731
            rates = sorted({float(lr) for r in recs.values() for lr in [*r["sweep"], *also(r)]})
            first = next(iter(recs.values()))
            budget = f"{first['steps']} steps" if first["steps"] != "epochs" else "the cells' whole budget"
            lines += ["", f"Learning-rate sweep `{where}/` ({budget} per rate on {first['source']}; validation "
                      f"{first['split']}: accuracy / margin / retain perplexity ratio; '-' not run; in brackets: "
                      "run, but not part of that rule's sweep):", "",
                      "| method | " + " | ".join(f"{lr:g}" for lr in rates) + " | rule | chosen |",
                      "|---|" + "---|" * (len(rates) + 2)]
            for method, r in recs.items():
                sweep = {float(lr): v for lr, v in r["sweep"].items()}
                extra = {float(lr): v for lr, v in also(r).items()}

                def cell(lr: float, sweep: dict = sweep, extra: dict = extra) -> str:
                    v = sweep.get(lr) or extra.get(lr)
                    if not v:
                        return "-"
                    text = f"{v['accuracy']:.3f} / {v['margin']:.3f} / x{v['ppl_ratio']:.4g}"
                    return text if lr in sweep else f"({text})"

                lines.append(f"| {method} | " + " | ".join(cell(lr) for lr in rates)
                             + f" | {r.get('lr_rule', '-')} | {r['lr']:g} |")
    return lines


def progress_lines(out: Path, grid: dict, cells: list[dict]) -> list[str]:
    """Where the report stands against the design: nothing while every cell of the grid's order
    (``cells.cell_order``: its seeds and ceilings, on the sources and targets the cells name) is
    done; else a heading that calls the report interim, the cells done, and each trained method's
    seeds done, so that no reader takes seed-level figures on fewer seeds for the design's."""
    import dataclasses

    from .cells import CEILING, cell_order, cell_path
    from .settings import UNTRAINED, Grid

    known = {f.name for f in dataclasses.fields(Grid)}  # a folder of an older version may hold more
    settings = Grid(**{k: v for k, v in grid.items() if k in known})
    shifts = {}
    for c in cells:
        shifts.setdefault(c["shift"], [col[len("target "):] for col in c["scores"] if col.startswith("target ")])
    order = cell_order(settings, list(shifts), None, shifts)
    done = [(cell_path(out, source, method, seed) / "cell.json").is_file() for seed, source, method in order]
    if all(done):
        return []
    ceil = [d for (_, source, _), d in zip(order, done) if source.startswith(CEILING)]
    per = {}
    for (seed, source, method), d in zip(order, done):
        if d and not source.startswith(CEILING) and method not in UNTRAINED:
            per.setdefault(f"{method} on {source}", []).append(seed)
    seeds = "; ".join(f"{k}: {', '.join(map(str, v))}" for k, v in per.items()) or "none"
    return ["## Interim report", "",
            f"{sum(done)} of {len(done)} cells of the design are done: the grid's seeds are {settings.seeds}"
            + (f", its ceilings {sum(ceil)} of {len(ceil)} done" if ceil else "") + f". Seeds done: {seeds}.",
            "Every figure below is on the cells done. A seed-level test on one seed is the items' alone, so a "
            "method with one seed is undecided (the entry condition and the positive control wait for a second); "
            "with fewer seeds than the design's the intervals are wider than its detectable differences say.", ""]


def analyse(out: Path) -> None:
    from .figures import curve_figure, difference_figure, save

    out = Path(out)
    cells = load_cells(out)
    if not cells:
        print(f"no finished cells in {out}/cells yet")
        return
    grid = json.loads((out / "grid.json").read_text())
    everything = cells
    cells, extra = split_followup(everything, grid)
    groups = shift_groups(out)
    paired, match = paired_rows(cells, grid_targets(grid), evidence_pool(groups)), matched(cells)
    match_paired = matched_paired_rows(cells)
    follow, (fmatch, fmatch_paired) = followup_rows(everything, extra), followup_matched(everything, extra)
    write_csv(out / "results.csv", result_rows(cells))
    write_csv(out / "paired.csv", paired)
    write_csv(out / "matched.csv", match)
    write_csv(out / "matched-paired.csv", match_paired)
    write_csv(out / "followup-results.csv", result_rows(extra))
    write_csv(out / "followup-paired.csv", follow)
    write_csv(out / "followup-matched.csv", fmatch)
    write_csv(out / "followup-matched-paired.csv", fmatch_paired)
    text = markdown(cells, paired, match, grid, followup_lines(extra, follow, paired, fmatch, fmatch_paired),
                    match_paired, groups)
    from .design import answer, answer_lines, load_ceilings

    ceilings = load_ceilings(out)
    if ceilings or grid.get("positive_control") or grid.get("primary_targets"):  # grids built for the answer
        res = answer(cells, ceilings, grid)
        write_json(out / "answer.json", res)
        write_csv(out / "ceiling-results.csv", result_rows(ceilings))
        text = "\n".join(answer_lines(res)) + "\n" + text
    from .rules import has_logps, markdown_lines, rule_rows, verdicts

    if has_logps(cells):  # grids whose cells keep log-probs: every rule, seed-level tests, Holm
        rules = rule_rows(cells, grid.get("methods", []))
        write_csv(out / "rules.csv", rules)
        write_csv(out / "verdicts.csv", verdicts(rules))
        text += "\n".join(markdown_lines(rules, grid)) + "\n"
    interim = progress_lines(out, grid, everything)
    text = "\n".join(interim) + "\n" + text if interim else text
    (out / "results.md").write_text(text + "\n".join(sweep_lines(out)) + "\n")
    try:
        save(curve_figure(cells), out / "matched-accuracy")
        save(difference_figure(paired), out / "differences")
    except MissingExtra as err:  # the tables are written; the figures need plotly
        print(f"no figures: {err}")
    print((out / "results.md").read_text())

