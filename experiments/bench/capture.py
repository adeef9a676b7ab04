"""Capture and early stop: reprkit vs a plain forward, ``output_hidden_states``, nnsight and
TransformerLens, on SmolLM2-135M-Instruct.

    python experiments/bench/capture.py [--repeats 15] [--batch 4] [--seq 128]

Capture variants keep the logits and the block outputs of 1, 3 (5, 15, 25) or all 30 layers.
nnsight 0.8: ``.save()`` of the same block outputs inside a trace (and ``tracer.stop()`` for the early
stop). TransformerLens 4.3: the HF bridge's ``run_with_cache`` with a names filter on the same
blocks' residual outputs (the bridge runs its own copy of the model with eager attention, so its
ratio is to its own plain forward too). Early stop: a forward that ends after block k, k in 2..25,
against the prediction (k+1)/30 blocks. Peak memory per variant from a child process.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import interleaved, peak_growth_mb, random_batch, reset_peak, run_child, save, table  # noqa: E402

LAYERS3 = [5, 15, 25]
STOPS = [2, 5, 10, 15, 20, 25]


def build(model, tok, batch, peers: bool) -> dict:
    from reprkit.hooks import capture, forward_hidden_states

    n = model.config.num_hidden_layers

    def plain():
        return model(**batch, use_cache=False).logits

    def cap(layers):
        def fn():
            with capture(model, layers) as c:
                logits = model(**batch, use_cache=False).logits
            return logits, c.hidden_states
        return fn

    def raw_hooks3():  # the floor: bare forward hooks keeping the outputs, nothing else
        kept, handles = {}, []
        for i in LAYERS3:
            handles.append(model.model.layers[i].register_forward_hook(
                lambda mod, args, out, i=i: kept.__setitem__(i, out[0] if isinstance(out, tuple) else out)))
        try:
            logits = model(**batch, use_cache=False).logits
        finally:
            for h in handles:
                h.remove()
        return logits, kept

    fns = {"plain": plain, "raw_hooks_3": raw_hooks3, "reprkit_1": cap([15]), "reprkit_3": cap(LAYERS3), "reprkit_all": cap(list(range(n))),
           "output_hidden_states": lambda: model(**batch, use_cache=False, output_hidden_states=True)}
    for k in STOPS:
        fns[f"reprkit_stop_{k}"] = (lambda k=k: forward_hidden_states(model, batch, [k]))
    if not peers:
        return fns
    try:
        from nnsight import LanguageModel

        lm = LanguageModel(model, tokenizer=tok)

        def nn3():
            a, b, c = LAYERS3
            with lm.trace(batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False):
                h_a = lm.model.layers[a].output.save()
                h_b = lm.model.layers[b].output.save()
                h_c = lm.model.layers[c].output.save()
                logits = lm.output.logits.save()
            return logits, (h_a, h_b, h_c)

        def nn_stop10():
            with lm.trace(batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False) as tracer:
                h = lm.model.layers[10].output.save()
                tracer.stop()
            return h

        fns["nnsight_3"] = nn3
        fns["nnsight_stop_10"] = nn_stop10
    except ImportError:
        print("nnsight not installed (pip install 'reprkit[bench]'): skipped")
    try:
        from transformer_lens.model_bridge import TransformerBridge

        from reprkit.models import default_model_path

        bridge = TransformerBridge.boot_transformers(str(default_model_path()), tokenizer=tok, dtype=torch.float32)
        names = {f"blocks.{i}.hook_out" for i in LAYERS3}
        available = set(bridge.hook_dict)
        if not names <= available:  # older bridges: resid_post
            names = {f"blocks.{i}.hook_resid_post" for i in LAYERS3}

        def tl3():
            return bridge.run_with_cache(batch["input_ids"], attention_mask=batch["attention_mask"],
                                         names_filter=lambda name: name in names)

        fns["tl_bridge_plain"] = lambda: bridge(batch["input_ids"], attention_mask=batch["attention_mask"])
        fns["tl_bridge_3"] = tl3
    except ImportError:
        print("transformer_lens not installed (pip install 'reprkit[bench]'): skipped")
    return fns


def child(name: str, batch_size: int, seq: int, threads: int) -> dict:
    from reprkit.models import load_model

    torch.set_num_threads(threads)
    model, tok = load_model()
    batch = random_batch(tok, batch_size, seq)
    fns = build(model, tok, batch, peers=name.startswith(("nnsight", "tl_")))
    with torch.no_grad():
        fns[name]()
        if name.startswith("tl_"):
            fns["tl_bridge_plain"]()
        before = reset_peak()
        for _ in range(2):
            kept = fns[name]()
        peak = peak_growth_mb(before)
    del kept
    return {"peak_MB": peak}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--variants", help="comma list of variants to time against plain (default: all)")
    p.add_argument("--out", default="capture")
    p.add_argument("--child")
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.batch, args.seq, args.threads)))
        return
    from reprkit.models import load_model

    torch.set_num_threads(args.threads)
    model, tok = load_model()
    batch = random_batch(tok, args.batch, args.seq)
    fns = build(model, tok, batch, peers=True)
    if args.variants:
        fns = {n: fns[n] for n in ["plain", *args.variants.split(",")] if n in fns}
    with torch.no_grad():
        res = interleaved(fns, args.repeats, reference="plain")
    if "tl_bridge_3" in res:
        res["tl_bridge_3"]["ratio_to_own_plain"] = __import__("statistics").median(
            a / b for a, b in zip(res["tl_bridge_3"]["times"], res["tl_bridge_plain"]["times"]))
    n = model.config.num_hidden_layers
    stops = [k for k in STOPS if f"reprkit_stop_{k}" in res]
    if len(stops) >= 2:  # per-block cost from the two deepest stops; the rest is embedding + final norm + LM head
        lo, hi = stops[-2], stops[-1]
        per_block = (res[f"reprkit_stop_{hi}"]["ratio"] - res[f"reprkit_stop_{lo}"]["ratio"]) / (hi - lo)
        for k in stops:
            res[f"reprkit_stop_{k}"]["predicted"] = (k + 1) * per_block  # (k+1)/depth of the blocks' cost
        res["blocks_share_of_forward"] = {"median_s": 0.0, "ratio": n * per_block}
    if not args.no_memory:
        for name in fns:
            res[name]["peak_MB"] = run_child(__file__, name, "--batch", str(args.batch), "--seq", str(args.seq),
                                             "--threads", str(args.threads))["peak_MB"]
    rows = [[name, v["median_s"], v["ratio"], v.get("ratio_to_own_plain", v.get("predicted", "")), v.get("peak_MB", "")]
            for name, v in res.items()]
    print(f"\nSmolLM2-135M-Instruct, batch {args.batch} x {args.seq}, fp32, {args.threads} threads, "
          f"median of {args.repeats} interleaved repeats")
    print(table(rows, ["variant", "median s", "x plain", "x own plain | (k+1) blocks", "peak +MB"]))
    for v in res.values():
        v.pop("times", None)
    save(args.out, {"batch": args.batch, "seq": args.seq, "repeats": args.repeats, "variants": res})


if __name__ == "__main__":
    main()
