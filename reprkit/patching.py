"""Activation patching: run a corrupted prompt with one activation taken from a clean run, and see how
much of the clean behaviour comes back; swept over points, layers, positions and heads.

>>> res = patch(model, tokenizer, "The Eiffel Tower is in the city of", "The Colosseum is in the city of",
...             answers=(" Paris", " Rome"), points=("resid_pre", "attn_out", "mlp_out"))
>>> res.values["resid_pre"]        # [layers, positions]: the metric with that one activation patched
>>> res.normalised()["resid_pre"]  # 0 = the corrupted run's metric, 1 = the clean run's
>>> res.figure("resid_pre")        # a plotly heatmap (the figures extra)
>>> attribute(model, tokenizer, clean, corrupt, answers=(" Paris", " Rome"))   # the gradient approximation

The rule (what is scored, how):

- **metric**: by default the logit difference ``logit(correct) - logit(wrong)`` at the last position,
  for ``answers=(correct, wrong)`` (one token each; refused otherwise); any ``metric(logits) -> [batch]``
  may be passed instead. With a batch of prompt pairs, the mean over the batch.
- **patching** (``patch``): for each point, layer and position (and head, at ``z`` with ``heads=True``)
  the corrupted run is repeated with that one activation replaced by the clean run's at the same
  place (``reprkit.points`` names the places; edits never change a tensor in place). ``positions=
  "all"`` patches every position at once (one column); a list (``[-1]``) patches only those.
- **positions** pair one for one, so clean and corrupted prompts must have the same number of
  tokens; ``align="end"`` pairs them from the end instead (position -1 with -1, ...), over the
  shorter prompt's length. Unequal lengths are refused otherwise, naming both lengths.
- **attribution** (``attribute``): the first-order estimate of the same sweep from one forward and
  one backward of the corrupted run, ``(clean - corrupted) . d metric / d activation`` at each place
  (Nanda's attribution patching). It agrees with exact patching where the metric is near linear in
  the activation; ``tests/test_patching.py`` measures how far on a tiny model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .devices import input_device
from .hooks import capture
from .layers import block_indices
from .points import POINTS

Metric = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Patching:
    """A patching sweep's result: ``values[point]`` is ``[layers, positions]`` (``[layers, positions,
    heads]`` at ``z`` with heads), the metric with that place patched (``method="exact"``) or its
    attribution estimate (``"attribution"``, a change from the corrupted run's metric)."""

    values: dict[str, torch.Tensor]
    layers: list[int]
    positions: list[int]
    tokens: list[str]
    clean: float
    corrupt: float
    method: str
    rule: str
    heads: bool = False
    extra: dict = field(default_factory=dict)

    def normalised(self) -> dict[str, torch.Tensor]:
        """0 at the corrupted run's metric, 1 at the clean run's (an attribution estimate is a change,
        so it is divided by ``clean - corrupt`` alone)."""
        gap = self.clean - self.corrupt
        if abs(gap) < 1e-12:
            raise ValueError("the clean and corrupted runs give the same metric: nothing to recover")
        base = 0.0 if self.method == "attribution" else self.corrupt
        return {p: (v - base) / gap for p, v in self.values.items()}

    def figure(self, point: str | None = None, normalised: bool = True, head: int | None = None):
        """A plotly heatmap of one point (layers down, positions across; at ``z`` with heads, one head
        or the heads across at a position sum)."""
        from .extras import require

        go = require("plotly.graph_objects", "figures")
        point = point or next(iter(self.values))
        v = (self.normalised() if normalised else self.values)[point]
        x = [f"{p}: {t}" for p, t in zip(self.positions, self.tokens)]
        if v.dim() == 3:
            v, x = (v[..., head], x) if head is not None else (v.sum(1), [f"head {h}" for h in range(v.shape[-1])])
        fig = go.Figure(go.Heatmap(z=v.tolist(), x=x, y=[str(i) for i in self.layers], colorscale="RdBu",
                                   zmid=0.0, colorbar={"title": "recovered" if normalised else "metric"}))
        fig.update_layout(title=f"{self.method} patching of {point}", xaxis_title="position", yaxis_title="layer",
                          yaxis={"autorange": "reversed"})
        return fig

    def to_json(self) -> dict:
        return {"values": {p: v.tolist() for p, v in self.values.items()}, "layers": self.layers,
                "positions": self.positions, "tokens": self.tokens, "clean": self.clean, "corrupt": self.corrupt,
                "method": self.method, "rule": self.rule, "heads": self.heads, **self.extra}


def logit_difference(correct: int | Sequence[int], wrong: int | Sequence[int], position: int = -1) -> Metric:
    """``logits[:, position, correct] - logits[:, position, wrong]`` per row (token ids, one per row or one for all)."""

    def metric(logits: torch.Tensor) -> torch.Tensor:
        last = logits[:, position].float()
        c = torch.as_tensor(correct, device=last.device).expand(last.shape[0])
        w = torch.as_tensor(wrong, device=last.device).expand(last.shape[0])
        rows = torch.arange(last.shape[0], device=last.device)
        return last[rows, c] - last[rows, w]

    metric.last_only = position == -1  # the model need not compute logits at other positions
    return metric


def _ids(tokenizer, text) -> torch.Tensor:
    if isinstance(text, torch.Tensor):
        return text if text.dim() == 2 else text.unsqueeze(0)
    texts = [text] if isinstance(text, str) else list(text)
    if tokenizer is None:
        raise ValueError("prompts given as text need the tokenizer: patch(model, tokenizer, clean, corrupt, ...)")
    rows = [tokenizer(t, add_special_tokens=True)["input_ids"] for t in texts]
    if len({len(r) for r in rows}) != 1:
        raise ValueError(f"the prompts of one side tokenize to {sorted({len(r) for r in rows})} tokens; a batch "
                         "patched position by position needs equal lengths: patch each pair on its own")
    return torch.tensor(rows)


def _token(tokenizer, answer) -> int:
    if isinstance(answer, int):
        return answer
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"the answer {answer!r} is {len(ids)} tokens ({ids}); the logit difference needs one token "
                         "each: choose one-token answers or pass metric=")
    return ids[0]


def _metric(tokenizer, answers, metric) -> tuple[Metric, str]:
    if metric is not None:
        return metric, getattr(metric, "__name__", "a given metric")
    if answers is None:
        raise ValueError("give answers=(correct, wrong) for the logit difference, or metric=")
    pairs = [answers] if isinstance(answers[0], (str, int)) else list(answers)
    correct, wrong = [_token(tokenizer, a) for a, _ in pairs], [_token(tokenizer, b) for _, b in pairs]
    return logit_difference(correct if len(correct) > 1 else correct[0], wrong if len(wrong) > 1 else wrong[0]), (
        f"logit({pairs[0][0]!r}) - logit({pairs[0][1]!r}) at the last position" + (" per pair" if len(pairs) > 1 else ""))


def _setup(model, tokenizer, clean, corrupt, points, layers, align):
    clean_ids, corrupt_ids = _ids(tokenizer, clean), _ids(tokenizer, corrupt)
    if clean_ids.shape[0] != corrupt_ids.shape[0]:
        raise ValueError(f"{clean_ids.shape[0]} clean prompts but {corrupt_ids.shape[0]} corrupted: give them in pairs")
    lc, lx = clean_ids.shape[1], corrupt_ids.shape[1]
    if lc != lx and align != "end":
        raise ValueError(f"the clean prompt has {lc} tokens and the corrupted {lx}: positions are patched one for one; "
                         "make them tokenize to the same length, or pass align='end' (--align end) to pair them from the end")
    n = min(lc, lx)
    unknown = [p for p in points if p not in POINTS or p == "pattern"]
    if unknown:
        raise ValueError(f"cannot patch {unknown}; patch any of {[p for p in POINTS if p != 'pattern']}")
    device = input_device(model)
    return clean_ids.to(device), corrupt_ids.to(device), block_indices(model, layers), lc - n, lx - n, n


def _values(model, ids, points, layers) -> dict[str, dict[int, torch.Tensor]]:
    with torch.no_grad(), contextlib.ExitStack() as stack:
        caps = {p: stack.enter_context(capture(model, layers, point=p)) for p in points}
        model(input_ids=ids, use_cache=False)
    return {p: c.hidden_states for p, c in caps.items()}


def _columns(positions, n: int) -> list[int | None]:
    """``"each"`` -> every position of the paired window, ``"all"`` -> one column patching them all,
    a list of ints -> those positions (Python indexing within the window: -1 is the last)."""
    if positions == "each":
        return list(range(n))
    if positions == "all":
        return [None]
    if isinstance(positions, str) or not all(isinstance(p, int) for p in positions):
        raise ValueError(f"positions must be 'each', 'all' or a list of positions, not {positions!r}")
    bad = [p for p in positions if not -n <= p < n]
    if bad:
        raise ValueError(f"positions {bad} are outside the {n} positions patched (0..{n - 1}, or -{n}..-1)")
    return sorted({p % n for p in positions})


def _labels(tokenizer, ids: torch.Tensor, offset: int, n: int, aligned_end: bool) -> tuple[list[int], list[str]]:
    positions = list(range(-n, 0)) if aligned_end else list(range(n))
    toks = ids[0, offset:offset + n].tolist()
    words = tokenizer.convert_ids_to_tokens(toks) if tokenizer is not None else [str(t) for t in toks]
    return positions, [str(w) for w in words]


def _chosen(labels: tuple[list[int], list[str]], cols: list[int | None]) -> tuple[list[int], list[str]]:
    pos, toks = labels
    if cols == [None]:
        return [0], ["all positions"]
    return [pos[c] for c in cols if c is not None], [toks[c] for c in cols if c is not None]


@torch.no_grad()
def patch(model, tokenizer, clean, corrupt, *, answers=None, metric: Metric | None = None,
          points: Sequence[str] = ("resid_pre",), layers="all", positions: str | Sequence[int] = "each",
          heads: bool = False, align: str | None = None, batch_size: int = 64) -> Patching:
    """Exact activation patching (module docstring). ``clean`` and ``corrupt`` are prompts (text, a list
    of texts, or token ids ``[batch, seq]``); ``positions`` is ``"each"``, ``"all"`` (every position at
    once) or a list of positions (``[-1]``: the last); ``heads`` adds a head axis at ``z``; ``align`` is
    None (equal lengths) or ``"end"``."""
    clean_ids, corrupt_ids, idx, oc, ox, n = _setup(model, tokenizer, clean, corrupt, points, layers, align)
    cols = _columns(positions, n)
    fn, rule = _metric(tokenizer, answers, metric)
    keep = {"logits_to_keep": 1} if getattr(fn, "last_only", False) else {}
    model_logits = lambda ids: model(input_ids=ids, use_cache=False, **keep).logits  # noqa: E731
    clean_m, corrupt_m = fn(model_logits(clean_ids)).mean().item(), fn(model_logits(corrupt_ids)).mean().item()
    source = _values(model, clean_ids, points, idx)
    b = corrupt_ids.shape[0]
    out: dict[str, torch.Tensor] = {}
    for p in points:
        n_heads = source[p][idx[0]].shape[-2] if p == "z" and heads else 1
        grid = torch.zeros(len(idx), len(cols), n_heads)
        places = [(ci, c, h) for ci, c in enumerate(cols) for h in range(n_heads)]
        for li, layer in enumerate(idx):
            clean_v = source[p][layer]
            for start in range(0, len(places), max(1, batch_size // b)):
                chunk = places[start:start + max(1, batch_size // b)]
                rows = corrupt_ids.repeat(len(chunk), 1)

                def edit(t, name, chunk=chunk, clean_v=clean_v, per_head=p == "z" and heads):
                    t = t.clone()
                    for k, (_, c, h) in enumerate(chunk):
                        rs = slice(k * b, (k + 1) * b)
                        sx = slice(ox, ox + n) if c is None else ox + c
                        sc = slice(oc, oc + n) if c is None else oc + c
                        if per_head:
                            t[rs, sx, h] = clean_v[:, sc, h].to(t)
                        else:
                            t[rs, sx] = clean_v[:, sc].to(t)
                    return t

                with capture(model, layer, point=p, edit_output=edit, retain_output=False):
                    scores = fn(model_logits(rows)).view(len(chunk), b).mean(1).cpu()
                for k, (ci, _, h) in enumerate(chunk):
                    grid[li, ci, h] = scores[k]
        out[p] = grid if p == "z" and heads else grid[..., 0]
    pos, toks = _chosen(_labels(tokenizer, corrupt_ids, ox, n, align == "end"), cols)
    return Patching(out, idx, pos, toks, clean_m, corrupt_m, "exact", rule, heads)


def attribute(model, tokenizer, clean, corrupt, *, answers=None, metric: Metric | None = None,
              points: Sequence[str] = ("resid_pre",), layers="all", positions: str | Sequence[int] = "each",
              heads: bool = False, align: str | None = None) -> Patching:
    """Attribution patching (module docstring): the same sweep as ``patch`` estimated from one forward
    and one backward of the corrupted run; ``values`` are estimated changes of the metric from the
    corrupted run's."""
    clean_ids, corrupt_ids, idx, oc, ox, n = _setup(model, tokenizer, clean, corrupt, points, layers, align)
    cols = _columns(positions, n)
    fn, rule = _metric(tokenizer, answers, metric)
    source = _values(model, clean_ids, points, idx)
    deltas: dict[tuple[str, int], torch.Tensor] = {}

    def adder(p, layer):
        def edit(t, name):
            d = deltas.setdefault((p, layer), torch.zeros_like(t, requires_grad=True))
            return t + d
        return edit

    with torch.enable_grad(), contextlib.ExitStack() as stack:
        caps = {(p, layer): stack.enter_context(capture(model, layer, point=p, edit_output=adder(p, layer)))
                for p in points for layer in idx}
        logits = model(input_ids=corrupt_ids, use_cache=False).logits
        value = fn(logits).mean()
        grads = torch.autograd.grad(value, [deltas[k] for k in caps], allow_unused=True)
    with torch.no_grad():
        clean_m = fn(model(input_ids=clean_ids, use_cache=False).logits).mean().item()
    out: dict[str, list] = {p: [] for p in points}
    for (p, layer), g in zip(caps, grads):
        here = caps[(p, layer)][layer]
        diff = source[p][layer][:, oc:oc + n].to(here) - here[:, ox:ox + n]
        g = torch.zeros_like(here) if g is None else g
        per = (diff * g[:, ox:ox + n]).float()          # [batch, n, hidden] or [batch, n, heads, head_dim]
        per = per.sum(-1).sum(0) if p == "z" and heads else per.flatten(2).sum(-1).sum(0)   # batch-mean below
        per = per / corrupt_ids.shape[0]
        per = per.sum(0, keepdim=True) if cols == [None] else per[cols]
        out[p].append(per.cpu())  # layers may sit on several devices
    values = {p: torch.stack(v) for p, v in out.items()}
    pos, toks = _chosen(_labels(tokenizer, corrupt_ids, ox, n, align == "end"), cols)
    return Patching(values, idx, pos, toks, clean_m, value.item(), "attribution", rule, heads)


__all__ = ["Patching", "patch", "attribute", "logit_difference"]
