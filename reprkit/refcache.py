"""Deprecated name of ``reprkit.frozen_cache`` (the frozen model: one name, not three). It goes in the
next release."""

import warnings

from .frozen_cache import *  # noqa: F403

warnings.warn("reprkit.refcache is now reprkit.frozen_cache", DeprecationWarning, stacklevel=2)
