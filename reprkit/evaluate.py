"""Judge-free evaluation: preference accuracy from log-probabilities, and sample generations.

>>> acc = preference_accuracy(model, encoded_pairs, tokenizer.pad_token_id)   # adapter and base in one call
>>> acc["accuracy_mean"], acc["base"]["accuracy_mean"]
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F

from .data import collate, collate_ranked
from .devices import input_device, to_model
from .frozen import adapter_disabled, eval_mode, has_trained
from .logits import head_logits, masked_logp_sums, unwrap  # noqa: F401 (head_logits: re-exported)
from .scoring import length_baseline, ranked_summary, wilson_ci95


def completion_logps(logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """Summed log-probability of the completion tokens: ``[B, T, V], [B, T], [B, T] -> [B]``.

    Token t is predicted by the logits at t - 1; computed in float32.
    """
    logits = logits[:, :-1].float()
    targets = input_ids[:, 1:]
    mask = completion_mask[:, 1:].to(logits.dtype)
    token_logps = -F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    return (token_logps * mask).sum(-1)


def forward_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  completion_mask: torch.Tensor) -> torch.Tensor:
    """Run ``model`` and return the summed completion log-probs ``[B]``, applying the LM head only
    where a completion token is predicted.

    The full ``[B, T, vocab]`` logits are most of a small model's forward and memory (49k vocab):
    the model runs with ``logits_to_keep=1`` and the head is applied to the final (normed) hidden
    states at the completion positions alone. Models without ``logits_to_keep`` fall back to full logits.
    """
    from .interventions import at_positions

    device = input_device(model)  # a batch follows the input embedding
    input_ids, attention_mask, completion_mask = (t.to(device) for t in (input_ids, attention_mask, completion_mask))
    with at_positions(model, attention_mask, completion_mask):  # an intervention at chosen positions
        try:
            out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                        output_hidden_states=True, logits_to_keep=1)
        except TypeError:
            out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            return completion_logps(out.logits, input_ids, completion_mask)
    # position t predicts token t + 1; float32 sums, the head in bounded chunks
    return masked_logp_sums(model, out.hidden_states[-1][:, :-1], input_ids[:, 1:], completion_mask[:, 1:])


@contextmanager
def root_unsharded(model):
    """For ``generate`` on an FSDP2-sharded model (every process must call it, with the same
    prompts): generation calls the inner model, not the sharded root, so the root's own weights
    (embeddings, final norm, LM head) are gathered for the block; the decoder blocks gather theirs
    as they run. Other models: nothing."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule):
        yield model
        return
    model.unshard()
    try:
        yield model
    finally:
        model.reshard()


def pair_logps(model, batch: dict) -> dict[str, torch.Tensor]:
    """Summed completion log-probs and lengths of chosen and rejected, one forward for both."""
    ids = torch.cat([batch["chosen_input_ids"], batch["rejected_input_ids"]])
    attn = torch.cat([batch["chosen_attention_mask"], batch["rejected_attention_mask"]])
    comp = torch.cat([batch["chosen_completion_mask"], batch["rejected_completion_mask"]])
    logps = forward_logps(model, ids, attn, comp).cpu()  # scores for analysis: on the host, float32
    n = comp[:, 1:].sum(-1).clamp_min(1).cpu()
    b = batch["chosen_input_ids"].shape[0]
    return {"chosen": logps[:b], "rejected": logps[b:], "chosen_n": n[:b], "rejected_n": n[b:]}


def _summarise(chosen, rejected, chosen_n, rejected_n) -> dict:
    mean_margin = chosen / chosen_n - rejected / rejected_n
    n = len(chosen)
    acc_mean = (mean_margin > 0).float().mean().item()
    acc_sum = (chosen > rejected).float().mean().item()
    return {
        "n": n,
        "accuracy_mean": acc_mean,
        "accuracy_mean_ci95": wilson_ci95(acc_mean, n),
        "accuracy_sum": acc_sum,
        "accuracy_sum_ci95": wilson_ci95(acc_sum, n),
        "margin_mean": mean_margin.mean().item(),
    }


@torch.no_grad()
def preference_accuracy(model, encoded: list[dict], pad_token_id: int, batch_size: int = 16,
                        base: bool = True) -> dict:
    """Share of pairs where the model gives the chosen completion the higher log-probability.

    ``accuracy_mean`` compares per-token mean log-probs, ``accuracy_sum`` summed ones;
    ``margin_mean`` is the mean per-token log-prob margin. With ``base=True`` and an adapter on the
    model, ``result["base"]`` is the same for the frozen model (adapter disabled), from this call.
    """
    out = {}
    with eval_mode(model):
        for name, ctx in _passes(model, base).items():
            parts = {"chosen": [], "rejected": [], "chosen_n": [], "rejected_n": []}
            for i in range(0, len(encoded), batch_size):
                batch = collate(encoded[i: i + batch_size], pad_token_id)
                with ctx(model):
                    res = pair_logps(model, batch)
                for k in parts:
                    parts[k].append(res[k])
            out[name] = _summarise(*(torch.cat(parts[k]) for k in ("chosen", "rejected", "chosen_n", "rejected_n")))
    result = out["policy"]
    if "base" in out:
        result["base"] = out["base"]
    return result


@torch.no_grad()
def generate_samples(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int = 32,
                     chat_template: bool | None = None) -> list[dict]:
    """Greedy completions of a few prompts (message lists)."""
    from .data import render_prompt, uses_chat
    from .interventions import generating

    chat = uses_chat(tokenizer, chat_template)
    rows = []
    with eval_mode(model), root_unsharded(model):
        for messages in prompts:
            text = render_prompt(tokenizer, messages, chat)
            enc = tokenizer(text, return_tensors="pt", add_special_tokens=not chat)
            enc = to_model(model, enc)
            with generating(model, enc["attention_mask"]):
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id)
            completion = tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            rows.append({"prompt": messages[-1]["content"], "completion": completion})
    return rows


def _passes(model, base: bool) -> dict:
    """The model as is, plus (with ``base`` and an adapter) the frozen model: adapter disabled."""
    passes = {"policy": nullcontext}
    if base and has_trained(model):
        passes["base"] = adapter_disabled
    return passes


def uniform_chance(marked: torch.Tensor, valid: torch.Tensor) -> float:
    """What a uniform pick among each item's answers scores, averaged over items: the marked
    answers' share of the valid ones (``[items, answers]`` boolean masks)."""
    return ((marked & valid).sum(-1).float() / valid.sum(-1).float()).mean().item()


@torch.no_grad()
def ranked_logps(model, encoded: list[dict], pad_token_id: int, batch_size: int = 16, base: bool = True,
                 shared_prompt: bool = True) -> dict:
    """Summed log-probs ``[N, K]``, completion lengths ``[N, K]`` and ``valid [N, K]`` of every response
    of every item (``data.encode_ranked``), for the model and (``base``) the frozen model.

    ``shared_prompt=True`` runs each prompt once and scores its responses from the KV cache, in
    length-sorted batches (``reprkit.shared_prompt``); ``False`` runs prompt + response as one
    sequence per response, ``batch_size`` items at a time (the reference path; same numbers)."""
    from .shared_prompt import shared_prompt_logps

    out = {}
    with eval_mode(model):
        for name, ctx in _passes(model, base).items():
            if shared_prompt:
                with ctx(model):
                    out[name] = shared_prompt_logps(model, encoded, pad_token_id, max_items=max(batch_size, 1) * 4)
                continue
            logps, lengths, valid = [], [], []
            for i in range(0, len(encoded), batch_size):
                batch = collate_ranked(encoded[i: i + batch_size], pad_token_id)
                b, k = batch["valid"].shape
                with ctx(model):
                    lp = forward_logps(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"]).cpu()
                pad_k = max(len(e["responses_ids"]) for e in encoded)
                def widen(x, fill, b=b, k=k, pad_k=pad_k):
                    return torch.nn.functional.pad(x.view(b, k), (0, pad_k - k), value=fill)
                logps.append(widen(lp, float("-inf")))
                lengths.append(widen(batch["completion_mask"][:, 1:].sum(-1).clamp_min(1).float(), 1.0))
                valid.append(torch.nn.functional.pad(batch["valid"], (0, pad_k - k), value=False))
            out[name] = {"logps": torch.cat(logps), "n_tokens": torch.cat(lengths), "valid": torch.cat(valid)}
    return out


def _scored_in_chunks(model, encoded: list[dict], pad_token_id: int, batch_size: int, base: bool,
                      shared_prompt: bool, label: str, bar: bool) -> dict:
    """``ranked_logps`` over chunks of items with a progress bar (``bar``) or, without one, one line
    when the set is scored; the same numbers as one call (each item is scored on its own)."""
    import sys
    import time

    from tqdm.auto import tqdm

    chunk = max(batch_size, 1) * 8
    width = max(len(e["responses_ids"]) for e in encoded)
    parts: list[dict] = []
    start = time.perf_counter()
    with tqdm(total=len(encoded), desc=f"scoring {label}", disable=not bar, dynamic_ncols=True, leave=False) as pbar:
        for i in range(0, len(encoded), chunk):
            parts.append(ranked_logps(model, encoded[i: i + chunk], pad_token_id, batch_size, base, shared_prompt))
            pbar.update(min(chunk, len(encoded) - i))
    if not bar:
        print(f"scored {label}: {len(encoded)} items in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)

    def cat(key: str, name: str, fill) -> torch.Tensor:
        xs = [p[name][key] for p in parts]
        return torch.cat([torch.nn.functional.pad(x, (0, width - x.shape[1]), value=fill) for x in xs])

    return {name: {"logps": cat("logps", name, float("-inf")), "n_tokens": cat("n_tokens", name, 1.0),
                   "valid": cat("valid", name, False)} for name in parts[0]}


def item_accuracy(model, encoded: list[dict], pad_token_id: int, batch_size: int = 16, base: bool = True,
                  shared_prompt: bool = True, keep_logps: bool = True, progress: str | None = None,
                  progress_bar: bool = True) -> dict:
    """Judge-free accuracy on items with 2 to K responses (GENIES): the model prefers the best one
    if it gives it the highest score. Every rule of ``reprkit.scoring`` is reported: ``mean``
    (per-token mean log-prob), ``sum`` and, with ``base`` and an adapter on the model, ``ratio``
    (log-prob ratio to the frozen model); the mean margin, chance level, the model-free
    ``length_baseline`` and what truncation cut (``truncation``); and ``base`` (the frozen model).

    ``result["items"]`` holds the per-item outcomes, in the order of ``encoded``, with each item's
    stable ``id`` (``reprkit.scoring.item_ids``: pair two runs' outcomes by it): ``correct`` and
    ``margin`` (mean rule), ``correct_sum``/``margin_sum``, ``correct_ratio``/``margin_ratio``,
    each response's ``logps`` and ``n_tokens``, for paired statistics under any rule.

    ``progress``: a label; scoring then shows a progress bar (``progress_bar``) or, without one,
    prints one line when the set is scored."""
    from .truncation import truncation_report

    if progress is not None and encoded:
        scores = _scored_in_chunks(model, encoded, pad_token_id, batch_size, base, shared_prompt, progress,
                                   progress_bar)
    else:
        scores = ranked_logps(model, encoded, pad_token_id, batch_size, base, shared_prompt=shared_prompt)
    ref = scores["base"]["logps"] if "base" in scores else None
    result = ranked_summary(**scores["policy"], ref_logps=ref, keep_logps=keep_logps)
    if "base" in scores:
        result["base"] = ranked_summary(**scores["base"], keep_logps=keep_logps)
    lengths = length_baseline(encoded)
    result["length_baseline"] = {k: lengths[k] for k in ("accuracy_shortest", "accuracy_longest", "rule")}
    result["items"]["shortest"], result["items"]["longest"] = lengths["shortest"], lengths["longest"]
    if encoded and "prompt_ids" in encoded[0]:  # stable ids: outcomes of two runs pair by item
        from .scoring import item_ids

        ids = item_ids(encoded)
        for res in (result, result.get("base")):
            if res is not None and "items" in res:
                res["items"]["id"] = ids
    if encoded and "prompt_cut" in encoded[0]:
        result["truncation"] = truncation_report(encoded)
    return result


def load_truthfulqa(path=None) -> list[dict]:
    """TruthfulQA multiple choice (``mc_task.json``): ``{question, mc1_targets, mc2_targets}``."""
    import json
    from pathlib import Path

    from .data import DataError, shared_data_dir

    if path is None:
        root = shared_data_dir()
        if root is None or not (root / "truthfulqa/data/mc_task.json").is_file():
            import datasets

            rows = datasets.load_dataset("truthfulqa/truthful_qa", "multiple_choice", split="validation")
            return [{"question": r["question"],
                     "mc1_targets": dict(zip(r["mc1_targets"]["choices"], r["mc1_targets"]["labels"])),
                     "mc2_targets": dict(zip(r["mc2_targets"]["choices"], r["mc2_targets"]["labels"]))} for r in rows]
        path = root / "truthfulqa/data/mc_task.json"
    rows = json.loads(Path(path).read_text())
    if not rows or "mc1_targets" not in rows[0]:
        raise DataError(f"{path} is not TruthfulQA's mc_task.json (no mc1_targets)")
    return rows


def _mc_items(rows: list[dict], key: str) -> tuple[list[dict], list[list[int]]]:
    """Items with the answers in the file's order, and each answer's label (1 true, 0 false)."""
    items, labels = [], []
    for r in rows:
        answers = list(r[key].items())
        items.append({"prompt": [{"role": "user", "content": r["question"]}], "responses": [a for a, _ in answers],
                      "scores": [float(v) for _, v in answers]})
        labels.append([int(v) for _, v in answers])
    return items, labels


def truthfulqa_mc(model, tokenizer, rows: list[dict] | None = None, limit: int | None = None,
                  batch_size: int = 16, base: bool = True, max_length: int = 256) -> dict:
    """TruthfulQA MC1 and MC2 with the standard definitions, on summed answer log-probs:

    MC1: the single true answer gets a higher log-prob than every false MC1 choice (chance ~0.22;
    a tie counts as wrong, as in ``item_accuracy``).
    MC2: the normalised probability mass on the true answers among the MC2 choices (chance: the true
    answers' mean share of the choices, what a uniform distribution puts on them).

    The question is the user turn (chat template when the tokenizer has one), each answer the reply.
    """
    from .data import encode_ranked

    rows = (rows or load_truthfulqa())[:limit]
    results: dict = {}
    for key, metric in (("mc1_targets", "mc1"), ("mc2_targets", "mc2")):
        items, labels = _mc_items(rows, key)
        # one item at a time: encode_ranked keeps the answers in file order (labels stay aligned)
        encoded = [encode_ranked([item], tokenizer, max_length, max_length // 2)[0] for item in items]
        scores = ranked_logps(model, encoded, tokenizer.pad_token_id, batch_size, base)
        truth = torch.zeros_like(scores["policy"]["valid"], dtype=torch.bool)
        for i, lab in enumerate(labels):
            truth[i, : len(lab)] = torch.tensor(lab, dtype=torch.bool)
        for name, sc in scores.items():
            lp = sc["logps"].masked_fill(~sc["valid"], float("-inf"))
            if metric == "mc1":  # strict, as the K-way accuracy: a tie with a false answer counts as wrong
                best_true = lp.masked_fill(~truth, float("-inf")).max(-1).values
                best_false = lp.masked_fill(truth | ~sc["valid"], float("-inf")).max(-1).values
                per_item = (best_true > best_false).float()
                value = {"accuracy": per_item.mean().item(), "ci95": wilson_ci95(per_item.mean().item(), len(rows)),
                         "chance": (1 / sc["valid"].sum(-1).float()).mean().item()}
            else:
                p = torch.softmax(lp, -1)
                per_item = (p * truth).sum(-1)
                # one item has no spread to estimate: its interval is undefined (nan), not a warning
                se = per_item.std().item() / math.sqrt(len(rows)) if len(rows) > 1 else float("nan")
                m = per_item.mean().item()
                value = {"score": m, "ci95": [m - 1.96 * se, m + 1.96 * se],
                         "chance": uniform_chance(truth, sc["valid"])}
            value["n"] = len(rows)
            results.setdefault(name, {})[metric] = value
    out = results["policy"]
    if "base" in results:
        out["base"] = results["base"]
    return out


def token_weighted_interval(diff_sums: torch.Tensor, n_tokens: torch.Tensor, z: float = 1.96) -> tuple[float, float]:
    """95% interval of R = sum(d_i) / sum(n_i) over sequences i (per-sequence summed NLL differences
    ``d_i`` over ``n_i`` tokens): se(R) = sqrt(sum (d_i - R n_i)^2 / (N (N - 1))) / mean(n)."""
    n = len(diff_sums)
    r = (diff_sums.sum() / n_tokens.sum()).item()
    if n < 2:
        return float("nan"), float("nan")
    resid = diff_sums - r * n_tokens
    se = math.sqrt((resid**2).sum().item() / (n * (n - 1))) / n_tokens.mean().item()
    return r - z * se, r + z * se


@torch.no_grad()
def sequence_nll(model, encoded: list[dict], pad_token_id: int,
                 batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed negative log-likelihood of each chosen completion of ``encoded`` (``data.encode_pairs``)
    under ``model`` as it is, and its token count: ``(nll [N], tokens [N])``. Run it inside
    ``reference.adapter_disabled(model)`` for the frozen model's."""
    parts, lengths = [], []
    with eval_mode(model):
        for i in range(0, len(encoded), batch_size):
            batch = collate(encoded[i: i + batch_size], pad_token_id)
            args = (batch["chosen_input_ids"], batch["chosen_attention_mask"], batch["chosen_completion_mask"])
            parts.append(-forward_logps(model, *args).cpu())
            lengths.append(batch["chosen_completion_mask"][:, 1:].sum(-1).clamp_min(1).float())
    return torch.cat(parts), torch.cat(lengths)


def perplexity_ratio(model, encoded: list[dict], pad_token_id: int, batch_size: int = 16,
                     frozen_nll: torch.Tensor | list[float] | None = None) -> dict:
    """Perplexity of the chosen completions of a retain set, model vs frozen model (adapter disabled).

    ratio = exp(sum of NLL differences / sum of tokens), model - frozen (token-weighted, as the two
    perplexities are); > 1 means the model finds ordinary text less likely than before (a sign of
    lost coherence). The 95% interval is of the same token-weighted statistic: a ratio-of-sums
    estimator over sequences, its standard error by linearisation (delta method).

    ``frozen_nll`` (the frozen model's ``sequence_nll`` on the same items) skips the frozen pass:
    it does not change between adapters, so a sweep or a grid computes it once.
    """
    total, n_tok = sequence_nll(model, encoded, pad_token_id, batch_size)
    result = {"n": len(encoded), "perplexity": math.exp((total.sum() / n_tok.sum()).item())}
    if frozen_nll is not None:
        base_total = torch.as_tensor(frozen_nll, dtype=total.dtype)
        if base_total.shape != total.shape:
            raise ValueError(f"frozen_nll has {base_total.numel()} values for {len(encoded)} items: compute it "
                             "with sequence_nll on the same encoded items")
    elif has_trained(model):
        with adapter_disabled(model):
            base_total, _ = sequence_nll(model, encoded, pad_token_id, batch_size)
    else:
        return result
    result["base_perplexity"] = math.exp((base_total.sum() / n_tok.sum()).item())
    result["ratio"] = result["perplexity"] / result["base_perplexity"]
    lo, hi = token_weighted_interval((total - base_total).double(), n_tok.double())
    result["ratio_ci95"] = [math.exp(lo), math.exp(hi)]
    return result
