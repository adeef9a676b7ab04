"""The README's API example runs as written."""

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_readme_python_example_runs(capsys):
    text = (Path(__file__).parents[1] / "README.md").read_text()
    block = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["out"].shape[1] > namespace["batch"]["input_ids"].shape[1]
    assert "'cosine': 1.0" in capsys.readouterr().out


def test_readme_reading_example_runs(capsys):
    """Finds a direction on the embedded set, prints per-layer separation, steers at a calibrated
    strength and runs the logit lens on SmolLM2, as written."""
    text = (Path(__file__).parents[1] / "README.md").read_text()
    section = text[text.index("## Reading representations"):]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    out = capsys.readouterr().out
    per_layer = namespace["per_layer"]
    assert len(per_layer) >= 3 and namespace["layer"] in per_layer
    assert "logit lens" in out and "target ' Paris'" in out
    assert namespace["strength"] > 0
    from reprkit.directions import Direction

    assert Direction.load("/tmp/reprkit-directions/arithmetic").info["method"] == "mean_diff"
