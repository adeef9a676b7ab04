"""Named points inside a decoder block, the same names on every architecture.

    resid_pre    the residual stream entering block i (block i - 1's output; the embeddings' for 0)
    attn_out     the attention branch as it is added to the residual stream
    resid_mid    the residual stream between attention and MLP: resid_pre + attn_out
    mlp_out      the MLP (or mixture-of-experts) branch as it is added to the residual stream
    resid_post   the residual stream leaving block i: layer i everywhere else in reprkit
    z            each head's output before the attention's output projection, [batch, seq, heads, head_dim]
    pattern      attention probabilities, [batch, heads, query, key] (eager attention only)

>>> with capture(model, "range(.3,-2)", point="attn_out") as cap:
...     model(**inputs)
>>> cap[10]                                  # [batch, seq, hidden]
>>> block_layout(model).describe()           # what each point is on this model

The points are found from the model's modules, not from a table per architecture: one short forward
(four tokens, stopped after the first block) records which child of the block runs as attention and
as MLP, which modules take their outputs before the residual add (Gemma 2/3's and OLMo2's
post-norms, Phi-3's and GPT-NeoX's dropouts), which module feeds the MLP (its pre-norm), whether the
MLP reads the block's input (a parallel block), the last projection the attention runs (its output
projection, whose input is ``z``), and the constant each branch is multiplied by before the add
(Granite's ``residual_multiplier``). ``attn_out`` and ``mlp_out`` include those post-norms and
multipliers, so that ``resid_pre + attn_out + mlp_out == resid_post`` on every additive block.

Where "after attention" needs saying:

- **Sandwich and post norms** (Gemma 2/3, OLMo2, GLM-4): ``attn_out`` is the post-attention norm's
  output, not the output projection's; ``resid_mid`` is what the pre-MLP norm (Gemma) or the MLP
  itself (OLMo2, which has none) reads.
- **Parallel blocks** (GPT-NeoX with ``use_parallel_residual``, Falcon, Cohere, Phi-1/2): attention
  and MLP both read the block's input, so no residual stream lies between them and ``resid_mid`` is
  refused; ``attn_out`` and ``mlp_out`` are still the two branches added to ``resid_pre``.
- **Scaled branches** (Granite): ``attn_out = residual_multiplier * attention output``.

Edits (``capture(..., point=p, edit_output=fn)``) change the point's value and everything after it;
``fn`` receives and returns the point's tensor (``[batch, seq, heads, head_dim]`` at ``z``). An edit
of ``resid_mid`` is applied as the change it makes, added to the attention branch, so the block's
own residual carries it. ``pattern`` can be read, not edited.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

POINTS = ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post", "z", "pattern")

_ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention")
_MLP_NAMES = ("mlp", "feed_forward", "block_sparse_moe", "ffn", "moe")

EAGER_FIX = ("load the model with attn_implementation='eager' (from_pretrained(..., attn_implementation='eager') "
             "or reprkit.models.load_model(..., attn_implementation='eager')), or call "
             "model.set_attn_implementation('eager')")


@dataclass(frozen=True)
class BlockLayout:
    """Where each point lives in a decoder block, as module names relative to the block."""

    attention: str
    """the attention module (its first output is the attention's output, its second the pattern)"""
    attn_added: str
    """the module whose output is the attention branch as added (the attention, or its post-norm / dropout)"""
    attn_scale: float
    """the constant the attention branch is multiplied by before the add (1.0 but on Granite)"""
    mlp: str
    mlp_added: str
    mlp_scale: float
    mlp_entry: str | None
    """the module whose input is ``resid_mid`` (the pre-MLP norm, or the MLP); None on a parallel block"""
    out_proj: str
    """the attention's output projection, relative to the block (``z`` is its input)"""
    heads: int
    head_dim: int
    parallel: bool
    additive: bool
    """``resid_pre + attn_out + mlp_out == resid_post`` held in the probe"""

    def describe(self) -> str:
        """One line per point: what it is on this architecture."""
        mid = (f"the input of {self.mlp_entry} (resid_pre + attn_out)" if not self.parallel else
               "refused: a parallel block (attention and MLP both read the block's input)")
        scale = lambda s: "" if s == 1.0 else f" x {s:g}"  # noqa: E731
        return "\n".join([
            "resid_pre    the block's input",
            f"attn_out     the output of {self.attn_added}{scale(self.attn_scale)}",
            f"resid_mid    {mid}",
            f"mlp_out      the output of {self.mlp_added}{scale(self.mlp_scale)}",
            "resid_post   the block's output",
            f"z            the input of {self.out_proj}, as [batch, seq, {self.heads}, {self.head_dim}]",
            f"pattern      the second output of {self.attention} (eager attention only)",
        ] + ([] if self.additive else ["note: resid_pre + attn_out + mlp_out did not give the block's output"]))


_LAYOUTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _hidden_of(value):
    """A module output's hidden states: the tensor, or the first element of a tuple (attention, MoE)."""
    return value if isinstance(value, torch.Tensor) else value[0]


class _ProbeDone(Exception):
    """Ends the probe's forward after the first block."""


def input_of(args, kwargs):
    """A module call's hidden-states input: the first positional tensor, else ``hidden_states=``."""
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    x = kwargs.get("hidden_states")
    if isinstance(x, torch.Tensor):
        return x
    return next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)


def _same(a, b) -> bool:
    """The same tensor object, or a tensor of the same storage, shape and offset (a view of it)."""
    return (a is not None and b is not None and a.shape == b.shape and a.data_ptr() == b.data_ptr())


def _scale(added: torch.Tensor, branch: torch.Tensor) -> float | None:
    """The constant c with ``branch == c * added`` (least squares, then checked), or None."""
    a, b = added.double().flatten(), branch.double().flatten()
    den = (a * a).sum()
    if den == 0:
        return None
    c = float((a * b).sum() / den)
    if (b - c * a).norm() > 1e-4 * b.norm().clamp_min(1e-12):
        return None
    return 1.0 if abs(c - 1.0) < 1e-5 else round(c, 6)


def block_layout(model: nn.Module, block_name: str | None = None) -> BlockLayout:
    """Find the points of ``model``'s decoder blocks (cached per model object). Raises ``ValueError``
    naming the block's children where it cannot tell attention from MLP."""
    cached = _LAYOUTS.get(model)
    if cached is not None:
        return cached
    layout = _probe(model, block_name)
    _LAYOUTS[model] = layout
    return layout


def _pick(children: dict[str, nn.Module], names: tuple[str, ...], cls_words: tuple[str, ...]) -> str | None:
    for n in names:
        if n in children:
            return n
    found = [n for n, m in children.items() if any(w in type(m).__name__.lower() for w in cls_words)]
    return found[0] if len(found) == 1 else None


def _probe(model: nn.Module, block_name: str | None) -> BlockLayout:
    from .devices import input_device
    from .layers import find_blocks

    _, blocks = find_blocks(model, block_name)
    block = blocks[0]
    children = dict(block.named_children())
    attention = _pick(children, _ATTENTION_NAMES, ("attention",))
    mlp = _pick(children, _MLP_NAMES, ("mlp", "moe", "feedforward", "experts"))
    if attention is None or mlp is None:
        raise ValueError(f"cannot tell the attention and the MLP apart in {type(block).__name__}: its children are "
                         f"{[f'{n} ({type(m).__name__})' for n, m in children.items()]}; named points need both")
    seen: dict[str, tuple] = {}  # child name -> (order, input, output): the tensors, for identity
    values: dict[str, tuple] = {}  # child name -> (input, output) copied at the time (Falcon adds in place later)
    projections: list[tuple[str, torch.Tensor, torch.Tensor]] = []
    handles = []

    def child_hook(name):
        def hook(module, args, kwargs, output):
            if name not in seen:
                i, o = input_of(args, kwargs), _hidden_of(output)
                seen[name] = (len(seen), i, o)
                values[name] = (None if i is None else i.clone(), o.clone())
        return hook

    def proj_hook(name):
        def hook(module, args, kwargs, output):
            out = output if isinstance(output, torch.Tensor) else _hidden_of(output)
            projections.append((name, input_of(args, kwargs), out))
        return hook

    def block_hook(module, args, kwargs, output):
        seen["<block>"] = (-1, input_of(args, kwargs), _hidden_of(output))
        values["<block>"] = (seen["<block>"][1].clone(), seen["<block>"][2].clone())
        raise _ProbeDone

    try:
        for n, m in children.items():
            handles.append(m.register_forward_hook(child_hook(n), with_kwargs=True))
        for n, m in children[attention].named_modules():
            if "lora_" in n or not n:  # a peft adapter's own layers; the wrapper stands for the projection
                continue
            wrapped = any(k == "base_layer" for k, _ in m.named_children())
            if wrapped or (not n.endswith("base_layer") and any(p.dim() == 2 for p in m.parameters(recurse=False))):
                handles.append(m.register_forward_hook(proj_hook(f"{attention}.{n}"), with_kwargs=True))
        handles.append(block.register_forward_hook(block_hook, with_kwargs=True))
        vocab = int(cast(Any, model).get_input_embeddings().weight.shape[0])
        ids = torch.arange(1, 5, device=input_device(model)).remainder(vocab).unsqueeze(0)
        try:
            with torch.no_grad():
                model(input_ids=ids, use_cache=False)
        except _ProbeDone:
            pass
    finally:
        for h in handles:
            h.remove()
    if "<block>" not in seen or attention not in seen or mlp not in seen:
        raise ValueError(f"the first block of {type(model).__name__} did not run its {attention} and {mlp} in a forward")
    _, x, y = seen["<block>"]
    ran = sorted((v[0], n) for n, v in seen.items() if n != "<block>")

    def added(start: str) -> str:
        """Follow the chain of children fed by ``start``'s output (post-norms, dropouts)."""
        name, visited = start, {attention, mlp}
        while True:
            out = seen[name][2]
            nxt = [n for _, n in ran if n not in visited and _same(seen[n][1], out)]
            if not nxt:
                return name
            name = nxt[0]
            visited.add(name)

    attn_added, mlp_added = added(attention), added(mlp)
    mlp_in, attn_in = seen[mlp][1], seen[attention][1]
    entry = mlp
    feeding = [n for _, n in ran if n not in (attention, mlp) and _same(seen[n][2], mlp_in)]
    if feeding:
        entry = feeding[0]
    entry_in = seen[entry][1]
    parallel = _same(entry_in, x) or _same(mlp_in, attn_in) or _same(entry_in, attn_in)
    (x, y), a, m = values["<block>"], values[attn_added][1], values[mlp_added][1]
    a, m = a.reshape(x.shape), m.reshape(x.shape)  # Llama 4's experts return [tokens, hidden]
    if parallel:
        attn_scale, mlp_scale = _parallel_scales(x, a, m, y)
    else:
        mid = values[entry][0]
        attn_scale = _scale(a, mid - x)
        mlp_scale = _scale(m, y - mid)
    additive = attn_scale is not None and mlp_scale is not None
    proj = projections[-1] if projections else None
    if proj is None:
        raise ValueError(f"no projection ran inside {attention} of {type(block).__name__}: cannot place z")
    heads = _num_heads(model)
    width = proj[1].shape[-1]
    if heads is None or width % heads:
        raise ValueError(f"the output projection {proj[0]} reads {width} features, which {heads} heads do not divide")
    return BlockLayout(attention=attention, attn_added=attn_added, attn_scale=attn_scale or 1.0, mlp=mlp,
                       mlp_added=mlp_added, mlp_scale=mlp_scale or 1.0, mlp_entry=None if parallel else entry,
                       out_proj=proj[0], heads=heads, head_dim=width // heads, parallel=parallel, additive=additive)


def _parallel_scales(x, a, m, y) -> tuple[float | None, float | None]:
    """``y - x == ca * a + cm * m``, solved by least squares and checked."""
    A = torch.stack([a.double().flatten(), m.double().flatten()], dim=1)
    b = (y - x).double().flatten()
    sol = torch.linalg.lstsq(A, b.unsqueeze(1)).solution.squeeze(1)
    if (A @ sol - b).norm() > 1e-4 * b.norm().clamp_min(1e-12):
        return None, None
    fix = lambda c: 1.0 if abs(c - 1.0) < 1e-5 else round(c, 6)  # noqa: E731
    return fix(float(sol[0])), fix(float(sol[1]))


def _num_heads(model) -> int | None:
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    for key in ("num_attention_heads", "n_head", "num_heads"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None


def point_modules(model: nn.Module, block: str, point: str, block_name: str | None = None) -> dict[str, str]:
    """The full module names a point's hooks go on, for the block named ``block``."""
    if point not in POINTS:
        raise ValueError(f"unknown point {point!r}; choose from {', '.join(POINTS)}")
    lay = block_layout(model, block_name)
    if point == "resid_mid" and lay.parallel:
        raise ValueError(f"{block} is a parallel block: attention and MLP both read the block's input, so no residual "
                         "stream lies between them; read resid_pre, attn_out or mlp_out instead")
    return {"block": block, "attention": f"{block}.{lay.attention}", "attn_added": f"{block}.{lay.attn_added}",
            "mlp_added": f"{block}.{lay.mlp_added}", "mlp_entry": f"{block}.{lay.mlp_entry}" if lay.mlp_entry else "",
            "out_proj": f"{block}.{lay.out_proj}"}


def head_outputs(model: nn.Module, layer: int, z: torch.Tensor, block_name: str | None = None) -> torch.Tensor:
    """Each head's contribution to the attention output at ``layer``: ``z`` (``[batch, seq, heads,
    head_dim]``, as captured at point ``"z"``) through the output projection one head at a time,
    ``[batch, seq, heads, out]``. They sum, with the projection's bias (``out_proj(0)``), to the
    projection's output; works for any affine projection (a peft-adapted one too)."""
    from .layers import find_blocks

    names, _ = find_blocks(model, block_name)
    proj = model.get_submodule(point_modules(model, names[layer], "z", block_name)["out_proj"])
    heads = z.shape[-2]
    eye = torch.eye(heads, dtype=z.dtype, device=z.device)
    alone = (z.unsqueeze(-3) * eye[:, :, None]).flatten(-2)  # [batch, seq, head, heads * head_dim]: one head kept
    return proj(alone) - proj(torch.zeros_like(alone[..., :1, :]))


__all__ = ["POINTS", "BlockLayout", "block_layout", "point_modules", "head_outputs", "EAGER_FIX"]
