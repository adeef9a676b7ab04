"""The core API as a user who ran `pip install reprkit` (no extras) meets it: capture, an edit, a
direction and two training steps on a tiny model. Run from outside the repository, in the virtual
environment the built wheel was installed into (`.ci/run`); it fails on any error."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import reprkit

here = Path(reprkit.__file__).resolve()
assert "site-packages" in str(here), f"reprkit was imported from {here}, not the installed wheel"
for extra in ("streamlit", "plotly", "sklearn", "bitsandbytes"):
    assert importlib.util.find_spec(extra) is None, f"{extra} is installed: the smoke test wants a bare install"

import torch  # noqa: E402

from reprkit import capture, load_model  # noqa: E402
from reprkit import data as D  # noqa: E402
from reprkit.directions import from_pairs  # noqa: E402
from reprkit.edits import add_vector  # noqa: E402
from reprkit.hooks import Trace  # noqa: E402
from reprkit.verify import save_tiny  # noqa: E402

work = Path(tempfile.mkdtemp())
folder = save_tiny("llama", work / "tiny", layers=4)
model, tok = load_model(str(folder))
inputs = tok(["The capital of France is"], return_tensors="pt")
with capture(model, [1, 3]) as cap:
    model(**inputs)
assert cap[1].shape[-1] == model.config.hidden_size
block = "model.layers.1"
with Trace(model, block, edit_output=add_vector(torch.ones(model.config.hidden_size))) as t:
    edited = model(**inputs).logits
assert not torch.allclose(edited, model(**inputs).logits), "the edit changed nothing"
items = D.load_items("embedded:capitals", "train", limit=8)
direction = from_pairs(model, tok, items, "1,2", max_length=96)
assert set(direction.vectors) == {1, 2}
run = work / "run"
done = subprocess.run([sys.executable, "-m", "reprkit.cli", "train", "--model", str(folder), "--data", "embedded:capitals",
                       "--steps", "2", "--batch-size", "2", "--limit", "8", "--max-length", "96", "--max-prompt-length", "64",
                       "--n-samples", "0",
                       "--eval-data", "embedded:capitals", "--eval-limit", "4", "--run-dir", str(run)],
                      capture_output=True, text=True)
assert done.returncode == 0, done.stderr[-3000:]
assert (run / "adapter" / "adapter_model.safetensors").is_file() and (run / "metrics.jsonl").is_file()
print(f"smoke test of the installed wheel passed: reprkit {reprkit.__version__} from {here.parent}")
