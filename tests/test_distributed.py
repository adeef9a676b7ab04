"""Two CPU processes (gloo) under `accelerate launch`, data parallel (DDP config) or sharded
(FSDP2 config), train the same adapter as one process on the same global batch."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from reprkit.runlog import read_jsonl
from reprkit.train import train
from reprkit.training.processes import FSDP2_ACCELERATE

from .test_train import tiny_config


def _old_accelerate() -> bool:
    import accelerate
    from packaging.version import Version

    return Version(accelerate.__version__) < Version(FSDP2_ACCELERATE)


needs_fsdp2 = pytest.mark.skipif(_old_accelerate(),
                                 reason=f"FSDP2 needs accelerate>={FSDP2_ACCELERATE} (the lowest-versions run has "
                                        "an older one; test_fsdp2_on_an_old_accelerate_says_which checks the refusal)")

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"


def accelerate_launch(config: str, args: list[str], mixed_precision: str = "no",
                      launch_options=()) -> subprocess.CompletedProcess:
    """`accelerate launch` of 2 processes with a shipped config. The FSDP config goes through
    tests/fsdp_on_cpu.py, which turns accelerate's CPU state into FSDP (accelerate itself enables
    FSDP on GPU-like devices only)."""
    module = (["--mixed_precision", mixed_precision, "-m", "tests.fsdp_on_cpu"] if config == "fsdp"
              else ["-m", "reprkit.cli"])
    cmd = [ACCELERATE, "launch", "--config_file", str(ROOT / f"configs/accelerate/{config}.yaml"),
           "--num_processes", "2", *launch_options, *module, "train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def launch(tiny_folder, run_dir, loss, extra=(), config="ddp", steps=4, mixed_precision="no", launch_options=()):
    return accelerate_launch(config, [
        "--model", str(tiny_folder), "--run-dir", str(run_dir), "--loss", loss,
        "--steps", str(steps), "--batch-size", "2", "--warmup-steps", "1", "--lr", "1e-2", "--save-every", "2",
        "--eval-data", "embedded:arithmetic", "--eval-limit", "4", "--n-samples", "1", "--no-progress", *extra],
        mixed_precision, launch_options)


def one_process(tiny_folder, run_dir, loss, checkpointing=False):
    return train(tiny_config(tiny_folder, run_dir, loss=loss, steps=4, batch_size=4, lr=1e-2, save_every=2,
                             eval_data=("embedded:arithmetic",), eval_limit=4, gradient_checkpointing=checkpointing))


def assert_same_training(one: Path, two: Path, tolerance: float = 2e-4) -> None:
    """Every step's loss and per-layer geometry, and the final adapter tensors, agree."""
    rows1, _ = read_jsonl(one / "metrics.jsonl")
    rows2, bad = read_jsonl(two / "metrics.jsonl")
    assert bad == 0 and [r["step"] for r in rows2] == [r["step"] for r in rows1] == [1, 2, 3, 4]
    for a, b in zip(rows1, rows2):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-6), (a["step"], a["loss"], b["loss"])
        # the loss check's relative 1e-4 (and an absolute 1e-6): the summation-order noise that Adam
        # amplifies in the adapters (2.8e-5) reaches the geometry too (1.1e-5 and 1.6e-5 relative seen);
        # the main process logging its own half's geometry instead of the global batch's is off by x4-6
        for layer, v in a["layers"].items():
            assert b["layers"][layer] == pytest.approx(v, rel=1e-4, abs=1e-6), (a["step"], layer)
    w1, w2 = load_file(one / "adapter/adapter_model.safetensors"), load_file(two / "adapter/adapter_model.safetensors")
    assert w1.keys() == w2.keys()
    moved = max((w1[k].float() - 0).abs().max().item() for k in w1 if "lora_B" in k)
    assert moved > 1e-3  # the adapter trained
    # float summation order differs (two half-batch sums, then an all-reduce or reduce-scatter),
    # and Adam's normalisation amplifies that
    for k in w1:
        rel = ((w2[k].float() - w1[k].float()).norm() / w1[k].float().norm().clamp_min(1e-12)).item()
        assert rel < tolerance, (k, rel)


@pytest.mark.parametrize("loss,checkpointing", [("dpo", False), ("reprpo", True)])
def test_two_processes_equal_one_process_on_the_global_batch(tiny_folder, tmp_path, loss, checkpointing):
    extra = ["--gradient-checkpointing"] if checkpointing else []
    out = launch(tiny_folder, tmp_path / "two", loss, extra)
    assert "MULTI_CPU" in out.stdout + out.stderr  # really two gloo processes, not one
    one = one_process(tiny_folder, tmp_path / "one", loss, checkpointing)
    two = tmp_path / "two"
    # written once, by the main process: one config, checkpoints, samples
    assert sorted(p.name for p in two.glob("checkpoint-*")) == ["checkpoint-000002", "checkpoint-000004"]  # the two latest
    assert len(read_jsonl(two / "samples.jsonl")[0]) == len(read_jsonl(one / "samples.jsonl")[0])
    # the logged loss is the global batch's (averaged over processes), step by step; the adapters
    # agree (gradients were averaged, every process started from the same weights): measured 2.8e-5
    assert_same_training(one, two)
    assert json.loads((two / "eval.json").read_text())["datasets"]["embedded:arithmetic"]["n"] == 4


@needs_fsdp2
@pytest.mark.parametrize("loss,checkpointing", [("reprpo", False), ("dpo", True)])
def test_fsdp2_on_two_processes_equals_one_process(tiny_folder, tmp_path, loss, checkpointing):
    """FSDP2 (configs/accelerate/fsdp.yaml, each decoder block one unit) shards the PeftModel: the
    policy and frozen passes, the LM head outside the forward (DPO), gradient checkpointing,
    reduce-scattered gradients, clipping of sharded gradients, the evaluation on every process and
    the gathered checkpoint all run; the result is the single-process run's."""
    extra = ["--gradient-checkpointing"] if checkpointing else []
    out = launch(tiny_folder, tmp_path / "two", loss, extra, config="fsdp")
    assert "forced FSDP2" in out.stdout and "2 processes (FSDP2" in out.stdout
    one = one_process(tiny_folder, tmp_path / "one", loss, checkpointing)
    two = tmp_path / "two"
    # measured 3.9e-6 (ReprPO) and 2.8e-5 (DPO + checkpointing) relative
    assert_same_training(one, two)
    # the checkpoint holds full tensors in PEFT format and an optimiser state keyed by parameter name
    saved = load_file(two / "checkpoint-000004/adapter/adapter_model.safetensors")
    assert saved.keys() == load_file(one / "adapter/adapter_model.safetensors").keys()
    optimizer = torch.load(two / "checkpoint-000004/optimizer.pt", weights_only=True)
    assert all(isinstance(k, str) and "lora_" in k for k in optimizer["state"])
    ev1, ev2 = (json.loads((d / "eval.json").read_text())["datasets"]["embedded:arithmetic"] for d in (one, two))
    assert ev2["n"] == 4 and ev2["accuracy_mean"] == ev1["accuracy_mean"]
    assert len(read_jsonl(two / "samples.jsonl")[0]) == len(read_jsonl(one / "samples.jsonl")[0])


@needs_fsdp2
def test_fsdp2_bf16_mixed_precision_as_shipped(tiny_folder, tmp_path):
    """The shipped FSDP config's bf16: FSDP2 computes in bf16 and keeps float32 weights. The run
    differs from float32 (so bf16 was on) by bf16 rounding only. Measured after 4 steps: losses
    within 0.16% relative, adapter tensors within 4.7%."""
    launch(tiny_folder, tmp_path / "bf16", "reprpo", config="fsdp", mixed_precision="bf16")
    one = one_process(tiny_folder, tmp_path / "one", "reprpo")
    rows1, _ = read_jsonl(one / "metrics.jsonl")
    rows2, _ = read_jsonl(tmp_path / "bf16/metrics.jsonl")
    assert [r["step"] for r in rows2] == [1, 2, 3, 4]
    assert any(b["loss"] != a["loss"] for a, b in zip(rows1, rows2))
    for a, b in zip(rows1, rows2):
        assert b["loss"] == pytest.approx(a["loss"], rel=5e-3), a["step"]
    w1 = load_file(one / "adapter/adapter_model.safetensors")
    w2 = load_file(tmp_path / "bf16/adapter/adapter_model.safetensors")
    assert {v.dtype for v in w2.values()} == {torch.float32}
    for k in w1:
        assert ((w2[k] - w1[k]).norm() / w1[k].norm().clamp_min(1e-12)).item() < 0.15, k


@needs_fsdp2
@pytest.mark.parametrize("first", ["fsdp", "ddp"])
def test_fsdp2_resumes_a_checkpoint(tiny_folder, tmp_path, first):
    """2 steps (sharded, or data parallel: optimiser state keyed by index), then `--resume` under
    FSDP2 to step 4: the same steps and adapter as 4 uninterrupted steps. The first sharded run's
    config names a block class the model does not have: its decoder blocks are wrapped instead."""
    run = tmp_path / "run"
    wrong_block = ["--fsdp_transformer_layer_cls_to_wrap", "Qwen2DecoderLayer"] if first == "fsdp" else []
    out = launch(tiny_folder, run, "reprpo", config=first, steps=2, launch_options=wrong_block)
    if first == "fsdp":
        assert "wraps Qwen2DecoderLayer, which LlamaForCausalLM does not have" in out.stderr
    assert [p.name for p in run.glob("checkpoint-*")] == ["checkpoint-000002"]
    accelerate_launch("fsdp", ["--resume", str(run), "--steps", "4"])
    assert_same_training(one_process(tiny_folder, tmp_path / "one", "reprpo"), run)


@pytest.mark.parametrize("kind,version,says", [
    ("DEEPSPEED", None, "configs/accelerate/fsdp.yaml"),
    ("MEGATRON_LM", None, "configs/accelerate/ddp.yaml"),
    ("FSDP", 1, "fsdp_version: 2"),
])
def test_engines_reprkit_does_not_run_are_refused_before_anything_is_written(tiny_folder, tmp_path, monkeypatch,
                                                                             kind, version, says):
    from types import SimpleNamespace

    from accelerate import DistributedType

    import reprkit.training.loop as T

    fake = SimpleNamespace(distributed_type=DistributedType[kind],
                           state=SimpleNamespace(fsdp_plugin=SimpleNamespace(fsdp_version=version)))
    monkeypatch.setattr(T, "make_accelerator", lambda: fake)
    with pytest.raises(T.TrainingError, match=says):
        train(tiny_config(tiny_folder, tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_fsdp_config_without_gpus_says_it_runs_data_parallel(monkeypatch, caplog):
    from types import SimpleNamespace

    from accelerate import DistributedType

    from reprkit.train import is_sharded

    fake = SimpleNamespace(distributed_type=DistributedType.MULTI_CPU, is_main_process=True, num_processes=2)
    assert is_sharded(fake) is False
    assert not caplog.records
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert is_sharded(fake) is False
    assert "run data parallel" in caplog.text and "MULTI_CPU" in caplog.text



def test_fsdp2_on_an_old_accelerate_says_which(monkeypatch):
    """Under FSDP2 with an accelerate older than FSDP2_ACCELERATE the trainer refuses in one line
    naming the version that works, before the model loads."""
    from types import SimpleNamespace

    import accelerate

    from reprkit.training.errors import TrainingError
    from reprkit.training.processes import is_sharded

    monkeypatch.setattr(accelerate, "__version__", "1.10.0")
    fake = SimpleNamespace(distributed_type=accelerate.DistributedType.FSDP,
                           state=SimpleNamespace(fsdp_plugin=SimpleNamespace(fsdp_version=2)))
    with pytest.raises(TrainingError, match=r"FSDP2 training needs accelerate>=1\.14 \(this is 1\.10\.0\): pip install"):
        is_sharded(fake)
    monkeypatch.setattr(accelerate, "__version__", FSDP2_ACCELERATE)
    assert is_sharded(fake)
