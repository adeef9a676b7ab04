import json
import math
import os
import signal
import subprocess
import sys

import pytest
import torch

from reprkit.config import TrainConfig
from reprkit.losses import ReprPO
from reprkit.runlog import read_jsonl
from reprkit.train import TrainingError, check_adapter, train


def tiny_config(tiny_folder, run_dir, **kw):
    base = dict(model=str(tiny_folder), run_dir=str(run_dir), steps=6, batch_size=4, warmup_steps=1,
                eval_limit=8, n_samples=1, save_every=3, progress=False, lr=1e-3,
                eval_data=("embedded:arithmetic", "embedded:capitals"))
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("loss", ["reprpo", "dpo", "reroute", "prefvec"])
def test_each_loss_writes_a_complete_run(tiny_folder, tmp_path, loss, capsys):
    run = train(tiny_config(tiny_folder, tmp_path / loss, loss=loss))
    for name in ("config.json", "metrics.jsonl", "eval.json", "samples.jsonl", "adapter/adapter_config.json",
                 "adapter/adapter_model.safetensors"):
        assert (run / name).is_file(), name
    rows, bad = read_jsonl(run / "metrics.jsonl")
    assert bad == 0 and [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert json.loads((run / "config.json").read_text())["loss"] == loss
    layer_rows = rows[-1]["layers"]
    assert layer_rows and all({"cos_chosen", "cos_rejected", "norm_chosen", "norm_rejected"} <= set(v) for v in layer_rows.values())
    assert rows[0]["layers"][next(iter(layer_rows))]["cos_chosen"] == pytest.approx(1.0)  # LoRA B starts at 0
    assert any(v["cos_rejected"] < 1.0 for v in layer_rows.values())  # and then it moves
    ev = json.loads((run / "eval.json").read_text())
    assert set(ev["datasets"]) == {"embedded:arithmetic", "embedded:capitals"}
    assert {"accuracy_mean", "accuracy_sum", "base", "n"} <= set(ev["datasets"]["embedded:arithmetic"])
    if loss == "dpo":
        assert "accuracy" in rows[0] and "reward_accuracy" in rows[0]
    else:
        assert "accuracy" not in rows[0]
    out = capsys.readouterr().out
    assert "(in-distribution)" in out and "cos chosen" in out and "McNemar p" in out
    # each set's chance (1 / responses) in its row, and the length-only baselines below
    ar = ev["datasets"]["embedded:arithmetic"]
    row = next(line for line in out.splitlines() if line.startswith("embedded:arithmetic"))
    tag_end = row.index("]") + 1 if "trained on]" in row else row.index(")") + 1
    assert row[tag_end:].split()[1] == f"{ar['chance']:.3f}"   # n, chance, before, after, ...
    lb = ar["length_baseline"]
    assert "length only, no model (prefer the shortest / the longest response" in out
    row = next(line for line in out.splitlines() if line.startswith("  embedded:arithmetic"))
    assert row.split()[1:] == [f"{lb['accuracy_shortest']:.3f}", "/", f"{lb['accuracy_longest']:.3f}"]


def test_hidden_state_loss_never_runs_late_layers_or_head(tiny_folder, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_folder)
    tok = AutoTokenizer.from_pretrained(tiny_folder)
    calls = {"head": 0, "last": 0}
    model.lm_head.register_forward_hook(lambda *a: calls.__setitem__("head", calls["head"] + 1))
    model.model.layers[3].register_forward_hook(lambda *a: calls.__setitem__("last", calls["last"] + 1))
    cfg = tiny_config(tiny_folder, tmp_path / "r", steps=2, eval_data=())
    cfg.reprpo.layers = "1"
    train(cfg, model=model, tokenizer=tok)
    assert calls == {"head": 0, "last": 0}  # training only; eval_data is empty and samples need prompts
    # LoRA sits only on blocks up to the last loss layer
    names = [n for n, _ in model.named_parameters() if "lora_A" in n]
    assert names and all(".layers.0." in n or ".layers.1." in n for n in names)


def test_guard_refuses_a_nested_second_adapter(tiny_folder, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(tiny_folder)
    once = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"]))
    twice = get_peft_model(once, LoraConfig(r=2, target_modules=["v_proj"]))  # the classic mistake
    with pytest.raises(TrainingError, match="nested|another adapter|already"):
        check_adapter(twice)
    with pytest.raises(TrainingError):
        train(tiny_config(tiny_folder, tmp_path / "r"), model=twice, tokenizer=AutoTokenizer.from_pretrained(tiny_folder))


def test_guard_refuses_training_an_inactive_adapter(tiny_folder):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_folder), LoraConfig(r=2, target_modules=["q_proj"]))
    model.add_adapter("second", LoraConfig(r=2, target_modules=["q_proj"]))
    for n, p in model.named_parameters():  # train "second" while "default" is active
        p.requires_grad = ".second." in n
    with pytest.raises(TrainingError, match="another adapter than the active one"):
        check_adapter(model)


def test_guard_refuses_an_adapter_the_loss_cannot_reach(tiny_folder, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # LoRA only on the last block, but the loss stops after block 1: no gradient can reach it
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_folder),
                           LoraConfig(r=2, target_modules=["q_proj"], layers_to_transform=[3]))
    cfg = tiny_config(tiny_folder, tmp_path / "r", eval_data=())
    cfg.reprpo.layers = "1"
    with pytest.raises(TrainingError, match="does not depend on any trainable weight"):
        train(cfg, model=model, tokenizer=AutoTokenizer.from_pretrained(tiny_folder))
    assert not (tmp_path / "r").exists()  # a new run without a checkpoint leaves nothing to block a rerun


def test_guard_detects_an_adapter_that_does_not_change(tiny_folder, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # dropout 1.0 before LoRA: the graph reaches the adapter but every gradient is zero
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_folder),
                           LoraConfig(r=2, target_modules=["q_proj"], lora_dropout=1.0))
    with pytest.raises(TrainingError, match="did not change after an optimiser step"):
        train(tiny_config(tiny_folder, tmp_path / "r", eval_data=()), model=model,
              tokenizer=AutoTokenizer.from_pretrained(tiny_folder))
    # step 1 is warm-up (learning rate 0); the guard fires at step 2, the first with a positive rate,
    # before any checkpoint: the new run's directory is removed (it would block a rerun there)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("at,kept", [(1, None), (5, 3)])
def test_nan_loss_stops_with_step_and_keeps_the_log_only_with_a_checkpoint(tiny_folder, tmp_path, monkeypatch, at, kept):
    """The loss turns NaN at step ``at``: before any checkpoint the new run is removed (nothing in it
    can be resumed, and it would block a rerun); after step 3's checkpoint it is kept for --resume."""
    real, calls = ReprPO.__call__, {"n": 0}

    def nan_at(self, inputs):
        calls["n"] += 1
        value, terms = real(self, inputs)
        return (value * float("nan") if calls["n"] >= at else value), terms

    monkeypatch.setattr(ReprPO, "__call__", nan_at)
    cfg = tiny_config(tiny_folder, tmp_path / "r", eval_data=(), steps=8)
    with pytest.raises(TrainingError, match=rf"loss is nan at step {at}.*" + ("is removed" if kept is None else
                                                                            "keeps everything written up to step 4")):
        train(cfg)
    if kept is None:
        assert not (tmp_path / "r").exists()
    else:
        rows, bad = read_jsonl(tmp_path / "r" / "metrics.jsonl")
        assert bad == 0 and [r["step"] for r in rows] == [1, 2, 3, 4]
        assert [p.name for p in (tmp_path / "r").glob("checkpoint-*")] == ["checkpoint-000003"]


def _broken(tiny_folder, where: str):
    """The tiny model with an adapter whose layer-2 LoRA (``where="adapter"``) or base weight
    (``where="base"``) is NaN."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reprkit.train import add_lora

    model = AutoModelForCausalLM.from_pretrained(tiny_folder)
    model = add_lora(model, TrainConfig(), None)
    layer = model.base_model.model.model.layers[2].mlp.down_proj
    with torch.no_grad():
        if where == "adapter":
            layer.lora_B["default"].weight.fill_(float("nan"))
        else:
            layer.base_layer.weight[0, 0] = float("inf")
    return model, AutoTokenizer.from_pretrained(tiny_folder)


@pytest.mark.parametrize("where,expect", [
    ("adapter", r"policy's hidden states are first non-finite at layer 2 \(.*layers\.2\).*adapter diverged"),
    ("base", r"non-finite from layer 2 \(.*layers\.2\) in the frozen model"),
])
@pytest.mark.parametrize("loss", ["reprpo", "dpo"])
def test_nan_names_the_step_and_layer(tiny_folder, tmp_path, where, expect, loss):
    model, tok = _broken(tiny_folder, where)
    cfg = tiny_config(tiny_folder, tmp_path / "r", loss=loss, eval_data=())
    cfg.reprpo.layers = "2,3"
    with pytest.raises(TrainingError, match="at step 1.*" + expect):
        train(cfg, model=model, tokenizer=tok)
    assert not (tmp_path / "r").exists()  # no checkpoint yet: nothing kept to block a rerun


def test_run_dir_that_is_not_empty_is_refused(tiny_folder, tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--resume"):
        train(tiny_config(tiny_folder, tmp_path / "r"))
    assert (tmp_path / "r" / "notes.txt").read_text() == "mine"


def _cli(tiny_folder, run_dir, *extra):
    return [sys.executable, "-m", "reprkit.cli", "train", "--model", str(tiny_folder), "--run-dir", str(run_dir),
            "--steps", "8", "--batch-size", "4", "--warmup-steps", "1", "--lr", "1e-3", "--save-every", "3",
            "--eval-data", "embedded:arithmetic", "--eval-limit", "4", "--n-samples", "1", "--no-progress", *extra]


@pytest.fixture(scope="module")
def uninterrupted(tiny_folder, tmp_path_factory):
    full = tmp_path_factory.mktemp("uninterrupted") / "full"
    subprocess.run(_cli(tiny_folder, full), check=True, capture_output=True)
    return full


@pytest.mark.parametrize("where,step", [("mid-checkpoint", 3), ("logged", 5)])
def test_sigkill_and_resume_logs_every_step_once(tiny_folder, tmp_path, uninterrupted, where, step):
    """SIGKILL at an exact point (tests/kill_at.py): while a checkpoint is being written (the resume
    starts from the one before it: none, so from scratch), and between checkpoints (from step 3's).
    Killing just after a publish (KILL_WHERE=checkpointed) works the same and is left to kill_at."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    full = uninterrupted
    run = tmp_path / "killed"
    killed = subprocess.run([sys.executable, "-m", "tests.kill_at", *_cli(tiny_folder, run)[3:]],
                            env={**env, "KILL_AT_STEP": str(step), "KILL_WHERE": where}, capture_output=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    killed_at = len(read_jsonl(run / "metrics.jsonl")[0])
    assert killed_at == step
    leftovers = [p.name for p in run.iterdir() if p.name.startswith(".checkpoint")]
    assert bool(leftovers) == (where == "mid-checkpoint")  # an unpublished checkpoint is left behind
    subprocess.run(_cli(tiny_folder, run, "--resume", str(run)), check=True, env=env, capture_output=True)
    rows, bad = read_jsonl(run / "metrics.jsonl")
    assert bad == 0 and [r["step"] for r in rows] == list(range(1, 9))
    reference, _ = read_jsonl(full / "metrics.jsonl")
    # the resumed run continues the same data order, optimiser and scheduler state
    for a, b in zip(rows, reference):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-7), a["step"]
    # the newest two checkpoints are kept (the one before is the fallback for a damaged newest)
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(("checkpoint-", ".checkpoint"))) == [
        "checkpoint-000006", "checkpoint-000008"]
    # and ends with the same adapter as the uninterrupted run
    from safetensors.torch import load_file

    a, b = load_file(run / "adapter/adapter_model.safetensors"), load_file(full / "adapter/adapter_model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6, msg=f"{k} (killed after step {killed_at})")


def _same_run(run, full, steps=8):
    from safetensors.torch import load_file

    rows, bad = read_jsonl(run / "metrics.jsonl")
    assert bad == 0 and [r["step"] for r in rows] == list(range(1, steps + 1))
    reference, _ = read_jsonl(full / "metrics.jsonl")
    for a, b in zip(rows, reference):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-7), a["step"]
    a, b = load_file(run / "adapter/adapter_model.safetensors"), load_file(full / "adapter/adapter_model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6, msg=k)


@pytest.mark.parametrize("sig,where,step,accum,saved", [
    ("TERM", "logged", 4, 1, 4),  # after step 4: the step is complete, its checkpoint is written
    ("INT", "forward", 5, 2, 4),  # in step 5's first micro-batch of 2: step 5 is abandoned, step 4 checkpointed
])
def test_sigterm_and_ctrl_c_checkpoint_say_how_to_resume_and_resume_exactly(tiny_folder, tmp_path, uninterrupted,
                                                                           sig, where, step, accum, saved):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # with LoRA dropout the abandoned step's random draws matter: the checkpoint keeps the state from before it
    extra = ("--batch-size", "2", "--grad-accum", "2", "--lora.dropout", "0.1") if accum > 1 else ()
    full = uninterrupted
    if accum > 1:  # the same settings, uninterrupted
        full = tmp_path / "full"
        subprocess.run(_cli(tiny_folder, full, *extra), check=True, capture_output=True)
    run = tmp_path / "stopped"
    stopped = subprocess.run([sys.executable, "-m", "tests.kill_at", *_cli(tiny_folder, run, *extra)[3:]],
                             env={**env, "KILL_AT_STEP": str(step), "KILL_WHERE": where, "KILL_SIGNAL": sig,
                                  "KILL_ACCUM": str(accum)}, capture_output=True, cwd=root)
    err = stopped.stderr.decode()
    assert stopped.returncode == 128 + getattr(signal, "SIG" + sig), err[-2000:]
    assert f"checkpoint-{saved:06d} holds step {saved} of 8. Resume with: reprkit train --resume {run}" in err
    assert "Traceback" not in err
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")[0]] == list(range(1, saved + 1))
    assert sorted(p.name for p in run.glob("*checkpoint-*")) == sorted({f"checkpoint-{3:06d}", f"checkpoint-{saved:06d}"})
    assert not (run / ".lock").exists()
    subprocess.run(_cli(tiny_folder, run, *extra, "--resume", str(run)), check=True, env=env, capture_output=True)
    _same_run(run, full)


def test_a_second_train_on_a_running_run_is_refused_with_who_holds_it(tiny_folder, tmp_path):
    from reprkit.training.runs import RunLock

    run = tmp_path / "r"
    train(tiny_config(tiny_folder, run, steps=3))
    with RunLock(run):  # as a run still training holds it
        with pytest.raises(TrainingError, match=rf"{run} is being trained by process {os.getpid()} on .* since"):
            train(tiny_config(tiny_folder, run, resume=str(run), steps=4))
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")[0]] == [1, 2, 3]  # untouched
    train(tiny_config(tiny_folder, run, resume=str(run), steps=4))  # free again
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")[0]] == [1, 2, 3, 4]


def test_resume_refuses_flags_that_contradict_the_run_and_applies_more_steps(tiny_folder, tmp_path, capsys):
    run = tmp_path / "r"
    train(tiny_config(tiny_folder, run, steps=3))
    with pytest.raises(ValueError, match=r"contradict them: --data 'other.jsonl' \(the run's: 'embedded:arithmetic'\), "
                                         r"--lr 0.5 \(the run's: 0.001\), --run-dir .*other"):
        train(TrainConfig(resume=str(run), lr=0.5, data="other.jsonl", run_dir=str(tmp_path / "other")))
    with pytest.raises(ValueError, match=r"--dpo.beta 0.5 \(the run's: 0.1\)"):
        train(TrainConfig(resume=str(run), loss="dpo", dpo=__import__("reprkit.losses").losses.DPO(beta=0.5)))
    with pytest.raises(ValueError, match="--steps 2 is below the run's 3"):
        train(TrainConfig(resume=str(run), steps=2))
    train(TrainConfig(resume=str(run), steps=5, progress=False))
    assert "resuming with --steps 5 (the run had 3)" in capsys.readouterr().out
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")[0]] == [1, 2, 3, 4, 5]


@pytest.fixture(scope="module")
def seven_steps(tiny_folder, tmp_path_factory):
    """One run of 7 of the 8 steps (checkpoints 6 and 7 kept), trained once; each case damages a copy."""
    run = tmp_path_factory.mktemp("seven") / "r"
    seven = _cli(tiny_folder, run)
    seven[seven.index("--steps") + 1] = "7"
    subprocess.run(seven, check=True, capture_output=True)
    return run


@pytest.mark.parametrize("damage", ["optimizer.pt", "adapter/adapter_model.safetensors", "trainer_state.json"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(tiny_folder, tmp_path, uninterrupted, damage,
                                                                  seven_steps):
    import shutil

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    run = tmp_path / "r"
    shutil.copytree(seven_steps, run)
    (run / ".lock").unlink(missing_ok=True)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["run_dir"] != str(run)  # the copy resumes under its own name (--resume names the directory)
    # steps 3 and 6 checkpointed, then the final one at 7 (two kept: 6 and 7); damage the newest
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-000006", "checkpoint-000007"]
    path = run / "checkpoint-000007" / damage
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    done = subprocess.run(_cli(tiny_folder, run, "--resume", str(run)), env=env, capture_output=True)
    out = done.stdout.decode() + done.stderr.decode()
    assert done.returncode == 0, out[-2000:]
    assert f"{path} cannot be read" in out and "resuming from checkpoint-000006 instead" in out
    _same_run(run, uninterrupted)  # steps 7 and 8 ran again from step 6's state, to the same adapter
    assert sorted(p.name for p in run.glob("checkpoint-*")) == [
        "checkpoint-000006", "checkpoint-000007.damaged", "checkpoint-000008"]
    # every kept checkpoint damaged: refused, naming each file and the fix
    for p in run.glob("checkpoint-00000[68]"):
        f = p / damage
        f.write_bytes(f.read_bytes()[:10])
    done = subprocess.run(_cli(tiny_folder, run, "--resume", str(run)), env=env, capture_output=True)
    err = done.stderr.decode()
    assert done.returncode == 1 and "no checkpoint of" in err and "rm -r" in err, err
    assert all(f"checkpoint-00000{k}/{damage} cannot be read" in err for k in (6, 8)), err


def test_a_write_error_of_safetensors_is_one_line_with_the_last_checkpoint(tiny_folder, tmp_path, monkeypatch):
    """safetensors raises its own SafetensorError on a full disk, not OSError: the same one line."""
    from safetensors import SafetensorError

    import reprkit.training.checkpoints as C

    real, calls = C.save_checkpoint, {"n": 0}

    def fail_second(run_dir, step, model, state, scheduler):
        calls["n"] += 1
        if calls["n"] == 2:
            tmp = run_dir / f".checkpoint-{step:06d}.tmp"
            tmp.mkdir()
            (tmp / "part").write_bytes(b"x" * 10)
            real_save = model.save_pretrained

            def boom(*a, **k):
                raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

            monkeypatch.setattr(model, "save_pretrained", boom)
            try:
                return real(run_dir, step, model, state, scheduler)
            finally:
                monkeypatch.setattr(model, "save_pretrained", real_save)
        return real(run_dir, step, model, state, scheduler)

    monkeypatch.setattr(C, "save_checkpoint", fail_second)
    run = tmp_path / "r"
    with pytest.raises(TrainingError, match=r"could not write the checkpoint of step 6 .*No space left on device.*"
                                            r"the last complete checkpoint is .*checkpoint-000003.*--resume"):
        train(tiny_config(tiny_folder, run))
    assert sorted(p.name for p in run.iterdir() if "checkpoint" in p.name) == ["checkpoint-000003"]


def test_resume_on_the_disk_it_fitted_is_not_refused(tiny_folder, tmp_path, monkeypatch):
    """The free-space check counts checkpoints already written as written: a run that fitted its
    disk resumes there."""
    import shutil as sh
    from collections import namedtuple

    from reprkit.training.checkpoints import checkpoint_bytes

    run = tmp_path / "r"
    train(tiny_config(tiny_folder, run, steps=6))
    one = sum(p.stat().st_size for p in (run / "checkpoint-000006").rglob("*") if p.is_file())
    usage = namedtuple("usage", "total used free")
    # room for one more checkpoint and a MiB, not for three (the new run's need)
    monkeypatch.setattr(sh, "disk_usage", lambda path: usage(1 << 30, 1 << 29, int(1.6 * one) + (1 << 20)))
    train(tiny_config(tiny_folder, run, resume=str(run), steps=8))
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")[0]] == list(range(1, 9))
    with pytest.raises(TrainingError, match="MiB free"):
        train(tiny_config(tiny_folder, tmp_path / "new", steps=6))
    assert checkpoint_bytes  # the estimate the check uses


@pytest.fixture
def loaded(monkeypatch):
    """The models the trainer loads, kept for inspection after the run."""
    import reprkit.training.loop as T

    models = []
    real = T.load_model

    def spy(*args, **kwargs):
        model, tok = real(*args, **kwargs)
        models.append(model)
        return model, tok

    monkeypatch.setattr(T, "load_model", spy)
    return models


def _adapter(run):
    from safetensors.torch import load_file

    return load_file(run / "adapter" / "adapter_model.safetensors"), json.loads((run / "adapter" / "adapter_config.json").read_text())


def test_accumulation_equals_the_larger_batch(tiny_folder, tmp_path):
    """Two micro-batches of 4 accumulated = one batch of 8 (DPO: a per-pair mean; same data order)."""
    kw = dict(loss="dpo", steps=2, warmup_steps=0, eval_data=())
    big = train(tiny_config(tiny_folder, tmp_path / "big", batch_size=8, **kw))
    acc = train(tiny_config(tiny_folder, tmp_path / "acc", batch_size=4, grad_accum=2, **kw))
    rows_big, rows_acc = read_jsonl(big / "metrics.jsonl")[0], read_jsonl(acc / "metrics.jsonl")[0]
    for a, b in zip(rows_acc, rows_big):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    a, b = _adapter(acc)[0], _adapter(big)[0]
    for k in a:  # Adam's first steps move each weight by about lr = 1e-3, so 2e-5 is 2% of one update
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=2e-5)
    single = train(tiny_config(tiny_folder, tmp_path / "one", batch_size=4, **kw))  # half the batch differs
    assert read_jsonl(single / "metrics.jsonl")[0][1]["loss"] != pytest.approx(rows_big[1]["loss"], rel=1e-5)


def test_gradient_checkpointing_changes_nothing_but_memory(tiny_folder, tmp_path):
    plain = train(tiny_config(tiny_folder, tmp_path / "plain", steps=3, eval_data=()))
    ckpt = train(tiny_config(tiny_folder, tmp_path / "ckpt", steps=3, eval_data=(), gradient_checkpointing=True))
    for a, b in zip(read_jsonl(ckpt / "metrics.jsonl")[0], read_jsonl(plain / "metrics.jsonl")[0]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    a, b = _adapter(ckpt)[0], _adapter(plain)[0]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=2e-5)


def test_cosine_schedule_and_weight_decay(tiny_folder, tmp_path):
    """Logged learning rates: linear warm-up, then half a cosine to 0; weight decay reaches AdamW."""
    run = train(tiny_config(tiny_folder, tmp_path / "r", steps=6, warmup_steps=2, schedule="cosine", weight_decay=0.01,
                            eval_data=()))
    lrs = [r["lr"] for r in read_jsonl(run / "metrics.jsonl")[0]]
    peak = 1e-3
    # step t (0-based) trains at: warm-up t / 2, then half a cosine over the 4 remaining steps
    expected = [0.0, peak * 0.5] + [peak * 0.5 * (1 + math.cos(math.pi * (t - 2) / 4)) for t in range(2, 6)]
    assert lrs == pytest.approx(expected, rel=1e-6, abs=1e-12)
    state = torch.load(run / "checkpoint-000006" / "optimizer.pt", weights_only=False)
    assert all(g["weight_decay"] == 0.01 for g in state["param_groups"])


def test_clipping_bounds_the_gradient_the_optimiser_sees(tiny_folder, tmp_path, monkeypatch):
    seen = []
    step = torch.optim.AdamW.step

    def spy(self, *args, **kwargs):
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        seen.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    run = train(tiny_config(tiny_folder, tmp_path / "r", steps=3, eval_data=(), max_grad_norm=1e-3))
    logged = [r["grad_norm"] for r in read_jsonl(run / "metrics.jsonl")[0]]
    assert all(n > 1e-3 for n in logged)  # the raw gradient is larger than the bound, and logged as such
    assert seen == pytest.approx([1e-3] * 3, rel=1e-3)  # what AdamW stepped with was clipped to it


def test_bf16_weights_and_bf16_autocast(tiny_folder, tmp_path, loaded):
    run = train(tiny_config(tiny_folder, tmp_path / "w", steps=2, eval_data=(), dtype="bfloat16"))
    assert loaded[-1].model.layers[0].mlp.up_proj.base_layer.weight.dtype == torch.bfloat16
    assert read_jsonl(run / "metrics.jsonl")[0][-1]["loss"] is not None
    # autocast: float32 weights, matmuls in bfloat16 (a block's projection outputs bf16 during training)
    dtypes = []
    import reprkit.training.loop as T

    real_forward = T.forward_pair_batch

    def spy(model, *args, **kwargs):
        proj = model.get_base_model().model.layers[0].self_attn.q_proj.base_layer
        handle = proj.register_forward_hook(lambda m, i, o: dtypes.append((m.weight.dtype, o.dtype)))
        try:
            return real_forward(model, *args, **kwargs)
        finally:
            handle.remove()

    import unittest.mock

    with unittest.mock.patch.object(T, "forward_pair_batch", spy):
        train(tiny_config(tiny_folder, tmp_path / "a", steps=2, eval_data=(), mixed_precision="bf16",
                          gradient_checkpointing=True))
    assert dtypes and all(d == (torch.float32, torch.bfloat16) for d in dtypes)


@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_quantized_options_load_quantized_layers(tiny_folder, tmp_path, loaded, quantization):
    import bitsandbytes as bnb

    train(tiny_config(tiny_folder, tmp_path / "r", steps=2, eval_data=(), quantization=quantization,
                      loss="dpo" if quantization == "8bit" else "reprpo"))
    kind = bnb.nn.Linear4bit if quantization == "4bit" else bnb.nn.Linear8bitLt
    layer = loaded[-1].model.layers[0].self_attn.q_proj.base_layer
    assert isinstance(layer, kind)


def test_lora_options_reach_the_adapter(tiny_folder, tmp_path, loaded):
    """rank, alpha, rsLoRA's alpha / sqrt(r) scaling, dropout and target modules."""
    from reprkit.config import LoraSettings

    lora = LoraSettings(r=4, alpha=8, dropout=0.1, target_modules="q_proj,v_proj", rslora=True)
    run = train(tiny_config(tiny_folder, tmp_path / "r", steps=2, eval_data=(), lora=lora))
    weights, cfg = _adapter(run)
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 8 and cfg["use_rslora"] and cfg["lora_dropout"] == 0.1
    assert {k.split(".")[-3] for k in weights} == {"q_proj", "v_proj"}
    assert all(w.shape[0] == 4 for k, w in weights.items() if "lora_A" in k)
    q = loaded[-1].model.layers[0].self_attn.q_proj
    assert q.scaling["default"] == pytest.approx(8 / math.sqrt(4))  # rsLoRA, not alpha / r = 2
    assert q.lora_dropout["default"].p == 0.1


def test_dora_trains_its_magnitude(tiny_folder, tmp_path):
    from transformers import AutoModelForCausalLM

    from reprkit.config import LoraSettings

    run = train(tiny_config(tiny_folder, tmp_path / "r", steps=3, warmup_steps=0, eval_data=(),
                            lora=LoraSettings(dora=True)))
    weights, cfg = _adapter(run)
    assert cfg["use_dora"]
    magnitudes = {k: v for k, v in weights.items() if "lora_magnitude_vector" in k}
    assert magnitudes
    base = dict(AutoModelForCausalLM.from_pretrained(tiny_folder).named_parameters())
    moved = 0
    for k, m in magnitudes.items():
        # DoRA starts each magnitude at the base weight's row norm; training moved them
        name = k.replace("base_model.model.", "").replace(".lora_magnitude_vector", "").replace(".weight", "") + ".weight"
        start = torch.linalg.vector_norm(base[name].detach(), dim=1)
        moved += not torch.allclose(m, start, atol=1e-6)
    assert moved == len(magnitudes)


def test_reroute_with_separate_retain_and_reroute_sets(tiny_folder, tmp_path):
    run = train(tiny_config(tiny_folder, tmp_path / "r", loss="reroute", steps=2, eval_data=(),
                            retain_data="embedded:capitals", reroute_data="embedded:arithmetic"))
    assert len(read_jsonl(run / "metrics.jsonl")[0]) == 2
    with pytest.raises(ValueError, match="go together"):
        train(tiny_config(tiny_folder, tmp_path / "r2", loss="reroute", retain_data="embedded:capitals"))
    assert not (tmp_path / "r2").exists()  # a config error stops before anything is written


def test_plackett_luce_trains_on_all_ranked_responses(tiny_folder, tmp_path, tokenizer):
    from reprkit import data as D

    items = D.load_items("genies:alpaca_easy", "train", limit=8)
    enc = D.encode_ranked(items, tokenizer, 128, 64)
    assert len(enc) == 8 and all(len(e["responses_ids"]) == 4 for e in enc)
    batch = D.collate_ranked(enc[:2] + [{**enc[2], "responses_ids": enc[2]["responses_ids"][:2]}], tokenizer.pad_token_id)
    assert batch["input_ids"].shape[0] == 12 and batch["valid"].tolist()[2] == [True, True, False, False]
    assert batch["completion_mask"][10:].sum() == 0  # empty slots have no completion tokens
    run = train(tiny_config(tiny_folder, tmp_path / "pl", loss="plackett_luce", data="genies:alpaca_easy",
                            limit=16, steps=3, eval_data=()))
    rows, _ = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[0]["plackett_luce"] == pytest.approx(math.log(4) + math.log(3) + math.log(2), rel=1e-4)  # uniform start
    assert all("cos_rejected" in v for v in rows[-1]["layers"].values())


def test_full_disk_is_refused_before_training(tiny_folder, tmp_path, monkeypatch):
    import shutil as sh
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(sh, "disk_usage", lambda path: usage(10 << 20, 10 << 20, 4096))
    with pytest.raises(TrainingError, match=r"0\.0 MiB free; checkpoints of this adapter need .* MiB"):
        train(tiny_config(tiny_folder, tmp_path / "r"))
    assert not (tmp_path / "r" / "metrics.jsonl").exists()  # refused before step 1


def test_disk_full_while_checkpointing_keeps_the_last_checkpoint(tiny_folder, tmp_path, monkeypatch):
    import errno

    real_save = torch.save
    calls = {"n": 0}

    def save_until_full(obj, f, *a, **kw):
        calls["n"] += 1
        if calls["n"] > 3:  # the first checkpoint (3 files) fits, the second does not
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", save_until_full)
    run = tmp_path / "r"
    with pytest.raises(TrainingError, match=r"checkpoint of step 6 .*No space left on device.*checkpoint-000003.*--resume"):
        train(tiny_config(tiny_folder, run))
    assert sorted(p.name for p in run.iterdir() if "checkpoint" in p.name) == ["checkpoint-000003"]  # no .tmp left
    monkeypatch.setattr(torch, "save", real_save)
    train(tiny_config(tiny_folder, run, resume=str(run)))
    rows, bad = read_jsonl(run / "metrics.jsonl")
    assert bad == 0 and [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert (run / "adapter" / "adapter_model.safetensors").is_file()


def test_unwritable_run_dir_is_refused_before_loading(tiny_folder, tmp_path):
    (tmp_path / "a-file").write_text("mine")  # a run dir below a file cannot be created (even by root)
    with pytest.raises(PermissionError, match="cannot write the run directory .*--run-dir"):
        train(tiny_config(tiny_folder, tmp_path / "a-file" / "r", model="/nonexistent/model"))
    assert (tmp_path / "a-file").read_text() == "mine"


def test_tracked_layers_never_reach_the_loss(tiny_folder, tmp_path, caplog):
    """Defect: the trainer handed every captured layer (tracked + loss) to the loss."""
    base = dict(eval_data=(), n_samples=0, steps=3, save_every=0)
    plain = train(tiny_config(tiny_folder, tmp_path / "plain", reprpo=ReprPO(layers="1,2"), **base))
    import logging

    with caplog.at_level(logging.WARNING):
        tracked = train(tiny_config(tiny_folder, tmp_path / "tracked", reprpo=ReprPO(layers="1,2"),
                                    track_layers="0,1,2,3", **base))
    a, _ = read_jsonl(plain / "metrics.jsonl")
    b, _ = read_jsonl(tracked / "metrics.jsonl")
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], rel=1e-6)
    assert set(b[-1]["layers"]) == {"0", "1", "2", "3"} and set(a[-1]["layers"]) == {"1", "2"}
    assert "deeper than the loss needs" in caplog.text  # tracking layer 3 runs the forward further, and says so


def test_reprkit_eval_reproduces_the_trainers_accuracy_on_long_items(tiny_folder, tmp_path):
    """Defect: `reprkit eval RUN` encoded with its own defaults (256/128), not the run's settings."""
    from reprkit.evalrun import evaluate_target

    run = train(tiny_config(tiny_folder, tmp_path / "r", eval_data=("genies:alpaca_easy",), eval_limit=8,
                            max_length=64, max_prompt_length=24, steps=2, n_samples=0))
    trained = json.loads((run / "eval.json").read_text())["datasets"]["genies:alpaca_easy"]
    again = evaluate_target(str(run), ["genies:alpaca_easy"], limit=8, out=str(tmp_path / "again.json"))
    res = again["datasets"]["genies:alpaca_easy"]
    assert again["encoding"]["max_length"] == 64 and again["encoding"]["max_prompt_length"] == 24
    assert res["accuracy_mean"] == trained["accuracy_mean"]
    assert res["margin_mean"] == pytest.approx(trained["margin_mean"], abs=1e-5)
    longer = evaluate_target(str(run), ["genies:alpaca_easy"], limit=8, max_length=256, out=str(tmp_path / "b.json"))
    assert longer["datasets"]["genies:alpaca_easy"]["margin_mean"] != pytest.approx(trained["margin_mean"], abs=1e-5)


def test_tracker_separates_moving_toward_the_preference_from_moving():
    from reprkit.losses import LossInputs, Side
    from reprkit.train import track

    g = torch.Generator().manual_seed(0)
    ref_c, ref_r = torch.randn(3, 5, 8, generator=g), torch.randn(3, 5, 8, generator=g)
    mask = torch.ones(3, 5)
    gap = ref_c.mean(1) - ref_r.mean(1)  # each pair's frozen gap [3, 8]
    other = torch.randn(3, 8, generator=g)
    other = other - (other * gap).sum(-1, keepdim=True) / (gap * gap).sum(-1, keepdim=True) * gap  # orthogonal
    # rejected moves a quarter of its pair's gap toward chosen; chosen moves sideways by half the gap's length
    pol_r = ref_r + 0.25 * gap[:, None]
    pol_c = ref_c + (0.5 * gap.norm(dim=-1, keepdim=True) * other / other.norm(dim=-1, keepdim=True))[:, None]
    inputs = LossInputs(chosen=Side(mask=mask, hidden={1: pol_c}, ref_hidden={1: ref_c}),
                        rejected=Side(mask=mask, hidden={1: pol_r}, ref_hidden={1: ref_r}))
    row = track(inputs, [1])["1"]
    assert row["along_rejected"].item() == pytest.approx(0.25, rel=1e-4)
    assert row["off_rejected"].item() == pytest.approx(0.0, abs=1e-4)
    assert row["along_chosen"].item() == pytest.approx(0.0, abs=1e-4)
    assert row["off_chosen"].item() == pytest.approx(0.5, rel=1e-4)


def test_plan_layers_is_the_one_place_that_decides(tiny_folder):
    from transformers import AutoModelForCausalLM

    from reprkit.losses import DPO, PrefVec
    from reprkit.train import plan_layers

    model = AutoModelForCausalLM.from_pretrained(tiny_folder)
    assert plan_layers(model, ReprPO(layers="1,2")) == ([1, 2], [1, 2], 2)
    assert plan_layers(model, ReprPO(layers="1"), "0,3") == ([1], [0, 1, 3], 1)
    assert plan_layers(model, DPO()) == ([], [1, 2], None)  # tracks ReprPO's default layers, LoRA on every block
    assert plan_layers(model, PrefVec(layers="1", w_nll=1.0))[2] is None  # reads the LM head: LoRA everywhere


def test_a_registered_loss_trains_through_the_cli(tiny_folder, tmp_path, monkeypatch):
    """Adding a loss is one registration: --loss, its --NAME.* flags, its default learning rate and
    a preset follow, and the trainer runs it."""
    import dataclasses
    from typing import ClassVar

    from reprkit import config
    from reprkit.cli import main, parse_train
    from reprkit.losses import LOSSES

    @dataclasses.dataclass
    class Toy:
        """pull the chosen completion's hidden state toward zero (a toy)"""

        layers: str = "1"
        """loss layers"""
        scale: float = 1.0
        """weight"""
        default_lr: ClassVar[float] = 5e-3
        needs_logps: ClassVar[bool] = False
        needs_reference: ClassVar[bool] = False

        def layer_spec(self):
            return self.layers

        def __call__(self, inputs):
            h = next(iter(inputs.chosen.hidden.values()))
            loss = self.scale * h.float().pow(2).mean()
            return loss, {"toy": loss.detach()}

    monkeypatch.setattr(config, "LOSSES", dict(LOSSES))
    monkeypatch.setattr(config, "PRESETS", dict(config.PRESETS))
    monkeypatch.setattr(config, "TrainConfig", config.TrainConfig)
    config.register_loss("toy_loss", Toy)
    cfg = parse_train(["--loss", "toy_loss", "--toy-loss.scale", "2.5"])
    assert cfg.toy_loss.scale == 2.5 and cfg.learning_rate() == 5e-3
    assert parse_train(["--preset", "toy-loss"]).loss == "toy_loss"
    run = tmp_path / "toy"
    main(["train", "--model", str(tiny_folder), "--loss", "toy_loss", "--toy-loss.scale", "2.5", "--steps", "2",
          "--batch-size", "2", "--warmup-steps", "0", "--eval-data", "embedded:arithmetic", "--eval-limit", "2",
          "--n-samples", "1", "--no-progress", "--run-dir", str(run)])
    rows, _ = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and rows[0]["toy"] > 0 and rows[0]["lr"] == 5e-3
    assert json.loads((run / "config.json").read_text())["toy_loss"] == {"layers": "1", "scale": 2.5}
    with pytest.raises(ValueError, match="identifier"):
        config.register_loss("toy-loss", Toy)


def test_scored_items_that_are_training_items_are_counted_and_said(tokenizer, tmp_path):
    """A local file's "test" split is its training rows: the trainer counts the overlap, records it
    and says so in its table; slices that hold rows out count none."""
    from reprkit.config import TrainConfig
    from reprkit.training.batches import load_pairs
    from reprkit.training.loop import summary

    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"q{i}?", "chosen": "yes", "rejected": "no"}) + "\n" for i in range(10)))
    cfg = TrainConfig(loss="dpo", data=str(path), eval_data=(str(path), "embedded:capitals"), eval_limit=6)
    *_, overlap = load_pairs(cfg, tokenizer)
    assert overlap == {str(path): 6, "embedded:capitals": 0}
    held = TrainConfig(loss="dpo", data=str(path), eval_data=(str(path),), train_split="train[:80%]",
                       eval_split="train[80%:]")
    assert load_pairs(held, tokenizer)[3] == {str(path): 0}
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("")
    results = {"datasets": {str(path): {"n": 6, "accuracy_mean": 0.5, "training_items": 6}}}
    assert "[6 trained on]" in summary(run, results, cfg) and "not held out" in summary(run, results, cfg)


def test_reprkit_eval_says_when_it_scores_a_runs_training_rows(tiny_folder, tmp_path):
    """A run trained on a local file: `reprkit eval RUN --data FILE` (its "test" split is the same
    rows) counts the training prompts it scored and says so; a held-out slice counts none."""
    from reprkit.evalrun import evaluate_target, format_results

    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"What is {i} + 1?", "chosen": f"{i + 1}", "rejected": f"{i + 2}"})
                            + "\n" for i in range(10)))
    run = train(tiny_config(tiny_folder, tmp_path / "r", data=str(path), train_split="train[:80%]",
                            eval_data=(str(path),), eval_split="train[80%:]", steps=1, n_samples=0))
    assert json.loads((run / "eval.json").read_text())["datasets"][str(path)]["training_items"] == 0
    same = evaluate_target(str(run), [str(path)], out=str(tmp_path / "a.json"))
    assert same["datasets"][str(path)]["training_items"] == 8
    assert "8 of 10 scored items are training prompts" in format_results(same)
    held = evaluate_target(str(run), [str(path)], split="train[80%:]", out=str(tmp_path / "b.json"))
    assert held["datasets"][str(path)]["training_items"] == 0 and "training prompts" not in format_results(held)


def test_summary_pairs_before_and_after_by_item_id(tmp_path):
    """The run's table pairs the adapter's and the frozen model's outcomes by item id: results whose
    items come in another order give the same paired change as in-order ones."""
    from reprkit.config import TrainConfig
    from reprkit.training.loop import summary

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("")
    ids = [f"i{k}" for k in range(12)]
    after = [1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0]
    before = [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0]

    def table(order):
        items = {"id": [ids[k] for k in order], "correct": [after[k] for k in order]}
        res = {"n": 12, "accuracy_mean": 8 / 12, "items": items,
               "base": {"n": 12, "accuracy_mean": 4 / 12, "items": {"id": ids, "correct": before}}}
        return summary(run, {"datasets": {"embedded:capitals": res}}, TrainConfig(loss="dpo"))

    in_order = table(range(12))
    assert "+0.333" in in_order
    assert table(list(reversed(range(12)))) == in_order


def test_the_length_baseline_lines_stay_aligned_whatever_the_names(tmp_path):
    from reprkit.config import TrainConfig
    from reprkit.training.loop import summary

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("")
    long = "/a/very/long/path/to/some/data/folder/hh-rlhf/harmless-base/harmless.jsonl"
    res = {"n": 2, "accuracy_mean": 0.5, "length_baseline": {"accuracy_shortest": 0.495, "accuracy_longest": 0.505}}
    text = summary(run, {"datasets": {long: res, "short": dict(res)}}, TrainConfig(loss="dpo"))
    rows = [line for line in text.splitlines() if line.endswith("0.495 / 0.505")]
    assert len(rows) == 2 and len({line.index("0.495") for line in rows}) == 1
    assert f"{long} " in rows[0]  # the figures never run into the name


def test_dry_run_prints_the_cost_and_writes_nothing(tiny_folder, tmp_path, capsys):
    run = tmp_path / "r"
    train(tiny_config(tiny_folder, run, dry_run=True, steps=40))
    out = capsys.readouterr().out
    assert not run.exists()
    assert "dry run of reprpo on embedded:arithmetic (nothing was written)" in out
    assert "160 training pairs" in out and "steps: 40 of 4 pairs = 1.00 epochs" in out
    assert "time per step:" in out and "peak memory:" in out and "GiB" in out
    # resumed: from the run's step, and the run is left as it was
    train(tiny_config(tiny_folder, run, steps=3))
    before = (run / "metrics.jsonl").read_text()
    train(tiny_config(tiny_folder, run, resume=str(run), steps=9, dry_run=True))
    out = capsys.readouterr().out
    assert "steps: 6 of 4 pairs" in out and "(from step 3, resumed)" in out
    assert (run / "metrics.jsonl").read_text() == before
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-000003"]


def test_eval_split_names_the_set_it_applies_to(tmp_path, caplog):
    from reprkit.config import split_for
    from reprkit.training.batches import read_items

    assert split_for("my.jsonl=train[80%:],test", "my.jsonl") == "train[80%:]"
    assert split_for("my.jsonl=train[80%:],test", "hh-rlhf:helpful-base") == "test"
    assert split_for("train[80%:]", "anything") == "train[80%:]" and split_for("a=test[:5]", "b") == "test"
    rows = [{"prompt": f"q{i}", "chosen": f"a{i}", "rejected": f"b{i}"} for i in range(20)]
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = TrainConfig(data=str(path), train_split="train[:80%]", eval_data=(str(path), "embedded:capitals"),
                      eval_split=f"{path}=train[80%:]")
    evals = read_items(cfg)["evals"]
    assert len(evals[str(path)]) == 4 and len(evals["embedded:capitals"]) == len(
        read_items(TrainConfig(eval_data=("embedded:capitals",)))["evals"]["embedded:capitals"])
    # a plain slice with a named set beside a local file: said, since it slices the named set too
    read_items(TrainConfig(data=str(path), eval_data=(str(path), "embedded:capitals"), eval_split="test[:2]"))
    assert "applies to every eval set: embedded:capitals get a slice" in caplog.text
    with pytest.raises(ValueError, match="names .*nope.jsonl.* not among --eval-data"):
        read_items(TrainConfig(eval_split="nope.jsonl=train"))
