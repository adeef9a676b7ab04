"""Capture, edit and stop at named modules with forward hooks.

The shape follows baukit's ``nethook`` (``Trace``, ``TraceDict``): context managers that own their
hooks and remove them in ``finally``. On top of that, ``capture`` resolves layer specs and returns
block outputs keyed by layer index, which is what the rest of reprkit uses.

>>> with TraceDict(model, ["model.layers.3", "model.layers.10"], stop=True) as ret:
...     model(**inputs)
>>> ret["model.layers.3"].output.shape  # [batch, seq, hidden]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn

from .layers import LayerSelection, select_layers
from .points import EAGER_FIX, POINTS, block_layout, input_of, point_modules

EditFn = Callable[[torch.Tensor, str], torch.Tensor]


class _StopForward(Exception):
    """Raised by a hook to end a forward early; only the context that raised it swallows it."""

    def __init__(self, owner: object):
        super().__init__("forward stopped after the last traced module")
        self.owner = owner


def _in_backward() -> bool:
    """True while autograd's engine runs a backward (e.g. recomputing a checkpointed block)."""
    return torch._C._current_graph_task_id() != -1


def _hidden(value):
    """The hidden-state tensor of a block output: the tensor itself (transformers 5) or tuple[0]."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    if hasattr(value, "last_hidden_state"):
        return value.last_hidden_state
    raise TypeError(f"cannot find a hidden-state tensor in a module output of type {type(value).__name__}")


def _replace_hidden(value, new: torch.Tensor):
    if isinstance(value, torch.Tensor):
        return new
    if isinstance(value, tuple):
        return (new, *value[1:])
    if isinstance(value, list):
        return [new, *value[1:]]
    raise TypeError(f"cannot edit a module output of type {type(value).__name__}")


def block_hidden(output) -> torch.Tensor:
    """The hidden states of a module's output (a tensor, a tuple's first item, or a model output's
    ``last_hidden_state``), for hooks written outside reprkit.hooks."""
    return _hidden(output)


def with_hidden(output, new: torch.Tensor):
    """``output`` with its hidden states replaced by ``new`` (the structure kept), what a forward
    hook returns to edit a block's output."""
    return _replace_hidden(output, new)


class Trace(AbstractContextManager):
    """Trace one module: keep its output (and input), optionally edit it or stop after it.

    >>> with Trace(model, "model.layers.3") as ret:
    ...     model(**inputs)
    >>> ret.output  # the block's hidden states, [batch, seq, hidden]

    - ``retain_output`` / ``retain_input``: keep the module's output / first input (hidden states,
      also when passed by keyword).
    - ``detach``: True (default) for analysis, the capture is cut from the graph; False for a loss,
      gradients flow from the capture back into the model (and its LoRA weights).
    - ``device`` / ``dtype``: move or cast the capture (analysis captures only).
    - ``clone``: copy the capture, in case later code modifies the tensor in place.
    - ``edit_output``: ``fn(hidden, name) -> hidden`` applied to the output's hidden states
      (see ``reprkit.edits``); runs also when a checkpointed block is recomputed.
    - ``stop``: end the forward right after this module ran; the context swallows the stop.
    """

    def __init__(
        self,
        module: nn.Module,
        name: str | None = None,
        *,
        retain_output: bool = True,
        retain_input: bool = False,
        detach: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        clone: bool = False,
        edit_output: EditFn | None = None,
        stop: bool = False,
    ):
        self.owner: Trace | TraceDict = self  # the TraceDict that holds it, else itself
        self.name = name or ""
        self.module = module if name is None else module.get_submodule(name)
        self.output: torch.Tensor | None = None
        self.input: torch.Tensor | None = None
        self.calls = 0
        self._opts: dict[str, Any] = dict(
            retain_output=retain_output,
            retain_input=retain_input,
            detach=detach,
            device=device,
            dtype=dtype,
            clone=clone,
            edit_output=edit_output,
        )
        if not detach and (device is not None or dtype is not None):
            raise ValueError("device/dtype apply to analysis captures; a loss capture (detach=False) stays put")
        self._stop = stop
        self._handle = None
        self._on_fire: Callable[[Trace], None] | None = None

    def _keep(self, t: torch.Tensor) -> torch.Tensor:
        o = self._opts
        if o["detach"]:
            t = t.detach()
            if o["device"] is not None or o["dtype"] is not None:
                t = t.to(device=o["device"], dtype=o["dtype"])
        if o["clone"]:
            t = t.clone()
        return t

    def _hook(self, module, args, kwargs, output):
        recompute = _in_backward()
        edit = self._opts["edit_output"]
        if edit is not None:
            new = edit(_hidden(output), self.name)
            output = _replace_hidden(output, new)
        if recompute:  # a checkpointed block being recomputed: the capture of this forward is kept
            return output if edit is not None else None
        self.calls += 1
        if self._opts["retain_input"]:
            x = args[0] if args else kwargs.get("hidden_states", next(iter(kwargs.values()), None))
            self.input = self._keep(_hidden(x))
        if self._opts["retain_output"]:
            self.output = self._keep(_hidden(output))
        self._fire()
        return output if edit is not None else None

    def __enter__(self):
        self._handle = self.module.register_forward_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close()
        return isinstance(exc, _StopForward) and exc.owner is self.owner

    def close(self):
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _fire(self) -> None:
        if self._on_fire is not None:
            self._on_fire(self)
        elif self._stop:
            raise _StopForward(self.owner)


class PointTrace(Trace):
    """Trace a named point inside one decoder block (``reprkit.points``): keep it, edit it, stop at it.

    The point's tensor is ``output`` (there is no ``input``); an edit gets and returns the point's
    tensor, ``[batch, seq, heads, head_dim]`` at ``z``. Options are those of ``Trace``.
    """

    def __init__(self, model: nn.Module, block: str, point: str, *, block_name: str | None = None, **options):
        if options.get("retain_input"):
            raise ValueError("a point has one tensor, kept as .output; retain_input applies to module traces")
        if point == "pattern" and options.get("edit_output") is not None:
            raise ValueError("attention patterns can be read, not edited: edit z or attn_out instead")
        super().__init__(model, block, **options)
        self.point = point
        self.name = f"{block}:{point}"
        self._names = point_modules(model, block, point, block_name)
        self._layout = block_layout(model, block_name)
        self._model = model
        self._handles: list = []
        self._pre: torch.Tensor | None = None  # resid_pre of this forward, for editing resid_mid

    def _retain(self, t: torch.Tensor) -> None:
        if _in_backward():  # a checkpointed block recomputed: keep this forward's capture
            return
        self.calls += 1
        if self._opts["retain_output"]:
            self.output = self._keep(t)
        self._fire()

    def _edit(self, t: torch.Tensor) -> torch.Tensor:
        edit = self._opts["edit_output"]
        return t if edit is None else edit(t, self.name)

    # -- the hooks, one kind per point
    def _resid_pre(self, module, args, kwargs):
        x = input_of(args, kwargs)
        if x is None:
            raise TypeError(f"{self._names['block']} was called without its hidden states")
        self._pre = x
        if self.point != "resid_pre":
            return None
        new = self._edit(x)
        self._retain(new)
        if new is x:
            return None
        if args and isinstance(args[0], torch.Tensor):
            return (new, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": new}

    def _branch(self, module, args, kwargs, output):
        raw = _hidden(output)
        a = raw.view(self._pre.shape) if self._pre is not None and raw.shape != self._pre.shape else raw  # Llama 4's experts: [tokens, hidden]
        c = self._layout.attn_scale if self.point in ("attn_out", "resid_mid") else self._layout.mlp_scale
        if self.point == "resid_mid":  # the change an edit of resid_mid makes, carried by the attention branch
            if self._opts["edit_output"] is None:
                return None
            mid = self._pre + c * a
            delta = self._edit(mid) - mid
            return _replace_hidden(output, (a + delta / c).view(raw.shape))
        v = a if c == 1.0 else c * a
        new = self._edit(v)
        # a copy: the block may add into its branch in place afterwards (Falcon's mlp_output += attention)
        self._retain(new.clone())
        if new is v:
            return None
        return _replace_hidden(output, (new if c == 1.0 else a + (new - v) / c).view(raw.shape))

    def _mid_entry(self, module, args, kwargs):
        self._retain(input_of(args, kwargs))

    def _z(self, module, args, kwargs):
        x = args[0] if args else kwargs["input"]
        z = x.unflatten(-1, (self._layout.heads, self._layout.head_dim))
        new = self._edit(z)
        self._retain(new)
        if new is z:
            return None
        flat = new.flatten(-2)
        return ((flat, *args[1:]), kwargs) if args else (args, {**kwargs, "input": flat})

    def _pattern(self, module, args, kwargs, output):
        w = output[1] if isinstance(output, (tuple, list)) and len(output) > 1 else None
        if w is None:
            raise ValueError(f"{self._names['attention']} computed no attention probabilities "
                             f"(attn_implementation={getattr(self._model.config, '_attn_implementation', None)!r}): {EAGER_FIX}")
        self._retain(w)

    def __enter__(self):
        get = self._model.get_submodule
        n, p = self._names, self.point
        hooks = []
        if p != "pattern":  # every point but the pattern needs the block's input (its shape, or resid_mid's edit)
            hooks.append(get(n["block"]).register_forward_pre_hook(self._resid_pre, with_kwargs=True))
        if p in ("attn_out", "resid_mid"):
            hooks.append(get(n["attn_added"]).register_forward_hook(self._branch, with_kwargs=True))
        if p == "mlp_out":
            hooks.append(get(n["mlp_added"]).register_forward_hook(self._branch, with_kwargs=True))
        if p == "resid_mid":
            hooks.append(get(n["mlp_entry"]).register_forward_pre_hook(self._mid_entry, with_kwargs=True))
        if p == "z":
            hooks.append(get(n["out_proj"]).register_forward_pre_hook(self._z, with_kwargs=True))
        if p == "pattern":
            hooks.append(get(n["attention"]).register_forward_hook(self._pattern, with_kwargs=True))
        self._handles = hooks
        return self

    def close(self):
        for h in self._handles:
            h.remove()
        self._handles = []


class TraceDict(dict, AbstractContextManager):
    """Trace several modules at once; a dict from module name to its ``Trace``.

    >>> with TraceDict(model, ["model.layers.3", "model.layers.10"], stop=True) as ret:
    ...     model(**inputs)
    >>> ret["model.layers.10"].output

    Options are those of ``Trace``; ``edit_output(hidden, name)`` is called for every module and
    ``stop=True`` ends the forward once every traced module has run (later layers and the LM head
    never run). Contexts nest: each swallows only its own stop.
    """

    def __init__(self, model: nn.Module, names: Iterable[str], *, stop: bool = False,
                 point: str = "resid_post", block_name: str | None = None, **options):
        super().__init__()
        self._stop = stop
        self._pending: set[str] = set()
        for name in names:
            key = name if point == "resid_post" else f"{name}:{point}"
            if key in self:
                continue
            trace = (Trace(model, name, **options) if point == "resid_post"
                     else PointTrace(model, name, point, block_name=block_name, **options))
            trace.owner = self
            trace._on_fire = self._fired
            self[key] = trace

    def _fired(self, trace: Trace) -> None:
        self._pending.discard(trace.name)
        if self._stop and not self._pending:
            raise _StopForward(self)

    def __enter__(self):
        self._pending = set(self)
        entered = []
        try:
            for trace in self.values():
                trace.__enter__()
                entered.append(trace)
        except BaseException:
            for trace in entered:
                trace.close()
            raise
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close()
        return isinstance(exc, _StopForward) and exc.owner is self

    def close(self):
        for trace in self.values():
            trace.close()


class Capture(TraceDict):
    """A ``TraceDict`` over decoder blocks that is also indexable by layer number.

    >>> with capture(model, [3, 10], stop=True) as cap:
    ...     model(**inputs)
    >>> cap[3], cap.hidden_states  # tensor; {3: tensor, 10: tensor}
    """

    _by_index: dict[int, str]
    """layer number -> its block's module name (set by ``capture``)"""

    selection: LayerSelection
    point: str = "resid_post"
    """the place in each block the capture traces (``reprkit.points``)"""

    def __getitem__(self, key):
        if isinstance(key, int):
            return super().__getitem__(self._by_index[key]).output
        return super().__getitem__(key)

    @property
    def hidden_states(self) -> dict[int, torch.Tensor]:
        """Captured block outputs keyed by layer index (modules inside blocks are not included)."""
        return {i: dict.__getitem__(self, name).output for i, name in self._by_index.items()}


def capture(
    model: nn.Module,
    layers,
    *,
    point: str = "resid_post",
    stop: bool = False,
    detach: bool = True,
    block_name: str | None = None,
    **options,
) -> Capture:
    """Trace the modules a layer spec selects (see ``reprkit.layers``) on ``model``.

    ``point`` picks where in each selected block (``reprkit.points``): ``"resid_post"`` (the block's
    output, the default), ``"resid_pre"``, ``"attn_out"``, ``"resid_mid"``, ``"mlp_out"``, ``"z"`` or
    ``"pattern"``; ``cap[i]`` is that point's tensor at layer ``i``, and ``edit_output`` edits it.
    ``stop=True`` ends the forward after the deepest selected layer: no later block and no LM head
    run, so the call inside the ``with`` block must be the last statement there (as in baukit).
    ``detach=False`` keeps captures in the graph for a loss.
    """
    if point not in POINTS:
        raise ValueError(f"unknown point {point!r}; choose from {', '.join(POINTS)}")
    selection = select_layers(model, layers, block_name=block_name)
    if point != "resid_post" and set(selection.names) != set(selection.block_names):
        others = [n for n in selection.names if n not in selection.block_names]
        raise ValueError(f"point={point!r} is a place inside decoder blocks; the spec {layers!r} also names "
                         f"module(s) {others[:3]}: give layers, or trace those modules with point='resid_post'")
    cap = Capture(model, selection.names, stop=stop, detach=detach, point=point, block_name=block_name, **options)
    cap.selection = selection
    cap.point = point
    suffix = "" if point == "resid_post" else f":{point}"
    cap._by_index = {i: f"{name}{suffix}" for i, name in zip(selection.indices, selection.block_names)}
    return cap


def forward_hidden_states(
    model: nn.Module,
    inputs: dict,
    layers,
    *,
    detach: bool = True,
    block_name: str | None = None,
    **options,
) -> dict[int, torch.Tensor]:
    """Run ``model(**inputs)`` only as far as the deepest layer in ``layers``; return its block outputs
    (or another ``point=`` of each block, ``reprkit.points``).

    The function form of ``capture(..., stop=True)``: later blocks and the LM head never run.
    """
    with capture(model, layers, stop=True, detach=detach, block_name=block_name, **options) as cap:
        model(**inputs, use_cache=False)
    missing = [i for i, h in cap.hidden_states.items() if h is None]
    if missing:
        raise RuntimeError(f"layers {missing} did not run in the forward of {type(model).__name__}")
    return cap.hidden_states
