"""The capability checks on a GPU: the real models in bf16, with a 4-bit (nf4) base, and placed by
``device_map="auto"``. Written to run as one short script where a GPU machine is lent; not yet run
on one (this project's sessions so far had none).

    python experiments/gpu_check.py --out gpu-check.json      # about 5 min on one GPU

For each of SmolLM2-135M-Instruct and Gemma 3 270M and each placement (bf16 on cuda:0; nf4 4-bit
base on cuda:0; ``device_map="auto"`` with bf16): a capture of every block equals
``output_hidden_states`` (bf16 tolerance), stopping early gives the same states, the logit lens at
the last layer equals the logits, a steering edit changes greedy generation and is undone on exit,
and the items' preference accuracy is computed; then one training step of DPO and of ReprPO on
each placement through ``reprkit train`` (4 steps, the adapter must change). Results are one JSON
object per check: status and reason.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import traceback

import torch

MODELS = ("smollm2-135m-instruct", "gemma-3-270m")
PLACEMENTS = {"bf16": {"dtype": "bfloat16", "device": "cuda"}, "nf4": {"quantization": "4bit", "dtype": "bfloat16"},
              "auto": {"dtype": "bfloat16", "device_map": "auto"}}


def checks(model, tok) -> dict:
    from reprkit.directions import Direction
    from reprkit.hooks import capture
    from reprkit.lens import final_norm, lens_logits
    from reprkit.steering import steered

    out = {}
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in tok(["The capital of France is", "Two plus two is"], return_tensors="pt",
                                              padding=True).items()}
    n = model.config.num_hidden_layers

    def run(name, fn):
        try:
            fn()
            out[name] = {"status": "pass"}
        except Exception as err:  # noqa: BLE001 - reported, never hidden
            out[name] = {"status": "fail", "reason": f"{type(err).__name__}: {err}"[:300],
                         "traceback": traceback.format_exc(limit=-3)}

    def cap():
        with torch.no_grad(), capture(model, list(range(n))) as c:
            hs = model(**batch, output_hidden_states=True).hidden_states
        for i in range(n - 1):
            torch.testing.assert_close(c[i].float(), hs[i + 1].float(), atol=1e-2, rtol=1e-2)
        torch.testing.assert_close(final_norm(model)(c[n - 1]).float(), hs[n].float(), atol=5e-2, rtol=5e-2)

    def stop():
        with torch.no_grad(), capture(model, [n // 2]) as full:
            model(**batch)
        with torch.no_grad(), capture(model, n // 2, stop=True) as early:
            model(**batch)
        torch.testing.assert_close(early[n // 2], full[n // 2])

    def lens():
        with torch.no_grad(), capture(model, n - 1) as c:
            logits = model(**batch).logits
        torch.testing.assert_close(lens_logits(model, c[n - 1]), logits.float(), atol=0.1, rtol=0.05)

    def steering():
        v = torch.nn.functional.normalize(torch.randn(model.config.hidden_size), dim=0)
        d = Direction({n // 2: v})
        one = {k: v[:1] for k, v in batch.items()}
        with torch.no_grad():
            plain = model.generate(**one, max_new_tokens=8, do_sample=False)
            with steered(model, d, 20.0 * float(model.get_input_embeddings().weight.float().norm(dim=-1).mean())):
                steered_ids = model.generate(**one, max_new_tokens=8, do_sample=False)
            again = model.generate(**one, max_new_tokens=8, do_sample=False)
        assert not torch.equal(plain, steered_ids), "steering changed nothing"
        assert torch.equal(plain, again), "not undone on exit"

    for name, fn in (("capture", cap), ("stop", stop), ("logit_lens", lens), ("steering", steering)):
        run(name, fn)
    return out


def train_step(model_name: str, placement: dict, loss: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "reprkit.cli", "train", "--model", model_name, "--preset", loss, "--steps", "4",
               "--batch-size", "2", "--run-dir", f"{tmp}/run", "--eval-data", "embedded:capitals", "--eval-limit", "4"]
        if placement.get("quantization"):
            cmd += ["--quantization", placement["quantization"]]
        if placement.get("dtype"):
            cmd += ["--dtype", placement["dtype"]]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        return {"status": "pass" if proc.returncode == 0 else "fail", "reason": proc.stderr[-500:] if proc.returncode else ""}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="gpu-check.json")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this script is for a GPU machine")
    from reprkit.models import load_model

    results = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    for model_name in MODELS:
        for pname, placement in PLACEMENTS.items():
            start = time.time()
            key = f"{model_name} {pname}"
            try:
                model, tok = load_model(model_name, **placement)
                results[key] = checks(model, tok)
                del model
                torch.cuda.empty_cache()
            except Exception as err:  # noqa: BLE001
                results[key] = {"load": {"status": "fail", "reason": f"{type(err).__name__}: {err}"[:300]}}
            if pname != "auto":
                for loss in ("dpo", "reprpo"):
                    results[key][f"train {loss}"] = train_step(model_name, placement, loss)
            results[key]["seconds"] = time.time() - start
            print(key, {k: v["status"] for k, v in results[key].items() if isinstance(v, dict)}, flush=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
