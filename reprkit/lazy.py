"""A module imported on first attribute access, so that modules the command line's parser needs
(the loss registry, geometry) can name torch without importing it: ``reprkit --help`` then starts
without torch. Use it under ``TYPE_CHECKING`` so type checkers see the real module:

    from typing import TYPE_CHECKING
    if TYPE_CHECKING:
        import torch
    else:
        torch = lazy_module("torch")
"""

from __future__ import annotations

import importlib
import types


class _Lazy(types.ModuleType):
    def __getattr__(self, attr: str):
        module = importlib.import_module(self.__name__)
        self.__dict__.update(module.__dict__)  # later lookups are plain attributes
        return getattr(module, attr)


def lazy_module(name: str) -> types.ModuleType:
    """``name`` as a module object that imports the real one the first time an attribute is read."""
    return _Lazy(name)
