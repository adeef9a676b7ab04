"""The README's examples run as written (the guides' run in tests/test_docs.py)."""

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

README = Path(__file__).parents[1] / "README.md"


def _block(section: str) -> str:
    text = README.read_text()
    return re.search(r"```python\n(.*?)```", text[text.index(section):], re.S).group(1)


def test_readme_capture_example_runs(capsys):
    namespace: dict = {}
    exec(compile(_block("## Capture, edit"), "README.md", "exec"), namespace)
    assert namespace["out"].shape[1] > namespace["batch"]["input_ids"].shape[1]
    assert "'cosine': 1.0" in capsys.readouterr().out


def test_readme_direction_example_runs(capsys):
    """Reads a direction, picks its best layer on held-out items, steers at a calibrated strength."""
    namespace: dict = {}
    exec(compile(_block("## Read a direction and steer"), "README.md", "exec"), namespace)
    assert namespace["layer"] in namespace["per_layer"] and namespace["strength"] > 0
    assert f"layer {namespace['layer']}, strength" in capsys.readouterr().out


def test_readme_links_resolve():
    for target in re.findall(r"\]\(([^)#]+)\)", README.read_text()):
        if not target.startswith("http"):
            assert (README.parent / target).exists(), target
