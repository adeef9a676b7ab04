"""Does reprkit work on my model? Every capability, checked on an architecture, with the reason
where it fails.

    python -m reprkit.verify                              # every architecture below, as tiny random models
    python -m reprkit.verify --arch qwen3 gemma3          # some of them
    python -m reprkit.verify --model path/or/hub-id       # your own model (real weights: slower)
    python -m reprkit.verify --write docs/supported-models.md   # the published support table
    python -m reprkit.verify --save-tiny qwen3 /tmp/tiny-qwen3  # a tiny random model to try the API on

Each architecture is built from transformers' own config class with tiny random weights (no
download). A check passes, fails with the reason (the first line of the exception), or is not
applicable with the reason. ``tests/test_architectures.py`` runs the same checks and fails where
the committed table (``docs/supported-models.md``) says something else, so the table cannot drift.
The weights are drawn wider than transformers' default (``initializer_range`` 0.2, not 0.02): at
the default a tiny model attends almost uniformly, and an equality check may not see a position
or masking error (responses read at the wrong positions, a deliberate bug: the shared-prompt
check failed on 11 of 23 architectures at the default, on all 23 at 0.2).

The checks (``CHECKS``), in order:

- ``blocks``: the decoder blocks are found, one per layer;
- ``capture``: a capture of every block equals ``output_hidden_states[i + 1]``, the last block's
  before the final norm (the final norm applied to it gives ``hidden_states[-1]``);
- ``stop``: stopping after layer k gives the same states and runs k + 1 blocks;
- ``edits``: ``add_vector``, ``ablate`` and ``steer_direction`` with a mask on the last position
  leave every earlier position untouched downstream and change the last;
- ``points``: the named points inside each block (``reprkit.points``) have their shapes, and
  ``resid_pre + attn_out + mlp_out == resid_post``, ``resid_pre == `` the previous block's output,
  ``resid_mid == resid_pre + attn_out`` (refused on a parallel block, which has none);
- ``heads``: ``z`` is ``[batch, seq, heads, head_dim]``; the heads through the output projection one
  at a time sum to its output; zeroing one head's ``z`` removes exactly that head's part; with eager
  attention the patterns are causal rows summing to 1 (at most 1 where sinks take a share), and
  without it reading them is refused with the fix;
- ``point_edits``: an edit at each point of one block, on the last position, is what the point then
  holds, changes the last position downstream and no earlier one, and is gone after its context;
- ``generate``: an edit during ``generate`` gives the same tokens with the KV cache as without;
- ``left_padding``: a left-padded batch, edited at each prompt's last real token, gives each
  prompt's last logits alone, and greedy generation with an edit gives each prompt's tokens alone;
- ``logit_lens``: the lens at the last layer equals the model's logits (final norm, softcapping,
  logit scale, tied embeddings as the architecture defines them);
- ``lora``: reprkit's adapter reaches a linear layer in every block and not the LM head, and the
  adapter guards accept it;
- ``losses``: one optimiser step of DPO, ReprPO, reroute and prefvec changes the adapter;
- ``shared_prompt``: scoring, reading directions' states and the training forward with each
  prompt run once (the architecture's own cache class) equal the concatenated layout;
- ``reference_cache``: the frozen-model cache returns the frozen pass's states and log-probs;
- ``steering``: a direction read from contrast pairs steers at two layers in one call, undone on exit;
- ``interventions``: a trained vector's block output is ``h + v`` (``h - v`` at the -1 pass), a
  LoReFT's ``h + R^T (W h + b - R h)`` at its positions (the first and last prompt tokens, also of
  left-padded prompts of unequal length longer than a sliding window) and ``h`` elsewhere, each
  gives the frozen model's states exactly when switched off, and a loss on a later block reaches
  its parameters.

One file of about 600 lines on purpose: the checks are the support table's columns, and reading
them side by side is how a reader judges what "pass" means.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import traceback
from pathlib import Path

import torch

TINY = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=256, pad_token_id=0, bos_token_id=1,
            eos_token_id=2, tie_word_embeddings=False, initializer_range=0.2)

MOE = dict(num_local_experts=4, num_experts_per_tok=2)

ARCHITECTURES: dict[str, tuple[str, dict]] = {
    "llama": ("LlamaConfig", {}),
    "mistral": ("MistralConfig", {"sliding_window": 8}),
    "mixtral (MoE)": ("MixtralConfig", {**MOE}),
    "qwen2": ("Qwen2Config", {}),
    "qwen2-moe (MoE)": ("Qwen2MoeConfig", {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                                           "shared_expert_intermediate_size": 64, "decoder_sparse_step": 1}),
    "qwen3": ("Qwen3Config", {}),
    "qwen3-moe (MoE)": ("Qwen3MoeConfig", {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                                           "decoder_sparse_step": 1}),
    "gemma": ("GemmaConfig", {"tie_word_embeddings": True}),
    "gemma2": ("Gemma2Config", {"tie_word_embeddings": True, "sliding_window": 8, "final_logit_softcapping": 30.0,
                                "attn_logit_softcapping": 50.0}),
    "gemma3": ("Gemma3TextConfig", {"tie_word_embeddings": True, "sliding_window": 8,
                                    "layer_types": ["sliding_attention", "sliding_attention", "full_attention",
                                                    "sliding_attention"]}),
    "phi3": ("Phi3Config", {}),
    "olmo2": ("Olmo2Config", {}),
    "granite": ("GraniteConfig", {"logits_scaling": 4.0, "embedding_multiplier": 2.0, "residual_multiplier": 0.5,
                                  "attention_multiplier": 0.25}),
    "cohere": ("CohereConfig", {"logit_scale": 0.5, "tie_word_embeddings": True}),
    "stablelm": ("StableLmConfig", {}),
    "gpt2": ("GPT2Config", {"n_embd": 64, "n_layer": 4, "n_head": 4, "n_positions": 256}),
    "gpt-neox": ("GPTNeoXConfig", {}),
    "falcon": ("FalconConfig", {"new_decoder_architecture": True, "num_kv_heads": 2, "head_dim": None}),
    "smollm3": ("SmolLM3Config", {}),
    "gpt-oss (MoE)": ("GptOssConfig", {"num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": 8,
                                       "layer_types": ["sliding_attention", "full_attention"] * 2}),
    "deepseek-v3 (MLA, MoE)": ("DeepseekV3Config", {"head_dim": 8, "num_key_value_heads": 4, "q_lora_rank": 32, "kv_lora_rank": 16, "qk_rope_head_dim": 8,
                                                    "qk_nope_head_dim": 8, "v_head_dim": 16, "n_routed_experts": 4,
                                                    "num_experts_per_tok": 2, "n_shared_experts": 1,
                                                    "moe_intermediate_size": 32, "first_k_dense_replace": 1,
                                                    "n_group": 1, "topk_group": 1}),
    "llama4-text (MoE)": ("Llama4TextConfig", {"num_local_experts": 4, "num_experts_per_tok": 1,
                                               "intermediate_size_mlp": 128, "interleave_moe_layer_step": 2}),
    "glm4": ("Glm4Config", {}),
}

CHECKS = ("blocks", "capture", "stop", "edits", "points", "heads", "point_edits", "generate", "left_padding",
          "logit_lens", "lora", "losses", "shared_prompt", "reference_cache", "steering", "interventions")


class NotApplicable(Exception):
    """The capability does not apply to this architecture (the message says why)."""


def arch_key(arch: str) -> str:
    """The ``ARCHITECTURES`` key for ``arch``, with or without its tag (``qwen3-moe`` is ``qwen3-moe (MoE)``)."""
    if arch in ARCHITECTURES:
        return arch
    found = [k for k in ARCHITECTURES if k.split(" (")[0] == arch]
    if not found:
        raise ValueError(f"unknown architecture {arch!r}; choose from {[k.split(' (')[0] for k in ARCHITECTURES]}")
    return found[0]


def tiny_model(arch: str, seed: int = 0, **config):
    """A tiny randomly initialised causal LM of ``arch`` (a key of ``ARCHITECTURES``), float32, eval;
    ``config`` overrides the tiny settings (``vocab_size``, ``num_hidden_layers``, ...)."""
    import transformers
    from transformers import AutoModelForCausalLM

    name, overrides = ARCHITECTURES[arch_key(arch)]
    kwargs = {k: v for k, v in {**TINY, **overrides, **config}.items() if v is not None}  # None: the config derives it
    config = getattr(transformers, name)(**kwargs)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # random init leaves some norms at zero gain (OLMo2, Gemma's 1 + w): give them signal
        for n, p in model.named_parameters():
            if p.dim() == 1 and "norm" in n.lower() and torch.all(p == 0):
                p.normal_(0, 0.1)
    return model.eval()


def _n_layers(model) -> int:
    c = model.config
    return getattr(c, "num_hidden_layers", None) or c.n_layer


def _ids(model, batch: int = 2, length: int = 9, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, model.config.vocab_size, (batch, length), generator=g)


def _close_rows(a: torch.Tensor, b: torch.Tensor, what: str, rel: float = 1e-4) -> None:
    """Hidden states equal row by row relative to each row's norm: real models' states reach 10^4
    in some dimensions (Gemma 3 270M's last layer), where float32 rounding alone is 10^-2 absolute."""
    a, b = a.float(), b.float()
    if a.shape != b.shape:
        raise AssertionError(f"{what}: shapes {tuple(a.shape)} vs {tuple(b.shape)}")
    err = ((a - b).norm(dim=-1) / b.norm(dim=-1).clamp_min(1e-6)).max().item()
    if err > rel:
        raise AssertionError(f"{what}: differ by up to {err:.3g} of a state's norm")


def _close(a: torch.Tensor, b: torch.Tensor, what: str, atol: float = 1e-4, rtol: float = 1e-4) -> None:
    a, b = a.float(), b.float()
    if a.shape != b.shape:
        raise AssertionError(f"{what}: shapes {tuple(a.shape)} vs {tuple(b.shape)}")
    if not torch.allclose(a, b, atol=atol, rtol=rtol):
        raise AssertionError(f"{what}: differ by up to {(a - b).abs().max().item():.3g}")


# ---------------------------------------------------------------- the checks


def check_blocks(model) -> None:
    from .layers import find_blocks

    names, _ = find_blocks(model)
    if len(names) != _n_layers(model):
        raise AssertionError(f"found {len(names)} blocks, the config has {_n_layers(model)}")


def check_capture(model) -> None:
    from .hooks import capture
    from .lens import final_norm

    ids = _ids(model)
    n = _n_layers(model)
    with torch.no_grad(), capture(model, list(range(n))) as cap:
        out = model(input_ids=ids, output_hidden_states=True)
    hs = out.hidden_states
    for i in range(n - 1):
        _close(cap[i], hs[i + 1], f"layer {i} vs hidden_states[{i + 1}]")
    with torch.no_grad():
        _close(final_norm(model)(cap[n - 1]), hs[n], "final norm of the last layer vs hidden_states[-1]")


def _count_blocks(model):
    from .layers import find_blocks

    calls = []
    _, blocks = find_blocks(model)
    handles = [b.register_forward_hook(lambda *a, i=i: calls.append(i)) for i, b in enumerate(blocks)]
    return calls, handles


def check_stop(model) -> None:
    from .hooks import capture

    ids = _ids(model)
    k = 1
    with torch.no_grad(), capture(model, list(range(_n_layers(model)))) as full:
        model(input_ids=ids)
    calls, handles = _count_blocks(model)
    try:
        with torch.no_grad(), capture(model, k, stop=True) as cap:
            model(input_ids=ids)
    finally:
        for h in handles:
            h.remove()
    _close(cap[k], full[k], f"layer {k} with stop vs without")
    if sorted(set(calls)) != list(range(k + 1)):
        raise AssertionError(f"stop after layer {k} ran blocks {sorted(set(calls))}")


def check_edits(model) -> None:
    from . import edits
    from .hooks import capture

    ids = _ids(model, batch=1)
    h = model.config.hidden_size
    v = torch.nn.functional.normalize(torch.randn(h, generator=torch.Generator().manual_seed(2)), dim=0)
    mask = torch.zeros(ids.shape, dtype=torch.long)
    mask[:, -1] = 1
    with torch.no_grad(), capture(model, 2) as plain:
        model(input_ids=ids)
    for name, edit in (("add_vector", edits.add_vector(v, 8.0, mask)), ("ablate", edits.ablate(v, mask)),
                       ("steer_direction", edits.steer_direction(v, 0.9, mask))):
        with torch.no_grad(), capture(model, 1, edit_output=edit), capture(model, 2) as cap:
            model(input_ids=ids)
        _close(cap[2][:, :-1], plain[2][:, :-1], f"{name}: positions outside the mask downstream")
        if torch.allclose(cap[2][:, -1], plain[2][:, -1], atol=1e-6):
            raise AssertionError(f"{name}: the masked position did not change")


def _point_captures(model, points, ids, layers="all", **forward):
    from .hooks import capture

    with torch.no_grad(), contextlib.ExitStack() as stack:
        caps = {p: stack.enter_context(capture(model, layers, point=p)) for p in points}
        out = model(input_ids=ids, output_hidden_states=True, **forward)
    return {p: c.hidden_states for p, c in caps.items()}, out


def check_points(model) -> None:
    from .points import block_layout

    lay = block_layout(model)
    points = ["resid_pre", "attn_out", "mlp_out", "resid_post"] + ([] if lay.parallel else ["resid_mid"])
    ids = _ids(model)
    got, out = _point_captures(model, points, ids)
    shape = (*ids.shape, model.config.hidden_size)
    for p in points:
        for i, t in got[p].items():
            if tuple(t.shape) != shape:
                raise AssertionError(f"{p} at layer {i} has shape {tuple(t.shape)}, not {shape}")
    pre, post = got["resid_pre"], got["resid_post"]
    _close_rows(pre[0], out.hidden_states[0], "resid_pre at layer 0 vs hidden_states[0]")
    for i in post:
        _close_rows(pre[i] + got["attn_out"][i] + got["mlp_out"][i], post[i], f"layer {i}: resid_pre + attn_out + mlp_out vs resid_post")
        if i:
            _close_rows(pre[i], post[i - 1], f"resid_pre at layer {i} vs resid_post at {i - 1}")
        if not lay.parallel:
            _close_rows(got["resid_mid"][i], pre[i] + got["attn_out"][i], f"layer {i}: resid_mid vs resid_pre + attn_out")
    return (f"attn_out: {lay.attn_added}{'' if lay.attn_scale == 1 else f' x {lay.attn_scale:g}'}; "
            f"mlp_out: {lay.mlp_added}{'' if lay.mlp_scale == 1 else f' x {lay.mlp_scale:g}'}; "
            + ("parallel block: no resid_mid" if lay.parallel else f"resid_mid: the input of {lay.mlp_entry}"))


def check_heads(model) -> None:
    from .hooks import TraceDict, capture
    from .layers import find_blocks
    from .points import block_layout, head_outputs, point_modules

    lay = block_layout(model)
    ids = _ids(model)
    names, _ = find_blocks(model)
    proj = [point_modules(model, b, "z")["out_proj"] for b in names]
    with torch.no_grad(), capture(model, "all", point="z") as z, TraceDict(model, proj) as out:
        model(input_ids=ids)
    want = (*ids.shape, lay.heads, lay.head_dim)
    k = 1
    for i, name in enumerate(proj):
        if tuple(z[i].shape) != want:
            raise AssertionError(f"z at layer {i} has shape {tuple(z[i].shape)}, not {want}")
        with torch.no_grad():
            parts = head_outputs(model, i, z[i])
            bias = model.get_submodule(name)(torch.zeros_like(z[i].flatten(-2)[..., :1, :]))
        _close(parts.sum(-2) + bias, out[name].output, f"layer {i}: the heads through {lay.out_proj} vs its output")
    off = lambda t, name: torch.cat([torch.zeros_like(t[..., :1, :]), t[..., 1:, :]], dim=-2)  # noqa: E731 - head 0 off
    with torch.no_grad(), capture(model, k, point="z", edit_output=off), TraceDict(model, [proj[k]]) as cut:
        model(input_ids=ids)
    with torch.no_grad():
        _close(cut[proj[k]].output, out[proj[k]].output - head_outputs(model, k, z[k])[..., 0, :],
               f"layer {k}: the output with head 0's z zeroed vs the output less head 0's part")
    impl = model.config._attn_implementation
    if impl != "eager":
        try:
            _point_captures(model, ["pattern"], ids, layers=k)
        except ValueError as err:
            if "eager" not in str(err):
                raise
        else:
            raise AssertionError(f"reading patterns under {impl!r} attention was not refused")
    model.set_attn_implementation("eager")
    if model.config._attn_implementation != "eager":  # Falcon before transformers 5.24 cannot switch
        return f"patterns not checked: {type(model).__name__} cannot switch to eager attention on this transformers"
    try:
        got, _ = _point_captures(model, ["pattern"], ids, layers=k)
    finally:
        model.set_attn_implementation(impl)
    w = got["pattern"][k]
    b, s = ids.shape
    if tuple(w.shape) != (b, lay.heads, s, s):
        raise AssertionError(f"pattern at layer {k} has shape {tuple(w.shape)}, not {(b, lay.heads, s, s)}")
    if w.triu(1).abs().max() > 1e-6:
        raise AssertionError("the pattern attends to later positions")
    rows = w.sum(-1)
    sinks = hasattr(model.get_submodule(point_modules(model, names[k], "z")["attention"]), "sinks")
    if (rows > 1 + 1e-4).any() or (not sinks and (rows < 1 - 1e-4).any()):
        raise AssertionError(f"pattern rows sum to {rows.min().item():.4f}..{rows.max().item():.4f}, not 1")


def check_point_edits(model) -> None:
    from . import edits
    from .hooks import capture
    from .points import block_layout

    lay = block_layout(model)
    ids = _ids(model, batch=1)
    k, later = 1, 2
    h = model.config.hidden_size
    v = torch.nn.functional.normalize(torch.randn(h, generator=torch.Generator().manual_seed(2)), dim=0) * 8.0
    mask = torch.zeros(ids.shape, dtype=torch.long)
    mask[:, -1] = 1
    points = ["resid_pre", "attn_out", "mlp_out", "resid_post", "z"] + ([] if lay.parallel else ["resid_mid"])
    plain, _ = _point_captures(model, points, ids, layers=k)
    with torch.no_grad(), capture(model, later) as base:
        model(input_ids=ids)
    vz = v[: lay.head_dim]
    for p in points:
        if p == "z":
            edit = lambda t, name: t + torch.zeros_like(t).index_fill(-2, torch.tensor([0]), 1.0) * vz * mask[..., None, None]  # noqa: E731
            want = plain["z"][k].clone()
            want[:, -1, 0] += vz
        else:
            edit = edits.add_vector(v, 1.0, mask)
            want = plain[p][k] + v * mask[..., None]
        with torch.no_grad(), capture(model, k, point=p, edit_output=edit) as cap, capture(model, later) as after:
            model(input_ids=ids)
        _close(cap[k], want, f"{p} at layer {k}, edited, vs the point plus the edit")
        _close(after[later][:, :-1], base[later][:, :-1], f"an edit of {p} at the last position, earlier positions at layer {later}")
        if torch.allclose(after[later][:, -1], base[later][:, -1], atol=1e-3):
            raise AssertionError(f"an edit of {p} at layer {k} did not change layer {later}")
        with torch.no_grad(), capture(model, later) as again:
            model(input_ids=ids)
        _close(again[later], base[later], f"layer {later} after the edit of {p} was undone")


def _generate(model, ids, mask=None, edit=None, use_cache=True, new=5):
    from .hooks import capture

    ctx = capture(model, 1, edit_output=edit, retain_output=False) if edit is not None else contextlib.nullcontext()
    with torch.no_grad(), ctx:
        return model.generate(input_ids=ids, attention_mask=mask if mask is not None else torch.ones_like(ids),
                              max_new_tokens=new, do_sample=False, use_cache=use_cache,
                              pad_token_id=model.config.pad_token_id or 0)[:, ids.shape[1]:]


def _steer_vector(model, scale: float = 20.0):
    from . import edits

    v = torch.nn.functional.normalize(torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(3)), dim=0)
    return edits.add_vector(v, scale)


def check_generate(model) -> None:
    """Greedy generation with an edit: the same tokens and the same logits at every step with the KV
    cache as without it (tokens alone can agree by chance on a tiny model)."""
    from .hooks import capture

    ids = _ids(model, batch=1, length=6)
    edit = _steer_vector(model)
    runs = {}
    for use_cache in (True, False):
        with torch.no_grad(), capture(model, 1, edit_output=edit, retain_output=False):
            runs[use_cache] = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=5,
                                             do_sample=False, use_cache=use_cache, return_dict_in_generate=True,
                                             output_logits=True, pad_token_id=model.config.pad_token_id or 0)
    cached, uncached = runs[True].sequences[:, ids.shape[1]:], runs[False].sequences[:, ids.shape[1]:]
    if not torch.equal(cached, uncached):
        raise AssertionError(f"with the KV cache {cached.tolist()} vs without {uncached.tolist()}")
    for step, (a, b) in enumerate(zip(runs[True].logits, runs[False].logits)):
        _close(a, b, f"generation step {step}'s logits with the KV cache vs without", atol=1e-3)


def check_left_padding(model) -> None:
    from . import edits
    from .hooks import capture

    short, long = _ids(model, 1, 4, seed=4), _ids(model, 1, 7, seed=5)
    pad = model.config.pad_token_id or 0
    batch = torch.cat([torch.cat([torch.full((1, 3), pad), short], 1), long])
    attn = torch.cat([torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 4, dtype=torch.long)], 1),
                      torch.ones(1, 7, dtype=torch.long)])
    from .geometry import last_token

    v = torch.nn.functional.normalize(torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(6)), dim=0)
    last = last_token(attn)  # each prompt's last real token (the last column under left padding)
    if not bool(last[:, -1].all()):
        raise AssertionError(f"last_token of a left-padded mask marks {last.nonzero().tolist()}, not the last column")
    positions = (attn.cumsum(-1) - 1).clamp(min=0)  # as generate does: absolute positions (GPT-2) start at each prompt
    with torch.no_grad(), capture(model, 1, edit_output=edits.add_vector(v, 8.0, last), retain_output=False):
        together = model(input_ids=batch, attention_mask=attn, position_ids=positions).logits[:, -1]
    for row, alone_ids in enumerate((short, long)):
        m = last_token(torch.ones_like(alone_ids))
        with torch.no_grad(), capture(model, 1, edit_output=edits.add_vector(v, 8.0, m), retain_output=False):
            alone = model(input_ids=alone_ids).logits[:, -1]
        _close(together[row: row + 1], alone, f"left-padded row {row}'s edited last logits vs the prompt alone", atol=1e-3)
    edit = _steer_vector(model)
    gen = _generate(model, batch, attn, edit=edit)
    for row, alone_ids in enumerate((short, long)):
        alone = _generate(model, alone_ids, edit=edit)
        if not torch.equal(gen[row], alone[0]):
            raise AssertionError(f"left-padded generation row {row} {gen[row].tolist()} vs alone {alone[0].tolist()}")


def check_logit_lens(model) -> None:
    from .hooks import capture
    from .lens import lens_logits

    ids = _ids(model)
    n = _n_layers(model)
    with torch.no_grad(), capture(model, n - 1) as cap:
        logits = model(input_ids=ids).logits
    with torch.no_grad():
        lens = lens_logits(model, cap[n - 1])
    _close(lens, logits, "logit lens at the last layer vs the model's logits", atol=1e-3)


def _adapted(model):
    from .config import TrainConfig
    from .train import add_lora, check_adapter

    peft_model = add_lora(model, TrainConfig(), None)
    check_adapter(peft_model)
    return peft_model


def check_lora(model) -> None:
    from .layers import find_blocks

    peft_model = _adapted(model)
    names, _ = find_blocks(peft_model)
    lora = [n for n, _ in peft_model.named_modules() if n.endswith("lora_A")]
    missing = [b for b in names if not any(n.startswith(b + ".") for n in lora)]
    if missing:
        raise AssertionError(f"no LoRA module in block(s) {missing[:3]}")
    if any("lm_head" in n or "embed" in n for n in lora):
        raise AssertionError("LoRA reached the LM head or the embeddings")
    inside = sorted({n[len(names[-1]) + 1:].rsplit(".lora_A", 1)[0] for n in lora if n.startswith(names[-1] + ".")})
    return "LoRA in the last block on " + ", ".join(m for m in inside if not m.endswith(".base_layer"))


def _pairs(model, n: int = 3) -> dict:
    """Pairs whose prompts differ in length and are longer than the tiny sliding windows (8), in
    one batch: the padded case every check of a batch must see."""
    from . import data as D

    g = torch.Generator().manual_seed(7)
    v = model.config.vocab_size
    rows = []
    for i in range(n):
        prompt = torch.randint(3, v, ((12, 9, 10)[i % 3] + 3 * (i // 3),), generator=g).tolist()
        rows.append({"chosen_prompt_ids": prompt, "rejected_prompt_ids": prompt,
                     "chosen_ids": torch.randint(3, v, (3,), generator=g).tolist() + [2],
                     "rejected_ids": torch.randint(3, v, (2 + i,), generator=g).tolist() + [2]})
    batch = D.collate(rows, model.config.pad_token_id or 0)
    batch["index"] = torch.arange(n)
    return rows, batch


def _loss_step(peft_model, loss, batch, shared_prompt=False, reference=None):
    from .train import forward_pair_batch, only_layers, plan_layers

    loss_layers, layers, _ = plan_layers(peft_model, loss)
    inputs = forward_pair_batch(peft_model, batch, layers, loss, progress=0.0, shared_prompt=shared_prompt,
                                reference=reference)
    value, _ = loss(only_layers(inputs, loss_layers))
    return value


LOSSES = ("dpo", "reprpo", "reroute", "prefvec")


def _loss(name):
    from .config import preset

    return preset(name).loss_fn()


def check_losses(model) -> None:
    from .train import assert_changed, snapshot_trainable

    failed = []
    for name in LOSSES:
        peft_model = _adapted(tiny_copy(model))
        peft_model.train()
        _, batch = _pairs(peft_model)
        params = [p for p in peft_model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-2)
        before = snapshot_trainable(peft_model)
        try:
            for _ in range(2):  # LoRA B starts at zero: the first step moves B, the second A as well
                value = _loss_step(peft_model, _loss(name), batch)
                if not torch.isfinite(value):
                    raise AssertionError(f"loss is {value.item()}")
                opt.zero_grad()
                value.backward()
                opt.step()
            assert_changed(peft_model, before, "default")
        except Exception as err:  # noqa: BLE001 - collected per loss
            failed.append(f"{name}: {_first_line(err)}")
    if failed:
        raise AssertionError("; ".join(failed))


def check_shared_prompt(model) -> None:
    from .evaluate import ranked_logps

    rows, batch = _pairs(model)
    # prompts of different lengths, longer than the tiny configs' sliding windows (8 tokens): 20, 22
    # and 21 share a batch (padded to 22), 9 runs alone; 6 and 7, shorter than the window, share one
    # (so padding lies inside the window); responses of unequal length share chunks
    g = torch.Generator().manual_seed(11)
    ranked = [{"prompt_ids": torch.randint(3, model.config.vocab_size, (n,), generator=g).tolist(),
               "responses_ids": [torch.randint(3, model.config.vocab_size, (m,), generator=g).tolist()
                                 for m in (3, 4, 7)[: 2 + (n % 2)]]}
              for n in (20, 22, 21, 9, 6, 7)]
    one = ranked_logps(model, ranked, model.config.pad_token_id or 0, base=False, shared_prompt=False)["policy"]
    shared = ranked_logps(model, ranked, model.config.pad_token_id or 0, base=False, shared_prompt=True)["policy"]
    if not torch.equal(shared["valid"], one["valid"]):
        raise AssertionError("scoring: shared prompt and concatenated disagree on which response slots exist")
    _close(shared["logps"][one["valid"]], one["logps"][one["valid"]], "scoring: shared prompt vs concatenated", atol=1e-3)
    from .directions import completion_states

    layers = [0, _n_layers(model) - 1]
    for token in ("mean", "last"):
        read = [completion_states(model, ranked, model.config.pad_token_id or 0, layers, token, shared_prompt=flag)[0]
                for flag in (False, True)]
        for layer in layers:
            _close_rows(read[1][layer], read[0][layer], f"reading ({token}, layer {layer}): shared prompt vs concatenated")
    peft_model = _adapted(tiny_copy(model))
    for name in ("dpo", "reprpo"):
        a = _loss_step(peft_model, _loss(name), batch, shared_prompt=False)
        b = _loss_step(peft_model, _loss(name), batch, shared_prompt=True)
        _close(b.detach(), a.detach(), f"{name} loss: shared prompt vs concatenated", atol=1e-4)


def check_reference_cache(model) -> None:
    from .frozen_cache import ReferenceCache
    from .train import plan_layers

    rows, batch = _pairs(model)
    peft_model = _adapted(tiny_copy(model))
    with torch.no_grad():  # move the adapter off the frozen model so a cache of the wrong pass would show
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    for name in ("dpo", "reprpo"):
        loss = _loss(name)
        _, layers, _ = plan_layers(peft_model, loss)
        with tempfile.TemporaryDirectory() as tmp:
            cache = ReferenceCache.open(Path(tmp), peft_model, rows, layers, loss.needs_logps, {"check": name},
                                        peft_model.config.pad_token_id or 0, "tiny")
            live = _loss_step(peft_model, loss, batch)
            cached = _loss_step(peft_model, loss, batch, reference=cache)
        _close(cached.detach(), live.detach(), f"{name} loss with the frozen-model cache vs the frozen pass", atol=1e-4)


def check_steering(model) -> None:
    """Steering at two layers in one call equals nesting one edit per layer, each with its own
    layer's vector, and is undone on exit."""
    from .directions import Direction, directions_from_states
    from .hooks import capture
    from .steering import steered

    ids = _ids(model, batch=4, length=6, seed=8)
    other = _ids(model, batch=4, length=6, seed=9)
    with torch.no_grad(), capture(model, [1, 2]) as a:
        model(input_ids=ids)
    with torch.no_grad(), capture(model, [1, 2]) as b:
        model(input_ids=other)
    vectors, _ = directions_from_states({k: a[k][:, -1] for k in (1, 2)}, {k: b[k][:, -1] for k in (1, 2)}, "mean_diff", 1.0)
    d = Direction(vectors, {"method": "mean_diff"})
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        with steered(model, d, 8.0):
            steered = model(input_ids=ids).logits
        after = model(input_ids=ids).logits
        with capture(model, 1, edit_output=d.edit(8.0, 1), retain_output=False), \
                capture(model, 2, edit_output=d.edit(8.0, 2), retain_output=False):
            nested = model(input_ids=ids).logits
    if torch.allclose(steered, plain, atol=1e-6):
        raise AssertionError("steering changed nothing")
    _close(steered, nested, "steering two layers in one call vs one edit per layer")
    _close(after, plain, "logits after the steering context vs before")


def check_interventions(model) -> str:
    from . import interventions as I
    from .hooks import capture
    from .layers import find_blocks

    names, _ = find_blocks(model)
    k = len(names) // 2
    ids = _ids(model, batch=2, length=7, seed=10)
    size = I.hidden_size_of(model)
    with torch.no_grad(), capture(model, [k, len(names) - 1]) as base:
        model(input_ids=ids)
    h = base[k]
    g = torch.Generator().manual_seed(11)
    vec = I.VectorIntervention([k], size)
    with torch.no_grad():
        vec.vectors[str(k)].copy_(torch.randn(size, generator=g) * h.norm(dim=-1).mean() / size ** 0.5)
    I.attach(model, vec)
    try:
        v = vec.vectors[str(k)].detach()
        for sign in (1.0, -1.0):
            with torch.no_grad(), I.scaled(model, sign), capture(model, [k]) as cap:
                model(input_ids=ids)
            _close_rows(cap[k], h + sign * v, f"block {k}'s output with a vector at sign {sign:+g} vs h {'+-'[sign < 0]} v")
        with torch.no_grad(), I.disabled(model), capture(model, [k, len(names) - 1]) as off:
            model(input_ids=ids)
        _close(off[len(names) - 1], base[len(names) - 1], "the last block with the vector switched off vs the model",
               atol=0, rtol=0)
        with capture(model, [len(names) - 1], detach=False) as cap:
            model(input_ids=ids)
        cap[len(names) - 1].float().pow(2).mean().backward()
        if vec.vectors[str(k)].grad is None or not bool(vec.vectors[str(k)].grad.abs().sum() > 0):
            raise AssertionError(f"a loss on block {len(names) - 1} gives the vector at block {k} no gradient")
    finally:
        I.detach(model)
    for p in model.parameters():
        p.requires_grad_(False)

    reft = I.LoReFTIntervention([k], size, positions="f1+l1", rank=2)
    I.attach(model, reft)
    try:
        attn = torch.ones_like(ids)
        comp = torch.zeros_like(ids)
        comp[:, -2:] = 1  # a 5-token prompt, a 2-token completion
        with torch.no_grad(), I.at_positions(model, attn, comp), capture(model, [k]) as cap:
            model(input_ids=ids)
        R = reft.R(k).detach()
        W, b = reft.source[str(k)].weight.detach(), reft.source[str(k)].bias.detach()
        def loreft(x):  # the formula, by hand
            x = x.float()
            return x + (x @ W.T + b - x @ R.T) @ R

        want = h.clone()
        for pos in (0, 4):
            want[:, pos] = loreft(h[:, pos]).to(h.dtype)
        _close_rows(cap[k], want, f"block {k}'s output with LoReFT at the first and last prompt tokens vs the formula")
        _close(R @ R.T, torch.eye(2), "R R^T (orthonormal rows)", atol=1e-5, rtol=0)
        # unequal prompts, left-padded, longer than a sliding window (the tiny models' is 8): the first
        # prompt token is the first attended one, not column 0, and the last is before the completion
        long_ids = _ids(model, batch=2, length=12, seed=12)
        attn = torch.ones_like(long_ids)
        attn[1, :3] = 0  # row 1: 3 pads, a 6-token prompt; row 0: a 9-token prompt
        comp = torch.zeros_like(long_ids)
        comp[:, -3:] = 1
        with torch.no_grad(), I.disabled(model), capture(model, [k]) as plain:
            model(input_ids=long_ids, attention_mask=attn)
        with torch.no_grad(), I.at_positions(model, attn, comp), capture(model, [k]) as cap:
            model(input_ids=long_ids, attention_mask=attn)
        h2 = plain[k]
        want = h2.clone()
        for row, pos in ((0, 0), (0, 8), (1, 3), (1, 8)):
            want[row, pos] = loreft(h2[row, pos]).to(h2.dtype)
        attended = attn.bool()
        _close_rows(cap[k][attended], want[attended],
                    f"block {k}'s output with LoReFT at the first and last prompt tokens of left-padded prompts of "
                    "9 and 6 tokens vs the formula")
        with torch.no_grad(), I.disabled(model), capture(model, [k]) as off:
            model(input_ids=ids)
        _close(off[k], h, "block output with LoReFT switched off vs the model", atol=0, rtol=0)
    finally:
        I.detach(model)
        for p in model.parameters():
            p.requires_grad_(True)
    return f"at block {k}"


def save_tiny(arch: str, folder, layers: int = 20, seed: int = 0) -> Path:
    """Save a tiny random ``arch`` model with the default model's tokenizer (its vocabulary and
    special tokens) as a local checkpoint that ``load_model(folder)`` and every command take: any
    architecture of the table, to try reprkit's API on without a download. 20 blocks by default, so
    the README's examples (layer 10) run on it unchanged but for the model name.

    >>> save_tiny("qwen3", "/tmp/tiny-qwen3"); model, tokenizer = load_model("/tmp/tiny-qwen3")  # doctest: +SKIP
    """
    from .models import default_tokenizer

    tokenizer = default_tokenizer()
    ids = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
               bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    _, overrides = ARCHITECTURES[arch_key(arch)]
    extra = {"num_hidden_layers": layers}
    if "n_layer" in overrides:  # GPT-2's own name for it
        extra["n_layer"] = layers
    if "layer_types" in overrides:  # hybrid attention: repeat the tiny pattern
        pattern = overrides["layer_types"]
        extra["layer_types"] = [pattern[i % len(pattern)] for i in range(layers)]
    model = tiny_model(arch, seed, **ids, **extra)
    folder = Path(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_copy(model):
    import copy

    return copy.deepcopy(model)


def _first_line(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}".strip().splitlines()[0]
    return text[:200]


def run_check(model, check: str) -> dict:
    """``{"status": "pass" | "fail" | "n/a", "reason": str}`` of one check on a model (left as it was)."""
    fn = globals()[f"check_{check}"]
    try:
        note = fn(tiny_copy(model) if check in ("lora", "steering", "stop", "interventions") else model)
        return {"status": "pass", "reason": note or ""}
    except NotApplicable as err:
        return {"status": "n/a", "reason": str(err)}
    except Exception as err:  # noqa: BLE001 - every failure is reported with its reason, never hidden
        return {"status": "fail", "reason": _first_line(err), "traceback": traceback.format_exc(limit=-3)}


def verify(archs=None, checks=None) -> dict[str, dict[str, dict]]:
    """Every check on every tiny architecture: ``{arch: {check: result}}``; a model that cannot
    be built fails every check with that reason."""
    out = {}
    for arch in archs or ARCHITECTURES:
        try:
            model = tiny_model(arch)
        except Exception as err:  # noqa: BLE001
            out[arch] = {c: {"status": "fail", "reason": f"building the model: {_first_line(err)}"} for c in checks or CHECKS}
            continue
        out[arch] = {c: run_check(model, c) for c in checks or CHECKS}
    return out


MARK = {"pass": "pass", "fail": "FAIL", "n/a": "n/a"}


def render(results: dict[str, dict[str, dict]]) -> str:
    """The support table as markdown, failures listed with their reasons below it."""
    checks = list(next(iter(results.values())))
    lines = ["# Supported models", "",
             "Generated by `python -m reprkit.verify --write docs/supported-models.md` (the checks are in",
             "`reprkit/verify.py`; `tests/test_architectures.py` runs them and fails where this page differs).",
             "Each architecture is a tiny random model built from transformers' own config class. `pass`: the",
             "check holds; `FAIL`: it does not, reason below; `n/a`: does not apply, reason below.", "",
             "| architecture | " + " | ".join(checks) + " |", "|---|" + "---|" * len(checks)]
    notes = []
    for arch, row in results.items():
        lines.append(f"| {arch} | " + " | ".join(MARK[row[c]["status"]] for c in checks) + " |")
        notes += [f"- **{arch}, {c}** ({MARK[row[c]['status']]}): {row[c]['reason']}" for c in checks
                  if row[c]["status"] != "pass"]
    if notes:
        lines += ["", "## Failures and exceptions", "", *notes]
    placed = [f"- **{arch}**: {row['lora']['reason'][len('LoRA in the last block on '):]}" for arch, row in results.items()
              if "lora" in row and row["lora"]["status"] == "pass" and row["lora"]["reason"]]
    where: dict[str, list[str]] = {}
    for arch, row in results.items():
        if "points" in row and row["points"]["status"] == "pass" and row["points"]["reason"]:
            where.setdefault(row["points"]["reason"], []).append(arch)
    if where:
        lines += ["", "## Where the points inside a block are", "",
                  "Found from each model's modules (`reprkit.points.block_layout(model).describe()`): the module "
                  "whose output is each branch as added to the residual stream, and what `resid_mid` reads.", "",
                  *[f"- {', '.join(archs)}: {reason}" for reason, archs in where.items()]]
    if placed:
        lines += ["", "## Where LoRA goes", "",
                  "reprkit's default adapter (`all-linear`, `--lora-target-modules` to change) in the last block. "
                  "Mixture-of-experts expert weights are adapted only where peft can wrap them (`mlp.experts`): "
                  "GPT-OSS's and Llama 4's experts are not, and a linear subclass whose forward does not return a "
                  "tensor (Llama 4's router) is left out.", "", *placed]
    return "\n".join(lines) + "\n"


def catch_table(archs=None, mutations=None) -> dict[str, dict[str, list[str]]]:
    """``{mutation: {arch: [checks that failed under it]}}``: every seeded bug of
    ``reprkit.mutations`` against every check, on the tiny architectures where it is a bug
    (``applies``), each check on a fresh model."""
    from .mutations import MUTATIONS, mutation

    out: dict[str, dict[str, list[str]]] = {}
    for name in mutations or MUTATIONS:
        out[name] = {}
        for arch in archs or ARCHITECTURES:
            if not MUTATIONS[name].applies(tiny_model(arch).config):
                continue
            with mutation(name):
                out[name][arch] = [c for c in CHECKS if run_check(tiny_model(arch), c)["status"] == "fail"]
    return out


def render_mutations(table: dict[str, dict[str, list[str]]]) -> str:
    """The seeded bugs (``reprkit.mutations``) and the checks that failed under each, per architecture
    where the bug applies: the section of the support page that says what a "pass" can see."""
    from .mutations import MUTATIONS

    lines = ["## What the checks catch", "",
             "A check counts once it fails on the bug it exists for. Each seeded bug below (`reprkit/mutations.py`) "
             "was run against every check on every architecture where it is a bug; `tests/test_mutations.py` "
             "requires the checks it names to fail. Generated by `python -m reprkit.verify --write "
             "docs/supported-models.md --mutations`.", ""]
    for name, by_arch in table.items():
        m = MUTATIONS[name]
        caught = {c: sum(c in fails for fails in by_arch.values()) for c in dict.fromkeys(c for f in by_arch.values() for c in f)}
        must = ", ".join(f"`{c}` {caught.get(c, 0)}/{len(by_arch)}" for c in m.caught_by)
        also = ", ".join(f"`{c}` {k}/{len(by_arch)}" for c, k in caught.items() if c not in m.caught_by)
        missed = [a for a, fails in by_arch.items() if not set(m.caught_by) <= set(fails)]
        where = "" if len(by_arch) == len(ARCHITECTURES) else f" (where it is a bug: {', '.join(by_arch)})"
        lines.append(f"- **{name}**: {m.what}. Caught by {must} architectures{where}" + (f"; also fails {also}" if also else "")
                     + (f"; NOT caught on {', '.join(missed)}" if missed else "") + ".")
    return "\n".join(lines) + "\n"


def parse_table(text: str) -> dict[str, dict[str, str]]:
    """``render``'s table read back: ``{arch: {check: "pass" | "fail" | "n/a"}}``."""
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| architecture")]
    header = next(line for line in text.splitlines() if line.startswith("| architecture"))
    checks = [c.strip() for c in header.strip("|").split("|")[1:]]
    back = {v: k for k, v in MARK.items()}
    out = {}
    for line in rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        out[cells[0]] = dict(zip(checks, (back[c] for c in cells[1:])))
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="check every reprkit capability on an architecture")
    p.add_argument("--arch", nargs="+", default=None, help=f"of {list(ARCHITECTURES)}")
    p.add_argument("--check", nargs="+", default=None, help=f"of {list(CHECKS)}")
    p.add_argument("--model", default=None, help="your own model (hub id or folder) instead of the tiny ones")
    p.add_argument("--write", default=None, help="write the markdown table here")
    p.add_argument("--mutations", action="store_true",
                   help="also run every seeded bug (reprkit.mutations) against every check and add what each catches")
    p.add_argument("--save-tiny", nargs=2, metavar=("ARCH", "FOLDER"), default=None,
                   help="save a tiny random ARCH model with the default tokenizer to FOLDER (load_model(FOLDER))")
    args = p.parse_args(argv)
    if args.save_tiny:
        folder = save_tiny(*args.save_tiny)
        print(f"a tiny random {args.save_tiny[0]} model in {folder}: load_model({str(folder)!r}) or --model {folder}")
        return
    try:
        archs = [arch_key(a) for a in args.arch] if args.arch else None
    except ValueError as err:
        p.error(str(err))
    unknown = sorted(set(args.check or ()) - set(CHECKS))
    if unknown:
        p.error(f"unknown check(s) {unknown}; choose from {list(CHECKS)}")
    if args.model:
        from .models import load_model

        model, _ = load_model(args.model)
        results = {args.model: {c: run_check(model, c) for c in args.check or CHECKS}}
    else:
        results = verify(archs, args.check)
    text = render(results)
    if args.mutations and not args.model:
        text += "\n" + render_mutations(catch_table(archs))
    if args.write:
        Path(args.write).parent.mkdir(parents=True, exist_ok=True)
        Path(args.write).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
