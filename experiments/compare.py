"""The comparison grids of this repository: ``reprkit compare`` on a grid file of ``grids/``.

    python experiments/compare.py --grid experiments/grids/transfer.json --out results/transfer
    (the same as: reprkit compare experiments/grids/transfer.json --out results/transfer)

Kept so that the commands in the grids' notebooks still run; ``reprkit.compare`` is the code.
"""

from __future__ import annotations

import sys

from reprkit.cli import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--grid" in argv:
        i = argv.index("--grid")
        argv = [argv[i + 1], *argv[:i], *argv[i + 2:]]
    main(["compare", *argv])
