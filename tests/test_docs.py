"""The documentation site's code blocks, so that no guide can rot.

- Every ```python block of a page runs, in order, in one namespace per page, in a fresh working
  directory, on the real default model (marker ``integration``), with the data fixtures of
  ``tests/data`` as the data folder.
- Every ```sh block's command lines are checked without running them: ``reprkit ...`` (also under
  ``accelerate launch`` or ``torchrun``) is parsed and validated by the command line's own parser,
  ``make X`` needs a target X in the Makefile, ``python path.py --flag`` needs the script and each
  flag in its source, ``python -m module`` needs the module. A renamed flag, preset, subcommand,
  script or target fails here.
- ``mkdocs build --strict`` passes (a broken link or cross-reference fails).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import shlex
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md") if "api" not in p.relative_to(DOCS).parts)
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)


def blocks(page: Path, lang: str) -> list[str]:
    return [m.group(2) for m in FENCE.finditer(page.read_text()) if m.group(1) == lang]


def command_lines(block: str) -> list[str]:
    """Logical lines of a shell block: continuations joined, comments and prompts dropped."""
    text = re.sub(r"\\\n\s*", " ", block)
    lines = []
    for line in text.splitlines():
        line = line.strip().removeprefix("$ ")
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def check_command(line: str) -> None:
    from reprkit.cli import parse

    words = shlex.split(line, comments=True)
    if words[:1] in (["time"], ["nice"]):
        words = words[1:] if words[0] == "time" else words[words.index("19") + 1:] if "-n" in words else words[1:]
    for var in list(words):
        if re.fullmatch(r"[A-Z_]+=\S*", var) and words[0] == var:
            words = words[1:]
    if words[0] == "reprkit" or "reprkit.cli" in words:
        args = words[1:] if words[0] == "reprkit" else words[words.index("reprkit.cli") + 1:]
        if "--help" in args:
            with pytest.raises(SystemExit) as exit_:
                with contextlib.redirect_stdout(io.StringIO()):
                    parse(args)
            assert exit_.value.code == 0, line
        else:
            err = io.StringIO()
            try:
                with contextlib.redirect_stderr(err):
                    parse(args)
            except SystemExit as exit_:
                raise AssertionError(f"{line}: the command line refuses it: {err.getvalue()[-600:]}") from exit_
    elif words[0] == "make":
        makefile = (ROOT / "Makefile").read_text()
        for target in [w for w in words[1:] if "=" not in w]:
            assert re.search(rf"^{re.escape(target)}:", makefile, re.M), f"{line}: no make target {target!r}"
    elif words[0] in ("python", "python3", sys.executable) and words[1] == "-m":
        assert importlib.util.find_spec(words[2]) is not None, f"{line}: no module {words[2]}"
    elif words[0] in ("python", "python3") and words[1].endswith(".py"):
        script = ROOT / words[1]
        assert script.is_file(), f"{line}: no script {words[1]}"
        source = script.read_text()
        for flag in (w.split("=")[0] for w in words[2:] if w.startswith("--")):
            assert f'"{flag}"' in source or f"'{flag}'" in source, f"{line}: {words[1]} has no {flag}"
    elif words[0].endswith(".sh"):
        assert (ROOT / words[0]).is_file(), f"{line}: no script {words[0]}"
    elif words[0] in ("pip", "git", "cd", "ls", "export", "nohup", "kill", "accelerate", "torchrun", "streamlit"):
        pass  # not ours; a launcher line without reprkit.cli is left to its tool
    else:
        raise AssertionError(f"{line}: the docs test does not know how to check {words[0]!r}")


def test_the_docs_have_guides_with_code():
    guides = [p for p in PAGES if p.parent.name == "guides"]
    assert len(guides) >= 9
    assert all(blocks(p, "python") or blocks(p, "sh") for p in guides), "a guide without code"


@pytest.mark.parametrize("page", [p for p in [*PAGES, ROOT / "README.md"] if blocks(p, "sh")],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_line_in_the_docs_parses(page, capsys):
    lines = [line for block in blocks(page, "sh") for line in command_lines(block)]
    assert lines
    for line in lines:
        check_command(line)


@pytest.mark.integration
@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p, "python")], ids=lambda p: str(p.relative_to(DOCS)))
def test_every_python_block_in_the_docs_runs(page, tmp_path, monkeypatch):
    from reprkit import config

    monkeypatch.chdir(tmp_path)
    for name in ("LOSSES", "PRESETS"):  # a guide that registers a loss leaves the registry as it was
        monkeypatch.setattr(config, name, dict(getattr(config, name)))
    monkeypatch.setattr(config, "TrainConfig", config.TrainConfig)
    module = types.ModuleType("docs_page")  # a real module: dataclasses defined in a guide look themselves up
    monkeypatch.setitem(sys.modules, "docs_page", module)
    for i, code in enumerate(blocks(page, "python")):
        exec(compile(code, f"{page.relative_to(ROOT)} block {i + 1}", "exec", dont_inherit=True), module.__dict__)


def test_the_site_builds_with_warnings_as_errors(tmp_path):
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent))
    assert mkdocs, "mkdocs is missing: `make setup` installs it (the dev extra)"
    done = subprocess.run([mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                          capture_output=True, text=True, env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "guides" / "training" / "index.html").is_file()
    # code blocks wrap instead of running off the page (the stylesheet is in the site and linked)
    assert "white-space: pre-wrap" in (tmp_path / "site" / "stylesheets" / "code.css").read_text()
    assert "stylesheets/code.css" in (tmp_path / "site" / "guides" / "training" / "index.html").read_text()


def test_the_command_checker_catches_rot():
    """What the command-line check exists for: each of these is a renamed or missing thing."""
    check_command("reprkit train --loss dpo --steps 3")
    for line in ("reprkit train --no-such-flag 1", "reprkit train --preset no-such-preset", "reprkit evaluate x",
                 "make no-such-target", "python experiments/no_such.py", "python experiments/compare.py --no-such-flag",
                 "python -m reprkit.no_such_module"):
        with pytest.raises((AssertionError, ValueError, KeyError)):
            check_command(line)
