"""Trained steering vectors against a read one: BiPO, RePS and ReprPO each train one vector at one
block on a behaviour's contrast pairs, and a mean-difference direction is read from the same pairs;
all four are steered on held-out questions at equal KL.

    python experiments/trained_vectors.py --out results/trained-vectors

The behaviour file (``--file``, from ``../shared/data/anthropic-evals``) is shuffled with ``--seed``;
the first ``--read`` questions train (and give the mean difference), the next ``--held`` are held
out. Both sides are read in both answer orders (``scoring.both_orders``: each question also with its
two choices swapped), so no vector can gain by preferring a letter, and both orders of a question
stay on one side. Pairs are (behaviour-matching answer, the other); each vector trains with
``reprkit train --intervention vector --vector.layers LAYER`` (positions all) for ``--steps`` steps
of ``--batch`` pairs at ``--lr``.

Steering (``reprkit.steerability``): each direction at multiples -1, -0.5, 0, 0.5, 1 of the strength
calibrated to KL ``--kl`` (0.9 quantile of per-token KL on 16 held-out prompts); per item the change
in log-odds of the matching answer (log p(matching) - log p(other), summed over the answer's tokens),
its mean at +1 and -1 with bootstrap intervals, and the anti-steerable share (items whose slope is
below 0; Wilson interval). Trained vectors are also steered as trained (multiples -1, 0, 1 of the
vector itself). Chance: an unsteered model that cannot tell the answers apart has log-odds 0 and
matches on half the items. Resumable: runs and records already written are kept.

Records: ``OUT/<direction>.steerability.json`` and the table ``OUT/results.md``; a copy of each record
sits beside the runs, so ``reprkit dashboard OUT/runs`` draws the three runs' cosine and norm curves
and, in its steerability tab, every direction's per-item figure.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from reprkit import data as D
from reprkit.behaviour import contrast_pairs, load_behaviour
from reprkit.config import TrainConfig, VectorSettings
from reprkit.directions import Direction, completion_states, directions_from_states
from reprkit.models import DEFAULT_MODEL, load_model
from reprkit.runlog import write_json
from reprkit.scoring import both_orders
from reprkit.steerability import steerability
from reprkit.steering import calibrate_strength
from reprkit.train import train

LOSSES = ("bipo", "reps", "reprpo")
MULTIPLES = (-1.0, -0.5, 0.0, 0.5, 1.0)


def pairs_file(items: list[dict], path: Path) -> None:
    rows = [{"prompt": it["prompt"][-1]["content"], "chosen": it["responses"][it["matching"].index(True)],
             "rejected": it["responses"][it["matching"].index(False)]} for it in items]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--file", default="anthropic-evals/advanced-ai-risk/corrigible-neutral-HHH.jsonl")
    p.add_argument("--layer", type=int, default=15)
    p.add_argument("--read", type=int, default=100)
    p.add_argument("--held", type=int, default=60)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--kl", type=float, default=1.0)
    p.add_argument("--max-length", type=int, default=320)
    p.add_argument("--max-prompt-length", type=int, default=304)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/trained-vectors")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    items = D.shuffled(load_behaviour(args.file), args.seed)[: args.read + args.held]
    read, _ = both_orders(items[: args.read])
    held, _ = both_orders(items[args.read:])
    pairs_file(read, out / "train.jsonl")
    pairs_file(held, out / "heldout.jsonl")

    directions: dict[str, Direction] = {}
    for loss in LOSSES:
        run = out / "runs" / loss
        if not (run / "eval.json").is_file():
            train(TrainConfig(model=args.model, data=str(out / "train.jsonl"), eval_data=(str(out / "heldout.jsonl"),),
                              intervention="vector", vector=VectorSettings(layers=str(args.layer)), loss=loss,
                              steps=args.steps, batch_size=args.batch, lr=args.lr, n_samples=0, eval_limit=None,
                              max_length=args.max_length, max_prompt_length=args.max_prompt_length, save_every=0,
                              seed=args.seed, progress=False, run_dir=str(run)))
        directions[loss] = Direction.load(run)
    model, tok = load_model(args.model)
    encoded = D.encode_ranked(contrast_pairs(read), tok, args.max_length, args.max_prompt_length)
    states, _ = completion_states(model, encoded, tok.pad_token_id, [args.layer], token="last")
    vectors, stats = directions_from_states({args.layer: states[args.layer][:, 0]}, {args.layer: states[args.layer][:, 1]},
                                            "mean_diff", 1.0)
    directions = {"mean_diff": Direction(vectors, {"method": "mean_diff", "token": "last", "best_layer": args.layer}),
                  **directions}
    prompts = [D.render_prompt(tok, it["prompt"], True) for it in held[:16]]
    for name, d in directions.items():
        rec = out / f"{name}.steerability.json"  # the dashboard's steerability tab reads *.steerability.json
        if rec.is_file():
            continue
        start = time.time()
        cal = calibrate_strength(model, tok, d, prompts, layer=args.layer, kl=args.kl)
        res = steerability(model, tok, d, held, [m * cal["strength"] for m in MULTIPLES], layers=[args.layer],
                           max_length=args.max_length)
        res["calibration"] = {"kl": args.kl, "strength": cal["strength"], "multiples": list(MULTIPLES)}
        res["vector_norm"] = float(d.vectors[args.layer].norm())
        if name != "mean_diff":
            res["as_trained"] = steerability(model, tok, d, held, [-1.0, 1.0], layers=[args.layer],
                                             max_length=args.max_length)
            res["training_eval"] = json.loads((out / "runs" / name / "eval.json").read_text())["datasets"]
        res["name"], res["seconds"] = name, time.time() - start
        res["split"] = (f"{args.file}, seed {args.seed}: {args.read} questions read, {args.held} held out, "
                        "each in both answer orders")
        write_json(rec, res)
        write_json(out / "runs" / rec.name, res)  # beside the runs, for the dashboard's steerability tab
        print(f"{name:<10} strength {cal['strength']:.2f} anti {res['anti_steerable']:.3f} ({res['seconds']:.0f} s)", flush=True)
    summarise(out)


def summarise(out: Path) -> str:
    lines = ["| direction | vector norm | KL-1 strength | change at +1 (95% CI) | change at -1 (95% CI) | "
             "anti-steerable (95% CI) | as trained: change at +1 | unsteered matching rate |",
             "|---|---|---|---|---|---|---|---|"]
    for name in ("mean_diff", *LOSSES):
        if not (out / f"{name}.steerability.json").is_file():
            continue
        r = json.loads((out / f"{name}.steerability.json").read_text())
        t = {x["strength"]: x for x in r["table"]}
        hi, lo = t[max(t)], t[min(t)]
        trained = ""
        if "as_trained" in r:
            tt = {x["strength"]: x for x in r["as_trained"]["table"]}
            trained = f"{tt[1.0]['mean_change']:+.3f} ({tt[1.0]['change_ci95'][0]:+.3f}, {tt[1.0]['change_ci95'][1]:+.3f})"
        lines.append(f"| {name} | {r['vector_norm']:.2f} | {r['calibration']['strength']:.2f} | "
                     f"{hi['mean_change']:+.3f} ({hi['change_ci95'][0]:+.3f}, {hi['change_ci95'][1]:+.3f}) | "
                     f"{lo['mean_change']:+.3f} ({lo['change_ci95'][0]:+.3f}, {lo['change_ci95'][1]:+.3f}) | "
                     f"{r['anti_steerable']:.3f} ({r['anti_steerable_ci95'][0]:.3f}, {r['anti_steerable_ci95'][1]:.3f}) | "
                     f"{trained or '-'} | {r['unsteered_matching_rate']:.3f} |")
    text = "\n".join(lines) + "\n"
    (out / "results.md").write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
