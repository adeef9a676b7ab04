"""The report of a comparison grid's folder (``reprkit.compare.report``).

    python experiments/analyse.py results/remeasure
"""

from __future__ import annotations

import sys
from pathlib import Path

from reprkit.compare.report import analyse

if __name__ == "__main__":
    analyse(Path(sys.argv[1] if len(sys.argv) > 1 else "results/decisive"))
