"""Deprecated name of ``reprkit.inspection`` (``reprkit inspect``'s per-layer table): ``inspect``
shadowed the standard library's module of that name. It goes in the next release."""

import warnings

from .inspection import format_table, layer_table  # noqa: F401

warnings.warn("reprkit.inspect is now reprkit.inspection", DeprecationWarning, stacklevel=2)
