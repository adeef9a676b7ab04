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
