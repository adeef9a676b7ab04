"""The run directory: written by the trainer, read by the dashboard and ``reprkit eval``.

```
run/
  config.json        the resolved training config
  metrics.jsonl      one JSON object per logged step, appended and flushed
  eval.json          evaluation results (rewritten atomically)
  samples.jsonl      sample generations, one per line
  adapter/           the final adapter, PEFT format (safetensors)
  checkpoint-000040/ the latest checkpoint: adapter, optimizer, scheduler, RNG, step
```

Every whole-file write goes to a temporary name first and is then renamed, so a crash never
leaves a half-written ``config.json``, ``eval.json`` or checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def _default(value):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _clean(value):
    """NaN/inf are not JSON; write them as null so every line stays parseable."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_json(path: Path, data) -> None:
    """Write JSON atomically (temporary file, fsync, rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            json.dump(_clean(data), f, indent=2, default=_default)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # the old file, if any, is untouched
        raise


def read_jsonl(path: Path) -> tuple[list[dict], int]:
    """Rows of a JSON-lines file and the number of lines that did not parse (e.g. a half-written
    last line of a run still being written). A missing file gives no rows."""
    rows, bad = [], 0
    try:
        with open(path, "rb") as f:  # bytes: a broken encoding is one bad line, not a crash
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    row = json.loads(line)
                except ValueError:  # JSONDecodeError and UnicodeDecodeError
                    bad += 1
                    continue
                if isinstance(row, dict):
                    rows.append(row)
                else:
                    bad += 1
    except (FileNotFoundError, IsADirectoryError):
        pass
    return rows, bad


class RunLog:
    """Writer for one run directory (only the main process writes)."""

    def __init__(self, path: str | os.PathLike, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        self._metrics = None
        self._samples = None

    def create(self, config: dict) -> None:
        """Create the directory (must be new or empty) and write ``config.json``.

        Checks the directory is writable before any training starts.
        """
        if not self.enabled:
            return
        if self.path.exists() and any(self.path.iterdir()):
            raise FileExistsError(
                f"run directory {self.path} is not empty; pass --resume {self.path} to continue it, "
                "or choose another --run-dir"
            )
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            if not os.access(self.path, os.W_OK):
                raise PermissionError(f"run directory {self.path} is not writable")
            write_json(self.path / "config.json", config)
        except OSError as err:
            raise PermissionError(f"cannot write the run directory {self.path} ({err.strerror or err}); "
                                  "choose another --run-dir") from err

    def resume(self, step: int) -> None:
        """Drop metric and sample lines after ``step`` (they will be logged again) before appending."""
        if not self.enabled:
            return
        for name in ("metrics.jsonl", "samples.jsonl"):
            rows, _ = read_jsonl(self.path / name)
            kept = [r for r in rows if r.get("step", 0) <= step]
            tmp = self.path / f".{name}.tmp"
            with open(tmp, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in kept)
            os.replace(tmp, self.path / name)

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        if self._metrics is None:
            self._metrics = open(self.path / "metrics.jsonl", "a")
        self._metrics.write(json.dumps(_clean(row), default=_default) + "\n")
        self._metrics.flush()

    def sample(self, row: dict) -> None:
        if not self.enabled:
            return
        if self._samples is None:
            self._samples = open(self.path / "samples.jsonl", "a")
        self._samples.write(json.dumps(_clean(row), default=_default) + "\n")
        self._samples.flush()

    def write_eval(self, results: dict) -> None:
        if self.enabled:
            write_json(self.path / "eval.json", results)

    def close(self) -> None:
        for f in (self._metrics, self._samples):
            if f is not None:
                f.close()
        self._metrics = self._samples = None


def read_config(run: str | os.PathLike) -> dict:
    path = Path(run) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run} is not a run directory (no config.json)")
    with open(path) as f:
        return json.load(f)


def checkpoints(run: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first."""
    run = Path(run)
    found = []
    if run.is_dir():
        for p in run.iterdir():
            if (m := _CHECKPOINT.match(p.name)) and (p / "trainer_state.json").is_file():
                found.append((int(m.group(1)), p))
    return sorted(found)


def new_checkpoint_dir(run: str | os.PathLike, step: int) -> tuple[Path, Path]:
    """(temporary dir to write into, final name); ``commit_checkpoint`` renames one to the other."""
    final = Path(run) / f"checkpoint-{step:06d}"
    tmp = Path(run) / f".checkpoint-{step:06d}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp, final


def commit_checkpoint(tmp: Path, final: Path, keep: int = 1) -> None:
    """Publish a checkpoint with one rename, then delete older ones beyond ``keep``."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for _, old in checkpoints(final.parent)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def usable_metrics(rows: list) -> tuple[list[dict], list[str]]:
    """Metric rows the dashboard can draw, and a notice for each kind of row it could not: a row
    without a numeric ``step`` is left out; a ``layers`` field that is not a mapping of layers to
    mappings is dropped from its row (the other curves keep it); steps whose loss is NaN or inf are
    counted (the training curve has a gap there)."""
    import math

    kept, no_step, bad_layers, nonfinite = [], 0, 0, []
    for row in rows:
        if not isinstance(row, dict) or not isinstance(row.get("step"), (int, float)) or isinstance(row.get("step"), bool):
            no_step += 1
            continue
        layers = row.get("layers")
        if layers is not None and not (isinstance(layers, dict) and all(isinstance(v, dict) for v in layers.values())):
            row = {k: v for k, v in row.items() if k != "layers"}
            bad_layers += 1
        loss = row.get("loss")
        if "loss" in row and not (isinstance(loss, (int, float)) and math.isfinite(loss)):
            nonfinite.append(row["step"])
        kept.append(row)
    notices = []
    if no_step:
        notices.append(f"{no_step} line(s) of metrics.jsonl have no step: left out")
    if bad_layers:
        notices.append(f"{bad_layers} line(s) of metrics.jsonl have a 'layers' field that is not a mapping of layers: "
                       "their layer curves are left out")
    if nonfinite:
        notices.append(f"the loss is NaN or infinite at {len(nonfinite)} step(s) (first: step {nonfinite[0]}): the "
                       "training curves leave them out")
    return kept, notices


def read_run(run: str | os.PathLike) -> dict:
    """Everything the dashboard shows of one run, tolerating a run still being written or broken.

    Returns ``{"name", "path", "config", "metrics", "eval", "samples", "notices"}``; ``notices`` says
    what was missing or unreadable instead of raising.
    """
    run = Path(run)
    notices = []
    try:
        config = read_config(run)
    except (ValueError, OSError) as err:
        config, _ = {}, notices.append(f"config.json unreadable: {err}")
    if not isinstance(config, dict):
        config, _ = {}, notices.append("config.json is not a JSON object")
    metrics, bad = read_jsonl(run / "metrics.jsonl")
    if not (run / "metrics.jsonl").exists():
        notices.append("no metrics.jsonl yet")
    if bad:
        notices.append(f"{bad} line(s) of metrics.jsonl could not be read (a line still being written?)")
    metrics, more = usable_metrics(metrics)
    notices += more
    samples, bad_s = read_jsonl(run / "samples.jsonl")
    if bad_s:
        notices.append(f"{bad_s} line(s) of samples.jsonl could not be read")
    evaluation = None
    if (run / "eval.json").exists():
        try:
            evaluation = json.loads((run / "eval.json").read_text())
        except (ValueError, OSError) as err:
            notices.append(f"eval.json unreadable: {err}")
        if not isinstance(evaluation, dict):
            evaluation = None
    return {"name": run.name, "path": str(run), "config": config, "metrics": metrics, "eval": evaluation,
            "samples": samples, "notices": notices}


def list_runs(runs_dir: str | os.PathLike) -> list[str]:
    """Names of the run directories (those with a config.json) directly inside ``runs_dir``, newest first."""
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    runs = [p for p in root.iterdir() if p.is_dir() and (p / "config.json").is_file()]
    return [p.name for p in sorted(runs, key=lambda p: p.stat().st_mtime, reverse=True)]


def resolve_run(runs_dir: str | os.PathLike, name: str) -> Path:
    """The path of run ``name`` inside ``runs_dir``; a name that would leave it raises ValueError."""
    root = Path(runs_dir).resolve()
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        raise ValueError(f"{name!r} is not a run name")
    path = (root / name).resolve()
    if path.parent != root:
        raise ValueError(f"run {name!r} is outside the runs directory")
    return path


OTHER_MEASURES_NOTE = ("other measures score each answer by its summed log-prob; chance: a uniform pick among the "
                       "answers (mc2: the true answers' share; matching rate: the behaviour-matching answers' share)")


def other_measures(results: dict) -> list[dict]:
    """The measures of an ``eval.json`` that are not a preference accuracy (TruthfulQA MC1 / MC2,
    behaviour rates), one ``{measure, n, chance, value, ci95, frozen}`` each, named for what the
    value is (``OTHER_MEASURES_NOTE`` says how they are scored)."""
    rows = []
    if tq := results.get("truthfulqa"):
        base = tq.get("base") or {}
        for m, key, what in (("mc1", "accuracy", "accuracy"), ("mc2", "score", "probability on true answers")):
            if m in tq:
                rows.append({"measure": f"truthfulqa {m}: {what}", "n": tq[m].get("n"), "chance": tq[m].get("chance"),
                             "value": tq[m].get(key), "ci95": tq[m].get("ci95"), "frozen": base.get(m, {}).get(key)})
    for path, b in (results.get("behaviour") or {}).items():
        rows.append({"measure": f"behaviour {Path(path).stem}: matching rate", "n": b.get("n"), "chance": b.get("chance"),
                     "value": b.get("rate"), "ci95": b.get("ci95"), "frozen": (b.get("base") or {}).get("rate")})
    return rows
