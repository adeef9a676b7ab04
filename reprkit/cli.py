"""``reprkit`` command line: ``reprkit train | eval | dashboard | inspect | direction | steer | patch | compare``.

About 400 lines: one small dataclass per subcommand (its flags are its fields, its ``run`` what it
does, each calling into the library), plus ``parse`` and the error handling they share; a file per
subcommand would scatter the one table of commands a reader looks for here."""

from __future__ import annotations

import dataclasses
import sys
from typing import Literal

import tyro

from .packaged import DEFAULT_MODEL


@dataclasses.dataclass(kw_only=True)
class Placement:
    """Where and in what dtype a command runs the model (as ``from_pretrained`` users expect)."""

    device: str | None = None
    """cuda, cuda:1, mps, cpu, or auto (split over every GPU with a device_map); default: the
    accelerator if there is one, else cpu"""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """the weights' dtype (hidden-state maths and scores stay float32)"""

    def load(self, name: str):
        from .models import default_device, load_model

        return load_model(name, dtype=self.dtype, device=self.device or default_device())


@dataclasses.dataclass
class Inspect(Placement):
    """Print per-layer norms and the cosine between two prompts' mean directions."""

    model: str = DEFAULT_MODEL
    """hub id, local folder, or the default model's name"""
    layers: str = "range(0,1.0,3)"
    """layer spec: 3, -1, 0.5, 'range(.3,-2)', '0,10,20', 'model.layers.4'"""
    prompts: tuple[str, ...] = ("What is the capital of France?", "Write a short poem about the sea.")
    """two or more prompts (the cosine compares the first two)"""
    chat: bool = True
    """wrap prompts in the model's chat template"""
    logit_lens: bool = False
    """print each layer's top next tokens (the residual stream through the final norm and LM head)"""
    target: str | None = None
    """with --logit-lens: also the rank and probability of this token across layers"""
    html: str | None = None
    """with --logit-lens: also write a layer x position heatmap per prompt (plotly) to this .html file"""

    def run(self) -> None:
        from .inspection import format_table, layer_table

        model, tok = self.load(self.model)
        if self.logit_lens:
            from .lens import format_lens, logit_lens

            res = logit_lens(model, tok, list(self.prompts), self.layers, target=self.target,
                             chat=self.chat and bool(tok.chat_template))
            print("\n\n".join(format_lens(res, prompt=i) for i in range(len(self.prompts))))
            if self.html:
                from .app.figures import logit_lens_heatmap

                value = "target" if self.target is not None else "top"
                with open(self.html, "w") as f:
                    for i in range(len(self.prompts)):
                        f.write(logit_lens_heatmap(res, prompt=i, value=value).to_html(
                            full_html=False, include_plotlyjs="cdn" if i == 0 else False))
                print(f"heatmaps: {self.html}")
            return
        rows = layer_table(model, tok, self.prompts, self.layers, chat=self.chat)
        print(f"{self.model}: {model.config.num_hidden_layers} blocks, hidden size {model.config.hidden_size}")
        for k, p in enumerate(self.prompts):
            print(f"  prompt {k}: {p!r}")
        print(format_table(rows, chat=self.chat and bool(tok.chat_template)))


@dataclasses.dataclass
class Patch(Placement):
    """Activation patching: the corrupted prompt run with one activation from the clean run, swept
    over points, layers and positions; prints the recovered share (0 = corrupted, 1 = clean) and
    writes a heatmap per point (reprkit.patching)."""

    clean: str = "The Eiffel Tower is in the city of"
    corrupt: str = "The Colosseum is in the city of"
    answers: tuple[str, str] = (" Paris", " Rome")
    """the correct and the wrong answer, one token each: the metric is their logit difference at the last position"""
    model: str = DEFAULT_MODEL
    points: tuple[str, ...] = ("resid_pre",)
    """of resid_pre, attn_out, resid_mid, mlp_out, resid_post, z"""
    layers: str = "all"
    heads: bool = False
    """at z: one column per head and position"""
    positions: tuple[int, ...] = ()
    """only these positions (-1: the last); default every position"""
    all_positions: bool = False
    """patch every position at once (one column)"""
    align: Literal["same", "end"] = "same"
    """'same': the prompts must tokenize to the same length; 'end': positions are paired from the end"""
    attribution: bool = False
    """the gradient estimate (one forward and backward) instead of exact patching"""
    html: str | None = None
    """write the heatmaps (plotly) to this .html file"""
    json: str | None = None
    """write the result (values, layers, positions, tokens, clean and corrupted metrics, rule) here"""

    def run(self) -> None:
        from .patching import attribute, patch

        model, tok = self.load(self.model)
        fn = attribute if self.attribution else patch
        positions = "all" if self.all_positions else list(self.positions) or "each"
        res = fn(model, tok, self.clean, self.corrupt, answers=self.answers, points=self.points, layers=self.layers,
                 positions=positions, heads=self.heads, align=None if self.align == "same" else "end")
        print(f"{res.method} patching; metric {res.rule}: clean {res.clean:.3f}, corrupted {res.corrupt:.3f}")
        for point, v in res.normalised().items():
            print(f"\n{point}: recovered share (0 = corrupted run, 1 = clean run), layers down, positions across")
            print("layer " + " ".join(f"{t[:8]:>8}" for t in res.tokens))
            grid = v.sum(-1) if v.dim() == 3 else v
            for layer, row in zip(res.layers, grid.tolist()):
                print(f"{layer:>5} " + " ".join(f"{x:>8.2f}" for x in row))
        if self.json:
            from .runlog import write_json

            write_json(self.json, res.to_json())
            print(f"result: {self.json}")
        if self.html:
            with open(self.html, "w") as f:
                for i, point in enumerate(res.values):
                    f.write(res.figure(point).to_html(full_html=False, include_plotlyjs="cdn" if i == 0 else False))
            print(f"heatmaps: {self.html}")


@dataclasses.dataclass
class DirectionCmd(Placement):
    """Read a direction from contrast pairs (best vs worst response) and save it; print each layer's
    separation on held-out pairs."""

    data: str = "embedded:arithmetic"
    """preference data (its train split is read; --split to change)"""
    out: str = "directions/direction"
    """folder to write (direction.safetensors + direction.json)"""
    model: str = DEFAULT_MODEL
    layers: str = "range(.2,.9)"
    method: str = "mean_diff"
    """mean_diff (mass-mean shift), pca (first principal component of the paired differences; on A/B
    items read in both orders that is often the answer letter's axis, and flagged) or probe (logistic
    regression, --probe-c its inverse regularisation)"""
    probe_c: float = 1.0
    token: str = "mean"
    """which token(s) of each response: 'mean' (its completion tokens), 'mean_response' (its own
    tokens, template end tokens excluded), 'last' (its own last token) or 'last_completion' (the
    completion's last token, a chat template's end token)"""
    split: str = "train"
    heldout_split: str = "test"
    """the split scored as held out; where the data has no separate one (a local file, whose every
    split is the same rows), the last --heldout-fraction of the rows is held out instead, and said"""
    heldout_fraction: float = 0.2
    seed: int = 0
    """where a local file is split: the rows are shuffled with this seed first (files are often
    ordered), the same order `reprkit steer --evaluate --seed` uses"""
    both_orders: bool = True
    """A/B items (Anthropic's evaluation files): read and score each question also with its two
    choices swapped, so each letter is the best answer equally often and the direction cannot read the
    letter (after the split: both orders of a question stay on one side of it)"""
    limit: int | None = None
    max_length: int = 256
    max_prompt_length: int | None = None
    """tokens of prompt (cut from the left); default half of --max-length"""
    gguf: str | None = None
    """also write a llama.cpp control vector here"""
    positive: str | None = None
    """contrast prompts instead of preference data: a text file (one prompt per line) or a .json /
    .jsonl list of the positive prompts, paired line by line with --negative"""
    negative: str | None = None
    chat: bool = False
    """with --positive/--negative: wrap each prompt as the user turn of the chat template"""

    def run(self) -> None:
        from . import data as D
        from .directions import from_pairs, from_prompts

        model, tok = self.load(self.model)
        if self.positive or self.negative:
            if not (self.positive and self.negative):
                raise ValueError("contrast prompts need both --positive FILE and --negative FILE")
            pos, neg = read_prompts(self.positive), read_prompts(self.negative)
            token = self.token if self.token in ("mean", "last") else "last"
            d = from_prompts(model, tok, pos, neg, self.layers, self.method, token=token, chat=self.chat,
                             max_length=self.max_length, source=f"{self.positive} vs {self.negative}",
                             probe_c=self.probe_c)
            d.info["model"] = self.model
            d.save(self.out)
            print(f"{'layer':>6}{'separation':>12}{'pair acc':>10}   ({len(pos)} prompt pairs, read at the '{token}' token; "
                  "no held-out score: pass held-out prompts to `reprkit steer --evaluate`)")
            for k in sorted(d.vectors):
                st = d.info["stats"][str(k)]
                print(f"{k:>6}{st['separation']:>12.3f}{st['pair_accuracy']:>10.3f}")
            print(f"written to {self.out}")
            if self.gguf:
                d.to_gguf(self.gguf, model_hint=model.config.model_type)
            return
        items = D.load_items(self.data, self.split)
        held = D.load_items(self.data, self.heldout_split)
        scored_on = f"{self.data} {self.heldout_split}"
        read_on = f"{self.data} {self.split}"
        if _same_rows(items, held):
            if not 0 < self.heldout_fraction < 1:
                raise ValueError(f"--heldout-fraction must be between 0 and 1, not {self.heldout_fraction}")
            rows = D.shuffled(items, self.seed)[: self.limit] if self.limit else D.shuffled(items, self.seed)
            cut = len(rows) - max(1, round(len(rows) * self.heldout_fraction))
            if cut < 2:
                raise ValueError(f"{self.data} has {len(rows)} items: too few to hold some out; add items")
            items, held = rows[:cut], rows[cut:]
            scored_on = (f"{len(held)} of {self.data}'s {len(rows)} rows held out at random (--seed {self.seed}; "
                         f"its '{self.heldout_split}' split is the same rows as '{self.split}')")
            read_on = f"{self.data}: the other {len(items)} rows (shuffled with --seed {self.seed})"
        elif self.limit:
            items, held = items[: self.limit], held[: self.limit]
        n_read = 0
        if self.both_orders:
            from .scoring import both_orders

            (items, n_read), (held, n_held) = both_orders(items), both_orders(held)
            if n_read or n_held:
                print(f"both answer orders: {n_read} read and {n_held} held-out A/B questions also with their choices "
                      "swapped (--no-both-orders to read them as they are)")
                read_on += f", each A/B question in both answer orders ({n_read})"
                scored_on += f", each A/B question in both answer orders ({n_held})"
        d = from_pairs(model, tok, items, self.layers, self.method, self.token, self.max_length, read_on,
                       self.probe_c, max_prompt_length=self.max_prompt_length)
        best, per_layer = d.best_layer(model, tok, held, self.max_length, self.max_prompt_length)
        from .scoring import letter_baseline, reads_the_letter

        letters = letter_baseline(held)
        d.info["best_layer"] = best
        d.info["model"] = self.model
        d.info["heldout"] = {str(k): v["accuracy_mean"] for k, v in per_layer.items()}
        d.info["heldout_data"] = scored_on
        chance = next(iter(per_layer.values()))["chance"]
        print(f"held-out accuracy (the best response's states project highest on the direction; chance "
              f"{chance:.3f}) scored on {scored_on}; direction read at the '{self.token}' token")
        if letters:
            always = ", ".join(f"always ({x}) {v:.3f}" for x, v in letters["always"].items())
            print(f"answer-letter baseline on the held-out items (no model; {letters['rule']}): {always}")
        print(f"{'layer':>6}{'separation (train)':>20}{'pair acc (train)':>18}{'accuracy (held out)':>21}")
        flagged = {}
        for k, v in per_layer.items():
            st = d.info["stats"][str(k)]
            letter = reads_the_letter(v["items"]["correct"], letters)
            if letter:
                flagged[str(k)] = letter
            print(f"{k:>6}{st['separation']:>20.3f}{st['pair_accuracy']:>18.3f}{v['accuracy_mean']:>21.3f}"
                  + ("  <- best" if k == best else "") + (f"  reads the answer letter ({letter})" if letter else ""))
        if flagged:
            # read unbalanced, the letter can stand in for the behaviour; read balanced, each question's
            # difference is (behaviour + letter) in one order and (behaviour - letter) in the other, so the
            # axis of most variance (a PCA's) is the letter's wherever it varies more than the behaviour
            fix = ("--method mean_diff (the letter's part cancels over the two orders) or --method probe: read "
                   "balanced, a PCA takes the axis of most variance of the paired differences, which is the letter's"
                   if n_read else
                   "read it on letter-balanced items (each question with both answer orders: --both-orders, the "
                   "default for A/B files)")
            print(f"! at {len(flagged)} of {len(per_layer)} layers a held-out item counts as right exactly when its best "
                  "answer has one letter (95% of items or more): the direction separates answers by their letter, "
                  f"not by what they say. Fix: {fix}")
        if letters:
            d.info["letter_baseline"] = letters["always"]
            d.info["reads_the_letter"] = flagged
        d.save(self.out)
        print(f"written to {self.out}")
        if self.gguf:
            d.to_gguf(self.gguf, model_hint=model.config.model_type)


def steerability_command(self: Steer, model, tok, d) -> None:
    """``reprkit steer --evaluate FILE``: the steerability table, at multiples of a calibrated strength."""
    import json
    from pathlib import Path

    from .behaviour import load_behaviour
    from .data import render_prompt, shuffled
    from .steerability import format_steerability, steerability
    from .steering import calibrate_strength

    items = load_behaviour(self.evaluate)
    items = (shuffled(items, self.seed) if self.seed is not None else items)[self.skip:]
    items = items[: self.limit] if self.limit else items
    if not items:
        raise ValueError(f"{self.evaluate}: no items left after --skip {self.skip}; lower --skip")
    layers = [self.layer] if self.layer is not None else None
    chat = bool(tok.chat_template)
    prompts = [render_prompt(tok, it["prompt"], chat) for it in items[:16]]
    cal = calibrate_strength(model, tok, d, prompts, layer=layers, kl=self.kl)
    strengths = [m * cal["strength"] for m in self.strengths]
    res = steerability(model, tok, d, items, strengths, layers=cal["layers"])
    res["calibration"] = {"kl": self.kl, "strength": cal["strength"], "multiples": list(self.strengths)}
    order = f"shuffled with --seed {self.seed}" if self.seed is not None else "in file order"
    res["data"] = f"{self.evaluate} items {self.skip}..{self.skip + len(items)} ({order})"
    print(f"{res['data']}; unit strength = {cal['strength']:.3f}, calibrated to KL {self.kl} (q0.9 over the first "
          f"{len(prompts)} prompts)")
    print(format_steerability(res))
    if self.out:
        from .app.figures import steerability_figure

        Path(self.out).parent.mkdir(parents=True, exist_ok=True)
        Path(self.out).write_text(json.dumps(res))
        steerability_figure(res).write_html(str(Path(self.out).with_suffix(".html")), include_plotlyjs="cdn")
        print(f"written to {self.out} and {Path(self.out).with_suffix('.html')}")


def _same_rows(a: list[dict], b: list[dict]) -> bool:
    """Whether two item lists share any item (a 'held-out' split that is not held out)."""
    from .data import prompt_key

    key = lambda it: (prompt_key(it), tuple(it["responses"]))  # noqa: E731
    return bool({key(x) for x in a} & {key(x) for x in b})


def read_prompts(path: str) -> list[str]:
    """Prompts from a text file (one per non-empty line) or a JSON / JSON-lines list of strings."""
    import json
    from pathlib import Path

    text = Path(path).read_text()
    if path.endswith(".json"):
        rows = json.loads(text)
    elif path.endswith(".jsonl"):
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        rows = [line for line in text.splitlines() if line.strip()]
    if not rows or not all(isinstance(r, str) for r in rows):
        raise ValueError(f"{path}: expected a non-empty list of prompt strings (one per line, or a JSON list)")
    return rows


@dataclasses.dataclass
class Steer(Placement):
    """Greedy completions of a prompt unsteered, and steered along a saved direction at +/- a
    strength calibrated to a KL budget."""

    direction: str
    """folder written by `reprkit direction`"""
    prompt: tuple[str, ...] = ("Tell me about your weekend.",)
    model: str = DEFAULT_MODEL
    layer: int | None = None
    """layer to steer (default: the direction's best layer)"""
    kl: float = 1.0
    """KL budget (0.9 quantile of per-token KL of next-token distributions over the prompts)"""
    max_new_tokens: int = 40
    evaluate: str | None = None
    """a behaviour file (Anthropic's model-written evaluation format): instead of completions, the
    per-item steerability table over --strengths (x the strength calibrated to --kl on its prompts)"""
    strengths: tuple[float, ...] = (-1.0, -0.5, 0.0, 0.5, 1.0)
    """with --evaluate: multiples of the calibrated strength"""
    limit: int | None = 100
    """with --evaluate: the first n items of the file"""
    skip: int = 0
    """with --evaluate: skip the first n items (e.g. those the direction was read from)"""
    seed: int | None = 0
    """with --evaluate: shuffle the file's rows with this seed before --skip and --limit, as
    `reprkit direction --seed` does (files are often ordered); None keeps the file's order"""
    out: str | None = None
    """with --evaluate: write the result (.json) and its figure (.html beside it)"""

    def run(self) -> None:
        from .data import render_prompt
        from .devices import to_model
        from .directions import Direction
        from .hooks import capture
        from .steering import calibrate_strength

        model, tok = self.load(self.model)
        d = Direction.load(self.direction)
        if self.evaluate:
            steerability_command(self, model, tok, d)
            return
        layer = self.layer if self.layer is not None else d.info.get("best_layer", min(d.vectors))
        texts = [render_prompt(tok, [{"role": "user", "content": p}], bool(tok.chat_template)) for p in self.prompt]
        cal = calibrate_strength(model, tok, d, texts, layer=layer, kl=self.kl)
        print(f"layer {layer}: strength {cal['strength']:.3f} gives KL {cal['kl']:.3f} "
              f"(q{cal['quantile']:.2f} over {cal['n_tokens']} tokens)")
        for text, prompt in zip(texts, self.prompt):
            enc = to_model(model, tok(text, return_tensors="pt", add_special_tokens=False))
            for label, s in (("unsteered", 0.0), (f"+{cal['strength']:.2f}", cal["strength"]),
                             (f"-{cal['strength']:.2f}", -cal["strength"])):
                with capture(model, layer, edit_output=d.edit(s, layer)):
                    out = model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False,
                                         pad_token_id=tok.pad_token_id)
                print(f"[{label}] {prompt!r} -> {tok.decode(out[0, enc['input_ids'].shape[1]:], skip_special_tokens=True)!r}")


@dataclasses.dataclass
class Dashboard:
    """Open the Streamlit dashboard of the runs in RUNS_DIR (served on localhost)."""

    runs_dir: tyro.conf.Positional[str] = "runs"
    """directory whose sub-directories are runs"""
    port: int = 8501
    address: str = "127.0.0.1"
    """address to serve on (localhost by default; 0.0.0.0 exposes it to the network)"""

    def command(self) -> list[str]:
        import importlib.util

        app = importlib.util.find_spec("reprkit.app.dashboard").origin  # without importing (it renders)
        return [sys.executable, "-m", "streamlit", "run", str(app), "--server.address", self.address,
                "--server.port", str(self.port), "--server.headless", "true",
                "--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal",
                # no traceback (with the server's paths) ever reaches the page; the console keeps it
                "--client.showErrorDetails", _no_error_details(), "--", "--runs-dir", self.runs_dir]

    def run(self) -> None:
        import importlib.util
        import os

        from .extras import MissingExtra

        for module in ("streamlit", "plotly"):
            if importlib.util.find_spec(module) is None:
                raise MissingExtra(f"the dashboard needs {module}, which is not installed: pip install 'reprkit[dashboard]'")
        os.execv(sys.executable, self.command())


@dataclasses.dataclass
class Compare:
    """Compare training methods on a shift (source -> targets) under one design: lengths checked,
    rates chosen on source validation, seeds, paired statistics, ceilings, a report
    (``reprkit.compare``). Resumable: run it again to go on where it stopped."""

    config: tyro.conf.Positional[str]
    """JSON file of the grid's fields (``reprkit.compare.Grid``; ``experiments/grids/`` has examples)"""
    out: str = "results/compare"
    """output folder: cells, sweeps, the report (results.md, csv, figures)"""
    methods: list[str] | None = None
    """this sitting runs only these of the grid's methods (the grid itself is unchanged)"""
    sources: list[str] | None = None
    """this sitting runs only the shifts from these sources (or a target's ceiling)"""
    seeds: list[int] | None = None
    """this sitting trains these seeds (default: the grid's); a seed outside the grid's adds cells beside it"""
    max_cells: int | None = None
    """stop after this many new cells"""
    poll: float = 60.0
    """seconds between looks at cells that wait on another process's sweep (processes can share a grid)"""
    status: bool = False
    """only say what is done, started and left, with an estimate of the time left (read-only)"""
    workers: int = 2
    """with --status: workers sharing the grid, for the wall time"""
    check_lengths: bool = False
    """only count what truncation cuts in every set of the grid (truncation.json) and stop"""
    shift_file: str | None = None
    """a GENIES-format shift list (overrides the grid's)"""
    report: bool = False
    """only write the report from the cells done so far (interim where the design is not), beside
    running workers; trains nothing"""

    def run(self) -> None:
        from .compare import Grid, run

        if self.report:
            from .compare.command import report_only

            report_only(self.out)
            return

        grid = Grid.from_file(self.config)
        if self.shift_file:
            grid.shift_file = self.shift_file
        res = run(grid, self.out, methods=self.methods, sources=self.sources, seeds=self.seeds,
                  max_cells=self.max_cells, poll=self.poll, status=self.status, workers=self.workers,
                  check_lengths=self.check_lengths)
        if self.status:
            from .compare.status import format_status

            print(format_status(res, self.workers))


@dataclasses.dataclass
class Eval(Placement):
    """Evaluate a run directory, a saved adapter or a model (default: the base model) on any data."""

    target: tyro.conf.Positional[str] = DEFAULT_MODEL
    """run directory, adapter directory, saved direction (`reprkit direction`), hub id / local folder, or
    the default model's name"""
    data: tuple[str, ...] = ()
    """datasets (test split): embedded[:task], genies:<name>, hh-rlhf:<subset>, a file, a hub id"""
    shift: str | None = None
    """a GENIES shift by its source distribution: adds source, target (and reference) to --data"""
    split: str = "test"
    limit: int | None = None
    """at most this many items per dataset (and TruthfulQA questions)"""
    truthfulqa: bool = False
    """TruthfulQA MC1 and MC2 (../shared/data/truthfulqa or the hub)"""
    retain_data: str | None = None
    """chosen completions of this dataset give the perplexity ratio vs the frozen model"""
    behaviour: tuple[str, ...] = ()
    """Anthropic model-written eval files (.jsonl): the rate of behaviour-matching answers"""
    max_length: int | None = None
    """tokens of prompt + response (default: a run's own setting, else 256)"""
    max_prompt_length: int | None = None
    """tokens of prompt (default: a run's own setting, else half of --max-length)"""
    batch_size: int = 16
    eval_dtype: Literal["float32", "bfloat16"] = "float32"
    """bfloat16: score under bf16 autocast (measured to agree with float32 item by item, see README)"""
    out: str | None = None
    """where to write the JSON (default: the run's eval.json; nothing for a plain model)"""
    progress: bool = True
    """a progress bar while scoring (--no-progress: one line per scored set)"""

    def run(self) -> None:
        from .data import shift_sources
        from .evalrun import evaluate_target, format_results
        from .models import default_device

        data = list(dict.fromkeys(list(self.data) + (shift_sources(self.shift) if self.shift else [])))
        if not data and not self.truthfulqa and not self.retain_data and not self.behaviour:
            raise SystemExit("nothing to evaluate: pass --data, --shift, --truthfulqa, --retain-data or --behaviour")
        results = evaluate_target(self.target, data, self.split, self.limit, self.truthfulqa, self.retain_data,
                                  self.max_length, self.batch_size, self.out, behaviour=list(self.behaviour),
                                  max_prompt_length=self.max_prompt_length, eval_dtype=self.eval_dtype,
                                  dtype=self.dtype, device=self.device or default_device(), progress=self.progress)
        print(format_results(results))


def _no_error_details() -> str:
    """Streamlit's value for showing no error details: "none" where it has one (1.4x and later),
    else the older boolean false (every panel of the dashboard also catches its own errors)."""
    try:
        from streamlit import config

        config.get_config_options()
        option = config._config_options["client.showErrorDetails"]
        return "none" if isinstance(option.default_val, str) else "false"
    except Exception:  # an internal that moved: the boolean every version accepts
        return "false"


def _take_preset(argv: list[str]) -> tuple[str | None, list[str]]:
    """Remove ``--preset NAME`` (or ``--preset=NAME``) from argv."""
    rest, name, i = [], None, 0
    while i < len(argv):
        if argv[i] == "--preset" and i + 1 < len(argv):
            name, i = argv[i + 1], i + 2
            continue
        if argv[i].startswith("--preset="):
            name = argv[i].split("=", 1)[1]
        else:
            rest.append(argv[i])
        i += 1
    return name, rest


def parse_train(argv: list[str]):
    """``reprkit train`` arguments -> TrainConfig; ``--preset NAME`` sets the defaults, flags override."""
    from .config import PRESETS, TrainConfig, preset

    name, rest = _take_preset(argv)
    default = preset(name) if name else TrainConfig()
    return tyro.cli(TrainConfig, args=rest, default=default, prog="reprkit train",
                    description=f"{TrainConfig.__doc__}\n\n--preset NAME first sets the defaults: {', '.join(PRESETS)}.")


def main(argv: list[str] | None = None) -> None:
    """Entry point; errors print ``reprkit: error: <message>`` and exit 2 (bad input) or 1 (training
    stopped); ``--debug`` shows the traceback instead."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # CPU kernel notices, not ours
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["--version"], ["-V"]):
        from . import __version__

        print(f"reprkit {__version__}")
        return
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    try:
        _run(argv)
    except KeyboardInterrupt:  # Ctrl-C outside training (training stops itself with a checkpoint)
        if debug:
            raise
        print("reprkit: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as err:
        if debug:
            raise
        from .training.signals import Stopped

        if isinstance(err, Stopped):  # SIGTERM / SIGINT: the checkpoint and resume command are in the message
            print(f"reprkit: {err}", file=sys.stderr)
            raise SystemExit(err.exit_code) from None
        from .data import DataError
        from .extras import MissingExtra
        from .train import TrainingError

        usage = isinstance(err, (DataError, ValueError, FileNotFoundError, FileExistsError, PermissionError, OSError,
                                 KeyError, MissingExtra))
        message = str(err).strip() or type(err).__name__
        if isinstance(err, OSError) and not isinstance(err, (FileNotFoundError, FileExistsError, PermissionError)):
            message = f"{message} ({type(err).__name__})"
        print(f"reprkit: error: {message}", file=sys.stderr)
        if not isinstance(err, TrainingError):
            print("(run again with --debug for the traceback)", file=sys.stderr)
        raise SystemExit(2 if usage and not isinstance(err, TrainingError) else 1) from None


def parse(argv: list[str]):
    """``reprkit ...`` arguments -> the command they name (a validated ``TrainConfig`` for ``train``,
    else the subcommand's dataclass), without running it. The docs' tests check every command line
    in the guides this way, so a renamed flag fails them."""
    from .config import TrainConfig

    if argv[:1] == ["train"]:
        cfg = parse_train(argv[1:])
        cfg.validate()  # before anything loads
        return cfg
    return tyro.extras.subcommand_cli_from_dict({"train": TrainConfig, "eval": Eval, "dashboard": Dashboard,
                                                 "inspect": Inspect, "direction": DirectionCmd, "steer": Steer,
                                                 "patch": Patch, "compare": Compare},
                                                args=argv, prog="reprkit")


def _run(argv: list[str]) -> None:
    from .config import TrainConfig

    command = parse(argv)
    if argv[:1] == ["train"]:
        from .train import train

        train(command)
        return
    if isinstance(command, TrainConfig):  # only reached for `reprkit --help`
        return
    command.run()


if __name__ == "__main__":
    main(sys.argv[1:])
