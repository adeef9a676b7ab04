import json

import pytest
import torch

from reprkit.cli import main, parse_train
from reprkit.config import PRESETS, TrainConfig


def test_defaults_and_flags():
    cfg = parse_train([])
    assert cfg == TrainConfig() and cfg.loss == "reprpo" and cfg.model == "smollm2-135m-instruct"
    assert cfg.data == "embedded:arithmetic"
    cfg = parse_train(["--loss", "dpo", "--dpo.beta", "0.3", "--lora.r", "4", "--eval-data", "genies:alpaca_easy"])
    assert cfg.loss == "dpo" and cfg.dpo.beta == 0.3 and cfg.lora.r == 4 and cfg.eval_data == ("genies:alpaca_easy",)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_set_defaults_and_flags_override(name):
    cfg = parse_train(["--preset", name])
    assert cfg.loss == PRESETS[name]["loss"]
    assert parse_train([f"--preset={name}", "--steps", "7"]).steps == 7


def test_direction_presets_configure_the_variant():
    assert parse_train(["--preset", "reprpo-direction"]).reprpo.retain == "direction"
    cfg = parse_train(["--preset", "reprpo-direction-only", "--reprpo.w-direction", "2"])
    assert cfg.reprpo.w_magnitude == 0 and cfg.reprpo.retain == "direction" and cfg.reprpo.w_direction == 2
    assert parse_train([]).reprpo.retain == "l2"  # presets do not leak into the defaults


def test_unknown_preset_and_bad_flag():
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        parse_train(["--preset", "nope"])
    with pytest.raises(SystemExit):
        parse_train(["--loss", "ppo"])


def test_help_documents_every_field(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for flag in ("--loss", "--data", "--reprpo.retain", "--dpo.beta", "--reroute.alpha", "--lora.r", "--resume",
                 "--gradient-checkpointing", "--quantization", "--preset"):
        assert flag in out, flag


def test_config_roundtrip():
    cfg = parse_train(["--preset", "ipo", "--steps", "3"])
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown config fields"):
        TrainConfig.from_dict({**cfg.to_dict(), "bogus": 1})


def _bad_input_cases(tmp_path, tiny_folder):
    no_rejected = tmp_path / "no_rejected.jsonl"
    no_rejected.write_text('{"prompt": "q", "chosen": "a"}\n' * 3)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n{"prompt": "q", "chosen": \n'
                      '{"prompt": "q", "chosen": "a", "rejected": "b"}\n')
    empty = tmp_path / "empty-model"
    empty.mkdir()
    model = ["--model", str(tiny_folder)]
    return {
        "missing file": (model + ["--data", str(tmp_path / "nope.jsonl")], "does not exist"),
        "no rejected column": (model + ["--data", str(no_rejected)], "rejected"),
        "broken jsonl line": (model + ["--data", str(broken)], r"broken\.jsonl line 2 is not valid JSON"),
        "layer out of range": (model + ["--reprpo.layers", "99"], "99"),
        "negative lr": (model + ["--lr", "-1"], r"--lr must be a finite number in \(0, 1\] \(got -1.0\)"),
        "empty model folder": (["--model", str(empty)], str(empty)),
        "negative loss weight": (model + ["--reprpo.w-retain", "-2"], r"--reprpo.w-retain must be a finite number in \[0"),
        "prompt longer than all": (model + ["--max-prompt-length", "300", "--max-length", "200"], "--max-prompt-length"),
        "batch larger than the data": (model + ["--batch-size", "100000"], "fewer than one batch of 100000"),
        **_settings_and_data_cases(tmp_path),
    }


def _settings_and_data_cases(tmp_path, write: bool = True):
    """Settings and data that cannot be right, each refused before the model loads (``--model`` is a
    path that does not exist: reaching it would be a different error)."""
    nowhere = ["--model", str(tmp_path / "no-model")]
    rows = [{"prompt": f"q{i}", "chosen": f"a{i}", "rejected": f"b{i}"} for i in range(8)]

    def file(name, text: str | bytes):
        path = tmp_path / name
        if write:
            path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return str(path)

    same = file("same.jsonl", "".join(json.dumps({**r, "rejected": r["chosen"]}) + "\n" for r in rows))
    ties = file("ties.jsonl", "".join(json.dumps({"prompt": r["prompt"], "responses": [r["chosen"], r["rejected"], "c"],
                                                  "scores": [1, 1, 1]}) + "\n" for r in rows))
    one_empty = file("one-empty.jsonl", "".join(json.dumps({**r, "chosen": "" if i == 3 else r["chosen"]}) + "\n"
                                                for i, r in enumerate(rows)))
    cases = {f"{flag} {value}": (nowhere + [flag, value] + extra, expect) for flag, value, extra, expect in [
        ("--lr", "inf", [], r"--lr must be a finite number in \(0, 1\] \(got inf\)"),
        ("--lr", "1e30", [], r"--lr must be a finite number in \(0, 1\]"),
        ("--weight-decay", "nan", [], r"--weight-decay must be a finite number in \[0, inf\) \(got nan\)"),
        ("--weight-decay", "inf", [], r"--weight-decay must be a finite number"),
        ("--max-grad-norm", "nan", [], r"--max-grad-norm must be a finite number in \(0, inf\)"),
        ("--max-grad-norm", "inf", [], r"--max-grad-norm must be a finite number"),
        ("--reprpo.w-retain", "nan", [], r"--reprpo.w-retain must be a finite number"),
        ("--reroute.alpha", "inf", ["--loss", "reroute"], r"--reroute.alpha must be a finite number"),
        ("--prefvec.target", "nan", ["--loss", "prefvec"], r"--prefvec.target must be a finite number"),
        ("--dpo.beta", "nan", ["--loss", "dpo"], r"--dpo.beta must be a finite number in \(0, inf\)"),
        ("--dpo.beta", "inf", ["--loss", "dpo"], r"--dpo.beta must be a finite number"),
        ("--dpo.label-smoothing", "5", ["--loss", "dpo"], r"--dpo.label-smoothing must be .* \[0, 0.5\).*reverse"),
        ("--dpo.dr-beta", "0", ["--loss", "dpo"], r"--dpo.dr-beta must be a finite number in \(0, inf\)"),
        ("--dpo.dr-beta", "-1", ["--loss", "dpo"], r"--dpo.dr-beta must be"),
        ("--plackett-luce.beta", "0", ["--loss", "plackett_luce"], r"--plackett-luce.beta must be"),
        ("--n-samples", "-1", [], r"--n-samples must be a finite number in \[0, inf\)"),
        ("--lora.r", "100000", [], r"--lora.r must be a finite number in \[1, 65536\]"),
        ("--lr", "0.5", ["--weight-decay", "4"], r"--lr x --weight-decay is 2"),
        ("--reprpo.w-retain", "0", ["--reprpo.w-direction", "0", "--reprpo.w-magnitude", "0"],
         r"every weight of the reprpo loss is 0"),
    ]}
    cases.update({
        "chosen == rejected": (nowhere + ["--data", same], r"none of its 8 rows prefers .*8 with every response the same text"),
        "equal ranked scores": (nowhere + ["--data", ties, "--loss", "plackett_luce"], r"8 with every response scored the same"),
        "empty file": (nowhere + ["--data", file("empty.jsonl", "")], r"empty\.jsonl is empty: no rows"),
        "whitespace file": (nowhere + ["--data", file("blank.jsonl", " \n\n")], r"blank\.jsonl holds only blank lines"),
        "invalid utf-8": (nowhere + ["--data", file("latin.jsonl", b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n')],
                          r"latin\.jsonl is not UTF-8 text: line 1, byte 16 is 0xe9"),
        "one empty chosen in 8": (nowhere + ["--data", one_empty], r"1 of 8 rows are bad: more than the 0.1 share .*"
                                  r"--max-bad-rows to 0.13 .*row 3: field 'chosen' is empty"),
    })
    return cases


@pytest.mark.parametrize("case", ["missing file", "no rejected column", "broken jsonl line", "layer out of range",
                                  "negative lr", "empty model folder", "negative loss weight", "prompt longer than all",
                                  "batch larger than the data", *_settings_and_data_cases(__import__("pathlib").Path("/nonexistent"), write=False)])
def test_bad_input_gives_one_line_and_leaves_no_run(case, tmp_path, tiny_folder, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args, expect = _bad_input_cases(tmp_path, tiny_folder)[case]
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *args, "--run-dir", str(run), "--steps", "2", "--eval-data", "--no-progress"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("reprkit: error:")]
    assert len(errors) == 1 and "Traceback" not in err
    import re

    assert re.search(expect, errors[0]), errors[0]
    assert not run.exists()  # nothing for the dashboard to list


def test_debug_shows_the_traceback(tmp_path, tiny_folder):
    with pytest.raises(ValueError, match="--lr must be a finite number"):
        main(["train", "--model", str(tiny_folder), "--lr", "-1", "--debug", "--run-dir", str(tmp_path / "r")])


def test_inspect_logit_lens_prints_a_table_and_writes_heatmaps(tmp_path, tiny_folder, capsys):
    html = tmp_path / "lens.html"
    main(["inspect", "--model", str(tiny_folder), "--logit-lens", "--layers", "0,1", "--prompts", "one two", "three",
          "--target", " two", "--html", str(html)])
    out = capsys.readouterr().out
    assert out.count("logit lens, prompt") == 2 and "target ' two'" in out
    text = html.read_text()
    assert text.count("Plotly.newPlot") == 2 and "cdn.plot.ly" in text


def test_inspect_logit_lens_follows_chat(tiny_folder, capsys):
    """--chat wraps the prompt in the chat template (its tokens appear in the table), --no-chat does not."""
    main(["inspect", "--model", str(tiny_folder), "--logit-lens", "--layers", "1", "--prompts", "one two", "three"])
    chat = capsys.readouterr().out
    main(["inspect", "--model", str(tiny_folder), "--logit-lens", "--layers", "1", "--prompts", "one two", "three",
          "--no-chat"])
    plain = capsys.readouterr().out
    assert "in the chat template's user turn" in chat and "as plain text" in plain
    assert "(token '\\n')" in chat and "(token ' two')" in plain  # the chat prompt ends with the template's newline


def test_inspect_table_is_each_prompts_token_norms_and_mean_direction_cosine(tiny_folder, tokenizer, capsys):
    """`reprkit inspect`: per layer, each prompt's mean and median token norm (block output) and the
    cosine of the two prompts' mean unit states, as computed by hand from output_hidden_states."""
    from transformers import AutoModelForCausalLM

    main(["inspect", "--model", str(tiny_folder), "--layers", "0,2", "--prompts", "one two", "three four five",
          "--no-chat"])
    out = capsys.readouterr().out
    head = next(x for x in out.splitlines() if x.split()[:1] == ["layer"])
    assert head.split() == ["layer", "norm_0", "median_0", "norm_1", "median_1", "cosine_0_1"]
    assert "mean / median over prompt k's tokens (no template included)" in out
    rows = {int(x.split()[0]): [float(v) for v in x.split()[1:]] for x in out.splitlines()
            if x.split() and x.split()[0].isdigit()}
    model = AutoModelForCausalLM.from_pretrained(tiny_folder)
    units = []
    for k, text in enumerate(["one two", "three four five"]):
        ids = tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            hs = model(**ids, output_hidden_states=True).hidden_states
        units.append({i: torch.nn.functional.normalize(hs[i + 1][0], dim=-1).mean(0) for i in (0, 2)})
        for i in (0, 2):
            norms = hs[i + 1][0].norm(dim=-1)
            assert rows[i][2 * k] == pytest.approx(norms.mean().item(), abs=1e-3)
            assert rows[i][2 * k + 1] == pytest.approx(norms.median().item(), abs=1e-3)
    for i in (0, 2):
        cos = torch.nn.functional.cosine_similarity(units[0][i], units[1][i], dim=0).item()
        assert rows[i][4] == pytest.approx(cos, abs=1e-3)


@pytest.mark.parametrize("command", ["eval", "inspect", "direction", "steer"])
def test_model_commands_take_device_and_dtype(command, capsys):
    """Every command that loads a model says where and in what dtype (as from_pretrained users
    expect), and defaults to the accelerator when there is one."""
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    assert "--device" in text and "--dtype" in text and "bfloat16" in text


def test_the_device_and_dtype_reach_the_model(tiny_folder, capsys, monkeypatch):
    import torch

    import reprkit.models as M

    seen = {}
    real = M.load_model

    def spy(name, **kwargs):
        seen.update(kwargs)
        return real(name, **kwargs)

    monkeypatch.setattr(M, "load_model", spy)
    main(["inspect", "--model", str(tiny_folder), "--layers", "0,1", "--dtype", "bfloat16", "--device", "cpu"])
    assert seen == {"dtype": "bfloat16", "device": "cpu"}
    assert "layer" in capsys.readouterr().out
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert M.default_device() == "cuda"
