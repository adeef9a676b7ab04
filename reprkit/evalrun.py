"""``reprkit eval``: evaluate a run, a saved adapter or a plain model on any datasets, later.

>>> results = evaluate_target("runs/my-run", data=["genies:alpaca_easy", "genies:alpaca_hard"], truthfulqa=True)

Writes the run's ``eval.json`` (merged with what is there) or ``--out``, and prints a
dataset-by-metric table. Every figure carries its n and a 95% interval; the frozen model's figure
(adapter disabled) comes from the same call.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from . import data as D
from .evaluate import item_accuracy, perplexity_ratio, truthfulqa_mc
from .models import DEFAULT_MODEL, load_model, model_note
from .runlog import OTHER_MEASURES_NOTE, other_measures, write_json


def load_target(target: str, dtype: str = "float32", device: str | None = None):
    """(model, tokenizer, run_dir or None, base model name) for a run directory, an adapter
    directory or a model name."""
    path = Path(target)
    from .interventions import CONFIG_FILE, is_saved_intervention
    from .interventions import load as load_intervention

    if (path / "config.json").is_file() and any((path / "adapter" / f).is_file() for f in ("adapter_config.json", CONFIG_FILE)):
        config = json.loads((path / "config.json").read_text())
        adapter, model_name, run_dir = path / "adapter", config.get("model", DEFAULT_MODEL), path
    elif is_saved_intervention(path):
        adapter, model_name, run_dir = path, json.loads((path / CONFIG_FILE).read_text()).get("base_model") or DEFAULT_MODEL, None
    elif (path / "adapter_config.json").is_file():
        adapter_cfg = json.loads((path / "adapter_config.json").read_text())
        adapter, model_name, run_dir = path, adapter_cfg["base_model_name_or_path"], None
    elif path.exists() and not (path / "config.json").is_file():
        raise FileNotFoundError(f"{target} is neither a run directory (config.json + adapter/) nor an adapter "
                                f"directory (adapter_config.json) nor an intervention ({CONFIG_FILE}) nor a model folder")
    else:
        adapter, model_name, run_dir = None, target, None
    model, tok = load_model(model_name, dtype=dtype, device=device)
    if adapter is not None and is_saved_intervention(adapter):
        load_intervention(model, adapter)  # attached in place: the model with it off is the base model
    elif adapter is not None:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, adapter)  # safetensors; is_trainable=False
        except RuntimeError as err:
            if "size mismatch" not in str(err):
                raise
            base = json.loads((Path(adapter) / "adapter_config.json").read_text()).get("base_model_name_or_path")
            first = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), "")
            raise ValueError(f"the adapter in {adapter} does not fit {model_name}: it was trained on {base!r} "
                             f"({first[:200]}). Evaluate it on its own base model") from None
    return model, tok, run_dir, model_name


def encoding_settings(run_dir: Path | None, max_length: int | None = None, max_prompt_length: int | None = None,
                      chat_template: bool | None = None) -> tuple[int, int, bool | None]:
    """(max_length, max_prompt_length, chat_template) for evaluation: what is given, else the run's own
    (its config.json, as its trainer encoded eval items), else 256 / half of max_length / the tokenizer's."""
    run_cfg = json.loads((run_dir / "config.json").read_text()) if run_dir is not None else {}
    length = max_length or run_cfg.get("max_length") or 256
    if max_prompt_length is None:
        max_prompt_length = run_cfg.get("max_prompt_length") if max_length is None and run_cfg else length // 2
    if chat_template is None:
        chat_template = run_cfg.get("chat_template")
    return length, max_prompt_length, chat_template


def evaluate_target(target: str, data: list[str], split: str = "test", limit: int | None = None,
                    truthfulqa: bool = False, retain_data: str | None = None, max_length: int | None = None,
                    batch_size: int = 16, out: str | None = None, base: bool = True,
                    behaviour: list[str] | None = None, max_prompt_length: int | None = None,
                    chat_template: bool | None = None, eval_dtype: str = "float32", dtype: str = "float32",
                    device: str | None = None, progress: bool = True) -> dict:
    """Evaluate ``target`` (see ``load_target``). A run is scored with its own encoding settings
    (max length, prompt length, chat template from its config.json) unless they are given.
    ``eval_dtype="bfloat16"``: matmuls under bf16 autocast (weights stay as loaded); ``dtype``: the
    weights' dtype; ``device``: where the model runs (``load_model``'s)."""
    if eval_dtype not in ("float32", "bfloat16"):
        raise ValueError(f"--eval-dtype must be float32 or bfloat16, not {eval_dtype!r}")
    if (Path(target) / "direction.json").is_file():
        return evaluate_direction(target, data, split, limit, max_length, out, dtype=dtype, device=device)
    model, tok, run_dir, model_name = load_target(target, dtype, device)
    device = next(model.parameters()).device
    with torch.autocast(device.type, torch.bfloat16, enabled=eval_dtype == "bfloat16"):
        results = _score_target(target, model, tok, run_dir, data, split, limit, truthfulqa, retain_data, max_length,
                                batch_size, base, behaviour, max_prompt_length, chat_template, progress)
    results["eval_dtype"] = eval_dtype
    results["model"] = model_note(model_name)  # the packaged models are quantised GGUF weights, dequantised
    destination = Path(out) if out else (run_dir / "eval.json" if run_dir else None)
    if destination is not None:
        merged = json.loads(destination.read_text()) if destination.is_file() else {}
        merged.setdefault("datasets", {}).update(results["datasets"])
        merged.update({k: v for k, v in results.items() if k != "datasets"})
        write_json(destination, merged)
        results["written_to"] = str(destination)
    return results


def training_prompts(run_dir) -> set[str] | None:
    """The prompts a run trained on (from its config.json), or None for a target that is not a run."""
    if run_dir is None or not (Path(run_dir) / "config.json").is_file():
        return None
    cfg = json.loads((Path(run_dir) / "config.json").read_text())
    sources = [cfg["retain_data"], cfg["reroute_data"]] if cfg.get("retain_data") else [cfg["data"]]
    try:
        return {D.prompt_key(it) for s in sources
                for it in D.load_items(s, cfg.get("train_split", "train"), limit=cfg.get("limit"))}
    except (D.DataError, OSError, ValueError):
        return None  # training data no longer readable here: nothing to compare with


def _score_target(target, model, tok, run_dir, data, split, limit, truthfulqa, retain_data, max_length, batch_size,
                  base, behaviour, max_prompt_length, chat_template, progress: bool = True) -> dict:
    max_length, max_prompt_length, chat_template = encoding_settings(run_dir, max_length, max_prompt_length,
                                                                     chat_template)
    results: dict = {"target": str(target), "datasets": {},
                     "encoding": {"max_length": max_length, "max_prompt_length": max_prompt_length,
                                  "chat_template": chat_template}}
    trained = training_prompts(run_dir)
    for source in data:
        items = D.load_items(source, split, limit=limit)
        encoded = D.encode_ranked(items, tok, max_length, max_prompt_length, chat_template)
        results["datasets"][source] = item_accuracy(model, encoded, tok.pad_token_id, batch_size, base=base,
                                                    progress=source, progress_bar=progress)
        if trained is not None:  # a run: how many scored items it trained on (a local file's splits are one set)
            results["datasets"][source]["training_items"] = sum(D.prompt_key(it) in trained for it in items)
    if truthfulqa:
        results["truthfulqa"] = truthfulqa_mc(model, tok, limit=limit, batch_size=batch_size)
    if behaviour:
        from .behaviour import behaviour_rate, load_behaviour

        results["behaviour"] = {}
        for path in behaviour:
            res = behaviour_rate(model, tok, load_behaviour(path, limit), base=base, batch_size=batch_size)
            res.pop("items"), res.get("base", {}).pop("items", None)
            results["behaviour"][str(path)] = res
    if retain_data:
        pairs = D.to_pairs(D.load_items(retain_data, split, limit=limit))
        encoded = D.encode_pairs(pairs, tok, max_length, max_prompt_length, chat_template)
        results["retain_perplexity"] = {"data": retain_data, **perplexity_ratio(model, encoded, tok.pad_token_id, batch_size)}
    return results


def evaluate_direction(target: str, data: list[str], split: str = "test", limit: int | None = None,
                       max_length: int | None = None, out: str | None = None, dtype: str = "float32",
                       device: str | None = None) -> dict:
    """Score a saved ``Direction`` (``reprkit direction``) like an adapter: K-way accuracy by
    projection at its best layer, on the model it was read from."""
    from .directions import Direction

    d = Direction.load(target)
    model, tok = load_model(d.info.get("model", DEFAULT_MODEL), dtype=dtype, device=device)
    layer = d.info.get("best_layer", min(d.vectors))
    length = max_length or d.info.get("max_length", 256)
    results: dict = {"target": str(target), "direction": {"layer": layer, "method": d.info.get("method")},
                     "datasets": {}}
    for source in data:
        res = d.score(model, tok, D.load_items(source, split, limit=limit), layer, max_length=length)
        res.pop("items", None)
        results["datasets"][source] = res
    if out:
        write_json(Path(out), results)
        results["written_to"] = out
    return results


def format_results(results: dict) -> str:
    """A dataset-by-metric table: accuracy under each scoring rule (``reprkit.scoring``), the frozen
    model's, chance (1 / responses), the length-only baselines; then what truncation cut, per set."""
    w0 = max([len(source) + 1 for source in results["datasets"]] + [34])
    lines = ([f"model: {results['model']}"] if results.get("model") else []) + [f"{'data':<{w0}}{'n':>5}{'chance':>8}{'mean':>8}{'95% interval':>14}{'sum':>7}{'ratio':>7}"
             f"{'frozen mean':>12}{'frozen sum':>11}{'shortest':>9}{'longest':>8}"]
    notes = []
    for source, r in results["datasets"].items():
        base = r.get("base", {})
        lo, hi = r["accuracy_mean_ci95"]
        lb = r.get("length_baseline", {})
        lines.append(f"{source:<{w0}}{r['n']:>5}{r['chance']:>8.3f}{r['accuracy_mean']:>8.3f}{f'{lo:.3f}-{hi:.3f}':>14}"
                     f"{r['accuracy_sum']:>7.3f}{_num(r.get('accuracy_ratio')):>7}{_num(base.get('accuracy_mean')):>12}"
                     f"{_num(base.get('accuracy_sum')):>11}{_num(lb.get('accuracy_shortest')):>9}"
                     f"{_num(lb.get('accuracy_longest')):>8}")
        if "truncation" in r:
            from .truncation import describe

            notes.append(f"  {source}: {describe(r['truncation'])}")
        if r.get("training_items"):
            notes.append(f"  {source}: {r['training_items']} of {r['n']} scored items are training prompts of this run, "
                         "so not held out (score a slice it did not train on: --split 'train[80%:]')")
    lines.append("rules: mean = mean log-prob per response token, sum = summed log-prob, ratio = summed log-prob "
                 "ratio to the frozen model (adapters only); the best response must score strictly highest. "
                 "shortest / longest: the model-free length baselines (ties split)")
    if notes:
        lines += ["notes (truncation: prompts cut from the left, responses from the right):", *notes]
    if other := other_measures(results):
        w = max(len(r["measure"]) for r in other) + 1
        lines.append(f"{'other measures':<{w}}{'n':>5}{'chance':>8}{'value':>8}{'95% interval':>14}{'frozen':>8}")
        for r in other:
            lo, hi = r["ci95"]
            lines.append(f"{r['measure']:<{w}}{r['n']:>5}{_num(r['chance']):>8}{r['value']:>8.3f}"
                         f"{f'{lo:.3f}-{hi:.3f}':>14}{_num(r['frozen']):>8}")
        lines.append(OTHER_MEASURES_NOTE)
    if rp := results.get("retain_perplexity"):
        ratio = rp.get("ratio")
        lines.append(f"retain perplexity ({rp['data']}): {rp['perplexity']:.3f}"
                     + (f", frozen {rp['base_perplexity']:.3f}, ratio {ratio:.4f} "
                        f"({rp['ratio_ci95'][0]:.4f}-{rp['ratio_ci95'][1]:.4f})" if ratio else "") + f", n {rp['n']}")
    if "written_to" in results:
        lines.append(f"written to {results['written_to']}")
    return "\n".join(lines)


def _num(x) -> str:
    return "" if x is None else f"{x:.3f}"
