"""Read balanced, does a PCA read the answer letter? The cosine of each method's direction with the
letter axis, on one model-written evaluation file read in both answer orders.

    python experiments/pca_letter_axis.py --file corrigible-neutral-HHH

The file's rows are shuffled with ``--seed`` and the first ``--read`` questions are read in both
answer orders (``reprkit.scoring.both_orders``), each at its response's last token at ``--layer``:
the paired differences are (behaviour + letter) in one order and (behaviour - letter) in the other.
The letter axis is the mean difference of the pairs whose matching answer is (A) minus that of the
pairs where it is (B); the behaviour axis is the mean difference (``mean_diff``). Printed per method:
its direction's cosine with each, and its read pair accuracy. The directions guide quotes it.
"""

from __future__ import annotations

import argparse

import torch

from reprkit import data as D
from reprkit.behaviour import contrast_pairs, load_behaviour
from reprkit.directions import completion_states, directions_from_states
from reprkit.models import DEFAULT_MODEL, load_model
from reprkit.scoring import answer_letters, both_orders


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--file", default="corrigible-neutral-HHH", help="a file of ../shared/data/anthropic-evals, without .jsonl")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--layer", type=int, default=15)
    p.add_argument("--read", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    root = D.shared_data_dir()
    if root is None:
        raise SystemExit("needs ../shared/data/anthropic-evals (or REPRKIT_DATA_DIR)")
    path = next((root / "anthropic-evals").glob(f"*/{args.file}.jsonl"), None)
    if path is None:
        raise SystemExit(f"no {args.file}.jsonl under {root / 'anthropic-evals'}")
    model, tok = load_model(args.model)
    read, doubled = both_orders(D.shuffled(load_behaviour(path), args.seed)[: args.read])
    states, _ = completion_states(model, D.encode_ranked(contrast_pairs(read), tok, 512, 256), tok.pad_token_id,
                                  [args.layer], token="last")
    pos, neg = states[args.layer][:, 0].float(), states[args.layer][:, 1].float()
    diff = pos - neg
    letters = answer_letters(read)
    if letters is None:
        raise SystemExit(f"{path.name}: not every answer is a letter, so there is no letter axis")
    matching = [ls[it["matching"].index(True)] for it, ls in zip(read, letters)]  # the matching answer's letter
    letter_axis = (diff[torch.tensor([x == "A" for x in matching])].mean(0)
                   - diff[torch.tensor([x == "B" for x in matching])].mean(0))
    behaviour_axis = diff.mean(0)

    def cos(a, b):
        return float(a @ b / (a.norm() * b.norm()))

    print(f"{path.name}: {len(read)} items read ({doubled} questions in both orders), layer {args.layer}")
    print(f"{'method':<16}{'cos letter axis':>16}{'cos mean_diff':>15}{'pair acc':>10}")
    for method in ("mean_diff", "pca", "pca_uncentered", "probe"):
        vectors, stats = directions_from_states({args.layer: pos}, {args.layer: neg}, method, 1.0)
        v = vectors[args.layer].float()
        print(f"{method:<16}{cos(v, letter_axis):>16.3f}{cos(v, behaviour_axis):>15.3f}"
              f"{stats[str(args.layer)]['pair_accuracy']:>10.3f}")


if __name__ == "__main__":
    main()
