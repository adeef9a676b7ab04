"""reprkit's LoReFT against pyreft's: the same weights give the same states.

    /work/venv-bench/bin/python experiments/bench/loreft_pyreft.py      # a venv with pyreft beside reprkit

pyreft 0.1.0 pins transformers==4.45.1, so it does not install beside reprkit (transformers>=5.23)
with its dependencies; installed with ``--no-deps`` (with pyvene 0.1.8 and matplotlib) its
intervention module imports. Three comparisons, on the default model (SmolLM2-135M-Instruct,
dequantised from its Q8_0 GGUF) in float32:

1. the module: ``pyreft.interventions.LoreftIntervention`` and ``reprkit.interventions.LoReFTIntervention``
   holding the same ``R`` and ``W, b``, on random states;
2. the model: block 20's output with reprkit's intervention attached at block 15, against the same
   forward with pyreft's module applied to block 15's output by a plain forward hook;
3. pyreft's own model wrapper (``pyreft.get_reft_model``, pyvene's hooks) at block 15 on the first
   and last prompt tokens, against reprkit at positions ``f1+l1``: run where it works with
   transformers 5, its error recorded where it does not.

Writes ``results/bench/loreft_pyreft.json``.
"""

from __future__ import annotations

import json
import platform
import traceback
from pathlib import Path

import torch

from reprkit import interventions as I
from reprkit.hooks import capture
from reprkit.models import load_model


def copy_weights(theirs, ours: I.LoReFTIntervention, k: int) -> None:
    with torch.no_grad():
        ours.rotate[str(k)].weight = theirs.rotate_layer.weight.detach().T.clone()  # [r, d]: orthogonal's right_inverse
        ours.source[str(k)].load_state_dict(theirs.learned_source.state_dict())


def main() -> None:
    import pyreft
    from pyreft.interventions import LoreftIntervention

    out: dict = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, no GPU",
                 "pyreft": getattr(pyreft, "__version__", "0.1.0"), "torch": torch.__version__}
    import transformers

    out["transformers"] = transformers.__version__
    torch.manual_seed(0)
    model, tok = load_model()
    d, r, k, later = model.config.hidden_size, 4, 15, 20

    theirs = LoreftIntervention(embed_dim=d, low_rank_dimension=r, dtype=torch.float32)
    with torch.no_grad():
        theirs.learned_source.weight.normal_(0, 0.05)
        theirs.learned_source.bias.normal_(0, 0.5)
    ours = I.LoReFTIntervention([k], d, positions="all", rank=r)
    copy_weights(theirs, ours, k)
    h = torch.randn(2, 7, d) * 3
    with torch.no_grad():
        a, b = theirs(h), ours.edit(k, h)
    out["module_max_abs_diff"] = (a - b).abs().max().item()
    out["module_edit_norm"] = (a - h).norm(dim=-1).mean().item()

    text = tok.apply_chat_template([{"role": "user", "content": "Name a colour."}], tokenize=False, add_generation_prompt=True)
    ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad(), capture(model, [later]) as plain:
        model(input_ids=ids)
    I.attach(model, ours)
    with torch.no_grad(), capture(model, [later]) as mine:
        model(input_ids=ids)
    I.detach(model)
    for p in model.parameters():
        p.requires_grad_(False)
    block = model.model.layers[k]
    handle = block.register_forward_hook(lambda m, args, o: theirs(o) if torch.is_tensor(o) else (theirs(o[0]), *o[1:]))
    with torch.no_grad(), capture(model, [later]) as other:
        model(input_ids=ids)
    handle.remove()
    out["model_block20_max_abs_diff"] = (mine[later] - other[later]).abs().max().item()
    out["model_block20_max_state_norm"] = mine[later].norm(dim=-1).max().item()
    out["model_block20_moved_by"] = (mine[later] - plain[later]).norm(dim=-1).mean().item()

    try:  # pyreft's own wrapper, on the first and last prompt tokens
        cfg = pyreft.ReftConfig(representations={"layer": k, "component": "block_output", "low_rank_dimension": r,
                                                 "intervention": theirs})
        reft_model = pyreft.get_reft_model(model, cfg)
        n = ids.shape[1]
        _, cf = reft_model({"input_ids": ids, "output_hidden_states": True},
                           unit_locations={"sources->base": (None, [[[0, n - 1]]])})
        theirs_states = cf.hidden_states[later + 1]
        ends = I.LoReFTIntervention([k], d, positions="f1+l1", rank=r)
        copy_weights(theirs, ends, k)
        base = getattr(reft_model, "model", model)
        I.attach(base, ends)
        with torch.no_grad(), I.at_positions(base, torch.ones_like(ids), None), capture(base, [later]) as cap:
            base(input_ids=ids)
        I.detach(base)
        out["reft_model_f1_l1_block20_max_abs_diff"] = (cap[later] - theirs_states).abs().max().item()
        out["reft_model_f1_l1_block20_moved_by"] = (theirs_states - plain[later]).norm(dim=-1).mean().item()
    except Exception as err:  # noqa: BLE001 - recorded: pyreft targets transformers 4.45
        out["reft_model_error"] = f"{type(err).__name__}: {err}"[:400]
        out["reft_model_traceback_tail"] = traceback.format_exc(limit=-2)[-600:]
    path = Path("results/bench/loreft_pyreft.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
