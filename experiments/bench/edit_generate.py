"""An added steering vector at one layer during ``generate`` of 64 tokens vs plain ``generate``.

    python experiments/bench/edit_generate.py [--repeats 7] [--batch 4] [--prompt 32] [--new 64]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import interleaved, random_batch, save, table  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--new", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    from reprkit.edits import add_vector
    from reprkit.hooks import capture
    from reprkit.models import load_model

    torch.set_num_threads(args.threads)
    model, tok = load_model()
    batch = random_batch(tok, args.batch, args.prompt)
    vector = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    kw = dict(max_new_tokens=args.new, min_new_tokens=args.new, do_sample=False, pad_token_id=tok.pad_token_id)

    def plain():
        return model.generate(**batch, **kw)

    def steered():
        with capture(model, 10, edit_output=add_vector(vector, scale=4.0)):
            return model.generate(**batch, **kw)

    with torch.no_grad():
        a, b = plain(), steered()
        assert a.shape == b.shape and not torch.equal(a, b), "the steering vector should change the text"
        res = interleaved({"generate": plain, "generate_steered_layer_10": steered}, args.repeats, reference="generate")
    rows = [[n, v["median_s"], v["ratio"], args.batch * args.new / v["median_s"]] for n, v in res.items()]
    print(f"\nSmolLM2-135M-Instruct, batch {args.batch}, prompt {args.prompt}, {args.new} new tokens (greedy), "
          f"{args.threads} threads, median of {args.repeats}")
    print(table(rows, ["variant", "median s", "x plain", "tokens/s"]))
    for v in res.values():
        v.pop("times")
    save("edit_generate", {"batch": args.batch, "prompt": args.prompt, "new_tokens": args.new, "variants": res})


if __name__ == "__main__":
    main()
