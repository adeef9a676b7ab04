"""Seeded bugs that ``reprkit.verify``'s checks must catch: a check counts only once it has been
seen to fail on the bug it exists for.

>>> with mutation("response_positions_off_by_one"):
...     run_check(tiny_model("gemma3"), "shared_prompt")["status"]     # 'fail'

Each mutation patches one piece of reprkit for the duration of the ``with`` (``unittest.mock``),
and names the checks that must fail under it (``MUTATIONS[name].caught_by``) and the architectures
it is a bug on (``applies``: right-padded prompts are wrong only where a sliding window counts
cache slots; a head without softcapping only where the model softcaps). ``verify.catch_table`` runs
every mutation against every check and is published beside the support table
(``docs/supported-models.md``); ``tests/test_mutations.py`` requires each listed check to fail.

About 460 lines on purpose: one patch per seeded bug, and the registry below reads as the list of
what the support table's checks have been seen to catch.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from unittest import mock

import torch


@dataclasses.dataclass(frozen=True)
class Mutation:
    """A seeded bug: what it breaks, the patch that breaks it, the checks that must catch it."""

    what: str
    patch: Callable[[], contextlib.AbstractContextManager]
    caught_by: tuple[str, ...]
    applies: Callable[[object], bool] = lambda config: True
    """on which architectures (by config) this is a bug at all"""


def _sliding(config) -> bool:
    return bool(getattr(config, "sliding_window", None)) and any(
        t == "sliding_attention" for t in (getattr(config, "layer_types", None) or ["sliding_attention"]))


def _scaled_head(config) -> bool:
    return bool(getattr(config, "final_logit_softcapping", None)) or (
        config.model_type.startswith(("cohere", "granite")))


# ---------------------------------------------------------------- the patches


@contextlib.contextmanager
def _blocks_one_short():
    import reprkit.layers as L

    real = L.find_blocks

    def short(model, block_name=None):
        names, blocks = real(model, block_name)
        return names[:-1], blocks[:-1]

    with mock.patch.object(L, "find_blocks", short):
        yield


def _blocks_rotated_in(module):
    """``module.find_blocks`` giving block i + 1 as block i (the last wraps to block 0)."""
    real = module.find_blocks

    def rotated(model, block_name=None):
        names, blocks = real(model, block_name)
        return names[1:] + names[:1], blocks[1:] + blocks[:1]

    return mock.patch.object(module, "find_blocks", rotated)


@contextlib.contextmanager
def _layers_off_by_one():
    """Layer i is block i + 1 (the last wraps to block 0)."""
    import reprkit.layers as L

    with _blocks_rotated_in(L):
        yield


@contextlib.contextmanager
def _stop_ignored():
    import reprkit.hooks as H

    with mock.patch.object(H.TraceDict, "_fired", lambda self, trace: self._pending.discard(trace.name)):
        yield


@contextlib.contextmanager
def _edit_mask_ignored():
    import reprkit.edits as E

    def unmasked(fn, mask):
        return lambda h, name="": fn(h).to(h.dtype)

    with mock.patch.object(E, "_masked", unmasked):
        yield


@contextlib.contextmanager
def _edit_mask_one_off():
    """An edit's mask applied one position early (the last real token's edit lands on the one before)."""
    import reprkit.edits as E

    real = E._masked

    def early(fn, mask):
        return real(fn, None if mask is None else mask.roll(-1, dims=-1))

    with mock.patch.object(E, "_masked", early):
        yield


@contextlib.contextmanager
def _last_token_from_the_left():
    import reprkit.geometry as G

    def from_left(mask):
        n = mask.sum(-1, keepdim=True)
        return mask * (torch.arange(mask.shape[-1], device=mask.device) == n - 1)

    with mock.patch.object(G, "last_token", from_left):
        yield


@contextlib.contextmanager
def _edit_skipped_when_decoding():
    """An edit applied to the prompt's forward but not to the one-token forwards of cached decoding."""
    import reprkit.hooks as H

    real = H._replace_hidden

    def skip(value, new):
        return value if new.shape[-2] == 1 else real(value, new)

    with mock.patch.object(H, "_replace_hidden", skip):
        yield


@contextlib.contextmanager
def _lens_without_final_norm():
    import reprkit.lens as LE

    with mock.patch.object(LE, "final_norm", lambda model: torch.nn.Identity()):
        yield


@contextlib.contextmanager
def _head_unscaled():
    """The LM head without the architecture's logit scale or softcap."""
    import reprkit.logits as LO

    def plain(model, final_hidden):
        return LO.unwrap(model).get_output_embeddings()(final_hidden).float()

    with mock.patch.object(LO, "head_logits", plain):
        yield


@contextlib.contextmanager
def _lora_skips_last_block():
    """The adapter's layers in the last block unwrapped back to their base layers after placement."""
    import peft

    from reprkit.layers import find_blocks

    real = peft.get_peft_model

    def without_last(model, config, *args, **kwargs):
        wrapped = real(model, config, *args, **kwargs)
        names, _ = find_blocks(wrapped)
        modules = dict(wrapped.named_modules())
        for name in sorted((n for n in modules if n.startswith(names[-1] + ".") and hasattr(modules[n], "lora_A")),
                           key=lambda n: -n.count(".")):  # innermost first
            parent, _, child = name.rpartition(".")
            setattr(modules[parent], child, modules[name].get_base_layer())
        return wrapped

    with mock.patch.object(peft, "get_peft_model", without_last):
        yield


@contextlib.contextmanager
def _policy_without_grad():
    import reprkit.train as T

    real = T.forward_pair_batch

    def frozen(*args, **kwargs):
        with torch.no_grad():
            return real(*args, **kwargs)

    with mock.patch.object(T, "forward_pair_batch", frozen):
        yield


@contextlib.contextmanager
def _response_positions_off_by_one():
    import reprkit.shared_prompt as S

    real = S.run_responses

    def shifted(model, prompts, *args, **kwargs):
        return real(model, dataclasses.replace(prompts, lengths=prompts.lengths + 1), *args, **kwargs)

    with mock.patch.object(S, "run_responses", shifted):
        yield


@contextlib.contextmanager
def _prompts_right_padded():
    """What reprkit did before: prompts right-padded, so padding sits between a short prompt and its
    responses and uses up sliding-window slots (positions and the last prompt token kept right)."""
    import reprkit.shared_prompt as S

    real = S.run_prompts

    def right(model, ids, mask, lengths, **kwargs):
        width = ids.shape[1]
        shift = (torch.arange(width, device=ids.device)[None] + (width - lengths)[:, None]) % width
        r_ids, r_mask = ids.gather(1, shift), mask.gather(1, shift)
        want_last = kwargs.pop("last", False)
        out = real(model, r_ids, r_mask, lengths, last=False, **kwargs)
        if want_last:
            h = model(input_ids=r_ids, attention_mask=r_mask, position_ids=(r_mask.cumsum(-1) - 1).clamp_min(0),
                      use_cache=False, output_hidden_states=True, logits_to_keep=1).hidden_states[-1]
            out.last = h[torch.arange(len(lengths), device=h.device), (lengths - 1).to(h.device)]
        return out

    with mock.patch.object(S, "run_prompts", right):
        yield


@contextlib.contextmanager
def _prompt_padding_attended():
    import reprkit.shared_prompt as S

    real = S.run_responses

    def attend_all(model, prompts, *args, **kwargs):
        return real(model, dataclasses.replace(prompts, mask=torch.ones_like(prompts.mask)), *args, **kwargs)

    with mock.patch.object(S, "run_responses", attend_all):
        yield


@contextlib.contextmanager
def _cache_of_other_rows():
    import reprkit.shared_prompt as S

    real = S._rows_of

    def other(cache, index):
        n = next((layer.keys.shape[0] for layer in getattr(cache, "layers", []) if getattr(layer, "keys", None) is not None), 1)
        return real(cache, (index + 1) % n)

    with mock.patch.object(S, "_rows_of", other):
        yield


@contextlib.contextmanager
def _cache_under_the_old_keyword():
    """The KV cache passed under a keyword the installed transformers does not take (``cache`` before
    5.24, ``past_key_values`` after a rename): it vanishes into ``**kwargs``, unused."""
    import reprkit.shared_prompt as S

    with mock.patch.object(S, "cache_kwargs", lambda model, cache: {"kv_cache_unknown": cache}):
        yield


@contextlib.contextmanager
def _reference_cache_other_pair():
    import reprkit.frozen_cache as R

    real = R.ReferenceCache.batch

    def other(self, index, completion_mask, device=None):
        return real(self, index.flip(0), completion_mask, device)

    with mock.patch.object(R.ReferenceCache, "batch", other):
        yield


@contextlib.contextmanager
def _reference_cache_of_the_policy():
    import reprkit.frozen_cache as R

    with mock.patch.object(R, "adapter_disabled", lambda model: contextlib.nullcontext()):
        yield


@contextlib.contextmanager
def _steer_changed(before=None, after=None):
    """``steering.steered`` with ``before(direction) -> direction`` applied on entry and
    ``after(model, direction, strength)`` run on exit."""
    import reprkit.steering as ST

    real = ST.steered

    @contextlib.contextmanager
    def changed(model, direction, strength, layers=None, mask=None, block_name=None, point="resid_post"):
        with real(model, before(direction) if before else direction, strength, layers, mask, block_name, point) as cap:
            yield cap
        if after:
            after(model, direction, strength)

    with mock.patch.object(ST, "steered", changed):
        yield


def _steer_wrong_layer_vector():
    def rotated(direction):
        keys = sorted(direction.vectors)
        return dataclasses.replace(direction, vectors={k: direction.vectors[keys[(i + 1) % len(keys)]]
                                                       for i, k in enumerate(keys)})

    return _steer_changed(before=rotated)


def _steer_not_undone():
    def linger(model, direction, strength):  # the first layer's edit left on the block
        from reprkit.layers import find_blocks

        _, blocks = find_blocks(model)
        k = sorted(direction.vectors)[0]
        v = direction.vectors[k] * (strength[k] if isinstance(strength, dict) else strength)
        blocks[k].register_forward_hook(lambda m, a, o: (o[0] + v.to(o[0]), *o[1:]) if isinstance(o, tuple) else o + v.to(o))

    return _steer_changed(after=linger)


@contextlib.contextmanager
def _point_one_module_off():
    """attn_out read one module downstream: at the MLP side's entry (its pre-norm), not the branch."""
    import weakref

    import reprkit.points as P

    real = P._probe

    def off(model, block_name):
        lay = real(model, block_name)
        return dataclasses.replace(lay, attn_added=lay.mlp_entry or lay.mlp)

    with mock.patch.object(P, "_probe", off), mock.patch.object(P, "_LAYOUTS", weakref.WeakKeyDictionary()):
        yield


@contextlib.contextmanager
def _head_axis_transposed():
    """z unflattened as [head_dim, heads] and transposed: each 'head' takes every heads-th feature."""
    import reprkit.hooks as H

    def transposed(self, module, args, kwargs):
        x = args[0]
        z = x.unflatten(-1, (self._layout.head_dim, self._layout.heads)).transpose(-1, -2)
        new = self._edit(z)
        self._retain(new)
        return None if new is z else ((new.transpose(-1, -2).flatten(-2), *args[1:]), kwargs)

    with mock.patch.object(H.PointTrace, "_z", transposed):
        yield


@contextlib.contextmanager
def _point_edit_not_undone():
    import reprkit.hooks as H

    with mock.patch.object(H.PointTrace, "close", lambda self: None):
        yield


@contextlib.contextmanager
def _intervention_one_block_late():
    """An intervention's hook on block k + 1 instead of block k (the last wraps to block 0)."""
    import reprkit.interventions as I

    with _blocks_rotated_in(I):
        yield


@contextlib.contextmanager
def _intervention_positions_ignored():
    import reprkit.interventions as I

    with mock.patch.object(I.Intervention, "_mask_for", lambda self, h: None):
        yield


@contextlib.contextmanager
def _intervention_padding_counted():
    """An intervention's positions counted from column 0, pads included (so "the first prompt token"
    of a left-padded row is a pad)."""
    import reprkit.interventions as I

    real = I.position_mask
    with mock.patch.object(I, "position_mask", lambda spec, attn, comp: real(spec, torch.ones_like(attn), comp)):
        yield


MUTATIONS: dict[str, Mutation] = {
    "blocks_one_short": Mutation("the last decoder block not found", _blocks_one_short, ("blocks",)),
    "layers_off_by_one": Mutation("layer i resolves to block i + 1", _layers_off_by_one, ("capture", "stop")),
    "stop_ignored": Mutation("stop=True runs every block", _stop_ignored, ("stop",)),
    "edit_mask_ignored": Mutation("an edit's position mask ignored", _edit_mask_ignored, ("edits",)),
    "edit_mask_one_off": Mutation("an edit's position mask one position early", _edit_mask_one_off, ("edits",)),
    "last_token_from_the_left": Mutation("each row's last real token counted from the left (wrong under left padding)",
                                         _last_token_from_the_left, ("left_padding",)),
    "point_one_module_off": Mutation("attn_out read one module off (at the MLP side's entry)", _point_one_module_off,
                                     ("points",)),
    "head_axis_transposed": Mutation("z's head axis transposed with head_dim", _head_axis_transposed, ("heads",)),
    "point_edit_not_undone": Mutation("an edit at a point left on after its context", _point_edit_not_undone,
                                      ("point_edits",)),
    "edit_skipped_when_decoding": Mutation("edits skipped on the one-token forwards of cached generation",
                                           _edit_skipped_when_decoding, ("generate",)),
    "lens_without_final_norm": Mutation("the logit lens skips the final norm", _lens_without_final_norm,
                                        ("logit_lens",)),
    "head_unscaled": Mutation("the LM head without the model's logit scale or softcap", _head_unscaled,
                              ("logit_lens",), _scaled_head),
    "lora_skips_last_block": Mutation("LoRA left off the last block", _lora_skips_last_block, ("lora",)),
    "policy_without_grad": Mutation("the policy pass of training runs without grad", _policy_without_grad,
                                    ("losses",)),
    "response_positions_off_by_one": Mutation("responses read one position off", _response_positions_off_by_one,
                                              ("shared_prompt",)),
    "prompts_right_padded": Mutation("prompts right-padded: padding uses sliding-window slots",
                                     _prompts_right_padded, ("shared_prompt",), _sliding),
    "prompt_padding_attended": Mutation("the prompts' padding attended to (mask ignored)", _prompt_padding_attended,
                                        ("shared_prompt",)),
    "cache_of_other_rows": Mutation("responses run on another item's prompt cache", _cache_of_other_rows,
                                    ("shared_prompt",)),
    "cache_under_an_unknown_keyword": Mutation("the prompt cache passed under a keyword the model's forward does not "
                                               "take (transformers renamed it in 5.24): silently unused",
                                               _cache_under_the_old_keyword, ("shared_prompt",)),
    "reference_cache_other_pair": Mutation("the frozen-model cache returns another pair's states",
                                           _reference_cache_other_pair, ("reference_cache",)),
    "reference_cache_of_the_policy": Mutation("the frozen-model cache built with the adapter on",
                                              _reference_cache_of_the_policy, ("reference_cache",)),
    "steer_wrong_layer_vector": Mutation("steering adds another layer's vector", _steer_wrong_layer_vector,
                                         ("steering",)),
    "steer_not_undone": Mutation("steering left on after its context", _steer_not_undone, ("steering",)),
    "intervention_one_block_late": Mutation("a trained intervention's hook on the next block",
                                            _intervention_one_block_late, ("interventions",)),
    "intervention_positions_ignored": Mutation("a trained intervention applied at every position, not its own",
                                               _intervention_positions_ignored, ("interventions",)),
    "intervention_padding_counted": Mutation("a trained intervention's positions counted with the pads",
                                             _intervention_padding_counted, ("interventions",)),
}


@contextlib.contextmanager
def mutation(name: str):
    """The named seeded bug, for the duration of the ``with``."""
    if name not in MUTATIONS:
        raise ValueError(f"unknown mutation {name!r}; choose from {sorted(MUTATIONS)}")
    with MUTATIONS[name].patch():
        yield MUTATIONS[name]
