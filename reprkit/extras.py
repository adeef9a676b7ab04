"""Optional dependencies: what each extra of ``pip install 'reprkit[...]'`` brings, and the one-line
error a feature gives where its extra is missing (at the call that needs it, never at ``import
reprkit``).

>>> go = require("plotly.graph_objects", "figures")        # the module, or MissingExtra naming the fix
"""

from __future__ import annotations

import importlib

EXTRAS = {
    "dashboard": ("streamlit", "plotly"),
    "figures": ("plotly",),
    "quantized": ("bitsandbytes",),
    "probe": ("sklearn",),
}
"""extra -> the top-level modules it installs (``pyproject.toml`` keeps their versions)."""

FEATURES = {
    "dashboard": "the dashboard",
    "figures": "plotly figures",
    "quantized": "4-bit and 8-bit bases",
    "probe": "the probe direction (method='probe')",
}


class MissingExtra(ImportError):
    """A feature's optional dependency is not installed; the message names the extra that installs it."""


def require(module: str, extra: str):
    """Import ``module`` for the feature of ``extra``, or raise ``MissingExtra`` naming
    ``pip install 'reprkit[extra]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        if err.name is not None and module.split(".")[0] != err.name.split(".")[0]:
            raise  # the module is there but something it imports is broken: not a missing extra
        raise MissingExtra(f"{FEATURES.get(extra, extra)} needs {module.split('.')[0]}, which is not installed: "
                           f"pip install 'reprkit[{extra}]'") from None
