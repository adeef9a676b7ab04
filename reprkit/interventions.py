"""What training changes, besides a LoRA adapter: a learnable steering vector per layer, or a
LoReFT intervention per layer, added to the residual stream with forward hooks.

An intervention is attached to a model in place (``attach``): its parameters become a submodule of
the model (``model.reprkit_intervention``), its hooks edit the outputs of the chosen decoder
blocks, and the base weights are frozen. The trainer treats it as it treats an adapter: the frozen
model is the model with the intervention switched off (``disabled()``), a loss sees the policy's
hidden states with the intervention on, and the forward still stops after the deepest layer the
loss reads (a vector deeper than that gets no gradient, and is refused by name).

>>> iv = attach(model, VectorIntervention.for_model(model, layers="0.5"))   # h + v at block 15
>>> with iv.disabled(): ...                                                 # the frozen model
>>> iv.save_pretrained("runs/x/adapter"); load(model, "runs/x/adapter")    # safetensors + json
>>> Direction.from_intervention(iv)                                         # a Direction: steer, GGUF

Formulas, per chosen layer ``k`` and each position the intervention acts at (``positions``):

- ``vector``: ``h' = h + m * a_k * v_k``, ``v_k`` learnt (zeros at the start), ``a_k`` a learnt
  scale (1 at the start) with ``scale=True``, else 1;
- ``reft`` (LoReFT, Wu et al. 2024): ``h' = h + m * R^T (W h + b - R h)`` with ``R`` ``[r, d]``
  orthonormal rows (``torch.nn.utils.parametrizations.orthogonal`` on its transpose, stored as
  pyreft stores it), ``W`` ``[r, d]`` and ``b`` ``[r]`` learnt; ``R`` and ``W`` start random, ``b``
  at 0, as in pyreft (so the start is not the identity).

``m`` is the intervention's multiplier (1; BiPO and RePS train with -1 too: ``scaled``).

Positions: ``"all"`` (every token, generated ones too), ``"prompt"``, ``"response"`` (the
completion's tokens, and every generated token), or pyreft's ``"f<k>+l<k>"`` (the first and/or last
``k`` prompt tokens: ``"f1+l1"``, ``"l1"``). Any but ``"all"`` needs the prompt / completion split of
the batch: reprkit's trainer, scoring and sampling give it (``at_positions``, ``generating``); a
forward without it is refused, naming the fix.
"""

from __future__ import annotations

import json
import re
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import cast

import torch
from torch import nn

from .hooks import block_hidden, with_hidden
from .layers import find_blocks, select_layers

ATTRIBUTE = "reprkit_intervention"
CONFIG_FILE, WEIGHTS_FILE = "intervention_config.json", "intervention.safetensors"
KINDS = ("lora", "vector", "reft")
_POSITIONS = re.compile(r"^(f(\d+))?(\+)?(l(\d+))?$")


def parse_positions(spec: str) -> tuple[str, int, int]:
    """``(kind, first, last)`` of a positions spec: ``("all"|"prompt"|"response", 0, 0)`` or
    ``("prompt_ends", f, l)`` for pyreft's ``"f<k>+l<k>"``."""
    if spec in ("all", "prompt", "response"):
        return spec, 0, 0
    m = _POSITIONS.match(spec or "")
    if not m or not (m.group(2) or m.group(5)) or (m.group(3) and not (m.group(2) and m.group(5))):
        raise ValueError(f"positions must be 'all', 'prompt', 'response' or pyreft's 'f<k>+l<k>' ('f1+l1', 'l3'), "
                         f"not {spec!r}")
    return "prompt_ends", int(m.group(2) or 0), int(m.group(5) or 0)


def position_mask(spec: str, attention_mask: torch.Tensor, completion_mask: torch.Tensor | None) -> torch.Tensor | None:
    """``[B, T]`` bool: where an intervention with positions ``spec`` acts on a batch (None: everywhere).
    The prompt is every attended token not in the completion."""
    kind, first, last = parse_positions(spec)
    if kind == "all":
        return None
    attended = attention_mask.bool()
    comp = torch.zeros_like(attended) if completion_mask is None else completion_mask.bool().to(attended.device)
    if kind == "response":
        return comp
    prompt = attended & ~comp
    if kind == "prompt":
        return prompt
    rank = prompt.long().cumsum(-1)  # 1..n on the prompt's tokens
    n = rank[:, -1:]
    return prompt & (((rank <= first) if first else torch.zeros_like(prompt)) | ((rank > n - last) if last else torch.zeros_like(prompt)))


class Intervention(nn.Module):
    """Per-layer edits of block outputs. Subclasses define ``edit_delta(k, h) -> delta`` (in float32)
    and ``config()``."""

    kind = ""

    def __init__(self, layers: list[int], hidden_size: int, positions: str = "all"):
        super().__init__()
        self._kind = parse_positions(positions)[0]  # parsed once, not in every hook call
        self.layers = sorted(int(k) for k in layers)
        if not self.layers:
            raise ValueError("an intervention needs at least one layer")
        self.hidden_size = int(hidden_size)
        self.positions = positions
        self.enabled = True
        self.multiplier = 1.0
        self._where: torch.Tensor | None = None  # [B, T] for the current forward
        self._set = False  # a position mask was given for the current forward(s)
        self._generating = False  # tokens beyond the mask are generated (response) tokens
        self._handles: list = []
        self.base_model_name = ""

    # ------------------------------------------------------------ what subclasses define
    def edit_delta(self, k: int, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def config(self) -> dict:
        return {"kind": self.kind, "layers": self.layers, "hidden_size": self.hidden_size, "positions": self.positions,
                "base_model": self.base_model_name}

    # ------------------------------------------------------------ applying it
    def edit(self, k: int, h: torch.Tensor) -> torch.Tensor:
        """The block output ``h`` of layer ``k`` with the intervention applied (as the hook does; not
        ``apply``, which ``nn.Module`` keeps for ``model.apply(fn)``)."""
        if not self.enabled or self.multiplier == 0:
            return h
        where = self._mask_for(h)
        delta = self.edit_delta(k, h.float()) * self.multiplier
        if where is not None:
            delta = delta * where.to(device=h.device, dtype=delta.dtype).unsqueeze(-1)
        return h + delta.to(h.dtype)

    def _mask_for(self, h: torch.Tensor) -> torch.Tensor | None:
        kind = self._kind
        if kind == "all":
            return None
        if not self._set:
            raise RuntimeError(
                f"this {self.kind} intervention acts at positions {self.positions!r}, so a forward needs the batch's "
                "prompt / completion split: run it inside reprkit.interventions.at_positions(model, attention_mask, "
                "completion_mask) (or generating(model, attention_mask) for generate), or train with positions 'all'")
        where = self._where
        if where is None:  # the call gave no mask: nothing is prompt, everything generated
            return torch.full(h.shape[:2], kind == "response", dtype=torch.bool, device=h.device)
        if where.shape[1] == h.shape[1] and where.shape[0] == h.shape[0]:
            return where
        if self._generating and where.shape[0] == h.shape[0]:  # a generated token: response, past the prompt
            return torch.full(h.shape[:2], kind == "response", dtype=torch.bool, device=h.device)
        raise RuntimeError(f"the position mask is {tuple(where.shape)} and the block output {tuple(h.shape[:2])}: "
                           "give the mask of the batch that runs")

    def _hook(self, k: int):
        def hook(module, args, output):
            return with_hidden(output, self.edit(k, block_hidden(output)))
        return hook

    @contextmanager
    def disabled(self):
        """The frozen model: every edit off for the block (restored after, also on error)."""
        was, self.enabled = self.enabled, False
        try:
            yield self
        finally:
            self.enabled = was

    @contextmanager
    def scaled(self, multiplier: float):
        was, self.multiplier = self.multiplier, float(multiplier)
        try:
            yield self
        finally:
            self.multiplier = was

    @contextmanager
    def at(self, where: torch.Tensor | None, generating: bool = False):
        saved = (self._where, self._set, self._generating)
        self._where, self._set, self._generating = where, True, generating
        try:
            yield self
        finally:
            self._where, self._set, self._generating = saved

    # ------------------------------------------------------------ saving
    def layer_to(self, k: int, device) -> None:
        """Move layer ``k``'s parameters and buffers (LoReFT's orthogonal parametrization keeps one) to
        ``device``, beside its block."""
        for child in self.children():
            if isinstance(child, nn.ModuleDict) and str(k) in child:
                child[str(k)].to(device)
            elif isinstance(child, nn.ParameterDict) and str(k) in child:
                p = child[str(k)]
                p.data = p.data.to(device)

    def save_pretrained(self, path) -> None:
        """``intervention.safetensors`` (the parameters) and ``intervention_config.json`` in ``path``."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({n: p.detach().cpu().contiguous() for n, p in self.state_dict().items()}, str(path / WEIGHTS_FILE))
        (path / CONFIG_FILE).write_text(json.dumps(self.config(), indent=2) + "\n")

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu().clone() for n, p in self.state_dict().items()}


class VectorIntervention(Intervention):
    """``h + m * a_k * v_k`` at each chosen layer ``k`` (``a_k`` learnt with ``scale=True``)."""

    kind = "vector"

    def __init__(self, layers: list[int], hidden_size: int, positions: str = "all", scale: bool = False):
        super().__init__(layers, hidden_size, positions)
        self.scale = bool(scale)
        self.vectors = nn.ParameterDict({str(k): nn.Parameter(torch.zeros(self.hidden_size)) for k in self.layers})
        self.scales = nn.ParameterDict({str(k): nn.Parameter(torch.ones(())) for k in self.layers}) if scale else None

    def vector(self, k: int) -> torch.Tensor:
        v = self.vectors[str(k)]
        return v * self.scales[str(k)] if self.scales is not None else v

    def edit_delta(self, k: int, h: torch.Tensor) -> torch.Tensor:
        return self.vector(k).to(device=h.device, dtype=h.dtype).expand_as(h)

    def config(self) -> dict:
        return {**super().config(), "scale": self.scale}

    @classmethod
    def for_model(cls, model, layers="0.5", **kwargs) -> VectorIntervention:
        return cls(list(select_layers(model, layers).indices), hidden_size_of(model), **kwargs)


class LoReFTIntervention(Intervention):
    """LoReFT: ``h + m * R^T (W h + b - R h)``, ``R`` with orthonormal rows, rank ``r``, per chosen layer."""

    kind = "reft"

    def __init__(self, layers: list[int], hidden_size: int, positions: str = "f1+l1", rank: int = 4):
        super().__init__(layers, hidden_size, positions)
        if not 1 <= rank <= hidden_size:
            raise ValueError(f"--reft.rank must be in [1, {hidden_size}] (the hidden size), not {rank}")
        self.rank = int(rank)
        self.rotate = nn.ModuleDict()
        self.source = nn.ModuleDict()
        for k in self.layers:
            r = nn.Linear(self.hidden_size, self.rank, bias=False)  # weight [r, d] ~ pyreft's [d, r] transposed
            torch.nn.init.orthogonal_(r.weight)
            self.rotate[str(k)] = torch.nn.utils.parametrizations.orthogonal(r)
            source = nn.Linear(self.hidden_size, self.rank)
            torch.nn.init.zeros_(source.bias)
            self.source[str(k)] = source

    def R(self, k: int) -> torch.Tensor:
        """``[r, d]`` with orthonormal rows."""
        return cast(torch.Tensor, self.rotate[str(k)].weight)

    def edit_delta(self, k: int, h: torch.Tensor) -> torch.Tensor:
        R = self.R(k).to(device=h.device, dtype=h.dtype)
        src = cast(nn.Linear, self.source[str(k)])
        W, b = src.weight.to(device=h.device, dtype=h.dtype), src.bias.to(device=h.device, dtype=h.dtype)
        return (h @ W.T + b - h @ R.T) @ R

    def config(self) -> dict:
        return {**super().config(), "rank": self.rank}

    @classmethod
    def for_model(cls, model, layers="0.5", **kwargs) -> LoReFTIntervention:
        return cls(list(select_layers(model, layers).indices), hidden_size_of(model), **kwargs)


CLASSES = {"vector": VectorIntervention, "reft": LoReFTIntervention}


def hidden_size_of(model) -> int:
    cfg = getattr(model, "config", None)
    cfg = getattr(cfg, "get_text_config", lambda: cfg)() if cfg is not None else None
    size = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", None) or getattr(cfg, "d_model", None)
    if size is None:
        raise ValueError("cannot tell the model's hidden size from its config (hidden_size / n_embd / d_model)")
    return int(size)


# ---------------------------------------------------------------- attaching to a model


def attached(model) -> Intervention | None:
    """The intervention attached to ``model`` (through wrappers such as accelerate's), or None."""
    iv = getattr(model, ATTRIBUTE, None)
    if iv is None and hasattr(model, "module"):  # DDP-style wrappers
        iv = getattr(model.module, ATTRIBUTE, None)
    return iv if isinstance(iv, Intervention) else None


def attach(model, intervention: Intervention, block_name: str | None = None) -> Intervention:
    """Attach ``intervention`` to ``model`` in place: a submodule (so ``parameters()``, ``.to()`` and
    the optimiser see it), hooks on its layers' blocks, each layer's parameters on its block's device,
    and the base weights frozen. Refuses a model that already has an adapter or an intervention."""
    if getattr(model, "peft_config", None):
        raise ValueError(f"the model has LoRA adapter(s) {list(model.peft_config)}: train an intervention on the base "
                         "model (one trained thing at a time)")
    if (present := attached(model)) is not None:
        raise ValueError(f"the model already carries a {present.kind} intervention: detach(model) it first")
    names, blocks = find_blocks(model, block_name)
    bad = [k for k in intervention.layers if not 0 <= k < len(blocks)]
    if bad:
        raise ValueError(f"layers {bad} are not among the model's {len(blocks)} blocks (0..{len(blocks) - 1})")
    size = hidden_size_of(model)
    if size != intervention.hidden_size:
        raise ValueError(f"the intervention is for hidden size {intervention.hidden_size} and the model's is {size}: "
                         "it was trained on another model")
    intervention.base_model_name = intervention.base_model_name or str(getattr(model.config, "name_or_path", "") or "")
    for p in model.parameters():
        p.requires_grad_(False)
    model.add_module(ATTRIBUTE, intervention)
    for k in intervention.layers:
        param = next(blocks[k].parameters(), None)
        if param is not None and param.device.type != "meta":  # under a device_map: beside its block
            intervention.layer_to(k, param.device)
        intervention._handles.append(blocks[k].register_forward_hook(intervention._hook(k)))
    for p in intervention.parameters():
        p.requires_grad_(True)
    return intervention


def detach(model) -> Intervention | None:
    """Remove the attached intervention's hooks and submodule; returns it (None: there was none)."""
    iv = attached(model)
    if iv is None:
        return None
    for h in iv._handles:
        h.remove()
    iv._handles.clear()
    delattr(model, ATTRIBUTE)
    return iv


def load(model, path, block_name: str | None = None) -> Intervention:
    """An intervention saved by ``save_pretrained`` (or a run's ``adapter/``), attached to ``model``."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{path} has no {CONFIG_FILE}: not a saved intervention (a LoRA adapter loads with "
                                "peft.PeftModel.from_pretrained)")
    cfg = json.loads((path / CONFIG_FILE).read_text())
    kind = cfg.get("kind")
    if kind not in CLASSES:
        raise ValueError(f"{path / CONFIG_FILE} names intervention kind {kind!r}; known: {sorted(CLASSES)}")
    extra = {"scale": cfg.get("scale", False)} if kind == "vector" else {"rank": cfg["rank"]}
    iv = CLASSES[kind](cfg["layers"], cfg["hidden_size"], positions=cfg.get("positions", "all"), **extra)
    iv.load_state_dict(load_file(str(path / WEIGHTS_FILE)))
    iv.base_model_name = cfg.get("base_model", "")
    return attach(model, iv, block_name)


def is_saved_intervention(path) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


# ---------------------------------------------------------------- contexts the trainer and scoring use


def disabled(model):
    """The intervention of ``model`` off for the block (a no-op without one)."""
    iv = attached(model)
    return iv.disabled() if iv is not None else nullcontext()


@contextmanager
def scaled(model, multiplier: float):
    """The trained thing's edit times ``multiplier`` for the block: an intervention's multiplier, or a
    LoRA adapter's scale (peft's ``rescale_adapter_scale``: ``W + multiplier * BA``)."""
    iv = attached(model)
    if multiplier == 1.0:
        yield model
    elif iv is not None:
        with iv.scaled(multiplier):
            yield model
    elif getattr(model, "peft_config", None):
        from peft.helpers import rescale_adapter_scale

        with rescale_adapter_scale(model, multiplier):
            yield model
    else:
        raise ValueError("the model has neither an adapter nor an intervention to scale")


def at_positions(model, attention_mask: torch.Tensor, completion_mask: torch.Tensor | None):
    """Tell the attached intervention the batch's prompt / completion split (a no-op without one, or
    for positions ``'all'``)."""
    iv = attached(model)
    if iv is None or iv.positions == "all":
        return nullcontext()
    return iv.at(position_mask(iv.positions, attention_mask, completion_mask))


def generating(model, attention_mask: torch.Tensor):
    """For ``generate``: the prompt is ``attention_mask``'s tokens, every later token a response token."""
    iv = attached(model)
    if iv is None or iv.positions == "all":
        return nullcontext()
    return iv.at(position_mask(iv.positions, attention_mask, None), generating=True)
