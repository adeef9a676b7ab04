"""The README's Python examples, unchanged but for the model name, on a tiny random model of every
architecture of the support table (``reprkit.verify.save_tiny``), or on the models named.

    python experiments/readme_on_architectures.py                      # every architecture
    python experiments/readme_on_architectures.py --models gemma-3-270m qwen3

Each run is its own process, as a user would run the examples; prints pass or the last error line
per model. Not a test: about 15 s a model on 2 cores.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_program(model: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    if not blocks or any("load_model()" not in b for b in blocks):
        raise SystemExit("every README Python block should call load_model() for the default model")
    return "\n".join(b.replace("load_model()", f"load_model({model!r})") for b in blocks)


def main() -> None:
    from reprkit.verify import ARCHITECTURES, arch_key, save_tiny

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=None,
                   help="packaged model names, folders, or table architectures (default: every architecture)")
    args = p.parse_args()
    names = args.models or [a.split(" (")[0] for a in ARCHITECTURES]
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            model = name
            try:
                if not Path(name).exists():
                    model = str(save_tiny(arch_key(name), Path(tmp) / name))
            except ValueError:  # not an architecture of the table: a packaged name, hub id or folder
                pass
            out = subprocess.run([sys.executable, "-c", readme_program(model)], capture_output=True, text=True,
                                 cwd=tmp)
            lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
            status = "pass" if out.returncode == 0 else f"FAIL: {lines[-1] if lines else out.returncode}"
            print(f"{name:>24}  {status}", flush=True)
            if out.returncode:
                failed.append(name)
    print(f"{len(names) - len(failed)} of {len(names)} ran the README's examples")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
