"""Directions read from contrast pairs: the mass-mean shift (mean chosen minus mean rejected state),
the first principal component of the paired differences, or a logistic-regression probe's weight,
per layer, and what to do with them.

>>> d = from_pairs(model, tokenizer, items, layers="range(.2,.9)", method="mean_diff")
>>> layer, per_layer = d.best_layer(model, tokenizer, validation_items)   # separation of held-out pairs
>>> d.score(model, tokenizer, test_items, layer)    # K-way accuracy by projection, as evaluate.item_accuracy
>>> d.save("directions/alpaca_easy"); Direction.load("directions/alpaca_easy")
>>> d = from_prompts(model, tokenizer, ["Act happy. Hi"], ["Act sad. Hi"], layers=15)  # two prompt sets

States are the mean over completion tokens (``token="mean"``), the response's own last token
(``"last"``: the answer's, not the chat template's end tokens), or another reduction of
``TOKENS``, of each block's output, in float32; the forward stops after the deepest layer. A saved
direction records which (``info["token"]`` and ``info["token_rule"]``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import data as D
from .devices import input_device, to_model
from .frozen import eval_mode
from .geometry import last_token, masked_mean, unit
from .hooks import capture
from .scoring import ranked_summary

TOKENS = {
    "mean": "mean over the completion's tokens, the chat template's end tokens included",
    "mean_response": "mean over the response's own tokens (template end tokens excluded)",
    "last": "the response's own last token (template end tokens excluded)",
    "last_completion": "the completion's last token (with a chat template: its trailing end token)",
}
"""Which token(s) of a response a state is read from."""


@torch.no_grad()
def completion_states(model, encoded: list[dict], pad_token_id: int, layers, token: str = "mean",
                      batch_size: int = 8, shared_prompt: bool = True) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """``({layer: [N, K, H]}, valid [N, K])``: one state per response of each ranked item
    (``data.encode_ranked``), reduced over its tokens as ``token`` says (``TOKENS``).
    ``shared_prompt`` runs each prompt once and its responses on its KV cache
    (``shared_prompt.shared_prompt_states``); ``False`` runs prompt + response as one sequence per
    response, ``batch_size`` items at a time (the reference path; the same states to float rounding)."""
    if token not in TOKENS:
        raise ValueError(f"token must be one of {sorted(TOKENS)}, not {token!r}")
    if shared_prompt:
        from .shared_prompt import shared_prompt_states

        with eval_mode(model):
            return shared_prompt_states(model, encoded, pad_token_id, layers, own_text=token in ("last", "mean_response"),
                                        last=token in ("last", "last_completion"))
    out: dict[int, list[torch.Tensor]] = {}
    valid = []
    k_all = max(len(e["responses_ids"]) for e in encoded)
    with eval_mode(model):
        for i in range(0, len(encoded), batch_size):
            batch = to_model(model, D.collate_ranked(encoded[i: i + batch_size], pad_token_id))
            b, k = batch["valid"].shape
            with capture(model, layers, stop=True) as cap:
                model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
            comp = batch["response_mask" if token in ("last", "mean_response") else "completion_mask"]
            if token in ("last", "last_completion"):
                comp = last_token(comp)
            for layer, h in cap.hidden_states.items():
                states = masked_mean(h.float(), comp).view(b, k, -1).cpu()  # for analysis: on the host
                out.setdefault(layer, []).append(torch.nn.functional.pad(states, (0, 0, 0, k_all - k)))
            valid.append(torch.nn.functional.pad(batch["valid"].cpu(), (0, k_all - k), value=False))
    return {layer: torch.cat(v) for layer, v in out.items()}, torch.cat(valid)


@dataclass
class Direction:
    """Unit vectors per layer, where they came from, and their projection statistics on that data."""

    vectors: dict[int, torch.Tensor]
    info: dict = field(default_factory=dict)

    def vector(self, layer: int) -> torch.Tensor:
        """The layer's vector; a layer the direction does not hold is refused by name."""
        if layer not in self.vectors:
            raise ValueError(f"the direction has no vector at layer {layer}; it holds layers {sorted(self.vectors)}")
        return self.vectors[layer]

    def project(self, hidden: torch.Tensor, layer: int) -> torch.Tensor:
        """Projection of ``[..., H]`` states on the layer's unit vector: ``[...]``."""
        return hidden.float() @ self.vector(layer).to(hidden.device)

    # arithmetic on the layers both hold: vectors are combined as stored (unit vectors are not unit
    # after a sum); ``normalised()`` rescales each to unit length
    def _combine(self, other: Direction, op, name: str) -> Direction:
        if not isinstance(other, Direction):
            return NotImplemented
        shared = sorted(set(self.vectors) & set(other.vectors))
        if not shared:
            raise ValueError(f"the directions share no layer ({sorted(self.vectors)} and {sorted(other.vectors)}); "
                             "read them at common layers")
        info = {"method": name, "operands": [self.info.get("method"), other.info.get("method")], "layers": shared}
        return Direction({k: op(self.vectors[k], other.vectors[k]) for k in shared}, info)

    def __add__(self, other: Direction) -> Direction:
        return self._combine(other, torch.add, "sum")

    def __sub__(self, other: Direction) -> Direction:
        return self._combine(other, torch.sub, "difference")

    def __mul__(self, factor: float) -> Direction:
        if not isinstance(factor, (int, float)):
            return NotImplemented
        return Direction({k: v * factor for k, v in self.vectors.items()}, {**self.info, "scaled_by": factor})

    __rmul__ = __mul__

    def __neg__(self) -> Direction:
        return self * -1.0

    def normalised(self) -> Direction:
        """Each layer's vector scaled to unit length."""
        return Direction({k: unit(v) for k, v in self.vectors.items()}, dict(self.info))

    @classmethod
    def from_intervention(cls, intervention, **info) -> Direction:
        """A trained ``reprkit.interventions.VectorIntervention`` (scale applied) as a Direction:
        steering it at strength 1 (every position) adds what training added at positions ``'all'``;
        ``steer``, ``calibrate_strength``, the steerability evaluation and ``to_gguf`` take it."""
        if getattr(intervention, "kind", None) != "vector":
            raise ValueError(f"a {getattr(intervention, 'kind', type(intervention).__name__)} intervention is not a "
                             "direction: only a trained vector is")
        iv = intervention
        vectors = {k: iv.vector(k).detach().float().cpu().clone() for k in iv.layers}
        return cls(vectors, {"method": "trained_vector", "positions": iv.positions, "layers": iv.layers,
                             "best_layer": iv.layers[0], "model": iv.base_model_name, "token": "mean",
                             "strength_1": "the vector as trained", **info})

    @classmethod
    def from_gguf(cls, path) -> Direction:
        """A llama.cpp control-vector file (``to_gguf``, repeng's ``export_gguf``) as a Direction: its
        vectors as stored (not normalised; a file written at strength s holds s x the unit vector)."""
        from .steering import read_gguf

        vectors = read_gguf(path)
        if not vectors:
            raise ValueError(f"{path} holds no 'direction.<layer>' tensors: not a control-vector file")
        return cls(vectors, {"method": "gguf", "data": str(path), "layers": sorted(vectors)})

    def scores(self, model, tokenizer, items: list[dict], layers=None, max_length: int = 256,
               max_prompt_length: int | None = None, encoded: list[dict] | None = None) -> dict[int, dict]:
        """Per layer, ``evaluate``'s K-way summary with projections in place of log-probs
        (``encoded``: the items already encoded by ``data.encode_ranked``, not encoded again)."""
        if encoded is None:
            encoded = D.encode_ranked(items, tokenizer, max_length, max_prompt_length or max_length // 2)
        layers = sorted(self.vectors) if layers is None else layers
        states, valid = completion_states(model, encoded, tokenizer.pad_token_id, layers, self.info.get("token", "mean"))
        return {k: ranked_summary(self.project(states[k], k), torch.ones(valid.shape), valid, keep_logps=False) for k in layers}

    def score(self, model, tokenizer, items: list[dict], layer: int, max_length: int = 256,
              max_prompt_length: int | None = None, encoded: list[dict] | None = None) -> dict:
        """K-way accuracy by projection at ``layer``: the best response is right when it projects
        highest (same rule and keys as ``evaluate.item_accuracy``, margins in projection units)."""
        return self.scores(model, tokenizer, items, [layer], max_length, max_prompt_length, encoded)[layer]

    def best_layer(self, model, tokenizer, items: list[dict], max_length: int = 256,
                   max_prompt_length: int | None = None) -> tuple[int, dict[int, dict]]:
        """The layer whose projection best orders held-out items (accuracy, then margin), and every
        layer's summary (to plot)."""
        per_layer = self.scores(model, tokenizer, items, max_length=max_length, max_prompt_length=max_prompt_length)
        best = max(per_layer, key=lambda k: (round(per_layer[k]["accuracy_mean"], 6), per_layer[k]["margin_mean"]))
        return best, per_layer

    def edit(self, strength: float, layer: int):
        """An edit for ``capture(model, layer, edit_output=...)`` adding ``strength`` x the unit vector
        (``reprkit.steering.steered`` applies it at every layer in one context)."""
        from .edits import add_vector

        return add_vector(self.vector(layer), strength)

    def steer(self, strength: float, layer: int):
        """Deprecated name of ``edit``; it goes in the next release."""
        import warnings

        warnings.warn("Direction.steer is now Direction.edit (reprkit.steering.steer is steering.steered)",
                      DeprecationWarning, stacklevel=2)
        return self.edit(strength, layer)

    def ablate(self, layer: int):
        """An edit projecting the direction out of the layer's output."""
        from .edits import ablate

        return ablate(self.vector(layer))

    def to_gguf(self, path, strength: float = 1.0, model_hint: str = "llama") -> None:
        """llama.cpp's control-vector file (``reprkit.steering.to_gguf``)."""
        from .steering import to_gguf

        to_gguf(self, path, strength, model_hint)

    def save(self, path) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({str(k): v.contiguous() for k, v in self.vectors.items()}, path / "direction.safetensors")
        (path / "direction.json").write_text(json.dumps(self.info, indent=2))

    @classmethod
    def load(cls, path) -> Direction:
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / "direction.safetensors").is_file():
            trained = trained_vector(path)
            if trained is not None:
                return trained
        vectors = {int(k): v for k, v in load_file(path / "direction.safetensors").items()}
        return cls(vectors, json.loads((path / "direction.json").read_text()))


def trained_vector(path) -> Direction | None:
    """A vector trained by ``reprkit train --intervention vector`` as a Direction (its run directory
    or the run's ``adapter/``): the vectors with their learnt scale, strength 1 being the vector as
    trained. None where ``path`` holds no trained vector; a LoReFT run is refused by name (it is
    not a direction)."""
    from .interventions import CONFIG_FILE, WEIGHTS_FILE

    path = Path(path)
    folder = path / "adapter" if (path / "adapter" / CONFIG_FILE).is_file() else path
    if not (folder / CONFIG_FILE).is_file():
        return None
    cfg = json.loads((folder / CONFIG_FILE).read_text())
    if cfg.get("kind") != "vector":
        raise ValueError(f"{folder} holds a {cfg.get('kind')} intervention, not a vector: it is not a direction. "
                         "Evaluate it with reprkit eval, or train --intervention vector")
    from safetensors.torch import load_file

    weights = load_file(str(folder / WEIGHTS_FILE))
    vectors = {}
    for k in cfg["layers"]:
        v = weights[f"vectors.{k}"].float()
        vectors[int(k)] = v * weights[f"scales.{k}"].float() if f"scales.{k}" in weights else v
    run_cfg = json.loads((folder.parent / "config.json").read_text()) if (folder.parent / "config.json").is_file() else {}
    return Direction(vectors, {"method": "trained_vector", "positions": cfg.get("positions"), "layers": cfg["layers"],
                               "best_layer": cfg["layers"][0], "model": cfg.get("base_model", ""), "token": "mean",
                               "loss": run_cfg.get("loss"), "data": run_cfg.get("data"), "run": str(folder.parent),
                               "strength_1": "the vector as trained"})


METHODS = ("mean_diff", "pca", "pca_uncentered", "probe")
"""Sign rule, every method: the vector is flipped so that the mean paired difference (chosen or
positive minus rejected or negative) projects positive on it."""


def direction_from_states(chosen: torch.Tensor, rejected: torch.Tensor, method: str = "mean_diff",
                          probe_c: float = 1.0) -> torch.Tensor:
    """A unit vector from paired states ``[N, H]``, signed so that chosen projects higher on average:

    - ``mean_diff``: mean chosen minus mean rejected (mass-mean shift);
    - ``pca``: first principal component of the centred paired differences (repeng's ``pca_diff``);
    - ``pca_uncentered``: first right singular vector of the uncentred paired differences (repeng's
      ``pca_center``-free variant, steering-vectors' PCA aggregator): close to ``mean_diff`` when
      the differences share a direction, where the centred one can lose it;
    - ``probe``: the weight of an L2-regularised logistic regression (scikit-learn, inverse strength
      ``probe_c``) telling chosen from rejected states, each pair's midpoint removed first so that
      what a pair shares (its prompt, its topic) cannot be used.
    """
    diff = chosen.float() - rejected.float()
    if method == "mean_diff":
        v = diff.mean(0)
    elif method == "pca":
        centred = diff - diff.mean(0)
        v = torch.linalg.svd(centred, full_matrices=False).Vh[0]
    elif method == "pca_uncentered":
        v = torch.linalg.svd(diff, full_matrices=False).Vh[0]
    elif method == "probe":
        from .extras import require

        LogisticRegression = require("sklearn.linear_model", "probe").LogisticRegression

        half = (diff / 2).detach().cpu().double().numpy()
        x = np.concatenate([half, -half])
        y = np.concatenate([np.ones(len(half)), np.zeros(len(half))])
        clf = LogisticRegression(C=probe_c, fit_intercept=False, max_iter=2000).fit(x, y)
        v = torch.tensor(clf.coef_[0], dtype=torch.float32, device=diff.device)
    else:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    if (diff @ v).mean() < 0:
        v = -v
    return unit(v)


class IdenticalStates(ValueError):
    """The two sides' states are the same at a layer: nothing to read a direction from."""


def directions_from_states(states_a: dict[int, torch.Tensor], states_b: dict[int, torch.Tensor], method: str,
          probe_c: float) -> tuple[dict[int, torch.Tensor], dict[str, dict]]:
    """Per layer: the unit vector telling paired states ``a`` (``[N, H]``) from ``b``, and the
    projection statistics of both sides on it."""
    vectors, stats = {}, {}
    for layer in states_a:
        a, b = states_a[layer], states_b[layer]
        if len(a) < 2:
            raise ValueError(f"a direction needs at least 2 pairs (got {len(a)}): one pair gives no spread to "
                             "measure its separation; add pairs")
        if torch.allclose(a, b):
            raise IdenticalStates(f"the two sides' states are identical at layer {layer}: the positive and negative "
                             "inputs do not differ there (the same prompts or responses?); give contrasting pairs")
        v = direction_from_states(a, b, method, probe_c)
        vectors[layer] = v
        pc, pr = a @ v, b @ v
        spread = torch.sqrt((pc.var() + pr.var()) / 2).clamp_min(1e-12)
        stats[str(layer)] = {"chosen_mean": pc.mean().item(), "chosen_std": pc.std().item(),
                             "rejected_mean": pr.mean().item(), "rejected_std": pr.std().item(),
                             "separation": ((pc.mean() - pr.mean()) / spread).item(),
                             "pair_accuracy": (pc > pr).float().mean().item()}
    return vectors, stats


def as_items(rows: list[dict]) -> list[dict]:
    """Items in reprkit's shape (``data`` module docstring) from what the rest of reprkit accepts:
    items, ``{prompt, chosen, rejected}`` pairs (a string prompt or messages), GENIES or ranked rows.
    A bad row is named with the fix (``data.DataError``)."""
    rows = list(rows)
    if not rows:
        raise D.DataError("no items given: pass a non-empty list of {prompt, chosen, rejected} pairs or items")
    if all(isinstance(r, dict) and isinstance(r.get("prompt"), list) and isinstance(r.get("responses"), list)
           and "scores" in r for r in rows):
        for i, r in enumerate(rows):
            D.check_item(r, i)
        return rows
    return D.to_items(rows, bad_rows="raise")


def from_pairs(model, tokenizer, items: list[dict], layers, method: str = "mean_diff", token: str = "mean",
               max_length: int = 256, source: str = "", probe_c: float = 1.0,
               max_prompt_length: int | None = None) -> Direction:
    """Read a direction per layer from items' best vs worst response (``data.to_pairs``); each
    response's state is read as ``token`` says (``TOKENS``)."""
    pairs = D.to_pairs(as_items(items))
    pair_items = [{"prompt": p["prompt"], "responses": [p["chosen"], p["rejected"]], "scores": [1.0, 0.0]} for p in pairs]
    encoded = D.encode_ranked(pair_items, tokenizer, max_length, max_prompt_length or max_length // 2)
    states, _ = completion_states(model, encoded, tokenizer.pad_token_id, layers, token)
    try:
        vectors, stats = directions_from_states({k: s[:, 0] for k, s in states.items()},
                                                {k: s[:, 1] for k, s in states.items()}, method, probe_c)
    except IdenticalStates as err:  # responses cut to the tokens they share read the same states: say so
        cut = sum(1 for r in encoded if r.get("response_cut"))
        if not cut:
            raise
        raise IdenticalStates(f"{err}, or raise max_length: {cut} of {len(encoded)} pairs had responses cut at "
                              f"max_length {max_length}") from None
    info = {"method": method, "token": token, "token_rule": TOKENS[token], "layers": sorted(vectors),
            "data": source, "n": len(encoded), "max_length": max_length, "stats": stats, **read_on(model)}
    return Direction(vectors, info)


def read_on(model) -> dict:
    """What a direction records of the model it was read on: its name and hidden size (steering
    another model names both)."""
    from .logits import unwrap

    config = unwrap(model).config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return {"model": getattr(config, "name_or_path", "") or "", "hidden_size": getattr(text, "hidden_size", None)}


@torch.no_grad()
def prompt_states(model, tokenizer, prompts: list[str], layers, token: str = "last", chat: bool = False,
                  max_length: int = 256, batch_size: int = 8) -> dict[int, torch.Tensor]:
    """``{layer: [N, H]}``: each prompt's state at its last token (``token="last"``) or the mean over
    its tokens (``"mean"``), float32; with ``chat`` the prompt is wrapped as a user turn of the
    model's chat template, generation prompt included (the state the model answers from)."""
    if token not in ("mean", "last"):
        raise ValueError(f"token must be 'mean' or 'last', not {token!r}")
    prompts = [D.render_prompt(tokenizer, [{"role": "user", "content": p}], chat) for p in prompts]  # one chat rule
    device = input_device(model)
    out: dict[int, list[torch.Tensor]] = {}
    with eval_mode(model):
        for i in range(0, len(prompts), batch_size):
            enc = [tokenizer(p, add_special_tokens=not chat)["input_ids"][-max_length:] for p in prompts[i: i + batch_size]]
            width = max(len(e) for e in enc)
            ids = torch.tensor([e + [tokenizer.pad_token_id] * (width - len(e)) for e in enc], device=device)
            mask = torch.tensor([[1] * len(e) + [0] * (width - len(e)) for e in enc], device=device)
            with capture(model, layers, stop=True) as cap:
                model(input_ids=ids, attention_mask=mask, use_cache=False)
            keep = last_token(mask) if token == "last" else mask
            for layer, h in cap.hidden_states.items():
                out.setdefault(layer, []).append(masked_mean(h.float(), keep).cpu())  # for analysis: on the host
    return {layer: torch.cat(v) for layer, v in out.items()}


def from_prompts(model, tokenizer, positive: list[str], negative: list[str], layers, method: str = "mean_diff",
                 token: str = "last", chat: bool = False, max_length: int = 256, source: str = "",
                 probe_c: float = 1.0) -> Direction:
    """Read a direction per layer from two prompt sets, ``positive[i]`` paired with ``negative[i]``
    (contrastive prompts as in repeng or CAA: "Act honest: ..." vs "Act dishonest: ..."), from each
    prompt's last-token state (or token mean). Positive prompts project higher."""
    for name, side in (("positive", positive), ("negative", negative)):
        if isinstance(side, str) or not all(isinstance(x, str) for x in side):
            raise ValueError(f"{name} must be a list of prompt strings (got {type(side).__name__}"
                             f"{'' if isinstance(side, str) else ' holding ' + type(next(iter(side), None)).__name__}); "
                             "wrap a single prompt in a list")
    if len(positive) != len(negative) or not positive:
        raise ValueError(f"positive and negative prompts must be paired, same non-zero count "
                         f"(got {len(positive)} and {len(negative)})")
    states_p = prompt_states(model, tokenizer, list(positive), layers, token, chat, max_length)
    states_n = prompt_states(model, tokenizer, list(negative), layers, token, chat, max_length)
    vectors, stats = directions_from_states(states_p, states_n, method, probe_c)
    info = {"method": method, "token": token, "layers": sorted(vectors), "data": source or "prompts",
            "n": len(positive), "max_length": max_length, "chat": chat, "contrast": "prompts", "stats": stats,
            **read_on(model)}
    return Direction(vectors, info)
